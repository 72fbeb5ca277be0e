//! The catalog side of the Iceberg sink: connecting, naming tables, and the properties
//! and snapshot summaries in which weir keeps its position.

use super::super::error::SinkError;
use crate::batch::CommitPos;
use crate::config::{CatalogConfig, IcebergSinkConfig};
use crate::lsn::Lsn;
use crate::storage::StorageError;
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use std::collections::HashMap;
use std::sync::Arc;

/// Snapshot summary keys of weir's commits.
pub const SUMMARY_COMMIT_LSN: &str = "weir.commit-lsn";
pub const SUMMARY_END_LSN: &str = "weir.end-lsn";
pub const SUMMARY_SLOT: &str = "weir.slot";
/// Marks a commit of replayed dead letters.
pub const SUMMARY_REPLAY: &str = "weir.replay";
/// Table properties naming the source table and the slot that writes it.
pub const PROP_SOURCE: &str = "weir.source-table";
pub const PROP_SLOT: &str = "weir.slot";
/// Table property: the sink's position when the table was created (`<commit> <end>`):
/// the table holds every change up to it, having had none.
pub const PROP_CREATED_AFTER: &str = "weir.created-after";

pub(super) fn iceberg_err(table: impl std::fmt::Display, source: iceberg::Error) -> SinkError {
    SinkError::Iceberg {
        table: table.to_string(),
        source,
    }
}

/// The table cannot be this sink's: another source table or pipeline owns it.
pub(super) fn not_ours(table: impl std::fmt::Display, message: String) -> SinkError {
    SinkError::Config {
        what: table.to_string(),
        message,
    }
}

