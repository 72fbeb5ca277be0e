//! Snapshots iceberg 0.10.1 cannot make by itself: a row delta (new data files and
//! position delete files in one snapshot, what a mirror table commits) and a replace (a
//! compaction's rewritten files). weir writes the manifests, the manifest list and the
//! metadata, and swaps the catalog's pointer only if it still names the metadata the
//! change was made from (the SQL catalog's compare-and-swap). When a release of
//! iceberg-rust has these actions, this module gives way to them.

use super::lake::LakeError;
use crate::config::{CatalogConfig, IcebergSinkConfig};
use iceberg::spec::{
    DataContentType, DataFile, MAIN_BRANCH, Manifest, ManifestContentType, ManifestFile,
    ManifestListWriter, ManifestWriter, ManifestWriterBuilder, Operation, PartitionSpecRef,
    SchemaRef, Snapshot, SnapshotRef, Summary,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableIdent};
use std::collections::HashMap;
use std::str::FromStr;

/// Refuses what only the SQL catalog can take.
pub fn sql_only(config: &IcebergSinkConfig) -> Result<(), LakeError> {
    match config.catalog {
        CatalogConfig::Sql { .. } => Ok(()),
        CatalogConfig::Rest { .. } => Err(LakeError::NeedsSqlCatalog),
    }
}

/// Commits new metadata for a table of the SQL catalog: writes the next metadata file,
/// then points the catalog at it only if it still names the metadata `table` was read
/// from (the SQL catalog's own commit protocol).
pub async fn commit_metadata(
    config: &IcebergSinkConfig,
    ident: &TableIdent,
    table: &Table,
    updated: iceberg::spec::TableMetadata,
) -> Result<(), LakeError> {
    sql_only(config)?;
    let CatalogConfig::Sql { path, name } = &config.catalog else {
        unreachable!("checked above");
    };
    let current = table
        .metadata_location()
        .ok_or(LakeError::NoMetadataFile)?
        .to_string();
    let next = MetadataLocation::from_str(&current)?.with_next_version();
    updated.write_to(table.file_io(), &next).await?;
    let db = super::catalog::sqlite_path(config, path.as_deref()).map_err(LakeError::Sink)?;
    let catalog_err = |source| LakeError::CatalogDb {
        db: db.clone(),
        source,
    };
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .map_err(catalog_err)?;
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
    .map_err(catalog_err)?;
    pool.close().await;
    match swapped.rows_affected() {
        1 => Ok(()),
        _ => Err(LakeError::ChangedMeanwhile),
    }
}

/// A snapshot being written on top of the table's current one.
pub struct SnapshotWriter<'a> {
    pub table: &'a Table,
    pub parent: Option<SnapshotRef>,
    pub spec: PartitionSpecRef,
    pub schema: SchemaRef,
    pub snapshot_id: i64,
    pub sequence_number: i64,
    /// Names the files this snapshot writes (`<kind>-<snapshot id>`).
    pub run: String,
}

impl<'a> SnapshotWriter<'a> {
    pub fn new(table: &'a Table, kind: &str) -> SnapshotWriter<'a> {
        let metadata = table.metadata();
        let snapshot_id = loop {
            let id = rand::random::<i64>().abs();
            if id > 0 && metadata.snapshot_by_id(id).is_none() {
                break id;
            }
        };
        SnapshotWriter {
            table,
            parent: metadata.current_snapshot().cloned(),
            spec: metadata.default_partition_spec().clone(),
            schema: metadata.current_schema().clone(),
            snapshot_id,
            sequence_number: metadata.last_sequence_number() + 1,
            run: format!("{kind}-{snapshot_id}"),
        }
    }

    /// The table's location, without a trailing slash.
    pub fn location(&self) -> &str {
        self.table.metadata().location().trim_end_matches('/')
    }

    /// A file of this snapshot under the table's `metadata/`.
    pub fn metadata_path(&self, name: &str) -> String {
        format!("{}/metadata/{}-{name}.avro", self.location(), self.run)
    }

    /// A file of this snapshot under the table's `data/`.
    pub fn data_path(&self, name: &str) -> String {
        format!("{}/data/{}-{name}.parquet", self.location(), self.run)
    }

    pub fn manifest_writer(
        &self,
        path: &str,
        content: ManifestContentType,
    ) -> Result<ManifestWriter, LakeError> {
        let output = self.table.file_io().new_output(path)?;
        let builder = ManifestWriterBuilder::new(
            output,
            Some(self.snapshot_id),
            self.schema.clone(),
            (*self.spec).clone(),
        );
        Ok(match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        })
    }

