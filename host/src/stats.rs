//! Live counters shared by the stages, read by the status line.

use crate::lsn::Lsn;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Calls into one plugin or sink: how many, how long, how many failed, and whether the
/// last one failed (the component is unhealthy until a call succeeds again).
#[derive(Debug, Default)]
pub struct CallStats {
    calls: AtomicU64,
    nanos: AtomicU64,
    errors: AtomicU64,
    /// Bytes of output written.
    bytes: AtomicU64,
    /// The error that stopped the pipeline at the last call, if it failed.
    failing: Mutex<Option<String>>,
    /// Rows a current-state sink applied, by what it did (`upsert`, `delete`,
    /// `set_aside`).
    applied: Mutex<BTreeMap<&'static str, u64>>,
}

impl CallStats {
    /// One call, started at `started`, that ended in `result`; `errored` when part of it
    /// failed even though the failure policy dealt with it.
    pub fn record<T, E: std::fmt::Display>(
        &self,
        started: std::time::Instant,
        errored: bool,
        result: &Result<T, E>,
    ) {
        let stopped = result.as_ref().err().map(ToString::to_string);
        self.calls.fetch_add(1, Relaxed);
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        self.errors
            .fetch_add(u64::from(errored || stopped.is_some()), Relaxed);
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = stopped;
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    pub fn add_applied(&self, what: &'static str, rows: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        *applied.entry(what).or_default() += rows;
    }

    /// Rows applied, by what was done to them.
    pub fn applied(&self) -> Vec<(&'static str, u64)> {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    pub fn seconds(&self) -> f64 {
        self.nanos.load(Relaxed) as f64 / 1e9
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// The error of the last call, when it failed.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a [`CallStats`] counts: a plugin (transform or sink plugin, by name) or a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Plugin,
    Sink,
}

/// Seconds from a batch's arrival from the source to its delivery to every sink.
#[derive(Debug, Clone)]
pub struct BatchSeconds(pub Histogram);

impl Default for BatchSeconds {
    fn default() -> BatchSeconds {
        // 1 ms to about 33 s.
        BatchSeconds(Histogram::new(exponential_buckets(0.001, 2.0, 16)))
    }
}

/// Progress counters. Written by one stage each, read by anyone.
#[derive(Debug, Default)]
pub struct Stats {
    events: AtomicU64,
    server_wal_end: AtomicU64,
    received_commit_end: AtomicU64,
    last_commit_ts: AtomicU64,
    checkpoint: AtomicU64,
    durable_commit_ts: AtomicU64,
    /// Commits read but not yet durable, oldest first: (end LSN, commit time µs).
    pending: Mutex<VecDeque<(u64, i64)>>,
    batches: AtomicU64,
    /// Runs of the pipeline that reached streaming.
    streaming_runs: AtomicU64,
    /// The replication stream is up.
    connected: AtomicBool,
    /// Times the pipeline ran again after a transient failure.
    reconnects: AtomicU64,
    /// WAL the slot keeps on the server (bytes), as last read.
    retained_wal: AtomicU64,
    /// Events written to the sinks, per (table, op).
    written: PerTable,
    /// Bytes of row data read from the source.
    bytes_in: AtomicU64,
    /// Events read from the source, per (table, op).
    read: PerTable,
    /// Calls into each plugin and sink, kept across runs (and reloads) by name.
    components: Mutex<BTreeMap<(Component, String), Arc<CallStats>>>,
    pub batch_seconds: BatchSeconds,
    /// Why the last run stopped, while weir waits to run again.
    retrying: Mutex<Option<String>>,
    /// Tables whose existing rows are being copied (or were, in this process), by name.
    copies: Mutex<BTreeMap<String, TableCopy>>,
}

/// How a table's existing rows are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// The initial snapshot, in the slot's exported snapshot.
    Initial,
    /// A backfill, in chunks while the stream goes on.
    Backfill,
}

impl CopyKind {
    pub fn name(self) -> &'static str {
        match self {
            CopyKind::Initial => "initial",
            CopyKind::Backfill => "backfill",
        }
    }
}

/// The progress of one table's copy: rows so far against the catalog's estimate.
#[derive(Debug, Clone)]
pub struct TableCopy {
    pub table: String,
    pub kind: CopyKind,
    /// Rows copied (in this run).
    pub rows: u64,
    /// `pg_class.reltuples` when it started (summed over partitions); `None` when the
    /// table was never vacuumed or analyzed.
    pub estimated: Option<u64>,
    pub started: Instant,
    pub finished: Option<Instant>,
}

