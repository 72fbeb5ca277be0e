//! Delta Lake tables, written with delta-rs (`deltalake`, without DataFusion): one table
//! per source table under `<url>/<schema>/<table>`; changelog tables (append only, with
//! the changelog's columns; README, "Delta Lake tables"; ADR 0018) or mirror tables with
//! Change Data Feed ([`mirror`]; ADR 0019).
//!
//! Exactly once: each table version weir commits carries a `txn` action with the app id
//! `weir:<slot>` and, as its version, the commit LSN of the last source transaction it
//! holds, and the commit info records weir's position. At start each table's `txn`
//! version is where it left off; changes at or before it are skipped.

use super::error::SinkError;
use super::iceberg::schema::conform;
use super::rows::{ChangeRows, changelog_schema_by};
use crate::batch::{CommitPos, Position, SourceBatch};
use crate::config::{DeltaMode, DeltaSinkConfig};
use crate::lsn::Lsn;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use weir_sdk::{Event, Relation};

mod files;
mod log;
mod maintain;
pub mod mirror;
pub use maintain::{Compacted, Expired, compact, expire, remove_unreferenced};
use mirror::MirrorTable;

/// Table configuration keys naming a table's source table and pipeline.
pub const PROP_SOURCE: &str = "weir.source";
pub const PROP_SLOT: &str = "weir.slot";
/// Commit info keys with weir's position.
const INFO_COMMIT_LSN: &str = "weir.commit_lsn";
const INFO_END_LSN: &str = "weir.end_lsn";
/// Commit info key naming the dead-letter replay a commit wrote.
const INFO_REPLAY: &str = "weir.replay";

/// Rows built before they are handed to the table's writer.
const CHUNK_ROWS: usize = 8192;

/// The `txn` app id of a pipeline's commits.
pub fn app_id(slot: &str) -> String {
    format!("weir:{slot}")
}

fn delta_err(table: impl std::fmt::Display, source: DeltaTableError) -> SinkError {
    SinkError::Delta {
        table: table.to_string(),
        source: Box::new(source),
    }
}

/// The rows being written to one table, for one relation version.
struct TableWriter {
    version: u32,
    rows: ChangeRows,
    /// The table's columns.
    target: SchemaRef,
    writer: RecordBatchWriter,
}

/// One changelog table.
struct ChangeTable {
    uri: String,
    table: DeltaTable,
    /// Changes at or before this commit LSN are in the table already.
    skip_through: u64,
    writer: Option<TableWriter>,
    /// Files written and awaiting the next commit.
    adds: Vec<Action>,
    bytes_written: u64,
}

/// Writes Delta changelog tables.
pub struct DeltaSink {
    config: DeltaSinkConfig,
    slot: String,
    app_id: String,
    store: Arc<dyn object_store::ObjectStore>,
    /// Source table (`schema.table`) to its table: changelog tables, or mirror tables.
    tables: HashMap<String, ChangeTable>,
    mirrors: HashMap<String, MirrorTable>,
    durable: Option<CommitPos>,
    properties: WriterProperties,
    last_commit: Instant,
}