    /// The `i`th manifest written again: the files `removed` says deleted, the others
    /// existing.
    pub async fn rewrite_manifest(
        &self,
        i: usize,
        manifest_file: &ManifestFile,
        manifest: &Manifest,
        removed: &dyn Fn(&str) -> bool,
    ) -> Result<ManifestFile, LakeError> {
        let parent = self.parent.as_ref().map_or(-1, |p| p.snapshot_id());
        let mut w =
            self.manifest_writer(&self.metadata_path(&format!("m{i}")), manifest_file.content)?;
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let data_sequence = entry.sequence_number.ok_or(LakeError::NoSequenceNumber)?;
            let file_sequence = entry.file_sequence_number.or(Some(data_sequence));
            let file = entry.data_file().clone();
            if removed(entry.file_path()) {
                w.add_delete_file(file, data_sequence, file_sequence)?;
            } else {
                w.add_existing_file(
                    file,
                    entry.snapshot_id.unwrap_or(parent),
                    data_sequence,
                    file_sequence,
                )?;
            }
        }
        Ok(w.write_manifest_file().await?)
    }

    /// A new manifest of `files` (all data or all deletes), added by this snapshot.
    pub async fn added_manifest(
        &self,
        name: &str,
        content: ManifestContentType,
        files: &[DataFile],
    ) -> Result<ManifestFile, LakeError> {
        let mut w = self.manifest_writer(&self.metadata_path(name), content)?;
        for file in files {
            w.add_file(file.clone(), self.sequence_number)?;
        }
        Ok(w.write_manifest_file().await?)
    }

    /// Writes the manifest list; returns its path.
    pub async fn write_list(&self, manifests: Vec<ManifestFile>) -> Result<String, LakeError> {
        let path = format!(
            "{}/metadata/snap-{}-1-{}.avro",
            self.location(),
            self.snapshot_id,
            self.run
        );
        let out = self.table.file_io().new_output(&path)?;
        let mut writer = ManifestListWriter::v2(
            out.writer().await?,
            self.snapshot_id,
            self.parent.as_ref().map(|p| p.snapshot_id()),
            self.sequence_number,
        );
        writer.add_manifests(manifests.into_iter())?;
        writer.close().await?;
        Ok(path)
    }

    /// Commits the snapshot through the SQL catalog.
    pub async fn commit(
        &self,
        config: &IcebergSinkConfig,
        manifest_list: String,
        operation: Operation,
        summary: HashMap<String, String>,
    ) -> Result<(), LakeError> {
        let now = chrono::Utc::now().timestamp_millis();
        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(self.parent.as_ref().map(|p| p.snapshot_id()))
            .with_sequence_number(self.sequence_number)
            .with_timestamp_ms(
                self.parent
                    .as_ref()
                    .map_or(now, |p| now.max(p.timestamp_ms() + 1)),
            )
            .with_manifest_list(manifest_list)
            .with_summary(Summary {
                operation,
                additional_properties: summary,
            })
            .with_schema_id(self.schema.schema_id())
            .build();
        let updated = self
            .table
            .metadata()
            .clone()
            .into_builder(self.table.metadata_location().map(str::to_string))
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .and_then(|b| b.build())?
            .metadata;
        commit_metadata(config, self.table.identifier(), self.table, updated).await
    }
}

/// What one mirror commit changes.
#[derive(Default)]
pub struct RowDelta {
    /// New data files.
    pub data: Vec<DataFile>,
    /// New position delete files.
    pub deletes: Vec<DataFile>,
    /// Every file live before this commit is removed first (a truncate).
    pub truncate: bool,
    /// weir's own summary properties (the position it covers).
    pub properties: HashMap<String, String>,
}

