//! The evidence ledger: one record per durable commit of every native sink, under
//! `<state url>/_weir/<slot>/ledger/<seq>.json`, each naming the previous record's
//! sha256 so that the records form a hash chain.
//!
//! A record names the sink, the files it made durable (size and sha256 of each), rows
//! per table and operation, the LSN range, and the transforms that made the rows. It is
//! written after the files are complete and before the sink's checkpoint moves, so a
//! crash leaves at most one record the sink does not hold: the newest. Opening the
//! pipeline removes it ([`Ledger::drop_unheld`]), and the redone commit writes its own.
//! `weir audit` walks the chain and re-hashes every file.

use crate::lsn::Lsn;
use crate::storage::{LocalSync, StorageError, object_store_for};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A file a record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// An object path in the sink's store (Parquet), or the file's URL (Iceberg).
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// One durable commit of one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The sink, by its place in the pipeline file (from 0), and its name.
    pub sink: usize,
    pub sink_name: String,
    /// The Parquet flush this record covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush: Option<u64>,
    /// The Iceberg table this record covers (one record per table commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Transactions after this position (what the sink held before) ...
    pub from_lsn: Lsn,
    /// ... up to this one: `commit_lsn` of the last, and where streaming resumes.
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub files: Vec<FileEntry>,
    /// Rows per table (`schema.table`) and operation (`_cdc_op`).
    pub rows: BTreeMap<String, BTreeMap<String, u64>>,
    /// The transforms whose output the rows are (`name@version#sha256`).
    pub transforms: Vec<String>,
    pub written_at: String,
    /// sha256 of the previous record's bytes; `None` for the first.
    pub prev: Option<String>,
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ledger of one pipeline (slot).
pub struct Ledger {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    local: Option<LocalSync>,
    /// The newest record and its hash.
    last: Option<(Record, String)>,
}

/// A ledger the sinks of a pipeline share (they commit one after another).
pub type SharedLedger = Arc<tokio::sync::Mutex<Ledger>>;

/// A sink's place in the pipeline's ledger.
pub struct LedgerLink {
    pub ledger: SharedLedger,
    /// The sink's place in the pipeline file, and its name.
    pub sink: usize,
    pub name: String,
}

impl Ledger {
    /// The ledger under `<url>/_weir/<slot>/ledger/`, positioned after its newest record.
    pub async fn open(url: &str, slot: &str) -> Result<Ledger, StorageError> {
        let (store, base) = object_store_for(url)?;
        let dir = base.join("_weir").join(slot).join("ledger");
        let mut ledger = Ledger {
            store,
            dir,
            local: LocalSync::for_url(url),
            last: None,
        };
        ledger.last = ledger.newest().await?;
        Ok(ledger)
    }

    /// Record paths in chain order.
    pub async fn paths(&self) -> Result<Vec<Path>, StorageError> {
        let mut paths: Vec<Path> = self
            .store
            .list(Some(&self.dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(StorageError::store("listing", &self.dir))?;
        paths.retain(|p| p.as_ref().ends_with(".json"));
        paths.sort();
        Ok(paths)
    }

    /// A record's bytes.
    pub async fn read(&self, path: &Path) -> Result<Vec<u8>, StorageError> {
        let got = self
            .store
            .get(path)
            .await
            .map_err(StorageError::store("reading", path))?;
        Ok(got
            .bytes()
            .await
            .map_err(StorageError::store("reading", path))?
            .to_vec())
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Record, StorageError> {
        serde_json::from_slice(bytes).map_err(|source| StorageError::Corrupt {
            path: path.to_string(),
            source,
        })
    }

    async fn newest(&self) -> Result<Option<(Record, String)>, StorageError> {
        let Some(path) = self.paths().await?.pop() else {
            return Ok(None);
        };
        let bytes = self.read(&path).await?;
        Ok(Some((Ledger::parse(&path, &bytes)?, sha256_hex(&bytes))))
    }

    fn path_of(&self, seq: u64) -> Path {
        self.dir.clone().join(format!("{seq:012}.json"))
    }

    /// Appends `record` (its `seq`, `prev` and `written_at` are set here), durably.
    pub async fn append(&mut self, mut record: Record) -> Result<(), StorageError> {
        record.seq = self.last.as_ref().map_or(1, |(r, _)| r.seq + 1);
        record.prev = self.last.as_ref().map(|(_, h)| h.clone());
        record.written_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let bytes = serde_json::to_vec_pretty(&record).expect("ledger records serialize");
        let path = self.path_of(record.seq);
        self.store
            .put(&path, PutPayload::from(bytes.clone()))
            .await
            .map_err(StorageError::store("writing", &path))?;
        if let Some(local) = &self.local {
            local.sync(vec![path]).await?;
        }
        self.last = Some((record, sha256_hex(&bytes)));
        Ok(())
    }

    /// Removes the newest records that their sink does not hold (a crash between a
    /// record and its checkpoint). Returns how many went.
    pub async fn drop_unheld(
        &mut self,
        holds: impl Fn(&Record) -> bool,
    ) -> Result<usize, StorageError> {
        let mut dropped = 0;
        while let Some((record, _)) = &self.last {
            if holds(record) {
                break;
            }
            let path = self.path_of(record.seq);
            tracing::info!(seq = record.seq, sink = %record.sink_name, "Removed the ledger record of a commit that did not reach its checkpoint.");
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StorageError::store("deleting", &path)(e)),
            }
            dropped += 1;
            self.last = self.newest().await?;
        }
        Ok(dropped)
    }
}

/// Rows per table and operation, counted as a sink writes them.
#[derive(Debug, Default, Clone)]
pub struct RowCounts(BTreeMap<String, BTreeMap<String, u64>>);

impl RowCounts {
    pub fn add(&mut self, table: &str, op: &str, n: u64) {
        if n == 0 {
            return;
        }
        let ops = match self.0.get_mut(table) {
            Some(ops) => ops,
            None => self.0.entry(table.to_owned()).or_default(),
        };
        *ops.entry(op.to_owned()).or_default() += n;
    }