impl TableCopy {
    pub fn rows_per_s(&self) -> f64 {
        let end = self.finished.unwrap_or_else(Instant::now);
        self.rows as f64 / (end - self.started).as_secs_f64().max(0.001)
    }

    /// Percent of the estimate copied, at most 100 (the estimate may be low).
    pub fn percent(&self) -> Option<f64> {
        match (self.finished, self.estimated) {
            (Some(_), _) => Some(100.0),
            (None, Some(e)) if e > 0 => Some((self.rows as f64 * 100.0 / e as f64).min(100.0)),
            _ => None,
        }
    }

    /// Seconds left at the rate so far (`None` before the first rows or without an
    /// estimate; 0 once past the estimate or finished).
    pub fn seconds_left(&self) -> Option<f64> {
        if self.finished.is_some() {
            return Some(0.0);
        }
        let (estimated, rate) = (self.estimated?, self.rows_per_s());
        (self.rows > 0).then(|| estimated.saturating_sub(self.rows) as f64 / rate)
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Events decoded from the stream and read by the initial snapshot.
    pub events: u64,
    /// Events that entered the stages: the above and backfilled rows (`/status`'s
    /// `events_read`).
    pub events_read: u64,
    pub batches: u64,
    pub server_wal_end: Lsn,
    pub checkpoint: Lsn,
    /// Commit time (µs since the Unix epoch) of the last change made durable.
    pub durable_commit_ts: i64,
}

impl Snapshot {
    /// Bytes of WAL between the server's position and the checkpoint.
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end.0.saturating_sub(self.checkpoint.0)
    }
}

impl Stats {
    pub fn add_events(&self, n: u64) {
        self.events.fetch_add(n, Relaxed);
    }

    /// The pipeline reached its streaming loop.
    pub fn streaming_started(&self) {
        self.streaming_runs.fetch_add(1, Relaxed);
        self.connected.store(true, Relaxed);
        self.set_retrying(None);
    }

