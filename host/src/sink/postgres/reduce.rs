//! The net change per key of a batch, for current-state output: the last change of each
//! key in source order `(commit_lsn, seq)`. Unchanged TOAST values of that change are
//! taken from an earlier change of the same key in the batch when there is one; the rest
//! stay as the target holds them. A truncate ends what came before it for its table.

use std::collections::HashMap;
use weir_sdk::{Batch, Event, Op, Relation, Value};

/// The last change of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub op: Op,
    pub commit_lsn: u64,
    pub seq: u32,
    pub xid: u32,
    pub commit_ts: i64,
    /// The new row (`r`, `c`, `u`) or the old one, its key at least (`d`).
    pub values: Vec<Value>,
    /// Columns of `values` whose value the target keeps (unchanged TOAST values).
    pub unchanged: Vec<u16>,
}

impl Net {
    fn of(event: &Event) -> Net {
        let (values, unchanged) = match (&event.after, &event.before) {
            (Some(after), _) => (after.clone(), event.unchanged.clone()),
            (None, Some(before)) => (before.clone(), Vec::new()),
            (None, None) => (Vec::new(), Vec::new()),
        };
        Net {
            op: event.op,
            commit_lsn: event.commit_lsn,
            seq: event.seq,
            xid: event.xid,
            commit_ts: event.commit_ts,
            values,
            unchanged,
        }
    }

    pub fn is_delete(&self) -> bool {
        self.op == Op::Delete
    }

    /// The change as an event of relation `rel` (to set it aside).
    pub fn into_event(self, rel: u32) -> Event {
        let (before, after) = match self.op {
            Op::Delete => (Some(self.values), None),
            Op::Truncate => (None, None),
            _ => (None, Some(self.values)),
        };
        Event {
            op: self.op,
            rel,
            commit_lsn: self.commit_lsn,
            seq: self.seq,
            xid: self.xid,
            commit_ts: self.commit_ts,
            before,
            after,
            unchanged: self.unchanged,
        }
    }
}

/// What happens to one table, in order.
#[derive(Debug)]
pub enum Step {
    /// The net changes under one relation version.
    Rows { rel: usize, rows: Vec<Net> },
    /// The table was truncated (with its `commit_lsn`).
    Truncate { rel: usize, commit_lsn: u64 },
}

/// One table's steps: `schema.table` and what to do to it.
#[derive(Debug)]
pub struct TableSteps {
    pub table: String,
    pub steps: Vec<Step>,
}

/// The open step of one table while the batch is read.
struct Open {
    rel: usize,
    by_key: HashMap<String, usize>,
    rows: Vec<Net>,
}

impl Open {
    fn close(self, steps: &mut Vec<Step>) {
        if !self.rows.is_empty() {
            steps.push(Step::Rows {
                rel: self.rel,
                rows: self.rows,
            });
        }
    }
}

