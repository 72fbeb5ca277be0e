//! The Iceberg changelog sink.
//!
//! One Iceberg table per source table, `<namespace>.<table>` (the namespace defaults to
//! the source schema), with the changelog contract's columns, the replica identity as
//! identifier fields, partitioned by day of `_cdc_commit_ts` and written as zstd
//! Parquet. Data files stream to the warehouse as they fill; every `commit_interval`, at
//! a transaction boundary, each changed table gets one append snapshot whose summary
//! records the position it covers (`weir.commit-lsn`, `weir.end-lsn`). That commit is
//! the checkpoint: on restart each table skips what its last snapshot covers, so a crash
//! between writing files and committing leaves only unreferenced files, and nothing
//! twice.

mod catalog;
pub mod commit;
pub mod compact;
pub mod lake;
pub mod mirror;
mod pk_index;
mod position_delete;
pub mod schema;
pub mod storage;

pub use catalog::{
    PROP_CREATED_AFTER, PROP_SLOT, PROP_SOURCE, SUMMARY_COMMIT_LSN, SUMMARY_END_LSN,
    SUMMARY_REPLAY, SUMMARY_SLOT, committed_position, connect, connect_existing, named_table,
    slot_tables, sqlite_path, table_ident, table_position,
};
use catalog::{iceberg_err, not_ours};

