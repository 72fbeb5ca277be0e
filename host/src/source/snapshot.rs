//! The initial snapshot: the tables' existing rows, read in the snapshot the slot exports
//! when it is created, so that streaming from the slot's consistent point continues
//! exactly where the snapshot ends: no row missed, none doubled.
//!
//! The slot is created on a replication session with `SNAPSHOT 'export'`; a second
//! session imports that snapshot (`SET TRANSACTION SNAPSHOT`) and reads each table with
//! one `COPY (SELECT ...) TO STDOUT (FORMAT binary)`, decoded on a task of its own while
//! the stages write the previous batch (see [`CopyColumn`] for how each type travels).
//! Batches hold `batch.max_events` rows. Every row becomes an `op = r`
//! event at commit LSN `consistent point - 1`, so it sorts before every streamed change.
//! For the sinks the whole snapshot is one transaction: nothing is checkpointed until its
//! last row is written, so a crash mid-snapshot leaves no checkpoint, and the next start
//! drops the slot and takes the snapshot again. Progress is recorded in
//! `<state>/_weir/<slot>/snapshot.json`.

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
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;
use weir_sdk::{Batch, Column, Event, Op, Relation, Value};

/// What `snapshot.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    /// Taken by a run that has not finished it: the next start takes it again.
    Started,
    /// Complete and checkpointed.
    Done,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    progress: Progress,
    slot: String,
    consistent_point: Option<String>,
}

/// The snapshot's progress record, kept with the pipeline's state.
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

    pub async fn read(&self) -> Result<Option<Progress>, StorageError> {
        Ok(self.file.read().await?.map(|r| r.progress))
    }

    pub async fn write(&self, progress: Progress, at: Option<Lsn>) -> Result<(), StorageError> {
        self.file
            .write(&Record {
                progress,
                slot: self.slot.clone(),
                consistent_point: at.map(|l| l.to_string()),
            })
            .await
    }
}

/// What the start of a run does about the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: it is done, not wanted, or the slot predates it.
    Skip,
    /// Take it (dropping the slot an unfinished one left behind, if any).
    Take { drop_slot: bool },
    /// It completed and was checkpointed, but the record says otherwise: fix the record.
    MarkDone,
}

/// Decides from the record, the slot and the sinks' checkpoints.
pub fn plan(progress: Option<Progress>, slot_exists: bool, any_checkpoint: bool) -> Plan {
    match progress {
        Some(Progress::Done) => Plan::Skip,
        // The snapshot's rows reached a checkpoint only once all were written.
        Some(Progress::Started) if any_checkpoint => Plan::MarkDone,
        Some(Progress::Started) => Plan::Take {
            drop_slot: slot_exists,
        },
        // A slot weir did not create for a snapshot (or an older pipeline's): keep it.
        None if slot_exists || any_checkpoint => Plan::Skip,
        None => Plan::Take { drop_slot: false },
    }
}

/// The position of the snapshot, as one transaction ending at the consistent point.
pub fn snapshot_commit(consistent_point: Lsn) -> CommitPos {
    CommitPos {
        commit_lsn: Lsn(consistent_point.0 - 1),
        end_lsn: consistent_point,
    }
}

/// Reads the tables in the exported snapshot, one batch at a time.
///
/// The tables are cut into chunks (with more than one connection, a large table into
/// ranges of pages, `ctid` ranges, and a partitioned table into its partitions), which
/// `parallelism` sessions, all in the exported snapshot, copy out at once; their batches
/// reach [`next_batch`](Self::next_batch) in any order, which the snapshot does not need:
/// it is one transaction for the sinks.
pub struct SnapshotReader {
    /// The session that plans the chunks, reads one of them, and ends the snapshot.
    client: Arc<tokio_postgres::Client>,
    url: String,
    name: String,
    parallelism: usize,
    tables: Vec<TableName>,
    info: SourceInfo,
    batch_rows: usize,
    commit: CommitPos,
    commit_ts: i64,
    state: ReadState,
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
    pieces: mpsc::Receiver<Result<Piece, SourceError>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

struct TableRead {
    relation: Arc<Relation>,
    chunks_left: usize,
    progress: TableCopy,
    last_report: Instant,
}

/// What a worker sends: rows of a table, or the end of one of its chunks.
enum Piece {
    Rows {
        table: usize,
        rows: Vec<Vec<Value>>,
        bytes: u64,
    },
    ChunkDone {
        table: usize,
    },
}

/// One `COPY` of (part of) a table.
struct Chunk {
    table: usize,
    sql: String,
    columns: Arc<Vec<CopyColumn>>,
}

/// A chunk holds at least this many pages (8 KiB each by default): a table under twice
/// as many is read in one piece.
const SPLIT_PAGES: i64 = 256;

impl SnapshotReader {
    /// Opens a session in the exported snapshot `name`; reading starts with the first
    /// batch, on up to `parallelism` sessions.
    pub async fn begin(
        url: &str,
        name: &str,
        tables: Vec<TableName>,
        info: SourceInfo,
        batch_rows: usize,
        consistent_point: Lsn,
        parallelism: usize,
    ) -> Result<SnapshotReader, SourceError> {
        let client = snapshot_session(url, name).await?;
        Ok(SnapshotReader {
            client: Arc::new(client),
            url: url.to_string(),
            name: name.to_string(),
            parallelism: parallelism.max(1),
            tables,
            info,
            batch_rows: batch_rows.max(1),
            commit: snapshot_commit(consistent_point),
            commit_ts: chrono::Utc::now().timestamp_micros(),
            state: ReadState::Planned,
            rows: 0,
            stats: None,
        })
    }

