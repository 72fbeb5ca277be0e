//! The Parquet changelog sink.
//!
//! One changelog per source table under `<url>/<schema>/<table>/`, partitioned by the
//! commit time window, each row a change: the source columns and `_cdc_op`,
//! `_cdc_commit_lsn`, `_cdc_seq`, `_cdc_xid`, `_cdc_commit_ts`, `_cdc_unchanged` (the
//! columns an update left untouched and PostgreSQL did not send: unchanged TOAST values)
//! and `_cdc_unfit` (values their column's type cannot hold, as PostgreSQL's text). Files stream to object
//! storage as multipart uploads, so an open file costs a row group and an upload part of
//! memory however large it grows, and a file is visible only once complete.

use super::error::SinkError;
use super::rows::ChangeRows;
use crate::batch::CommitPos;
use crate::batch::{Position, SourceBatch};
use crate::checkpoint::CheckpointStore;
use crate::config::{Compression, ParquetSinkConfig, Partitioning};
use crate::ledger::{FileEntry, HashingWriter, LedgerLink, Record, RowCounts, Written};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::ParquetObjectWriter;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use weir_sdk::Relation;

/// Rows gathered in builders before they are handed to the Parquet writer (at most).
const CHUNK_ROWS: usize = 8192;

/// Size of a multipart upload part (S3's minimum is 5 MiB).
const UPLOAD_PART: usize = 8 << 20;

/// (relation id, schema version, time window number)
type FileKey = (u32, u32, i64);

struct OpenFile {
    path: Path,
    /// The source table, `schema.table`.
    table: String,
    rows: ChangeRows,
    /// Rows per operation, in [`OPS`] order (for the ledger).
    ops: [u64; 5],
    /// The transforms whose output the file holds (`weir.transforms` in its metadata).
    transforms: Option<Arc<str>>,
    writer: AsyncArrowWriter<HashingWriter<ParquetObjectWriter>>,
    written: Arc<std::sync::Mutex<Written>>,
}

/// `_cdc_op` codes in the order of [`OpenFile::ops`].
pub(crate) const OPS: [&str; 5] = ["r", "c", "u", "d", "t"];

pub(crate) fn op_index(op: weir_sdk::Op) -> usize {
    match op {
        weir_sdk::Op::Read => 0,
        weir_sdk::Op::Insert => 1,
        weir_sdk::Op::Update => 2,
        weir_sdk::Op::Delete => 3,
        weir_sdk::Op::Truncate => 4,
    }
}

