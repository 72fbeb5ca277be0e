//! Delta mirror tables (`mode = "mirror"`): each source table's current state, with
//! Change Data Feed (ADR 0019). Copy-on-write, as delta-rs's MERGE writes (which needs
//! DataFusion): a commit rewrites the data files holding rows its changes replace or
//! delete (their other rows to new files), adds the new rows as new files, and writes
//! the commit's net changes, one per key, to a `_change_data` file with `_change_type`
//! `insert`, `update_preimage`/`update_postimage` or `delete`. A commit that only adds
//! keys writes no change file: readers take its added files as inserts.
//!
//! Where a key's row lives comes from an index of the live files' keys, read from the
//! table when it is opened and kept in memory. Within a commit interval a key's changes
//! are folded to its last one.

use super::{PROP_SLOT, PROP_SOURCE, commit_info, delta_err, delta_schema, files, log};
use crate::batch::CommitPos;
use crate::sink::SinkError;
use crate::sink::iceberg::schema::conform;
use crate::sink::keys::KeyCodec;
use crate::sink::rows::{MirrorRows, batch_row, mirror_arrow_schema};
use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake::kernel::{Action, AddCDCFile, MetadataExt, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use object_store::ObjectStore;
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use weir_sdk::{Event, Op, Relation, Value};

/// Table configuration naming what the table holds (`mirror`) and its key columns (a
/// JSON array of names).
pub const PROP_MODE: &str = "weir.mode";
pub const PROP_KEY: &str = "weir.key";
/// The change file column of Delta's Change Data Feed.
const CHANGE_TYPE: &str = "_change_type";

/// A key's changes in the commit round under way.
struct Change {
    /// The file of the key's live row when the round began.
    old: Option<Arc<str>>,
    /// The key's row now, by its number among the round's rows (None: deleted).
    new: Option<usize>,
    /// When the key last changed, for the order of the change feed.
    seq: u64,
}

/// One mirror table and the changes of the commit round under way.
pub struct MirrorTable {
    pub uri: String,
    source: String,
    pub table: DeltaTable,
    /// Changes at or before this commit LSN are in the table already.
    pub skip_through: u64,
    key_names: Vec<String>,
    codec: KeyCodec,
    /// The key columns' places in the relation being written.
    key_columns: Vec<usize>,
    /// Each live key's data file.
    index: HashMap<Vec<u8>, Arc<str>>,
    /// The live data files and their sizes.
    files: HashMap<Arc<str>, i64>,
    round: HashMap<Vec<u8>, Change>,
    seq: u64,
    /// Rows of the relation version being written, and the rows built before them.
    rows: Option<(u32, MirrorRows)>,
    batches: Vec<RecordBatch>,
    built: usize,
    /// Bytes of the built rows in memory.
    buffered: usize,
    nested: bool,
    target_file_size: u64,
    properties: WriterProperties,
    pub bytes_written: u64,
}

/// The configuration of a new mirror table of `relation` (which has a key).
pub fn creation_config(relation: &Relation, slot: &str) -> Vec<(&'static str, Option<String>)> {
    let keys: Vec<&str> = relation
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.as_str())
        .collect();
    vec![
        (PROP_SOURCE, Some(relation.qualified_name())),
        (PROP_SLOT, Some(slot.to_string())),
        (PROP_MODE, Some("mirror".into())),
        (
            PROP_KEY,
            Some(serde_json::to_string(&keys).unwrap_or_default()),
        ),
        ("delta.enableChangeDataFeed", Some("true".into())),
    ]
}

/// The table schema of a new mirror table of `relation`.
pub fn table_schema(relation: &Relation, nested: bool) -> SchemaRef {
    delta_schema(&mirror_arrow_schema(relation, &|_| nested), false)
}

