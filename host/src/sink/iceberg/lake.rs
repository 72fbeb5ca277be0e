//! Table history and maintenance: what `weir lake` and scheduled maintenance do.

use super::{SUMMARY_COMMIT_LSN, SUMMARY_REPLAY};
use crate::config::{CatalogConfig, IcebergSinkConfig};
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, MetadataLocation, TableIdent};
use std::str::FromStr;
use std::time::Duration;

/// One snapshot of a table's history, as `weir lake snapshots` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotInfo {
    pub id: i64,
    pub parent: Option<i64>,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub operation: String,
    pub added_records: Option<u64>,
    pub total_records: Option<u64>,
    /// The position weir recorded (`weir.commit-lsn`), or the replay name.
    pub weir: Option<String>,
    pub current: bool,
}

/// Every snapshot the table keeps, oldest first.
pub fn snapshots(table: &Table) -> Vec<SnapshotInfo> {
    let metadata = table.metadata();
    let current = metadata.current_snapshot_id();
    let mut list: Vec<SnapshotInfo> = metadata
        .snapshots()
        .map(|s| {
            let props = &s.summary().additional_properties;
            let number = |k: &str| props.get(k).and_then(|v| v.parse().ok());
            let weir = match (props.get(SUMMARY_COMMIT_LSN), props.get(SUMMARY_REPLAY)) {
                (Some(lsn), _) => Some(format!("commit-lsn {lsn}")),
                (None, Some(name)) => Some(format!("replay {name}")),
                _ => None,
            };
            SnapshotInfo {
                id: s.snapshot_id(),
                parent: s.parent_snapshot_id(),
                timestamp_ms: s.timestamp_ms(),
                operation: s.summary().operation.as_str().to_string(),
                added_records: number("added-records"),
                total_records: number("total-records"),
                weir,
                current: Some(s.snapshot_id()) == current,
            }
        })
        .collect();
    list.sort_by_key(|s| (s.timestamp_ms, s.id));
    list
}

/// Which version of a table to read.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Current,
    Snapshot(i64),
    /// The snapshot that was current at this time (milliseconds since the epoch).
    Time(i64),
}

/// The snapshot `at` names, or `None` for an empty table.
pub fn resolve(table: &Table, at: At) -> Result<Option<i64>, String> {
    let metadata = table.metadata();
    match at {
        At::Current => Ok(metadata.current_snapshot_id()),
        At::Snapshot(id) => match metadata.snapshot_by_id(id) {
            Some(_) => Ok(Some(id)),
            None => Err(format!(
                "the table has no snapshot {id}; `weir lake snapshots` lists them"
            )),
        },
        At::Time(ms) => {
            // The snapshot log records what was current when.
            let found = metadata
                .history()
                .iter()
                .rfind(|l| l.timestamp_ms <= ms)
                .map(|l| l.snapshot_id);
            match found {
                Some(id) => Ok(Some(id)),
                None => Err("the table has no snapshot that old".into()),
            }
        }
    }
}

/// Reads up to `limit` rows of the table as of `at`.
pub async fn query(table: &Table, at: At, limit: usize) -> Result<Vec<RecordBatch>, String> {
    let Some(id) = resolve(table, at)? else {
        return Ok(Vec::new());
    };
    let scan = table
        .scan()
        .snapshot_id(id)
        .select_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut stream = scan.to_arrow().await.map_err(|e| e.to_string())?;
    let (mut batches, mut rows) = (Vec::new(), 0);
    while rows < limit
        && let Some(batch) = stream.try_next().await.map_err(|e| e.to_string())?
    {
        let take = batch.num_rows().min(limit - rows);
        rows += take;
        batches.push(batch.slice(0, take));
    }
    Ok(batches)
}

/// Expires the snapshots older than `older_than` (never the current one). Returns the
/// table after the commit and how many snapshots went.
pub async fn expire_snapshots(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    older_than: Duration,
) -> iceberg::Result<(Table, usize)> {
    let table = catalog.load_table(ident).await?;
    let before = table.metadata().snapshots().count();
    let cutoff = chrono::Utc::now().timestamp_millis() - older_than.as_millis() as i64;
    let tx = Transaction::new(&table);
    let action = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(1);
    let tx = action.apply(tx)?;
    let table = tx.commit(catalog).await?;
    let after = table.metadata().snapshots().count();
    Ok((table, before.saturating_sub(after)))
}

/// Makes snapshot `id` the table's current one again (`main` points at it); later
/// snapshots stay in the history until expired.
///
/// iceberg 0.10.1 offers no transaction action that moves a branch, so weir commits the
/// new metadata itself, the way the SQL catalog commits: write the next metadata file,
/// then swap the catalog's pointer only if it still names the metadata read. A REST
/// catalog takes commits only through its own API, which iceberg 0.10.1 does not open
/// to such a change.
pub async fn rollback(
    config: &IcebergSinkConfig,
    ident: &TableIdent,
    table: &Table,
    id: i64,
) -> Result<(), String> {
    let CatalogConfig::Sql { path, name } = &config.catalog else {
        return Err("rollback needs the SQL catalog: iceberg 0.10.1 cannot send a branch change to a REST catalog (use the catalog's own tools)".into());
    };
    let metadata = table.metadata();
    if metadata.snapshot_by_id(id).is_none() {
        return Err(format!(
            "the table has no snapshot {id}; `weir lake snapshots` lists them"
        ));
    }
    let current = table
        .metadata_location()
        .ok_or("the table has no metadata file")?
        .to_string();
    let next = MetadataLocation::from_str(&current)
        .map_err(|e| e.to_string())?
        .with_next_version();
    let updated = metadata
        .clone()
        .into_builder(Some(current.clone()))
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
        )
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?
        .metadata;
    updated
        .write_to(table.file_io(), &next)
        .await
        .map_err(|e| e.to_string())?;
    let db = super::sqlite_path(config, path.as_deref()).map_err(|e| e.to_string())?;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .map_err(|e| format!("{}: {e}", db.display()))?;
    let swapped = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
         WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?",
    )
    .bind(next.to_string())
    .bind(&current)
    .bind(name)
    .bind(ident.namespace().join("."))
    .bind(ident.name())
    .bind(&current)
    .execute(&pool)
    .await
    .map_err(|e| format!("{}: {e}", db.display()))?;
    pool.close().await;
    match swapped.rows_affected() {
        1 => Ok(()),
        _ => Err(
            "the table changed while rolling back (a pipeline committed?); stop the pipeline and try again"
                .into(),
        ),
    }
}
