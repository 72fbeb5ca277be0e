//! One step of one table, applied in the open target transaction: rows copied into the
//! staging table, then one `DELETE ... USING` and one `INSERT ... ON CONFLICT DO UPDATE`
//! per set of unchanged TOAST columns (mirror), or copied straight in (changelog).
//!
//! No row moves backwards: a change applies only when it is newer than the row's
//! `_cdc_commit_lsn` (or belongs to the source transaction the open target transaction
//! is still applying, which spans batches).

use super::copy::Line;
use super::reduce::{Net, Step};
use super::target::{CHANGELOG_COLUMNS, COMMIT_LSN, DELETED, Shape, Target, failed};
use super::{DeleteMode, Mode};
use crate::lsn::Lsn;
use crate::plugin::OnError;
use crate::sink::SinkError;
use futures::SinkExt;
use std::collections::BTreeSet;
use tokio_postgres::Client;
use weir_sdk::{Relation, Value};

/// What a projection has done since it started.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// Rows inserted or updated (mirror), or written (changelog).
    pub upserted: u64,
    /// Rows deleted or marked deleted.
    pub deleted: u64,
    /// Changes the target refused and that were skipped or set aside.
    pub set_aside: u64,
}

/// Applies the steps of one table.
pub struct Apply<'a> {
    pub client: &'a Client,
    pub target: &'a Target,
    pub relation: &'a Relation,
    pub shape: Shape,
    pub spanning: Option<u64>,
    pub on_error: OnError,
    pub applied: &'a mut Applied,
}

/// A refusal by a constraint of the target (class 23): the change is at fault, not the
/// connection, so `on_error` decides.
fn refused_by_constraint(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("23"))
}