impl OpenFile {
    /// Hands the buffered rows to the Parquet writer.
    async fn write_chunk(&mut self) -> Result<(), SinkError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = self.rows.finish().map_err(|e| write_err(&self.path, e))?;
        self.writer
            .write(&batch)
            .await
            .map_err(|e| write_err(&self.path, e))
    }

    fn size(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Writes the footer; returns the file as the ledger names it, and its rows.
    async fn complete(mut self) -> Result<(FileEntry, String, [u64; 5]), SinkError> {
        self.write_chunk().await?;
        self.writer
            .close()
            .await
            .map_err(|e| write_err(&self.path, e))?;
        let (size, sha256) = match self.written.lock() {
            Ok(mut w) => w.finish(),
            Err(_) => return Err(write_err(&self.path, "the file's hash was lost")),
        };
        let entry = FileEntry {
            path: self.path.to_string(),
            size,
            sha256,
        };
        Ok((entry, self.table, self.ops))
    }

    async fn abort(self) {
        let mut inner = self.writer.into_inner().inner.into_inner();
        let _ = inner.abort().await;
    }
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Write {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// Whether two batches went through the same transform versions: the same labels from
/// the same load (a reload makes new labels even when the text is the same).
pub fn same_transforms(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Whether arrays are written as lists: as configured, else as the output's checkpoint
/// records (`recorded`: `None` without a checkpoint, `Some(None)` for a checkpoint of a
/// weir that wrote text), so that an output never changes form by itself.
fn nested_types(config: &ParquetSinkConfig, recorded: Option<Option<bool>>) -> bool {
    let was = recorded.map(|r| r.unwrap_or(false));
    let nested = config.nested_types.or(was).unwrap_or(true);
    if was.is_some_and(|was| was != nested) {
        let form = if nested { "lists" } else { "text" };
        tracing::info!(url = %config.url, nested_types = nested, "Arrays change form in this output: files from now on hold them as {form}, files written before keep theirs (see the README's type mapping for reading both).");
    }
    nested
}

/// Writes changelog files and checkpoints them.
pub struct ParquetSink {
    config: ParquetSinkConfig,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    slot: String,
    checkpoints: CheckpointStore,
    /// fsync for local outputs.
    local: Option<crate::storage::LocalSync>,
    properties: WriterProperties,
    /// Arrays as lists (`nested_types`), settled when the sink opens.
    nested: bool,
    /// Sequence number of the last committed flush.
    seq: u64,
    durable: Option<CommitPos>,
    open: HashMap<FileKey, OpenFile>,
    /// Files of the coming flush already completed (rolled at the target size).
    rolled: Vec<Path>,
    files_in_flush: u32,
    last_flush: Instant,
    /// Bytes of the files completed by this sink (for the metrics).
    bytes_written: u64,
    /// Where each flush is recorded, when the pipeline keeps a ledger.
    ledger: Option<LedgerLink>,
    /// What the coming flush makes durable, for its ledger record.
    flush_files: Vec<FileEntry>,
    flush_rows: RowCounts,
    flush_transforms: BTreeSet<String>,
}

impl ParquetSink {
    /// Opens the sink, recovering its checkpoint.
    pub async fn open(config: ParquetSinkConfig, slot: &str) -> Result<ParquetSink, SinkError> {
        ParquetSink::open_with(config, slot, true).await
    }

    /// Opens the sink to write replayed dead letters only: the checkpoint (and whatever a
    /// running pipeline is in the middle of) is left alone.
    pub async fn open_for_replay(
        config: ParquetSinkConfig,
        slot: &str,
    ) -> Result<ParquetSink, SinkError> {
        ParquetSink::open_with(config, slot, false).await
    }

    async fn open_with(
        config: ParquetSinkConfig,
        slot: &str,
        recover: bool,
    ) -> Result<ParquetSink, SinkError> {
        let (store, prefix) = crate::storage::object_store_for(&config.url)?;
        crate::storage::check_reachable(store.as_ref(), &prefix, &config.url).await?;
        let local = crate::storage::LocalSync::for_url(&config.url);
        let checkpoints =
            CheckpointStore::new(store.clone(), &prefix, slot).with_local_sync(local.clone());
        let checkpoint = match recover {
            true => checkpoints.recover().await?,
            false => None,
        };
        if let Some(c) = &checkpoint {
            tracing::info!(url = %config.url, checkpoint = %c.end_lsn, seq = c.seq, "Parquet sink resumes from its checkpoint.");
        }
        let recorded = match &checkpoint {
            Some(c) => Some(c.nested_types),
            None if recover => None,
            None => checkpoints.read().await?.map(|c| c.nested_types),
        };
        let nested = nested_types(&config, recorded);
        let checkpoints = checkpoints.with_nested_types(nested);
        let compression = match config.compression {
            Compression::Zstd => parquet::basic::Compression::ZSTD(ZstdLevel::default()),
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            Compression::Gzip => parquet::basic::Compression::GZIP(GzipLevel::default()),
            Compression::None => parquet::basic::Compression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(config.row_group_rows))
            // Wide rows: a row group also ends at this size (the memory of an open file).
            .set_max_row_group_bytes(Some(config.row_group_size as usize))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(ParquetSink {
            nested,
            seq: checkpoint.as_ref().map_or(0, |c| c.seq),
            durable: checkpoint.map(|c| c.position()),
            config,
            store,
            prefix,
            slot: slot.to_owned(),
            checkpoints,
            local,
            properties,
            open: HashMap::new(),
            rolled: Vec::new(),
            bytes_written: 0,
            ledger: None,
            flush_files: Vec::new(),
            flush_rows: RowCounts::default(),
            flush_transforms: BTreeSet::new(),
            files_in_flush: 0,
            last_flush: Instant::now(),
        })
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Bytes of the files this sink completed since the last call.
    pub fn take_bytes_written(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_written)
    }

    /// The last transaction whose rows are all in complete, checkpointed files.
    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    /// Length of a partition's time window, and its directory format.
    fn window_spec(&self) -> (i64, &'static str) {
        match self.config.partition {
            Partitioning::Hourly => (3_600_000_000, "date=%Y-%m-%d/hour=%H"),
            Partitioning::Daily => (86_400_000_000, "date=%Y-%m-%d"),
        }
    }

    /// The number of the time window a commit falls into (hours or days since the epoch).
    fn window(&self, commit_ts: i64) -> i64 {
        commit_ts.div_euclid(self.window_spec().0)
    }

    /// The partition directory of a time window.
    fn partition_dir(&self, window: i64) -> String {
        let (micros, format) = self.window_spec();
        let start = chrono::DateTime::from_timestamp_micros(window * micros).unwrap_or_default();
        start.format(format).to_string()
    }

    fn new_file(
        &mut self,
        relation: &Relation,
        window: i64,
        transforms: Option<Arc<str>>,
    ) -> Result<OpenFile, SinkError> {
        self.files_in_flush += 1;
        let name = format!(
            "part-{:010}-{:05}-{}.parquet",
            self.seq + 1,
            self.files_in_flush,
            self.slot
        );
        self.new_named_file(relation, window, name, transforms)
    }

    fn new_named_file(
        &self,
        relation: &Relation,
        window: i64,
        name: String,
        transforms: Option<Arc<str>>,
    ) -> Result<OpenFile, SinkError> {
        let partition = self.partition_dir(window);
        let path = self
            .prefix
            .clone()
            .join(relation.schema.as_str())
            .join(relation.table.as_str());
        let path = partition
            .split('/')
            .fold(path, |p, part| p.join(part))
            .join(name);
        // An open file holds at most one upload part being filled and two in flight.
        let upload = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            path.clone(),
            UPLOAD_PART,
        )
        .with_max_concurrency(2);
        let rows = ChangeRows::in_form(relation, self.nested);
        let (out, written) = HashingWriter::new(ParquetObjectWriter::from_buf_writer(upload));
        let mut writer =
            AsyncArrowWriter::try_new(out, rows.schema().clone(), Some(self.properties.clone()))
                .map_err(|e| write_err(&path, e))?;
        writer.append_key_value_metadata(KeyValue::new(
            "weir.schema_version".into(),
            relation.version.to_string(),
        ));
        writer.append_key_value_metadata(KeyValue::new("weir.slot".into(), self.slot.clone()));
        if let Some(t) = &transforms {
            writer
                .append_key_value_metadata(KeyValue::new("weir.transforms".into(), t.to_string()));
        }
        Ok(OpenFile {
            path,
            table: relation.qualified_name(),
            rows,
            ops: [0; 5],
            transforms,
            writer,
            written,
        })
    }

    /// Writes a batch's events; flushes when the interval has passed at a transaction
    /// boundary.
    pub async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        let skip_through = self.durable.map_or(0, |d| d.commit_lsn.0);
        if let Some(labels) = batch
            .transforms
            .as_deref()
            .filter(|_| self.ledger.is_some())
        {
            self.flush_transforms
                .extend(labels.split(',').map(str::to_owned));
        }
        for event in &batch.batch.events {
            if event.commit_lsn <= skip_through {
                continue;
            }
            let relation = batch.batch.relation(event);
            let key = (relation.id, relation.version, self.window(event.commit_ts));
            if self
                .open
                .get(&key)
                .is_some_and(|f| !same_transforms(&f.transforms, &batch.transforms))
            {
                // A transform was swapped: each file holds one version's output.
                self.roll(&key).await?;
            }
            if !self.open.contains_key(&key) {
                let file = self.new_file(relation, key.2, batch.transforms.clone())?;
                self.open.insert(key, file);
            }
            let file = self.open.get_mut(&key).expect("inserted above");
            file.rows.append(event, relation);
            file.ops[op_index(event.op)] += 1;
            if file.rows.len() >= CHUNK_ROWS.min(self.config.row_group_rows) {
                self.bound(&key).await?;
            }
        }
        // No rows wait outside the Parquet writers between batches: what an open file
        // holds is its row group, bounded by row_group_size.
        let pending: Vec<FileKey> = self
            .open
            .iter()
            .filter(|(_, f)| !f.rows.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for key in pending {
            self.bound(&key).await?;
        }
        let position = &batch.position;
        if !position.in_tx {
            if self.open.is_empty() && self.rolled.is_empty() {
                // Nothing pending: everything delivered is as durable as it will get.
                self.durable = self.durable.max(position.last_commit);
            } else if self.last_flush.elapsed() >= self.config.flush_interval {
                self.flush(position).await?;
            }
        }
        Ok(())
    }

    /// Writes replayed events (dead letters) to files of their own named `<name>-<n>`,
    /// outside the checkpoint: the same name is rewritten, not repeated, when a replay
    /// runs again. Returns the files written.
    pub async fn write_replay(
        &mut self,
        batch: &weir_sdk::Batch,
        name: &str,
    ) -> Result<Vec<String>, SinkError> {
        let mut files: Vec<(FileKey, OpenFile)> = Vec::new();
        for event in &batch.events {
            let relation = batch.relation(event);
            let key = (relation.id, relation.version, self.window(event.commit_ts));
            let i = match files.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let file_name = format!("{name}-{}.parquet", files.len());
                    files.push((key, self.new_named_file(relation, key.2, file_name, None)?));
                    files.len() - 1
                }
            };
            files[i].1.rows.append(event, relation);
        }
        let mut written = Vec::new();
        for (_, file) in files {
            written.push(file.path.to_string());
            self.bytes_written += file.complete().await?.0.size;
        }
        Ok(written)
    }

    /// Hands a file's buffered rows to its writer (which ends a row group at
    /// `row_group_rows` or `row_group_size`), and completes the file at
    /// `target_file_size`.
    async fn bound(&mut self, key: &FileKey) -> Result<(), SinkError> {
        let file = self.open.get_mut(key).expect("an open file");
        file.write_chunk().await?;
        if file.size() as u64 >= self.config.target_file_size {
            self.roll(key).await?;
        }
        Ok(())
    }

    /// Completes a file that reached the target size. It becomes visible now, so the
    /// intent of the coming flush lists it first.
    async fn roll(&mut self, key: &FileKey) -> Result<(), SinkError> {
        let file = self.open.remove(key).expect("rolled file is open");
        self.rolled.push(file.path.clone());
        self.checkpoints
            .write_intent(self.seq + 1, &self.rolled)
            .await?;
        self.completed(file).await
    }

    /// Completes a file of the coming flush, noting it for the flush's ledger record.
    async fn completed(&mut self, file: OpenFile) -> Result<(), SinkError> {
        let (entry, table, ops) = file.complete().await?;
        self.bytes_written += entry.size;
        if self.ledger.is_some() {
            for (op, n) in OPS.iter().zip(ops) {
                self.flush_rows.add(&table, op, n);
            }
            self.flush_files.push(entry);
        }
        Ok(())
    }

    /// Gives the sink its place in the pipeline's ledger: each flush appends a record.
    pub fn set_ledger(&mut self, link: LedgerLink) {
        self.ledger = Some(link);
    }

    /// Whether the sink holds the commit `record` describes (its flush is checkpointed).
    pub fn holds(&self, record: &Record) -> bool {
        record.flush.is_none_or(|f| f <= self.seq)
    }

    /// Appends the ledger record of flush `seq`, before its checkpoint.
    async fn record(&mut self, seq: u64, to: CommitPos) -> Result<(), SinkError> {
        let Some(link) = &self.ledger else {
            return Ok(());
        };
        let record = Record {
            seq: 0,
            sink: link.sink,
            sink_name: link.name.clone(),
            flush: Some(seq),
            table: None,
            from_lsn: self.durable.map_or(crate::lsn::Lsn::ZERO, |d| d.end_lsn),
            commit_lsn: to.commit_lsn,
            end_lsn: to.end_lsn,
            files: std::mem::take(&mut self.flush_files),
            rows: self.flush_rows.take(),
            transforms: std::mem::take(&mut self.flush_transforms)
                .into_iter()
                .collect(),
            written_at: String::new(),
            prev: None,
        };
        link.ledger.lock().await.append(record).await?;
        Ok(())
    }

    /// Completes every open file and moves the checkpoint to `position`. Does nothing
    /// inside a transaction: a checkpoint may only name a whole transaction.
    pub async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        let Some(last_commit) = position.flush_point(self.durable) else {
            return Ok(());
        };
        if self.open.is_empty() && self.rolled.is_empty() {
            self.durable = self.durable.max(Some(last_commit));
            return Ok(());
        }
        let started = Instant::now();
        let seq = self.seq + 1;
        let mut files = std::mem::take(&mut self.rolled);
        files.extend(self.open.values().map(|f| f.path.clone()));
        self.checkpoints.write_intent(seq, &files).await?;
        let open: Vec<OpenFile> = self.open.drain().map(|(_, f)| f).collect();
        for file in open {
            self.completed(file).await?;
        }
        if let Some(local) = &self.local {
            // On disk before the checkpoint that lists them.
            local.sync(files.clone()).await?;
        }
        self.record(seq, last_commit).await?;
        self.checkpoints.commit(seq, last_commit).await?;
        tracing::debug!(
            seq,
            files = files.len(),
            checkpoint = %last_commit.end_lsn,
            ms = started.elapsed().as_millis() as u64,
            "Parquet flush committed."
        );
        self.seq = seq;
        self.files_in_flush = 0;
        self.durable = Some(last_commit);
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Abandons open files (their rows are resent after a restart).
    pub async fn abort(self) {
        for (_, file) in self.open {
            file.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compression, ParquetSinkConfig, Partitioning};
    use crate::lsn::Lsn;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::time::Duration;
    use weir_sdk::{Batch, Column, Event, Op, Value};

    const DAY: i64 = 86_400_000_000;

    fn config(
        dir: &std::path::Path,
        partition: Partitioning,
        compression: Compression,
    ) -> ParquetSinkConfig {
        ParquetSinkConfig {
            url: format!("file://{}", dir.display()),
            partition,
            compression,
            target_file_size: 128 << 20,
            flush_interval: Duration::from_secs(3600),
            row_group_rows: 1000,
            row_group_size: 32 << 20,
            nested_types: None,
        }
    }

    /// Table `public.t` with these columns.
    fn table_t(columns: Vec<Column>) -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            version: 1,
            columns,
        }
    }

    /// One insert per commit time, each its own transaction.
    fn batch(commit_times: &[i64]) -> SourceBatch {
        let mut batch = Batch::default();
        let rel = batch.push_relation(table_t(vec![Column::new("id", 20, "int8", true)]));
        for (i, ts) in commit_times.iter().enumerate() {
            batch.events.push(Event {
                op: Op::Insert,
                rel,
                commit_lsn: 100 + i as u64,
                seq: 0,
                xid: 1,
                commit_ts: *ts,
                before: None,
                after: Some(vec![Value::Int(i as i64)]),
                unchanged: vec![],
            });
        }
        let last = CommitPos {
            commit_lsn: Lsn(99 + commit_times.len() as u64),
            end_lsn: Lsn(1000),
        };
        SourceBatch {
            batch,
            position: Position {
                last_commit: Some(last),
                ..Default::default()
            },
            bytes: 0,
            markers: vec![],
            transforms: None,
        }
    }

    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p)
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    found.push(p)
                }
            }
        }
        found.sort();
        found
    }

    #[tokio::test]
    async fn row_groups_end_at_row_group_size_with_wide_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Partitioning::Daily, Compression::Zstd);
        cfg.row_group_rows = 65_536;
        cfg.row_group_size = 64 << 10;
        let mut sink = ParquetSink::open(cfg, "s").await.unwrap();
        // One transaction of 500 rows of 2 KiB that do not compress, 50 rows a batch.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = || {
            (0..2048)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'!' + (seed % 90) as u8)
                })
                .collect::<String>()
        };
        let mut last = None;
        for b in 0..10u64 {
            let mut batch = Batch::default();
            let rel = batch.push_relation(table_t(vec![
                Column::new("id", 20, "int8", true),
                Column::new("v", 25, "text", false),
            ]));
            for i in 0..50 {
                batch.events.push(Event {
                    op: Op::Insert,
                    rel,
                    commit_lsn: 100,
                    seq: (b * 50 + i) as u32,
                    xid: 1,
                    commit_ts: 0,
                    before: None,
                    after: Some(vec![Value::Int((b * 50 + i) as i64), Value::Text(noise())]),
                    unchanged: vec![],
                });
            }
            let position = Position {
                in_tx: b < 9,
                last_commit: (b == 9).then_some(CommitPos {
                    commit_lsn: Lsn(100),
                    end_lsn: Lsn(200),
                }),
                ..Default::default()
            };
            let batch = SourceBatch {
                batch,
                position,
                bytes: 0,
                markers: vec![],
                transforms: None,
            };
            sink.write(&batch).await.unwrap();
            last = Some(batch.position);
        }
        sink.flush(&last.unwrap()).await.unwrap();
        let found = files(dir.path());
        assert_eq!(found.len(), 1);
        let reader = SerializedFileReader::new(std::fs::File::open(&found[0]).unwrap()).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), 500);
        assert!(
            meta.num_row_groups() >= 5,
            "{} row groups",
            meta.num_row_groups()
        );
        for g in meta.row_groups() {
            assert!(g.num_rows() <= 100, "a row group of {} rows", g.num_rows());
        }
    }

    #[tokio::test]
    async fn daily_partitions_and_the_chosen_codec() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::open(
            config(dir.path(), Partitioning::Daily, Compression::Snappy),
            "s",
        )
        .await
        .unwrap();
        let b = batch(&[0, DAY - 1, DAY + 5]);
        sink.write(&b).await.unwrap();
        assert_eq!(sink.durable(), None, "nothing durable before the flush");
        sink.flush(&b.position).await.unwrap();
        assert_eq!(sink.durable(), b.position.last_commit);
        let found = files(dir.path());
        let rel: Vec<String> = found
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .parent()
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            rel,
            vec!["public/t/date=1970-01-01", "public/t/date=1970-01-02"]
        );
        let reader = SerializedFileReader::new(std::fs::File::open(&found[0]).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        assert_eq!(
            reader.metadata().row_group(0).column(0).compression(),
            parquet::basic::Compression::SNAPPY
        );
    }

    #[tokio::test]
    async fn hourly_partitions_and_no_checkpoint_inside_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::open(
            config(dir.path(), Partitioning::Hourly, Compression::Zstd),
            "s",
        )
        .await
        .unwrap();
        let mut b = batch(&[3_600_000_000 * 5 + 1]);
        b.position.in_tx = true;
        sink.write(&b).await.unwrap();
        sink.flush(&b.position).await.unwrap();
        assert!(
            files(dir.path()).is_empty(),
            "a flush inside a transaction completes nothing"
        );
        b.position.in_tx = false;
        sink.flush(&b.position).await.unwrap();
        let found = files(dir.path());
        assert!(
            found[0]
                .to_string_lossy()
                .contains("public/t/date=1970-01-01/hour=05/part-0000000001-00001-s.parquet")
        );
        let reopened = ParquetSink::open(
            config(dir.path(), Partitioning::Hourly, Compression::Zstd),
            "s",
        )
        .await
        .unwrap();
        assert_eq!(
            reopened.durable(),
            b.position.last_commit,
            "the checkpoint is read back on open"
        );
    }
}
