//! The primary-key index of a mirror table: key -> (data file, row position) of the
//! key's live row, on local disk (redb, one file per table), tied to the snapshot it
//! describes. It is a cache of what the table says: when its snapshot is not the table's
//! current one (a crash between a commit and the index update, a lost disk, another
//! writer), it is rebuilt from the table.

use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

/// Key bytes -> (file number, row position).
const KEYS: TableDefinition<&[u8], (u32, u64)> = TableDefinition::new("keys");
/// File number -> file path, and path -> number.
const FILES: TableDefinition<u32, &str> = TableDefinition::new("files");
const FILE_IDS: TableDefinition<&str, u32> = TableDefinition::new("file_ids");
/// `snapshot`: the table snapshot the index describes; `format`: the key encoding.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// The key encoding's version: a change makes every index be rebuilt.
const FORMAT: i64 = 1;

/// Page cache of one index: what it may hold in memory however many keys it has.
const CACHE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
#[error("the primary-key index {path}: {message}")]
pub struct IndexError {
    pub path: String,
    pub message: String,
}

/// Where a key's live row is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: std::sync::Arc<str>,
    pub pos: u64,
}

pub struct PkIndex {
    db: Database,
    path: PathBuf,
}

impl PkIndex {
    /// Opens (or creates) the index file `path`.
    pub fn open(path: &Path) -> Result<PkIndex, IndexError> {
        let err = |m: String| IndexError {
            path: path.display().to_string(),
            message: m,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| err(e.to_string()))?;
        Ok(PkIndex {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> IndexError {
        IndexError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// The snapshot the index describes, if it is complete and of this key encoding.
    pub fn snapshot(&self) -> Result<Option<i64>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let get = |k: &str| -> Result<Option<i64>, IndexError> {
            Ok(meta.get(k).map_err(|e| self.err(e))?.map(|v| v.value()))
        };
        match get("format")? {
            Some(FORMAT) => get("snapshot"),
            _ => Ok(None),
        }
    }

    /// Where each key's live row is (`None`: no live row).
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Loc>>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let (k, f) = match (tx.open_table(KEYS), tx.open_table(FILES)) {
            (Ok(k), Ok(f)) => (k, f),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => {
                return Ok(vec![None; keys.len()]);
            }
            (Err(e), _) | (_, Err(e)) => return Err(self.err(e)),
        };
        let mut names: std::collections::HashMap<u32, std::sync::Arc<str>> = Default::default();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some((file, pos)) = k.get(*key).map_err(|e| self.err(e))?.map(|v| v.value()) else {
                out.push(None);
                continue;
            };
            let name = match names.get(&file) {
                Some(n) => n.clone(),
                None => {
                    let n: std::sync::Arc<str> = f
                        .get(file)
                        .map_err(|e| self.err(e))?
                        .map(|v| std::sync::Arc::from(v.value()))
                        .ok_or_else(|| self.err(format!("file number {file} is not recorded")))?;
                    names.insert(file, n.clone());
                    n
                }
            };
            out.push(Some(Loc { file: name, pos }));
        }
        Ok(out)
    }

    /// Applies a commit's changes (`None`: the key has no live row now) and records
    /// that the index describes `snapshot`, in one durable write.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = (Vec<u8>, Option<Loc>)>,
        snapshot: i64,
    ) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut keys = tx.open_table(KEYS).map_err(|e| self.err(e))?;
            let mut files = tx.open_table(FILES).map_err(|e| self.err(e))?;
            let mut ids = tx.open_table(FILE_IDS).map_err(|e| self.err(e))?;
            let mut next = files
                .last()
                .map_err(|e| self.err(e))?
                .map_or(0, |(k, _)| k.value() + 1);
            for (key, loc) in changes {
                match loc {
                    None => {
                        keys.remove(key.as_slice()).map_err(|e| self.err(e))?;
                    }
                    Some(loc) => {
                        let known = ids
                            .get(&*loc.file)
                            .map_err(|e| self.err(e))?
                            .map(|v| v.value());
                        let id = match known {
                            Some(id) => id,
                            None => {
                                files.insert(next, &*loc.file).map_err(|e| self.err(e))?;
                                ids.insert(&*loc.file, next).map_err(|e| self.err(e))?;
                                next += 1;
                                next - 1
                            }
                        };
                        keys.insert(key.as_slice(), (id, loc.pos))
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert("format", FORMAT).map_err(|e| self.err(e))?;
            meta.insert("snapshot", snapshot).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Empties the index (before a rebuild, or after a truncate).
    pub fn clear(&mut self) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.delete_table(KEYS).map_err(|e| self.err(e))?;
        tx.delete_table(FILES).map_err(|e| self.err(e))?;
        tx.delete_table(FILE_IDS).map_err(|e| self.err(e))?;
        tx.delete_table(META).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Live keys.
    #[cfg(test)]
    pub fn len(&self) -> Result<u64, IndexError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        match tx.open_table(KEYS) {
            Ok(t) => t.len().map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(file: &str, pos: u64) -> Option<Loc> {
        Some(Loc {
            file: std::sync::Arc::from(file),
            pos,
        })
    }

    #[test]
    fn keys_move_between_files_and_the_snapshot_is_recorded_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let mut index = PkIndex::open(&path).unwrap();
        assert_eq!(
            index.snapshot().unwrap(),
            None,
            "a new index describes nothing"
        );
        index
            .apply(
                vec![(b"a".to_vec(), loc("f1", 0)), (b"b".to_vec(), loc("f1", 1))],
                7,
            )
            .unwrap();
        index
            .apply(
                vec![(b"a".to_vec(), loc("f2", 0)), (b"b".to_vec(), None)],
                8,
            )
            .unwrap();
        drop(index);
        let index = PkIndex::open(&path).unwrap();
        assert_eq!(index.snapshot().unwrap(), Some(8));
        assert_eq!(index.len().unwrap(), 1);
        let found = index.get_many(&[b"a", b"b", b"c"]).unwrap();
        assert_eq!(found, vec![loc("f2", 0), None, None]);
        let mut index = index;
        index.clear().unwrap();
        assert_eq!(index.snapshot().unwrap(), None);
        assert_eq!(index.len().unwrap(), 0);
    }
}
