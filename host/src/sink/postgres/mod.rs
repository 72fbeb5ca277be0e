//! `type = "postgres"`: a projection of the captured tables into another PostgreSQL
//! database, kept current batch by batch.
//!
//! Each batch is applied set-based inside one target transaction: its net change per key
//! is copied into a temporary staging table, then one `DELETE ... USING` and one
//! `INSERT ... ON CONFLICT DO UPDATE` per table apply it. The transaction also writes
//! the provenance ledger's rows and the checkpoint (`weir.checkpoints`), and commits
//! only at a source transaction boundary: the target holds whole source transactions
//! and knows which, so after any crash weir resumes exactly after them.

mod apply;
mod copy;
mod ledger;
mod reduce;
mod target;

pub use crate::config::{DeleteMode, ProjectionMode as Mode};

use crate::batch::{CommitPos, Position, SourceBatch};
use crate::config::PostgresSinkConfig;
use crate::lsn::Lsn;
use crate::plugin::{DeadLetter, DeadLetters, OnError, Stage};
use crate::sink::SinkError;
use crate::source::Control;
use apply::Applied;
use ledger::Ledger;
use reduce::Step;
use std::collections::HashMap;
use target::{Shape, Target, failed};
use weir_sdk::{Batch, Relation};

/// A projection into a PostgreSQL database.
pub struct PostgresSink {
    control: Control,
    config: PostgresSinkConfig,
    slot: String,
    shape: Shape,
    /// The last source transaction the target holds.
    durable: Option<CommitPos>,
    batch_id: i64,
    /// A target transaction is open (rows applied, not committed yet).
    open: bool,
    /// A source transaction applied in part in the open target transaction: its rows
    /// may be written again by its later changes.
    spanning: Option<u64>,
    /// Target tables ready to take rows, by source table and relation version.
    targets: HashMap<(String, u32), Target>,
    ledger: Ledger,
    /// Where refused changes go under `on_error = "dead-letter"`, and this sink's place.
    dead_letters: Option<(DeadLetters, Stage)>,
    /// Rows applied (inserted or updated, deleted) and changes set aside, not yet counted
    /// in the metrics.
    applied: Applied,
}

impl PostgresSink {
    /// Connects to the target, creates weir's tables there when missing, and reads the
    /// projection's checkpoint.
    pub async fn open(
        config: PostgresSinkConfig,
        slot: &str,
        dead_letters: Option<(DeadLetters, Stage)>,
    ) -> Result<PostgresSink, SinkError> {
        let control = Control::connect(&config.url)
            .await
            .map_err(SinkError::target)?;
        target::ensure_weir_tables(&control.client).await?;
        let row = control
            .client
            .query_opt(
                "SELECT commit_lsn::text, end_lsn::text, batch_id FROM weir.checkpoints
                 WHERE pipeline = $1 AND slot = $2 AND sink = $3",
                &[&config.pipeline, &slot, &config.projection()],
            )
            .await
            .map_err(failed("reading the projection's checkpoint"))?;
        let lsn = |text: String| {
            text.parse::<Lsn>().map_err(|e| SinkError::Config {
                what: "weir.checkpoints".into(),
                message: e.to_string(),
            })
        };
        let (durable, batch_id) = match row {
            Some(row) => {
                let pos = CommitPos {
                    commit_lsn: lsn(row.get(0))?,
                    end_lsn: lsn(row.get(1))?,
                };
                tracing::info!(projection = config.projection(), checkpoint = %pos.end_lsn, "The PostgreSQL target holds the projection up to its checkpoint.");
                (Some(pos), row.get(2))
            }
            None => (None, 0),
        };
        Ok(PostgresSink {
            control,
            shape: Shape {
                mode: config.mode,
                deletes: config.deletes,
            },
            ledger: Ledger::new(config.projection()),
            config,
            slot: slot.to_owned(),
            durable,
            batch_id,
            open: false,
            spanning: None,
            targets: HashMap::new(),
            dead_letters,
            applied: Applied::default(),
        })
    }

