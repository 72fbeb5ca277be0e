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
use std::sync::Arc;
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
    sql_only(config)?;
    let metadata = table.metadata();
    if metadata.snapshot_by_id(id).is_none() {
        return Err(format!(
            "the table has no snapshot {id}; `weir lake snapshots` lists them"
        ));
    }
    let updated = metadata
        .clone()
        .into_builder(table.metadata_location().map(str::to_string))
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
        )
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?
        .metadata;
    commit_metadata(config, ident, table, updated).await
}

/// Commits new metadata for a table of the SQL catalog: writes the next metadata file,
/// then points the catalog at it only if it still names the metadata `table` was read
/// from (the SQL catalog's own commit protocol).
async fn commit_metadata(
    config: &IcebergSinkConfig,
    ident: &TableIdent,
    table: &Table,
    updated: iceberg::spec::TableMetadata,
) -> Result<(), String> {
    sql_only(config)?;
    let CatalogConfig::Sql { path, name } = &config.catalog else {
        unreachable!("checked above");
    };
    let current = table
        .metadata_location()
        .ok_or("the table has no metadata file")?
        .to_string();
    let next = MetadataLocation::from_str(&current)
        .map_err(|e| e.to_string())?
        .with_next_version();
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
            "the table changed meanwhile (a pipeline committed?): nothing was changed; try again"
                .into(),
        ),
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Compacted {
    /// Small data files replaced.
    pub removed_files: usize,
    /// Files written in their place.
    pub added_files: usize,
    pub rows: u64,
    /// The `replace` snapshot committed, if there was anything to compact.
    pub snapshot: Option<i64>,
}

