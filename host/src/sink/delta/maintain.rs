//! `weir lake` maintenance of Delta tables: removing the files no version refers to
//! (VACUUM's full mode), expiring old versions (VACUUM with the table's retention
//! floor, then the log), and compacting small files (OPTIMIZE's bin-packing). Files to
//! delete are listed by delta-rs's VACUUM in its dry-run mode and deleted here, and
//! commits go through [`super::log`]: delta-rs built without DataFusion will not commit
//! to a table with Change Data Feed (ADR 0019).

use super::files::{self, FileWriter};
use super::{delta_err, log};
use crate::sink::SinkError;
use crate::sink::iceberg::schema::conform;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt as _;
use futures::StreamExt;
use object_store::path::Path;
use parquet::file::properties::WriterProperties;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Deletes the files in `table`'s directory that no version it keeps refers to (files
/// of runs killed before their commit) and are older than `older_than`: what Delta's
/// VACUUM in its full mode lists, less every file a version in the log adds, removes or
/// writes as change data (VACUUM would delete the files older versions hold, and their
/// change feed). Returns the files (deleted, or only listed with `dry_run`).
pub async fn remove_unreferenced(
    table: DeltaTable,
    older_than: Duration,
    dry_run: bool,
) -> Result<Vec<String>, SinkError> {
    let referenced: HashSet<String> = version_files(&table)
        .await?
        .into_iter()
        .flat_map(|v| v.data.into_iter().chain(v.changes))
        .collect();
    let listed = vacuum_listing(&table, VacuumMode::Full, older_than).await?;
    let files: Vec<String> = listed
        .into_iter()
        .filter(|f| !referenced.contains(f))
        .collect();
    if !dry_run {
        delete(&table, &files).await?;
    }
    Ok(files)
}

/// What `weir lake expire-snapshots` did.
pub struct Expired {
    /// Data files removed from the table longer ago than the cutoff, and the change
    /// data files of versions older than it: deleted.
    pub files: Vec<String>,
    /// Log entries of versions older than the cutoff removed (those before the last
    /// checkpoint older than it).
    pub log_entries: usize,
}

/// Expires the versions of `table` older than `older_than`: deletes the data files they
/// alone refer to and the change data files of versions older than it (so time travel
/// and the change feed reach back `older_than`), then the log entries the last
/// checkpoint older than the cutoff makes unneeded. The table's
/// `delta.deletedFileRetentionDuration` (7 days unless set) is the floor.
pub async fn expire(table: &mut DeltaTable, older_than: Duration) -> Result<Expired, SinkError> {
    let uri = table.table_url().to_string();
    let floor = table
        .snapshot()
        .map_err(|e| delta_err(&uri, e))?
        .table_config()
        .deleted_file_retention_duration();
    if older_than < floor {
        return Err(SinkError::Config {
            what: uri,
            message: format!(
                "--older-than {} is under the table's delta.deletedFileRetentionDuration ({}): a reader of an older version, or a commit in progress, may still need those files; lower the table property to allow it",
                humantime::format_duration(older_than),
                humantime::format_duration(floor)
            ),
        });
    }
    let cutoff = chrono::Utc::now().timestamp_millis() - older_than.as_millis() as i64;
    let mut files = vacuum_listing(table, VacuumMode::Lite, older_than).await?;
    files.extend(
        version_files(table)
            .await?
            .into_iter()
            .filter(|v| v.timestamp_ms < cutoff)
            .flat_map(|v| v.changes),
    );
    delete(table, &files).await?;
    let version = table.version().unwrap_or(0);
    let log_entries = deltalake::checkpoints::cleanup_expired_logs_for(
        version as _,
        table.log_store().as_ref(),
        cutoff,
        None,
    )
    .await
    .map_err(|e| delta_err(&uri, e))?;
    Ok(Expired { files, log_entries })
}

/// What `weir lake compact` did.
pub struct Compacted {
    pub rewritten: usize,
    pub written: usize,
    /// The version committed (None: nothing to compact).
    pub version: Option<u64>,
}

