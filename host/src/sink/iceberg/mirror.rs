//! Mirror tables (`mode = "mirror"`): each source table's current state as an Iceberg
//! v2 table, merge-on-read. Each commit is one snapshot that adds the new rows as data
//! files and removes the rows they replace (and deleted rows) with position delete
//! files. Where a key's live row is comes from the table's primary-key index
//! ([`PkIndex`]), which is updated after each commit and rebuilt from the table when it
//! does not describe the table's current snapshot.
//!
//! Within a commit interval a key's changes are folded: a row replaced before it was
//! written never reaches a data file; one replaced after gets a position delete in the
//! same commit (deletes apply to data files of their own snapshot). A truncate removes
//! every live file in the commit that follows it.

use super::commit::{RowDelta, commit_row_delta};
use super::pk_index::{Loc, PkIndex};
use super::{
    PROP_SLOT, PROP_SOURCE, SUMMARY_COMMIT_LSN, SUMMARY_END_LSN, SUMMARY_SLOT, iceberg_err,
    not_ours, table_ident, table_position,
};
use crate::batch::{CommitPos, Position, SourceBatch};
use crate::config::IcebergSinkConfig;
use crate::sink::SinkError;
use crate::sink::keys::KeyCodec;
pub use crate::sink::rows::{MirrorRows, UNFIT, mirror_arrow_schema};
use arrow::array::BooleanArray;
use arrow::datatypes::DataType;
use futures::TryStreamExt;
use iceberg::spec::{DataFile, DataFileFormat, Schema, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{CurrentFileStatus, IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, TableCreation, TableIdent};
use object_store::ObjectStoreExt;
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_sdk::{Event, Op, Relation, Value};

/// Table property naming what a weir table holds: `mirror` for mirror tables.
pub const PROP_MODE: &str = "weir.mode";

/// Events handled together: their keys converted and looked up at once.
const CHUNK: usize = 8192;

type Writer =
    DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// One mirror table and the changes of the commit round under way.
struct MirrorTable {
    ident: TableIdent,
    source: String,
    table: Table,
    /// Changes at or before this commit LSN are in the table already.
    skip_through: u64,
    index: PkIndex,
    codec: KeyCodec,
    /// The table's key columns.
    key_names: Vec<String>,
    /// Key columns' places in the relation.
    key_columns: Vec<usize>,
    writer: Option<(u32, Writer)>,
    /// The data file the open writer is filling, once it has rows.
    open_file: Option<Arc<str>>,
    files: Vec<DataFile>,
    /// Keys changed in the chunk under way: where the live row is now (`None`: no
    /// live row). Staged in the index after each chunk, so memory does not grow with
    /// the commit interval.
    overlay: HashMap<Vec<u8>, Option<Loc>>,
    /// Changes staged in the index since the last commit.
    changed: bool,
    /// Rows to delete, by data file.
    deletes: HashMap<Arc<str>, Vec<u64>>,
    /// A truncate in this round: every file live before it goes.
    truncate: bool,
    rows_written: u64,
    /// Changes per operation (`r c u d t`) and transforms this round, for the ledger.
    ops: [u64; 5],
    transforms: std::collections::BTreeSet<String>,
    /// How this table's writers are made.
    properties: WriterProperties,
    target_file_size: u64,
    files_prefix: String,
    writers: u64,
    /// `[sink] nested_types`: the form of a column the table does not have yet.
    nested_types: bool,
}

/// Writes mirror tables and commits them through the SQL catalog.
pub struct MirrorSink {
    config: IcebergSinkConfig,
    catalog: Arc<dyn Catalog>,
    slot: String,
    tables: HashMap<String, MirrorTable>,
    durable: Option<CommitPos>,
    properties: WriterProperties,
    last_commit: Instant,
    run: String,
    writers: u64,
    index_dir: PathBuf,
    /// Where each table commit is recorded, when the pipeline keeps a ledger.
    ledger: Option<crate::ledger::LedgerLink>,
    last_maintenance: Instant,
}

/// Where the index of a table lives by default: the user's cache directory.
pub fn default_index_dir(slot: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("weir").join("index").join(slot)
}

impl MirrorSink {
    pub async fn open(config: IcebergSinkConfig, slot: &str) -> Result<MirrorSink, SinkError> {
        let (store, prefix) = crate::storage::object_store_for(&config.warehouse)?;
        crate::storage::check_reachable(store.as_ref(), &prefix, &config.warehouse).await?;
        let catalog = super::connect(&config).await?;
        let index_dir = config
            .index_dir
            .clone()
            .unwrap_or_else(|| default_index_dir(slot));
        let properties = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .set_max_row_group_row_count(Some(super::ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(super::ROW_GROUP_BYTES))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut sink = MirrorSink {
            run: format!("{slot}-{}", now.as_millis()),
            writers: 0,
            config,
            catalog,
            slot: slot.to_string(),
            tables: HashMap::new(),
            durable: None,
            properties,
            last_commit: Instant::now(),
            index_dir,
            ledger: None,
            last_maintenance: Instant::now(),
        };
        let tables = super::slot_tables(
            sink.catalog.as_ref(),
            sink.config.namespace.as_deref(),
            slot,
        )
        .await?;
        for table in tables {
            let props = table.metadata().properties();
            let (Some(source), Some("mirror")) = (
                props.get(PROP_SOURCE).cloned(),
                props.get(PROP_MODE).map(String::as_str),
            ) else {
                continue;
            };
            let opened = sink
                .prepare(table.identifier().clone(), source.clone(), table)
                .await?;
            sink.tables.insert(source, opened);
        }
        sink.durable = sink
            .tables
            .values()
            .map(|t| table_position(&t.table, slot))
            .collect::<Option<Vec<_>>>()
            .and_then(|p| p.into_iter().min());
        if let Some(d) = sink.durable {
            tracing::info!(warehouse = %sink.config.warehouse, tables = sink.tables.len(), checkpoint = %d.end_lsn, "Iceberg mirror resumes from its tables' last commits.");
        }
        Ok(sink)
    }

    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    /// Gives the sink its place in the pipeline's ledger: each table commit appends a
    /// record.
    pub fn set_ledger(&mut self, link: crate::ledger::LedgerLink) {
        self.ledger = Some(link);
    }

    /// Whether the sink holds the commit `record` describes.
    pub fn holds(&self, record: &crate::ledger::Record) -> bool {
        let Some(table) = record.table.as_ref().and_then(|t| self.tables.get(t)) else {
            return record.table.is_none();
        };
        table_position(&table.table, &self.slot).is_some_and(|p| p.commit_lsn >= record.commit_lsn)
    }

    /// The last transaction any table holds: output exists up to there.
    pub fn held(&self) -> Option<CommitPos> {
        self.tables
            .values()
            .filter_map(|t| table_position(&t.table, &self.slot))
            .max()
    }

    /// Opens a mirror table's index, rebuilding it when it does not describe the
    /// table's current snapshot.
    async fn prepare(
        &self,
        ident: TableIdent,
        source: String,
        table: Table,
    ) -> Result<MirrorTable, SinkError> {
        let schema = table.metadata().current_schema().clone();
        let key_ids: Vec<i32> = schema.identifier_field_ids().collect();
        if key_ids.is_empty() {
            return Err(not_ours(
                &ident,
                "has no identifier fields: it is not a weir mirror table".into(),
            ));
        }
        let arrow =
            iceberg::arrow::schema_to_arrow_schema(&schema).map_err(|e| iceberg_err(&ident, e))?;
        let key_names: Vec<String> = key_ids
            .iter()
            .filter_map(|id| schema.field_by_id(*id).map(|f| f.name.clone()))
            .collect();
        let types: Vec<DataType> = key_names
            .iter()
            .filter_map(|n| arrow.field_with_name(n).ok().map(|f| f.data_type().clone()))
            .collect();
        let codec = KeyCodec::new(types).map_err(|e| SinkError::Schema {
            table: ident.to_string(),
            source: e.into(),
        })?;
        let path = self.index_dir.join(format!(
            "{}.{}.redb",
            ident.namespace().join("."),
            ident.name()
        ));
        let mut index = PkIndex::open(&path).map_err(|e| index_err(&ident, e))?;
        // Changes a crash left staged belong to a commit that did not happen.
        index.drop_staged().map_err(|e| index_err(&ident, e))?;
        catch_up_index(&mut index, &table, &codec, &key_names).await?;
        let position = table_position(&table, &self.slot);
        Ok(MirrorTable {
            ident,
            source,
            skip_through: position.map_or(0, |p| p.commit_lsn.0),
            table,
            index,
            codec,
            key_names,
            key_columns: Vec::new(),
            writer: None,
            open_file: None,
            files: Vec::new(),
            overlay: HashMap::new(),
            changed: false,
            deletes: HashMap::new(),
            truncate: false,
            rows_written: 0,
            ops: [0; 5],
            transforms: Default::default(),
            properties: self.properties.clone(),
            target_file_size: self.config.target_file_size,
            files_prefix: self.run.clone(),
            writers: 0,
            nested_types: self.config.nested(),
        })
    }

    fn pending(&self) -> bool {
        self.tables
            .values()
            .any(|t| t.writer.is_some() || !t.files.is_empty() || t.changed || t.truncate)
    }

    /// Writes a batch's events; commits when the interval has passed at a transaction
    /// boundary.
    pub async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        let mut by_table: Vec<(String, Vec<&Event>)> = Vec::new();
        for event in &batch.batch.events {
            let relation = batch.batch.relation(event);
            let name = relation.qualified_name();
            if !self.tables.contains_key(&name) {
                let table = self.open_table(relation).await?;
                self.tables.insert(name.clone(), table);
            }
            let table = self.tables.get(&name).expect("inserted above");
            if event.commit_lsn <= table.skip_through {
                continue;
            }
            match by_table.last_mut() {
                Some((t, events)) if *t == name => events.push(event),
                _ => by_table.push((name, vec![event])),
            }
        }
        for (name, events) in by_table {
            let relation = batch.batch.relation(events[0]);
            self.ensure_writer(&name, relation).await?;
            let table = self.tables.get_mut(&name).expect("opened above");
            for event in &events {
                table.ops[crate::sink::parquet::op_index(event.op)] += 1;
            }
            if let Some(labels) = batch
                .transforms
                .as_deref()
                .filter(|_| self.ledger.is_some())
            {
                table.transforms.insert(labels.to_owned());
            }
            for chunk in events.chunks(CHUNK) {
                table.apply(chunk, relation).await?;
            }
        }
        let (pending, due) = (
            self.pending(),
            self.last_commit.elapsed() >= self.config.commit_interval,
        );
        if batch.position.commit_now(&mut self.durable, pending, due) {
            self.flush(&batch.position).await?;
        }
        self.maintain().await
    }

    /// Runs the configured maintenance when it is due and nothing is pending: a
    /// compaction moves rows to other files, so the index is brought to it at once.
    async fn maintain(&mut self) -> Result<(), SinkError> {
        let Some(m) = self.config.maintenance.clone() else {
            return Ok(());
        };
        if self.last_maintenance.elapsed() < m.every || self.pending() {
            return Ok(());
        }
        self.last_maintenance = Instant::now();
        for t in self.tables.values_mut() {
            let (table, _) =
                super::maintain_table(&self.config, self.catalog.as_ref(), &m, &t.table).await;
            if let Some(table) = table {
                t.table = table;
            }
            let (codec, keys) = (&t.codec, &t.key_names);
            catch_up_index(&mut t.index, &t.table, codec, keys).await?;
        }
        Ok(())
    }

    /// A writer for the relation's version (a new one after a schema change).
    async fn ensure_writer(&mut self, name: &str, relation: &Relation) -> Result<(), SinkError> {
        let table = self.tables.get_mut(name).expect("opened");
        if table
            .writer
            .as_ref()
            .is_some_and(|(v, _)| *v == relation.version)
        {
            return Ok(());
        }
        table.close_writer().await?;
        super::evolve_table(
            self.catalog.as_ref(),
            &self.config,
            &table.ident,
            &mut table.table,
            relation,
        )
        .await?;
        table.key_columns = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        self.writers += 1;
        let files = format!("{}-{}", self.run, self.writers);
        let writer = new_writer(
            &table.table,
            &self.properties,
            &files,
            self.config.target_file_size,
        )
        .await
        .map_err(|e| iceberg_err(&table.ident, e))?;
        table.writer = Some((relation.version, writer));
        Ok(())
    }

    /// Creates (or loads) the mirror table of a relation met for the first time.
    async fn open_table(&self, relation: &Relation) -> Result<MirrorTable, SinkError> {
        let ident = table_ident(&self.config, &relation.schema, &relation.table);
        let source = relation.qualified_name();
        if !relation.columns.iter().any(|c| c.key) {
            return Err(SinkError::Config {
                what: source.clone(),
                message: "has no primary key: a mirror table keeps one row per key; add a primary key, or use mode = \"changelog\" for this table".into(),
            });
        }
        let table = super::load_or_create(self.catalog.as_ref(), &ident, || {
            self.creation(relation, &ident)
        })
        .await?;
        let props = table.metadata().properties();
        let ours = props.get(PROP_SOURCE) == Some(&source)
            && props.get(PROP_SLOT) == Some(&self.slot)
            && props.get(PROP_MODE).map(String::as_str) == Some("mirror");
        if !ours {
            return Err(not_ours(
                &ident,
                format!(
                    "exists and is not the weir mirror of {source} for slot `{}` (a changelog table, another source or another pipeline's): set a different namespace",
                    self.slot
                ),
            ));
        }
        self.prepare(ident, source, table).await
    }

    fn creation(
        &self,
        relation: &Relation,
        ident: &TableIdent,
    ) -> Result<TableCreation, SinkError> {
        let nested = self.config.nested();
        let schema =
            super::schema::table_schema(&mirror_arrow_schema(relation, &|_| nested), relation)
                .map_err(|e| iceberg_err(ident, e))?;
        let mut properties =
            super::table_properties(relation, &self.slot, &self.config, self.durable);
        properties.extend([
            (PROP_MODE, "mirror".to_string()),
            ("write.delete.mode", "merge-on-read".into()),
            ("write.update.mode", "merge-on-read".into()),
        ]);
        Ok(TableCreation::builder()
            .name(ident.name().to_string())
            .schema(schema)
            .partition_spec(UnboundPartitionSpec::builder().build())
            .properties(properties.into_iter().map(|(k, v)| (k.to_string(), v)))
            .build())
    }

    /// Commits each changed table at `position`: its new data files and position
    /// delete files in one snapshot; then its index. Does nothing inside a transaction.
    pub async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        let Some(last_commit) = position.flush_point(self.durable) else {
            return Ok(());
        };
        let started = Instant::now();
        for table in self.tables.values_mut() {
            table.close_writer().await?;
            if table.files.is_empty() && table.deletes.is_empty() && !table.truncate {
                table
                    .index
                    .drop_staged()
                    .map_err(|e| index_err(&table.ident, e))?;
                table.changed = false;
                continue;
            }
            let properties = HashMap::from([
                (
                    SUMMARY_COMMIT_LSN.to_string(),
                    last_commit.commit_lsn.to_string(),
                ),
                (SUMMARY_END_LSN.to_string(), last_commit.end_lsn.to_string()),
                (SUMMARY_SLOT.to_string(), self.slot.clone()),
            ]);
            let round = Round {
                config: &self.config,
                catalog: self.catalog.as_ref(),
                properties: &self.properties,
                run: &self.run,
                ledger: self.ledger.as_ref(),
                slot: &self.slot,
                to: last_commit,
            };
            table.commit(&round, properties).await?;
            table.skip_through = last_commit.commit_lsn.0;
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, checkpoint = %last_commit.end_lsn, "Iceberg mirror commit round done.");
        self.durable = Some(last_commit);
        self.last_commit = Instant::now();
        Ok(())
    }

    pub async fn abort(self) {}
}

