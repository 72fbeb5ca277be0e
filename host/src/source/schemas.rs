//! Schema versions that survive restarts: each captured relation's columns and version,
//! kept in `<state>/_weir/<slot>/schemas.json`. A relation whose columns are the ones
//! stored keeps its version after a restart; changed columns make the next version, and
//! so does a changed structure of a type they use (a composite type's fields, an enum's
//! labels: see [`super::types::shape`]), as weir reads it when it starts.

use crate::storage::{StateFile, StorageError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use weir_sdk::Column;

/// Relation OID to (version, columns, the structure of the types they use).
type Relations = BTreeMap<u32, Stored>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Shaped(u32, Vec<Column>, String),
    /// Written by a weir that did not record types' structure.
    Plain(u32, Vec<Column>),
}

impl Stored {
    fn parts(&self) -> (u32, &[Column], &str) {
        match self {
            Stored::Shaped(v, c, s) => (*v, c, s),
            Stored::Plain(v, c) => (*v, c, ""),
        }
    }
}

#[derive(Default)]
struct Known {
    relations: Relations,
    dirty: bool,
}

/// The versions known to the pipeline; cheap to clone and shared by the decoder, the
/// snapshot and backfills.
#[derive(Clone, Default)]
pub struct SchemaVersions {
    known: Arc<Mutex<Known>>,
    file: Option<StateFile<Relations>>,
}

impl std::fmt::Debug for SchemaVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("SchemaVersions")
            .field("relations", &known.relations.len())
            .field("stored", &self.file.is_some())
            .finish()
    }
}

impl SchemaVersions {
    /// Versions that start at 1 every run (no state location).
    pub fn in_memory() -> SchemaVersions {
        SchemaVersions::default()
    }

    /// Loads the stored versions.
    pub async fn load(state_url: &str, slot: &str) -> Result<SchemaVersions, StorageError> {
        let file = StateFile::open(state_url, slot, "schemas.json")?;
        let relations = file.read().await?.unwrap_or_default();
        Ok(SchemaVersions {
            known: Arc::new(Mutex::new(Known {
                relations,
                dirty: false,
            })),
            file: Some(file),
        })
    }

    /// The version of relation `id` with these columns: the stored one when the columns
    /// are the same, else the next (1 for a relation never seen).
    pub fn version_for(&self, id: u32, columns: &[Column]) -> u32 {
        self.change(id, columns).0
    }

    /// Like [`version_for`](Self::version_for), with the columns the relation had
    /// before when they changed (in this run or since the last).
    pub fn change(&self, id: u32, columns: &[Column]) -> (u32, Option<Vec<Column>>) {
        let shapes = super::types::shape(columns);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let (version, old) = match known.relations.get(&id).map(Stored::parts) {
            Some((v, cols, was)) if cols == columns && was == shapes => return (v, None),
            Some((v, cols, _)) => (v + 1, Some(cols.to_vec())),
            None => (1, None),
        };
        let stored = Stored::Shaped(version, columns.to_vec(), shapes);
        known.relations.insert(id, stored);
        known.dirty = true;
        (version, old)
    }

    /// Writes the versions when one has been added since the last save.
    pub async fn save_if_changed(&self) -> Result<(), StorageError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let relations = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if !known.dirty {
                return Ok(());
            }
            known.dirty = false;
            known.relations.clone()
        };
        file.write(&relations).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_columns_keep_their_version_and_changes_count_up() {
        let v = SchemaVersions::in_memory();
        let a = vec![Column::new("id", 23, "int4", true)];
        let mut b = a.clone();
        b.push(Column::new("x", 25, "text", false));
        assert_eq!(v.version_for(7, &a), 1);
        assert_eq!(v.version_for(7, &a), 1);
        assert_eq!(v.version_for(7, &b), 2);
        assert_eq!(
            v.version_for(7, &a),
            3,
            "a change back is a new version too"
        );
        assert_eq!(v.version_for(8, &a), 1);
    }
}