impl DeltaSink {
    /// Opens the tables this slot wrote under `url` and reads where each left off.
    pub async fn open(config: DeltaSinkConfig, slot: &str) -> Result<DeltaSink, SinkError> {
        let (mut sink, prefix) = DeltaSink::bare(config, slot)?;
        crate::storage::check_reachable(sink.store.as_ref(), &prefix, &sink.config.url).await?;
        let mut positions = Vec::new();
        for (schema, table) in sink.listed_tables(&prefix).await? {
            let uri = sink.table_uri(&schema, &table);
            let Some(loaded) = sink.load(&uri).await? else {
                continue;
            };
            let config = loaded.snapshot().map_err(|e| delta_err(&uri, e))?;
            let config = config.metadata().configuration();
            if config.get(PROP_SLOT) != Some(&sink.slot) {
                continue;
            }
            let Some(source) = config.get(PROP_SOURCE).cloned() else {
                continue;
            };
            if let Some(message) = sink.mode_mismatch(config) {
                return Err(SinkError::Config { what: uri, message });
            }
            let position = sink.position(&uri, &loaded).await?;
            positions.push(position);
            let skip_through = position.map_or(0, |p| p.commit_lsn.0);
            match sink.config.mode {
                DeltaMode::Changelog => {
                    sink.tables
                        .insert(source, ChangeTable::new(uri, loaded, skip_through));
                }
                DeltaMode::Mirror => {
                    let mirror = sink.mirror(uri, loaded, skip_through).await?;
                    sink.mirrors.insert(source, mirror);
                }
            }
        }
        // Every table has everything before the lowest position; a table without one (a
        // crash before its first commit) means the slot's own position.
        sink.durable = positions
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(|p| p.into_iter().min());
        if let Some(d) = sink.durable {
            tracing::info!(url = %sink.config.url, tables = sink.tables.len(), checkpoint = %d.end_lsn, "Delta sink resumes from its tables' last commits.");
        }
        Ok(sink)
    }

    /// The sink on its storage, no table opened; and the url's path there.
    fn bare(
        config: DeltaSinkConfig,
        slot: &str,
    ) -> Result<(DeltaSink, object_store::path::Path), SinkError> {
        let (store, prefix) = crate::storage::object_store_for(&config.url)?;
        let sink = DeltaSink {
            properties: writer_properties(),
            config,
            slot: slot.to_string(),
            app_id: app_id(slot),
            store,
            tables: HashMap::new(),
            mirrors: HashMap::new(),
            durable: None,
            last_commit: Instant::now(),
        };
        Ok((sink, prefix))
    }

    /// `<schema>/<table>` directories under the sink's prefix.
    async fn listed_tables(
        &self,
        prefix: &object_store::path::Path,
    ) -> Result<Vec<(String, String)>, SinkError> {
        let list = |p: object_store::path::Path| {
            let store = self.store.clone();
            async move {
                store
                    .list_with_delimiter(Some(&p))
                    .await
                    .map(|l| l.common_prefixes)
                    .map_err(|source| crate::storage::StorageError::Store {
                        op: "listing",
                        path: p.to_string(),
                        source,
                    })
            }
        };
        let mut out = Vec::new();
        for schema in list(prefix.clone()).await? {
            for table in list(schema.clone()).await? {
                let name =
                    |p: &object_store::path::Path| p.filename().unwrap_or_default().to_string();
                out.push((name(&schema), name(&table)));
            }
        }
        Ok(out)
    }

    fn table_uri(&self, schema: &str, table: &str) -> String {
        format!("{}/{schema}/{table}", self.config.url.trim_end_matches('/'))
    }

    /// A table handle on weir's object store (not loaded).
    fn handle(&self, uri: &str) -> Result<DeltaTable, SinkError> {
        register_s3();
        let url = url::Url::parse(uri).map_err(|e| SinkError::Config {
            what: uri.to_string(),
            message: e.to_string(),
        })?;
        DeltaTableBuilder::from_url(url.clone())
            .map(|b| b.with_storage_backend(self.store.clone(), url))
            .and_then(|b| b.build())
            .map_err(|e| delta_err(uri, e))
    }

    /// The table at `uri`, loaded; None when there is no Delta log there.
    async fn load(&self, uri: &str) -> Result<Option<DeltaTable>, SinkError> {
        let (_, path) = crate::storage::object_store_for(uri)?;
        let log = path.clone().join("_delta_log");
        let listed = self
            .store
            .list_with_delimiter(Some(&log))
            .await
            .map_err(|source| crate::storage::StorageError::Store {
                op: "listing",
                path: log.to_string(),
                source,
            })?;
        if listed.objects.is_empty() {
            return Ok(None);
        }
        let mut table = self.handle(uri)?;
        table.load().await.map_err(|e| delta_err(uri, e))?;
        Ok(Some(table))
    }

