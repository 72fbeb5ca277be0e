//! Compaction (`weir lake compact`, `[sink.maintenance] compact`): rewrites a table's
//! small data files, and the data files position deletes have thinned (a mirror
//! table's), into files of the target size without their deleted rows, and drops the
//! position delete files that no longer refer to a live data file. One `replace`
//! snapshot, written by [`SnapshotWriter`] (iceberg 0.10.1 has no rewrite action).

use super::commit::{SnapshotWriter, sql_only};
use super::lake::LakeError;
use crate::config::IcebergSinkConfig;
use futures::TryStreamExt;
use iceberg::scan::FileScanTask;
use iceberg::spec::{
    DataContentType, DataFile, Manifest, ManifestContentType, ManifestEntryRef, ManifestFile,
    Operation, SnapshotRef, Struct,
};
use iceberg::table::Table;
use parquet::file::properties::WriterProperties;
use std::collections::{HashMap, HashSet};

/// Summary property marking a compaction's snapshot (same rows, other files).
pub const SUMMARY_COMPACTION: &str = "weir.compaction";

/// A data file that this many position delete files refer to is rewritten, whatever
/// fraction of it they delete: a reader opens each of them.
pub const DELETE_FILES_LIMIT: usize = 10;

/// The default `delete_threshold`, Iceberg's own `delete-ratio-threshold`.
pub const DEFAULT_DELETE_THRESHOLD: f64 = 0.3;

/// What a compaction rewrites.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Size of the files written; files under three quarters of it are small.
    pub target_size: u64,
    /// A data file whose deleted rows reach this fraction of it is rewritten.
    pub delete_threshold: f64,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Compacted {
    /// Data files replaced: small ones, and those thinned by deletes.
    pub removed_files: usize,
    /// Of those, the files rewritten for their deletes.
    pub thinned_files: usize,
    /// Files written in their place.
    pub added_files: usize,
    /// Rows written: the live rows of the replaced files.
    pub rows: u64,
    /// Rows of the replaced files that position deletes had removed: gone for good.
    pub purged_rows: u64,
    /// Position delete files dropped: no data file they refer to is left.
    pub removed_delete_files: usize,
    /// The `replace` snapshot committed, if there was anything to compact.
    pub snapshot: Option<i64>,
}

/// Rewrites, per partition, the data files that are small (under three quarters of
/// `target_size`) where there are at least two, and those position deletes have thinned
/// (`delete_threshold` of their rows deleted, or [`DELETE_FILES_LIMIT`] delete files),
/// into files of up to `target_size` holding their live rows, and commits one `replace`
/// snapshot: the old files and the delete files left with nothing to refer to leave the
/// table, the new ones join it. The table reads the same before and after. The snapshot
/// carries the position of the one it replaces, so a pipeline resumes from it as
/// before. Runs beside a pipeline: if the pipeline commits meanwhile, nothing is changed
/// and the command says to try again (and a mirror pipeline whose commit meets the
/// compaction's starts again from its last commit, its index remapped).
pub async fn compact(
    config: &IcebergSinkConfig,
    table: &Table,
    options: CompactOptions,
) -> Result<Compacted, LakeError> {
    sql_only(config)?;
    if !(0.0..=1.0).contains(&options.delete_threshold) {
        return Err(LakeError::DeleteThreshold(options.delete_threshold));
    }
    let metadata = table.metadata();
    let Some(current) = metadata.current_snapshot().cloned() else {
        return Ok(Compacted::default());
    };
    if metadata.partition_specs_iter().count() != 1 {
        return Err(LakeError::SeveralPartitionSpecs);
    }
    let manifests = load_manifests(table, &current).await?;
    let deletes = Deletes::read(&manifests).await?;
    let (chosen, thinned) = chosen_files(&manifests, &deletes, options);
    if chosen.is_empty() {
        return Ok(Compacted::default());
    }
    let removed: HashSet<String> = chosen.values().flatten().cloned().collect();
    let run = Compaction::new(table, current, options.target_size);
    let (added, rows) = run.rewrite(&chosen).await?;
    let replaced = live_entries(&manifests, &removed, DataContentType::Data);
    let counted: u64 = replaced.iter().map(|e| e.record_count()).sum();
    let purged: u64 = removed.iter().map(|f| deletes.deleted(f)).sum();
    if rows + purged != counted {
        return Err(LakeError::RowCount {
            read: rows,
            counted: counted - purged,
        });
    }
    let dropped = deletes.dropped(&manifests, &removed);
    let gone: HashSet<String> = removed
        .iter()
        .cloned()
        .chain(dropped.iter().map(|e| e.file_path().to_string()))
        .collect();
    let manifest_list = run.write_manifests(manifests, &gone, &added).await?;
    let summary = run.summary(&replaced, &dropped, &added);
    run.commit(config, manifest_list, summary).await?;
    Ok(Compacted {
        removed_files: removed.len(),
        thinned_files: thinned,
        added_files: added.len(),
        rows,
        purged_rows: purged,
        removed_delete_files: dropped.len(),
        snapshot: Some(run.snap.snapshot_id),
    })
}