/// Commits a row delta as one snapshot: the parent's manifests as they are (all their
/// files removed, for a truncate), a manifest of the new data files, and one of the new
/// position delete files. Returns the snapshot's id.
pub async fn commit_row_delta(
    config: &IcebergSinkConfig,
    table: &Table,
    delta: RowDelta,
) -> Result<i64, LakeError> {
    sql_only(config)?;
    let writer = SnapshotWriter::new(table, "mirror");
    let mut manifests = Vec::new();
    let (mut removed_data, mut removed_deletes, mut removed_records) = (0i64, 0i64, 0i64);
    if let Some(parent) = &writer.parent {
        let list = table.manifest_list_reader(parent).load().await?;
        for (i, manifest_file) in list.entries().iter().enumerate() {
            if !delta.truncate {
                manifests.push(manifest_file.clone());
                continue;
            }
            let manifest = manifest_file.load_manifest(table.file_io()).await?;
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                match e.data_file().content_type() {
                    DataContentType::Data => {
                        removed_data += 1;
                        removed_records += e.record_count() as i64;
                    }
                    _ => removed_deletes += 1,
                }
            }
            manifests.push(
                writer
                    .rewrite_manifest(i, manifest_file, &manifest, &|_| true)
                    .await?,
            );
        }
    }
    if !delta.data.is_empty() {
        let m = writer
            .added_manifest("data", ManifestContentType::Data, &delta.data)
            .await?;
        manifests.insert(0, m);
    }
    if !delta.deletes.is_empty() {
        let m = writer
            .added_manifest("deletes", ManifestContentType::Deletes, &delta.deletes)
            .await?;
        manifests.insert(0, m);
    }
    let operation = match (
        delta.data.is_empty(),
        delta.deletes.is_empty() && !delta.truncate,
    ) {
        (false, true) => Operation::Append,
        (true, false) => Operation::Delete,
        _ => Operation::Overwrite,
    };
    let removed = Removed {
        data: removed_data,
        deletes: removed_deletes,
        records: removed_records,
        truncate: delta.truncate,
    };
    let mut summary = totals(writer.parent.as_ref(), &delta, &removed);
    summary.extend(delta.properties);
    let list = writer.write_list(manifests).await?;
    writer.commit(config, list, operation, summary).await?;
    Ok(writer.snapshot_id)
}

/// What a truncate removed.
struct Removed {
    data: i64,
    deletes: i64,
    records: i64,
    truncate: bool,
}

/// The snapshot summary's counts: what this commit added and the table's totals.
fn totals(
    parent: Option<&SnapshotRef>,
    delta: &RowDelta,
    removed: &Removed,
) -> HashMap<String, String> {
    let total = |k: &str| {
        parent
            .and_then(|p| p.summary().additional_properties.get(k))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let added_records: i64 = delta.data.iter().map(|f| f.record_count() as i64).sum();
    let added_deletes: i64 = delta.deletes.iter().map(|f| f.record_count() as i64).sum();
    let added_size: i64 = delta
        .data
        .iter()
        .chain(&delta.deletes)
        .map(|f| f.file_size_in_bytes() as i64)
        .sum();
    let (data_files, delete_files, records, position_deletes) = match removed.truncate {
        true => (
            delta.data.len() as i64,
            delta.deletes.len() as i64,
            added_records,
            added_deletes,
        ),
        false => (
            total("total-data-files") + delta.data.len() as i64,
            total("total-delete-files") + delta.deletes.len() as i64,
            total("total-records") + added_records,
            total("total-position-deletes") + added_deletes,
        ),
    };
    let mut s: HashMap<String, String> = HashMap::new();
    let mut put = |k: &str, v: i64| {
        s.insert(k.to_string(), v.to_string());
    };
    put("added-data-files", delta.data.len() as i64);
    put("added-records", added_records);
    put("added-delete-files", delta.deletes.len() as i64);
    put("added-position-delete-files", delta.deletes.len() as i64);
    put("added-position-deletes", added_deletes);
    put("added-files-size", added_size);
    if removed.truncate {
        put("deleted-data-files", removed.data);
        put("removed-delete-files", removed.deletes);
        put("deleted-records", removed.records);
    }
    put("total-data-files", data_files);
    put("total-delete-files", delete_files);
    put("total-records", records);
    put("total-position-deletes", position_deletes);
    put("total-equality-deletes", 0);
    s
}