    /// The last source transaction `table` holds for this pipeline: its `txn` version,
    /// and the end LSN its commit info records.
    async fn position(
        &self,
        uri: &str,
        table: &DeltaTable,
    ) -> Result<Option<CommitPos>, SinkError> {
        let snapshot = table.snapshot().map_err(|e| delta_err(uri, e))?;
        let Some(commit_lsn) = snapshot
            .transaction_version(table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(|e| delta_err(uri, e))?
        else {
            return Ok(None);
        };
        let infos = table
            .history(Some(16))
            .await
            .map_err(|e| delta_err(uri, e))?;
        let lsn = |info: &deltalake::kernel::CommitInfo, key: &str| {
            info.info
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<u64>().ok())
        };
        let end_lsn = infos
            .filter(|i| lsn(i, INFO_COMMIT_LSN) == Some(commit_lsn as u64))
            .find_map(|i| lsn(&i, INFO_END_LSN))
            // Resuming at the commit LSN is safe: the transaction is sent again and
            // skipped.
            .unwrap_or(commit_lsn as u64);
        Ok(Some(CommitPos {
            commit_lsn: Lsn(commit_lsn as u64),
            end_lsn: Lsn(end_lsn),
        }))
    }

    /// The last transaction every table holds.
    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    /// Bytes of the data files written since the last call.
    pub fn take_bytes_written(&mut self) -> u64 {
        let changes: u64 = self
            .tables
            .values_mut()
            .map(|t| std::mem::take(&mut t.bytes_written))
            .sum();
        let mirrors: u64 = self
            .mirrors
            .values_mut()
            .map(|t| std::mem::take(&mut t.bytes_written))
            .sum();
        changes + mirrors
    }