fn index_err(ident: &TableIdent, e: super::pk_index::IndexError) -> SinkError {
    SinkError::Config {
        what: ident.to_string(),
        message: e.to_string(),
    }
}

/// A rolling writer of unpartitioned data files named `<files>-<n>.parquet`.
async fn new_writer(
    table: &Table,
    properties: &WriterProperties,
    files: &str,
    target_file_size: u64,
) -> iceberg::Result<Writer> {
    let metadata = table.metadata();
    let schema: Arc<Schema> = metadata.current_schema().clone();
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(properties.clone(), schema),
        target_file_size as usize,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        DefaultFileNameGenerator::new(files.to_string(), None, DataFileFormat::Parquet),
    );
    DataFileWriterBuilder::new(rolling).build(None).await
}

impl MirrorTable {
    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Schema {
            table: self.ident.to_string(),
            source: e.to_string().into(),
        }
    }

    /// Applies a chunk of one relation's events to the round: the rows they replace
    /// marked deleted, the rows they leave written.
    async fn apply(&mut self, events: &[&Event], relation: &Relation) -> Result<(), SinkError> {
        let keys = self.codec.event_keys(events, &self.key_columns)?;
        let unknown: Vec<&[u8]> = keys
            .iter()
            .filter(|k| !self.overlay.contains_key(*k))
            .map(Vec::as_slice)
            .collect();
        let found = self
            .index
            .lookup(&unknown, self.truncate)
            .map_err(|e| index_err(&self.ident, e))?;
        let mut indexed: HashMap<&[u8], Option<Loc>> = unknown.into_iter().zip(found).collect();
        // A column keeps the table's form; one the table lacks takes nested_types.
        let schema = self.table.metadata().current_schema().clone();
        let nested = super::schema::nested_rule(Some(&schema), self.nested_types);
        let mut rows = MirrorRows::new(relation, &nested);
        // The rows of this chunk by key (a later change of the key drops the earlier).
        let mut in_chunk: HashMap<&[u8], usize> = HashMap::new();
        let mut values_of: Vec<Vec<Value>> = Vec::new();
        let mut keep: Vec<bool> = Vec::new();
        for (event, key) in events.iter().zip(&keys) {
            if event.op == Op::Truncate {
                self.truncate_all().await?;
                indexed.clear();
                in_chunk.clear();
                keep.iter_mut().for_each(|k| *k = false);
                continue;
            }
            let earlier = in_chunk.remove(key.as_slice());
            let old = match earlier {
                Some(j) => {
                    keep[j] = false;
                    None
                }
                None => {
                    let old = match self.overlay.get(key) {
                        Some(loc) => loc.clone(),
                        None => indexed.get(key.as_slice()).cloned().flatten(),
                    };
                    if let Some(loc) = &old {
                        self.deletes
                            .entry(loc.file.clone())
                            .or_default()
                            .push(loc.pos);
                    }
                    self.overlay.insert(key.clone(), None);
                    old
                }
            };
            if event.op == Op::Delete {
                continue;
            }
            let mut values = event.after.clone().unwrap_or_default();
            if event.op == Op::Update && !event.unchanged.is_empty() {
                let previous = earlier.map(|j| values_of[j].clone());
                self.fill_unchanged(&mut values, event, relation, previous, old)
                    .await?;
            }
            rows.append(&values, event, relation, &self.source);
            values_of.push(values);
            keep.push(true);
            in_chunk.insert(key.as_slice(), keep.len() - 1);
        }
        self.write_rows(rows, &keep, in_chunk).await?;
        if !self.overlay.is_empty() {
            let changes: Vec<_> = self.overlay.drain().collect();
            self.index
                .stage(changes)
                .map_err(|e| index_err(&self.ident, e))?;
            self.changed = true;
        }
        Ok(())
    }

    /// Writes the kept rows of a chunk and records where each key's row went.
    async fn write_rows(
        &mut self,
        mut rows: MirrorRows,
        keep: &[bool],
        in_chunk: HashMap<&[u8], usize>,
    ) -> Result<(), SinkError> {
        if rows.len == 0 {
            return Ok(());
        }
        let batch = rows.finish().map_err(|e| self.err(e))?;
        let batch = arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep.to_vec()))
            .map_err(|e| self.err(e))?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let target = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(self.table.metadata().current_schema())
                .map_err(|e| iceberg_err(&self.ident, e))?,
        );
        let batch = super::schema::conform(&batch, &target).map_err(|e| self.err(e))?;
        let n = batch.num_rows();
        let Some((_, writer)) = self.writer.as_mut() else {
            return Err(self.err("no writer open"));
        };
        writer
            .write(batch)
            .await
            .map_err(|e| iceberg_err(&self.ident, e))?;
        let path = writer.current_file_path();
        let base = (writer.current_row_num() - n) as u64;
        let file: Arc<str> = match &self.open_file {
            Some(f) if **f == *path => f.clone(),
            _ => Arc::from(path),
        };
        self.open_file = Some(file.clone());
        // Kept rows' places in the written batch.
        let mut place = vec![0u64; keep.len()];
        let mut next = 0;
        for (j, k) in keep.iter().enumerate() {
            if *k {
                place[j] = next;
                next += 1;
            }
        }
        for (key, j) in in_chunk {
            self.overlay.insert(
                key.to_vec(),
                Some(Loc {
                    file: file.clone(),
                    pos: base + place[j],
                }),
            );
        }
        self.rows_written += n as u64;
        Ok(())
    }

    /// The values of the columns an update left unchanged (TOAST values PostgreSQL did
    /// not send): from the old row it sent (`REPLICA IDENTITY FULL`), the key's earlier
    /// row in this chunk, or the key's live row read back from its data file.
    async fn fill_unchanged(
        &mut self,
        values: &mut [Value],
        event: &Event,
        relation: &Relation,
        previous: Option<Vec<Value>>,
        old: Option<Loc>,
    ) -> Result<(), SinkError> {
        let full_before = event
            .before
            .as_ref()
            .filter(|b| b.len() == values.len())
            .cloned();
        let source = match (full_before, previous) {
            (Some(b), _) => Some(b),
            (None, Some(p)) => Some(p),
            (None, None) => match old {
                Some(loc) => Some(self.read_back(&loc, relation).await?),
                None => None,
            },
        };
        let Some(source) = source else {
            return Err(self.err(format!(
                "an update at {} left TOASTed columns unchanged and the key has no earlier row to take them from",
                crate::lsn::Lsn(event.commit_lsn)
            )));
        };
        for &u in &event.unchanged {
            let u = u as usize;
            if let (Some(slot), Some(v)) = (values.get_mut(u), source.get(u)) {
                *slot = v.clone();
            }
        }
        Ok(())
    }

    /// The source columns of the row at `loc`, read from its data file (the open file
    /// is completed first when the row is in it).
    async fn read_back(&mut self, loc: &Loc, relation: &Relation) -> Result<Vec<Value>, SinkError> {
        if self.open_file.as_ref().is_some_and(|f| *f == loc.file) {
            let version = self.writer.as_ref().map(|(v, _)| *v);
            self.close_writer().await?;
            if let Some(v) = version {
                self.writers_reopen(v).await?;
            }
        }
        let (names, rows) = read_rows(&loc.file, &[loc.pos])
            .await
            .map_err(|e| self.err(e))?;
        let Some(read) = rows.first() else {
            return Err(self.err(format!("row {} of {} is not there", loc.pos, loc.file)));
        };
        Ok(crate::sink::rows::source_row(&names, read, relation))
    }

    /// Opens a new writer for the relation version `version` (after a read-back or a
    /// truncate completed the open one).
    async fn writers_reopen(&mut self, version: u32) -> Result<(), SinkError> {
        self.writers += 1;
        let files = format!("{}-r{}", self.files_prefix, self.writers);
        let writer = new_writer(&self.table, &self.properties, &files, self.target_file_size)
            .await
            .map_err(|e| iceberg_err(&self.ident, e))?;
        self.writer = Some((version, writer));
        Ok(())
    }

    /// A truncate: every row written or live so far goes in the next commit.
    async fn truncate_all(&mut self) -> Result<(), SinkError> {
        let version = self.writer.as_ref().map(|(v, _)| *v);
        self.close_writer().await?;
        // Files written earlier in this round never join the table.
        self.files.clear();
        self.deletes.clear();
        self.overlay.clear();
        self.index
            .drop_staged()
            .map_err(|e| index_err(&self.ident, e))?;
        self.truncate = true;
        if let Some(v) = version {
            self.writers_reopen(v).await?;
        }
        Ok(())
    }

    async fn close_writer(&mut self) -> Result<(), SinkError> {
        self.open_file = None;
        let Some((_, mut writer)) = self.writer.take() else {
            return Ok(());
        };
        let files = writer
            .close()
            .await
            .map_err(|e| iceberg_err(&self.ident, e))?;
        self.files.extend(files);
        Ok(())
    }

    /// Writes the round's delete files and commits the row delta (its ledger record
    /// first), then the index.
    async fn commit(
        &mut self,
        round: &Round<'_>,
        summary: HashMap<String, String>,
    ) -> Result<(), SinkError> {
        let (config, catalog, properties, run) =
            (round.config, round.catalog, round.properties, round.run);
        let mut deletes = Vec::new();
        for (n, (file, positions)) in std::mem::take(&mut self.deletes).into_iter().enumerate() {
            let path = format!(
                "{}/data/{run}-del-{}-{n:05}.parquet",
                self.table.metadata().location().trim_end_matches('/'),
                self.table.metadata().last_sequence_number() + 1
            );
            let written =
                super::position_delete::write(&self.table, properties, &path, &file, positions)
                    .await
                    .map_err(|e| iceberg_err(&self.ident, e))?;
            deletes.push(written);
        }
        let data = std::mem::take(&mut self.files);
        if let Some(link) = round.ledger {
            self.record(link, round.slot, &data, &deletes, round.to)
                .await?;
        }
        let delta = RowDelta {
            data,
            deletes,
            truncate: self.truncate,
            properties: summary,
        };
        let snapshot = commit_row_delta(config, &self.table, delta)
            .await
            .map_err(|e| SinkError::Iceberg {
                table: self.ident.to_string(),
                source: iceberg::Error::new(
                    iceberg::ErrorKind::CatalogCommitConflicts,
                    e.to_string(),
                ),
            })?;
        self.table = catalog
            .load_table(&self.ident)
            .await
            .map_err(|e| iceberg_err(&self.ident, e))?;
        self.index
            .commit_staged(snapshot, self.truncate)
            .map_err(|e| index_err(&self.ident, e))?;
        self.truncate = false;
        self.changed = false;
        tracing::debug!(table = %self.ident, snapshot, "Iceberg mirror table committed.");
        Ok(())
    }
}

