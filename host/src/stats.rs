//! Live counters shared by the stages, read by the status line.

use crate::lsn::Lsn;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Progress counters. Written by one stage each, read by anyone.
#[derive(Debug, Default)]
pub struct Stats {
    events: AtomicU64,
    server_wal_end: AtomicU64,
    received_commit_end: AtomicU64,
    last_commit_ts: AtomicU64,
    checkpoint: AtomicU64,
    durable_commit_ts: AtomicU64,
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
    written: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Bytes of row data read from the source.
    bytes_in: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub events: u64,
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
        let mut per_rel: BTreeMap<(u32, &'static str), u64> = BTreeMap::new();
        for e in &batch.events {
            *per_rel.entry((e.rel, e.op.code())).or_default() += 1;
        }
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        for ((rel, op), n) in per_rel {
            let table = batch.relations[rel as usize].qualified_name();
            *written.entry((table, op)).or_default() += n;
        }
    }

    /// Events written per (table, op).
    pub fn written(&self) -> Vec<((String, &'static str), u64)> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.iter().map(|(k, v)| (k.clone(), *v)).collect()
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
    }

    pub fn set_checkpoint(&self, lsn: Lsn) {
        self.checkpoint.fetch_max(lsn.0, Relaxed);
        // Once durable up to the last commit received, that commit's time is durable too.
        if lsn.0 >= self.received_commit_end.load(Relaxed) {
            self.durable_commit_ts
                .store(self.last_commit_ts.load(Relaxed), Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            events: self.events.load(Relaxed),
            batches: self.batches.load(Relaxed),
            server_wal_end: Lsn(self.server_wal_end.load(Relaxed)),
            checkpoint: Lsn(self.checkpoint.load(Relaxed)),
            durable_commit_ts: self.durable_commit_ts.load(Relaxed) as i64,
        }
    }
}