    pub fn take(&mut self) -> BTreeMap<String, BTreeMap<String, u64>> {
        std::mem::take(&mut self.0)
    }
}

/// The sha256 and size of the bytes written through a [`HashingWriter`].
#[derive(Default)]
pub struct Written {
    hasher: Sha256,
    size: u64,
}

impl Written {
    /// The size and hex sha256 (the hasher starts over).
    pub fn finish(&mut self) -> (u64, String) {
        let hasher = std::mem::take(&mut self.hasher);
        (std::mem::take(&mut self.size), hex(&hasher.finalize()))
    }
}

/// A Parquet file writer that hashes the bytes on their way out.
pub struct HashingWriter<W> {
    pub inner: W,
    written: Arc<Mutex<Written>>,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> (HashingWriter<W>, Arc<Mutex<Written>>) {
        let written = Arc::new(Mutex::new(Written::default()));
        (
            HashingWriter {
                inner,
                written: written.clone(),
            },
            written,
        )
    }
}

impl<W: parquet::arrow::async_writer::AsyncFileWriter> parquet::arrow::async_writer::AsyncFileWriter
    for HashingWriter<W>
{
    fn write(
        &mut self,
        bs: bytes::Bytes,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<()>> {
        if let Ok(mut w) = self.written.lock() {
            w.hasher.update(&bs);
            w.size += bs.len() as u64;
        }
        self.inner.write(bs)
    }

    fn complete(&mut self) -> futures::future::BoxFuture<'_, parquet::errors::Result<()>> {
        self.inner.complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sink: usize, end: u64) -> Record {
        Record {
            seq: 0,
            sink,
            sink_name: format!("sink {sink}"),
            flush: Some(end),
            table: None,
            from_lsn: Lsn(0),
            commit_lsn: Lsn(end),
            end_lsn: Lsn(end + 1),
            files: vec![],
            rows: BTreeMap::new(),
            transforms: vec![],
            written_at: String::new(),
            prev: None,
        }
    }

    #[tokio::test]
    async fn records_chain_and_an_unheld_tail_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let mut l = Ledger::open(&url, "s").await.unwrap();
        l.append(record(0, 10)).await.unwrap();
        l.append(record(1, 20)).await.unwrap();
        l.append(record(0, 30)).await.unwrap();
        let l2 = Ledger::open(&url, "s").await.unwrap();
        let paths = l2.paths().await.unwrap();
        assert_eq!(paths.len(), 3);
        let first = l2.read(&paths[0]).await.unwrap();
        let second = Ledger::parse(&paths[1], &l2.read(&paths[1]).await.unwrap()).unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(second.prev, Some(sha256_hex(&first)));

        // Sink 0 holds up to 20: its record at 30 is an orphan of a crash.
        let mut l3 = Ledger::open(&url, "s").await.unwrap();
        let dropped = l3.drop_unheld(|r| r.commit_lsn.0 <= 20).await.unwrap();
        assert_eq!(dropped, 1);
        l3.append(record(0, 25)).await.unwrap();
        let paths = l3.paths().await.unwrap();
        let third = Ledger::parse(&paths[2], &l3.read(&paths[2]).await.unwrap()).unwrap();
        assert_eq!((third.seq, third.commit_lsn), (3, Lsn(25)));
        assert_eq!(
            third.prev,
            Some(sha256_hex(&l3.read(&paths[1]).await.unwrap()))
        );
    }
}
