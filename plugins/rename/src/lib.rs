//! `rename`: rename or drop columns, rename tables.
//!
//! ```toml
//! [[transform]]
//! plugin = "plugins/rename"
//! config = { tables = { "public.orders" = "sales.orders" },
//!            columns = { "email" = "contact_email", "orders.note" = "comment" },
//!            drop_columns = ["internal_flag"] }
//! ```
//!
//! Columns are named `column` (any table), `table.column` or `schema.table.column`; a new
//! table name is `schema.table` or `table` (same schema). The output goes where the new
//! name says: `sales/orders/` for the example.

use serde::Deserialize;
use std::collections::BTreeMap;
use weir_sdk::{Batch, PluginError, Relation, Transform};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    #[serde(default)]
    pub drop_columns: Vec<String>,
}

pub struct Rename(Config);

fn selects(selector: &str, rel: &Relation, column: Option<&str>) -> bool {
    let parts: Vec<&str> = selector.split('.').collect();
    match (parts.as_slice(), column) {
        ([c], Some(col)) => *c == col,
        ([t, c], Some(col)) => *t == rel.table && *c == col,
        ([s, t, c], Some(col)) => *s == rel.schema && *t == rel.table && *c == col,
        ([t], None) => *t == rel.table,
        ([s, t], None) => *s == rel.schema && *t == rel.table,
        _ => false,
    }
}

impl Transform for Rename {
    type Config = Config;

    fn init(config: Config) -> Result<Rename, PluginError> {
        for to in config.tables.values() {
            if to.is_empty() || to.split('.').count() > 2 {
                return Err(PluginError::BadConfig(format!(
                    "`{to}` is not a table name: write schema.table or table"
                )));
            }
        }
        Ok(Rename(config))
    }

    fn process(&mut self, mut batch: Batch) -> Result<Batch, PluginError> {
        // Per relation: the indexes of the columns kept, in order.
        let mut kept: Vec<Vec<usize>> = Vec::with_capacity(batch.relations.len());
        for rel in &mut batch.relations {
            let keep: Vec<usize> = (0..rel.columns.len())
                .filter(|&i| {
                    !self
                        .0
                        .drop_columns
                        .iter()
                        .any(|d| selects(d, rel, Some(&rel.columns[i].name)))
                })
                .collect();
            let snapshot = rel.clone();
            for column in &mut rel.columns {
                if let Some((_, to)) = self
                    .0
                    .columns
                    .iter()
                    .find(|(from, _)| selects(from, &snapshot, Some(&column.name)))
                {
                    column.name = to.clone();
                }
            }
            if let Some((_, to)) = self
                .0
                .tables
                .iter()
                .find(|(from, _)| selects(from, &snapshot, None))
            {
                match to.split_once('.') {
                    Some((schema, table)) => {
                        (rel.schema, rel.table) = (schema.into(), table.into())
                    }
                    None => rel.table = to.clone(),
                }
            }
            if keep.len() != rel.columns.len() {
                rel.columns = keep.iter().map(|&i| rel.columns[i].clone()).collect();
            }
            kept.push(keep);
        }
        for event in &mut batch.events {
            let keep = &kept[event.rel as usize];
            for row in [event.before.as_mut(), event.after.as_mut()]
                .into_iter()
                .flatten()
            {
                if keep.len() != row.len() {
                    *row = keep.iter().filter_map(|&i| row.get(i).cloned()).collect();
                }
            }
            event.unchanged = event
                .unchanged
                .iter()
                .filter_map(|&u| keep.iter().position(|&k| k == u as usize).map(|p| p as u16))
                .collect();
        }
        Ok(batch)
    }
}

#[cfg(target_arch = "wasm32")]
weir_sdk::export_transform!(Rename);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::plugin::testing;
    use weir_sdk::{Event, Op, Value};

    #[test]
    fn renames_and_drops_columns_and_tables() {
        let mut b = Batch::default();
        let columns = [
            ("id", "int8", true),
            ("secret", "text", false),
            ("note", "text", false),
        ];
        let rel = b.push_relation(testing::relation("public", "orders", &columns));
        let row = vec![Value::Int(1), Value::Text("x".into()), Value::Null];
        b.events.push(Event {
            unchanged: vec![2],
            ..testing::event(Op::Update, rel, 0, None, Some(row))
        });
        let config = r#"{"tables":{"public.orders":"sales.orders_v2"},"columns":{"orders.note":"comment"},"drop_columns":["secret"]}"#;
        let out = testing::run::<Rename>(config, b).unwrap();
        let rel = &out.relations[0];
        assert_eq!(
            (rel.schema.as_str(), rel.table.as_str()),
            ("sales", "orders_v2")
        );
        assert_eq!(
            rel.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            vec!["id", "comment"]
        );
        assert_eq!(
            out.events[0].after.as_ref().unwrap(),
            &vec![Value::Int(1), Value::Null]
        );
        assert_eq!(
            out.events[0].unchanged,
            vec![1],
            "unchanged indexes follow the dropped column"
        );
    }
}