    /// The stream stopped (a failure or a stop).
    pub fn disconnected(&self) {
        self.connected.store(false, Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn add_reconnect(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Relaxed)
    }

    pub fn set_retained_wal(&self, bytes: u64) {
        self.retained_wal.store(bytes, Relaxed);
    }

    pub fn retained_wal(&self) -> u64 {
        self.retained_wal.load(Relaxed)
    }

    pub fn add_bytes_in(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Relaxed);
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Relaxed)
    }

    /// Counts a batch's events per table and op, once the sinks have them.
    pub fn add_written(&self, batch: &weir_sdk::Batch) {
        count_per_table(&self.written, batch);
    }

    /// Events written per (table, op).
    pub fn written(&self) -> Vec<((String, &'static str), u64)> {
        per_table(&self.written)
    }

    /// Counts a batch's events per table and op as they come from the source.
    pub fn add_read(&self, batch: &weir_sdk::Batch) {
        count_per_table(&self.read, batch);
    }

    /// Events read per (table, op).
    pub fn read(&self) -> Vec<((String, &'static str), u64)> {
        per_table(&self.read)
    }

    /// The call counters of one plugin or sink, made on first use.
    pub fn component(&self, kind: Component, name: &str) -> Arc<CallStats> {
        let mut all = self.components.lock().unwrap_or_else(|e| e.into_inner());
        all.entry((kind, name.to_string())).or_default().clone()
    }

    /// Every plugin and sink seen, with its counters.
    pub fn components(&self) -> Vec<(Component, String, Arc<CallStats>)> {
        let all = self.components.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|((kind, name), c)| (*kind, name.clone(), c.clone()))
            .collect()
    }

    pub fn observe_batch(&self, took: Duration) {
        self.batch_seconds.0.observe(took.as_secs_f64());
    }

    /// The run stopped on a transient failure; weir runs it again after a pause.
    pub fn set_retrying(&self, why: Option<String>) {
        *self.retrying.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub fn retrying(&self) -> Option<String> {
        self.retrying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many runs reached streaming.
    pub fn streaming_runs(&self) -> u64 {
        self.streaming_runs.load(Relaxed)
    }

    pub fn add_batch(&self) {
        self.batches.fetch_add(1, Relaxed);
    }

    pub fn observe_server_wal(&self, lsn: Lsn) {
        self.server_wal_end.fetch_max(lsn.0, Relaxed);
    }

    pub fn observe_commit(&self, end_lsn: Lsn, commit_ts: i64) {
        self.received_commit_end.fetch_max(end_lsn.0, Relaxed);
        self.server_wal_end.fetch_max(end_lsn.0, Relaxed);
        self.last_commit_ts.store(commit_ts as u64, Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A commit resent after a reconnect is pending already.
        if pending.back().is_none_or(|(end, _)| *end < end_lsn.0) {
            pending.push_back((end_lsn.0, commit_ts));
        }
    }

    pub fn set_checkpoint(&self, lsn: Lsn) {
        self.checkpoint.fetch_max(lsn.0, Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(end, commit_ts)) = pending.front()
            && end <= lsn.0
        {
            self.durable_commit_ts.store(commit_ts as u64, Relaxed);
            pending.pop_front();
        }
    }

    /// The age of the oldest change read but not yet durable, in seconds: 0 when
    /// nothing waits, however long ago the last change was.
    pub fn lag_seconds(&self) -> f64 {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(_, oldest)) = pending.front() else {
            return 0.0;
        };
        let now = chrono::Utc::now().timestamp_micros();
        ((now - oldest).max(0) as f64) / 1e6
    }

    /// The commit time of the last change received (µs since the Unix epoch).
    pub fn last_commit_ts(&self) -> i64 {
        self.last_commit_ts.load(Relaxed) as i64
    }

    /// A table's copy starts (again: its rows count from zero).
    pub fn copy_started(&self, table: &str, kind: CopyKind, estimated: Option<u64>) {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        copies.insert(
            table.to_string(),
            TableCopy {
                table: table.to_string(),
                kind,
                rows: 0,
                estimated,
                started: Instant::now(),
                finished: None,
            },
        );
    }

    /// `rows` more rows of `table` copied.
    pub fn copy_rows(&self, table: &str, rows: u64) {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = copies.get_mut(table) {
            c.rows += rows;
        }
    }

    pub fn copy_finished(&self, table: &str) {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = copies.get_mut(table) {
            c.finished = Some(Instant::now());
        }
    }

    /// Every table's copy, finished or not, by name.
    pub fn copies(&self) -> Vec<TableCopy> {
        let copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        copies.values().cloned().collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            events: self.events.load(Relaxed),
            events_read: per_table(&self.read).iter().map(|(_, n)| n).sum(),
            batches: self.batches.load(Relaxed),
            server_wal_end: Lsn(self.server_wal_end.load(Relaxed)),
            checkpoint: Lsn(self.checkpoint.load(Relaxed)),
            durable_commit_ts: self.durable_commit_ts.load(Relaxed) as i64,
        }
    }
}

type PerTable = Mutex<BTreeMap<(String, &'static str), u64>>;

fn count_per_table(counts: &PerTable, batch: &weir_sdk::Batch) {
    let mut per_rel: BTreeMap<(u32, &'static str), u64> = BTreeMap::new();
    for e in &batch.events {
        *per_rel.entry((e.rel, e.op.code())).or_default() += 1;
    }
    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    for ((rel, op), n) in per_rel {
        let table = batch.relations[rel as usize].qualified_name();
        *counts.entry((table, op)).or_default() += n;
    }
}

fn per_table(counts: &PerTable) -> Vec<((String, &'static str), u64)> {
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros_ago(seconds: i64) -> i64 {
        chrono::Utc::now().timestamp_micros() - seconds * 1_000_000
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_change_not_yet_durable() {
        let stats = Stats::default();
        assert_eq!(stats.lag_seconds(), 0.0, "nothing read");
        stats.observe_commit(Lsn(100), micros_ago(40));
        stats.observe_commit(Lsn(200), micros_ago(20));
        let lag = stats.lag_seconds();
        assert!((39.0..45.0).contains(&lag), "the older one counts: {lag}");
        // A commit resent after a reconnect does not count twice or out of order.
        stats.observe_commit(Lsn(100), micros_ago(40));
        stats.set_checkpoint(Lsn(150));
        let lag = stats.lag_seconds();
        assert!((19.0..25.0).contains(&lag), "{lag}");
        assert!(
            stats.snapshot().durable_commit_ts > 0,
            "the durable one's time is known"
        );
        stats.set_checkpoint(Lsn(200));
        assert_eq!(
            stats.lag_seconds(),
            0.0,
            "nothing waits, however old it was"
        );
    }
}
