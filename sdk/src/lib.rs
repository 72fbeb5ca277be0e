//! `weir-sdk`: write weir plugins in Rust.
//!
//! A transform is one type implementing [`Transform`]; [`export_transform!`] turns it
//! into the component export (build with `cargo build --target wasm32-wasip2`, feature
//! `guest`). This one drops a table's events and upper-cases a column:
//!
//! ```
//! use weir_sdk::{Batch, PluginError, Transform, Value};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { drop_table: String, upper: String }
//!
//! struct Tidy(Config);
//!
//! impl Transform for Tidy {
//!     type Config = Config;
//!     fn init(config: Config) -> Result<Self, PluginError> { Ok(Tidy(config)) }
//!     fn process(&mut self, mut batch: Batch) -> Result<Batch, PluginError> {
//!         batch.retain(|rel, _| rel.table != self.0.drop_table);
//!         for (rel, event) in batch.events_mut() {
//!             let Some(i) = rel.column_index(&self.0.upper) else { continue };
//!             if let Some(Value::Text(s)) = event.after.as_mut().map(|row| &mut row[i]) {
//!                 *s = s.to_uppercase();
//!             }
//!         }
//!         Ok(batch)
//!     }
//! }
//! // weir_sdk::export_transform!(Tidy);  -- in the plugin crate, with feature "guest"
//! # let out = weir_sdk::plugin::testing::run::<Tidy>(r#"{"drop_table":"audit","upper":"status"}"#, Batch::default());
//! # assert!(out.unwrap().events.is_empty());
//! ```
//!
//! [`plugin::testing`] runs the same logic natively in `cargo test`.
//!
//! The rest of this crate is the batch layout: weir hands change events to plugins as a
//! [`Batch`] encoded as MessagePack, and this crate is the single definition of that
//! layout: the host encodes with it and plugins decode with it.
//!
//! ```
//! use weir_sdk::{Batch, Column, Event, Op, Relation, Value};
//!
//! let mut batch = Batch::default();
//! let rel = batch.push_relation(Relation {
//!     id: 16384,
//!     schema: "public".into(),
//!     table: "orders".into(),
//!     version: 1,
//!     columns: vec![
//!         Column::new("id", 20, "int8", true),
//!         Column::new("email", 25, "text", false),
//!     ],
//! });
//! batch.events.push(Event {
//!     op: Op::Insert,
//!     rel,
//!     commit_lsn: 0x16B4F20,
//!     seq: 0,
//!     xid: 742,
//!     commit_ts: 1_700_000_000_000_000,
//!     before: None,
//!     after: Some(vec![Value::Int(1), Value::Text("a@example.com".into())]),
//!     unchanged: vec![],
//! });
//!
//! let bytes = batch.encode();
//! let back = Batch::decode(&bytes).unwrap();
//! assert_eq!(back, batch);
//! assert_eq!(back.relation(&back.events[0]).table, "orders");
//! ```
//!
//! # Layout
//!
//! A batch is a MessagePack map with named fields (so plugins in any language can read it
//! with a stock MessagePack library):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `v` | int | layout version, currently [`LAYOUT_VERSION`] |
//! | `relations` | array of relation maps | the tables the events refer to |
//! | `events` | array of event maps | change events in commit order |
//!
//! A relation: `id` (PostgreSQL relation OID), `schema`, `table`, `version` (the schema
//! version, increments when the columns change), `columns` (array of `name`, `type_oid`,
//! `type_name`, `typmod`, `key`).
//!
//! An event: `op` (`"r"` snapshot read, `"c"` insert, `"u"` update, `"d"` delete, `"t"`
//! truncate), `rel` (index into `relations` of this batch), `commit_lsn`, `seq`, `xid`,
//! `commit_ts` (microseconds since the Unix epoch, UTC), `before` and `after` (arrays of
//! values positionally matching the relation's columns, or nil), and `unchanged` (indexes
//! of columns whose value PostgreSQL did not send because it is an unchanged TOAST value:
//! the slot holds nil, but the column kept its previous value).
//!
//! Values are MessagePack natives: nil, bool, int (int2/int4/int8/oid), float
//! (float4/float8), bin (bytea) and str for everything else, in PostgreSQL's own text
//! rendering (numeric, dates and times, uuid, json, ...), which is lossless.

mod codec;
#[cfg(feature = "guest")]
pub mod guest;
pub mod json;
pub mod pg;
pub mod plugin;

