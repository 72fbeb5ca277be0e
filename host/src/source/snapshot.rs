//! The initial snapshot: the tables' existing rows, read in the snapshot the slot exports
//! when it is created, so that streaming from the slot's consistent point continues
//! exactly where the snapshot ends: no row missed, none doubled.
//!
//! The slot is created on a replication session with `SNAPSHOT 'export'`; sessions that
//! import that snapshot (`SET TRANSACTION SNAPSHOT`) read the tables in chunks (ranges of
//! pages, each a partition's or a table's) with `COPY (SELECT ...) TO STDOUT (FORMAT
//! binary)`, decoded on tasks of their own while the stages write the previous batch (see
//! [`CopyColumn`] for how each type travels). Batches hold `batch.max_events` rows.
//!
//! Each chunk reaches the stages whole, as a transaction of its own: its rows are
//! `op = r` events at a commit LSN below the consistent point (the `n`-th chunk of `N` at
//! `consistent point - 1 - (N - n)`, the last at `consistent point - 1`), so they sort
//! before every streamed change and the sinks' checkpoint moves chunk by chunk. Chunks
//! are recorded in `<state>/_weir/<slot>/snapshot.json` before their commit reaches the
//! sinks. A crash leaves the slot and the chunks up to the checkpoint; the next start
//! keeps them and reads the rest of each table as a backfill (see [`Resumption`]),
//! because the exported snapshot died with its session. Tables without a primary key
//! cannot be backfilled, so they are read first and no chunk is committed before all of
//! them are copied: a crash before that takes the whole snapshot again.

use super::decoder::{Kind, builtin_type_name, kind, text_value};
use super::{Control, SourceError, SourceInfo, quote_table, sql_err};
use crate::batch::CommitPos;
use crate::batch::{Position, SourceBatch};
use crate::config::TableName;
use crate::error::HostPanic;
use crate::lsn::Lsn;
use crate::stats::{CopyKind, Stats, TableCopy};
use crate::storage::{StateFile, StorageError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;
use weir_sdk::{Batch, Column, Event, Op, Relation, Value};

/// What `snapshot.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    /// Taken by a run that has not finished it.
    Started,
    /// Complete and checkpointed (or handed over to backfills).
    Done,
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    progress: Progress,
    slot: String,
    consistent_point: Option<String>,
    /// The exported snapshot, as `pg_current_snapshot()` renders it (`xmin:xmax:xip,...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    /// Chunks planned per table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    planned: BTreeMap<String, usize>,
    /// Chunks copied, in the order of their commits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<DoneChunk>,
}

/// A chunk the snapshot copied: pages `first_page` up to `end_page` (open: to the end)
/// of one relation (a table, or one partition of a partitioned one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneChunk {
    pub table: String,
    /// The relation read, quoted.
    pub part: String,
    pub first_page: i64,
    pub end_page: Option<i64>,
    pub commit_lsn: u64,
    pub rows: u64,
}

impl Record {
    fn point(&self) -> Option<Lsn> {
        self.consistent_point
            .as_deref()
            .and_then(|p| p.parse().ok())
    }
}

/// The snapshot's progress record, kept with the pipeline's state.
#[derive(Clone)]
pub struct SnapshotState {
    file: StateFile<Record>,
    slot: String,
}

impl SnapshotState {
    pub fn open(state_url: &str, slot: &str) -> Result<SnapshotState, StorageError> {
        Ok(SnapshotState {
            file: StateFile::open(state_url, slot, "snapshot.json")?,
            slot: slot.to_owned(),
        })
    }

    pub async fn read(&self) -> Result<Option<Record>, StorageError> {
        self.file.read().await
    }

    pub async fn write(&self, progress: Progress, at: Option<Lsn>) -> Result<(), StorageError> {
        self.file
            .write(&Record {
                progress,
                slot: self.slot.clone(),
                consistent_point: at.map(|l| l.to_string()),
                snapshot: None,
                planned: BTreeMap::new(),
                chunks: vec![],
            })
            .await
    }

    async fn save(&self, record: &Record) -> Result<(), StorageError> {
        self.file.write(record).await
    }
}

/// What the start of a run does about the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: it is done, not wanted, or the slot predates it.
    Skip,
    /// Take it (dropping the slot an unfinished one left behind, if any).
    Take { drop_slot: bool },
    /// It completed and was checkpointed, but the record says otherwise: fix the record.
    MarkDone,
    /// It did not finish, but chunks of it are checkpointed: keep them, read the rest.
    Resume(Resumption),
}