    /// Writes a batch's events; commits when the interval has passed at a transaction
    /// boundary.
    pub async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        match self.config.mode {
            DeltaMode::Changelog => self.write_changes(batch).await?,
            DeltaMode::Mirror => self.write_mirrors(batch).await?,
        }
        // A mirror holds its round's rows in memory: past four times target_file_size
        // the commit comes early (an early commit rewrites the files of changed keys).
        let full = self
            .mirrors
            .values()
            .any(|m| m.buffered() >= 4 * self.config.target_file_size);
        let (pending, due) = (
            self.pending(),
            full || self.last_commit.elapsed() >= self.config.commit_interval,
        );
        if batch.position.commit_now(&mut self.durable, pending, due) {
            self.flush(&batch.position).await?;
        }
        Ok(())
    }

    /// Appends a batch's changes to the changelog tables.
    async fn write_changes(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        let keys: Vec<String> = batch
            .batch
            .relations
            .iter()
            .map(Relation::qualified_name)
            .collect();
        let nested = self.config.nested_types.unwrap_or(true);
        for event in &batch.batch.events {
            let relation = batch.batch.relation(event);
            let key = &keys[event.rel as usize];
            if !self.tables.contains_key(key) {
                let table = self.open_table(relation).await?;
                self.tables.insert(key.clone(), table);
            }
            let table = self.tables.get_mut(key).expect("inserted above");
            if event.commit_lsn <= table.skip_through {
                continue;
            }
            if table
                .writer
                .as_ref()
                .is_none_or(|w| w.version != relation.version)
            {
                table.close_writer().await?;
                let properties = self.properties.clone();
                table.writer = Some(table.new_writer(relation, nested, properties).await?);
            }
            let writer = table.writer.as_mut().expect("made above");
            writer.rows.append(event, relation);
            if writer.rows.len() >= CHUNK_ROWS {
                table.write_chunk().await?;
            }
        }
        for table in self.tables.values_mut() {
            table.write_chunk().await?;
            if table
                .writer
                .as_ref()
                .is_some_and(|w| w.writer.buffer_len() as u64 >= self.config.target_file_size)
            {
                table.complete_files().await?;
            }
        }
        Ok(())
    }

    /// Applies a batch's changes to the mirror tables, each run of one relation
    /// version's events in chunks.
    async fn write_mirrors(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        let names: Vec<String> = batch
            .batch
            .relations
            .iter()
            .map(Relation::qualified_name)
            .collect();
        // Each relation's table's position, once its mirror is open.
        let mut skip: Vec<Option<u64>> = vec![None; names.len()];
        let mut runs: Vec<(u32, Vec<&Event>)> = Vec::new();
        for event in &batch.batch.events {
            let rel = event.rel as usize;
            let skip_through = match skip[rel] {
                Some(s) => s,
                None => {
                    if !self.mirrors.contains_key(&names[rel]) {
                        let mirror = self.open_mirror(batch.batch.relation(event)).await?;
                        self.mirrors.insert(names[rel].clone(), mirror);
                    }
                    *skip[rel].insert(self.mirrors[&names[rel]].skip_through)
                }
            };
            if event.commit_lsn <= skip_through {
                continue;
            }
            match runs.last_mut() {
                Some((r, events)) if *r == event.rel => events.push(event),
                _ => runs.push((event.rel, vec![event])),
            }
        }
        for (rel, events) in runs {
            let relation = &batch.batch.relations[rel as usize];
            let mirror = self
                .mirrors
                .get_mut(&names[rel as usize])
                .expect("opened above");
            mirror.prepare(relation).await?;
            for chunk in events.chunks(CHUNK_ROWS) {
                mirror.apply(chunk, relation).await?;
            }
        }
        Ok(())
    }

    /// Writes dead-lettered events to the changelog tables: one version per table and
    /// relation version, its commit info naming the replay (`weir.replay`) so that the
    /// replay run again skips it; the pipeline's `txn` is not moved. A mirror refuses:
    /// an older change would overwrite a newer row.
    pub async fn write_replay(
        &mut self,
        batch: &weir_sdk::Batch,
        name: &str,
    ) -> Result<(), SinkError> {
        if self.config.mode == DeltaMode::Mirror {
            return Err(SinkError::Config {
                what: "a delta mirror sink".into(),
                message: "dead letters cannot be replayed into a mirror table (an older change would overwrite a newer row): replay them into a changelog sink".into(),
            });
        }
        let mut runs: Vec<(u32, Vec<&Event>)> = Vec::new();
        for event in &batch.events {
            match runs.last_mut() {
                Some((rel, events)) if *rel == event.rel => events.push(event),
                _ => runs.push((event.rel, vec![event])),
            }
        }
        let nested = self.config.nested_types.unwrap_or(true);
        for (_, events) in runs {
            let relation = batch.relation(events[0]);
            let key = relation.qualified_name();
            if !self.tables.contains_key(&key) {
                let table = self.open_table(relation).await?;
                self.tables.insert(key.clone(), table);
            }
            let table = self.tables.get_mut(&key).expect("inserted above");
            table
                .table
                .update_state()
                .await
                .map_err(|e| delta_err(&table.uri, e))?;
            let marker = format!("{name}/v{}", relation.version);
            if table.replayed(&marker).await? {
                continue;
            }
            table.close_writer().await?;
            table.writer = Some(
                table
                    .new_writer(relation, nested, self.properties.clone())
                    .await?,
            );
            let writer = table.writer.as_mut().expect("made above");
            for event in &events {
                writer.rows.append(event, relation);
            }
            table.close_writer().await?;
            let properties = CommitProperties::default().with_metadata([
                (INFO_REPLAY.to_string(), marker.clone().into()),
                (PROP_SLOT.to_string(), self.slot.clone().into()),
            ]);
            let version = table.commit_files(properties).await?;
            tracing::info!(table = %table.uri, version, replay = %marker, rows = events.len(), "Dead letters replayed into a Delta table.");
        }
        Ok(())
    }

    fn pending(&self) -> bool {
        self.tables
            .values()
            .any(|t| t.writer.is_some() || !t.adds.is_empty())
            || self.mirrors.values().any(MirrorTable::pending)
    }

    /// Creates (or loads) the table of a relation met for the first time.
    async fn open_table(&self, relation: &Relation) -> Result<ChangeTable, SinkError> {
        let uri = self.table_uri(&relation.schema, &relation.table);
        let source = relation.qualified_name();
        let table = match self.load(&uri).await? {
            Some(table) => table,
            None => self.create(&uri, relation).await?,
        };
        let snapshot = table.snapshot().map_err(|e| delta_err(&uri, e))?;
        let config = snapshot.metadata().configuration();
        let mismatch = match (config.get(PROP_SOURCE), config.get(PROP_SLOT)) {
            (Some(s), _) if *s != source => Some(format!(
                "holds the table of {s}, not of {source}: two source tables map to one Delta table; set a different url"
            )),
            (_, Some(s)) if *s != self.slot => Some(format!(
                "is written by the pipeline of slot `{s}`; one table has one writer"
            )),
            (None, _) | (_, None) => Some(
                "exists and is not a weir table (its configuration has no weir.source and weir.slot): set a different url".into(),
            ),
            _ => self.mode_mismatch(config),
        };
        if let Some(message) = mismatch {
            return Err(SinkError::Config { what: uri, message });
        }
        let position = self.position(&uri, &table).await?;
        Ok(ChangeTable::new(
            uri,
            table,
            position.map_or(0, |p| p.commit_lsn.0),
        ))
    }

    /// What is wrong when a table holds what the sink's mode does not write.
    fn mode_mismatch(&self, config: &HashMap<String, String>) -> Option<String> {
        let held = match config.get(mirror::PROP_MODE).map(String::as_str) {
            Some("mirror") => DeltaMode::Mirror,
            _ => DeltaMode::Changelog,
        };
        let name = |m| match m {
            DeltaMode::Mirror => "mirror",
            DeltaMode::Changelog => "changelog",
        };
        (held != self.config.mode).then(|| {
            format!(
                "holds a {} table, and this sink writes mode = \"{}\": set a different url",
                name(held),
                name(self.config.mode)
            )
        })
    }

    /// Creates (or loads) the mirror table of a relation met for the first time.
    async fn open_mirror(&self, relation: &Relation) -> Result<MirrorTable, SinkError> {
        let uri = self.table_uri(&relation.schema, &relation.table);
        if !relation.columns.iter().any(|c| c.key) {
            return Err(SinkError::Config {
                what: uri,
                message: format!(
                    "{} has no primary key: a mirror table keeps one row per key; add a primary key, or use mode = \"changelog\"",
                    relation.qualified_name()
                ),
            });
        }
        let table = self.open_table(relation).await?;
        self.mirror(table.uri, table.table, table.skip_through)
            .await
    }

    async fn mirror(
        &self,
        uri: String,
        table: DeltaTable,
        skip_through: u64,
    ) -> Result<MirrorTable, SinkError> {
        MirrorTable::open(
            uri,
            table,
            skip_through,
            self.config.nested_types.unwrap_or(true),
            self.config.target_file_size,
            self.properties.clone(),
        )
        .await
    }

    async fn create(&self, uri: &str, relation: &Relation) -> Result<DeltaTable, SinkError> {
        let nested = self.config.nested_types.unwrap_or(true);
        let (schema, configuration) = match self.config.mode {
            DeltaMode::Changelog => (
                delta_schema(&changelog_schema_by(relation, &|_| nested), false),
                vec![
                    (PROP_SOURCE, Some(relation.qualified_name())),
                    (PROP_SLOT, Some(self.slot.clone())),
                ],
            ),
            DeltaMode::Mirror => (
                mirror::table_schema(relation, nested),
                mirror::creation_config(relation, &self.slot),
            ),
        };
        let schema: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| delta_err(uri, e.into()))?;
        let table = self
            .handle(uri)?
            .create()
            .with_table_name(&relation.table)
            .with_columns(schema.fields().cloned())
            .with_configuration(configuration)
            .with_raise_if_key_not_exists(false)
            .with_save_mode(SaveMode::ErrorIfExists)
            .await
            .map_err(|e| delta_err(uri, e))?;
        tracing::info!(table = %uri, source = %relation.qualified_name(), "Delta table created.");
        Ok(table)
    }

    /// Completes every table's files and commits each changed table at `position`.
    /// Does nothing inside a transaction: a commit covers whole transactions only.
    pub async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        let Some(last) = position.flush_point(self.durable) else {
            return Ok(());
        };
        let started = Instant::now();
        let mut committed = 0;
        for table in self.tables.values_mut() {
            table.close_writer().await?;
            if table.adds.is_empty() {
                continue;
            }
            table.commit(&self.app_id, &self.slot, last).await?;
            committed += 1;
        }
        for mirror in self.mirrors.values_mut() {
            if !mirror.pending() {
                continue;
            }
            mirror.commit(&self.app_id, &self.slot, last).await?;
            committed += 1;
        }
        if committed > 0 {
            tracing::debug!(tables = committed, checkpoint = %last.end_lsn, ms = started.elapsed().as_millis() as u64, "Delta commit round done.");
        }
        self.durable = Some(last);
        self.last_commit = Instant::now();
        Ok(())
    }
}

