//! Backfill: the existing rows of a table added to a running pipeline (or named by
//! `weir snapshot --table`), read in chunks while the stream goes on, with watermarks in
//! the spirit of DBLog and Debezium's incremental snapshots.
//!
//! For each chunk weir writes a low watermark into the WAL (a non-transactional logical
//! message), reads the next `batch.max_events` rows by primary key, and writes a high
//! watermark. In the stream, a change to a row of the chunk between the two watermarks
//! removes that row from the chunk (the stream's version is as new or newer); at the high
//! watermark the rows left are emitted as `op = r` events at the watermark's LSN minus
//! one (a message's LSN is the end of its record, where the next commit may start), so
//! they sort after everything before it and before everything after it. The stream is never
//! paused for more than one chunk's read.
//!
//! Progress is kept in `<state>/_weir/<slot>/backfill.json`: each chunk's high watermark
//! and last key. After a restart, chunks at or before the sinks' checkpoint are done and
//! the backfill goes on after the last of them; watermarks from before the restart are
//! ignored.

use crate::batch::CommitPos;
use crate::batch::{Edge, Marker, Signal, SourceBatch};
use crate::config::TableName;
use crate::lsn::Lsn;
use crate::source::decoder::Kind;
use crate::source::snapshot::{Copied, CopyColumn, TextVia, copy_all, copy_list, table_relation};
use crate::source::{Control, SourceError, SourceInfo, sql_err};
use crate::stats::{CopyKind, Stats, TableCopy};
use crate::storage::StateFile;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use weir_sdk::{Event, Op, Relation, Value};

/// Progress of one table, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TableProgress {
    /// The largest key when the backfill started: rows inserted after it with larger keys
    /// come from the stream, so reading stops there.
    #[serde(default)]
    until: Option<Vec<Option<String>>>,
    /// (high watermark LSN, last key of the chunk as text values), in order.
    chunks: Vec<(u64, Vec<Option<String>>)>,
    /// The high watermark of the empty chunk that ended it.
    done_at: Option<u64>,
    /// Rows an unfinished initial snapshot copied, which the backfill leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copied: Option<Copied>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    tables: BTreeMap<String, TableProgress>,
}

/// A table being backfilled.
struct Active {
    table: TableName,
    relation: Arc<Relation>,
    key: Vec<usize>,
    /// The last key read, as text (`None` before the first chunk).
    last_key: Option<Vec<Option<String>>>,
    /// The largest key at the start (`None`: the table was empty).
    until: Option<Vec<Option<String>>>,
    /// What its rows are read from (see [`crate::source::rows_of`]).
    from: String,
    /// Rows the initial snapshot copied, left out.
    copied: Option<Copied>,
    progress: TableCopy,
    last_report: std::time::Instant,
}

/// A chunk between its watermarks.
/// A row read in a chunk: its key values and all its values.
type ChunkRow = (Vec<Value>, Vec<Value>);

struct Chunk {
    id: String,
    /// Rows by key, in key order of reading.
    rows: Vec<ChunkRow>,
    last_key: Option<Vec<Option<String>>>,
    open: bool,
}

/// Drives the backfills of a pipeline.
pub struct Backfills {
    control: Control,
    info: SourceInfo,
    tables: Vec<TableName>,
    chunk_rows: usize,
    file: StateFile<Record>,
    record: Record,
    queue: VecDeque<TableName>,
    active: Option<Active>,
    chunk: Option<Chunk>,
    next_id: u64,
    run: String,
    /// The last chunk's position: later batches do not report an earlier one.
    floor: Option<CommitPos>,
    /// Where each table's progress is reported (`/metrics`, `/status`, the status line).
    pub stats: Option<Arc<Stats>>,
}