/// Decides from the record, the slot, whether every native sink flushed once, and the
/// position every sink holds (`None` when one holds nothing).
pub fn plan(
    record: Option<&Record>,
    slot_exists: bool,
    flushed: bool,
    held: Option<CommitPos>,
) -> Plan {
    let Some(record) = record else {
        // A slot weir did not create for a snapshot (or an older pipeline's): keep it.
        return match slot_exists || flushed {
            true => Plan::Skip,
            false => Plan::Take { drop_slot: false },
        };
    };
    if record.progress == Progress::Done {
        return Plan::Skip;
    }
    match (record.point(), &record.snapshot, held) {
        (Some(point), _, Some(at)) if at >= snapshot_commit(point) => Plan::MarkDone,
        (Some(point), Some(snapshot), Some(at)) if slot_exists => Plan::Resume(Resumption {
            point,
            snapshot: snapshot.clone(),
            planned: record.planned.clone(),
            kept: record
                .chunks
                .iter()
                .filter(|c| c.commit_lsn <= at.commit_lsn.0)
                .cloned()
                .collect(),
        }),
        // A record from before chunks were committed one by one: its rows reached a
        // checkpoint only once all were written.
        (None, _, _) if flushed => Plan::MarkDone,
        _ => Plan::Take {
            drop_slot: slot_exists,
        },
    }
}

/// An unfinished snapshot's chunks that every sink holds, and what is left to read.
///
/// The rest of a table is read as a backfill (chunks by key between watermarks, while
/// the stream goes on from the consistent point), leaving out the rows the kept chunks
/// copied: those in their page ranges whose version was already there in the snapshot
/// (its `xmin` is visible in it). A row changed since has a new version, wherever it is
/// now, and is read again: its `op = r` comes after its changes, with the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    pub point: Lsn,
    snapshot: String,
    planned: BTreeMap<String, usize>,
    pub kept: Vec<DoneChunk>,
}

/// What a backfill leaves out: rows an unfinished initial snapshot copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copied {
    /// The snapshot they were copied in (`pg_current_snapshot()`'s text).
    pub snapshot: String,
    /// (relation, first page, end page or open) of each chunk copied.
    pub ranges: Vec<(String, i64, Option<i64>)>,
}

impl Resumption {
    /// Rows the kept chunks hold.
    pub fn kept_rows(&self) -> u64 {
        self.kept.iter().map(|c| c.rows).sum()
    }

    /// Every table in `tables` not copied whole, with what was copied of it.
    pub fn unfinished(&self, tables: &[TableName]) -> Vec<(TableName, Copied)> {
        tables
            .iter()
            .filter_map(|table| {
                let name = table.to_string();
                let ranges: Vec<_> = self
                    .kept
                    .iter()
                    .filter(|c| c.table == name)
                    .map(|c| (c.part.clone(), c.first_page, c.end_page))
                    .collect();
                let whole = self.planned.get(&name) == Some(&ranges.len());
                let copied = Copied {
                    snapshot: self.snapshot.clone(),
                    ranges,
                };
                (!whole).then(|| (table.clone(), copied))
            })
            .collect()
    }
}

impl Copied {
    /// A condition on a query's row `alias` that is false for rows copied already.
    pub fn not_copied(&self, alias: &str) -> String {
        if self.ranges.is_empty() {
            return "true".into();
        }
        let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|(part, first, end)| {
                let mut range = format!("{alias}.tableoid = to_regclass({})", literal(part));
                if *first > 0 {
                    range += &format!(" AND {alias}.ctid >= '({first},0)'::tid");
                }
                if let Some(end) = end {
                    range += &format!(" AND {alias}.ctid < '({end},0)'::tid");
                }
                format!("({range})")
            })
            .collect();
        // The row version's xmin as a full (epoch and xid) transaction id: from the
        // epoch of the next id to be assigned, or the one before when the xid is past it.
        let next = "(SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8)";
        let base = format!("(({next} >> 32) << 32)");
        let xid = format!("{alias}.xmin::text::int8");
        let full = format!(
            "greatest(3, {base} + {xid} - CASE WHEN {base} + {xid} >= {next} THEN 4294967296 ELSE 0 END)"
        );
        format!(
            "NOT coalesce(({}) AND pg_visible_in_snapshot({full}::text::xid8, {}::pg_snapshot), false)",
            ranges.join(" OR "),
            literal(&self.snapshot)
        )
    }
}

/// The position of the snapshot, as one transaction ending at the consistent point.
pub fn snapshot_commit(consistent_point: Lsn) -> CommitPos {
    CommitPos {
        commit_lsn: Lsn(consistent_point.0 - 1),
        end_lsn: consistent_point,
    }
}