impl ChangeTable {
    fn new(uri: String, table: DeltaTable, skip_through: u64) -> ChangeTable {
        ChangeTable {
            uri,
            table,
            skip_through,
            writer: None,
            adds: Vec::new(),
            bytes_written: 0,
        }
    }

    /// A writer for the relation's rows: the table's columns keep their form (text
    /// stays text); columns the table lacks are added first, in a commit of their own
    /// (which changes nothing a restart depends on: the columns are there or not).
    async fn new_writer(
        &mut self,
        relation: &Relation,
        nested: bool,
        properties: WriterProperties,
    ) -> Result<TableWriter, SinkError> {
        let uri = self.uri.clone();
        let table = self.arrow_schema()?;
        let rule = |c: &weir_sdk::Column| match table.field_with_name(&c.name) {
            Ok(f) => f.data_type() != &DataType::Utf8,
            Err(_) => nested,
        };
        let changelog = changelog_schema_by(relation, &rule);
        let added: Vec<FieldRef> = delta_schema(&changelog, false)
            .fields()
            .iter()
            .filter(|f| table.field_with_name(f.name()).is_err())
            .cloned()
            .collect();
        if !added.is_empty() {
            let names: Vec<String> = added.iter().map(|f| f.name().clone()).collect();
            let fields: StructType = (&Schema::new(added))
                .try_into_kernel()
                .map_err(|e| delta_err(&uri, e.into()))?;
            self.table = self
                .table
                .clone()
                .add_columns()
                .with_fields(fields.fields().cloned().collect::<Vec<_>>())
                .await
                .map_err(|e| delta_err(&uri, e))?;
            tracing::info!(table = %self.uri, columns = ?names, "Delta table evolved: columns added.");
        }
        let writer = RecordBatchWriter::for_table(&self.table)
            .map_err(|e| delta_err(&uri, e))?
            .with_writer_properties(properties);
        Ok(TableWriter {
            version: relation.version,
            rows: ChangeRows::with_schema(relation, delta_schema(&changelog, true)),
            target: writer.arrow_schema(),
            writer,
        })
    }