/// What a commit round shares across tables.
struct Round<'a> {
    config: &'a IcebergSinkConfig,
    catalog: &'a dyn Catalog,
    properties: &'a WriterProperties,
    run: &'a str,
    ledger: Option<&'a crate::ledger::LedgerLink>,
    slot: &'a str,
    to: CommitPos,
}

impl MirrorTable {
    /// Appends the ledger record of this table's commit: data and delete files hashed.
    async fn record(
        &mut self,
        link: &crate::ledger::LedgerLink,
        slot: &str,
        data: &[DataFile],
        deletes: &[DataFile],
        to: CommitPos,
    ) -> Result<(), SinkError> {
        let mut files = super::hashed_files(&self.table, &self.ident, data).await?;
        files.extend(super::hashed_files(&self.table, &self.ident, deletes).await?);
        let mut rows = crate::ledger::RowCounts::default();
        for (op, n) in crate::sink::parquet::OPS
            .iter()
            .zip(std::mem::take(&mut self.ops))
        {
            rows.add(&self.source, op, n);
        }
        let record = crate::ledger::Record {
            seq: 0,
            sink: link.sink,
            sink_name: link.name.clone(),
            flush: None,
            table: Some(self.source.clone()),
            from_lsn: table_position(&self.table, slot)
                .map_or(crate::lsn::Lsn::ZERO, |p| p.end_lsn),
            commit_lsn: to.commit_lsn,
            end_lsn: to.end_lsn,
            files,
            rows: rows.take(),
            transforms: std::mem::take(&mut self.transforms).into_iter().collect(),
            written_at: String::new(),
            prev: None,
        };
        link.ledger.lock().await.append(record).await?;
        Ok(())
    }
}

