//! Where streaming starts: creating what is missing, and the initial snapshot when the
//! slot is new.

use super::{PipelineError, RunOptions};
use crate::backfill::Backfills;
use crate::batch::{CommitPos, Position};
use crate::config::{PipelineConfig, SnapshotMode};
use crate::lsn::Lsn;
use crate::sink::Sinks;
use crate::source::snapshot::{
    Plan, Progress, Resumption, SnapshotReader, SnapshotState, snapshot_commit,
};
use crate::source::{Control, SourceError, SourceInfo};
use crate::stages::{StageError, Stages};
use crate::stats::Stats;
use pgwire_replication::ReplicationClient;
use std::sync::Arc;

/// Where streaming starts: after the checkpoint, or after the initial snapshot.
pub(super) struct Start {
    pub resume: Option<CommitPos>,
    /// The replication session that created the slot for the snapshot: it streams.
    pub session: Option<ReplicationClient>,
    pub snapshot_taken: bool,
    /// An unfinished initial snapshot whose chunks up to the checkpoint are kept: the
    /// rest is read by backfills.
    resumed: Option<(SnapshotState, Resumption)>,
}

impl Start {
    /// Creates what is missing (publication, slot) and takes the initial snapshot when
    /// the slot is new. `None`: stopped by a signal during the snapshot.
    pub async fn prepare(
        config: &PipelineConfig,
        control: &Control,
        info: &SourceInfo,
        stages: &mut Stages,
        options: &RunOptions,
        stats: &Arc<Stats>,
    ) -> Result<Option<Start>, PipelineError> {
        let mut start = Start {
            resume: stages.sinks().resume(),
            session: None,
            snapshot_taken: false,
            resumed: None,
        };
        let plan = InitialSnapshot::plan(config, info, stages).await?;
        let taking = matches!(plan, Some((_, Plan::Take { .. })));
        if let (false, false, Some(at)) = (info.slot_exists, taking, stages.sinks().held_position())
        {
            if !options.new_slot {
                return Err(SourceError::SlotMissing {
                    slot: config.source.slot.clone(),
                    checkpoint: at.end_lsn,
                }
                .into());
            }
            tracing::warn!(slot = %config.source.slot, checkpoint = %at.end_lsn, "The slot is gone: creating a new one (--new-slot). Changes committed between the checkpoint and now are not captured.");
        }
        if info.slot_exists && !taking {
            stages
                .sinks()
                .check_projections_filled()
                .map_err(StageError::from)?;
        }
        match plan {
            None => control.prepare(&config.source, info).await?,
            Some((state, Plan::Skip)) | Some((state, Plan::MarkDone)) => {
                control.prepare(&config.source, info).await?;
                if !info.slot_exists || stages.sinks().all_flushed_once() {
                    state.write(Progress::Done, None).await?;
                }
            }
            Some((state, Plan::Resume(resumption))) => {
                control.prepare(&config.source, info).await?;
                let left = resumption.unfinished(&config.source.tables);
                let left: Vec<String> = left.iter().map(|(t, _)| t.to_string()).collect();
                tracing::warn!(
                    slot = %config.source.slot,
                    kept_chunks = resumption.kept.len(),
                    kept_rows = resumption.kept_rows(),
                    tables_left = %left.join(","),
                    "The initial snapshot did not finish: keeping the chunks every sink holds; the rest of each table is read as a backfill while streaming from the consistent point."
                );
                start.resumed = Some((state, resumption));
            }
            Some((state, Plan::Take { drop_slot })) => {
                let snapshot =
                    InitialSnapshot::begin(config, control, info, stages, &state, drop_slot);
                let Some((point, session)) =
                    snapshot.await?.take(stages, options, stats, &state).await?
                else {
                    return Ok(None);
                };
                state.write(Progress::Done, Some(point)).await?;
                start.resume = Some(snapshot_commit(point));
                start.session = Some(session);
                start.snapshot_taken = true;
            }
        }
        Ok(Some(start))
    }

    /// Backfills of tables added to the publication, which have rows from before, and
    /// of what an unfinished initial snapshot did not copy.
    pub async fn backfills(
        &mut self,
        config: &PipelineConfig,
        info: &SourceInfo,
        sinks: &Sinks,
        stats: &Arc<Stats>,
    ) -> Result<Option<Backfills>, PipelineError> {
        let (SnapshotMode::Initial, Some(state)) = (config.source.snapshot, config.state_url())
        else {
            return Ok(None);
        };
        // Chunks at or before the lowest checkpoint are in every sink that keeps one
        // (sinks without are at least once anyway).
        let durable = match self.snapshot_taken {
            true => self.resume,
            false => sinks.lowest_checkpoint(),
        };
        let mut backfills = Backfills::open(
            &config.source.url,
            state,
            &config.source.slot,
            info.clone(),
            config.source.tables.clone(),
            config.batch.max_events,
            durable,
        )
        .await?;
        backfills.stats = Some(stats.clone());
        if let Some((state, resumption)) = self.resumed.take() {
            for (table, copied) in resumption.unfinished(&config.source.tables) {
                backfills.finish_snapshot(&table, copied).await?;
            }
            // The backfills' record holds the rest now.
            state.write(Progress::Done, Some(resumption.point)).await?;
        }
        if !self.snapshot_taken {
            // The snapshot read every table; tables just added to the publication
            // need a backfill otherwise.
            for table in info.publication_missing.iter().flatten() {
                backfills.request(table).await?;
            }
        }
        Ok(Some(backfills))
    }
}