    /// The table's columns, as Arrow fields.
    fn arrow_schema(&self) -> Result<Schema, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err(&self.uri, e))?;
        snapshot
            .schema()
            .as_ref()
            .try_into_arrow()
            .map_err(|e| delta_err(&self.uri, e.into()))
    }

    /// Hands the built rows to the table's writer, in the table's columns.
    async fn write_chunk(&mut self) -> Result<(), SinkError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if w.rows.is_empty() {
            return Ok(());
        }
        let schema_err = |e: Box<dyn std::error::Error + Send + Sync>| SinkError::Schema {
            table: self.uri.clone(),
            source: e,
        };
        let rows = w.rows.finish().map_err(|e| schema_err(e.into()))?;
        let rows = conform(&rows, &w.target).map_err(|e| schema_err(e.into()))?;
        w.writer
            .write(rows)
            .await
            .map_err(|e| delta_err(&self.uri, e))
    }

    /// Writes the buffered rows out as data files, to be committed with the next commit.
    async fn complete_files(&mut self) -> Result<(), SinkError> {
        self.write_chunk().await?;
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let adds = w
            .writer
            .flush()
            .await
            .map_err(|e| delta_err(&self.uri, e))?;
        self.bytes_written += adds.iter().map(|a| a.size as u64).sum::<u64>();
        self.adds.extend(adds.into_iter().map(Action::Add));
        Ok(())
    }

    async fn close_writer(&mut self) -> Result<(), SinkError> {
        self.complete_files().await?;
        self.writer = None;
        Ok(())
    }

    /// One table version: the files written (and the columns added) since the last,
    /// with the pipeline's `txn` at `last`.
    async fn commit(&mut self, app_id: &str, slot: &str, last: CommitPos) -> Result<(), SinkError> {
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(app_id, last.commit_lsn.0 as i64))
            .with_metadata(commit_info(slot, last));
        let version = self.commit_files(properties).await?;
        tracing::debug!(table = %self.uri, version, lsn = %last.commit_lsn, "Delta table committed.");
        self.skip_through = last.commit_lsn.0;
        Ok(())
    }

    /// Commits the files written since the last commit with `properties`; the version.
    async fn commit_files(&mut self, properties: CommitProperties) -> Result<u64, SinkError> {
        let uri = self.uri.clone();
        let err = |e| delta_err(&uri, e);
        let actions = std::mem::take(&mut self.adds);
        let snapshot = self.table.snapshot().map_err(err)?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let done = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(err)?;
        let version = done.version() as u64;
        self.table.state = Some(done.snapshot());
        Ok(version)
    }

    /// Whether a version's commit info names the replay `marker`.
    async fn replayed(&self, marker: &str) -> Result<bool, SinkError> {
        let infos = self
            .table
            .history(None)
            .await
            .map_err(|e| delta_err(&self.uri, e))?;
        Ok(infos
            .into_iter()
            .any(|i| i.info.get(INFO_REPLAY).and_then(|v| v.as_str()) == Some(marker)))
    }
}