/// Connects to the configured catalog. The SQL catalog's SQLite file is created when
/// missing.
pub async fn connect(config: &IcebergSinkConfig) -> Result<Arc<dyn Catalog>, SinkError> {
    let factory = Arc::new(super::storage::ObjectStorageFactory);
    let catalog_err = |source: iceberg::Error| SinkError::Catalog {
        url: config.warehouse.clone(),
        source,
    };
    match &config.catalog {
        CatalogConfig::Sql { path, name } => {
            let path = sqlite_path(config, path.as_deref())?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| StorageError::Local {
                    op: "creating",
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
                .uri(format!("sqlite://{}?mode=rwc", path.display()))
                .warehouse_location(config.warehouse.trim_end_matches('/'))
                .sql_bind_style(iceberg_catalog_sql::SqlBindStyle::QMark)
                .with_storage_factory(factory)
                .load(name, HashMap::new())
                .await
                .map_err(catalog_err)?;
            Ok(Arc::new(catalog))
        }
        CatalogConfig::Rest {
            uri,
            warehouse,
            credential,
            token,
            name,
        } => {
            let mut props = HashMap::from([("uri".to_string(), uri.clone())]);
            let optional = [
                ("warehouse", warehouse),
                ("credential", credential),
                ("token", token),
            ];
            for (key, value) in optional {
                if let Some(v) = value {
                    props.insert(key.into(), v.clone());
                }
            }
            let catalog = iceberg_catalog_rest::RestCatalogBuilder::default()
                .with_storage_factory(factory)
                .load(name, props)
                .await
                .map_err(catalog_err)?;
            Ok(Arc::new(catalog))
        }
    }
}

/// Connects to the configured catalog if it exists: a SQL catalog whose SQLite file is
/// missing is `None`, and nothing is created.
pub async fn connect_existing(
    config: &IcebergSinkConfig,
) -> Result<Option<Arc<dyn Catalog>>, SinkError> {
    if let CatalogConfig::Sql { path, .. } = &config.catalog
        && !sqlite_path(config, path.as_deref())?.exists()
    {
        return Ok(None);
    }
    connect(config).await.map(Some)
}

/// The SQLite file of the SQL catalog: configured, or `<warehouse>/catalog.db`.
pub fn sqlite_path(
    config: &IcebergSinkConfig,
    path: Option<&std::path::Path>,
) -> Result<std::path::PathBuf, SinkError> {
    if let Some(p) = path {
        return Ok(p.to_path_buf());
    }
    let url = url::Url::parse(&config.warehouse).map_err(|e| StorageError::Url {
        url: config.warehouse.clone(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "file" => Ok(std::path::Path::new(url.path()).join("catalog.db")),
        _ => Err(StorageError::Url {
            url: config.warehouse.clone(),
            reason: "set [sink.catalog] path: the SQLite catalog must be a local file".into(),
        }
        .into()),
    }
}

/// The Iceberg table of a source table.
pub fn table_ident(config: &IcebergSinkConfig, schema: &str, table: &str) -> TableIdent {
    let namespace = config.namespace.as_deref().unwrap_or(schema);
    TableIdent::new(
        NamespaceIdent::new(namespace.to_string()),
        table.to_string(),
    )
}

/// Resolves a table named on the command line: `schema.table` of the source (mapped as
/// the sink maps it), or a bare source table name in `public`.
pub fn named_table(config: &IcebergSinkConfig, name: &str) -> TableIdent {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    table_ident(config, schema, table)
}

/// Where the table's changes stand: the position of its last weir commit, else the
/// sink's position when it was created (it held nothing before); `None` for a table
/// created before the sink had any position (its first commit is all there is).
pub fn table_position(table: &Table, slot: &str) -> Option<CommitPos> {
    committed_position(table, slot).or_else(|| {
        let text = table.metadata().properties().get(PROP_CREATED_AFTER)?;
        let (c, e) = text.split_once(' ')?;
        Some(CommitPos {
            commit_lsn: c.parse().ok()?,
            end_lsn: e.parse().ok()?,
        })
    })
}

/// The position the last weir commit of `slot` recorded in the table's current
/// history: the newest snapshot (following parents from the current one) whose summary
/// carries it. Other writers' snapshots are passed over; weir's compactions and replays
/// carry the position on.
pub fn committed_position(table: &Table, slot: &str) -> Option<CommitPos> {
    let metadata = table.metadata();
    let mut snapshot = metadata.current_snapshot().cloned();
    while let Some(s) = snapshot {
        let props = &s.summary().additional_properties;
        let ours = props.get(SUMMARY_SLOT).is_none_or(|v| v == slot);
        if ours
            && let (Some(c), Some(e)) = (props.get(SUMMARY_COMMIT_LSN), props.get(SUMMARY_END_LSN))
            && let (Ok(c), Ok(e)) = (c.parse::<Lsn>(), e.parse::<Lsn>())
        {
            return Some(CommitPos {
                commit_lsn: c,
                end_lsn: e,
            });
        }
        snapshot = s
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned());
    }
    None
}

/// The tables of the catalog (in `namespace`, or in every top-level namespace) that the
/// pipeline of `slot` writes.
pub async fn slot_tables(
    catalog: &dyn Catalog,
    namespace: Option<&str>,
    slot: &str,
) -> Result<Vec<Table>, SinkError> {
    let err = |e: iceberg::Error| iceberg_err("the Iceberg catalog", e);
    let namespaces = match namespace {
        Some(n) => {
            let ns = NamespaceIdent::new(n.to_string());
            match catalog.namespace_exists(&ns).await.map_err(err)? {
                true => vec![ns],
                false => vec![],
            }
        }
        None => catalog.list_namespaces(None).await.map_err(err)?,
    };
    let mut found = Vec::new();
    for ns in namespaces {
        for ident in catalog.list_tables(&ns).await.map_err(err)? {
            let table = catalog.load_table(&ident).await.map_err(err)?;
            if table
                .metadata()
                .properties()
                .get(PROP_SLOT)
                .is_some_and(|s| s == slot)
            {
                found.push(table);
            }
        }
    }
    Ok(found)
}