/// The tables' rows at the slot's creation, written before the stream starts.
struct InitialSnapshot<'a> {
    config: &'a PipelineConfig,
    info: &'a SourceInfo,
    /// The exported snapshot and the slot's consistent point.
    name: String,
    point: Lsn,
    session: ReplicationClient,
}

impl<'a> InitialSnapshot<'a> {
    /// The progress record and what to do, or `None` with `snapshot = "never"`.
    async fn plan(
        config: &PipelineConfig,
        info: &SourceInfo,
        stages: &Stages,
    ) -> Result<Option<(SnapshotState, Plan)>, PipelineError> {
        if config.source.snapshot == SnapshotMode::Never {
            return Ok(None);
        }
        let url = config
            .state_url()
            .expect("validated: snapshot = \"initial\" has a state location");
        let state = SnapshotState::open(url, &config.source.slot)?;
        let record = state.read().await?;
        let flushed = stages.sinks().all_flushed_once();
        // A sink without a checkpoint beside others with one (a crash within the first
        // flush) holds none of the snapshot: nothing is kept, every table is read again.
        let nothing = CommitPos {
            commit_lsn: Lsn::ZERO,
            end_lsn: Lsn::ZERO,
        };
        let sinks = stages.sinks();
        let held = sinks
            .resume()
            .or(sinks.lowest_checkpoint().map(|_| nothing));
        let mut plan =
            crate::source::snapshot::plan(record.as_ref(), info.slot_exists, flushed, held);
        if let Plan::Resume(resumption) = &plan {
            let unfinished = resumption.unfinished(&config.source.tables);
            let keyless = unfinished
                .iter()
                .find(|(t, _)| info.primary_keys.get(t).is_none_or(Vec::is_empty));
            if let Some((table, _)) = keyless {
                tracing::warn!(table = %table, "The unfinished initial snapshot cannot be completed by a backfill: this table has no primary key.");
                plan = Plan::Take { drop_slot: true };
            }
        }
        if plan == Plan::Skip && record.is_none() && info.slot_exists {
            tracing::info!(slot = %config.source.slot, "The slot exists already: streaming from it without an initial snapshot.");
        }
        Ok(Some((state, plan)))
    }

    /// Makes the slot the snapshot is read from (after dropping the one an unfinished
    /// snapshot left), and drops what that one left in the sinks.
    async fn begin(
        config: &'a PipelineConfig,
        control: &Control,
        info: &'a SourceInfo,
        stages: &mut Stages,
        state: &SnapshotState,
        drop_slot: bool,
    ) -> Result<InitialSnapshot<'a>, PipelineError> {
        control.prepare_publication(&config.source, info).await?;
        if drop_slot {
            tracing::warn!(slot = %config.source.slot, "The last snapshot did not finish: dropping its slot and taking it again.");
            control.drop_slot(&config.source.slot).await?;
        }
        let discarded = stages.sinks_mut().discard_abandoned_snapshot().await;
        discarded.map_err(|e| StageError::OpenSinks(e.error))?;
        // Recorded before the slot exists: a slot found without a record was not made
        // for a snapshot.
        state.write(Progress::Started, None).await?;
        let (session, point, name) = control.create_slot_exporting(&config.source, info).await?;
        Ok(InitialSnapshot {
            config,
            info,
            name,
            point,
            session,
        })
    }

    /// Reads every table in the exported snapshot through the stages, then checkpoints
    /// it as one transaction. Returns the consistent point and the session that streams
    /// from it; `None` when stopped by a signal.
    async fn take(
        self,
        stages: &mut Stages,
        options: &RunOptions,
        stats: &Arc<Stats>,
        state: &SnapshotState,
    ) -> Result<Option<(Lsn, ReplicationClient)>, PipelineError> {
        let started = std::time::Instant::now();
        let mut reader = SnapshotReader::begin(
            &self.config.source.url,
            &self.name,
            self.config.source.tables.clone(),
            self.info.clone(),
            self.config.batch.max_events,
            self.point,
            self.config.source.snapshot_parallelism,
            Some(state.clone()),
        )
        .await?;
        reader.stats = Some(stats.clone());
        let mut position = Position::default();
        let mut committed = Position::default();
        while let Some(batch) = reader.next_batch().await? {
            if options.shutdown.is_cancelled() {
                // The chunks committed so far are kept: the next start goes on after them.
                stages.flush(&committed).await?;
                return Ok(None);
            }
            stats.add_events(batch.batch.events.len() as u64);
            position = stages.process(batch).await?;
            if !position.in_tx {
                committed = position;
            }
        }
        stages.flush(&position).await?;
        tracing::info!(rows = reader.rows, seconds = started.elapsed().as_secs(), consistent_point = %self.point, "Initial snapshot done and checkpointed; streaming from its consistent point.");
        Ok(Some((self.point, self.session)))
    }
}