/// The commit of the `n`-th of `total` chunk commits: below the consistent point, the
/// last one at `consistent point - 1` (the snapshot's own commit).
fn chunk_commit(consistent_point: Lsn, n: usize, total: usize) -> CommitPos {
    let commit = consistent_point.0 - 1 - total.saturating_sub(n) as u64;
    CommitPos {
        commit_lsn: Lsn(commit),
        end_lsn: Lsn(commit + 1),
    }
}

/// Reads the tables in the exported snapshot, one batch at a time.
///
/// The tables are cut into chunks (a partitioned table into its partitions, a large table
/// or partition into ranges of pages, `ctid` ranges), which `parallelism` sessions, all
/// in the exported snapshot, copy out at once. [`next_batch`](Self::next_batch) hands
/// over one chunk at a time, whole, then its commit; the other sessions read ahead, two
/// batches each at most.
pub struct SnapshotReader {
    /// The session that plans the chunks, reads some of them, and ends the snapshot.
    client: Arc<tokio_postgres::Client>,
    url: String,
    name: String,
    parallelism: usize,
    tables: Vec<TableName>,
    info: SourceInfo,
    batch_rows: usize,
    point: Lsn,
    commit_ts: i64,
    state: ReadState,
    /// Where chunks are recorded as they are handed over (none for `weir verify`).
    progress: Option<SnapshotState>,
    record: Record,
    /// Rows read over all tables.
    pub rows: u64,
    /// Where each table's progress is reported (`/metrics`, `/status`, the status line).
    pub stats: Option<Arc<Stats>>,
}

enum ReadState {
    Planned,
    Reading(Reading),
    /// The last batch (the snapshot's commit) was returned.
    Ended,
}

struct Reading {
    tables: Vec<TableRead>,
    chunks: Vec<Arc<Chunk>>,
    workers: Vec<Worker>,
    /// The worker whose chunk is handed over now (or next).
    current: usize,
    /// The chunk being handed over: its rows so far.
    open: Option<(usize, u64)>,
    /// Commits made, of at most one per chunk.
    commits: usize,
    /// Chunks handed over since the last commit.
    uncommitted: Vec<DoneChunk>,
    /// Chunks of tables without a primary key not handed over yet: no commit before
    /// they are all in (a restart could not backfill them).
    keyless_left: usize,
}

struct Worker {
    pieces: mpsc::Receiver<Result<Piece, SourceError>>,
    handle: tokio::task::JoinHandle<()>,
}

struct TableRead {
    relation: Arc<Relation>,
    chunks_left: usize,
    progress: TableCopy,
    last_report: Instant,
}

/// What a worker sends: rows of a chunk, then the chunk's end.
enum Piece {
    Rows {
        chunk: usize,
        rows: Vec<Vec<Value>>,
        bytes: u64,
    },
    ChunkDone {
        chunk: usize,
    },
}

/// One `COPY` of (part of) a table: pages `first` up to `end` of relation `part`.
struct Chunk {
    id: usize,
    table: usize,
    part: String,
    first: i64,
    end: Option<i64>,
    keyless: bool,
    sql: String,
    columns: Arc<Vec<CopyColumn>>,
}

/// A chunk holds at least this many pages (8 KiB each by default): a table under twice
/// as many is read in one piece.
const SPLIT_PAGES: i64 = 256;
/// And at most this many (128 MiB), so that a crash loses little of a large table.
const MAX_CHUNK_PAGES: i64 = 16_384;

