//! The provenance ledger: one row per applied source transaction, with an `evidence_id`
//! anyone can recompute from the changes themselves.
//!
//! `evidence_id` is `sha256:` and the hex SHA-256 of this text (UTF-8):
//!
//! ```text
//! weir-evidence-v1\n
//! <projection>\n
//! <transforms: name@version#sha256, comma-separated; empty without transforms>\n
//! then one line per change of the transaction, in seq order:
//! <seq>\t<op>\t<schema.table>\t<value>\t<value>...\n
//! ```
//!
//! The values are the new row (`r`, `c`, `u`) or the old one (`d`; its key only unless the
//! table has REPLICA IDENTITY FULL, the other columns `\N`), as the sink received them,
//! each in PostgreSQL's text form escaped as in `COPY ... TO` text format: `\N` for null
//! (and for an unchanged TOAST value), `t`/`f`, bytea as `\\x` and hex. A truncate has no
//! values.

use super::copy::Line;
use sha2::{Digest, Sha256};
use weir_sdk::{Event, Relation};

/// One applied source transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub commit_lsn: u64,
    pub evidence_id: String,
    pub xid: u32,
    pub schema_version: u32,
    pub rows: u64,
}

/// The evidence of one transaction, while its changes are read.
struct Open {
    hasher: Sha256,
    commit_lsn: u64,
    xid: u32,
    schema_version: u32,
    rows: u64,
}

/// Ledger entries of the transactions a batch (or several) brought.
pub struct Ledger {
    projection: String,
    open: Option<Open>,
    done: Vec<Entry>,
    line: String,
}

impl Ledger {
    pub fn new(projection: &str) -> Ledger {
        Ledger {
            projection: projection.to_owned(),
            open: None,
            done: Vec::new(),
            line: String::new(),
        }
    }

    /// Adds one change (in source order) of `relation`, named `table`, made under
    /// `transforms`.
    pub fn add(&mut self, relation: &Relation, table: &str, event: &Event, transforms: &str) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.commit_lsn != event.commit_lsn)
        {
            self.end_transaction();
        }
        let projection = &self.projection;
        let open = self.open.get_or_insert_with(|| {
            let mut hasher = Sha256::new();
            hasher.update(format!("weir-evidence-v1\n{projection}\n{transforms}\n"));
            Open {
                hasher,
                commit_lsn: event.commit_lsn,
                xid: event.xid,
                schema_version: 0,
                rows: 0,
            }
        });
        self.line.clear();
        let mut line = Line::new(&mut self.line);
        line.text(&event.seq.to_string())
            .text(event.op.code())
            .text(table);
        let values = event.after.as_ref().or(event.before.as_ref());
        for v in values.map(Vec::as_slice).unwrap_or_default() {
            line.value(v);
        }
        line.end();
        open.hasher.update(self.line.as_bytes());
        open.schema_version = open.schema_version.max(relation.version);
        open.rows += 1;
    }

    /// The transaction being read is complete.
    pub fn end_transaction(&mut self) {
        if let Some(open) = self.open.take() {
            let digest = open.hasher.finalize();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            self.done.push(Entry {
                commit_lsn: open.commit_lsn,
                evidence_id: format!("sha256:{hex}"),
                xid: open.xid,
                schema_version: open.schema_version,
                rows: open.rows,
            });
        }
    }

    /// The entries of complete transactions, taken.
    pub fn take(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.done)
    }

    /// Forgets everything not yet taken (the target transaction was rolled back).
    pub fn clear(&mut self) {
        self.open = None;
        self.done.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::{Column, Op, Value};

    #[test]
    fn the_evidence_id_is_the_sha256_of_the_documented_text() {
        let rel = Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            version: 1,
            columns: vec![
                Column::new("id", 23, "int4", true),
                Column::new("v", 25, "text", false),
            ],
        };
        let event = |seq, op, row: Vec<Value>| Event {
            op,
            rel: 0,
            commit_lsn: 100,
            seq,
            xid: 7,
            commit_ts: 0,
            before: (op == Op::Delete).then(|| row.clone()),
            after: (op != Op::Delete).then_some(row),
            unchanged: vec![],
        };
        let mut ledger = Ledger::new("shop");
        ledger.add(
            &rel,
            "public.t",
            &event(
                0,
                Op::Insert,
                vec![Value::Int(1), Value::Text("a\tb".into())],
            ),
            "",
        );
        ledger.add(
            &rel,
            "public.t",
            &event(1, Op::Delete, vec![Value::Int(1), Value::Null]),
            "",
        );
        ledger.end_transaction();
        let text = "weir-evidence-v1\nshop\n\n0\tc\tpublic.t\t1\ta\\tb\n1\td\tpublic.t\t1\t\\N\n";
        let want: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let entries = ledger.take();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].evidence_id, format!("sha256:{want}"));
        assert_eq!((entries[0].rows, entries[0].xid), (2, 7));
    }
}
