//! `filter`: keep or drop events by table, op and column predicates.
//!
//! ```toml
//! [[transform]]
//! plugin = "plugins/filter"
//! config = { tables = ["public.orders"], ops = ["c", "u"], where = [
//!     { column = "status", in = ["paid", "shipped"] },
//!     { column = "amount", gt = 100 },
//! ] }
//! ```
//!
//! Comparisons: `eq`, `ne`, `in`, `not_in`, `gt`, `ge`, `lt`, `le`, `is_null`, and
//! `contains` for an array column (an element equal to the operand).
//!
//! An event is kept when its table is in `tables` (all tables when empty) and not in
//! `drop_tables`, its op is in `ops` (all when empty), and every `where` predicate holds
//! on its row (the new row; the old one for deletes). A predicate on a column the table
//! does not have does not apply. Truncates are filtered by table and op only.

use serde::Deserialize;
use serde_json::Value as Json;
use weir_sdk::{Batch, Event, Op, PluginError, Relation, Transform, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub drop_tables: Vec<String>,
    #[serde(default)]
    pub ops: Vec<String>,
    #[serde(default, rename = "where")]
    pub predicates: Vec<Predicate>,
}

/// A condition on one column; set exactly one comparison.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    pub column: String,
    pub eq: Option<Json>,
    pub ne: Option<Json>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<Json>>,
    pub not_in: Option<Vec<Json>>,
    pub gt: Option<f64>,
    pub ge: Option<f64>,
    pub lt: Option<f64>,
    pub le: Option<f64>,
    pub is_null: Option<bool>,
    /// An array column holds an element equal to this.
    pub contains: Option<Json>,
}

pub struct Filter {
    config: Config,
}

fn table_matches(selector: &str, rel: &Relation) -> bool {
    match selector.split_once('.') {
        Some((schema, table)) => schema == rel.schema && table == rel.table,
        None => selector == rel.table,
    }
}

/// The value as JSON, for equality with the configured operands.
fn json_of(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Text(s) => Json::String(s.clone()),
        Value::Bytes(_) => Json::Null,
        Value::List(_) | Value::Struct(_) => weir_sdk::json::value(v),
    }
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Text(s) => s.parse().ok(), // numeric arrives as text
        _ => None,
    }
}

/// Equality that lets a numeric column's text match a number operand.
fn equals(v: &Value, operand: &Json) -> bool {
    match (number_of(v), operand.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => json_of(v) == *operand,
    }
}

/// Whether an array (a list, or PostgreSQL's text of one) has an element equal to
/// `operand`; the elements of every dimension count.
fn contains(v: &Value, operand: &Json) -> bool {
    let element = |e: &Value| match e {
        Value::Null => operand.is_null(),
        Value::List(_) => contains(e, operand),
        e => equals(e, operand),
    };
    match v {
        Value::List(items) => items.iter().any(element),
        Value::Text(text) => weir_sdk::pg::array_elements(text).is_some_and(|elements| {
            elements.iter().any(|e| match e {
                Some(e) => equals(&Value::Text(e.to_string()), operand),
                None => operand.is_null(),
            })
        }),
        _ => false,
    }
}

impl Predicate {
    fn holds(&self, v: &Value) -> bool {
        let n = number_of(v);
        self.eq.as_ref().is_none_or(|x| equals(v, x))
            && self.ne.as_ref().is_none_or(|x| !equals(v, x))
            && self
                .one_of
                .as_ref()
                .is_none_or(|xs| xs.iter().any(|x| equals(v, x)))
            && self
                .not_in
                .as_ref()
                .is_none_or(|xs| !xs.iter().any(|x| equals(v, x)))
            && self.gt.is_none_or(|x| n.is_some_and(|n| n > x))
            && self.ge.is_none_or(|x| n.is_some_and(|n| n >= x))
            && self.lt.is_none_or(|x| n.is_some_and(|n| n < x))
            && self.le.is_none_or(|x| n.is_some_and(|n| n <= x))
            && self.is_null.is_none_or(|want| v.is_null() == want)
            && self.contains.as_ref().is_none_or(|x| contains(v, x))
    }
}

impl Filter {
    fn keep(&self, rel: &Relation, event: &Event) -> bool {
        let c = &self.config;
        if !c.tables.is_empty() && !c.tables.iter().any(|t| table_matches(t, rel)) {
            return false;
        }
        if c.drop_tables.iter().any(|t| table_matches(t, rel)) {
            return false;
        }
        if !c.ops.is_empty() && !c.ops.iter().any(|o| o == event.op.code()) {
            return false;
        }
        if event.op == Op::Truncate {
            return true;
        }
        let row = if event.op == Op::Delete {
            event.before.as_ref()
        } else {
            event.after.as_ref()
        };
        let Some(row) = row else { return true };
        self.config
            .predicates
            .iter()
            .all(|p| match rel.column_index(&p.column) {
                Some(i) => row.get(i).is_some_and(|v| p.holds(v)),
                None => true,
            })
    }
}

