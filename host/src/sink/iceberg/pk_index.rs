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
/// The changes of the commit under way, kept out of `keys` until it is committed
/// ([`GONE`] for a key without a live row), so that memory does not grow with them.
const STAGED: TableDefinition<&[u8], (u32, u64)> = TableDefinition::new("staged");
const GONE: (u32, u64) = (u32::MAX, 0);

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

    /// Where each key's live row is as of the changes staged so far: a staged change,
    /// else (unless the table was truncated in this commit) the committed index.
    pub fn lookup(&self, keys: &[&[u8]], truncated: bool) -> Result<Vec<Option<Loc>>, IndexError> {
        let staged = self.staged(keys)?;
        let unstaged: Vec<&[u8]> = keys
            .iter()
            .zip(&staged)
            .filter(|(_, s)| s.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut committed = match truncated {
            true => vec![None; unstaged.len()],
            false => self.get_many(&unstaged)?,
        }
        .into_iter();
        Ok(staged
            .into_iter()
            .map(|s| match s {
                Some(found) => found,
                None => committed.next().flatten(),
            })
            .collect())
    }

    /// Staged entries of `keys`: `None` when a key has none, `Some(None)` when its row
    /// is gone.
    fn staged(&self, keys: &[&[u8]]) -> Result<Vec<Option<Option<Loc>>>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let (t, f) = match (tx.open_table(STAGED), tx.open_table(FILES)) {
            (Ok(t), Ok(f)) => (t, f),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => {
                return Ok(vec![None; keys.len()]);
            }
            (Err(e), _) | (_, Err(e)) => return Err(self.err(e)),
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let found = t.get(*key).map_err(|e| self.err(e))?.map(|v| v.value());
            out.push(match found {
                None => None,
                Some(GONE) => Some(None),
                Some((file, pos)) => {
                    let name = f
                        .get(file)
                        .map_err(|e| self.err(e))?
                        .map(|v| std::sync::Arc::from(v.value()))
                        .ok_or_else(|| self.err(format!("file number {file} is not recorded")))?;
                    Some(Some(Loc { file: name, pos }))
                }
            });
        }
        Ok(out)
    }

    /// Stages changes of the commit under way (dropped at the next open after a crash).
    pub fn stage(
        &mut self,
        changes: impl IntoIterator<Item = (Vec<u8>, Option<Loc>)>,
    ) -> Result<(), IndexError> {
        // Durable like every commit: redb reuses freed pages only after a durable
        // commit, and staging without one made the file grow by gigabytes.
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut staged = tx.open_table(STAGED).map_err(|e| self.err(e))?;
            let mut files = tx.open_table(FILES).map_err(|e| self.err(e))?;
            let mut ids = tx.open_table(FILE_IDS).map_err(|e| self.err(e))?;
            for (key, loc) in changes {
                let value = match loc {
                    None => GONE,
                    Some(loc) => (
                        file_id(&mut files, &mut ids, &loc.file).map_err(|e| self.err(e))?,
                        loc.pos,
                    ),
                };
                staged
                    .insert(key.as_slice(), value)
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Drops the staged changes (a commit that will not happen, or a crash's leftovers).
    pub fn drop_staged(&mut self) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.delete_table(STAGED).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Makes the staged changes the index's, which now describes `snapshot` (after a
    /// truncate, they are all it holds), in one durable write.
    pub fn commit_staged(&mut self, snapshot: i64, truncated: bool) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        if truncated {
            tx.delete_table(KEYS).map_err(|e| self.err(e))?;
        }
        {
            let mut keys = tx.open_table(KEYS).map_err(|e| self.err(e))?;
            let staged = tx.open_table(STAGED).map_err(|e| self.err(e))?;
            for entry in staged.iter().map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                match v.value() {
                    GONE => {
                        keys.remove(k.value()).map_err(|e| self.err(e))?;
                    }
                    loc => {
                        keys.insert(k.value(), loc).map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert("format", FORMAT).map_err(|e| self.err(e))?;
            meta.insert("snapshot", snapshot).map_err(|e| self.err(e))?;
        }
        tx.delete_table(STAGED).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Where each key's live row is in the committed index (`None`: no live row).
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
            for (key, loc) in changes {
                match loc {
                    None => {
                        keys.remove(key.as_slice()).map_err(|e| self.err(e))?;
                    }
                    Some(loc) => {
                        let id =
                            file_id(&mut files, &mut ids, &loc.file).map_err(|e| self.err(e))?;
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
        tx.delete_table(STAGED).map_err(|e| self.err(e))?;
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

/// The number of a data file path, recorded the first time it is met.
fn file_id(
    files: &mut redb::Table<u32, &str>,
    ids: &mut redb::Table<&str, u32>,
    path: &str,
) -> Result<u32, redb::StorageError> {
    if let Some(id) = ids.get(path)?.map(|v| v.value()) {
        return Ok(id);
    }
    let next = files.last()?.map_or(0, |(k, _)| k.value() + 1);
    files.insert(next, path)?;
    ids.insert(path, next)?;
    Ok(next)
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