impl Backfills {
    /// Loads the progress record; tables whose backfill had not reached the checkpoint
    /// `resume` go on where the checkpoint left them.
    pub async fn open(
        url: &str,
        state_url: &str,
        slot: &str,
        info: SourceInfo,
        tables: Vec<TableName>,
        chunk_rows: usize,
        resume: Option<CommitPos>,
    ) -> Result<Backfills, SourceError> {
        let file = StateFile::open(state_url, slot, "backfill.json")?;
        let mut record: Record = file.read().await?.unwrap_or_default();
        let durable = resume.map_or(0, |r| r.commit_lsn.0);
        let mut queue = VecDeque::new();
        for (name, progress) in &mut record.tables {
            progress.chunks.retain(|(h, _)| *h <= durable);
            if progress.done_at.is_some_and(|d| d > durable) {
                progress.done_at = None;
            }
            if progress.done_at.is_none()
                && let Some(t) = tables.iter().find(|t| t.to_string() == *name)
            {
                queue.push_back(t.clone());
            }
        }
        let control = Control::connect(url).await?;
        control
            .client
            .batch_execute(crate::source::READ_SESSION_SETTINGS)
            .await
            .map_err(sql_err("setting up the backfill session"))?;
        Ok(Backfills {
            control,
            info,
            tables,
            chunk_rows: chunk_rows.max(1),
            file,
            record,
            queue,
            active: None,
            chunk: None,
            next_id: 0,
            floor: None,
            stats: None,
            run: format!("{:x}", chrono::Utc::now().timestamp_micros()),
        })
    }

    /// Nothing in progress or queued.
    pub fn idle(&self) -> bool {
        self.active.is_none() && self.queue.is_empty()
    }

    /// Queues the rest of a table an unfinished initial snapshot copied part of (or
    /// none of): the rows `copied` names are left out.
    pub async fn finish_snapshot(
        &mut self,
        table: &TableName,
        copied: Copied,
    ) -> Result<(), SourceError> {
        if self.queue.contains(table) {
            return Ok(());
        }
        let progress = TableProgress {
            copied: Some(copied),
            ..TableProgress::default()
        };
        self.record.tables.insert(table.to_string(), progress);
        self.save().await?;
        self.queue.push_back(table.clone());
        Ok(())
    }

    /// Queues a table (again, if it was done).
    pub async fn request(&mut self, table: &TableName) -> Result<(), SourceError> {
        if !self.tables.contains(table) {
            tracing::warn!(table = %table, "Backfill requested for a table this pipeline does not capture; ignored.");
            return Ok(());
        }
        let in_progress =
            self.active.as_ref().is_some_and(|a| a.table == *table) || self.queue.contains(table);
        if in_progress {
            return Ok(());
        }
        tracing::info!(table = %table, "Backfill queued.");
        self.record
            .tables
            .insert(table.to_string(), TableProgress::default());
        self.save().await?;
        self.queue.push_back(table.clone());
        Ok(())
    }

    /// Starts the next chunk when none is in flight: low watermark, read, high watermark.
    pub async fn step(&mut self) -> Result<(), SourceError> {
        if self.chunk.is_some() {
            return Ok(());
        }
        if self.active.is_none() {
            let Some(table) = self.queue.pop_front() else {
                return Ok(());
            };
            let Some(active) = self.start(table).await? else {
                return Ok(());
            };
            self.active = Some(active);
        }
        self.refresh_columns().await?;
        self.next_id += 1;
        let id = format!("{}-{}", self.run, self.next_id);
        let (_, mark) = self
            .control
            .emit_with_xid(&Signal::Watermark {
                edge: Edge::Low,
                chunk: id.clone(),
            })
            .await?;
        // A transaction may have written its commit record before the low watermark yet
        // not be visible to a query (it waits on a synchronous standby, or has not left
        // the process array): its change is then before the window and not in the chunk,
        // and the chunk's older row would undo it. So the chunk is read only once every
        // transaction in progress after the watermark has ended; if one is still open after
        // a second (a long transaction), this attempt is dropped (its watermark is
        // ignored) and the next loop tries again.
        if !self.ended_before(mark, Duration::from_secs(1)).await? {
            let table = &self.active.as_ref().expect("set above").table;
            tracing::debug!(table = %table, "Backfill chunk waits for open transactions to end.");
            return Ok(());
        }
        let (rows, last_key) = self.read_chunk().await?;
        self.control
            .emit(&Signal::Watermark {
                edge: Edge::High,
                chunk: id.clone(),
            })
            .await?;
        self.chunk = Some(Chunk {
            id,
            rows,
            last_key,
            open: false,
        });
        Ok(())
    }