use super::error::SinkError;
use super::rows::ChangeRows;
use crate::batch::CommitPos;
use crate::batch::{Position, SourceBatch};
use crate::config::{CatalogConfig, IcebergMode, IcebergPartition, IcebergSinkConfig};
use arrow::datatypes::SchemaRef;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{
    DataFile, DataFileFormat, PartitionKey, Schema, Struct, Transform, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::{Catalog, TableCreation, TableIdent};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use weir_sdk::Relation;

/// Rows gathered before they are handed to the data file writer (at most).
const CHUNK_ROWS: usize = 8192;

/// A data file's Parquet row groups end at this many rows or this size.
const ROW_GROUP_ROWS: usize = 65_536;
const ROW_GROUP_BYTES: usize = 32 << 20;

/// Commits data files to a table in one append snapshot with `summary`.
async fn append(
    catalog: &dyn Catalog,
    table: &Table,
    files: Vec<DataFile>,
    summary: HashMap<String, String>,
) -> Result<Table, SinkError> {
    let ident = table.identifier();
    let tx = Transaction::new(table);
    let action = tx
        .fast_append()
        .add_data_files(files)
        .set_snapshot_properties(summary);
    let tx = action.apply(tx).map_err(|e| iceberg_err(ident, e))?;
    tx.commit(catalog)
        .await
        .map_err(|e| iceberg_err(ident, e.with_context("operation", "commit")))
}

type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// Data files being written for one table, in its current schema.
struct TableWriter {
    /// The relation version the rows are built for.
    version: u32,
    /// The transforms whose output the files hold (`weir.transforms` in their metadata).
    transforms: Option<Arc<str>>,
    rows: ChangeRows,
    target: SchemaRef,
    splitter: Option<RecordBatchPartitionSplitter>,
    writer: FanoutWriter<FileWriterBuilder>,
    rows_written: u64,
}

/// One changelog table.
struct ChangeTable {
    ident: TableIdent,
    table: Table,
    /// Changes at or before this commit LSN are in the table already.
    skip_through: u64,
    writer: Option<TableWriter>,
    /// Data files complete and awaiting the next commit.
    files: Vec<DataFile>,
    /// Bytes of the data files completed in this run (for the metrics).
    bytes_written: u64,
    /// Rows per operation (`r c u d t`) and transforms since the last commit, for the
    /// ledger.
    ops: [u64; 5],
    transforms: std::collections::BTreeSet<String>,
}

/// Writes changelog tables and commits them through the catalog.
pub struct IcebergSink {
    config: IcebergSinkConfig,
    catalog: Arc<dyn Catalog>,
    slot: String,
    /// Source table (`schema.table`) to its changelog table.
    tables: HashMap<String, ChangeTable>,
    durable: Option<CommitPos>,
    properties: WriterProperties,
    last_commit: Instant,
    /// Distinguishes the data files of this run.
    run: String,
    /// Where each table commit is recorded, when the pipeline keeps a ledger.
    ledger: Option<crate::ledger::LedgerLink>,
    /// Writers made in this run: each names its files `<run>-<n>-<count>.parquet`.
    writers: u64,
    last_maintenance: Instant,
}

impl IcebergSink {
    /// Connects to the catalog and reads, from the tables this slot writes, where each
    /// left off.
    pub async fn open(config: IcebergSinkConfig, slot: &str) -> Result<IcebergSink, SinkError> {
        let (store, prefix) = crate::storage::object_store_for(&config.warehouse)?;
        crate::storage::check_reachable(store.as_ref(), &prefix, &config.warehouse).await?;
        let catalog = connect(&config).await?;
        let mut tables = HashMap::new();
        for table in slot_tables(catalog.as_ref(), config.namespace.as_deref(), slot).await? {
            let ident = table.identifier().clone();
            let Some(source) = table.metadata().properties().get(PROP_SOURCE).cloned() else {
                continue;
            };
            let position = table_position(&table, slot);
            tables.insert(
                source,
                ChangeTable {
                    ident,
                    skip_through: position.map_or(0, |p| p.commit_lsn.0),
                    table,
                    writer: None,
                    files: Vec::new(),
                    bytes_written: 0,
                    ops: [0; 5],
                    transforms: Default::default(),
                },
            );
        }
        // The lowest table position: every table has everything before it. (The server
        // starts a slot no earlier than its confirmed position, so an idle table's old
        // position costs nothing.) A table without one (a crash before its first commit)
        // means no position at all: the slot's own flush position, which never passed
        // an unfinished commit round, is where to resume.
        let durable = tables
            .values()
            .map(|t| table_position(&t.table, slot))
            .collect::<Option<Vec<_>>>()
            .and_then(|p| p.into_iter().min());
        if let Some(d) = durable {
            tracing::info!(warehouse = %config.warehouse, tables = tables.len(), checkpoint = %d.end_lsn, "Iceberg sink resumes from its tables' last commits.");
        }
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            // Bounds the memory of each open data file, as for Parquet output.
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            // Wide rows: a row group also ends at this size.
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(IcebergSink {
            run: format!("{slot}-{}", now.as_millis()),
            ledger: None,
            writers: 0,
            config,
            catalog,
            slot: slot.to_string(),
            tables,
            durable,
            properties,
            last_commit: Instant::now(),
            last_maintenance: Instant::now(),
        })
    }

    /// Gives the sink its place in the pipeline's ledger: each table commit appends a
    /// record.
    pub fn set_ledger(&mut self, link: crate::ledger::LedgerLink) {
        self.ledger = Some(link);
    }

    /// Whether the sink holds the commit `record` describes (its table's last weir
    /// commit covers it).
    pub fn holds(&self, record: &crate::ledger::Record) -> bool {
        let Some(table) = record.table.as_ref().and_then(|t| self.tables.get(t)) else {
            return record.table.is_none();
        };
        table_position(&table.table, &self.slot).is_some_and(|p| p.commit_lsn >= record.commit_lsn)
    }

    pub fn warehouse(&self) -> &str {
        &self.config.warehouse
    }

    /// Bytes of the data files this sink completed since the last call.
    pub fn take_bytes_written(&mut self) -> u64 {
        self.tables
            .values_mut()
            .map(|t| std::mem::take(&mut t.bytes_written))
            .sum()
    }

    /// The last transaction every table holds.
    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    /// The last transaction any table holds: output exists up to there.
    pub fn held(&self) -> Option<CommitPos> {
        self.tables
            .values()
            .filter_map(|t| table_position(&t.table, &self.slot))
            .max()
    }

    /// Writes a batch's events; commits when the interval has passed at a transaction
    /// boundary.
    pub async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        // Table names once per batch, not per event.
        let keys: Vec<String> = batch
            .batch
            .relations
            .iter()
            .map(Relation::qualified_name)
            .collect();
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
            if table.writer.as_ref().is_none_or(|w| {
                w.version != relation.version
                    || !super::parquet::same_transforms(&w.transforms, &batch.transforms)
            }) {
                // A new schema, or a swapped transform: each data file holds one of each.
                table.close_writer().await?;
                table
                    .evolve(self.catalog.as_ref(), &self.config, relation)
                    .await?;
                self.writers += 1;
                let name = format!("{}-{}", self.run, self.writers);
                table.writer = Some(table.new_writer(
                    relation,
                    &self.properties,
                    &name,
                    &self.config,
                    batch.transforms.clone(),
                )?);
            }
            let writer = table.writer.as_mut().expect("made above");
            writer.rows.append(event, relation);
            table.ops[super::parquet::op_index(event.op)] += 1;
            if let Some(labels) = batch.transforms.as_deref()
                && self.ledger.is_some()
                && !table.transforms.contains(labels)
            {
                table.transforms.insert(labels.to_owned());
            }
            if writer.rows.len() >= CHUNK_ROWS {
                writer.write_chunk(&table.ident).await?;
            }
        }
        // No rows wait outside the data file writers between batches: what a table holds
        // in memory is its open row groups, bounded by ROW_GROUP_BYTES.
        for table in self.tables.values_mut() {
            if let Some(writer) = table.writer.as_mut() {
                writer.write_chunk(&table.ident).await?;
            }
        }
        let (pending, due) = (
            self.pending(),
            self.last_commit.elapsed() >= self.config.commit_interval,
        );
        if batch.position.commit_now(&mut self.durable, pending, due) {
            self.flush(&batch.position).await?;
        }
        self.maintain().await;
        Ok(())
    }

    fn pending(&self) -> bool {
        self.tables
            .values()
            .any(|t| t.writer.is_some() || !t.files.is_empty())
    }

    /// Creates (or loads) the changelog table of a relation met for the first time.
    async fn open_table(&self, relation: &Relation) -> Result<ChangeTable, SinkError> {
        let ident = table_ident(&self.config, &relation.schema, &relation.table);
        let source = relation.qualified_name();
        let table = load_or_create(self.catalog.as_ref(), &ident, || {
            self.creation(relation, &ident)
        })
        .await?;
        let props = table.metadata().properties();
        if let Some(other) = props.get(PROP_SOURCE).filter(|s| **s != source) {
            return Err(not_ours(
                &ident,
                format!(
                    "holds the changelog of {other}, not of {source}: two source tables map to one Iceberg table; set a different namespace"
                ),
            ));
        }
        if let Some(other) = props.get(PROP_SLOT).filter(|s| **s != self.slot) {
            return Err(not_ours(
                &ident,
                format!("is written by the pipeline of slot `{other}`; one table has one writer"),
            ));
        }
        let position = table_position(&table, &self.slot);
        Ok(ChangeTable {
            ident,
            skip_through: position.map_or(0, |p| p.commit_lsn.0),
            table,
            writer: None,
            files: Vec::new(),
            bytes_written: 0,
            ops: [0; 5],
            transforms: Default::default(),
        })
    }

    fn creation(
        &self,
        relation: &Relation,
        ident: &TableIdent,
    ) -> Result<TableCreation, SinkError> {
        let nested = self.config.nested();
        let schema =
            schema::changelog_schema(relation, nested).map_err(|e| iceberg_err(ident, e))?;
        let ts = schema
            .field_by_name("_cdc_commit_ts")
            .expect("the changelog has a commit time")
            .id;
        let spec = match self.config.partition {
            IcebergPartition::None => None,
            IcebergPartition::Day => Some((Transform::Day, "_cdc_commit_day")),
            IcebergPartition::Hour => Some((Transform::Hour, "_cdc_commit_hour")),
        };
        let mut unbound = UnboundPartitionSpec::builder();
        if let Some((transform, name)) = spec {
            unbound = unbound
                .add_partition_field(ts, name, transform)
                .map_err(|e| iceberg_err(ident, e))?;
        }
        let properties = table_properties(relation, &self.slot, &self.config, self.durable);
        Ok(TableCreation::builder()
            .name(ident.name().to_string())
            .schema(schema)
            .partition_spec(unbound.build())
            .properties(properties.into_iter().map(|(k, v)| (k.to_string(), v)))
            .build())
    }

    /// Completes every data file and commits each changed table at `position`. Does
    /// nothing inside a transaction: a commit may only cover whole transactions.
    pub async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        let Some(last_commit) = position.flush_point(self.durable) else {
            return Ok(());
        };
        let started = Instant::now();
        let mut committed = 0;
        for table in self.tables.values_mut() {
            table.close_writer().await?;
            if table.files.is_empty() {
                continue;
            }
            let files = std::mem::take(&mut table.files);
            let count = files.len();
            if let Some(link) = &self.ledger {
                table.record(link, &self.slot, &files, last_commit).await?;
            }
            let summary = HashMap::from([
                (
                    SUMMARY_COMMIT_LSN.to_string(),
                    last_commit.commit_lsn.to_string(),
                ),
                (SUMMARY_END_LSN.to_string(), last_commit.end_lsn.to_string()),
                (SUMMARY_SLOT.to_string(), self.slot.clone()),
            ]);
            table.table = append(self.catalog.as_ref(), &table.table, files, summary).await?;
            table.skip_through = last_commit.commit_lsn.0;
            committed += 1;
            tracing::debug!(table = %table.ident, files = count, lsn = %last_commit.commit_lsn, "Iceberg table committed.");
        }
        if committed > 0 {
            tracing::debug!(
                tables = committed,
                checkpoint = %last_commit.end_lsn,
                ms = started.elapsed().as_millis() as u64,
                "Iceberg commit round done."
            );
        }
        self.durable = Some(last_commit);
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Writes replayed events (dead letters) in one commit per table, outside the
    /// position: the commit is marked `weir.replay = <name>`, and a name already in a
    /// table's history is not written again.
    pub async fn write_replay(
        &mut self,
        batch: &weir_sdk::Batch,
        name: &str,
    ) -> Result<(), SinkError> {
        let mut by_table: Vec<(String, &Relation, Vec<&weir_sdk::Event>)> = Vec::new();
        for event in &batch.events {
            let relation = batch.relation(event);
            let key = relation.qualified_name();
            match by_table
                .iter_mut()
                .find(|(k, r, _)| *k == key && r.version == relation.version)
            {
                Some((_, _, events)) => events.push(event),
                None => by_table.push((key, relation, vec![event])),
            }
        }
        for (key, relation, events) in by_table {
            if !self.tables.contains_key(&key) {
                let table = self.open_table(relation).await?;
                self.tables.insert(key.clone(), table);
            }
            let table = self.tables.get_mut(&key).expect("inserted above");
            table.table = self
                .catalog
                .load_table(&table.ident)
                .await
                .map_err(|e| iceberg_err(&table.ident, e))?;
            // One commit per table and schema version.
            let marker = format!("{name}/v{}", relation.version);
            let replayed = table.table.metadata().snapshots().any(|s| {
                s.summary()
                    .additional_properties
                    .get(SUMMARY_REPLAY)
                    .is_some_and(|n| *n == marker)
            });
            if replayed {
                continue;
            }
            table
                .evolve(self.catalog.as_ref(), &self.config, relation)
                .await?;
            self.writers += 1;
            let prefix = format!("{}-{}", self.run, self.writers);
            let mut writer =
                table.new_writer(relation, &self.properties, &prefix, &self.config, None)?;
            for event in events {
                writer.rows.append(event, relation);
            }
            writer.write_chunk(&table.ident).await?;
            let files = writer
                .writer
                .close()
                .await
                .map_err(|e| iceberg_err(&table.ident, e))?;
            // The position stays what it was (it survives the expiry of older snapshots).
            let mut summary = HashMap::from([(SUMMARY_REPLAY.to_string(), marker)]);
            if let Some(p) = committed_position(&table.table, &self.slot) {
                summary.insert(SUMMARY_COMMIT_LSN.into(), p.commit_lsn.to_string());
                summary.insert(SUMMARY_END_LSN.into(), p.end_lsn.to_string());
                summary.insert(SUMMARY_SLOT.into(), self.slot.clone());
            }
            table.table = append(self.catalog.as_ref(), &table.table, files, summary).await?;
        }
        Ok(())
    }

    /// Runs the configured maintenance when it is due (between commits); a failure is
    /// logged, never fatal: maintenance only removes history.
    async fn maintain(&mut self) {
        let Some(m) = self.config.maintenance.clone() else {
            return;
        };
        if self.last_maintenance.elapsed() < m.every || self.pending() {
            return;
        }
        self.last_maintenance = Instant::now();
        for table in self.tables.values_mut() {
            if let Some(t) = maintain_table(&self.config, self.catalog.as_ref(), &m, &table.table)
                .await
                .0
            {
                table.table = t;
            }
        }
    }

    /// Drops the slot's tables before an initial snapshot is taken again: a snapshot
    /// that did not finish may have committed some tables and not others, and only its
    /// rows can be in them (streaming starts after the snapshot). Their files stay in
    /// storage, unreferenced.
    pub async fn discard_abandoned_snapshot(&mut self) -> Result<(), SinkError> {
        for (source, table) in self.tables.drain() {
            self.catalog
                .drop_table(&table.ident)
                .await
                .map_err(|e| iceberg_err(&table.ident, e))?;
            tracing::warn!(table = %table.ident, %source, "Dropped the Iceberg table of an unfinished initial snapshot; it is taken again.");
        }
        self.durable = None;
        Ok(())
    }

    /// Abandons open data files: they are never committed, and their rows are written
    /// again after a restart. (Their multipart uploads are not aborted: on S3, a
    /// lifecycle rule for incomplete uploads removes them.)
    pub async fn abort(self) {}
}

