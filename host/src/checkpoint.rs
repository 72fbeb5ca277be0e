//! Checkpoints: the position up to which output is durable, stored with the output.
//!
//! Exactly-once (DESIGN.md, decision 1) rests on three objects under
//! `<output>/_weir/<slot>/`:
//!
//! - `checkpoint.json`: `{seq, commit_lsn, end_lsn}`. Everything of every transaction
//!   committed at or before `commit_lsn` is in files of flush `seq` or earlier, and
//!   nothing after it is.
//! - `intent.json`: written *before* any file of flush `seq + 1` becomes visible, listing
//!   those files.
//! - the data files themselves, named by flush sequence so a retry writes the same names.
//!
//! A flush writes the intent, completes its files, writes the checkpoint, then deletes the
//! intent. On start, an intent newer than the checkpoint means a crash in between: its
//! files are deleted, and the source resends those transactions because the slot's flush
//! position was never moved past the checkpoint. Each object write is atomic (a rename on
//! a local filesystem, a single PUT or a completed multipart upload on S3).

use crate::batch::CommitPos;
use crate::lsn::Lsn;
use crate::storage::{LocalSync, StateFile, StorageError};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What `checkpoint.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Flush sequence number, from 1.
    pub seq: u64,
    /// The last transaction whose changes are all durable.
    pub commit_lsn: Lsn,
    /// Where streaming resumes.
    pub end_lsn: Lsn,
    /// When it was written (RFC 3339), for people reading the file.
    pub written_at: String,
    /// Whether the output's files hold arrays as lists (`[sink] nested_types`); absent
    /// in checkpoints of weir versions that wrote them as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_types: Option<bool>,
}

impl Checkpoint {
    pub fn position(&self) -> CommitPos {
        CommitPos {
            commit_lsn: self.commit_lsn,
            end_lsn: self.end_lsn,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    seq: u64,
    files: Vec<String>,
}

/// Checkpoint state of one sink for one slot.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    checkpoint: StateFile<Checkpoint>,
    intent: StateFile<Intent>,
    /// Recorded with each checkpoint.
    nested_types: Option<bool>,
}

impl CheckpointStore {
    /// The store under `<prefix>/_weir/<slot>/`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path, slot: &str) -> CheckpointStore {
        CheckpointStore {
            checkpoint: StateFile::at(store.clone(), prefix, slot, "checkpoint.json"),
            intent: StateFile::at(store.clone(), prefix, slot, "intent.json"),
            store,
            nested_types: None,
        }
    }

    /// Records the output's form of arrays with each checkpoint.
    pub fn with_nested_types(self, nested: bool) -> CheckpointStore {
        CheckpointStore {
            nested_types: Some(nested),
            ..self
        }
    }

    /// fsyncs each state file after writing it (for local outputs).
    pub fn with_local_sync(self, local: Option<LocalSync>) -> CheckpointStore {
        CheckpointStore {
            checkpoint: self.checkpoint.with_local_sync(local.clone()),
            intent: self.intent.with_local_sync(local),
            ..self
        }
    }

    /// Reads the checkpoint as it is (for `weir status`: nothing is undone).
    pub async fn read(&self) -> Result<Option<Checkpoint>, StorageError> {
        self.checkpoint.read().await
    }

    /// Reads the checkpoint and undoes a flush that did not finish: files listed by an
    /// intent newer than the checkpoint are deleted. Returns the checkpoint, if any.
    pub async fn recover(&self) -> Result<Option<Checkpoint>, StorageError> {
        let checkpoint = self.checkpoint.read().await?;
        if let Some(intent) = self.intent.read().await? {
            let committed = checkpoint.as_ref().map_or(0, |c| c.seq);
            if intent.seq > committed {
                for file in &intent.files {
                    let path = Path::from(file.as_str());
                    match self.store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(StorageError::store("deleting", &path)(e)),
                    }
                }
                tracing::info!(
                    seq = intent.seq,
                    files = intent.files.len(),
                    "Removed the files of a flush that did not reach its checkpoint."
                );
            }
            self.intent.remove().await?;
        }
        Ok(checkpoint)
    }

    /// Records that the files of flush `seq` are about to become visible.
    pub async fn write_intent(&self, seq: u64, files: &[Path]) -> Result<(), StorageError> {
        let intent = Intent {
            seq,
            files: files.iter().map(|p| p.to_string()).collect(),
        };
        self.intent.write(&intent).await
    }

    /// Commits flush `seq`: its files are all complete.
    pub async fn commit(&self, seq: u64, pos: CommitPos) -> Result<Checkpoint, StorageError> {
        let checkpoint = Checkpoint {
            seq,
            commit_lsn: pos.commit_lsn,
            end_lsn: pos.end_lsn,
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            nested_types: self.nested_types,
        };
        self.checkpoint.write(&checkpoint).await?;
        self.intent.remove().await?;
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    fn pos(c: u64) -> CommitPos {
        CommitPos {
            commit_lsn: Lsn(c),
            end_lsn: Lsn(c + 8),
        }
    }

    #[tokio::test]
    async fn an_unfinished_flush_is_undone_and_a_finished_one_kept() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cp = CheckpointStore::new(store.clone(), &Path::from("out"), "s");
        assert_eq!(cp.recover().await.unwrap(), None);

        let a = Path::from("out/t/a.parquet");
        cp.write_intent(1, std::slice::from_ref(&a)).await.unwrap();
        store.put(&a, PutPayload::from_static(b"x")).await.unwrap();
        cp.commit(1, pos(100)).await.unwrap();

        let b = Path::from("out/t/b.parquet");
        cp.write_intent(2, std::slice::from_ref(&b)).await.unwrap();
        store.put(&b, PutPayload::from_static(b"y")).await.unwrap();
        // Crash here: the checkpoint still says 1.

        let recovered = cp.recover().await.unwrap().unwrap();
        assert_eq!((recovered.seq, recovered.position()), (1, pos(100)));
        assert!(store.head(&a).await.is_ok(), "committed file kept");
        assert!(
            matches!(
                store.head(&b).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "uncommitted file removed"
        );
        assert!(matches!(
            store.head(cp.intent.path()).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn corrupt_checkpoint_is_an_error_that_says_so() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cp = CheckpointStore::new(store.clone(), &Path::from("out"), "s");
        store
            .put(cp.checkpoint.path(), PutPayload::from_static(b"{not json"))
            .await
            .unwrap();
        let err = cp.recover().await.unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
