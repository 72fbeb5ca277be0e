//! Sinks: where batches go. Each sink keeps its own checkpoint with its output and
//! reports the last transaction it has made durable.

pub mod columns;
pub mod parquet;

use crate::batch::{Position, SourceBatch};
use crate::checkpoint::{CheckpointError, CommitPos};
use crate::config::SinkConfig;
use crate::lsn::Lsn;
use object_store::ObjectStore;
use object_store::path::Path;
use std::sync::Arc;

/// A sink that cannot write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("unsupported output URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The object store and base path an output URL names. Only `file://` URLs for now.
pub fn object_store_for(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), SinkError> {
    let err = |reason: &str| SinkError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let parsed =
        url::Url::parse(url).map_err(|e| err(&format!("{e}; write file:///absolute/path")))?;
    match parsed.scheme() {
        "file" => {
            if parsed
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(err(
                    "a file:// URL names a local path: write file:///absolute/path (three slashes)",
                ));
            }
            let (store, path) =
                object_store::parse_url(&parsed).map_err(|e| err(&e.to_string()))?;
            Ok((Arc::from(store), path))
        }
        other => Err(err(&format!(
            "the scheme `{other}` is not supported; use file:///absolute/path"
        ))),
    }
}

/// One configured sink.
pub enum Sink {
    Parquet(parquet::ParquetSink),
}

impl Sink {
    fn name(&self) -> String {
        match self {
            Sink::Parquet(s) => format!("parquet {}", s.url()),
        }
    }

    async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.write(batch).await,
        }
    }

    async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.flush(position).await,
        }
    }

    fn durable(&self) -> Option<CommitPos> {
        match self {
            Sink::Parquet(s) => s.durable(),
        }
    }

    async fn abort(self) {
        match self {
            Sink::Parquet(s) => s.abort().await,
        }
    }
}

/// All sinks of a pipeline: every batch goes to each, in order.
pub struct Sinks {
    sinks: Vec<Sink>,
    /// Where the source must resume so that no sink misses a transaction.
    resume: Option<CommitPos>,
}

impl Sinks {
    /// Opens every sink, undoing any flush that did not reach its checkpoint.
    pub async fn open(configs: &[SinkConfig], slot: &str) -> Result<Sinks, SinkError> {
        let mut sinks = Vec::new();
        for config in configs {
            sinks.push(match config {
                SinkConfig::Parquet(c) => {
                    Sink::Parquet(parquet::ParquetSink::open(c.clone(), slot).await?)
                }
            });
        }
        // Any sink without a checkpoint starts from the slot's own position.
        let resume = sinks
            .iter()
            .map(Sink::durable)
            .collect::<Option<Vec<_>>>()
            .and_then(|d| d.into_iter().min());
        Ok(Sinks { sinks, resume })
    }

    /// The position the source resumes after.
    pub fn resume(&self) -> Option<CommitPos> {
        self.resume
    }

    /// Writes a batch to every sink; all must succeed.
    pub async fn write_all(&mut self, batch: &SourceBatch) -> Result<(), (String, SinkError)> {
        for sink in &mut self.sinks {
            sink.write(batch).await.map_err(|e| (sink.name(), e))?;
        }
        Ok(())
    }

    /// Makes everything written durable (when the position is at a transaction boundary).
    pub async fn flush_all(&mut self, position: &Position) -> Result<(), (String, SinkError)> {
        for sink in &mut self.sinks {
            sink.flush(position).await.map_err(|e| (sink.name(), e))?;
        }
        Ok(())
    }

    /// The LSN that may be reported to the server as flushed: everything before it is
    /// durable in every sink. When every sink holds everything delivered, that includes
    /// the idle WAL the server reported in keepalives.
    pub fn durable_lsn(&self, position: &Position) -> Option<Lsn> {
        let durables: Option<Vec<CommitPos>> = self.sinks.iter().map(Sink::durable).collect();
        let all_caught_up = |d: &[CommitPos]| match position.last_commit {
            None => true,
            Some(last) => d.iter().all(|p| *p >= last),
        };
        match durables {
            Some(d) if !position.in_tx && all_caught_up(&d) => Some(position.delivered_through()),
            Some(d) => d.iter().map(|p| p.end_lsn).min(),
            None if !position.in_tx && position.last_commit.is_none() => {
                Some(position.delivered_through())
            }
            None => None,
        }
    }

    /// Abandons unfinished output (what is durable stays).
    pub async fn abort(self) {
        for sink in self.sinks {
            sink.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_other_than_local_files_are_refused_with_the_fix() {
        assert!(object_store_for("file:///tmp/x").is_ok());
        let err = object_store_for("s3://bucket/x").err().unwrap().to_string();
        assert!(err.contains("`s3` is not supported"), "{err}");
        let err = object_store_for("file://tmp/x").err().unwrap().to_string();
        assert!(err.contains("three slashes"), "{err}");
        assert!(object_store_for("not a url").is_err());
    }
}