impl ChangeTable {
    /// Adds the relation's new columns to the table's schema, in a schema-update commit,
    /// and widens columns whose type PostgreSQL widened where Iceberg allows it (SQL
    /// catalog). Columns dropped in PostgreSQL stay in the table (null in later rows).
    /// Any other type change keeps the table's type: values are cast to it when they fit.
    async fn evolve(
        &mut self,
        catalog: &dyn Catalog,
        config: &IcebergSinkConfig,
        relation: &Relation,
    ) -> Result<(), SinkError> {
        evolve_table(catalog, config, &self.ident, &mut self.table, relation).await
    }

    /// A writer for the relation's rows in the table's current schema; its files are
    /// named `<files>-<n>.parquet`, so `files` must be unique per writer.
    fn new_writer(
        &self,
        relation: &Relation,
        properties: &WriterProperties,
        files: &str,
        config: &IcebergSinkConfig,
        transforms: Option<Arc<str>>,
    ) -> Result<TableWriter, SinkError> {
        let metadata = self.table.metadata();
        let schema: Arc<Schema> = metadata.current_schema().clone();
        // A column keeps the table's form; one the table lacks takes nested_types.
        let rows = ChangeRows::by_form(
            relation,
            &schema::nested_rule(Some(&schema), config.nested()),
        );
        let target = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(&schema)
                .map_err(|e| iceberg_err(&self.ident, e))?,
        );
        let spec = metadata.default_partition_spec().clone();
        let splitter = match spec.is_unpartitioned() {
            true => None,
            false => Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec)
                    .map_err(|e| iceberg_err(&self.ident, e))?,
            ),
        };
        let locations =
            DefaultLocationGenerator::new(metadata).map_err(|e| iceberg_err(&self.ident, e))?;
        let names = DefaultFileNameGenerator::new(files.to_string(), None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(
                match &transforms {
                    Some(t) => properties
                        .clone()
                        .into_builder()
                        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                            "weir.transforms".into(),
                            t.to_string(),
                        )]))
                        .build(),
                    None => properties.clone(),
                },
                schema,
            ),
            config.target_file_size as usize,
            self.table.file_io().clone(),
            locations,
            names,
        );
        Ok(TableWriter {
            version: relation.version,
            transforms,
            rows,
            target,
            splitter,
            writer: FanoutWriter::new(DataFileWriterBuilder::new(rolling)),
            rows_written: 0,
        })
    }

    /// Completes the open data files; they wait for the next commit.
    /// Appends the ledger record of the commit of `files` at `to`, before the commit:
    /// each file read back once and hashed.
    async fn record(
        &mut self,
        link: &crate::ledger::LedgerLink,
        slot: &str,
        files: &[DataFile],
        to: CommitPos,
    ) -> Result<(), SinkError> {
        let source = self
            .table
            .metadata()
            .properties()
            .get(PROP_SOURCE)
            .cloned()
            .unwrap_or_else(|| self.ident.to_string());
        let entries = hashed_files(&self.table, &self.ident, files).await?;
        let mut rows = crate::ledger::RowCounts::default();
        for (op, n) in super::parquet::OPS
            .iter()
            .zip(std::mem::take(&mut self.ops))
        {
            rows.add(&source, op, n);
        }
        let record = crate::ledger::Record {
            seq: 0,
            sink: link.sink,
            sink_name: link.name.clone(),
            flush: None,
            table: Some(source),
            from_lsn: table_position(&self.table, slot)
                .map_or(crate::lsn::Lsn::ZERO, |p| p.end_lsn),
            commit_lsn: to.commit_lsn,
            end_lsn: to.end_lsn,
            files: entries,
            rows: rows.take(),
            transforms: std::mem::take(&mut self.transforms).into_iter().collect(),
            written_at: String::new(),
            prev: None,
        };
        link.ledger.lock().await.append(record).await?;
        Ok(())
    }

    async fn close_writer(&mut self) -> Result<(), SinkError> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        writer.write_chunk(&self.ident).await?;
        if writer.rows_written == 0 {
            return Ok(());
        }
        let files = writer
            .writer
            .close()
            .await
            .map_err(|e| iceberg_err(&self.ident, e))?;
        self.bytes_written += files.iter().map(|f| f.file_size_in_bytes()).sum::<u64>();
        self.files.extend(files);
        Ok(())
    }
}