    /// The last source transaction the target holds.
    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    /// Rows applied since the last call, by what was done: for the metrics.
    pub fn take_applied(&mut self) -> [(&'static str, u64); 3] {
        let a = std::mem::take(&mut self.applied);
        [
            ("upsert", a.upserted),
            ("delete", a.deleted),
            ("set_aside", a.set_aside),
        ]
    }

    /// Takes changes after `from` again (a replay from the changelog), whatever the
    /// checkpoint says; rows newer in the target still win.
    pub fn replay_from(&mut self, from: Lsn) {
        self.durable = (from > Lsn::ZERO).then_some(CommitPos {
            commit_lsn: from,
            end_lsn: from,
        });
    }

    /// Applies a batch; commits it with the checkpoint when it ends at a transaction
    /// boundary. Changes the target already holds are left out.
    pub async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        let skip = self.durable.map_or(0, |d| d.commit_lsn.0);
        let mut events = None;
        if batch
            .batch
            .events
            .first()
            .is_some_and(|e| e.commit_lsn <= skip)
        {
            let mut kept = batch.batch.clone();
            kept.retain(|_, e| e.commit_lsn > skip);
            events = Some(kept);
        }
        let events = events.as_ref().unwrap_or(&batch.batch);
        if !events.events.is_empty() {
            self.begin().await?;
            let transforms = batch.transforms.as_deref().unwrap_or("");
            let names = reduce::table_names(events);
            for event in &events.events {
                let rel = event.rel as usize;
                let relation = &events.relations[rel];
                self.ledger.add(relation, &names[rel], event, transforms);
            }
            self.apply(events, self.spanning).await?;
        }
        match batch.position.in_tx {
            true => {
                if let Some(last) = events.events.last() {
                    self.spanning = Some(last.commit_lsn);
                }
            }
            false => {
                self.ledger.end_transaction();
                self.spanning = None;
            }
        }
        self.commit(&batch.position).await
    }