/// How weir writes a Delta table's Parquet files.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// weir's position in a commit's info.
fn commit_info(slot: &str, last: CommitPos) -> HashMap<String, serde_json::Value> {
    HashMap::from([
        (
            INFO_COMMIT_LSN.to_string(),
            last.commit_lsn.0.to_string().into(),
        ),
        (INFO_END_LSN.to_string(), last.end_lsn.0.to_string().into()),
        (PROP_SLOT.to_string(), slot.into()),
    ])
}

/// The changelog schema with Delta's types: `time` and `uuid` (which Delta lacks) as
/// their text. With `metadata`, fields keep theirs (it tells the rows' builders how to
/// read a value: `money`); a table's schema has none.
pub fn delta_schema(schema: &Schema, metadata: bool) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Arc::new(delta_field(f, metadata)))
            .collect::<Vec<FieldRef>>(),
    ))
}

fn delta_field(field: &Field, metadata: bool) -> Field {
    let data_type = match field.data_type() {
        DataType::Time64(_) | DataType::FixedSizeBinary(_) => DataType::Utf8,
        DataType::List(element) => DataType::List(Arc::new(delta_field(element, metadata))),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Arc::new(delta_field(f, metadata)))
                .collect::<Vec<FieldRef>>()
                .into(),
        ),
        other => other.clone(),
    };
    let out = Field::new(field.name(), data_type, field.is_nullable());
    match metadata {
        true => out.with_metadata(field.metadata().clone()),
        false => out,
    }
}

/// Lets delta-rs commit to `s3://` tables on weir's own object store (handed to it per
/// table): its default log store, whose commits are the store's put-if-absent, as on a
/// local disk. (delta-rs's `s3` feature would bring its own S3 client and the AWS SDK.)
fn register_s3() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let url = url::Url::parse(scheme).expect("a scheme");
            deltalake::logstore::logstore_factories()
                .entry(url)
                .or_insert_with(|| Arc::new(DefaultLogStore));
        }
    });
}