/// Rewrites the table's small data files (under three quarters of `target_size`), per
/// partition where there are at least two, into files of up to `target_size`, and
/// commits one `replace` snapshot: the small files leave the table and the new ones join
/// it, with the same rows. The snapshot carries the position of the one it replaces, so
/// a pipeline resumes from it as before. Runs beside a pipeline: if the pipeline commits
/// meanwhile, nothing is changed and the command says to try again.
///
/// iceberg 0.10.1 has no rewrite action, so weir writes the manifests, the manifest list
/// and the metadata itself, and commits through the SQL catalog as `rollback` does.
pub async fn compact(
    config: &IcebergSinkConfig,
    table: &Table,
    target_size: u64,
) -> Result<Compacted, String> {
    use iceberg::spec::{
        DataFileFormat, ManifestListWriter, ManifestWriterBuilder, Operation, PartitionKey,
        Snapshot, Struct, Summary,
    };
    use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
    use iceberg::writer::file_writer::ParquetWriterBuilder;
    use iceberg::writer::file_writer::location_generator::{
        DefaultFileNameGenerator, DefaultLocationGenerator,
    };
    use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
    use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
    use std::collections::{HashMap, HashSet};

    sql_only(config)?;
    let e = |e: iceberg::Error| e.to_string();
    let metadata = table.metadata();
    let Some(current) = metadata.current_snapshot().cloned() else {
        return Ok(Compacted::default());
    };
    if metadata.partition_specs_iter().count() != 1 {
        return Err(
            "the table has more than one partition spec; weir compacts tables of one spec only"
                .into(),
        );
    }
    let spec = metadata.default_partition_spec().clone();
    let schema = metadata.current_schema().clone();
    let file_io = table.file_io();

    // The live data files, by manifest, and the small ones by partition.
    let list = table
        .manifest_list_reader(&current)
        .load()
        .await
        .map_err(e)?;
    let mut manifests = Vec::new();
    let mut small: HashMap<Struct, Vec<String>> = HashMap::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file.load_manifest(file_io).await.map_err(e)?;
        if manifest_file.content == iceberg::spec::ManifestContentType::Data {
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                if entry.file_size_in_bytes() < target_size * 3 / 4 {
                    small
                        .entry(entry.data_file().partition().clone())
                        .or_default()
                        .push(entry.file_path().to_string());
                }
            }
        }
        manifests.push((manifest_file.clone(), manifest));
    }
    small.retain(|_, files| files.len() >= 2);
    if small.is_empty() {
        return Ok(Compacted::default());
    }
    let removed: HashSet<String> = small.values().flatten().cloned().collect();

    // Rewrite each partition's small files, reading them in the current schema.
    let tasks: Vec<iceberg::scan::FileScanTask> = table
        .scan()
        .snapshot_id(current.snapshot_id())
        .select_all()
        .build()
        .map_err(e)?
        .plan_files()
        .await
        .map_err(e)?
        .try_collect::<Vec<_>>()
        .await
        .map_err(e)?;
    let snapshot_id = loop {
        let id = rand::random::<i64>().abs();
        if id > 0 && metadata.snapshot_by_id(id).is_none() {
            break id;
        }
    };
    let run = format!("compact-{snapshot_id}");
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut added = Vec::new();
    let mut rows = 0;
    for (n, (partition, files)) in small.iter().enumerate() {
        let paths: HashSet<&String> = files.iter().collect();
        let group: Vec<_> = tasks
            .iter()
            .filter(|t| paths.contains(&t.data_file_path))
            .cloned()
            .map(Ok)
            .collect();
        let stream = table
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter(group)))
            .map_err(e)?
            .stream();
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(properties.clone(), schema.clone()),
            target_size as usize,
            file_io.clone(),
            DefaultLocationGenerator::new(metadata).map_err(e)?,
            DefaultFileNameGenerator::new(format!("{run}-{n}"), None, DataFileFormat::Parquet),
        );
        let key = PartitionKey::new((*spec).clone(), schema.clone(), partition.clone());
        let mut writer = DataFileWriterBuilder::new(rolling)
            .build(Some(key))
            .await
            .map_err(e)?;
        let mut stream = stream;
        while let Some(batch) = stream.try_next().await.map_err(e)? {
            rows += batch.num_rows() as u64;
            writer.write(batch).await.map_err(e)?;
        }
        added.extend(writer.close().await.map_err(e)?);
    }
    let removed_entries: Vec<_> = manifests
        .iter()
        .flat_map(|(_, m)| m.entries().iter())
        .filter(|e| e.is_alive() && removed.contains(e.file_path()))
        .cloned()
        .collect();
    let removed_rows: u64 = removed_entries.iter().map(|e| e.record_count()).sum();
    if rows != removed_rows {
        return Err(format!(
            "read {rows} rows from the small files where their manifests count {removed_rows}; nothing was committed"
        ));
    }

    // Manifests: unchanged ones as they are; those listing a replaced file rewritten
    // (replaced files deleted, the others existing); one new manifest for the new files.
    let sequence_number = metadata.last_sequence_number() + 1;
    let location = metadata.location().trim_end_matches('/');
    let manifest_path = |k: &str| format!("{location}/metadata/{run}-{k}.avro");
    let mut new_list = Vec::new();
    for (i, (manifest_file, manifest)) in manifests.into_iter().enumerate() {
        let touched = manifest
            .entries()
            .iter()
            .any(|e| e.is_alive() && removed.contains(e.file_path()));
        if !touched {
            new_list.push(manifest_file);
            continue;
        }
        let output = file_io
            .new_output(manifest_path(&format!("m{i}")))
            .map_err(e)?;
        let mut w =
            ManifestWriterBuilder::new(output, Some(snapshot_id), schema.clone(), (*spec).clone())
                .build_v2_data();
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let data_sequence = entry
                .sequence_number
                .ok_or("a manifest entry without a sequence number")?;
            let file_sequence = entry.file_sequence_number.or(Some(data_sequence));
            let file = entry.data_file().clone();
            match removed.contains(entry.file_path()) {
                true => w.add_delete_file(file, data_sequence, file_sequence),
                false => w.add_existing_file(
                    file,
                    entry.snapshot_id.unwrap_or(current.snapshot_id()),
                    data_sequence,
                    file_sequence,
                ),
            }
            .map_err(e)?;
        }
        new_list.push(w.write_manifest_file().await.map_err(e)?);
    }
    let output = file_io.new_output(manifest_path("added")).map_err(e)?;
    let mut w =
        ManifestWriterBuilder::new(output, Some(snapshot_id), schema.clone(), (*spec).clone())
            .build_v2_data();
    for file in &added {
        w.add_file(file.clone(), sequence_number).map_err(e)?;
    }
    new_list.insert(0, w.write_manifest_file().await.map_err(e)?);
    let list_path = format!("{location}/metadata/snap-{snapshot_id}-1-{run}.avro");
    let list_out = file_io.new_output(&list_path).map_err(e)?;
    let mut list_writer = ManifestListWriter::v2(
        list_out.writer().await.map_err(e)?,
        snapshot_id,
        Some(current.snapshot_id()),
        sequence_number,
    );
    list_writer.add_manifests(new_list.into_iter()).map_err(e)?;
    list_writer.close().await.map_err(e)?;

    // The snapshot: weir's position carried over, totals unchanged.
    let parent = &current.summary().additional_properties;
    let mut summary: HashMap<String, String> = [
        super::SUMMARY_COMMIT_LSN,
        super::SUMMARY_END_LSN,
        super::SUMMARY_SLOT,
        "total-records",
        "total-delete-files",
        "total-position-deletes",
        "total-equality-deletes",
    ]
    .iter()
    .filter_map(|k| parent.get(*k).map(|v| (k.to_string(), v.clone())))
    .collect();
    // The totals that change: files and their size.
    let removed_size: u64 = removed_entries.iter().map(|e| e.file_size_in_bytes()).sum();
    let added_size: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    let total = |k: &str| parent.get(k).and_then(|v| v.parse::<i64>().ok());
    if let Some(files) = total("total-data-files") {
        let files = files - removed.len() as i64 + added.len() as i64;
        summary.insert("total-data-files".into(), files.to_string());
    }
    if let Some(size) = total("total-files-size") {
        let size = size - removed_size as i64 + added_size as i64;
        summary.insert("total-files-size".into(), size.to_string());
    }
    summary.insert("added-files-size".into(), added_size.to_string());
    summary.insert("removed-files-size".into(), removed_size.to_string());
    if let Some(position) = metadata
        .properties()
        .get(super::PROP_SLOT)
        .and_then(|slot| super::committed_position(table, slot))
    {
        summary.insert(
            super::SUMMARY_COMMIT_LSN.into(),
            position.commit_lsn.to_string(),
        );
        summary.insert(super::SUMMARY_END_LSN.into(), position.end_lsn.to_string());
    }
    summary.insert("added-data-files".into(), added.len().to_string());
    summary.insert("deleted-data-files".into(), removed.len().to_string());
    summary.insert("added-records".into(), rows.to_string());
    summary.insert("deleted-records".into(), rows.to_string());
    summary.insert("weir.compaction".into(), "true".into());
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(current.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(
            chrono::Utc::now()
                .timestamp_millis()
                .max(current.timestamp_ms() + 1),
        )
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: Operation::Replace,
            additional_properties: summary,
        })
        .with_schema_id(schema.schema_id())
        .build();
    let updated = metadata
        .clone()
        .into_builder(table.metadata_location().map(str::to_string))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)
        .and_then(|b| b.build())
        .map_err(e)?
        .metadata;
    commit_metadata(config, table.identifier(), table, updated).await?;
    Ok(Compacted {
        removed_files: removed.len(),
        added_files: added.len(),
        rows,
        snapshot: Some(snapshot_id),
    })
}