impl SnapshotReader {
    /// Opens a session in the exported snapshot `name`; reading starts with the first
    /// batch, on up to `parallelism` sessions. Chunks are recorded in `progress`, if any.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin(
        url: &str,
        name: &str,
        tables: Vec<TableName>,
        info: SourceInfo,
        batch_rows: usize,
        consistent_point: Lsn,
        parallelism: usize,
        progress: Option<SnapshotState>,
    ) -> Result<SnapshotReader, SourceError> {
        let client = snapshot_session(url, name).await?;
        let snapshot: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(sql_err("reading the exported snapshot"))?
            .get(0);
        let record = Record {
            progress: Progress::Started,
            slot: progress.as_ref().map_or(String::new(), |p| p.slot.clone()),
            consistent_point: Some(consistent_point.to_string()),
            snapshot: Some(snapshot),
            planned: BTreeMap::new(),
            chunks: vec![],
        };
        Ok(SnapshotReader {
            client: Arc::new(client),
            url: url.to_string(),
            name: name.to_string(),
            parallelism: parallelism.max(1),
            tables,
            info,
            batch_rows: batch_rows.max(1),
            point: consistent_point,
            commit_ts: chrono::Utc::now().timestamp_micros(),
            state: ReadState::Planned,
            progress,
            record,
            rows: 0,
            stats: None,
        })
    }

    /// The next batch: rows of the chunk being handed over, or its commit (an empty
    /// batch); after the last chunk, one empty batch with the snapshot's own commit;
    /// then `None`.
    pub async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            let reading = match &mut self.state {
                ReadState::Ended => return Ok(None),
                ReadState::Planned => {
                    self.state = ReadState::Reading(self.start().await?);
                    continue;
                }
                ReadState::Reading(reading) => reading,
            };
            if reading.workers.is_empty() {
                self.state = ReadState::Ended;
                self.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(sql_err("ending the snapshot"))?;
                return Ok(Some(commit_batch(snapshot_commit(self.point))));
            }
            let w = reading.current % reading.workers.len();
            let piece = match reading.workers[w].pieces.recv().await {
                Some(piece) => piece?,
                None => {
                    // Its queue is empty: a worker stops only between chunks.
                    let worker = reading.workers.remove(w);
                    if let Err(e) = worker.handle.await
                        && e.is_panic()
                    {
                        return Err(HostPanic::from_join("snapshot reader", e).into());
                    }
                    continue;
                }
            };
            match piece {
                Piece::ChunkDone { chunk } => {
                    let rows = reading.open.take().map_or(0, |(_, rows)| rows);
                    let chunk = reading.chunks[chunk].clone();
                    reading.current = w + 1;
                    reading.keyless_left -= usize::from(chunk.keyless);
                    let t = &mut reading.tables[chunk.table];
                    t.chunks_left -= 1;
                    if t.chunks_left == 0 {
                        t.progress.finished = Some(Instant::now());
                        if let Some(stats) = &self.stats {
                            stats.copy_finished(&t.progress.table);
                        }
                        super::log_copy_progress(&t.progress, "Snapshot of the table done.");
                    }
                    reading.uncommitted.push(DoneChunk {
                        table: t.progress.table.clone(),
                        part: chunk.part.clone(),
                        first_page: chunk.first,
                        end_page: chunk.end,
                        commit_lsn: 0,
                        rows,
                    });
                    if reading.keyless_left > 0 {
                        // Its rows stay in the transaction the next commit ends.
                        continue;
                    }
                    reading.commits += 1;
                    let commit = chunk_commit(self.point, reading.commits, reading.chunks.len());
                    for mut done in reading.uncommitted.drain(..) {
                        done.commit_lsn = commit.commit_lsn.0;
                        self.record.chunks.push(done);
                    }
                    // Recorded before the commit can reach a checkpoint.
                    if let Some(progress) = &self.progress {
                        progress.save(&self.record).await?;
                    }
                    return Ok(Some(commit_batch(commit)));
                }
                Piece::Rows { chunk, rows, bytes } => {
                    let chunk = reading.chunks[chunk].clone();
                    let open = reading.open.get_or_insert((chunk.id, 0));
                    open.1 += rows.len() as u64;
                    let commit =
                        chunk_commit(self.point, reading.commits + 1, reading.chunks.len());
                    let t = &mut reading.tables[chunk.table];
                    let batch = rows_batch(t, rows, commit.commit_lsn, self.commit_ts);
                    let n = batch.events.len() as u64;
                    self.rows += n;
                    if let Some(stats) = &self.stats {
                        stats.copy_rows(&t.progress.table, n);
                    }
                    if t.last_report.elapsed() >= Duration::from_secs(5) {
                        t.last_report = Instant::now();
                        super::log_copy_progress(&t.progress, "Snapshot in progress.");
                    }
                    return Ok(Some(SourceBatch {
                        batch,
                        position: Position {
                            last_commit: None,
                            in_tx: true,
                            idle_wal_end: Lsn::ZERO,
                        },
                        bytes,
                        markers: vec![],
                        transforms: None,
                    }));
                }
            }
        }
    }

    /// Plans every table's chunks (those of tables without a primary key first), records
    /// the plan, then starts the workers: this session and up to `parallelism - 1` more,
    /// as many as the server accepts.
    async fn start(&mut self) -> Result<Reading, SourceError> {
        let mut tables = Vec::new();
        let mut chunks = Vec::new();
        for (i, table) in self.tables.clone().iter().enumerate() {
            let (read, planned) = self.plan(i, table).await?;
            self.record.planned.insert(table.to_string(), planned.len());
            tables.push(read);
            chunks.extend(planned);
        }
        chunks.sort_by_key(|c| !c.keyless);
        let chunks: Vec<Arc<Chunk>> = chunks
            .into_iter()
            .enumerate()
            .map(|(id, mut c)| {
                c.id = id;
                Arc::new(c)
            })
            .collect();
        let keyless_left = chunks.iter().filter(|c| c.keyless).count();
        if let Some(progress) = &self.progress {
            progress.save(&self.record).await?;
        }
        let workers = self.parallelism.min(chunks.len()).max(1);
        let mut clients = vec![self.client.clone()];
        for n in 1..workers {
            match snapshot_session(&self.url, &self.name).await {
                Ok(client) => clients.push(Arc::new(client)),
                Err(e) => {
                    tracing::warn!(error = %e, sessions = n, parallelism = self.parallelism, "The server did not take another snapshot session: reading with fewer.");
                    break;
                }
            }
        }
        if clients.len() > 1 {
            tracing::info!(
                sessions = clients.len(),
                chunks = chunks.len(),
                "Reading the snapshot on several sessions at once."
            );
        }
        let queue = Arc::new(std::sync::Mutex::new(chunks.iter().cloned().collect()));
        let workers = clients
            .into_iter()
            .map(|client| {
                // Two batches ahead per session at most: memory is bounded by the
                // parallelism times `batch.max_events`.
                let (tx, pieces) = mpsc::channel(2);
                let task = copy_chunks(client, queue.clone(), self.batch_rows, tx);
                let handle = tokio::spawn(task.in_current_span());
                Worker { pieces, handle }
            })
            .collect();
        Ok(Reading {
            tables,
            chunks,
            workers,
            current: 0,
            open: None,
            commits: 0,
            uncommitted: vec![],
            keyless_left,
        })
    }

    /// A table's relation, progress, and chunks.
    async fn plan(
        &self,
        index: usize,
        table: &TableName,
    ) -> Result<(TableRead, Vec<Chunk>), SourceError> {
        let client = &self.client;
        let relation = table_relation(client, &self.info, table).await?;
        let keyless = !relation.columns.iter().any(|c| c.key);
        let (list, columns) = copy_list(&relation);
        let columns = Arc::new(columns);
        let chunk = |part: &str, first: i64, end: Option<i64>| {
            let mut filter = String::new();
            if first > 0 {
                filter += &format!(" WHERE ctid >= '({first},0)'::tid");
            }
            if let Some(end) = end {
                filter += if first > 0 { " AND" } else { " WHERE" };
                filter += &format!(" ctid < '({end},0)'::tid");
            }
            Chunk {
                id: 0,
                table: index,
                part: part.to_string(),
                first,
                end,
                keyless,
                sql: format!(
                    "COPY (SELECT {list} FROM ONLY {part}{filter}) TO STDOUT (FORMAT binary)"
                ),
                columns: columns.clone(),
            }
        };
        // Each partition (a table that is not partitioned is its own only one), with
        // its size in pages.
        let parts = client
            .query(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
                 pg_relation_size(c.oid) / current_setting('block_size')::int8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind <> 'p' AND (c.oid = $1::text::regclass \
                 OR c.oid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE isleaf)) \
                 ORDER BY 2 DESC",
                &[&quote_table(table)],
            )
            .await
            .map_err(sql_err("sizing the table for the snapshot"))?;
        let mut chunks = Vec::new();
        for part in parts {
            let (name, pages): (String, i64) = (part.get(0), part.get(1));
            let per_chunk =
                (pages / (4 * self.parallelism as i64)).clamp(SPLIT_PAGES, MAX_CHUNK_PAGES);
            if pages < 2 * SPLIT_PAGES {
                chunks.push(chunk(&name, 0, None));
                continue;
            }
            let mut first = 0;
            while first < pages {
                let next = first + per_chunk;
                // The last range is open: nothing the snapshot sees is past it.
                chunks.push(chunk(&name, first, (next < pages).then_some(next)));
                first = next;
            }
        }
        let estimated = super::estimated_rows(client, table).await?;
        if let Some(stats) = &self.stats {
            stats.copy_started(&table.to_string(), CopyKind::Initial, estimated);
        }
        tracing::info!(table = %table, estimated_rows = %estimated.map_or("unknown".to_string(), |e| e.to_string()), chunks = chunks.len(), "Snapshot of the table started.");
        let now = Instant::now();
        let read = TableRead {
            relation: Arc::new(relation),
            chunks_left: chunks.len(),
            progress: TableCopy {
                table: table.to_string(),
                kind: CopyKind::Initial,
                rows: 0,
                estimated,
                started: now,
                finished: None,
            },
            last_report: now,
        };
        Ok((read, chunks))
    }
}