pub use plugin::{PluginError, Sink, Transform};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The batch layout version this crate reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// A batch of change events and the relations they refer to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Layout version ([`LAYOUT_VERSION`]).
    pub v: u32,
    /// Relations referred to by `events[].rel`.
    pub relations: Vec<Relation>,
    /// Change events in commit order.
    pub events: Vec<Event>,
    /// Set by weir on the batches it gives sinks: the highest `commit_lsn` whose
    /// transaction is complete in this batch or an earlier one (0 when none). A
    /// transaction larger than a batch spans several batches, so a sink that stores its
    /// position for a restart stores this, never a later `commit_lsn`.
    #[serde(default)]
    pub committed: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            v: LAYOUT_VERSION,
            relations: Vec::new(),
            events: Vec::new(),
            committed: 0,
        }
    }
}

impl Batch {
    /// Encodes the batch as MessagePack with named fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.events.len() * 64);
        self.encode_into(&mut out);
        out
    }

    /// Encodes the batch into `out`, reusing its allocation.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        codec::encode(self, out);
    }

    /// Decodes a batch, checking its layout version.
    pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
        let (batch, _) = codec::decode(bytes, codec::Rows::Keep)?;
        Batch::check_version(batch.v).map(|()| batch)
    }

    /// Checks that `bytes` decode as a batch, as [`Batch::decode`] does, without
    /// building its events; returns how many it holds. For handing a plugin's output to
    /// the next one as it is.
    pub fn check(bytes: &[u8]) -> Result<usize, DecodeError> {
        let (batch, events) = codec::decode(bytes, codec::Rows::Check)?;
        Batch::check_version(batch.v).map(|()| events)
    }

    fn check_version(v: u32) -> Result<(), DecodeError> {
        if v != LAYOUT_VERSION {
            return Err(DecodeError(format!(
                "batch layout version {v} is not supported (expected {LAYOUT_VERSION})"
            )));
        }
        Ok(())
    }

    /// Adds a relation and returns its index for [`Event::rel`].
    pub fn push_relation(&mut self, relation: Relation) -> u32 {
        self.relations.push(relation);
        (self.relations.len() - 1) as u32
    }

    /// The relation an event refers to.
    pub fn relation(&self, event: &Event) -> &Relation {
        &self.relations[event.rel as usize]
    }

    /// Each event with its relation, for reading.
    pub fn events(&self) -> impl Iterator<Item = (&Relation, &Event)> {
        self.events
            .iter()
            .map(|e| (&self.relations[e.rel as usize], e))
    }

    /// Each event with its relation, for changing the event.
    pub fn events_mut(&mut self) -> impl Iterator<Item = (&Relation, &mut Event)> {
        let relations = &self.relations;
        self.events
            .iter_mut()
            .map(move |e| (&relations[e.rel as usize], e))
    }

    /// Keeps only the events for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Relation, &Event) -> bool) {
        let relations = &self.relations;
        self.events.retain(|e| keep(&relations[e.rel as usize], e));
    }
}

/// A batch that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed batch: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// A source table at one schema version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    /// PostgreSQL relation OID.
    pub id: u32,
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Schema version: starts at 1, increments each time the columns change.
    pub version: u32,
    /// Columns in table order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// The index of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// PostgreSQL type OID.
    pub type_oid: u32,
    /// PostgreSQL type name (`int8`, `text`, `numeric`, ...).
    pub type_name: String,
    /// Type modifier (`atttypmod`), -1 when none.
    pub typmod: i32,
    /// Part of the replica identity (usually the primary key).
    pub key: bool,
}

/// The OIDs of the built-in PostgreSQL types weir treats specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// The OID of a common built-in PostgreSQL type, by its name (`int8`, `text`, ...):
/// for building relations by hand, in tests and sample events.
pub fn builtin_type_oid(name: &str) -> Option<u32> {
    Some(match name {
        "bool" => oid::BOOL,
        "bytea" => oid::BYTEA,
        "int8" => oid::INT8,
        "int2" => oid::INT2,
        "int4" => oid::INT4,
        "text" => oid::TEXT,
        "json" => oid::JSON,
        "float4" => oid::FLOAT4,
        "float8" => oid::FLOAT8,
        "varchar" => oid::VARCHAR,
        "date" => oid::DATE,
        "timestamp" => oid::TIMESTAMP,
        "timestamptz" => oid::TIMESTAMPTZ,
        "numeric" => oid::NUMERIC,
        "uuid" => oid::UUID,
        "jsonb" => oid::JSONB,
        _ => return None,
    })
}

