//! Events as JSON, the one shape weir uses wherever a change leaves as JSON (the
//! `webhook` sink's request bodies, the `stdout` sink's lines):
//!
//! ```json
//! {"op": "u", "schema": "public", "table": "orders", "commit_lsn": "0/16B4F20", "seq": 0,
//!  "xid": 750, "commit_ts": 1764633600000000, "before": {"id": 7}, "after": {"id": 7, ...}}
//! ```
//!
//! `before` and `after` are objects by column name (or null); `unchanged` lists columns
//! whose unchanged TOAST value was not sent. Integers, floats and booleans are JSON
//! numbers and booleans; NaN and the infinities are the strings `"NaN"`, `"Infinity"`,
//! `"-Infinity"`; `bytea` is PostgreSQL's hex text (`"\\x0a0b"`); every other type is
//! PostgreSQL's text. A [`Value::List`] is an array, a [`Value::Struct`] an object.

use crate::{Event, Relation, Value};
use serde_json::{Map, Value as Json, json};

/// One event of `rel` as JSON.
pub fn event(rel: &Relation, e: &Event) -> Json {
    let row = |values: &Option<Vec<Value>>| match values {
        None => Json::Null,
        Some(values) => Json::Object(
            rel.columns
                .iter()
                .zip(values)
                .map(|(c, v)| (c.name.clone(), value(v)))
                .collect::<Map<_, _>>(),
        ),
    };
    let mut event = json!({
        "op": e.op.code(),
        "schema": rel.schema,
        "table": rel.table,
        "commit_lsn": lsn(e.commit_lsn),
        "seq": e.seq,
        "xid": e.xid,
        "commit_ts": e.commit_ts,
        "before": row(&e.before),
        "after": row(&e.after),
    });
    if !e.unchanged.is_empty() {
        let names: Vec<Json> = e
            .unchanged
            .iter()
            .filter_map(|&i| rel.columns.get(i as usize))
            .map(|c| Json::String(c.name.clone()))
            .collect();
        event["unchanged"] = Json::Array(names);
    }
    event
}

/// `X/X`, as PostgreSQL writes an LSN.
pub fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// A column value as JSON.
pub fn value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) if f.is_finite() => Json::from(*f),
        Value::Float(f) if f.is_nan() => Json::String("NaN".into()),
        Value::Float(f) if *f > 0.0 => Json::String("Infinity".into()),
        Value::Float(_) => Json::String("-Infinity".into()),
        Value::Text(s) => Json::String(s.clone()),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Json::String(format!("\\x{hex}"))
        }
        Value::List(v) => Json::Array(v.iter().map(value).collect()),
        Value::Struct(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}