/// Reduces a batch (events in source order) to each table's steps.
pub fn reduce(batch: &Batch) -> Vec<TableSteps> {
    let mut tables: Vec<(TableSteps, Option<Open>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let names = table_names(batch);
    for event in &batch.events {
        let rel = event.rel as usize;
        let relation = &batch.relations[rel];
        let name = &names[rel];
        let t = *index.entry(name.clone()).or_insert_with(|| {
            tables.push((
                TableSteps {
                    table: name.clone(),
                    steps: Vec::new(),
                },
                None,
            ));
            tables.len() - 1
        });
        let (table, open) = &mut tables[t];
        // A new relation version or a truncate closes what came before.
        if event.op == Op::Truncate || open.as_ref().is_some_and(|o| o.rel != rel) {
            if let Some(o) = open.take() {
                o.close(&mut table.steps);
            }
        }
        if event.op == Op::Truncate {
            table.steps.push(Step::Truncate {
                rel,
                commit_lsn: event.commit_lsn,
            });
            continue;
        }
        let open = open.get_or_insert_with(|| Open {
            rel,
            by_key: HashMap::new(),
            rows: Vec::new(),
        });
        add(open, relation, event);
    }
    tables
        .into_iter()
        .map(|(mut table, open)| {
            if let Some(o) = open {
                o.close(&mut table.steps);
            }
            table
        })
        .collect()
}

/// Every change as it is, for a changelog: one step per run of one relation version.
pub fn every_change(batch: &Batch) -> Vec<TableSteps> {
    let mut tables: Vec<TableSteps> = Vec::new();
    let names = table_names(batch);
    for event in &batch.events {
        let rel = event.rel as usize;
        let name = &names[rel];
        let t = match tables.iter().position(|t| &t.table == name) {
            Some(t) => t,
            None => {
                tables.push(TableSteps {
                    table: name.clone(),
                    steps: Vec::new(),
                });
                tables.len() - 1
            }
        };
        let steps = &mut tables[t].steps;
        match steps.last_mut() {
            Some(Step::Rows { rel: r, rows }) if *r == rel => rows.push(Net::of(event)),
            _ => steps.push(Step::Rows {
                rel,
                rows: vec![Net::of(event)],
            }),
        }
    }
    tables
}

/// `schema.table` of each relation of a batch, by its index: named once per batch.
pub fn table_names(batch: &Batch) -> Vec<String> {
    batch
        .relations
        .iter()
        .map(Relation::qualified_name)
        .collect()
}

/// Adds one row change to its table's open step.
fn add(open: &mut Open, relation: &Relation, event: &Event) {
    if event.after.is_none() && event.before.is_none() {
        return;
    }
    let mut net = Net::of(event);
    let key = key_of(relation, &net.values);
    match open.by_key.get(&key) {
        Some(&i) => {
            let earlier = &open.rows[i];
            if !net.unchanged.is_empty() && !earlier.is_delete() {
                fill_unchanged(&mut net, earlier);
            }
            // A row deleted in the batch it was written in: its last values (a tombstone
            // keeps them), not the old key alone.
            if net.is_delete() && !earlier.is_delete() && earlier.unchanged.is_empty() {
                net.values = earlier.values.clone();
            }
            open.rows[i] = net;
        }
        None => {
            open.by_key.insert(key, open.rows.len());
            open.rows.push(net);
        }
    }
}

/// Takes the values `net` did not carry from the earlier change of the same row.
fn fill_unchanged(net: &mut Net, earlier: &Net) {
    net.unchanged.retain(|&c| {
        let c = c as usize;
        let known = !earlier.unchanged.contains(&(c as u16)) && c < earlier.values.len();
        if known && c < net.values.len() {
            net.values[c] = earlier.values[c].clone();
        }
        !known
    });
}

/// The key columns' values, as one string (COPY text, tab-separated).
pub fn key_of(relation: &Relation, values: &[Value]) -> String {
    let mut key = String::new();
    let mut line = super::copy::Line::new(&mut key);
    for (c, column) in relation.columns.iter().enumerate() {
        if column.key {
            line.value(values.get(c).unwrap_or(&Value::Null));
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Column;

    fn relation(version: u32) -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            version,
            columns: vec![
                Column::new("id", 23, "int4", true),
                Column::new("v", 25, "text", false),
                Column::new("big", 25, "text", false),
            ],
        }
    }

    fn event(op: Op, lsn: u64, seq: u32, id: i64, v: &str, unchanged: &[u16]) -> Event {
        let row = vec![
            Value::Int(id),
            Value::Text(v.into()),
            if unchanged.is_empty() {
                Value::Text(format!("big-{v}"))
            } else {
                Value::Null
            },
        ];
        let (before, after) = match op {
            Op::Delete => (Some(row), None),
            _ => (None, Some(row)),
        };
        Event {
            op,
            rel: 0,
            commit_lsn: lsn,
            seq,
            xid: 1,
            commit_ts: 0,
            before,
            after,
            unchanged: unchanged.to_vec(),
        }
    }

    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            relations: vec![relation(1), relation(2)],
            events,
            ..Batch::default()
        }
    }

    fn rows(step: &Step) -> &[Net] {
        match step {
            Step::Rows { rows, .. } => rows,
            Step::Truncate { .. } => panic!("a truncate"),
        }
    }

    #[test]
    fn the_last_change_of_each_key_wins() {
        let b = batch(vec![
            event(Op::Insert, 10, 0, 1, "a", &[]),
            event(Op::Insert, 10, 1, 2, "b", &[]),
            event(Op::Update, 20, 0, 1, "c", &[]),
            event(Op::Delete, 30, 0, 2, "b", &[]),
        ]);
        let tables = reduce(&b);
        assert_eq!(tables.len(), 1);
        let rows = rows(&tables[0].steps[0]);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].op, rows[0].commit_lsn), (Op::Update, 20));
        assert_eq!(rows[0].values[1], Value::Text("c".into()));
        assert!(rows[1].is_delete());
    }

    #[test]
    fn an_unchanged_toast_value_comes_from_the_earlier_change_in_the_batch() {
        let b = batch(vec![
            event(Op::Update, 10, 0, 1, "a", &[]),
            event(Op::Update, 20, 0, 1, "b", &[2]),
            event(Op::Update, 30, 0, 2, "c", &[2]),
        ]);
        let tables = reduce(&b);
        let rows = rows(&tables[0].steps[0]);
        assert_eq!(rows[0].values[2], Value::Text("big-a".into()));
        assert!(rows[0].unchanged.is_empty());
        // Nothing earlier in the batch: the target keeps its value.
        assert_eq!(rows[1].unchanged, vec![2]);
    }

    #[test]
    fn a_truncate_and_a_new_version_split_the_steps_in_order() {
        let mut e = vec![
            event(Op::Insert, 10, 0, 1, "a", &[]),
            Event {
                op: Op::Truncate,
                before: None,
                after: None,
                ..event(Op::Insert, 20, 0, 0, "", &[])
            },
            event(Op::Insert, 30, 0, 1, "b", &[]),
        ];
        e.push(Event {
            rel: 1,
            ..event(Op::Update, 40, 0, 1, "c", &[])
        });
        let tables = reduce(&batch(e));
        let steps = &tables[0].steps;
        assert_eq!(steps.len(), 4);
        assert_eq!(rows(&steps[0])[0].values[1], Value::Text("a".into()));
        assert!(matches!(steps[1], Step::Truncate { commit_lsn: 20, .. }));
        assert!(matches!(&steps[2], Step::Rows { rel: 0, .. }));
        assert!(matches!(&steps[3], Step::Rows { rel: 1, .. }));
    }
}