impl Column {
    /// A column without a type modifier.
    pub fn new(name: &str, type_oid: u32, type_name: &str, key: bool) -> Column {
        Column {
            name: name.into(),
            type_oid,
            type_name: type_name.into(),
            typmod: -1,
            key,
        }
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    /// Row read by a snapshot.
    #[serde(rename = "r")]
    Read,
    /// Row inserted.
    #[serde(rename = "c")]
    Insert,
    /// Row updated.
    #[serde(rename = "u")]
    Update,
    /// Row deleted.
    #[serde(rename = "d")]
    Delete,
    /// Table truncated.
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    /// The one-letter code used in the batch layout and the changelog's `_cdc_op` column.
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// One change to one row (or, for a truncate, to a whole table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub op: Op,
    /// Index of the relation in [`Batch::relations`].
    pub rel: u32,
    /// LSN of the transaction's commit record.
    pub commit_lsn: u64,
    /// Ordinal of this change inside its transaction, from 0.
    pub seq: u32,
    /// Transaction id.
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch, UTC.
    pub commit_ts: i64,
    /// Old row: key columns, or the whole row under REPLICA IDENTITY FULL (`u`, `d`).
    pub before: Option<Vec<Value>>,
    /// New row (`r`, `c`, `u`).
    pub after: Option<Vec<Value>>,
    /// Columns of `after` whose value was not sent because it is an unchanged TOAST value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<u16>,
}

/// A column value.
///
/// Integer types arrive as [`Value::Int`], floats as [`Value::Float`], `bool` as
/// [`Value::Bool`], `bytea` as [`Value::Bytes`]; every other type as [`Value::Text`] in
/// PostgreSQL's text rendering, which is lossless (numeric keeps every digit, timestamps
/// keep microseconds).
///
/// A plugin whose manifest says `nested_types = true` is given arrays and multiranges as
/// [`Value::List`], composites, ranges and intervals as [`Value::Struct`], their elements
/// and fields mapped by the same rule (README, "Values in plugins"); other plugins get
/// these as text. A plugin may return either form.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL (or an unchanged TOAST value, see [`Event::unchanged`]).
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4`, `int8`, `oid`.
    Int(i64),
    /// `float4`, `float8` (NaN and infinities included).
    Float(f64),
    /// Any other type, in PostgreSQL's text rendering.
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// An array (a list of lists for more dimensions) or a multirange (a list of ranges).
    List(Vec<Value>),
    /// A composite's fields in declared order; a range's `lower`, `upper`,
    /// `lower_inclusive`, `upper_inclusive`, `empty`; an interval's `months`, `days`,
    /// `microseconds`.
    Struct(Vec<(String, Value)>),
}

impl Value {
    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The elements, if the value is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// A struct's field by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::List(v) => s.collect_seq(v),
            Value::Struct(fields) => s.collect_map(fields.iter().map(|(k, v)| (k, v))),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nil, bool, int, float, str, bin, array or map")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("integer {v} does not fit in i64")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Text(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
                Ok(Value::Bytes(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Value::List(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Value::Struct(out))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        let mut b = Batch::default();
        let rel = b.push_relation(Relation {
            id: 1,
            schema: "s".into(),
            table: "t".into(),
            version: 2,
            columns: vec![
                Column::new("a", 23, "int4", true),
                Column::new("b", 17, "bytea", false),
            ],
        });
        b.events.push(Event {
            op: Op::Update,
            rel,
            commit_lsn: u64::MAX >> 1,
            seq: 3,
            xid: 9,
            commit_ts: -5,
            before: Some(vec![Value::Int(-1), Value::Null]),
            after: Some(vec![Value::Int(i64::MIN), Value::Bytes(vec![0, 255])]),
            unchanged: vec![1],
        });
        b.events.push(Event {
            op: Op::Truncate,
            rel,
            commit_lsn: 1,
            seq: 0,
            xid: 1,
            commit_ts: 0,
            before: None,
            after: None,
            unchanged: vec![],
        });
        b
    }

    #[test]
    fn round_trips_every_value_kind() {
        let mut b = sample();
        b.events[0].after = Some(vec![
            Value::Bool(true),
            Value::Float(f64::INFINITY),
            Value::Text("1e400".into()),
            Value::Null,
            Value::List(vec![
                Value::List(vec![Value::Int(1), Value::Null]),
                Value::List(vec![]),
            ]),
            Value::Struct(vec![
                ("lower".into(), Value::Int(-3)),
                ("tags".into(), Value::List(vec![Value::Text("a".into())])),
                (
                    "inner".into(),
                    Value::Struct(vec![("b".into(), Value::Bytes(vec![1]))]),
                ),
            ]),
        ]);
        let bytes = b.encode();
        assert_eq!(Batch::decode(&bytes).unwrap(), b);
        assert_eq!(Batch::check(&bytes), Ok(2));
        assert_eq!(bytes, serde_encoded(&b), "as serde writes them");
    }

    #[test]
    fn a_value_nested_without_end_is_an_error_not_a_stack_overflow() {
        let mut b = sample();
        let mut deep = Value::Null;
        for _ in 0..100 {
            deep = Value::List(vec![deep]);
        }
        b.events[0].after = Some(vec![deep]);
        let err = Batch::decode(&b.encode()).unwrap_err();
        assert!(err.to_string().contains("nests deeper than"), "{err}");
        assert_eq!(Batch::check(&b.encode()), Err(err));
    }

    #[test]
    fn layout_uses_named_fields_and_letter_ops() {
        let bytes = sample().encode();
        let generic: rmpv_like::Generic = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(generic.events[0].op, "u");
        assert_eq!(generic.events[1].op, "t");
    }

    #[test]
    fn rejects_an_event_pointing_past_the_relations() {
        let mut b = sample();
        b.events[0].rel = 7;
        let err = Batch::decode(&b.encode()).unwrap_err();
        assert!(err.to_string().contains("refers to relation 7"), "{err}");
        assert_eq!(Batch::check(&b.encode()), Err(err));
    }

    #[test]
    fn rejects_another_layout_version() {
        let mut b = sample();
        b.v = 99;
        assert!(
            Batch::decode(&b.encode())
                .unwrap_err()
                .to_string()
                .contains("version 99")
        );
    }

    /// The batch through serde and rmp-serde, the codec this crate used before its own.
    fn serde_encoded(b: &Batch) -> Vec<u8> {
        let mut out = Vec::new();
        b.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
            .unwrap();
        out
    }

    /// A batch with values at every width boundary of MessagePack's formats.
    fn wide() -> Batch {
        let mut b = sample();
        let long = |n: usize| "é".repeat(n / 2);
        let mut values = vec![Value::Null, Value::Bool(false), Value::Float(-0.5)];
        for n in [
            0i64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_648,
            -2_147_483_649,
            i64::MIN,
        ] {
            values.push(Value::Int(n));
        }
        for n in [0, 31, 32, 255, 256, 65_535, 65_536] {
            values.push(Value::Text(long(n)));
            values.push(Value::Bytes(vec![7; n]));
        }
        b.events[0].after = Some(values);
        b.events[0].unchanged = (0..20).collect();
        b.committed = 42;
        b.relations[0].columns = (0..17)
            .map(|i| Column {
                typmod: -i,
                ..Column::new(&format!("c{i}"), 23, "int4", i == 0)
            })
            .collect();
        b
    }

    #[test]
    fn the_codec_writes_what_serde_wrote_and_reads_it_back() {
        for b in [sample(), wide(), Batch::default()] {
            let bytes = b.encode();
            assert_eq!(bytes, serde_encoded(&b), "byte for byte");
            assert_eq!(Batch::decode(&bytes).unwrap(), b);
        }
    }

    #[test]
    fn the_codec_reads_what_other_writers_may_write() {
        use serde_json::json;
        let b = sample();
        // Written by a generic encoder: fields in another order, unknown fields of every
        // shape, optional fields left out or nil.
        let other = json!({
            "events": [
                {"xid": 9, "seq": 3, "rel": 0, "op": "u", "commit_ts": -5,
                 "commit_lsn": u64::MAX >> 1, "unchanged": [1],
                 "after": [i64::MIN, null], "before": [-1, null],
                 "note": {"nested": [1, "x", {"deep": null}]}},
                {"op": "t", "rel": 0, "commit_lsn": 1, "seq": 0, "xid": 1, "commit_ts": 0,
                 "unchanged": null}
            ],
            "extra": [[]],
            "relations": [{"columns": [
                {"key": true, "typmod": -1, "type_name": "int4", "type_oid": 23, "name": "a"},
                {"name": "b", "type_oid": 17, "type_name": "bytea", "typmod": -1, "key": false}
            ], "version": 2, "table": "t", "schema": "s", "id": 1}],
            "v": 1
        });
        let bytes = rmp_serde::to_vec(&other).unwrap();
        let got = Batch::decode(&bytes).unwrap();
        assert_eq!(got.relations, b.relations);
        assert_eq!(
            got.events[1], b.events[1],
            "before, after and committed default"
        );
        assert_eq!(
            got.events[0].after,
            Some(vec![Value::Int(i64::MIN), Value::Null])
        );
        assert_eq!(got.events[0].unchanged, vec![1]);
        assert_eq!(got.committed, 0);

        // A float 32 is a float; a uint 64 above i64::MAX is not a value.
        let mut f32_value = serde_encoded(&sample());
        let at = f32_value
            .windows(2)
            .position(|w| w == [0x92, 0xff])
            .unwrap(); // before: [-1, nil]
        f32_value.splice(at + 1..at + 2, [0xca, 0x3f, 0xc0, 0, 0]);
        let got = Batch::decode(&f32_value).unwrap();
        assert_eq!(got.events[0].before.as_ref().unwrap()[0], Value::Float(1.5));
        let too_big = rmp_serde::to_vec(&json!({"v": 1, "relations": [], "events": [
            {"op": "c", "rel": 0, "commit_lsn": 1, "seq": 0, "xid": 1, "commit_ts": 0,
             "after": [u64::MAX]}]}))
        .unwrap();
        let err = Batch::decode(&too_big).unwrap_err().to_string();
        assert!(err.contains("does not fit in i64"), "{err}");
    }

    #[test]
    fn the_codec_names_what_is_wrong_and_never_panics_on_truncation() {
        let mut b = sample();
        b.events[0].after = Some(vec![
            Value::Bool(true),
            Value::Float(0.25),
            Value::Text("x".repeat(40)),
            Value::Null,
            Value::Bytes(vec![1; 300]),
            Value::Int(-40_000),
        ]);
        b.committed = 9;
        let bytes = b.encode();
        assert_eq!(Batch::check(&bytes), Ok(2));
        for end in 0..bytes.len() {
            let err = Batch::decode(&bytes[..end]).unwrap_err().to_string();
            assert!(err.starts_with("malformed batch: "), "{err}");
            assert!(Batch::check(&bytes[..end]).is_err(), "checked as decoded");
        }
        let mut trailing = bytes.clone();
        trailing.push(0xc0);
        assert!(
            Batch::decode(&trailing)
                .unwrap_err()
                .to_string()
                .contains("after the batch")
        );
        let no_op = rmp_serde::to_vec(&serde_json::json!({"v": 1, "relations": [], "events": [
            {"rel": 0, "commit_lsn": 1, "seq": 0, "xid": 1, "commit_ts": 0}]}))
        .unwrap();
        assert!(
            Batch::decode(&no_op)
                .unwrap_err()
                .to_string()
                .contains("missing field `op`")
        );
        let bad_op = rmp_serde::to_vec(&serde_json::json!({"v": 1, "relations": [], "events": [
            {"op": "x", "rel": 0, "commit_lsn": 1, "seq": 0, "xid": 1, "commit_ts": 0}]}))
        .unwrap();
        assert!(
            Batch::decode(&bad_op)
                .unwrap_err()
                .to_string()
                .contains("unknown op `x`")
        );
        // A huge array length in a few bytes allocates nothing.
        let huge = [
            0x83, 0xa1, b'v', 1, 0xa6, b'e', b'v', b'e', b'n', b't', b's', 0xdd, 0xff, 0xff, 0xff,
            0xff,
        ];
        assert!(
            Batch::decode(&huge)
                .unwrap_err()
                .to_string()
                .contains("ends early")
        );
    }

    /// A reader that knows nothing of the SDK's types, as a plugin in another language.
    mod rmpv_like {
        #[derive(serde::Deserialize)]
        pub struct Generic {
            pub events: Vec<GenericEvent>,
        }
        #[derive(serde::Deserialize)]
        pub struct GenericEvent {
            pub op: String,
        }
    }
}