impl MirrorTable {
    /// A mirror table with its index read from its live files.
    pub async fn open(
        uri: String,
        table: DeltaTable,
        skip_through: u64,
        nested: bool,
        target_file_size: u64,
        properties: WriterProperties,
    ) -> Result<MirrorTable, SinkError> {
        let snapshot = table.snapshot().map_err(|e| delta_err(&uri, e))?;
        let config = snapshot.metadata().configuration();
        let source = config.get(PROP_SOURCE).cloned().unwrap_or_default();
        let key_names: Vec<String> = config
            .get(PROP_KEY)
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        if config.get(PROP_MODE).map(String::as_str) != Some("mirror") || key_names.is_empty() {
            return Err(SinkError::Config {
                what: uri,
                message: "holds a changelog, not a mirror (its configuration has no weir.mode = mirror and weir.key): set a different url, or mode = \"changelog\"".into(),
            });
        }
        let arrow = arrow_schema(&table, &uri)?;
        let types = key_names
            .iter()
            .map(|n| arrow.field_with_name(n).map(|f| f.data_type().clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| schema_err(&uri, e))?;
        let codec = KeyCodec::new(types).map_err(|e| schema_err(&uri, e))?;
        let mut mirror = MirrorTable {
            uri,
            source,
            table,
            skip_through,
            key_names,
            codec,
            key_columns: Vec::new(),
            index: HashMap::new(),
            files: HashMap::new(),
            round: HashMap::new(),
            seq: 0,
            rows: None,
            batches: Vec::new(),
            built: 0,
            buffered: 0,
            nested,
            target_file_size,
            properties,
            bytes_written: 0,
        };
        mirror.read_index().await?;
        Ok(mirror)
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        self.table.log_store().object_store(None)
    }

    /// The index of the live files' keys.
    async fn read_index(&mut self) -> Result<(), SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err(&self.uri, e))?;
        let live: Vec<(String, i64)> = snapshot
            .log_data()
            .into_iter()
            .map(|f| (f.path().to_string(), f.size()))
            .collect();
        let started = std::time::Instant::now();
        for (path, size) in live {
            let path: Arc<str> = Arc::from(path);
            for batch in self.read(&path, Some(&self.key_names.clone())).await? {
                for key in self.keys_of(&batch)? {
                    self.index.insert(key, path.clone());
                }
            }
            self.files.insert(path, size);
        }
        let ms = started.elapsed().as_millis() as u64;
        match ms >= 2000 {
            true => {
                tracing::info!(table = %self.uri, keys = self.index.len(), files = self.files.len(), ms, "Delta mirror: the key index read from the table's files.")
            }
            false => {
                tracing::debug!(table = %self.uri, keys = self.index.len(), files = self.files.len(), ms, "Delta mirror: the key index read from the table's files.")
            }
        }
        Ok(())
    }

    /// The batches of a data file (only `columns` when given).
    async fn read(
        &self,
        path: &str,
        columns: Option<&[String]>,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        files::read(self.store(), &self.uri, path, columns).await
    }

    /// The keys of a batch's rows (it has the key columns by name).
    fn keys_of(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, SinkError> {
        let columns = self
            .key_names
            .iter()
            .map(|n| {
                batch
                    .column_by_name(n)
                    .cloned()
                    .ok_or_else(|| self.err(format!("a data file lacks key column {n}")))
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        self.codec.keys(&columns).map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        schema_err(&self.uri, e)
    }

    pub fn pending(&self) -> bool {
        !self.round.is_empty()
    }

    /// Bytes of the round's rows held in memory until the commit.
    pub fn buffered(&self) -> u64 {
        self.buffered as u64
    }

    /// Rows for `relation`'s version: the columns the table lacks added first (a commit
    /// of their own), the key checked against the table's.
    pub async fn prepare(&mut self, relation: &Relation) -> Result<(), SinkError> {
        if self
            .rows
            .as_ref()
            .is_some_and(|(v, _)| *v == relation.version)
        {
            return Ok(());
        }
        self.finish_rows()?;
        let keys: Vec<&str> = relation
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.as_str())
            .collect();
        if keys != self.key_names {
            return Err(SinkError::Config {
                what: self.uri.clone(),
                message: format!(
                    "the mirror is keyed by ({}) but {}'s key is now ({}): write to a new url",
                    self.key_names.join(", "),
                    relation.qualified_name(),
                    keys.join(", ")
                ),
            });
        }
        self.key_columns = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let table = arrow_schema(&self.table, &self.uri)?;
        let nested = self.nested;
        let rule = |c: &weir_sdk::Column| match table.field_with_name(&c.name) {
            Ok(f) => f.data_type() != &DataType::Utf8,
            Err(_) => nested,
        };
        let schema = mirror_arrow_schema(relation, &rule);
        let added: Vec<FieldRef> = delta_schema(&schema, false)
            .fields()
            .iter()
            .filter(|f| table.field_with_name(f.name()).is_err())
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        if !added.is_empty() {
            self.add_columns(&table, added).await?;
        }
        self.rows = Some((
            relation.version,
            MirrorRows::with_schema(relation, delta_schema(&schema, true)),
        ));
        Ok(())
    }

    async fn add_columns(&mut self, table: &Schema, added: Vec<FieldRef>) -> Result<(), SinkError> {
        let uri = self.uri.clone();
        let names: Vec<String> = added.iter().map(|f| f.name().clone()).collect();
        let mut fields: Vec<FieldRef> = table.fields().iter().cloned().collect();
        fields.extend(added.iter().cloned());
        let kernel = |s: &Schema| -> Result<StructType, SinkError> {
            s.try_into_kernel().map_err(|e| delta_err(&uri, e.into()))
        };
        let schema = kernel(&Schema::new(fields))?;
        let new_fields = kernel(&Schema::new(added))?;
        let snapshot = self.table.snapshot().map_err(|e| delta_err(&uri, e))?;
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&schema)
            .map_err(|e| delta_err(&uri, e.into()))?;
        let operation = DeltaOperation::AddColumn {
            fields: new_fields.fields().cloned().collect(),
        };
        log::commit(
            &mut self.table,
            vec![Action::Metadata(metadata)],
            operation,
            HashMap::new(),
            None,
        )
        .await
        .map_err(|e| delta_err(&uri, e))?;
        tracing::info!(table = %self.uri, columns = ?names, "Delta table evolved: columns added.");
        Ok(())
    }

    fn finish_rows(&mut self) -> Result<(), SinkError> {
        if let Some((_, rows)) = self.rows.as_mut()
            && rows.len > 0
        {
            let n = rows.len;
            let batch = rows.finish().map_err(|e| schema_err(&self.uri, e))?;
            self.buffered += batch.get_array_memory_size();
            self.batches.push(batch);
            self.built += n;
        }
        Ok(())
    }

    /// Applies a chunk of one relation version's events (after [`MirrorTable::prepare`]).
    pub async fn apply(&mut self, events: &[&Event], relation: &Relation) -> Result<(), SinkError> {
        let keys = self
            .codec
            .event_keys(events, &self.key_columns)
            .map_err(|e| self.err(e))?;
        for (event, key) in events.iter().zip(keys) {
            self.seq += 1;
            let seq = self.seq;
            if event.op == Op::Truncate {
                for (k, file) in &self.index {
                    self.round.entry(k.clone()).or_insert(Change {
                        old: Some(file.clone()),
                        new: None,
                        seq,
                    });
                }
                for change in self.round.values_mut() {
                    change.new = None;
                    change.seq = seq;
                }
                continue;
            }
            let (old, earlier) = match self.round.get(&key) {
                Some(c) => (c.old.clone(), c.new),
                None => (self.index.get(&key).cloned(), None),
            };
            let new = match event.op {
                Op::Delete => None,
                _ => {
                    let mut values = event.after.clone().unwrap_or_default();
                    if event.op == Op::Update && !event.unchanged.is_empty() {
                        self.fill_unchanged(&mut values, event, relation, earlier, &old, &key)
                            .await?;
                    }
                    let (_, rows) = self.rows.as_mut().expect("prepared");
                    rows.append(&values, event, relation, &self.source);
                    Some(self.built + rows.len - 1)
                }
            };
            self.round.insert(key, Change { old, new, seq });
        }
        let full = self.rows.as_ref().is_some_and(|(_, r)| r.len >= 8192);
        if full {
            self.finish_rows()?;
        }
        Ok(())
    }

    /// The values of the columns an update left unchanged (TOAST values PostgreSQL did
    /// not send): from the old row it sent (`REPLICA IDENTITY FULL`), the key's earlier
    /// row in this round, or its live row read back from its data file.
    async fn fill_unchanged(
        &mut self,
        values: &mut [Value],
        event: &Event,
        relation: &Relation,
        earlier: Option<usize>,
        old: &Option<Arc<str>>,
        key: &[u8],
    ) -> Result<(), SinkError> {
        let source = match (event.before.as_ref(), earlier, old) {
            (Some(b), _, _) if b.len() == values.len() => Some(b.clone()),
            (_, Some(n), _) => {
                self.finish_rows()?;
                let (batch, row) = self.round_row(n);
                Some(batch_row(batch, row, relation))
            }
            (_, None, Some(file)) => {
                let mut found = None;
                for batch in self.read(file, None).await? {
                    if let Some(row) = self.keys_of(&batch)?.iter().position(|k| k == key) {
                        found = Some(batch_row(&batch, row, relation));
                    }
                }
                found
            }
            _ => None,
        };
        let Some(source) = source else {
            return Err(self.err(format!(
                "an update at {} left TOASTed columns unchanged and the key has no earlier row to take them from",
                crate::lsn::Lsn(event.commit_lsn)
            )));
        };
        for &u in &event.unchanged {
            if let (Some(slot), Some(v)) = (values.get_mut(u as usize), source.get(u as usize)) {
                *slot = v.clone();
            }
        }
        Ok(())
    }

    /// The batch and row of the round's row number `n` (built already).
    fn round_row(&self, mut n: usize) -> (&RecordBatch, usize) {
        for batch in &self.batches {
            if n < batch.num_rows() {
                return (batch, n);
            }
            n -= batch.num_rows();
        }
        unreachable!("a round row is built before it is read")
    }

    /// Writes the round and commits it at `last`: one table version.
    pub async fn commit(
        &mut self,
        app_id: &str,
        slot: &str,
        last: CommitPos,
    ) -> Result<(), SinkError> {
        self.finish_rows()?;
        let target = Arc::new(arrow_schema(&self.table, &self.uri)?);
        let rows = std::mem::take(&mut self.batches)
            .iter()
            .map(|b| conform(b, &target))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        (self.built, self.buffered) = (0, 0);
        let round = Rows::new(&rows);
        let now = chrono::Utc::now().timestamp_millis();
        let writer = files::FileWriter {
            store: self.store(),
            uri: &self.uri,
            properties: &self.properties,
            target_size: self.target_file_size,
        };

        // The round's rows that stay, in the order they were built.
        let mut keep: Vec<Vec<bool>> = rows.iter().map(|b| vec![false; b.num_rows()]).collect();
        for n in self.round.values().filter_map(|c| c.new) {
            let (b, r) = round.locate(n);
            keep[b][r] = true;
        }
        // Each kept row's rank among them, for the file it goes to.
        let mut rank = 0u32;
        let ranks: Vec<Vec<u32>> = keep
            .iter()
            .map(|k| {
                k.iter()
                    .map(|&kept| {
                        rank += kept as u32;
                        rank.saturating_sub(1)
                    })
                    .collect()
            })
            .collect();
        let mut added = writer.rolling("part");
        for (batch, keep) in rows.iter().zip(keep) {
            let kept = arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep))
                .map_err(|e| self.err(e))?;
            added.push(&kept).await?;
        }
        let added = added.finish().await?;

        // The files holding replaced or deleted rows: their other rows move.
        let touched: BTreeSet<Arc<str>> =
            self.round.values().filter_map(|c| c.old.clone()).collect();
        let mut moved = writer.rolling("part");
        let (mut before, mut before_of, mut stay) = (Vec::new(), HashMap::new(), Vec::new());
        for file in &touched {
            for batch in self.read(file, None).await? {
                let batch = conform(&batch, &target).map_err(|e| self.err(e))?;
                let keys = self.keys_of(&batch)?;
                let changed: Vec<bool> = keys.iter().map(|k| self.round.contains_key(k)).collect();
                let mut row = 0;
                for (key, changed) in keys.into_iter().zip(&changed) {
                    match changed {
                        true => {
                            before_of.insert(key, (before.len(), row));
                            row += 1;
                        }
                        false => stay.push(key),
                    }
                }
                let mask = BooleanArray::from(changed);
                let rest = arrow::compute::not(&mask).map_err(|e| self.err(e))?;
                let filter = |m: &BooleanArray| {
                    arrow::compute::filter_record_batch(&batch, m).map_err(|e| self.err(e))
                };
                before.push(filter(&mask)?);
                moved.push(&filter(&rest)?).await?;
            }
        }
        let moved = moved.finish().await?;

        // The change feed: each key's net change, in the order of their last changes.
        let mut changes = Vec::new();
        if !touched.is_empty() {
            let feed = self.change_rows(&before, &before_of, &rows, &round)?;
            drop(before);
            changes = writer.write(&feed, "_change_data/cdc").await?;
        }

        let mut actions: Vec<Action> = touched
            .iter()
            .map(|f| files::remove_action(f, self.files.get(f).copied(), true, now))
            .collect();
        actions.extend(
            added
                .iter()
                .chain(&moved)
                .map(|w| files::add_action(w, true, now)),
        );
        actions.extend(changes.iter().map(|w| {
            Action::Cdc(AddCDCFile {
                path: w.path.clone(),
                size: w.size,
                partition_values: HashMap::new(),
                data_change: false,
                tags: None,
            })
        }));
        self.bytes_written += added
            .iter()
            .chain(&moved)
            .chain(&changes)
            .map(|w| w.size as u64)
            .sum::<u64>();
        let operation = match touched.is_empty() {
            true => DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
            false => DeltaOperation::Merge {
                predicate: None,
                merge_predicate: Some(format!("by key ({})", self.key_names.join(", "))),
                matched_predicates: Vec::new(),
                not_matched_predicates: Vec::new(),
                not_matched_by_source_predicates: Vec::new(),
            },
        };
        let version = log::commit(
            &mut self.table,
            actions,
            operation,
            commit_info(slot, last),
            Some(Transaction::new(app_id, last.commit_lsn.0 as i64)),
        )
        .await
        .map_err(|e| delta_err(&self.uri, e))?;
        tracing::debug!(table = %self.uri, version, lsn = %last.commit_lsn, rewritten = touched.len(), "Delta mirror table committed.");

        // The index: where each key is now.
        for file in &touched {
            self.files.remove(file);
        }
        let added = Placed::new(&added, &mut self.files);
        let moved = Placed::new(&moved, &mut self.files);
        for (key, change) in self.round.drain() {
            match change.new {
                None => {
                    self.index.remove(&key);
                }
                Some(n) => {
                    let (b, r) = round.locate(n);
                    self.index.insert(key, added.file(ranks[b][r] as usize));
                }
            }
        }
        for (i, key) in stay.into_iter().enumerate() {
            self.index.insert(key, moved.file(i));
        }
        self.skip_through = last.commit_lsn.0;
        Ok(())
    }

    /// The change feed's rows: the table's columns and `_change_type`, from the rows
    /// the round replaced (`before`, a key's at `before_of`) and its rows (`after`).
    fn change_rows(
        &self,
        before: &[RecordBatch],
        before_of: &HashMap<Vec<u8>, (usize, usize)>,
        after: &[RecordBatch],
        round: &Rows,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let mut order: Vec<(&Vec<u8>, &Change)> = self.round.iter().collect();
        order.sort_by_key(|(_, c)| c.seq);
        let new = |n: usize| {
            let (b, r) = round.locate(n);
            (before.len() + b, r)
        };
        let (mut picks, mut types) = (Vec::new(), Vec::new());
        for (key, change) in order {
            match (before_of.get(key), change.new) {
                (Some(&b), Some(n)) => {
                    picks.extend([b, new(n)]);
                    types.extend(["update_preimage", "update_postimage"]);
                }
                (Some(&b), None) => {
                    picks.push(b);
                    types.push("delete");
                }
                (None, Some(n)) => {
                    picks.push(new(n));
                    types.push("insert");
                }
                (None, None) => {}
            }
        }
        let Some(schema) = before.first().or(after.first()).map(RecordBatch::schema) else {
            return Ok(Vec::new());
        };
        let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(CHANGE_TYPE, DataType::Utf8, false)));
        let schema = Arc::new(Schema::new(fields));
        let mut out = Vec::new();
        for (picks, types) in picks.chunks(8192).zip(types.chunks(8192)) {
            let mut columns = Vec::with_capacity(schema.fields().len());
            for c in 0..schema.fields().len() - 1 {
                let arrays: Vec<&dyn Array> = before
                    .iter()
                    .chain(after)
                    .map(|b| b.column(c).as_ref())
                    .collect();
                columns.push(arrow::compute::interleave(&arrays, picks).map_err(|e| self.err(e))?);
            }
            columns.push(Arc::new(StringArray::from(types.to_vec())) as ArrayRef);
            out.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }
}

