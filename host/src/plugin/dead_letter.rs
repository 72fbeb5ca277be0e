//! The dead-letter location: events a plugin could not process under
//! `on_error = "dead-letter"`, each with the error and its position, kept under the
//! output until `weir dead-letter replay` delivers them.
//!
//! One object per event,
//! `<url>/_weir/<slot>/dead-letter/<stage>/<schema.table>/<commit_lsn>-<seq>.msgpack`.
//! The name is a function of the event, so a batch that is processed again after a
//! restart rewrites the same objects instead of adding copies.

use super::manifest::Manifest;
use crate::storage::{StorageError, object_store_for};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weir_sdk::Batch;

/// One event set aside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The plugin that failed, and its version.
    pub plugin: String,
    pub version: String,
    /// Where in the pipeline it failed. Replay starts there.
    pub stage: Stage,
    /// What the plugin (or the host) reported.
    pub error: String,
    /// `schema.table`, commit LSN, ordinal in the transaction, transaction id.
    pub table: String,
    pub commit_lsn: u64,
    pub seq: u32,
    pub xid: u32,
    /// When it was set aside (RFC 3339, UTC).
    pub written_at: String,
    /// The event as the plugin received it: a one-event batch in the batch layout.
    #[serde(with = "serde_bytes")]
    pub batch: Vec<u8>,
}

impl DeadLetter {
    pub fn new(manifest: &Manifest, stage: Stage, error: &str, event: Batch) -> DeadLetter {
        let (rel, e) = event
            .events()
            .next()
            .expect("a dead letter holds one event");
        DeadLetter {
            plugin: manifest.name.clone(),
            version: manifest.version.clone(),
            stage,
            error: error.to_owned(),
            table: rel.qualified_name(),
            commit_lsn: e.commit_lsn,
            seq: e.seq,
            xid: e.xid,
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch: event.encode(),
        }
    }

    /// The event, as a one-event batch.
    pub fn event(&self) -> Result<Batch, DeadLetterError> {
        Batch::decode(&self.batch).map_err(DeadLetterError::Event)
    }
}

/// Where in the pipeline an event was set aside: written `transform-<n>` (the n-th
/// transform, from 0) or `sink-<n>` (the n-th sink) in its key and in listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Stage {
    Transform(usize),
    Sink(usize),
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Transform(i) => write!(f, "transform-{i}"),
            Stage::Sink(i) => write!(f, "sink-{i}"),
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Stage, UnknownStage> {
        let unknown = || UnknownStage(s.to_owned());
        let (kind, n) = s.rsplit_once('-').ok_or_else(unknown)?;
        let n = n.parse().map_err(|_| unknown())?;
        match kind {
            "transform" => Ok(Stage::Transform(n)),
            "sink" => Ok(Stage::Sink(n)),
            _ => Err(unknown()),
        }
    }
}

impl TryFrom<String> for Stage {
    type Error = UnknownStage;
    fn try_from(s: String) -> Result<Stage, UnknownStage> {
        s.parse()
    }
}

impl From<Stage> for String {
    fn from(stage: Stage) -> String {
        stage.to_string()
    }
}

/// A stage name that is neither `transform-<n>` nor `sink-<n>`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown stage `{0}`: write transform-<n> or sink-<n>, as `weir dead-letter list` prints it"
)]
pub struct UnknownStage(pub String);

/// Reading or writing a dead letter failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("encoding a dead letter: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("{path}: not a dead letter: {source}")]
    Decode {
        path: String,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("the dead letter's event cannot be read: {0}")]
    Event(#[source] weir_sdk::DecodeError),
    #[error("writing a dead letter: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A dead-letter location.
#[derive(Clone)]
pub struct DeadLetters {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    local: Option<crate::storage::LocalSync>,
}

impl DeadLetters {
    /// The location for `slot` under the output `url`.
    pub fn open(url: &str, slot: &str) -> Result<DeadLetters, StorageError> {
        let (store, base) = object_store_for(url)?;
        let prefix = base.join("_weir").join(slot).join("dead-letter");
        Ok(DeadLetters {
            local: crate::storage::LocalSync::for_url(url),
            store,
            prefix,
            url: format!("{}/_weir/{slot}/dead-letter", url.trim_end_matches('/')),
        })
    }

    /// Where it is, as a URL (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, letter: &DeadLetter) -> Path {
        self.prefix
            .clone()
            .join(letter.stage.to_string())
            .join(letter.table.as_str())
            .join(format!(
                "{:016X}-{:010}.msgpack",
                letter.commit_lsn, letter.seq
            ))
    }

    /// Writes one dead letter durably; returns its key.
    pub async fn write(&self, letter: &DeadLetter) -> Result<String, DeadLetterError> {
        let key = self.key(letter);
        let bytes = rmp_serde::to_vec_named(letter)?;
        self.store
            .put(&key, bytes.into())
            .await
            .map_err(StorageError::store("writing", &key))?;
        if let Some(local) = &self.local {
            // On disk before the checkpoint can pass the event.
            local.sync(vec![key.clone()]).await?;
        }
        Ok(key.to_string())
    }

    /// [`write`](Self::write) from a plugin's blocking thread.
    pub fn write_blocking(&self, letter: &DeadLetter) -> Result<String, DeadLetterError> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.write(letter)),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DeadLetterError::Runtime)?
                .block_on(self.write(letter)),
        }
    }

    /// Every dead letter, in stage then commit order, with its key.
    pub async fn list(&self) -> Result<Vec<(Path, DeadLetter)>, DeadLetterError> {
        let mut metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(StorageError::store("listing", &self.prefix))?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut letters = Vec::new();
        for meta in metas {
            if !meta.location.as_ref().ends_with(".msgpack") {
                continue;
            }
            let read = StorageError::store("reading", &meta.location);
            let bytes = match self.store.get(&meta.location).await {
                Ok(got) => got.bytes().await.map_err(read)?,
                Err(e) => return Err(read(e).into()),
            };
            let letter: DeadLetter =
                rmp_serde::from_slice(&bytes).map_err(|source| DeadLetterError::Decode {
                    path: meta.location.to_string(),
                    source,
                })?;
            letters.push((meta.location, letter));
        }
        Ok(letters)
    }

    /// Removes a dead letter once it has been delivered.
    pub async fn remove(&self, key: &Path) -> Result<(), DeadLetterError> {
        Ok(self
            .store
            .delete(key)
            .await
            .map_err(StorageError::store("deleting", key))?)
    }
}