    /// The next batch of rows; after the last one, one empty batch that completes the
    /// snapshot's transaction; then `None`.
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
            let piece = match reading.pieces.recv().await {
                Some(piece) => piece?,
                None => {
                    for worker in std::mem::take(&mut reading.workers) {
                        if let Err(e) = worker.await
                            && e.is_panic()
                        {
                            return Err(HostPanic::from_join("snapshot reader", e).into());
                        }
                    }
                    self.state = ReadState::Ended;
                    self.client
                        .batch_execute("COMMIT")
                        .await
                        .map_err(sql_err("ending the snapshot"))?;
                    return Ok(Some(SourceBatch {
                        batch: Batch::default(),
                        position: Position {
                            last_commit: Some(self.commit),
                            in_tx: false,
                            idle_wal_end: Lsn::ZERO,
                        },
                        bytes: 0,
                        markers: vec![],
                        transforms: None,
                    }));
                }
            };
            let (table, rows, bytes) = match piece {
                Piece::ChunkDone { table } => {
                    let t = &mut reading.tables[table];
                    t.chunks_left -= 1;
                    if t.chunks_left == 0 {
                        t.progress.finished = Some(Instant::now());
                        if let Some(stats) = &self.stats {
                            stats.copy_finished(&t.progress.table);
                        }
                        super::log_copy_progress(&t.progress, "Snapshot of the table done.");
                    }
                    continue;
                }
                Piece::Rows { table, rows, bytes } => (table, rows, bytes),
            };
            let t = &mut reading.tables[table];
            let mut batch = Batch::default();
            let rel = batch.push_relation((*t.relation).clone());
            batch.events.reserve(rows.len());
            for values in rows {
                batch.events.push(Event {
                    op: Op::Read,
                    rel,
                    commit_lsn: self.commit.commit_lsn.0,
                    seq: t.progress.rows as u32,
                    xid: 0,
                    commit_ts: self.commit_ts,
                    before: None,
                    after: Some(values),
                    unchanged: vec![],
                });
                t.progress.rows += 1;
            }
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

    /// Plans every table's chunks, then starts the workers: this session and up to
    /// `parallelism - 1` more, as many as the server accepts.
    async fn start(&mut self) -> Result<Reading, SourceError> {
        let mut tables = Vec::new();
        let mut chunks = VecDeque::new();
        for (i, table) in self.tables.iter().enumerate() {
            let (read, planned) = self.plan(i, table).await?;
            tables.push(read);
            chunks.extend(planned);
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
        let queue = Arc::new(std::sync::Mutex::new(chunks));
        // Two batches ahead per session at most: memory is bounded by the parallelism
        // times `batch.max_events`.
        let (tx, pieces) = mpsc::channel(2 * clients.len());
        let workers = clients
            .into_iter()
            .map(|client| {
                let (queue, tx) = (queue.clone(), tx.clone());
                tokio::spawn(copy_chunks(client, queue, self.batch_rows, tx).in_current_span())
            })
            .collect();
        Ok(Reading {
            tables,
            pieces,
            workers,
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
        let (list, columns) = copy_list(&relation);
        let columns = Arc::new(columns);
        let copy = |from: &str, filter: &str| Chunk {
            table: index,
            sql: format!("COPY (SELECT {list} FROM {from}{filter}) TO STDOUT (FORMAT binary)"),
            columns: columns.clone(),
        };
        let mut chunks = Vec::new();
        if self.parallelism == 1 {
            chunks.push(copy(&super::rows_of(client, table).await?, ""));
        } else {
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
            for part in parts {
                let (from, pages): (String, i64) = (part.get(0), part.get(1));
                let from = format!("ONLY {from}");
                let per_chunk = (pages / (4 * self.parallelism as i64)).max(SPLIT_PAGES);
                if pages < 2 * SPLIT_PAGES {
                    chunks.push(copy(&from, ""));
                    continue;
                }
                let mut first = 0;
                while first < pages {
                    let next = first + per_chunk;
                    // The last range is open: nothing the snapshot sees is past it.
                    let filter = match next >= pages {
                        true => format!(" WHERE ctid >= '({first},0)'::tid"),
                        false => format!(
                            " WHERE ctid >= '({first},0)'::tid AND ctid < '({next},0)'::tid"
                        ),
                    };
                    chunks.push(copy(&from, &filter));
                    first = next;
                }
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
    queue: Arc<std::sync::Mutex<VecDeque<Chunk>>>,
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
        let done = Piece::ChunkDone { table: chunk.table };
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
        table: chunk.table,
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

    #[test]
    fn the_plan_follows_the_record_the_slot_and_the_checkpoints() {
        assert_eq!(plan(None, false, false), Plan::Take { drop_slot: false });
        assert_eq!(
            plan(None, true, false),
            Plan::Skip,
            "a slot weir did not snapshot"
        );
        assert_eq!(
            plan(Some(Progress::Started), true, false),
            Plan::Take { drop_slot: true }
        );
        assert_eq!(plan(Some(Progress::Started), true, true), Plan::MarkDone);
        assert_eq!(plan(Some(Progress::Done), true, true), Plan::Skip);
    }
}
