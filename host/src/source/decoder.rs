//! From pgoutput messages to canonical change events.
//!
//! Keeps the relation cache (with schema versions), the open transaction, and turns
//! tuples into [`Value`]s by column type.

use super::pgoutput::{Datum, Message, RelationMessage, Tuple};
use crate::batch::CommitPos;
use crate::batch::{Batcher, Signal};
use crate::config::TableName;
use crate::lsn::Lsn;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use weir_sdk::oid;
use weir_sdk::{Column, Event, Op, Relation, Value};

/// A protocol violation: the stream cannot be trusted past this point.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error("a change refers to relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("a change for {table} has {got} columns, its Relation message {expected}")]
    ColumnCount {
        table: String,
        got: usize,
        expected: usize,
    },
    #[error("a change arrived outside a transaction")]
    OutsideTransaction,
}

/// How a column's text is turned into a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Float,
    Bytea,
    Text,
}

pub(crate) fn kind(type_oid: u32) -> Kind {
    match type_oid {
        oid::BOOL => Kind::Bool,
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => Kind::Int,
        oid::FLOAT4 | oid::FLOAT8 => Kind::Float,
        oid::BYTEA => Kind::Bytea,
        _ => Kind::Text,
    }
}

struct RelEntry {
    relation: Arc<Relation>,
    captured: bool,
    kinds: Vec<Kind>,
    key_columns: Vec<usize>,
}

struct Tx {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    seq: u32,
    /// Already durable before a restart: its changes are dropped.
    skip: bool,
}

/// Decodes one replication stream.
pub struct Decoder {
    captured: HashSet<TableName>,
    /// Primary key columns per table, from the catalog; empty when the table has none.
    primary_keys: HashMap<TableName, Vec<String>>,
    type_names: HashMap<u32, String>,
    /// Domain type OID to its base type OID and typmod.
    domains: HashMap<u32, (u32, i32)>,
    versions: super::schemas::SchemaVersions,
    relations: HashMap<u32, RelEntry>,
    tx: Option<Tx>,
    /// Transactions committed at or before this LSN are already durable.
    skip_through: Lsn,
    /// Events emitted, for progress reporting.
    pub events: u64,
}

impl Decoder {
    pub fn new(
        captured: impl IntoIterator<Item = TableName>,
        primary_keys: HashMap<TableName, Vec<String>>,
        type_names: HashMap<u32, String>,
        resume: Option<CommitPos>,
    ) -> Decoder {
        Decoder {
            captured: captured.into_iter().collect(),
            primary_keys,
            type_names,
            domains: HashMap::new(),
            versions: super::schemas::SchemaVersions::in_memory(),
            relations: HashMap::new(),
            tx: None,
            skip_through: resume.map_or(Lsn::ZERO, |r| r.commit_lsn),
            events: 0,
        }
    }

    /// Schema versions shared with the rest of the pipeline (and kept across restarts).
    pub fn with_versions(mut self, versions: super::schemas::SchemaVersions) -> Decoder {
        self.versions = versions;
        self
    }

    /// Columns of a domain type are typed as the domain's base type.
    pub fn with_domains(mut self, domains: HashMap<u32, (u32, i32)>) -> Decoder {
        self.domains = domains;
        self
    }

