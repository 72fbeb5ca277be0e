//! The target database's side of a projection: weir's own tables there (checkpoints and
//! the ledger), and each projected table, created from its source relation when missing,
//! checked against it when present, and changed with it when the source's columns change.

use super::{DeleteMode, Mode};
use crate::error::ErrorKind;
use crate::sink::SinkError;
use crate::source::{SourceError, quote_ident, sql_err};
use tokio_postgres::Client;
use weir_sdk::Relation;

/// Creates weir's schema and tables in the target when missing.
pub async fn ensure_weir_tables(client: &Client) -> Result<(), SinkError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE SCHEMA IF NOT EXISTS weir;
             CREATE TABLE IF NOT EXISTS weir.checkpoints (
                 pipeline text NOT NULL, slot text NOT NULL, sink text NOT NULL,
                 commit_lsn pg_lsn NOT NULL, end_lsn pg_lsn NOT NULL,
                 batch_id bigint NOT NULL, applied_at timestamptz NOT NULL,
                 PRIMARY KEY (pipeline, slot, sink));
             CREATE TABLE IF NOT EXISTS weir.projection_ledger (
                 projection text NOT NULL, commit_lsn pg_lsn NOT NULL,
                 evidence_id text NOT NULL, applied_at timestamptz NOT NULL,
                 batch_id bigint NOT NULL, source_xid bigint NOT NULL,
                 schema_version int NOT NULL, rows bigint NOT NULL,
                 PRIMARY KEY (projection, commit_lsn));",
        )
        .await
        .map_err(|e| {
            privilege_hint(
                sql_err("creating weir's schema and tables in the target")(e),
                "GRANT CREATE ON DATABASE <target database> TO <target user>",
            )
        })
}

/// A failed query of the target, in the sink's terms.
pub fn failed(context: &str) -> impl Fn(tokio_postgres::Error) -> SinkError + '_ {
    move |e| SinkError::target(sql_err(context)(e))
}

/// A refused right says how to grant it.
pub fn privilege_hint(e: SourceError, grant: &str) -> SinkError {
    match e.kind() {
        ErrorKind::Permission => SinkError::Config {
            what: "the PostgreSQL target".into(),
            message: format!("{e}; the target user needs the right: {grant}"),
        },
        _ => SinkError::target(e),
    }
}

/// The columns weir adds to a projected table.
pub const COMMIT_LSN: &str = "_cdc_commit_lsn";
pub const DELETED: &str = "_cdc_deleted";
/// weir's columns of a changelog-mode table, in order.
pub const CHANGELOG_COLUMNS: [&str; 6] = [
    "_cdc_op",
    COMMIT_LSN,
    "_cdc_seq",
    "_cdc_xid",
    "_cdc_commit_ts",
    "_cdc_unchanged",
];

/// A projected table at one relation version, ready to take rows.
#[derive(Debug, Clone)]
pub struct Target {
    /// `"schema"."table"` in the target.
    pub name: String,
    /// The relation's columns, quoted, in its order.
    pub columns: Vec<String>,
    /// Indexes (in `columns`) of the key.
    pub key: Vec<usize>,
    /// Target columns the source does not have any more (dropped there): null in rows
    /// written from now on.
    pub dropped: Vec<String>,
    /// The temporary table rows are copied into before they are applied.
    pub staging: String,
}

/// The target table's columns and their types, and its primary key, as it is now.
struct Existing {
    columns: Vec<(String, String)>,
    key: Vec<String>,
}

