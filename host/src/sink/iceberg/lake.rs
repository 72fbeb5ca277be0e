//! Table history and maintenance: what `weir lake` and scheduled maintenance do.

use super::catalog::{SUMMARY_COMMIT_LSN, SUMMARY_REPLAY};
use super::commit::{commit_metadata, sql_only};
use crate::config::IcebergSinkConfig;
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};
use object_store::path::Path as ObjectPath;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong reading or maintaining a table.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("the table has no snapshot {0}; `weir lake snapshots` lists them")]
    NoSnapshot(i64),
    #[error("the table has no snapshot that old")]
    NoSnapshotThatOld,
    #[error("the table has no metadata file")]
    NoMetadataFile,
    #[error("the table changed meanwhile (a pipeline committed?): nothing was changed; try again")]
    ChangedMeanwhile,
    #[error("the table has more than one partition spec; weir compacts tables of one spec only")]
    SeveralPartitionSpecs,
    #[error("a manifest entry without a sequence number")]
    NoSequenceNumber,
    #[error(
        "the table has equality delete files, which weir does not write: compact it with the engine that wrote them; nothing was changed"
    )]
    EqualityDeletes,
    #[error("reading the position delete file {path}: {message}")]
    DeleteFile { path: String, message: String },
    #[error(
        "delete threshold {0}: give a fraction from 0 to 1 (0.3 rewrites files with 30% of their rows deleted)"
    )]
    DeleteThreshold(f64),
    #[error(
        "read {read} live rows from the files to rewrite where their manifests and delete files count {counted}; nothing was committed"
    )]
    RowCount { read: u64, counted: u64 },
    #[error(
        "files the table refers to were not found by listing its location (for example {examples}): their paths do not compare with the listing, so nothing is deleted"
    )]
    Unlisted { examples: String },
    #[error(
        "this needs the SQL catalog: iceberg 0.10.1 cannot send such a change to a REST catalog (use the catalog's own tools)"
    )]
    NeedsSqlCatalog,
    #[error("{uri}: {source}")]
    Uri {
        uri: String,
        source: url::ParseError,
    },
    #[error("{uri}: {source}")]
    StorePath {
        uri: String,
        source: object_store::path::Error,
    },
    /// The SQL catalog's SQLite file.
    #[error("{}: {source}", .db.display())]
    CatalogDb { db: PathBuf, source: sqlx::Error },
    #[error("deleting {path}: {source}")]
    Delete {
        path: ObjectPath,
        source: object_store::Error,
    },
    #[error("{0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("{0}")]
    Store(#[source] object_store::Error),
    #[error("{0}")]
    Storage(#[source] crate::storage::StorageError),
    #[error("{0}")]
    Sink(#[source] super::super::error::SinkError),
    #[error("{0}")]
    Cutoff(#[source] chrono::OutOfRangeError),
}

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
            let weir = match (props.get(SUMMARY_REPLAY), props.get(SUMMARY_COMMIT_LSN)) {
                (Some(name), _) => Some(format!("replay {name}")),
                (None, Some(lsn)) if props.contains_key("weir.compaction") => {
                    Some(format!("compaction (commit-lsn {lsn})"))
                }
                (None, Some(lsn)) => Some(format!("commit-lsn {lsn}")),
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
    /// The last weir commit at or before this source LSN (its `weir.commit-lsn`).
    Lsn(crate::lsn::Lsn),
}

/// The snapshot `at` names, or `None` for an empty table.
pub fn resolve(table: &Table, at: At) -> Result<Option<i64>, LakeError> {
    let metadata = table.metadata();
    match at {
        At::Current => Ok(metadata.current_snapshot_id()),
        At::Snapshot(id) => match metadata.snapshot_by_id(id) {
            Some(_) => Ok(Some(id)),
            None => Err(LakeError::NoSnapshot(id)),
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
                None => Err(LakeError::NoSnapshotThatOld),
            }
        }
        At::Lsn(lsn) => {
            // Following parents from the current snapshot: the history as it stands.
            let mut snapshot = metadata.current_snapshot().cloned();
            while let Some(s) = snapshot {
                let commit = s
                    .summary()
                    .additional_properties
                    .get(SUMMARY_COMMIT_LSN)
                    .and_then(|c| c.parse::<crate::lsn::Lsn>().ok());
                if commit.is_some_and(|c| c <= lsn) {
                    return Ok(Some(s.snapshot_id()));
                }
                snapshot = s
                    .parent_snapshot_id()
                    .and_then(|id| metadata.snapshot_by_id(id).cloned());
            }
            Err(LakeError::NoSnapshotThatOld)
        }
    }
}

/// Reads up to `limit` rows of the table as of `at`.
pub async fn query(table: &Table, at: At, limit: usize) -> Result<Vec<RecordBatch>, LakeError> {
    let Some(id) = resolve(table, at)? else {
        return Ok(Vec::new());
    };
    let scan = table.scan().snapshot_id(id).select_all().build()?;
    let mut stream = scan.to_arrow().await?;
    let (mut batches, mut rows) = (Vec::new(), 0);
    while rows < limit
        && let Some(batch) = stream.try_next().await?
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
) -> Result<(), LakeError> {
    sql_only(config)?;
    let metadata = table.metadata();
    if metadata.snapshot_by_id(id).is_none() {
        return Err(LakeError::NoSnapshot(id));
    }
    let updated = metadata
        .clone()
        .into_builder(table.metadata_location().map(str::to_string))
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
        )
        .and_then(|b| b.build())?
        .metadata;
    commit_metadata(config, ident, table, updated).await
}

/// Files under a table's location that no snapshot, manifest or metadata file the
/// table keeps refers to, and that are older than a cutoff.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Path in the store and size, oldest first.
    pub files: Vec<(ObjectPath, u64)>,
    /// Files the table refers to (metadata, manifest lists, manifests, data files).
    pub referenced: usize,
    /// Unreferenced files kept because they are younger than the cutoff.
    pub recent: usize,
}