    /// Applies one message; events go into `batcher`.
    pub fn apply(&mut self, msg: Message<'_>, batcher: &mut Batcher) -> Result<(), DecoderError> {
        match msg {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                let skip = final_lsn <= self.skip_through;
                self.tx = Some(Tx {
                    xid,
                    commit_lsn: final_lsn,
                    commit_ts,
                    seq: 0,
                    skip,
                });
                batcher.begin();
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.tx = None;
                batcher.commit(CommitPos {
                    commit_lsn,
                    end_lsn,
                });
            }
            Message::Relation(rel) => self.relation(rel, batcher),
            Message::Type {
                oid,
                namespace,
                name,
            } => self.type_name(oid, namespace, name),
            Message::Insert { rel, new } => self.insert(rel, &new, batcher)?,
            Message::Update { rel, old, new } => self.update(rel, old.as_ref(), &new, batcher)?,
            Message::Delete { rel, old } => self.delete(rel, &old, batcher)?,
            Message::Truncate { rels, .. } => self.truncate(&rels, batcher)?,
            Message::Origin { .. } | Message::Message { .. } => {}
        }
        Ok(())
    }

    /// Names a type as the catalog does: bare in `pg_catalog`, qualified elsewhere.
    fn type_name(&mut self, oid: u32, namespace: &str, name: &str) {
        let name = if namespace == "pg_catalog" {
            name.to_owned()
        } else {
            format!("{namespace}.{name}")
        };
        self.type_names.insert(oid, name);
    }

    fn insert(
        &mut self,
        rel: u32,
        new: &Tuple<'_>,
        batcher: &mut Batcher,
    ) -> Result<(), DecoderError> {
        let Some(entry) = self.entry(rel)? else {
            return Ok(());
        };
        let (after, unchanged, bytes) = values(entry, new)?;
        self.emit(
            rel,
            Op::Insert,
            None,
            Some(after),
            unchanged,
            bytes,
            batcher,
        )
    }

    fn update(
        &mut self,
        rel: u32,
        old: Option<&Tuple<'_>>,
        new: &Tuple<'_>,
        batcher: &mut Batcher,
    ) -> Result<(), DecoderError> {
        let Some(entry) = self.entry(rel)? else {
            return Ok(());
        };
        let (after, unchanged, bytes) = values(entry, new)?;
        let before = old
            .map(|t| values(entry, t).map(|v| (v.0, v.2)))
            .transpose()?;
        let key_changed = before.as_ref().is_some_and(|(b, _)| {
            entry
                .key_columns
                .iter()
                .any(|&i| b[i] != after[i] && !b[i].is_null())
        });
        match before {
            // The row moved to a new key: the old key is deleted, the new row
            // inserted, so a reader applying ops by key keeps no stale row.
            Some((before, before_bytes)) if key_changed => {
                self.emit(
                    rel,
                    Op::Delete,
                    Some(before),
                    None,
                    vec![],
                    before_bytes,
                    batcher,
                )?;
                self.emit(
                    rel,
                    Op::Insert,
                    None,
                    Some(after),
                    unchanged,
                    bytes,
                    batcher,
                )
            }
            before => {
                let before = before.map(|b| b.0);
                self.emit(
                    rel,
                    Op::Update,
                    before,
                    Some(after),
                    unchanged,
                    bytes,
                    batcher,
                )
            }
        }
    }

    fn delete(
        &mut self,
        rel: u32,
        old: &Tuple<'_>,
        batcher: &mut Batcher,
    ) -> Result<(), DecoderError> {
        let Some(entry) = self.entry(rel)? else {
            return Ok(());
        };
        let (before, _, bytes) = values(entry, old)?;
        self.emit(rel, Op::Delete, Some(before), None, vec![], bytes, batcher)
    }

    fn truncate(&mut self, rels: &[u32], batcher: &mut Batcher) -> Result<(), DecoderError> {
        for &rel in rels {
            if self.entry(rel)?.is_some() {
                self.emit(rel, Op::Truncate, None, None, vec![], 0, batcher)?;
            }
        }
        Ok(())
    }

    /// The cache entry of a captured relation; `None` for relations outside `tables`.
    fn entry(&self, rel: u32) -> Result<Option<&RelEntry>, DecoderError> {
        let entry = self
            .relations
            .get(&rel)
            .ok_or(DecoderError::UnknownRelation(rel))?;
        Ok(entry.captured.then_some(entry))
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        rel: u32,
        op: Op,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
        unchanged: Vec<u16>,
        bytes: u64,
        batcher: &mut Batcher,
    ) -> Result<(), DecoderError> {
        let tx = self.tx.as_mut().ok_or(DecoderError::OutsideTransaction)?;
        if tx.skip {
            return Ok(());
        }
        let event = Event {
            op,
            rel: 0,
            commit_lsn: tx.commit_lsn.0,
            seq: tx.seq,
            xid: tx.xid,
            commit_ts: tx.commit_ts,
            before,
            after,
            unchanged,
        };
        tx.seq += 1;
        self.events += 1;
        batcher.push(&self.relations[&rel].relation, event, bytes);
        Ok(())
    }

    fn relation(&mut self, msg: RelationMessage<'_>, batcher: &mut Batcher) {
        let table = TableName {
            schema: msg.namespace.to_owned(),
            table: msg.name.to_owned(),
        };
        let pk = self.primary_keys.get(&table).filter(|pk| !pk.is_empty());
        let columns: Vec<Column> = msg
            .columns
            .iter()
            .map(|c| {
                let (type_oid, typmod) = base_type(&self.domains, c.type_oid, c.typmod);
                Column {
                    name: c.name.to_owned(),
                    type_oid,
                    type_name: self
                        .type_names
                        .get(&c.type_oid)
                        .cloned()
                        .unwrap_or_else(|| builtin_type_name(c.type_oid)),
                    typmod,
                    key: match pk {
                        Some(pk) => pk.iter().any(|k| k == c.name),
                        None => c.key,
                    },
                }
            })
            .collect();
        let (version, was) = self.versions.change(msg.id, &columns);
        if was.as_ref().is_some_and(|w| *w == columns) && self.captured.contains(&table) {
            tracing::info!(
                table = %table,
                version,
                types = %super::types::shape(&columns),
                "A type the table uses has a new structure: new files carry the new schema."
            );
        } else if let Some(was) = was
            && self.captured.contains(&table)
        {
            let names = |cols: &[Column]| {
                cols.iter()
                    .map(|c| format!("{} {}", c.name, c.type_name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            tracing::info!(
                table = %table,
                version,
                columns = %names(&columns),
                was = %names(&was),
                "The table's columns changed: new files carry the new schema."
            );
            let added: Vec<String> = columns
                .iter()
                .filter(|c| !was.iter().any(|w| w.name == c.name))
                .map(|c| c.name.clone())
                .collect();
            if !added.is_empty() {
                // Rows from before hold the columns' default without a change saying so:
                // the backfills decide whether they must be read again.
                let lsn = self.tx.as_ref().map_or(Lsn::ZERO, |t| t.commit_lsn);
                let signal = Signal::ColumnsAdded {
                    table: table.clone(),
                    columns: added,
                };
                batcher.marker(lsn, signal);
            }
        }
        let entry = RelEntry {
            kinds: columns.iter().map(|c| kind(c.type_oid)).collect(),
            key_columns: columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect(),
            captured: self.captured.contains(&table),
            relation: Arc::new(Relation {
                id: msg.id,
                schema: table.schema,
                table: table.table,
                version,
                columns,
            }),
        };
        self.relations.insert(msg.id, entry);
    }
}

/// A tuple's values, the indexes of unchanged TOAST columns, and the bytes it carried.
fn values(
    entry: &RelEntry,
    tuple: &Tuple<'_>,
) -> Result<(Vec<Value>, Vec<u16>, u64), DecoderError> {
    if tuple.0.len() != entry.kinds.len() {
        return Err(DecoderError::ColumnCount {
            table: entry.relation.qualified_name(),
            got: tuple.0.len(),
            expected: entry.kinds.len(),
        });
    }
    let mut unchanged = Vec::new();
    let mut bytes = 0u64;
    let values = tuple
        .0
        .iter()
        .zip(&entry.kinds)
        .enumerate()
        .map(|(i, (datum, kind))| match datum {
            Datum::Null => Value::Null,
            Datum::Unchanged => {
                unchanged.push(i as u16);
                Value::Null
            }
            Datum::Binary(b) => {
                bytes += b.len() as u64;
                Value::Bytes(b.to_vec())
            }
            Datum::Text(t) => {
                bytes += t.len() as u64;
                text_value(t, *kind)
            }
        })
        .collect();
    Ok((values, unchanged, bytes))
}

pub(crate) fn text_value(t: &[u8], kind: Kind) -> Value {
    let as_text = || match std::str::from_utf8(t) {
        Ok(s) => Value::Text(s.to_owned()),
        // Not UTF-8 (a database in another encoding): keep the exact bytes.
        Err(_) => Value::Bytes(t.to_vec()),
    };
    let s = match std::str::from_utf8(t) {
        Ok(s) => s,
        Err(_) => return as_text(),
    };
    match kind {
        Kind::Bool => Value::Bool(s == "t"),
        Kind::Int => s.parse().map(Value::Int).unwrap_or_else(|_| as_text()),
        Kind::Float => s.parse().map(Value::Float).unwrap_or_else(|_| as_text()),
        Kind::Bytea => s
            .strip_prefix("\\x")
            .and_then(decode_hex)
            .map(Value::Bytes)
            .unwrap_or_else(as_text),
        Kind::Text => as_text(),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Names of common built-in types; others are looked up in the catalog at start.
/// The type a column is written as: a domain's base type (with the domain's typmod when
/// the column has none), any other type itself. The column keeps the domain's name.
pub fn base_type(domains: &HashMap<u32, (u32, i32)>, type_oid: u32, typmod: i32) -> (u32, i32) {
    match domains.get(&type_oid) {
        Some(&(base, base_typmod)) => (base, if typmod >= 0 { typmod } else { base_typmod }),
        None => (type_oid, typmod),
    }
}

pub fn builtin_type_name(type_oid: u32) -> String {
    let name = match type_oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        700 => "float4",
        701 => "float8",
        790 => "money",
        869 => "inet",
        650 => "cidr",
        829 => "macaddr",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1266 => "timetz",
        1560 => "bit",
        1562 => "varbit",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        // An array of a built-in type is named after its element, as PostgreSQL does.
        _ => {
            return match crate::sink::columns::array_element(type_oid) {
                Some(element) => format!("_{}", builtin_type_name(element)),
                None => format!("oid:{type_oid}"),
            };
        }
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::RelationColumn;
    use super::*;
    use crate::config::BatchConfig;

    fn table(name: &str) -> TableName {
        name.parse().unwrap()
    }

    fn decoder() -> Decoder {
        let pks = HashMap::from([(table("public.t"), vec!["id".to_string()])]);
        Decoder::new([table("public.t")], pks, HashMap::new(), None)
    }

    fn relation(id: u32, name: &'static str, extra: bool) -> Message<'static> {
        let mut columns = vec![
            RelationColumn {
                key: true,
                name: "id",
                type_oid: 20,
                typmod: -1,
            },
            RelationColumn {
                key: false,
                name: "body",
                type_oid: 25,
                typmod: -1,
            },
        ];
        if extra {
            columns.push(RelationColumn {
                key: false,
                name: "raw",
                type_oid: 17,
                typmod: -1,
            });
        }
        Message::Relation(RelationMessage {
            id,
            namespace: "public",
            name,
            replica_identity: b'd',
            columns,
        })
    }

    fn begin(lsn: u64) -> Message<'static> {
        Message::Begin {
            final_lsn: Lsn(lsn),
            commit_ts: 0,
            xid: 9,
        }
    }

    fn commit(lsn: u64) -> Message<'static> {
        Message::Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_ts: 0,
        }
    }

    fn tuple(vals: &[Option<&'static str>]) -> Tuple<'static> {
        Tuple(
            vals.iter()
                .map(|v| v.map_or(Datum::Null, |s| Datum::Text(s.as_bytes())))
                .collect(),
        )
    }

    fn run(d: &mut Decoder, msgs: Vec<Message<'static>>) -> Vec<Event> {
        let mut b = Batcher::new(BatchConfig::default());
        for m in msgs {
            d.apply(m, &mut b).unwrap();
        }
        b.cut().batch.events
    }

    #[test]
    fn inserts_updates_deletes_truncates_in_order_with_seq() {
        let mut d = decoder();
        let events = run(
            &mut d,
            vec![
                relation(1, "t", false),
                begin(100),
                Message::Insert {
                    rel: 1,
                    new: tuple(&[Some("1"), Some("a")]),
                },
                Message::Update {
                    rel: 1,
                    old: None,
                    new: tuple(&[Some("1"), Some("b")]),
                },
                Message::Delete {
                    rel: 1,
                    old: tuple(&[Some("1"), None]),
                },
                Message::Truncate {
                    options: 0,
                    rels: vec![1],
                },
                commit(100),
            ],
        );
        let ops: Vec<_> = events.iter().map(|e| (e.op, e.seq, e.commit_lsn)).collect();
        assert_eq!(
            ops,
            vec![
                (Op::Insert, 0, 100),
                (Op::Update, 1, 100),
                (Op::Delete, 2, 100),
                (Op::Truncate, 3, 100)
            ]
        );
        assert_eq!(
            events[0].after.as_ref().unwrap(),
            &vec![Value::Int(1), Value::Text("a".into())]
        );
        assert_eq!(events[2].before.as_ref().unwrap()[0], Value::Int(1));
    }

    #[test]
    fn an_update_that_changes_the_key_becomes_delete_then_insert() {
        let mut d = decoder();
        let events = run(
            &mut d,
            vec![
                relation(1, "t", false),
                begin(100),
                Message::Update {
                    rel: 1,
                    old: Some(tuple(&[Some("1"), None])),
                    new: tuple(&[Some("2"), Some("x")]),
                },
                commit(100),
            ],
        );
        assert_eq!(
            events.iter().map(|e| (e.op, e.seq)).collect::<Vec<_>>(),
            vec![(Op::Delete, 0), (Op::Insert, 1)]
        );
        assert_eq!(events[0].before.as_ref().unwrap()[0], Value::Int(1));
    }

    #[test]
    fn tables_outside_the_configuration_are_ignored_and_toast_is_marked() {
        let mut d = decoder();
        let events = run(
            &mut d,
            vec![
                relation(1, "t", false),
                relation(2, "other", false),
                begin(100),
                Message::Insert {
                    rel: 2,
                    new: tuple(&[Some("1"), Some("a")]),
                },
                Message::Update {
                    rel: 1,
                    old: None,
                    new: Tuple(vec![Datum::Text(b"1"), Datum::Unchanged]),
                },
                commit(100),
            ],
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].unchanged, vec![1]);
    }

    #[test]
    fn schema_version_increments_only_when_columns_change() {
        let mut d = decoder();
        let events = run(
            &mut d,
            vec![
                relation(1, "t", false),
                relation(1, "t", false),
                begin(100),
                Message::Insert {
                    rel: 1,
                    new: tuple(&[Some("1"), Some("a")]),
                },
                commit(100),
                relation(1, "t", true),
                begin(200),
                Message::Insert {
                    rel: 1,
                    new: Tuple(vec![
                        Datum::Text(b"2"),
                        Datum::Null,
                        Datum::Text(b"\\x00ff"),
                    ]),
                },
                commit(200),
            ],
        );
        assert_eq!(d.relations[&1].relation.version, 2);
        assert_eq!(
            events[1].after.as_ref().unwrap()[2],
            Value::Bytes(vec![0, 0xff])
        );
    }

    #[test]
    fn transactions_at_or_before_the_resume_point_are_dropped() {
        let pks = HashMap::new();
        let resume = CommitPos {
            commit_lsn: Lsn(100),
            end_lsn: Lsn(108),
        };
        let mut d = Decoder::new([table("public.t")], pks, HashMap::new(), Some(resume));
        let events = run(
            &mut d,
            vec![
                relation(1, "t", false),
                begin(100),
                Message::Insert {
                    rel: 1,
                    new: tuple(&[Some("1"), Some("a")]),
                },
                commit(100),
                begin(200),
                Message::Insert {
                    rel: 1,
                    new: tuple(&[Some("2"), Some("b")]),
                },
                commit(200),
            ],
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].commit_lsn, 200);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut d = decoder();
        let mut b = Batcher::new(BatchConfig::default());
        let err = d
            .apply(
                Message::Insert {
                    rel: 5,
                    new: tuple(&[]),
                },
                &mut b,
            )
            .unwrap_err();
        assert!(matches!(err, DecoderError::UnknownRelation(5)));
        d.apply(relation(1, "t", false), &mut b).unwrap();
        d.apply(begin(1), &mut b).unwrap();
        let err = d
            .apply(
                Message::Insert {
                    rel: 1,
                    new: tuple(&[Some("1")]),
                },
                &mut b,
            )
            .unwrap_err();
        assert!(err.to_string().contains("has 1 columns"), "{err}");
    }
}