/// Rows `positions` of a data file, as source values.
/// The rows at `positions` of a data file, with the file's column names.
async fn read_rows(
    file: &str,
    positions: &[u64],
) -> Result<(Vec<String>, Vec<Vec<Value>>), String> {
    let (store, path) = crate::storage::object_store_for(file).map_err(|e| e.to_string())?;
    let meta = store.head(&path).await.map_err(|e| e.to_string())?;
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, path)
        .with_file_size(meta.size);
    let mut stream = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let names = stream
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let wanted: std::collections::HashSet<u64> = positions.iter().copied().collect();
    let (mut out, mut at) = (Vec::new(), 0u64);
    while let Some(batch) = stream.try_next().await.map_err(|e| e.to_string())? {
        for r in 0..batch.num_rows() {
            if wanted.contains(&(at + r as u64)) {
                out.push(
                    batch
                        .columns()
                        .iter()
                        .map(|c| crate::replay::value(c.as_ref(), r))
                        .collect(),
                );
            }
        }
        at += batch.num_rows() as u64;
    }
    Ok((names, out))
}

/// Brings the index to the table's current snapshot: at once when it describes it,
/// by remapping the files compactions wrote when only compactions came between, by a
/// rebuild otherwise.
async fn catch_up_index(
    index: &mut PkIndex,
    table: &Table,
    codec: &KeyCodec,
    key_names: &[String],
) -> Result<(), SinkError> {
    let ident = table.identifier().clone();
    let described = index.snapshot().map_err(|e| index_err(&ident, e))?;
    let current = table.metadata().current_snapshot_id();
    if described == current.or(Some(0)) {
        return Ok(());
    }
    let compactions = described.and_then(|d| compactions_since(table, d));
    match (compactions, current) {
        (Some(chain), Some(current)) => {
            remap(index, table, &chain, codec, key_names).await?;
            index
                .apply(Vec::new(), current)
                .map_err(|e| index_err(&ident, e))?;
            tracing::info!(table = %ident, compactions = chain.len(), "Primary-key index remapped to the compacted files.");
            Ok(())
        }
        _ => rebuild(index, table, codec, key_names).await,
    }
}