impl TableWriter {
    /// Hands the buffered rows to the data file writer, split by partition.
    async fn write_chunk(&mut self, ident: &TableIdent) -> Result<(), SinkError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let schema_err = |e: Box<dyn std::error::Error + Send + Sync>| SinkError::Schema {
            table: ident.to_string(),
            source: e,
        };
        let rows = self.rows.finish().map_err(|e| schema_err(e.into()))?;
        let rows = schema::conform(&rows, &self.target).map_err(|e| schema_err(e.into()))?;
        self.rows_written += rows.num_rows() as u64;
        let parts = match &self.splitter {
            Some(s) => s.split(&rows).map_err(|e| iceberg_err(ident, e))?,
            None => vec![(unpartitioned_key(), rows)],
        };
        for (key, part) in parts {
            self.writer
                .write(key, part)
                .await
                .map_err(|e| iceberg_err(ident, e))?;
        }
        Ok(())
    }
}

/// One table's scheduled maintenance: compaction when configured, then the expiry of
/// old snapshots. Returns the table as it is afterwards (when it could be read) and
/// whether a compaction committed. A failure is logged, never fatal: maintenance only
/// rewrites files and removes history, and runs again later.
pub(super) async fn maintain_table(
    config: &IcebergSinkConfig,
    catalog: &dyn Catalog,
    m: &crate::config::MaintenanceConfig,
    table: &Table,
) -> (Option<Table>, bool) {
    let ident = table.identifier();
    let mut compacted = false;
    if m.compact {
        let options = compact::CompactOptions {
            target_size: config.target_file_size,
            delete_threshold: m.delete_threshold,
        };
        match compact::compact(config, table, options).await {
            Ok(done) if done.snapshot.is_some() => {
                compacted = true;
                tracing::info!(table = %ident, removed = done.removed_files, thinned = done.thinned_files, added = done.added_files, rows = done.rows, purged = done.purged_rows, delete_files = done.removed_delete_files, "Maintenance compacted the table.")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(table = %ident, error = %e, "Compaction failed; it runs again later.")
            }
        }
    }
    match lake::expire_snapshots(catalog, ident, m.expire_older_than).await {
        Ok((t, expired)) => {
            if expired > 0 {
                tracing::info!(table = %ident, expired, "Maintenance expired old snapshots.");
            }
            (Some(t), compacted)
        }
        Err(e) => {
            tracing::warn!(table = %ident, error = %e, "Maintenance failed; it runs again later.");
            (catalog.load_table(ident).await.ok(), compacted)
        }
    }
}