/// A batch of a table's rows as `op = r` events of the commit at `commit_lsn`.
fn rows_batch(t: &mut TableRead, rows: Vec<Vec<Value>>, commit_lsn: Lsn, commit_ts: i64) -> Batch {
    let mut batch = Batch::default();
    let rel = batch.push_relation((*t.relation).clone());
    batch.events.reserve(rows.len());
    for values in rows {
        batch.events.push(Event {
            op: Op::Read,
            rel,
            commit_lsn: commit_lsn.0,
            seq: t.progress.rows as u32,
            xid: 0,
            commit_ts,
            before: None,
            after: Some(values),
            unchanged: vec![],
        });
        t.progress.rows += 1;
    }
    batch
}

/// An empty batch that ends the transaction `commit`.
fn commit_batch(commit: CommitPos) -> SourceBatch {
    SourceBatch {
        batch: Batch::default(),
        position: Position {
            last_commit: Some(commit),
            in_tx: false,
            idle_wal_end: Lsn::ZERO,
        },
        bytes: 0,
        markers: vec![],
        transforms: None,
    }
}

/// A session in the exported snapshot `name`.
async fn snapshot_session(url: &str, name: &str) -> Result<tokio_postgres::Client, SourceError> {
    let control = Control::connect(url).await?;
    control
        .client
        .batch_execute(super::READ_SESSION_SETTINGS)
        .await
        .map_err(sql_err("setting up the snapshot session"))?;
    control
        .client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            name.replace('\'', "")
        ))
        .await
        .map_err(sql_err("importing the slot's snapshot"))?;
    Ok(control.client)
}