struct DefaultLogStore;

impl deltalake::logstore::LogStoreFactory for DefaultLogStore {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &url::Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// A version of a table, as `weir lake snapshots` lists it.
#[derive(Debug, serde::Serialize)]
pub struct TableVersion {
    pub version: u64,
    pub timestamp_ms: i64,
    pub operation: String,
    /// weir's position in the commit (none for the create and schema commits).
    pub commit_lsn: Option<Lsn>,
    pub end_lsn: Option<Lsn>,
    pub current: bool,
}

impl DeltaSink {
    /// The Delta table of source table `schema.table`, loaded; None when there is none.
    pub async fn table_of(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<DeltaTable>, SinkError> {
        self.load(&self.table_uri(schema, table)).await
    }
}

/// The table of source table `schema.table` in a Delta sink's output as it is, and
/// this pipeline's position in it, without opening the sink (`weir verify`); None when
/// there is no table.
pub async fn table_at_rest(
    config: &DeltaSinkConfig,
    slot: &str,
    schema: &str,
    table: &str,
) -> Result<Option<(DeltaTable, Option<CommitPos>)>, SinkError> {
    let (sink, _) = DeltaSink::bare(config.clone(), slot)?;
    let uri = sink.table_uri(schema, table);
    let Some(loaded) = sink.load(&uri).await? else {
        return Ok(None);
    };
    let position = sink.position(&uri, &loaded).await?;
    Ok(Some((loaded, position)))
}

/// The data files of `table`'s loaded version, relative to the table.
pub fn live_files(table: &DeltaTable) -> Result<Vec<String>, SinkError> {
    let uri = table.table_url().to_string();
    let snapshot = table.snapshot().map_err(|e| delta_err(&uri, e))?;
    Ok(snapshot
        .log_data()
        .into_iter()
        .map(|f| f.path().to_string())
        .collect())
}

/// The rows of one of `table`'s files (a path from [`live_files`]).
pub async fn read_file(
    table: &DeltaTable,
    path: &str,
) -> Result<Vec<arrow::array::RecordBatch>, SinkError> {
    let uri = table.table_url().to_string();
    files::read(table.log_store().object_store(None), &uri, path, None).await
}

/// A table's versions, oldest first, with weir's position where a commit records it.
pub async fn versions(table: &DeltaTable) -> Result<Vec<TableVersion>, SinkError> {
    let uri = table.table_url().to_string();
    let current = table.version().unwrap_or(0) as u64;
    let infos: Vec<_> = table
        .history(None)
        .await
        .map_err(|e| delta_err(&uri, e))?
        .collect();
    let lsn = |info: &deltalake::kernel::CommitInfo, key: &str| {
        info.info
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<u64>().ok())
            .map(Lsn)
    };
    // Newest first, one per version down to the oldest kept.
    let mut out: Vec<TableVersion> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| TableVersion {
            version: current - i as u64,
            timestamp_ms: info.timestamp.unwrap_or_default(),
            operation: info.operation.clone().unwrap_or_default(),
            commit_lsn: lsn(info, INFO_COMMIT_LSN),
            end_lsn: lsn(info, INFO_END_LSN),
            current: i == 0,
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// The rows of `table` at `version` (the current one when None), in file order, at most
/// `limit`.
pub async fn rows_at(
    table: &mut DeltaTable,
    version: Option<u64>,
    limit: usize,
) -> Result<Vec<arrow::array::RecordBatch>, SinkError> {
    if let Some(v) = version {
        let uri = table.table_url().to_string();
        table
            .load_version(v as _)
            .await
            .map_err(|e| delta_err(&uri, e))?;
    }
    let mut out = Vec::new();
    let mut left = limit;
    for file in live_files(table)? {
        for batch in read_file(table, &file).await? {
            if left == 0 {
                return Ok(out);
            }
            let take = batch.num_rows().min(left);
            out.push(batch.slice(0, take));
            left -= take;
        }
    }
    Ok(out)
}