/// The manifests of the snapshot `current`, each read.
async fn load_manifests(
    table: &Table,
    current: &SnapshotRef,
) -> Result<Vec<(ManifestFile, Manifest)>, LakeError> {
    let list = table.manifest_list_reader(current).load().await?;
    let mut manifests = Vec::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file.load_manifest(table.file_io()).await?;
        manifests.push((manifest_file.clone(), manifest));
    }
    Ok(manifests)
}

/// A table's position deletes, read from its delete files.
#[derive(Default)]
struct Deletes {
    /// Deleted positions by data file.
    positions: HashMap<String, HashSet<u64>>,
    /// How many delete files refer to each data file.
    files: HashMap<String, usize>,
    /// The data files each delete file refers to.
    refers: HashMap<String, HashSet<String>>,
}

impl Deletes {
    /// Reads every live delete file. A table with equality deletes (weir writes none)
    /// is refused: their rows could not be counted.
    async fn read(manifests: &[(ManifestFile, Manifest)]) -> Result<Deletes, LakeError> {
        let mut deletes = Deletes::default();
        for (_, manifest) in manifests {
            let entries = manifest.entries().iter().filter(|e| e.is_alive());
            for entry in entries.filter(|e| e.content_type() != DataContentType::Data) {
                if entry.content_type() != DataContentType::PositionDeletes {
                    return Err(LakeError::EqualityDeletes);
                }
                let path = entry.file_path().to_string();
                let rows = super::position_delete::read(&path)
                    .await
                    .map_err(|message| LakeError::DeleteFile {
                        path: path.clone(),
                        message,
                    })?;
                let mut refers = HashSet::new();
                for (data, pos) in rows {
                    deletes
                        .positions
                        .entry(data.clone())
                        .or_default()
                        .insert(pos);
                    refers.insert(data);
                }
                for data in &refers {
                    *deletes.files.entry(data.clone()).or_default() += 1;
                }
                deletes.refers.insert(path, refers);
            }
        }
        Ok(deletes)
    }

    /// Rows of `data_file` deleted.
    fn deleted(&self, data_file: &str) -> u64 {
        self.positions.get(data_file).map_or(0, |p| p.len() as u64)
    }

    /// Whether deletes have thinned `entry`'s file enough to rewrite it.
    fn thinned(&self, entry: &ManifestEntryRef, threshold: f64) -> bool {
        let deleted = self.deleted(entry.file_path());
        deleted > 0
            && (deleted as f64 >= threshold * entry.record_count() as f64
                || self.files.get(entry.file_path()).copied().unwrap_or(0) >= DELETE_FILES_LIMIT)
    }

    /// The live delete entries left with no live data file to refer to once `removed`
    /// leave the table.
    fn dropped(
        &self,
        manifests: &[(ManifestFile, Manifest)],
        removed: &HashSet<String>,
    ) -> Vec<ManifestEntryRef> {
        let live: HashSet<&str> = manifests
            .iter()
            .flat_map(|(_, m)| m.entries().iter())
            .filter(|e| e.is_alive() && e.content_type() == DataContentType::Data)
            .map(|e| e.file_path())
            .filter(|p| !removed.contains(*p))
            .collect();
        manifests
            .iter()
            .flat_map(|(_, m)| m.entries().iter())
            .filter(|e| e.is_alive() && e.content_type() == DataContentType::PositionDeletes)
            .filter(|e| {
                self.refers
                    .get(e.file_path())
                    .is_some_and(|r| r.iter().all(|d| !live.contains(d.as_str())))
            })
            .cloned()
            .collect()
    }
}