impl Transform for Filter {
    type Config = Config;

    fn init(config: Config) -> Result<Filter, PluginError> {
        for op in &config.ops {
            if !["r", "c", "u", "d", "t"].contains(&op.as_str()) {
                return Err(PluginError::BadConfig(format!(
                    "unknown op `{op}`: use r, c, u, d or t"
                )));
            }
        }
        Ok(Filter { config })
    }

    fn process(&mut self, mut batch: Batch) -> Result<Batch, PluginError> {
        batch.retain(|rel, event| self.keep(rel, event));
        Ok(batch)
    }
}

#[cfg(target_arch = "wasm32")]
weir_sdk::export_transform!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::plugin::testing;

    fn batch() -> Batch {
        let mut b = Batch::default();
        let columns = [
            ("id", "int8", true),
            ("status", "text", false),
            ("amount", "numeric", false),
        ];
        let orders = b.push_relation(testing::relation("public", "orders", &columns));
        let audit = b.push_relation(testing::relation(
            "public",
            "audit",
            &[("id", "int8", true)],
        ));
        let order = |id, status: &str, amount: &str| {
            Some(vec![
                Value::Int(id),
                Value::Text(status.into()),
                Value::Text(amount.into()),
            ])
        };
        b.events.push(testing::event(
            Op::Insert,
            orders,
            0,
            None,
            order(1, "paid", "150.00"),
        ));
        b.events.push(testing::event(
            Op::Insert,
            orders,
            1,
            None,
            order(2, "new", "500.00"),
        ));
        b.events.push(testing::event(
            Op::Update,
            orders,
            2,
            None,
            order(3, "paid", "50.00"),
        ));
        b.events.push(testing::event(
            Op::Insert,
            audit,
            3,
            None,
            Some(vec![Value::Int(9)]),
        ));
        b
    }

    #[test]
    fn contains_matches_an_element_of_an_array() {
        let mut b = Batch::default();
        let rel = b.push_relation(testing::relation(
            "public",
            "t",
            &[("id", "int8", true), ("tags", "_text", false)],
        ));
        for (id, tags) in [(1, "{vip,new}"), (2, r#"{"vip x",old}"#), (3, "{}")] {
            let row = vec![Value::Int(id), Value::Text(tags.into())];
            b.events
                .push(testing::event(Op::Insert, rel, id as u32, None, Some(row)));
        }
        let text = |s: &str| Value::Text(s.into());
        let grid = Value::List(vec![
            Value::List(vec![text("a"), Value::Null]),
            Value::List(vec![text("vip"), text("b")]),
        ]);
        let row = vec![Value::Int(4), grid];
        b.events
            .push(testing::event(Op::Insert, rel, 4, None, Some(row)));
        let row = vec![Value::Int(5), Value::List(vec![text("vip x")])];
        b.events
            .push(testing::event(Op::Insert, rel, 5, None, Some(row)));
        let config = r#"{"where":[{"column":"tags","contains":"vip"}]}"#;
        let out = testing::run::<Filter>(config, b).unwrap();
        assert_eq!(
            ids(&out),
            [1, 4],
            "the rows with the element vip, text or list"
        );
    }

    fn ids(b: &Batch) -> Vec<i64> {
        b.events()
            .map(|(_, e)| e.after.as_ref().unwrap()[0].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn predicates_tables_and_ops() {
        let out = testing::run::<Filter>(
            r#"{"where":[{"column":"status","in":["paid"]},{"column":"amount","gt":100}]}"#,
            batch(),
        )
        .unwrap();
        assert_eq!(
            ids(&out),
            vec![1, 9],
            "audit has no such columns: the predicates do not apply"
        );
        let out =
            testing::run::<Filter>(r#"{"tables":["public.orders"],"ops":["u"]}"#, batch()).unwrap();
        assert_eq!(ids(&out), vec![3]);
        let out = testing::run::<Filter>(
            r#"{"drop_tables":["audit"],"where":[{"column":"status","ne":"new"}]}"#,
            batch(),
        )
        .unwrap();
        assert_eq!(ids(&out), vec![1, 3]);
    }

    #[test]
    fn unknown_ops_and_keys_are_config_errors() {
        assert!(matches!(
            testing::transform::<Filter>(r#"{"ops":["x"]}"#),
            Err(PluginError::BadConfig(_))
        ));
        assert!(matches!(
            testing::transform::<Filter>(r#"{"wher":[]}"#),
            Err(PluginError::BadConfig(_))
        ));
    }
}