/// Rewrites the table's data files smaller than three quarters of `target_size`, bin by
/// bin, into files of about `target_size`, in one commit that changes no row (Delta's
/// OPTIMIZE). A pipeline committing meanwhile finds its version taken and starts again
/// from the compacted table.
pub async fn compact(
    table: &mut DeltaTable,
    target_size: u64,
    properties: &WriterProperties,
) -> Result<Compacted, SinkError> {
    let uri = table.table_url().to_string();
    let snapshot = table.snapshot().map_err(|e| delta_err(&uri, e))?;
    let schema: arrow::datatypes::Schema = snapshot
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(|e| delta_err(&uri, e.into()))?;
    let schema = Arc::new(schema);
    let mut small: Vec<(String, i64)> = snapshot
        .log_data()
        .into_iter()
        .map(|f| (f.path().to_string(), f.size()))
        .filter(|(_, size)| (*size as u64) < target_size / 4 * 3)
        .collect();
    small.sort();
    // Bins of files that together make about one target-size file.
    let mut bins: Vec<Vec<(String, i64)>> = vec![Vec::new()];
    for file in small {
        let full = bins.last().is_some_and(|b| {
            b.iter().map(|(_, s)| *s as u64).sum::<u64>() + file.1 as u64 > target_size
        });
        if full {
            bins.push(Vec::new());
        }
        bins.last_mut().expect("one bin").push(file);
    }
    bins.retain(|b| b.len() > 1);
    if bins.is_empty() {
        return Ok(Compacted {
            rewritten: 0,
            written: 0,
            version: None,
        });
    }
    let store = table.log_store().object_store(None);
    let writer = FileWriter {
        store: store.clone(),
        uri: &uri,
        properties,
        target_size,
    };
    let now = chrono::Utc::now().timestamp_millis();
    let (mut actions, mut rewritten, mut written) = (Vec::new(), 0, 0);
    for bin in bins {
        let mut out = writer.rolling("part");
        for (path, size) in &bin {
            for batch in files::read(store.clone(), &uri, path, None).await? {
                let batch = conform(&batch, &schema).map_err(|e| SinkError::Schema {
                    table: uri.clone(),
                    source: e.into(),
                })?;
                out.push(&batch).await?;
            }
            actions.push(files::remove_action(path, Some(*size), false, now));
        }
        rewritten += bin.len();
        for w in out.finish().await? {
            actions.push(files::add_action(&w, false, now));
            written += 1;
        }
    }
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: target_size as i64,
    };
    let version = log::commit(table, actions, operation, HashMap::new(), None)
        .await
        .map_err(|e| delta_err(&uri, e))?;
    Ok(Compacted {
        rewritten,
        written,
        version: Some(version),
    })
}

/// The files delta-rs's VACUUM in `mode` would delete with `older_than` as retention,
/// relative to the table.
async fn vacuum_listing(
    table: &DeltaTable,
    mode: VacuumMode,
    older_than: Duration,
) -> Result<Vec<String>, SinkError> {
    let uri = table.table_url().to_string();
    let retention = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let (_, metrics) = table
        .clone()
        .vacuum()
        .with_mode(mode)
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_dry_run(true)
        .await
        .map_err(|e| delta_err(&uri, e))?;
    Ok(metrics.files_deleted)
}

async fn delete(table: &DeltaTable, paths: &[String]) -> Result<(), SinkError> {
    let store = table.log_store().object_store(None);
    let uri = table.table_url().to_string();
    let locations: Vec<Path> = paths.iter().filter_map(|p| Path::parse(p).ok()).collect();
    let mut deleted =
        store.delete_stream(futures::stream::iter(locations.into_iter().map(Ok)).boxed());
    while let Some(result) = deleted.next().await {
        match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(crate::storage::StorageError::Store {
                    op: "deleting",
                    path: uri,
                    source,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The files a version's commit names.
struct VersionFiles {
    timestamp_ms: i64,
    /// Data files added or removed.
    data: Vec<String>,
    /// Change data files.
    changes: Vec<String>,
}

/// The files of every version whose commit the log holds.
async fn version_files(table: &DeltaTable) -> Result<Vec<VersionFiles>, SinkError> {
    let uri = table.table_url().to_string();
    let store = table.log_store();
    let mut out = Vec::new();
    for version in 0..=table.version().unwrap_or(0) {
        let Some(entry) = store
            .read_commit_entry(version as _)
            .await
            .map_err(|e| delta_err(&uri, e))?
        else {
            continue;
        };
        let mut files = VersionFiles {
            timestamp_ms: 0,
            data: Vec::new(),
            changes: Vec::new(),
        };
        for line in entry.split(|b| *b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            for kind in ["add", "remove"] {
                if let Some(path) = action[kind]["path"].as_str() {
                    files.data.push(path.to_string());
                }
            }
            if let Some(path) = action["cdc"]["path"].as_str() {
                files.changes.push(path.to_string());
            }
            if let Some(ts) = action["commitInfo"]["timestamp"].as_i64() {
                files.timestamp_ms = ts;
            }
        }
        out.push(files);
    }
    Ok(out)
}