/// The snapshots from `described` (excluded) to the current one, oldest first, if all
/// of them are weir compactions (and none has expired).
fn compactions_since(table: &Table, described: i64) -> Option<Vec<iceberg::spec::SnapshotRef>> {
    let metadata = table.metadata();
    let mut chain = Vec::new();
    let mut at = metadata.current_snapshot_id();
    while let Some(id) = at.filter(|id| *id != described) {
        let snapshot = metadata.snapshot_by_id(id)?;
        let props = &snapshot.summary().additional_properties;
        if props
            .get(super::compact::SUMMARY_COMPACTION)
            .map(String::as_str)
            != Some("true")
        {
            return None;
        }
        chain.push(snapshot.clone());
        at = snapshot.parent_snapshot_id();
    }
    at?;
    chain.reverse();
    Some(chain)
}

/// Points the keys of the data files the compactions `chain` added at their rows
/// there: a compaction moves every live row of the files it replaces, and only those.
/// The index says it describes no snapshot until the caller says which.
async fn remap(
    index: &mut PkIndex,
    table: &Table,
    chain: &[iceberg::spec::SnapshotRef],
    codec: &KeyCodec,
    key_names: &[String],
) -> Result<(), SinkError> {
    use iceberg::spec::{ManifestContentType, ManifestStatus};
    let ident = table.identifier().clone();
    let err = |e| iceberg_err(&ident, e);
    for snapshot in chain {
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(err)?;
        for manifest_file in list.entries().iter().filter(|m| {
            m.added_snapshot_id == snapshot.snapshot_id() && m.content == ManifestContentType::Data
        }) {
            let manifest = manifest_file
                .load_manifest(table.file_io())
                .await
                .map_err(err)?;
            let added = manifest
                .entries()
                .iter()
                .filter(|e| e.status() == ManifestStatus::Added);
            for entry in added {
                index_file(index, &ident, entry.file_path(), None, codec, key_names).await?;
            }
        }
    }
    Ok(())
}