    /// The backfill of `table`, from where its progress record left it (`None`: it has
    /// no key to read it in chunks by).
    async fn start(&mut self, table: TableName) -> Result<Option<Active>, SourceError> {
        let relation = table_relation(&self.control.client, &self.info, &table).await?;
        let key: Vec<usize> = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        if key.is_empty() {
            tracing::warn!(table = %table, "Backfill needs a primary key to read in chunks; skipped.");
            return Ok(None);
        }
        let from = crate::source::rows_of(&self.control.client, &table).await?;
        let record = self.record.tables.entry(table.to_string()).or_default();
        let last_key = record.chunks.last().map(|c| c.1.clone());
        if record.until.is_none() {
            record.until =
                largest_key(&self.control.client, &table, &from, &relation, &key).await?;
        }
        let until = record.until.clone();
        let copied = record.copied.clone();
        let estimated = crate::source::estimated_rows(&self.control.client, &table).await?;
        if let Some(stats) = &self.stats {
            stats.copy_started(&table.to_string(), CopyKind::Backfill, estimated);
        }
        tracing::info!(table = %table, resumed = last_key.is_some(), estimated_rows = %estimated.map_or("unknown".to_string(), |e| e.to_string()), "Backfill started.");
        let progress = TableCopy {
            table: table.to_string(),
            kind: CopyKind::Backfill,
            rows: 0,
            estimated,
            started: std::time::Instant::now(),
            finished: None,
        };
        Ok(Some(Active {
            progress,
            until,
            from,
            copied,
            relation: Arc::new(relation),
            key,
            last_key,
            table,
            last_report: std::time::Instant::now(),
        }))
    }

    /// Takes the table's columns as they are now (an ALTER TABLE may have run since).
    async fn refresh_columns(&mut self) -> Result<(), SourceError> {
        let table = self.active.as_ref().expect("set above").table.clone();
        let relation = table_relation(&self.control.client, &self.info, &table).await?;
        let active = self.active.as_mut().expect("set above");
        if relation.columns != active.relation.columns {
            active.relation = Arc::new(relation);
        }
        Ok(())
    }

    /// The next chunk's rows after the last key read, up to the key the backfill ends at,
    /// with the chunk's last key.
    async fn read_chunk(
        &self,
    ) -> Result<(Vec<ChunkRow>, Option<Vec<Option<String>>>), SourceError> {
        let active = self.active.as_ref().expect("set above");
        // Qualified: in ORDER BY a bare name would be the output column, which for
        // some types is their text (`::text` in the COPY's list), sorted as text.
        let key_list = key_columns(&active.relation, &active.key)
            .iter()
            .map(|k| format!("weir_row.{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut bounds = Vec::new();
        if let Some(k) = &active.last_key {
            bounds.push(format!("({key_list}) > ({})", literals(k)));
        }
        match &active.until {
            Some(k) => bounds.push(format!("({key_list}) <= ({})", literals(k))),
            None => bounds.push("false".into()),
        }
        if let Some(copied) = &active.copied {
            bounds.push(copied.not_copied("weir_row"));
        }
        // A binary COPY, decoded as the initial snapshot's; the key columns again as
        // text at the end, for the next chunk's bound (their text is input to their type).
        let (list, mut columns) = copy_list(&active.relation);
        let key_text: Vec<String> = key_columns(&active.relation, &active.key)
            .iter()
            .enumerate()
            .map(|(i, k)| format!("weir_row.{k}::text AS weir_key_{i}"))
            .collect();
        columns.extend(
            active
                .key
                .iter()
                .map(|_| CopyColumn::Text(Kind::Text, TextVia::Itself)),
        );
        let sql = format!(
            "COPY (SELECT {list}, {} FROM {} AS weir_row WHERE {} ORDER BY {key_list} LIMIT {}) TO STDOUT (FORMAT binary)",
            key_text.join(", "),
            active.from,
            bounds.join(" AND "),
            self.chunk_rows
        );
        let read = copy_all(&self.control.client, &sql, &columns).await;
        let rows = read.map_err(|e| match e {
            SourceError::Sql { context, message } => SourceError::Sql {
                context: format!("backfilling {} ({context})", active.table),
                message,
            },
            other => other,
        })?;
        let width = active.relation.columns.len();
        let last_key = rows.last().map(|r| {
            r[width..]
                .iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::Text(t) => Some(t.clone()),
                    Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    other => Some(format!("{other:?}")),
                })
                .collect()
        });
        let rows = rows
            .into_iter()
            .map(|mut values| {
                values.truncate(width);
                let key = active.key.iter().map(|&i| values[i].clone()).collect();
                (key, values)
            })
            .collect();
        Ok((rows, last_key))
    }