/// Where the round's rows are: row number to batch and row.
struct Rows {
    starts: Vec<usize>,
}

impl Rows {
    fn new(batches: &[RecordBatch]) -> Rows {
        let mut at = 0;
        Rows {
            starts: batches
                .iter()
                .map(|b| {
                    at += b.num_rows();
                    at - b.num_rows()
                })
                .collect(),
        }
    }

    fn locate(&self, n: usize) -> (usize, usize) {
        let b = self.starts.partition_point(|&s| s <= n) - 1;
        (b, n - self.starts[b])
    }
}

/// Files written in order, by the rank of the rows they hold.
struct Placed {
    ends: Vec<usize>,
    paths: Vec<Arc<str>>,
}

impl Placed {
    /// The files `written`, now live in `files`.
    fn new(written: &[files::Written], files: &mut HashMap<Arc<str>, i64>) -> Placed {
        let mut end = 0;
        let mut placed = Placed {
            ends: Vec::new(),
            paths: Vec::new(),
        };
        for w in written {
            end += w.rows;
            let path: Arc<str> = Arc::from(w.path.as_str());
            files.insert(path.clone(), w.size);
            placed.ends.push(end);
            placed.paths.push(path);
        }
        placed
    }

    fn file(&self, rank: usize) -> Arc<str> {
        self.paths[self.ends.partition_point(|&e| e <= rank)].clone()
    }
}

fn schema_err(uri: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Schema {
        table: uri.to_string(),
        source: e.to_string().into(),
    }
}

fn arrow_schema(table: &DeltaTable, uri: &str) -> Result<Schema, SinkError> {
    let snapshot = table.snapshot().map_err(|e| delta_err(uri, e))?;
    snapshot
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(|e| delta_err(uri, e.into()))
}