/// The live data files to rewrite, by partition, and how many of them deletes thinned:
/// in each partition, the thinned files and the small ones (under three quarters of
/// the target size), where that makes two files or more, or any thinned one.
fn chosen_files(
    manifests: &[(ManifestFile, Manifest)],
    deletes: &Deletes,
    options: CompactOptions,
) -> (HashMap<Struct, Vec<String>>, usize) {
    let mut chosen: HashMap<Struct, (Vec<String>, usize)> = HashMap::new();
    for (manifest_file, manifest) in manifests {
        if manifest_file.content != ManifestContentType::Data {
            continue;
        }
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let thinned = deletes.thinned(entry, options.delete_threshold);
            if thinned || entry.file_size_in_bytes() < options.target_size * 3 / 4 {
                let (files, n) = chosen
                    .entry(entry.data_file().partition().clone())
                    .or_default();
                files.push(entry.file_path().to_string());
                *n += usize::from(thinned);
            }
        }
    }
    chosen.retain(|_, (files, thinned)| files.len() >= 2 || *thinned > 0);
    let thinned = chosen.values().map(|(_, n)| n).sum();
    let chosen = chosen
        .into_iter()
        .map(|(p, (files, _))| (p, files))
        .collect();
    (chosen, thinned)
}

/// The live entries of `content` whose files are in `paths`.
fn live_entries(
    manifests: &[(ManifestFile, Manifest)],
    paths: &HashSet<String>,
    content: DataContentType,
) -> Vec<ManifestEntryRef> {
    manifests
        .iter()
        .flat_map(|(_, m)| m.entries().iter())
        .filter(|e| e.is_alive() && e.content_type() == content && paths.contains(e.file_path()))
        .cloned()
        .collect()
}

/// A compaction under way: the snapshot it starts from and the one it commits.
struct Compaction<'a> {
    table: &'a Table,
    current: SnapshotRef,
    snap: SnapshotWriter<'a>,
    target_size: u64,
}

