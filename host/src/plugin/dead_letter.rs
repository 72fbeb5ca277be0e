//! The dead-letter location: events a plugin could not process under
//! `on_error = "dead-letter"`, each with the error and its position, kept under the
//! output until `weir dead-letter replay` delivers them.
//!
//! One object per event,
//! `<url>/_weir/<slot>/dead-letter/<stage>/<schema.table>/<commit_lsn>-<seq>.msgpack`.
//! The name is a function of the event, so a batch that is processed again after a
//! restart rewrites the same objects instead of adding copies.

use super::manifest::Manifest;
use crate::sink::{SinkError, object_store_for};
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
    /// Where in the pipeline: `transform-<n>` (the n-th transform, from 0) or
    /// `sink-<n>` (the n-th sink). Replay starts there.
    pub stage: String,
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
    pub fn new(manifest: &Manifest, stage: &str, error: &str, event: Batch) -> DeadLetter {
        let (rel, e) = event
            .events()
            .next()
            .expect("a dead letter holds one event");
        DeadLetter {
            plugin: manifest.name.clone(),
            version: manifest.version.clone(),
            stage: stage.to_owned(),
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
    pub fn event(&self) -> Result<Batch, String> {
        Batch::decode(&self.batch).map_err(|e| e.to_string())
    }

    /// The stage kind and index: `("transform", 1)`.
    pub fn stage_parts(&self) -> Option<(&str, usize)> {
        let (kind, n) = self.stage.rsplit_once('-')?;
        Some((kind, n.parse().ok()?))
    }
}

/// A dead-letter location.
#[derive(Clone)]
pub struct DeadLetters {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    local: Option<crate::sink::LocalSync>,
}

impl DeadLetters {
    /// The location for `slot` under the output `url`.
    pub fn open(url: &str, slot: &str) -> Result<DeadLetters, SinkError> {
        let (store, base) = object_store_for(url)?;
        let prefix = base.join("_weir").join(slot).join("dead-letter");
        Ok(DeadLetters {
            local: crate::sink::LocalSync::for_url(url),
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
            .join(letter.stage.as_str())
            .join(letter.table.as_str())
            .join(format!(
                "{:016X}-{:010}.msgpack",
                letter.commit_lsn, letter.seq
            ))
    }

    /// Writes one dead letter durably; returns its key.
    pub async fn write(&self, letter: &DeadLetter) -> Result<String, String> {
        let key = self.key(letter);
        let bytes = rmp_serde::to_vec_named(letter).map_err(|e| e.to_string())?;
        self.store
            .put(&key, bytes.into())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(local) = &self.local {
            // On disk before the checkpoint can pass the event.
            local
                .sync(vec![key.clone()])
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(key.to_string())
    }

    /// [`write`](Self::write) from a plugin's blocking thread.
    pub fn write_blocking(&self, letter: &DeadLetter) -> Result<String, String> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.write(letter)),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(self.write(letter)),
        }
    }

    /// Every dead letter, in stage then commit order, with its key.
    pub async fn list(&self) -> Result<Vec<(Path, DeadLetter)>, String> {
        let mut metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut letters = Vec::new();
        for meta in metas {
            if !meta.location.as_ref().ends_with(".msgpack") {
                continue;
            }
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let letter: DeadLetter = rmp_serde::from_slice(&bytes)
                .map_err(|e| format!("{}: not a dead letter: {e}", meta.location))?;
            letters.push((meta.location, letter));
        }
        Ok(letters)
    }

    /// Removes a dead letter once it has been delivered.
    pub async fn remove(&self, key: &Path) -> Result<(), String> {
        self.store.delete(key).await.map_err(|e| e.to_string())
    }
}
