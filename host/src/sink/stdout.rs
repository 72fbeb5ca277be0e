//! The `stdout` sink: one JSON line per change on standard output, for `jq`, another
//! program or a file (`weir run p.toml > changes.jsonl`). Logs go to standard error.
//!
//! At least once: lines are flushed at the end of every batch, and what was flushed
//! counts as delivered, so the slot moves on with it. After a crash the changes since
//! the slot's last confirmed position are printed again; a reader that must not see one
//! twice keys them by `(commit_lsn, seq)`.

use super::error::SinkError;
use crate::batch::{CommitPos, Position, SourceBatch};
use std::io::Write;

#[derive(Debug, Default)]
pub struct StdoutSink {
    /// The last whole transaction printed and flushed.
    durable: Option<CommitPos>,
    bytes: u64,
}

impl StdoutSink {
    pub fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        self.write_events(&batch.batch)?;
        if let Some(at) = batch.position.flush_point(self.durable) {
            self.durable = Some(at);
        }
        Ok(())
    }

    /// Prints the events and flushes them.
    pub fn write_events(&mut self, batch: &weir_sdk::Batch) -> Result<(), SinkError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(batch.events.len() * 256);
        for (rel, e) in batch.events() {
            serde_json::to_writer(&mut out, &weir_sdk::json::event(rel, e))
                .expect("JSON values serialize");
            out.push(b'\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&out)
            .and_then(|()| stdout.flush())
            .map_err(|source| SinkError::Stdout { source })?;
        self.bytes += out.len() as u64;
        Ok(())
    }

    /// Everything written was flushed already.
    pub fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        if let Some(at) = position.flush_point(self.durable) {
            self.durable = Some(at);
        }
        Ok(())
    }

    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    pub fn take_bytes_written(&mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}