/// The object path of a file URI (`file:///…`, `s3://bucket/…`) in its store.
fn object_path(uri: &str) -> Result<ObjectPath, LakeError> {
    let url = url::Url::parse(uri).map_err(|source| LakeError::Uri {
        uri: uri.into(),
        source,
    })?;
    ObjectPath::from_url_path(url.path()).map_err(|source| LakeError::StorePath {
        uri: uri.into(),
        source,
    })
}

/// Finds the files under the table's `data/` and `metadata/` that nothing the table keeps
/// refers to (data files of expired snapshots, files of a run killed before its commit,
/// of a failed compaction), leaving those younger than `older_than`.
///
/// Refuses when a file the table needs (its metadata, a kept snapshot's manifest list, a
/// manifest, a live data file) is not among the files listed: the two sides would not be
/// comparable (another URI form, another encoding), so nothing could be deleted safely.
pub async fn find_orphans(table: &Table, older_than: Duration) -> Result<Orphans, LakeError> {
    let References { referenced, needed } = references(table).await?;
    let (store, base) = crate::storage::object_store_for(table.metadata().location())
        .map_err(LakeError::Storage)?;
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(older_than).map_err(LakeError::Cutoff)?;
    let mut orphans = Orphans {
        referenced: referenced.len(),
        ..Orphans::default()
    };
    let mut found = Vec::new();
    let mut listed: HashSet<ObjectPath> = HashSet::new();
    // Only the table's own directories: a table nested below this one keeps its files.
    for dir in ["data", "metadata"] {
        let mut objects = store.list(Some(&base.clone().join(dir)));
        while let Some(object) = objects.try_next().await.map_err(LakeError::Store)? {
            listed.insert(object.location.clone());
            if referenced.contains(&object.location) {
                continue;
            }
            match object.last_modified <= cutoff {
                true => found.push((object.last_modified, object.location, object.size)),
                false => orphans.recent += 1,
            }
        }
    }
    let under = |p: &ObjectPath| {
        p.prefix_matches(&base.clone().join("data"))
            || p.prefix_matches(&base.clone().join("metadata"))
    };
    let unmatched: Vec<String> = needed
        .iter()
        .filter(|p| under(p) && !listed.contains(*p))
        .map(ToString::to_string)
        .take(3)
        .collect();
    if !unmatched.is_empty() {
        return Err(LakeError::Unlisted {
            examples: unmatched.join(", "),
        });
    }
    found.sort();
    orphans.files = found.into_iter().map(|(_, p, size)| (p, size)).collect();
    Ok(orphans)
}