fn unpartitioned_key() -> PartitionKey {
    PartitionKey::new(
        iceberg::spec::PartitionSpec::unpartition_spec(),
        Arc::new(Schema::builder().build().expect("an empty schema builds")),
        Struct::empty(),
    )
}

/// Adds the relation's new columns to the table's schema, in a schema-update commit,
/// and widens columns whose type PostgreSQL widened where Iceberg allows it (SQL
/// catalog). Columns dropped in PostgreSQL stay in the table (null in later rows).
/// Any other type change keeps the table's type: values are cast to it when they fit.
pub(super) async fn evolve_table(
    catalog: &dyn Catalog,
    config: &IcebergSinkConfig,
    ident: &TableIdent,
    table: &mut Table,
    relation: &Relation,
) -> Result<(), SinkError> {
    let mut missing =
        schema::missing_columns(relation, table.metadata().current_schema(), config.nested());
    // A mirror table made before mirrors kept values that do not fit.
    let unfit = mirror::UNFIT;
    if config.mode == IcebergMode::Mirror
        && table
            .metadata()
            .current_schema()
            .field_by_name(unfit)
            .is_none()
    {
        let text = iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::String);
        missing.push((unfit.to_string(), text));
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
        let tx = Transaction::new(&*table);
        let mut action = tx.update_schema();
        for (name, ty) in &missing {
            action = action.add_column(iceberg::transaction::AddColumn::optional(name, ty.clone()));
        }
        let tx = action.apply(tx).map_err(|e| iceberg_err(ident, e))?;
        *table = tx
            .commit(catalog)
            .await
            .map_err(|e| iceberg_err(ident, e.with_context("operation", "schema update")))?;
        tracing::info!(table = %ident, columns = ?names, schema_id = table.metadata().current_schema_id(), "Iceberg schema evolved: columns added.");
    }
    let nested =
        schema::missing_nested_fields(relation, table.metadata().current_schema(), config.nested());
    if !nested.is_empty() {
        let names: Vec<String> = nested.iter().map(|(p, n, _)| format!("{p}.{n}")).collect();
        let tx = Transaction::new(&*table);
        let mut action = tx.update_schema();
        for (parent, name, ty) in &nested {
            action = action.add_column(
                iceberg::transaction::AddColumn::builder()
                    .parent(parent.clone())
                    .name(name.clone())
                    .field_type(ty.clone())
                    .build(),
            );
        }
        let tx = action.apply(tx).map_err(|e| iceberg_err(ident, e))?;
        *table = tx
            .commit(catalog)
            .await
            .map_err(|e| iceberg_err(ident, e.with_context("operation", "schema update")))?;
        tracing::info!(table = %ident, fields = ?names, schema_id = table.metadata().current_schema_id(), "Iceberg schema evolved: fields added to composite columns.");
    }
    let changed = schema::changed_columns(relation, table.metadata().current_schema());
    let schema = table.metadata().current_schema().clone();
    let widenable: Vec<_> = changed
        .iter()
        .filter(|(name, to)| {
            schema
                .field_by_name(name)
                .is_some_and(|f| schema::promotable(&f.field_type, to))
        })
        .cloned()
        .collect();
    if widenable.is_empty() {
        return Ok(());
    }
    if matches!(config.catalog, CatalogConfig::Rest { .. }) {
        tracing::warn!(table = %ident, columns = ?widenable.iter().map(|c| &c.0).collect::<Vec<_>>(), "Column types widened in PostgreSQL stay narrow in Iceberg (a REST catalog cannot be sent the change by iceberg 0.10.1); values are cast and a value that does not fit stops the sink.");
        return Ok(());
    }
    // Against the table as it is now (a compaction may have committed meanwhile).
    *table = catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_err(ident, e))?;
    let widened = lake::widen_columns(config, &*table, &widenable)
        .await
        .map_err(|e| SinkError::Schema {
            table: ident.to_string(),
            source: format!("widening columns: {e}").into(),
        })?;
    *table = catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_err(ident, e))?;
    tracing::info!(table = %ident, columns = ?widened, schema_id = table.metadata().current_schema_id(), "Iceberg schema evolved: column types widened.");
    Ok(())
}