    /// Waits up to `limit` for every transaction with an id below `mark` to end.
    ///
    /// `mark` is the id the low watermark's statement took after writing it: every
    /// transaction that could have committed before the watermark has a smaller one. A
    /// snapshot's list of running transactions would not do: it names only those below
    /// its `xmax` (one past the newest that has ended), so the newest transaction, whose
    /// commit record may already be in the WAL while it has not yet left the process
    /// array, is in no list. They have all ended, as any new query sees it, when a
    /// snapshot's `xmin` has passed `mark`.
    async fn ended_before(&self, mark: i64, limit: Duration) -> Result<bool, SourceError> {
        let err = sql_err("waiting for open transactions before a backfill chunk");
        let deadline = std::time::Instant::now() + limit;
        loop {
            let xmin: i64 = self
                .control
                .client
                .query_one("SELECT txid_snapshot_xmin(txid_current_snapshot())", &[])
                .await
                .map_err(&err)?
                .get(0);
            if xmin > mark {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Applies a batch's markers: requests are queued; between a chunk's watermarks the
    /// stream's changes take rows out of the chunk; at its high watermark the rest is
    /// inserted as `op = r` events.
    pub async fn process(&mut self, mut batch: SourceBatch) -> Result<SourceBatch, SourceError> {
        batch.position.last_commit = batch.position.last_commit.max(self.floor);
        if batch.markers.is_empty() && !self.chunk.as_ref().is_some_and(|c| c.open) {
            return Ok(batch);
        }
        let markers = std::mem::take(&mut batch.markers);
        let events = std::mem::take(&mut batch.batch.events);
        let mut out: Vec<Event> = Vec::with_capacity(events.len());
        let mut next = 0;
        let (mut requests, mut added) = (Vec::new(), Vec::new());
        for marker in markers.iter().map(Some).chain([None]) {
            let until = marker.map_or(events.len(), |m| m.at);
            for event in &events[next..until] {
                self.observe(&batch.batch.relations, event);
                out.push(event.clone());
            }
            next = until;
            let Some(marker) = marker else { break };
            match &marker.signal {
                Signal::BackfillRequest(table) => requests.push(table.clone()),
                Signal::Watermark { edge, chunk } => {
                    if let Some(inserted) = self.watermark((*edge, chunk, marker.lsn), &mut batch) {
                        out.extend(inserted);
                    }
                }
                Signal::ColumnsAdded { table, columns } => {
                    added.push((table.clone(), columns.clone()))
                }
                Signal::Reload { .. } | Signal::CaughtUp { .. } => {}
            }
        }
        batch.batch.events = out;
        for table in requests {
            self.request(&table).await?;
        }
        for (table, columns) in added {
            self.columns_added(&table, &columns).await?;
        }
        self.save_if_changed(&markers).await?;
        Ok(batch)
    }

    /// Columns added to a captured table: when one has a default (a constant one lives in
    /// the catalog as the value of every existing row, a volatile one rewrote the table;
    /// either way PostgreSQL sent no change for the rows), the table's rows are read
    /// again, so the output holds what the source holds.
    async fn columns_added(
        &mut self,
        table: &TableName,
        columns: &[String],
    ) -> Result<(), SourceError> {
        if !self.tables.contains(table) {
            return Ok(());
        }
        let with_default: Vec<String> = self
            .control
            .client
            .query(
                "SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = ANY($2) \
                 AND NOT a.attisdropped AND (a.atthasmissing OR a.atthasdef) ORDER BY a.attnum",
                &[&crate::source::quote_table(table), &columns],
            )
            .await
            .map_err(sql_err("reading the added columns' defaults"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if with_default.is_empty() {
            return Ok(());
        }
        if self.active.as_ref().is_some_and(|a| a.table == *table) {
            // Its chunks from before the change lack the column: read it all again.
            self.active = None;
            self.chunk = None;
        }
        tracing::info!(table = %table, columns = %with_default.join(","), "Columns added with a default: the table's existing rows are backfilled so that the output holds the value PostgreSQL gives them.");
        self.request(table).await
    }

    /// A stream change: if it touches a row of the open chunk, the chunk drops that row.
    fn observe(&mut self, relations: &[Relation], event: &Event) {
        let (Some(chunk), Some(active)) = (self.chunk.as_mut(), self.active.as_ref()) else {
            return;
        };
        if !chunk.open {
            return;
        }
        let rel = &relations[event.rel as usize];
        if rel.schema != active.table.schema || rel.table != active.table.table {
            return;
        }
        if event.op == Op::Truncate {
            chunk.rows.clear();
            return;
        }
        let key_of = |row: &Vec<Value>| -> Vec<Value> {
            active
                .key
                .iter()
                .map(|&i| row.get(i).cloned().unwrap_or(Value::Null))
                .collect()
        };
        if event.op == Op::Update
            && !event.unchanged.is_empty()
            && let Some(after) = &event.after
        {
            // An update that did not send a TOAST value: the chunk's row keeps that value
            // and takes the others from the stream, so the row written at the high
            // watermark is complete and current.
            let key = key_of(after);
            if let Some((_, values)) = chunk.rows.iter_mut().find(|(k, _)| *k == key) {
                for (i, v) in after.iter().enumerate() {
                    if !event.unchanged.contains(&(i as u16)) && i < values.len() {
                        values[i] = v.clone();
                    }
                }
                return;
            }
        }
        for row in [&event.before, &event.after].into_iter().flatten() {
            let key = key_of(row);
            chunk.rows.retain(|(k, _)| *k != key);
        }
    }

    /// A watermark: opens the chunk, or closes it and returns its rows as events.
    fn watermark(
        &mut self,
        (edge, id, lsn): (Edge, &str, Lsn),
        batch: &mut SourceBatch,
    ) -> Option<Vec<Event>> {
        let chunk = self.chunk.as_mut().filter(|c| c.id == id)?;
        if edge == Edge::Low {
            chunk.open = true;
            return None;
        }
        let chunk = self.chunk.take().expect("matched above");
        let active = self.active.as_mut().expect("a chunk belongs to a table");
        let rel = batch.batch.push_relation((*active.relation).clone());
        // A message's LSN is the end of its WAL record, which can be where the next
        // transaction's commit record starts: the rows go just before it.
        let h = lsn.0 - 1;
        let mut events = Vec::with_capacity(chunk.rows.len());
        for (_, values) in chunk.rows {
            events.push(Event {
                op: Op::Read,
                rel,
                commit_lsn: h,
                seq: events.len() as u32,
                xid: 0,
                commit_ts: chrono::Utc::now().timestamp_micros(),
                before: None,
                after: Some(values),
                unchanged: vec![],
            });
        }
        active.progress.rows += events.len() as u64;
        if let Some(stats) = &self.stats {
            stats.copy_rows(&active.progress.table, events.len() as u64);
        }
        // The rows form a transaction of their own at the watermark: the checkpoint can
        // name it, so a restart does not read the chunk again.
        let at = CommitPos {
            commit_lsn: Lsn(h),
            end_lsn: lsn,
        };
        batch.position.last_commit = batch.position.last_commit.max(Some(at));
        self.floor = self.floor.max(Some(at));
        let name = active.table.to_string();
        let progress = self.record.tables.entry(name).or_default();
        match chunk.last_key {
            Some(last) => {
                progress.chunks.push((h, last.clone()));
                active.last_key = Some(last);
            }
            None => {
                progress.done_at = Some(h);
                active.progress.finished = Some(std::time::Instant::now());
                if let Some(stats) = &self.stats {
                    stats.copy_finished(&active.progress.table);
                }
                crate::source::log_copy_progress(&active.progress, "Backfill done.");
                self.active = None;
            }
        }
        if let Some(a) = self.active.as_mut()
            && a.last_report.elapsed() >= std::time::Duration::from_secs(5)
        {
            a.last_report = std::time::Instant::now();
            crate::source::log_copy_progress(&a.progress, "Backfill in progress.");
        }
        Some(events)
    }

    async fn save_if_changed(&self, markers: &[Marker]) -> Result<(), SourceError> {
        let high = |m: &Marker| {
            matches!(
                m.signal,
                Signal::Watermark {
                    edge: Edge::High,
                    ..
                }
            )
        };
        if markers.iter().any(high) {
            self.save().await?;
        }
        Ok(())
    }

    async fn save(&self) -> Result<(), SourceError> {
        Ok(self.file.write(&self.record).await?)
    }

    /// The tables that still have to be backfilled, by name (for logs).
    pub fn pending(&self) -> HashMap<String, u64> {
        self.active
            .iter()
            .map(|a| (a.table.to_string(), a.progress.rows))
            .chain(self.queue.iter().map(|t| (t.to_string(), 0)))
            .collect()
    }
}

/// The key columns, quoted.
fn key_columns(relation: &Relation, key: &[usize]) -> Vec<String> {
    key.iter()
        .map(|&i| crate::source::quote_ident(&relation.columns[i].name))
        .collect()
}

/// The table's largest key now, as text: later rows come from the stream.
async fn largest_key(
    client: &tokio_postgres::Client,
    table: &TableName,
    from: &str,
    relation: &Relation,
    key: &[usize],
) -> Result<Option<Vec<Option<String>>>, SourceError> {
    let columns = key_columns(relation, key);
    let desc: Vec<String> = columns.iter().map(|k| format!("{k} DESC")).collect();
    let sql = format!(
        "SELECT {} FROM {from} ORDER BY {} LIMIT 1",
        columns.join(", "),
        desc.join(", ")
    );
    let rows = simple_rows(client, &sql, table).await?;
    Ok(rows.first().map(|r| {
        (0..key.len())
            .map(|i| r.get(i).map(str::to_owned))
            .collect()
    }))
}

/// Key values as SQL literals (PostgreSQL infers their types from the columns).
fn literals(key: &[Option<String>]) -> String {
    key.iter()
        .map(|v| match v {
            Some(v) => format!("'{}'", v.replace('\'', "''")),
            None => "NULL".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows of a query with the simple protocol: values as their types' output renders them.
async fn simple_rows(
    client: &tokio_postgres::Client,
    sql: &str,
    table: &TableName,
) -> Result<Vec<tokio_postgres::SimpleQueryRow>, SourceError> {
    Ok(client
        .simple_query(sql)
        .await
        .map_err(sql_err(&format!("backfilling {table}")))?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect())
}