/// A worker: copies chunks from `queue` until it is empty (or the reader is gone).
async fn copy_chunks(
    client: Arc<tokio_postgres::Client>,
    queue: Arc<std::sync::Mutex<VecDeque<Arc<Chunk>>>>,
    batch_rows: usize,
    tx: mpsc::Sender<Result<Piece, SourceError>>,
) {
    loop {
        let chunk = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some(chunk) = chunk else { return };
        let stream = match client.copy_out(chunk.sql.as_str()).await {
            Ok(stream) => stream,
            Err(e) => {
                let _ = tx.send(Err(sql_err("reading the snapshot")(e))).await;
                return;
            }
        };
        if !copy_rows(stream, &chunk, batch_rows, &tx).await {
            return;
        }
        let done = Piece::ChunkDone { chunk: chunk.id };
        if tx.send(Ok(done)).await.is_err() {
            return;
        }
    }
}

/// How a column travels in the snapshot's binary COPY, chosen by its base type so that
/// every value equals what pgoutput's text sends while streaming (the same output
/// function, the same session settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyColumn {
    /// Its binary form, decoded here: booleans, integers, `float8`, `bytea`.
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float8,
    Bytea,
    /// Text as PostgreSQL renders it: the binary form of the text types is their text,
    /// any other type is cast to `text` (I/O conversion: its output function) except
    /// those whose cast to `text` is a function that renders differently (`inet`,
    /// `cidr`, `"char"`), which go through `format('%s', ...)`.
    Text(Kind, TextVia),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextVia {
    Itself,
    Cast,
    Format,
}

impl CopyColumn {
    pub(crate) fn of(column: &Column) -> CopyColumn {
        use weir_sdk::oid;
        const CHAR: u32 = 18;
        const INET: u32 = 869;
        const CIDR: u32 = 650;
        match column.type_oid {
            oid::BOOL => CopyColumn::Bool,
            oid::INT2 => CopyColumn::Int2,
            oid::INT4 => CopyColumn::Int4,
            oid::INT8 => CopyColumn::Int8,
            oid::OID => CopyColumn::Oid,
            oid::FLOAT8 => CopyColumn::Float8,
            oid::BYTEA => CopyColumn::Bytea,
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => {
                CopyColumn::Text(Kind::Text, TextVia::Itself)
            }
            CHAR | INET | CIDR => CopyColumn::Text(Kind::Text, TextVia::Format),
            other => CopyColumn::Text(kind(other), TextVia::Cast),
        }
    }

    /// The column's expression in the COPY's SELECT.
    pub(crate) fn select(self, name: &str) -> String {
        match self {
            CopyColumn::Text(_, TextVia::Cast) => format!("{name}::text"),
            CopyColumn::Text(_, TextVia::Format) => {
                format!("CASE WHEN {name} IS NULL THEN NULL ELSE format('%s', {name}) END")
            }
            _ => name.to_string(),
        }
    }