async fn existing(client: &Client, name: &str) -> Result<Option<Existing>, SinkError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce(array_position(i.indkey::int2[], a.attnum), -1)
             FROM pg_attribute a
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&name],
        )
        .await
        .map_err(failed("reading the target table's columns"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<(i32, String)> = Vec::new();
    let columns = rows
        .iter()
        .map(|r| {
            let (column, ty, pos): (String, String, i32) = (r.get(0), r.get(1), r.get(2));
            // int2vector's positions count from 0.
            if pos >= 0 {
                key.push((pos, column.clone()));
            }
            (column, ty)
        })
        .collect();
    key.sort();
    Ok(Some(Existing {
        columns,
        key: key.into_iter().map(|(_, c)| c).collect(),
    }))
}

/// The target's spelling of each column type of `relation`: built-in types have the same
/// OID on every server; others (enums, composites) go by name and must exist there.
async fn column_types(client: &Client, relation: &Relation) -> Result<Vec<String>, SinkError> {
    let oids: Vec<u32> = relation.columns.iter().map(|c| c.type_oid).collect();
    let mods: Vec<i32> = relation.columns.iter().map(|c| c.typmod).collect();
    let names: Vec<&str> = relation
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    let rows = client
        .query(
            "SELECT format_type(CASE WHEN o < 16384 THEN o ELSE to_regtype(t) END, m)
             FROM unnest($1::oid[], $2::int4[], $3::text[]) WITH ORDINALITY AS u(o, m, t, n)
             ORDER BY n",
            &[&oids, &mods, &names],
        )
        .await
        .map_err(failed("naming the column types in the target"))?;
    Ok(rows
        .iter()
        .zip(&relation.columns)
        .map(|(r, c)| {
            r.get::<_, Option<String>>(0).unwrap_or_else(|| {
                // Text holds every value of any type losslessly.
                tracing::warn!(table = %relation.qualified_name(), column = %c.name, r#type = %c.type_name, "The target database has no type of this name: the column is text there (create the type in the target first to keep it).");
                "text".into()
            })
        })
        .collect())
}

/// What a projection writes into each table.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub mode: Mode,
    pub deletes: DeleteMode,
}

impl Shape {
    /// weir's columns after the source's, with their types.
    fn weir_columns(&self) -> Vec<(&'static str, &'static str)> {
        match (self.mode, self.deletes) {
            (Mode::Changelog, _) => CHANGELOG_COLUMNS
                .iter()
                .zip([
                    "text NOT NULL",
                    "pg_lsn NOT NULL",
                    "int4 NOT NULL",
                    "int8 NOT NULL",
                    "timestamptz NOT NULL",
                    "text[]",
                ])
                .map(|(c, t)| (*c, t))
                .collect(),
            (Mode::Mirror, DeleteMode::Delete) => vec![(COMMIT_LSN, "pg_lsn NOT NULL")],
            (Mode::Mirror, DeleteMode::Tombstone) => vec![
                (COMMIT_LSN, "pg_lsn NOT NULL"),
                (DELETED, "boolean NOT NULL DEFAULT false"),
            ],
        }
    }
}

/// Makes the target table of `relation` ready: created when missing, checked against
/// the relation when present (same key; a column the source added is added, one whose
/// type changed is altered when the target can convert it).
pub async fn prepare(
    client: &Client,
    name: &str,
    schema: &str,
    relation: &Relation,
    shape: Shape,
    staging: String,
) -> Result<Target, SinkError> {
    let types = column_types(client, relation).await?;
    let key: Vec<usize> = (0..relation.columns.len())
        .filter(|&i| relation.columns[i].key)
        .collect();
    if matches!(shape.mode, Mode::Mirror) && key.is_empty() {
        return Err(mismatch(
            relation,
            name,
            "has no primary key: mode = \"mirror\" keeps rows by key; add a primary key to the source table, or use mode = \"changelog\" (with REPLICA IDENTITY FULL)".into(),
        ));
    }
    let quoted: Vec<String> = relation
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let dropped = match existing(client, name).await? {
        None => {
            create(client, name, schema, &quoted, &types, &key, shape).await?;
            Vec::new()
        }
        Some(found) => evolve(client, name, relation, &types, &found, shape).await?,
    };
    let mut definitions: Vec<String> = quoted
        .iter()
        .zip(&types)
        .map(|(c, t)| format!("{c} {t}"))
        .collect();
    definitions.extend(
        [
            "_cdc_commit_lsn pg_lsn",
            "_w_seq int4",
            "_w_op text",
            "_w_unchanged text",
        ]
        .map(String::from),
    );
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {staging} ({}) ON COMMIT DELETE ROWS",
            definitions.join(", ")
        ))
        .await
        .map_err(failed("creating the staging table"))?;
    Ok(Target {
        name: name.to_owned(),
        columns: quoted,
        key,
        dropped,
        staging,
    })
}

async fn create(
    client: &Client,
    name: &str,
    schema: &str,
    columns: &[String],
    types: &[String],
    key: &[usize],
    shape: Shape,
) -> Result<(), SinkError> {
    let mut definitions: Vec<String> = columns
        .iter()
        .zip(types)
        .map(|(c, t)| format!("{c} {t}"))
        .collect();
    definitions.extend(
        shape
            .weir_columns()
            .into_iter()
            .map(|(c, t)| format!("{c} {t}")),
    );
    let key = match shape.mode {
        Mode::Mirror => key.iter().map(|&i| columns[i].as_str()).collect::<Vec<_>>(),
        Mode::Changelog => vec![COMMIT_LSN, "_cdc_seq"],
    };
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {name} ({}, PRIMARY KEY ({}))",
        quote_ident(schema),
        definitions.join(", "),
        key.join(", ")
    );
    client.batch_execute(&sql).await.map_err(|e| {
        privilege_hint(
            sql_err(&format!("creating {name} in the target"))(e),
            &format!(
                "GRANT CREATE ON DATABASE <target database> TO <target user> (or create schema {} and grant CREATE on it)",
                quote_ident(schema)
            ),
        )
    })?;
    tracing::info!(table = name, "Created the projection's target table.");
    Ok(())
}