/// Indexes the keys of one data file, its rows at positions `gone` left out. Returns
/// how many keys it indexed. The index says it describes no snapshot afterwards.
async fn index_file(
    index: &mut PkIndex,
    ident: &TableIdent,
    file: &str,
    gone: Option<&std::collections::HashSet<u64>>,
    codec: &KeyCodec,
    key_names: &[String],
) -> Result<u64, SinkError> {
    let read_err = |e: String| SinkError::Schema {
        table: ident.to_string(),
        source: format!("indexing the keys of {file}: {e}").into(),
    };
    let columns = super::position_delete::read_columns(file, key_names)
        .await
        .map_err(read_err)?;
    let path: Arc<str> = Arc::from(file);
    let mut changes = Vec::new();
    let mut pos = 0u64;
    for batch in columns {
        let keys = codec.keys(&batch).map_err(|e| read_err(e.to_string()))?;
        for key in keys {
            if gone.is_none_or(|g| !g.contains(&pos)) {
                let file = path.clone();
                changes.push((key, Some(Loc { file, pos })));
            }
            pos += 1;
        }
    }
    let indexed = changes.len() as u64;
    index.apply(changes, 0).map_err(|e| index_err(ident, e))?;
    Ok(indexed)
}

/// Rebuilds the index from the table: the key columns of every live data file, minus
/// the rows its position deletes remove, row positions counted in file order.
async fn rebuild(
    index: &mut PkIndex,
    table: &Table,
    codec: &KeyCodec,
    key_names: &[String],
) -> Result<(), SinkError> {
    let ident = table.identifier().clone();
    index.clear().map_err(|e| index_err(&ident, e))?;
    let Some(snapshot) = table.metadata().current_snapshot_id() else {
        return index.apply(Vec::new(), 0).map_err(|e| index_err(&ident, e));
    };
    let started = Instant::now();
    let tasks: Vec<iceberg::scan::FileScanTask> = table
        .scan()
        .snapshot_id(snapshot)
        .select_all()
        .build()
        .map_err(|e| iceberg_err(&ident, e))?
        .plan_files()
        .await
        .map_err(|e| iceberg_err(&ident, e))?
        .try_collect()
        .await
        .map_err(|e| iceberg_err(&ident, e))?;
    tracing::info!(table = %ident, files = tasks.len(), "Rebuilding the mirror table's primary-key index from the table.");
    let read_err = |e: String| SinkError::Schema {
        table: ident.to_string(),
        source: format!("rebuilding the primary-key index: {e}").into(),
    };
    let mut deleted: HashMap<String, std::collections::HashSet<u64>> = HashMap::new();
    let mut seen_deletes = std::collections::HashSet::new();
    for task in &tasks {
        for d in &task.deletes {
            if seen_deletes.insert(d.file_path.clone()) {
                for (file, pos) in super::position_delete::read(&d.file_path)
                    .await
                    .map_err(read_err)?
                {
                    deleted.entry(file).or_default().insert(pos);
                }
            }
        }
    }
    let (mut keys_total, mut last_report) = (0u64, Instant::now());
    for (n, task) in tasks.iter().enumerate() {
        let gone = deleted.get(&task.data_file_path);
        keys_total +=
            index_file(index, &ident, &task.data_file_path, gone, codec, key_names).await?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(table = %ident, files = n + 1, of = tasks.len(), keys = keys_total, "Rebuilding the primary-key index.");
        }
    }
    index
        .apply(Vec::new(), snapshot)
        .map_err(|e| index_err(&ident, e))?;
    tracing::info!(table = %ident, keys = keys_total, seconds = started.elapsed().as_secs(), "Primary-key index rebuilt.");
    Ok(())
}