    /// A value from its COPY bytes (`None` when they do not have the type's binary
    /// length, which a server never sends).
    fn value(self, b: &[u8]) -> Option<Value> {
        Some(match self {
            CopyColumn::Bool => Value::Bool(*b.first()? != 0),
            CopyColumn::Int2 => Value::Int(i16::from_be_bytes(b.try_into().ok()?).into()),
            CopyColumn::Int4 => Value::Int(i32::from_be_bytes(b.try_into().ok()?).into()),
            CopyColumn::Int8 => Value::Int(i64::from_be_bytes(b.try_into().ok()?)),
            CopyColumn::Oid => Value::Int(u32::from_be_bytes(b.try_into().ok()?).into()),
            CopyColumn::Float8 => Value::Float(f64::from_be_bytes(b.try_into().ok()?)),
            CopyColumn::Bytea => Value::Bytes(b.to_vec()),
            CopyColumn::Text(kind, _) => text_value(b, kind),
        })
    }
}

/// Decodes a chunk's binary COPY into batches of `batch_rows` rows, sent to `tx`; false
/// when it stopped early (an error, sent; or the receiver is gone).
async fn copy_rows(
    stream: tokio_postgres::CopyOutStream,
    chunk: &Chunk,
    batch_rows: usize,
    tx: &mpsc::Sender<Result<Piece, SourceError>>,
) -> bool {
    use futures::StreamExt;
    use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
    use tokio_postgres::types::Type;
    let columns = &chunk.columns;
    // Every field is read as raw bytes; `CopyColumn::value` decodes them.
    let types = vec![Type::BYTEA; columns.len()];
    let rows = BinaryCopyOutStream::new(stream, &types);
    futures::pin_mut!(rows);
    let decode = |row: &BinaryCopyOutRow, bytes: &mut u64| decode_row(row, columns, bytes);
    let piece = |rows, bytes| Piece::Rows {
        chunk: chunk.id,
        rows,
        bytes,
    };
    let (mut batch, mut bytes) = (Vec::with_capacity(batch_rows), 0u64);
    while let Some(row) = rows.next().await {
        let values = row
            .map_err(sql_err("reading the snapshot"))
            .and_then(|row| decode(&row, &mut bytes));
        match values {
            Ok(values) => batch.push(values),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
        }
        if batch.len() == batch_rows {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
            let sent = tx.send(Ok(piece(full, std::mem::take(&mut bytes)))).await;
            if sent.is_err() {
                return false;
            }
        }
    }
    batch.is_empty() || tx.send(Ok(piece(batch, bytes))).await.is_ok()
}

/// The relation's columns as a binary COPY's SELECT list, and how each travels.
pub(crate) fn copy_list(relation: &Relation) -> (String, Vec<CopyColumn>) {
    let columns: Vec<CopyColumn> = relation.columns.iter().map(CopyColumn::of).collect();
    let list: Vec<String> = relation
        .columns
        .iter()
        .zip(&columns)
        .map(|(c, how)| how.select(&super::quote_ident(&c.name)))
        .collect();
    let list = match list.is_empty() {
        true => "NULL".to_string(),
        false => list.join(", "),
    };
    (list, columns)
}

/// One row of a binary COPY as values (adding the bytes it carried to `bytes`).
fn decode_row(
    row: &tokio_postgres::binary_copy::BinaryCopyOutRow,
    columns: &[CopyColumn],
    bytes: &mut u64,
) -> Result<Vec<Value>, SourceError> {
    (0..columns.len())
        .map(|i| {
            let raw: Option<&[u8]> = row.try_get(i).map_err(sql_err("reading rows"))?;
            Ok(match raw {
                None => Value::Null,
                Some(b) => {
                    *bytes += b.len() as u64;
                    columns[i].value(b).ok_or_else(|| SourceError::Sql {
                        context: "reading rows".into(),
                        message: format!(
                            "a value of column {} has an unexpected binary length {}",
                            i + 1,
                            b.len()
                        ),
                    })?
                }
            })
        })
        .collect()
}

/// Every row of a binary `COPY ... TO STDOUT` (a backfill chunk: bounded by its `LIMIT`).
pub(crate) async fn copy_all(
    client: &tokio_postgres::Client,
    sql: &str,
    columns: &[CopyColumn],
) -> Result<Vec<Vec<Value>>, SourceError> {
    use futures::StreamExt;
    use tokio_postgres::binary_copy::BinaryCopyOutStream;
    let stream = client
        .copy_out(sql)
        .await
        .map_err(sql_err("reading rows"))?;
    let types = vec![tokio_postgres::types::Type::BYTEA; columns.len()];
    let rows = BinaryCopyOutStream::new(stream, &types);
    futures::pin_mut!(rows);
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next().await {
        out.push(decode_row(
            &row.map_err(sql_err("reading rows"))?,
            columns,
            &mut bytes,
        )?);
    }
    Ok(out)
}