/// Files under a table's location that no snapshot, manifest or metadata file the
/// table keeps refers to, and that are older than a cutoff.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Path in the store and size, oldest first.
    pub files: Vec<(object_store::path::Path, u64)>,
    /// Files the table refers to (metadata, manifest lists, manifests, data files).
    pub referenced: usize,
    /// Unreferenced files kept because they are younger than the cutoff.
    pub recent: usize,
}

/// The object path of a file URI (`file:///…`, `s3://bucket/…`) in its store.
fn object_path(uri: &str) -> Result<object_store::path::Path, String> {
    let url = url::Url::parse(uri).map_err(|e| format!("{uri}: {e}"))?;
    object_store::path::Path::from_url_path(url.path()).map_err(|e| format!("{uri}: {e}"))
}

/// Finds the files under the table's `data/` and `metadata/` that nothing the table keeps
/// refers to (data files of expired snapshots, files of a run killed before its commit,
/// of a failed compaction), leaving those younger than `older_than`.
///
/// Refuses when a file the table needs (its metadata, a kept snapshot's manifest list, a
/// manifest, a live data file) is not among the files listed: the two sides would not be
/// comparable (another URI form, another encoding), so nothing could be deleted safely.
pub async fn find_orphans(table: &Table, older_than: Duration) -> Result<Orphans, String> {
    use std::collections::HashSet;
    let e = |e: iceberg::Error| e.to_string();
    let metadata = table.metadata();
    // Everything the table refers to, and what of it must exist.
    let mut referenced: HashSet<object_store::path::Path> = HashSet::new();
    let mut needed: HashSet<object_store::path::Path> = HashSet::new();
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
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(e)?;
        for manifest_file in list.entries() {
            // Manifests never change: each is read once, however many lists name it.
            if !manifests_read.insert(manifest_file.manifest_path.clone()) {
                continue;
            }
            needed.insert(object_path(&manifest_file.manifest_path)?);
            let manifest = manifest_file
                .load_manifest(table.file_io())
                .await
                .map_err(e)?;
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

    let (store, base) =
        crate::sink::object_store_for(metadata.location()).map_err(|e| e.to_string())?;
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(older_than).map_err(|e| e.to_string())?;
    let mut orphans = Orphans {
        referenced: referenced.len(),
        ..Orphans::default()
    };
    let mut found = Vec::new();
    let mut listed: HashSet<object_store::path::Path> = HashSet::new();
    // Only the table's own directories: a table nested below this one keeps its files.
    for dir in ["data", "metadata"] {
        let mut objects = store.list(Some(&base.clone().join(dir)));
        while let Some(object) = objects.try_next().await.map_err(|e| e.to_string())? {
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
    let under = |p: &object_store::path::Path| {
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
        return Err(format!(
            "files the table refers to were not found by listing its location (for example {}): their paths do not compare with the listing, so nothing is deleted",
            unmatched.join(", ")
        ));
    }
    found.sort();
    orphans.files = found.into_iter().map(|(_, p, size)| (p, size)).collect();
    Ok(orphans)
}

/// Deletes the files [`find_orphans`] found.
pub async fn remove_orphans(table: &Table, orphans: &Orphans) -> Result<(), String> {
    let (store, _) =
        crate::sink::object_store_for(table.metadata().location()).map_err(|e| e.to_string())?;
    for (path, _) in &orphans.files {
        object_store::ObjectStoreExt::delete(&store, path)
            .await
            .map_err(|e| format!("deleting {path}: {e}"))?;
    }
    Ok(())
}

fn sql_only(config: &IcebergSinkConfig) -> Result<(), String> {
    match config.catalog {
        CatalogConfig::Sql { .. } => Ok(()),
        CatalogConfig::Rest { .. } => Err("this needs the SQL catalog: iceberg 0.10.1 cannot send such a change to a REST catalog (use the catalog's own tools)".into()),
    }
}

/// Widens column types in place (`int` to `long`, `float` to `double`, a decimal's
/// precision up at the same scale: the promotions Iceberg allows), in a new current
/// schema committed through the SQL catalog. Returns the columns it widened.
pub async fn widen_columns(
    config: &IcebergSinkConfig,
    table: &Table,
    wanted: &[(String, iceberg::spec::Type)],
) -> Result<Vec<String>, String> {
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
        .build()
        .map_err(|e| e.to_string())?;
    let updated = metadata
        .clone()
        .into_builder(table.metadata_location().map(str::to_string))
        .add_current_schema(new_schema)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?
        .metadata;
    commit_metadata(config, table.identifier(), table, updated).await?;
    Ok(widened)
}