impl Apply<'_> {
    /// Applies a step; returns the changes the target refused (with `on_error` other
    /// than `fail`) and why.
    pub async fn step(&mut self, step: Step) -> Result<Vec<(Net, String)>, SinkError> {
        match step {
            Step::Truncate { commit_lsn, .. } => {
                self.truncate(commit_lsn).await?;
                Ok(Vec::new())
            }
            Step::Rows { rows, .. } => self.rows(rows).await,
        }
    }

    fn context(&self) -> String {
        format!("applying changes to {}", self.target.name)
    }

    async fn execute(&self, sql: &str) -> Result<(), SinkError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(failed(&self.context()))
    }

    async fn truncate(&mut self, commit_lsn: u64) -> Result<(), SinkError> {
        let name = &self.target.name;
        let sql = match self.shape.deletes {
            DeleteMode::Delete => format!("TRUNCATE {name}"),
            DeleteMode::Tombstone => format!(
                "UPDATE {name} SET {DELETED} = true, {COMMIT_LSN} = '{}' WHERE NOT {DELETED}",
                Lsn(commit_lsn)
            ),
        };
        self.execute(&sql).await
    }

    async fn rows(&mut self, rows: Vec<Net>) -> Result<Vec<(Net, String)>, SinkError> {
        if self.on_error == OnError::Fail {
            self.write(&rows).await.map_err(|e| {
                let hint = match refused_by_constraint(&e) {
                    true => " (a constraint of the target refused it: fix the target, or set on_error = \"skip\" or \"dead-letter\" on this sink)",
                    false => "",
                };
                failed(&format!("{}{hint}", self.context()))(e)
            })?;
            return Ok(Vec::new());
        }
        self.execute("SAVEPOINT weir_step").await?;
        match self.write(&rows).await {
            Ok(()) => {
                self.execute("RELEASE SAVEPOINT weir_step").await?;
                Ok(Vec::new())
            }
            Err(e) if refused_by_constraint(&e) => {
                self.execute("ROLLBACK TO SAVEPOINT weir_step").await?;
                self.one_by_one(rows).await
            }
            Err(e) => Err(failed(&self.context())(e)),
        }
    }

    /// Applies rows one at a time to find the ones the target refuses.
    async fn one_by_one(&mut self, rows: Vec<Net>) -> Result<Vec<(Net, String)>, SinkError> {
        let mut refused = Vec::new();
        for row in rows {
            self.execute("SAVEPOINT weir_row").await?;
            match self.write(std::slice::from_ref(&row)).await {
                Ok(()) => self.execute("RELEASE SAVEPOINT weir_row").await?,
                Err(e) if refused_by_constraint(&e) => {
                    self.execute("ROLLBACK TO SAVEPOINT weir_row").await?;
                    let message = match e.as_db_error() {
                        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                        None => e.to_string(),
                    };
                    self.applied.set_aside += 1;
                    refused.push((row, message));
                }
                Err(e) => return Err(failed(&self.context())(e)),
            }
        }
        Ok(refused)
    }

    async fn write(&mut self, rows: &[Net]) -> Result<(), tokio_postgres::Error> {
        match self.shape.mode {
            Mode::Changelog => {
                let columns = self.changelog_columns();
                let body = self.changelog_lines(rows);
                let n = self.copy(&self.target.name, &columns, body).await?;
                self.applied.upserted += n;
            }
            Mode::Mirror => self.mirror(rows).await?,
        }
        Ok(())
    }

    async fn copy(
        &self,
        table: &str,
        columns: &str,
        body: String,
    ) -> Result<u64, tokio_postgres::Error> {
        let sink = self
            .client
            .copy_in(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(body)).await?;
        sink.finish().await
    }

    fn changelog_columns(&self) -> String {
        let mut columns = self.target.columns.clone();
        columns.extend(CHANGELOG_COLUMNS.map(String::from));
        columns.join(", ")
    }

    fn changelog_lines(&self, rows: &[Net]) -> String {
        let mut out = String::new();
        for row in rows {
            let mut line = Line::new(&mut out);
            for c in 0..self.target.columns.len() {
                line.value(row.values.get(c).unwrap_or(&Value::Null));
            }
            let ts = chrono::DateTime::from_timestamp_micros(row.commit_ts)
                .unwrap_or_default()
                .format("%Y-%m-%d %H:%M:%S%.6f+00")
                .to_string();
            line.text(row.op.code())
                .text(&Lsn(row.commit_lsn).to_string())
                .text(&row.seq.to_string())
                .text(&row.xid.to_string())
                .text(&ts);
            match row.unchanged.is_empty() {
                true => line.null(),
                false => line.text(&self.unchanged_names(&row.unchanged)),
            };
            line.end();
        }
        out
    }

    /// An array literal of the columns' names.
    fn unchanged_names(&self, unchanged: &[u16]) -> String {
        let names: Vec<String> = unchanged
            .iter()
            .filter_map(|&c| self.relation.columns.get(c as usize))
            .map(|c| format!("\"{}\"", c.name.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{{{}}}", names.join(","))
    }

    /// The net changes through the staging table: deletes, then upserts.
    async fn mirror(&mut self, rows: &[Net]) -> Result<(), tokio_postgres::Error> {
        let (t, s) = (&self.target.name, &self.target.staging);
        self.client.batch_execute(&format!("TRUNCATE {s}")).await?;
        let mut columns = self.target.columns.clone();
        columns.extend(["_cdc_commit_lsn", "_w_seq", "_w_op", "_w_unchanged"].map(String::from));
        let mut body = String::new();
        let mut groups = BTreeSet::new();
        let mut deletes = false;
        for row in rows {
            let mut line = Line::new(&mut body);
            for c in 0..self.target.columns.len() {
                line.value(row.values.get(c).unwrap_or(&Value::Null));
            }
            let group = group_label(&row.unchanged);
            line.text(&Lsn(row.commit_lsn).to_string())
                .text(&row.seq.to_string())
                .text(row.op.code())
                .text(&group)
                .end();
            match row.is_delete() {
                true => deletes = true,
                false => {
                    groups.insert(group);
                }
            }
        }
        self.copy(s, &columns.join(", "), body).await?;
        let keys = &self.target.key;
        let on_key: Vec<String> = keys
            .iter()
            .map(|&k| format!("t.{c} = s.{c}", c = self.target.columns[k]))
            .collect();
        let on_key = on_key.join(" AND ");
        let newer = self.newer("s._cdc_commit_lsn");
        if deletes {
            let sql = match self.shape.deletes {
                DeleteMode::Delete => format!(
                    "DELETE FROM {t} t USING {s} s WHERE s._w_op = 'd' AND {on_key} AND {newer}"
                ),
                // A row the target never had is kept as a tombstone too.
                DeleteMode::Tombstone => format!(
                    "INSERT INTO {t} AS t ({columns}, {COMMIT_LSN}, {DELETED}) SELECT {columns}, _cdc_commit_lsn, true FROM {s} WHERE _w_op = 'd' \
                     ON CONFLICT ({keys}) DO UPDATE SET {DELETED} = true, {COMMIT_LSN} = EXCLUDED.{COMMIT_LSN} WHERE {newer_excluded}",
                    columns = self.target.columns.join(", "),
                    keys = self.key_list(),
                    newer_excluded = self.newer(&format!("EXCLUDED.{COMMIT_LSN}")),
                ),
            };
            self.applied.deleted += self.client.execute(&sql, &[]).await?;
        }
        for group in groups {
            let sql = self.upsert(&group);
            self.applied.upserted += self.client.execute(&sql, &[]).await?;
        }
        Ok(())
    }

    /// `t` holds a row older than the change (or one the spanning transaction wrote).
    fn newer(&self, change_lsn: &str) -> String {
        match self.spanning {
            Some(lsn) => format!(
                "(t.{COMMIT_LSN} < {change_lsn} OR t.{COMMIT_LSN} = '{}')",
                Lsn(lsn)
            ),
            None => format!("t.{COMMIT_LSN} < {change_lsn}"),
        }
    }

    /// The key columns, comma-separated.
    fn key_list(&self) -> String {
        let keys: Vec<&str> = self
            .target
            .key
            .iter()
            .map(|&k| self.target.columns[k].as_str())
            .collect();
        keys.join(", ")
    }

    /// The upsert of the staged rows whose unchanged TOAST columns are `group`.
    fn upsert(&self, group: &str) -> String {
        let (t, s) = (&self.target.name, &self.target.staging);
        let unchanged: Vec<usize> = group.split(',').filter_map(|c| c.parse().ok()).collect();
        let columns = self.target.columns.join(", ");
        let mut set: Vec<String> = (0..self.target.columns.len())
            .filter(|c| !self.target.key.contains(c) && !unchanged.contains(c))
            .map(|c| format!("{col} = EXCLUDED.{col}", col = self.target.columns[c]))
            .collect();
        set.extend(self.target.dropped.iter().map(|c| format!("{c} = NULL")));
        set.push(format!("{COMMIT_LSN} = EXCLUDED.{COMMIT_LSN}"));
        let (mut into, mut select) = (columns.clone(), columns);
        into.push_str(&format!(", {COMMIT_LSN}"));
        select.push_str(", _cdc_commit_lsn");
        if self.shape.deletes == DeleteMode::Tombstone {
            into.push_str(&format!(", {DELETED}"));
            select.push_str(", false");
            set.push(format!("{DELETED} = false"));
        }
        format!(
            "INSERT INTO {t} AS t ({into}) SELECT {select} FROM {s} WHERE _w_op <> 'd' AND _w_unchanged = '{group}' \
             ON CONFLICT ({}) DO UPDATE SET {} WHERE {}",
            self.key_list(),
            set.join(", "),
            self.newer(&format!("EXCLUDED.{COMMIT_LSN}"))
        )
    }
}

/// The unchanged TOAST columns of a row as a label: `2,5`, or empty.
fn group_label(unchanged: &[u16]) -> String {
    let mut sorted = unchanged.to_vec();
    sorted.sort_unstable();
    sorted
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
