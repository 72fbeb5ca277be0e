//! Schema versions that survive restarts: each captured relation's columns and version,
//! kept in `<state>/_weir/<slot>/schemas.json`. A relation whose columns are the ones
//! stored keeps its version after a restart; changed columns make the next version.

use super::SourceError;
use crate::sink::object_store_for;
use object_store::ObjectStore;
use object_store::path::Path;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use weir_sdk::Column;

#[derive(Default)]
struct Known {
    /// Relation OID to (version, columns).
    relations: BTreeMap<u32, (u32, Vec<Column>)>,
    dirty: bool,
}

/// The versions known to the pipeline; cheap to clone and shared by the decoder, the
/// snapshot and backfills.
#[derive(Clone, Default)]
pub struct SchemaVersions {
    known: Arc<Mutex<Known>>,
    store: Option<(Arc<dyn ObjectStore>, Path)>,
    local: Option<crate::sink::LocalSync>,
}

impl std::fmt::Debug for SchemaVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("SchemaVersions")
            .field("relations", &known.relations.len())
            .field("stored", &self.store.is_some())
            .finish()
    }
}

impl SchemaVersions {
    /// Versions that start at 1 every run (no state location).
    pub fn in_memory() -> SchemaVersions {
        SchemaVersions::default()
    }

    /// Loads the stored versions.
    pub async fn load(state_url: &str, slot: &str) -> Result<SchemaVersions, SourceError> {
        let err = |e: String| SourceError::Sql {
            context: "reading schema versions".into(),
            message: e,
        };
        let (store, base) = object_store_for(state_url).map_err(|e| err(e.to_string()))?;
        let path = base.join("_weir").join(slot).join("schemas.json");
        let relations = crate::sink::get_state(store.as_ref(), &path)
            .await
            .map_err(err)?
            .unwrap_or_default();
        Ok(SchemaVersions {
            known: Arc::new(Mutex::new(Known {
                relations,
                dirty: false,
            })),
            store: Some((store, path)),
            local: crate::sink::LocalSync::for_url(state_url),
        })
    }

    /// The version of relation `id` with these columns: the stored one when the columns
    /// are the same, else the next (1 for a relation never seen).
    pub fn version_for(&self, id: u32, columns: &[Column]) -> u32 {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let version = match known.relations.get(&id) {
            Some((v, cols)) if cols == columns => return *v,
            Some((v, _)) => v + 1,
            None => 1,
        };
        known.relations.insert(id, (version, columns.to_vec()));
        known.dirty = true;
        version
    }

    /// Writes the versions when one has been added since the last save.
    pub async fn save_if_changed(&self) -> Result<(), SourceError> {
        let Some((store, path)) = &self.store else {
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
        crate::sink::put_state(store.as_ref(), path, &relations, self.local.as_ref())
            .await
            .map_err(|e| SourceError::Sql {
                context: format!("writing {path}"),
                message: e,
            })
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