/// A change an existing target table needs to take the relation's rows.
pub enum Change {
    /// A column the source added: `ADD COLUMN`.
    Add { column: String, ty: String },
    /// A column whose type changed in the source: `ALTER COLUMN ... TYPE`.
    Retype {
        column: String,
        from: String,
        to: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add { column, ty } => write!(f, "add column {column} {ty}"),
            Change::Retype { column, from, to } => {
                write!(f, "change column {column} from {from} to {to}")
            }
        }
    }
}

/// Checks an existing target table against the relation: weir's columns and the key must
/// be there; returns the changes that bring it up to date (a type change only after a
/// schema change in the source: at first sight another type is a mismatch).
fn plan(
    name: &str,
    relation: &Relation,
    types: &[String],
    found: &Existing,
    shape: Shape,
) -> Result<Vec<Change>, SinkError> {
    let has = |c: &str| found.columns.iter().find(|(n, _)| n == c);
    for (column, _) in shape.weir_columns() {
        if has(column).is_none() {
            return Err(mismatch(
                relation,
                name,
                format!(
                    "exists without weir's column {column}: it was not made by a projection in this mode; drop it, or project into another schema"
                ),
            ));
        }
    }
    if matches!(shape.mode, Mode::Mirror) {
        let want: Vec<&str> = relation
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.as_str())
            .collect();
        if found.key != want {
            return Err(mismatch(
                relation,
                name,
                format!(
                    "has primary key ({}), the source has ({}); drop the target table or give it the source's key",
                    found.key.join(", "),
                    want.join(", ")
                ),
            ));
        }
    }
    let mut changes = Vec::new();
    for (column, ty) in relation.columns.iter().zip(types) {
        match has(&column.name) {
            None => changes.push(Change::Add {
                column: column.name.clone(),
                ty: ty.clone(),
            }),
            Some((_, now)) if now != ty && relation.version > 1 => changes.push(Change::Retype {
                column: column.name.clone(),
                from: now.clone(),
                to: ty.clone(),
            }),
            Some((_, now)) if now != ty => {
                return Err(mismatch(
                    relation,
                    name,
                    format!(
                        "column {} is {now} there, {ty} in the source; drop the target table or change the column",
                        column.name
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(changes)
}

/// Brings an existing target table up to date with the relation. Returns the target's
/// columns the relation does not have.
async fn evolve(
    client: &Client,
    name: &str,
    relation: &Relation,
    types: &[String],
    found: &Existing,
    shape: Shape,
) -> Result<Vec<String>, SinkError> {
    for change in plan(name, relation, types, found, shape)? {
        match &change {
            Change::Add { column, ty } => {
                alter(
                    client,
                    name,
                    &format!("ADD COLUMN {} {ty}", quote_ident(column)),
                )
                .await?;
            }
            Change::Retype { column, from, to } => {
                let quoted = quote_ident(column);
                let sql = format!("ALTER COLUMN {quoted} TYPE {to} USING {quoted}::{to}");
                alter(client, name, &sql).await.map_err(|e| {
                    mismatch(
                        relation,
                        name,
                        format!("column {column} is {from} there and {to} in the source now, and the target cannot convert it ({e}); change it by hand, then run again"),
                    )
                })?;
            }
        }
        tracing::info!(table = name, change = %change, "Changed the projection's target table as the source changed.");
    }
    let weir: Vec<&str> = shape.weir_columns().iter().map(|(c, _)| *c).collect();
    Ok(found
        .columns
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !weir.contains(&c.as_str()) && relation.column_index(c).is_none())
        .map(|c| quote_ident(c))
        .collect())
}

/// What a run would do to the target table of `relation` (nothing is changed): create
/// it, change it, or take it as it is; a mismatch is the error a run would stop with.
pub async fn describe(
    client: &Client,
    name: &str,
    relation: &Relation,
    shape: Shape,
) -> Result<String, SinkError> {
    let types = column_types(client, relation).await?;
    if matches!(shape.mode, Mode::Mirror) && !relation.columns.iter().any(|c| c.key) {
        return Err(mismatch(relation, name, "has no primary key in the source: mode = \"mirror\" keeps rows by key; add one, or use mode = \"changelog\"".into()));
    }
    Ok(match existing(client, name).await? {
        None => format!("would create {name}"),
        Some(found) => {
            let changes = plan(name, relation, &types, &found, shape)?;
            match changes.is_empty() {
                true => format!("{name} matches"),
                false => {
                    let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
                    format!("would change {name}: {}", changes.join(", "))
                }
            }
        }
    })
}

async fn alter(client: &Client, name: &str, change: &str) -> Result<(), SinkError> {
    client
        .batch_execute(&format!("ALTER TABLE {name} {change}"))
        .await
        .map_err(failed(&format!("ALTER TABLE {name} {change}")))
}

fn mismatch(relation: &Relation, name: &str, message: String) -> SinkError {
    let target = match name {
        "" => "the target".to_string(),
        name => format!("target table {name}"),
    };
    SinkError::Schema {
        table: relation.qualified_name(),
        source: format!("{target} {message}").into(),
    }
}