    /// Commits what is applied when the position is at a transaction boundary.
    pub async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        if !position.in_tx {
            self.ledger.end_transaction();
        }
        self.commit(position).await
    }

    /// Applies dead-lettered changes in a target transaction of their own (the
    /// checkpoint and the ledger stay as they are).
    pub async fn write_replay(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.begin().await?;
        let before = self.applied.set_aside;
        self.apply(batch, None).await?;
        if self.applied.set_aside > before {
            self.rollback().await;
            return Err(SinkError::Config {
                what: "the PostgreSQL target".into(),
                message: "it refused the change again (see the log above); fix the cause in the target and replay again".into(),
            });
        }
        self.execute("COMMIT", "committing the replayed changes")
            .await?;
        self.open = false;
        Ok(())
    }

    /// Rolls back what is not committed.
    pub async fn abort(mut self) {
        self.rollback().await;
    }

    async fn rollback(&mut self) {
        if std::mem::take(&mut self.open) {
            // The connection may be gone already: then so is the transaction.
            let _ = self.control.client.batch_execute("ROLLBACK").await;
        }
        self.ledger.clear();
    }

    async fn execute(&self, sql: &str, context: &str) -> Result<(), SinkError> {
        self.control
            .client
            .batch_execute(sql)
            .await
            .map_err(failed(context))
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        if !self.open {
            self.execute("BEGIN", "starting a target transaction")
                .await?;
            self.open = true;
        }
        Ok(())
    }

    /// Applies every table's steps of a batch in the open target transaction.
    async fn apply(&mut self, batch: &Batch, spanning: Option<u64>) -> Result<(), SinkError> {
        let tables = match self.shape.mode {
            Mode::Mirror => reduce::reduce(batch),
            Mode::Changelog => reduce::every_change(batch),
        };
        for table in tables {
            for step in table.steps {
                let rel = match &step {
                    Step::Rows { rel, .. } | Step::Truncate { rel, .. } => *rel,
                };
                let relation = &batch.relations[rel];
                let target = self.target(relation).await?;
                let mut apply = apply::Apply {
                    client: &self.control.client,
                    target: &target,
                    relation,
                    shape: self.shape,
                    spanning,
                    on_error: self.config.on_error,
                    applied: &mut self.applied,
                };
                let refused = apply.step(step).await?;
                for (row, error) in refused {
                    self.set_aside(relation, row, &error).await?;
                }
            }
        }
        Ok(())
    }

    /// The target table of a relation, made ready the first time it is seen.
    async fn target(&mut self, relation: &Relation) -> Result<Target, SinkError> {
        let key = (relation.qualified_name(), relation.version);
        if let Some(t) = self.targets.get(&key) {
            return Ok(t.clone());
        }
        let (schema, name) = self.config.target_of(&relation.schema, &relation.table);
        let staging = format!("weir_stage_{}", self.targets.len());
        let client = &self.control.client;
        let target = target::prepare(client, &name, &schema, relation, self.shape, staging).await?;
        self.targets.insert(key, target.clone());
        Ok(target)
    }

    /// A change the target refused: logged, then dropped or written aside.
    async fn set_aside(
        &mut self,
        relation: &Relation,
        row: reduce::Net,
        error: &str,
    ) -> Result<(), SinkError> {
        tracing::warn!(table = %relation.qualified_name(), commit_lsn = %Lsn(row.commit_lsn), seq = row.seq, error, on_error = self.config.on_error.as_str(), "The PostgreSQL target refused a change.");
        let Some((letters, stage)) = &self.dead_letters else {
            return Ok(());
        };
        if self.config.on_error != OnError::DeadLetter {
            return Ok(());
        }
        let mut batch = Batch::default();
        let rel = batch.push_relation(relation.clone());
        batch.events.push(row.into_event(rel));
        let (_, event) = batch.events().next().expect("one event");
        let letter = DeadLetter {
            plugin: "postgres".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            stage: *stage,
            error: error.to_owned(),
            table: relation.qualified_name(),
            commit_lsn: event.commit_lsn,
            seq: event.seq,
            xid: event.xid,
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch: batch.encode(),
        };
        let key = letters
            .write(&letter)
            .await
            .map_err(|e| SinkError::Config {
                what: "the dead-letter location".into(),
                message: e.to_string(),
            })?;
        tracing::info!(key, "Dead letter written.");
        Ok(())
    }

    /// At a transaction boundary past the checkpoint: writes the ledger and the
    /// checkpoint, and commits.
    async fn commit(&mut self, position: &Position) -> Result<(), SinkError> {
        let Some(point) = position.flush_point(self.durable) else {
            return Ok(());
        };
        if self.durable >= Some(point) && !self.open {
            return Ok(());
        }
        self.begin().await?;
        self.batch_id += 1;
        let entries = self.ledger.take();
        let client = &self.control.client;
        if !entries.is_empty() {
            let lsns: Vec<String> = entries
                .iter()
                .map(|e| Lsn(e.commit_lsn).to_string())
                .collect();
            let ids: Vec<&str> = entries.iter().map(|e| e.evidence_id.as_str()).collect();
            let xids: Vec<i64> = entries.iter().map(|e| i64::from(e.xid)).collect();
            let versions: Vec<i32> = entries.iter().map(|e| e.schema_version as i32).collect();
            let rows: Vec<i64> = entries.iter().map(|e| e.rows as i64).collect();
            client
                .execute(
                    "INSERT INTO weir.projection_ledger
                     (projection, commit_lsn, evidence_id, applied_at, batch_id, source_xid, schema_version, rows)
                     SELECT $1, l::pg_lsn, i, now(), $2, x, v, r
                     FROM unnest($3::text[], $4::text[], $5::int8[], $6::int4[], $7::int8[]) AS u(l, i, x, v, r)
                     ON CONFLICT (projection, commit_lsn) DO NOTHING",
                    &[&self.config.projection(), &self.batch_id, &lsns, &ids, &xids, &versions, &rows],
                )
                .await
                .map_err(failed("writing the projection ledger"))?;
        }
        client
            .execute(
                "INSERT INTO weir.checkpoints AS c (pipeline, slot, sink, commit_lsn, end_lsn, batch_id, applied_at)
                 VALUES ($1, $2, $3, $4::text::pg_lsn, $5::text::pg_lsn, $6, now())
                 ON CONFLICT (pipeline, slot, sink) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn,
                     end_lsn = EXCLUDED.end_lsn, batch_id = EXCLUDED.batch_id, applied_at = EXCLUDED.applied_at",
                &[
                    &self.config.pipeline,
                    &self.slot,
                    &self.config.projection(),
                    &point.commit_lsn.to_string(),
                    &point.end_lsn.to_string(),
                    &self.batch_id,
                ],
            )
            .await
            .map_err(failed("writing the projection's checkpoint"))?;
        self.execute("COMMIT", "committing to the target").await?;
        self.open = false;
        self.durable = Some(point);
        Ok(())
    }
}