/// A table's relation as streaming describes it (columns in order, without dropped and
/// generated ones; key flags from the primary key), read from the catalog.
pub(crate) async fn table_relation(
    client: &tokio_postgres::Client,
    info: &SourceInfo,
    table: &TableName,
) -> Result<Relation, SourceError> {
    let rows = client
        .query(
            "SELECT c.oid, a.attname::text, a.atttypid, a.atttypmod \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
               AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(sql_err("reading the table's columns"))?;
    let oid: u32 = rows.first().map_or(0, |r| r.get(0));
    let pk = info.primary_keys.get(table).cloned().unwrap_or_default();
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| {
            let name: String = r.get(1);
            let declared: u32 = r.get(2);
            let (type_oid, typmod) = super::decoder::base_type(&info.domains, declared, r.get(3));
            Column {
                key: pk.contains(&name),
                type_name: info
                    .type_names
                    .get(&declared)
                    .cloned()
                    .unwrap_or_else(|| builtin_type_name(declared)),
                type_oid,
                typmod,
                name,
            }
        })
        .collect();
    Ok(Relation {
        id: oid,
        schema: table.schema.clone(),
        table: table.table.clone(),
        version: info.versions.version_for(oid, &columns),
        columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(progress: Progress, point: Option<Lsn>, chunks: Vec<DoneChunk>) -> Record {
        Record {
            progress,
            slot: "s".into(),
            consistent_point: point.map(|p| p.to_string()),
            snapshot: point.map(|_| "10:12:10,11".into()),
            planned: [("public.a".to_string(), 2), ("public.b".to_string(), 1)].into(),
            chunks,
        }
    }

    fn done(table: &str, first: i64, end: Option<i64>, commit_lsn: u64) -> DoneChunk {
        DoneChunk {
            table: table.into(),
            part: table.into(),
            first_page: first,
            end_page: end,
            commit_lsn,
            rows: 10,
        }
    }

    #[test]
    fn the_plan_follows_the_record_the_slot_and_the_checkpoints() {
        let point = Lsn(1000);
        let at = |lsn: u64| {
            Some(CommitPos {
                commit_lsn: Lsn(lsn),
                end_lsn: Lsn(lsn + 1),
            })
        };
        assert_eq!(
            plan(None, false, false, None),
            Plan::Take { drop_slot: false }
        );
        assert_eq!(
            plan(None, true, false, None),
            Plan::Skip,
            "a slot weir did not snapshot"
        );
        let started = record(Progress::Started, None, vec![]);
        assert_eq!(
            plan(Some(&started), true, false, None),
            Plan::Take { drop_slot: true }
        );
        assert_eq!(
            plan(Some(&started), true, true, at(5)),
            Plan::MarkDone,
            "a record from before chunk commits"
        );
        let chunks = vec![
            done("public.a", 0, Some(256), 997),
            done("public.b", 0, None, 998),
            done("public.a", 256, None, 999),
        ];
        let started = record(Progress::Started, Some(point), chunks.clone());
        assert_eq!(
            plan(Some(&started), true, true, None),
            Plan::Take { drop_slot: true },
            "nothing checkpointed"
        );
        assert_eq!(plan(Some(&started), true, true, at(999)), Plan::MarkDone);
        let Plan::Resume(resume) = plan(Some(&started), true, true, at(998)) else {
            panic!("resumes");
        };
        assert_eq!(resume.kept, chunks[..2]);
        assert_eq!(resume.kept_rows(), 20);
        let tables: Vec<TableName> = ["public.a", "public.b", "public.c"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let unfinished = resume.unfinished(&tables);
        let names: Vec<String> = unfinished.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(names, ["public.a", "public.c"], "b was copied whole");
        assert_eq!(unfinished[0].1.ranges, [("public.a".into(), 0, Some(256))]);
        assert!(unfinished[1].1.ranges.is_empty());
        assert_eq!(unfinished[1].1.not_copied("r"), "true");
        let filter = unfinished[0].1.not_copied("r");
        assert!(filter.contains("r.ctid < '(256,0)'::tid"), "{filter}");
        assert!(!filter.contains("r.ctid >="), "{filter}");
        assert!(filter.contains("'10:12:10,11'::pg_snapshot"), "{filter}");
        assert_eq!(
            plan(
                Some(&record(Progress::Done, Some(point), vec![])),
                true,
                true,
                at(999)
            ),
            Plan::Skip
        );
    }

    #[test]
    fn chunk_commits_rise_to_the_snapshots_own_commit() {
        let point = Lsn(1000);
        assert_eq!(chunk_commit(point, 1, 3).commit_lsn, Lsn(997));
        assert_eq!(chunk_commit(point, 3, 3), snapshot_commit(point));
        assert!(chunk_commit(point, 1, 3) < chunk_commit(point, 2, 3));
    }
}