/// The files a table refers to, as object paths.
struct References {
    /// Everything referred to, whether it must exist or not.
    referenced: HashSet<ObjectPath>,
    /// What must exist: the metadata, the manifest lists, manifests and live data files.
    needed: HashSet<ObjectPath>,
}

async fn references(table: &Table) -> Result<References, LakeError> {
    let metadata = table.metadata();
    let mut referenced: HashSet<ObjectPath> = HashSet::new();
    let mut needed: HashSet<ObjectPath> = HashSet::new();
    if let Some(location) = table.metadata_location() {
        needed.insert(object_path(location)?);
    }
    for log in metadata.metadata_log() {
        referenced.insert(object_path(&log.metadata_file)?);
    }
    for stats in metadata.statistics_iter() {
        referenced.insert(object_path(&stats.statistics_path)?);
    }
    for stats in metadata.partition_statistics_iter() {
        referenced.insert(object_path(&stats.statistics_path)?);
    }
    let mut manifests_read: HashSet<String> = HashSet::new();
    for snapshot in metadata.snapshots() {
        needed.insert(object_path(snapshot.manifest_list())?);
        let list = table.manifest_list_reader(snapshot).load().await?;
        for manifest_file in list.entries() {
            // Manifests never change: each is read once, however many lists name it.
            if !manifests_read.insert(manifest_file.manifest_path.clone()) {
                continue;
            }
            needed.insert(object_path(&manifest_file.manifest_path)?);
            let manifest = manifest_file.load_manifest(table.file_io()).await?;
            // Every entry, deleted ones too: an older snapshot may still read the file.
            for entry in manifest.entries() {
                let path = object_path(entry.file_path())?;
                match entry.is_alive() {
                    true => needed.insert(path),
                    false => referenced.insert(path),
                };
            }
        }
    }
    referenced.extend(needed.iter().cloned());
    Ok(References { referenced, needed })
}

/// Deletes the files [`find_orphans`] found.
pub async fn remove_orphans(table: &Table, orphans: &Orphans) -> Result<(), LakeError> {
    let (store, _) = crate::storage::object_store_for(table.metadata().location())
        .map_err(LakeError::Storage)?;
    for (path, _) in &orphans.files {
        object_store::ObjectStoreExt::delete(&store, path)
            .await
            .map_err(|source| LakeError::Delete {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Widens column types in place (`int` to `long`, `float` to `double`, a decimal's
/// precision up at the same scale: the promotions Iceberg allows), in a new current
/// schema committed through the SQL catalog. Returns the columns it widened.
pub async fn widen_columns(
    config: &IcebergSinkConfig,
    table: &Table,
    wanted: &[(String, iceberg::spec::Type)],
) -> Result<Vec<String>, LakeError> {
    use iceberg::spec::{NestedField, Schema};
    sql_only(config)?;
    let metadata = table.metadata();
    let schema = metadata.current_schema();
    let mut widened = Vec::new();
    let fields: Vec<_> = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| {
            let promoted = wanted
                .iter()
                .find(|(name, _)| *name == f.name)
                .filter(|(_, to)| super::schema::promotable(&f.field_type, to));
            match promoted {
                Some((name, to)) => {
                    widened.push(name.clone());
                    let mut g = NestedField::clone(f);
                    g.field_type = Box::new(to.clone());
                    Arc::new(g)
                }
                None => f.clone(),
            }
        })
        .collect();
    if widened.is_empty() {
        return Ok(widened);
    }
    let new_schema = Schema::builder()
        .with_schema_id(
            metadata
                .schemas_iter()
                .map(|s| s.schema_id())
                .max()
                .unwrap_or(0)
                + 1,
        )
        .with_fields(fields)
        .with_identifier_field_ids(schema.identifier_field_ids())
        .build()?;
    let updated = metadata
        .clone()
        .into_builder(table.metadata_location().map(str::to_string))
        .add_current_schema(new_schema)
        .and_then(|b| b.build())?
        .metadata;
    commit_metadata(config, table.identifier(), table, updated).await?;
    Ok(widened)
}