impl<'a> Compaction<'a> {
    fn new(table: &'a Table, current: SnapshotRef, target_size: u64) -> Compaction<'a> {
        Compaction {
            table,
            current,
            snap: SnapshotWriter::new(table, "compact"),
            target_size,
        }
    }

    /// Rewrites each partition's chosen files, read in the current schema with their
    /// position deletes applied. Returns the files written and the rows they hold.
    async fn rewrite(
        &self,
        chosen: &HashMap<Struct, Vec<String>>,
    ) -> Result<(Vec<DataFile>, u64), LakeError> {
        let tasks: Vec<FileScanTask> = self
            .table
            .scan()
            .snapshot_id(self.current.snapshot_id())
            .select_all()
            .build()?
            .plan_files()
            .await?
            .try_collect::<Vec<_>>()
            .await?;
        let properties = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let (mut added, mut rows) = (Vec::new(), 0);
        for (n, (partition, files)) in chosen.iter().enumerate() {
            let paths: HashSet<&String> = files.iter().collect();
            let group: Vec<FileScanTask> = tasks
                .iter()
                .filter(|t| paths.contains(&t.data_file_path))
                .cloned()
                .collect();
            let (files, read) = self
                .rewrite_partition(n, partition, group, &properties)
                .await?;
            added.extend(files);
            rows += read;
        }
        Ok((added, rows))
    }

    /// Reads the files of one partition (`group`, the `n`th) and writes their rows
    /// again, in files of up to the target size.
    async fn rewrite_partition(
        &self,
        n: usize,
        partition: &Struct,
        group: Vec<FileScanTask>,
        properties: &WriterProperties,
    ) -> Result<(Vec<DataFile>, u64), LakeError> {
        use iceberg::spec::{DataFileFormat, PartitionKey};
        use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
        use iceberg::writer::file_writer::ParquetWriterBuilder;
        use iceberg::writer::file_writer::location_generator::{
            DefaultFileNameGenerator, DefaultLocationGenerator,
        };
        use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
        use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

        let group: Vec<iceberg::Result<FileScanTask>> = group.into_iter().map(Ok).collect();
        let mut stream = self
            .table
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter(group)))?
            .stream();
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(properties.clone(), self.snap.schema.clone()),
            self.target_size as usize,
            self.table.file_io().clone(),
            DefaultLocationGenerator::new(self.table.metadata())?,
            DefaultFileNameGenerator::new(
                format!("{}-{n}", self.snap.run),
                None,
                DataFileFormat::Parquet,
            ),
        );
        let key = PartitionKey::new(
            (*self.snap.spec).clone(),
            self.snap.schema.clone(),
            partition.clone(),
        );
        let mut writer = DataFileWriterBuilder::new(rolling).build(Some(key)).await?;
        let mut rows = 0;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows() as u64;
            writer.write(batch).await?;
        }
        Ok((writer.close().await?, rows))
    }

    /// Writes the new snapshot's manifests and its manifest list; returns the list's
    /// path. Unchanged manifests stay as they are; those listing a file in `removed`
    /// (data or delete) are written again; one new manifest, first, holds the new files.
    async fn write_manifests(
        &self,
        manifests: Vec<(ManifestFile, Manifest)>,
        removed: &HashSet<String>,
        added: &[DataFile],
    ) -> Result<String, LakeError> {
        let mut new_list = Vec::new();
        for (i, (manifest_file, manifest)) in manifests.into_iter().enumerate() {
            let touched = manifest
                .entries()
                .iter()
                .any(|e| e.is_alive() && removed.contains(e.file_path()));
            if touched {
                let rewritten = self
                    .snap
                    .rewrite_manifest(i, &manifest_file, &manifest, &|p| removed.contains(p))
                    .await?;
                new_list.push(rewritten);
            } else {
                new_list.push(manifest_file);
            }
        }
        // Files whose every row was deleted leave nothing to add.
        if !added.is_empty() {
            let added = self
                .snap
                .added_manifest("added", ManifestContentType::Data, added)
                .await?;
            new_list.insert(0, added);
        }
        self.snap.write_list(new_list).await
    }

    /// The new snapshot's summary: weir's position carried over, the totals adjusted
    /// for the data files `replaced` by `added` and the delete files `dropped`.
    fn summary(
        &self,
        replaced: &[ManifestEntryRef],
        dropped: &[ManifestEntryRef],
        added: &[DataFile],
    ) -> HashMap<String, String> {
        let parent = &self.current.summary().additional_properties;
        let mut summary: HashMap<String, String> = [
            super::catalog::SUMMARY_COMMIT_LSN,
            super::catalog::SUMMARY_END_LSN,
            super::catalog::SUMMARY_SLOT,
            "total-equality-deletes",
        ]
        .iter()
        .filter_map(|k| parent.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
        let sum = |entries: &[ManifestEntryRef], f: fn(&ManifestEntryRef) -> u64| -> i64 {
            entries.iter().map(f).sum::<u64>() as i64
        };
        let added_size: i64 = added.iter().map(|f| f.file_size_in_bytes() as i64).sum();
        let added_rows: i64 = added.iter().map(|f| f.record_count() as i64).sum();
        let removed_rows = sum(replaced, |e| e.record_count());
        let removed_size = sum(replaced, |e| e.file_size_in_bytes());
        let dropped_deletes = sum(dropped, |e| e.record_count());
        let dropped_size = sum(dropped, |e| e.file_size_in_bytes());
        let mut put = |k: &str, v: i64| {
            summary.insert(k.to_string(), v.to_string());
        };
        let total = |k: &str| parent.get(k).and_then(|v| v.parse::<i64>().ok());
        let adjusted = [
            (
                "total-data-files",
                added.len() as i64 - replaced.len() as i64,
            ),
            ("total-records", added_rows - removed_rows),
            ("total-files-size", added_size - removed_size - dropped_size),
            ("total-delete-files", -(dropped.len() as i64)),
            ("total-position-deletes", -dropped_deletes),
        ];
        for (k, change) in adjusted {
            if let Some(before) = total(k) {
                put(k, before + change);
            }
        }
        put("added-data-files", added.len() as i64);
        put("deleted-data-files", replaced.len() as i64);
        put("added-records", added_rows);
        put("deleted-records", removed_rows);
        put("added-files-size", added_size);
        put("removed-files-size", removed_size + dropped_size);
        put("removed-delete-files", dropped.len() as i64);
        put("removed-position-delete-files", dropped.len() as i64);
        put("removed-position-deletes", dropped_deletes);
        if let Some(position) = self
            .table
            .metadata()
            .properties()
            .get(super::catalog::PROP_SLOT)
            .and_then(|slot| super::catalog::committed_position(self.table, slot))
        {
            summary.insert(
                super::catalog::SUMMARY_COMMIT_LSN.into(),
                position.commit_lsn.to_string(),
            );
            summary.insert(
                super::catalog::SUMMARY_END_LSN.into(),
                position.end_lsn.to_string(),
            );
        }
        summary.insert(SUMMARY_COMPACTION.into(), "true".into());
        summary
    }

    /// Commits the `replace` snapshot through the SQL catalog.
    async fn commit(
        &self,
        config: &IcebergSinkConfig,
        manifest_list: String,
        summary: HashMap<String, String>,
    ) -> Result<(), LakeError> {
        self.snap
            .commit(config, manifest_list, Operation::Replace, summary)
            .await
    }
}