/// The projection's checkpoint in the target, without creating anything there.
pub async fn read_checkpoint(
    config: &PostgresSinkConfig,
    slot: &str,
) -> Result<Option<CommitPos>, SinkError> {
    let control = Control::connect(&config.url)
        .await
        .map_err(SinkError::target)?;
    let row = control
        .client
        .query_opt(
            "SELECT commit_lsn::text, end_lsn::text FROM weir.checkpoints
             WHERE to_regclass('weir.checkpoints') IS NOT NULL
               AND pipeline = $1 AND slot = $2 AND sink = $3",
            &[&config.pipeline, &slot, &config.projection()],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        // No weir schema yet: nothing projected.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => return Err(failed("reading the projection's checkpoint")(e)),
    };
    let lsn = |text: String| text.parse::<Lsn>().unwrap_or(Lsn::ZERO);
    Ok(row.map(|row| CommitPos {
        commit_lsn: lsn(row.get(0)),
        end_lsn: lsn(row.get(1)),
    }))
}

/// What `weir validate` says of the target: it is reachable and the user may create
/// what the projection needs (nothing is written).
pub async fn check(config: &PostgresSinkConfig) -> Result<String, SinkError> {
    let control = Control::connect(&config.url)
        .await
        .map_err(SinkError::target)?;
    let row = control
        .client
        .query_one(
            "SELECT current_database()::text, current_user::text,
                    has_database_privilege(current_database(), 'CREATE'),
                    to_regclass('weir.checkpoints') IS NOT NULL",
            &[],
        )
        .await
        .map_err(failed("checking the target's privileges"))?;
    let (database, user, create, made): (String, String, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if !create && !made {
        return Err(SinkError::Config {
            what: "the PostgreSQL target".into(),
            message: format!(
                "user `{user}` may not create schemas in database `{database}`, and weir's tables are not there yet: run GRANT CREATE ON DATABASE {database} TO {user}"
            ),
        });
    }
    Ok(format!("database `{database}` reachable as `{user}`"))
}

/// What a run would do to each target table (`weir validate`; nothing is written).
pub async fn describe_tables(
    config: &PostgresSinkConfig,
    relations: &[Relation],
) -> Result<Vec<String>, SinkError> {
    let control = Control::connect(&config.url)
        .await
        .map_err(SinkError::target)?;
    let shape = Shape {
        mode: config.mode,
        deletes: config.deletes,
    };
    let mut lines = Vec::new();
    for relation in relations {
        let (_, name) = config.target_of(&relation.schema, &relation.table);
        lines.push(target::describe(&control.client, &name, relation, shape).await?);
    }
    Ok(lines)
}

/// A mirror keeps rows by primary key: a captured table without one (REPLICA IDENTITY
/// FULL) stops the run before anything is created, naming the table and the way out.
/// (PostgreSQL and Delta mirrors.)
pub fn check_keys(
    config: &crate::config::PipelineConfig,
    info: &crate::source::SourceInfo,
) -> Result<(), crate::sink::NamedSinkError> {
    use crate::config::{DeltaMode, SinkConfig};
    for (i, sink) in config.sinks.iter().enumerate() {
        let mirror = match sink {
            SinkConfig::Postgres(p) => p.mode == Mode::Mirror,
            SinkConfig::Delta(d) => d.mode == DeltaMode::Mirror,
            _ => false,
        };
        let keyless = config
            .source
            .tables
            .iter()
            .find(|t| info.primary_keys.get(*t).is_none_or(Vec::is_empty));
        if let (true, Some(table)) = (mirror, keyless) {
            return Err(crate::sink::NamedSinkError {
                sink: crate::sink::sink_name(sink),
                error: SinkError::Config {
                    what: format!("sink {i}"),
                    message: format!(
                        "table {table} has no primary key: mode = \"mirror\" keeps rows by key; add a primary key to it, or use mode = \"changelog\" (it has REPLICA IDENTITY FULL)"
                    ),
                },
            });
        }
    }
    Ok(())
}