/// Each of `files` read back once and hashed, as the ledger names them.
pub(super) async fn hashed_files(
    table: &Table,
    ident: &TableIdent,
    files: &[DataFile],
) -> Result<Vec<crate::ledger::FileEntry>, SinkError> {
    let mut entries = Vec::new();
    for file in files {
        let path = file.file_path();
        let bytes = table
            .file_io()
            .new_input(path)
            .map_err(|e| iceberg_err(ident, e))?
            .read()
            .await
            .map_err(|e| iceberg_err(ident, e))?;
        entries.push(crate::ledger::FileEntry {
            path: path.to_owned(),
            size: bytes.len() as u64,
            sha256: crate::ledger::sha256_hex(&bytes),
        });
    }
    Ok(entries)
}

/// Loads the table `ident`, or creates it (and its namespace) as `creation` says.
pub(super) async fn load_or_create(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    creation: impl FnOnce() -> Result<TableCreation, SinkError>,
) -> Result<Table, SinkError> {
    let exists = catalog
        .table_exists(ident)
        .await
        .map_err(|e| iceberg_err(ident, e))?;
    if exists {
        return catalog
            .load_table(ident)
            .await
            .map_err(|e| iceberg_err(ident, e));
    }
    let namespace = ident.namespace();
    if !catalog
        .namespace_exists(namespace)
        .await
        .map_err(|e| iceberg_err(ident, e))?
    {
        catalog
            .create_namespace(namespace, HashMap::new())
            .await
            .map_err(|e| iceberg_err(ident, e))?;
    }
    let table = catalog
        .create_table(namespace, creation()?)
        .await
        .map_err(|e| iceberg_err(ident, e))?;
    tracing::info!(table = %ident, "Iceberg table created.");
    Ok(table)
}

/// The properties weir gives a table it creates: whose it is and how it is written.
pub(super) fn table_properties(
    relation: &Relation,
    slot: &str,
    config: &IcebergSinkConfig,
    durable: Option<CommitPos>,
) -> Vec<(&'static str, String)> {
    let mut properties = vec![
        (PROP_SOURCE, relation.qualified_name()),
        (PROP_SLOT, slot.to_owned()),
        ("write.parquet.compression-codec", "zstd".into()),
        (
            "write.target-file-size-bytes",
            config.target_file_size.to_string(),
        ),
    ];
    if let Some(d) = durable {
        properties.push((
            PROP_CREATED_AFTER,
            format!("{} {}", d.commit_lsn, d.end_lsn),
        ));
    }
    properties
}
