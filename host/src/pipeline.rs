//! The pipeline: source, stages, checkpoint. The whole data flow in one place.

mod caught_up;
mod start;
mod tables;

use crate::backfill::Backfills;
use crate::batch::{Marker, Position, Signal};
use crate::config::PipelineConfig;
use crate::error::ErrorKind;
use crate::lsn::Lsn;
use crate::plugin::Plugins;
use crate::source::schemas::SchemaVersions;
use crate::source::{Control, PgSource, SourceError};
use crate::stages::{StageError, Stages};
use crate::stats::Stats;
use caught_up::CaughtUp;
use start::Start;
use std::sync::Arc;
use tables::TableWatch;
use tokio_util::sync::CancellationToken;

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(
        "the replication stream ended unexpectedly (the server closed it); restart to resume from the checkpoint"
    )]
    StreamEnded,
}

impl PipelineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Source(e) => e.kind(),
            PipelineError::Stage(e) => e.kind(),
            PipelineError::StreamEnded => ErrorKind::Connect,
        }
    }

    /// Whether running again may succeed: a lost connection, a server that is down or
    /// restarting, storage that failed to write. Configuration, permission, schema,
    /// plugin and data errors are not retried.
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }
}

impl From<crate::storage::StorageError> for PipelineError {
    fn from(e: crate::storage::StorageError) -> PipelineError {
        PipelineError::Source(e.into())
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once everything committed before the start is durable.
    pub until_caught_up: bool,
    /// Cancelled on SIGINT/SIGTERM: finish the batch in hand, checkpoint, stop.
    pub shutdown: CancellationToken,
    /// The pipeline file, for hot reload of transforms (none: no reload).
    pub pipeline_file: Option<std::path::PathBuf>,
    /// The slot is gone and the output holds a checkpoint: make a new slot anyway.
    pub new_slot: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub events: u64,
    /// The position reported to the server as flushed.
    pub checkpoint: Option<Lsn>,
    /// Stopped to run again at once: new tables match `source.tables`.
    pub again: bool,
}

/// Runs a pipeline until shutdown, an error, or (with `until_caught_up`) the end of what
/// was committed before it started.
pub async fn run(
    config: &PipelineConfig,
    options: RunOptions,
    stats: Arc<Stats>,
) -> Result<RunSummary, PipelineError> {
    let control = Control::connect(&config.source.url).await?;
    // Patterns in source.tables name the tables that match them now.
    let selected = control.resolve_tables(&config.source.tables).await?;
    selected.warn_left_out();
    let mut ends = Ends {
        caught_up: None,
        new_tables: TableWatch::new(&config.source.tables, &selected.tables),
    };
    let config = &config.with_tables(selected.tables);
    // Nothing is created or written before every check has passed.
    let mut info = control.preflight(&config.source).await?;
    crate::sink::postgres::check_keys(config, &info).map_err(StageError::from)?;
    config.check_outputs_writable().await?;
    if let Some(state) = config.state_url() {
        info.versions = SchemaVersions::load(state, &config.source.slot).await?;
    }
    if options.until_caught_up {
        ends.caught_up = Some(CaughtUp::mark(&control, info.slot_exists).await?);
    }
    let mut plugins = Plugins::setup(config).map_err(StageError::from)?;
    plugins.stats = Some(stats.clone());
    let file = options.pipeline_file.as_deref();
    let mut stages = Stages::open(config, &plugins, stats.clone(), file).await?;

    let start = Start::prepare(config, &control, &info, &mut stages, &options, &stats).await;
    let start = match start {
        Ok(Some(start)) => start,
        stopped_or_failed => {
            stages.close().await;
            stopped_or_failed?;
            // Stopped by a signal during the initial snapshot: the chunks committed
            // so far are checkpointed; the next start reads the rest.
            return Ok(RunSummary {
                events: stats.snapshot().events,
                checkpoint: None,
                again: false,
            });
        }
    };
    if let (true, Some(t)) = (start.snapshot_taken, ends.caught_up.as_mut()) {
        t.slot_recreated();
    }
    let mut start = start;
    let mut backfills = start
        .backfills(config, &info, stages.sinks(), &stats)
        .await?;
    let gated = start.session;
    let mut source = PgSource::start(
        &control,
        &config.source,
        &info,
        config.batch.clone(),
        start.resume,
        stats.clone(),
        gated,
    )
    .await?;

    let result = stream(
        (&mut source, &control),
        &mut stages,
        backfills.as_mut(),
        &info.versions,
        ends,
        &options,
        &stats,
    )
    .await;
    let checkpoint = match &result {
        Ok((position, _)) => {
            // Stopping: make what was written durable (at a transaction boundary).
            let flushed = stages.flush(position).await;
            let lsn = stages.durable_lsn(position);
            if let Some(lsn) = lsn {
                source.acknowledge(lsn);
                stats.set_checkpoint(lsn);
            }
            flushed?;
            lsn
        }
        Err(_) => None,
    };
    source.stop().await;
    stages.close().await;
    let (_, again) = result?;
    Ok(RunSummary {
        events: stats.snapshot().events,
        checkpoint,
        again,
    })
}

/// What ends the stream besides a signal: the point `--until-caught-up` waits for, and
/// new tables a pattern of `source.tables` selects (the run ends to take them in).
struct Ends {
    caught_up: Option<CaughtUp>,
    new_tables: Option<TableWatch>,
}

/// Without backfills, rows from before a column added with a default keep null in the
/// output: said once per change, so nobody takes it for the source's value.
fn warn_columns_added(markers: &[Marker]) {
    for marker in markers {
        if let Signal::ColumnsAdded { table, columns } = &marker.signal {
            tracing::warn!(table = %table, columns = %columns.join(","), "Columns added: rows written before keep null in the output if a column has a default, because backfills need source.snapshot = \"initial\" and a state location.");
        }
    }
}

/// The loop: batches from the source through the stages, then the checkpoint. Returns
/// where it stopped, and whether the pipeline should run again at once (new tables).
async fn stream(
    (source, control): (&mut PgSource, &Control),
    stages: &mut Stages,
    mut backfills: Option<&mut Backfills>,
    versions: &SchemaVersions,
    mut ends: Ends,
    options: &RunOptions,
    stats: &Stats,
) -> Result<(Position, bool), PipelineError> {
    let mut position = Position::default();
    stats.streaming_started();
    loop {
        if let Some(b) = backfills.as_deref_mut() {
            b.step().await?; // the next chunk of a table being backfilled, if any
        }
        let batch = tokio::select! {
            biased;
            _ = options.shutdown.cancelled() => return Ok((position, false)),
            b = source.next_batch() => b?.ok_or(PipelineError::StreamEnded)?,
        };
        if let Some(t) = ends.caught_up.as_mut() {
            t.observe(&batch.markers);
        }
        stages.observe(&batch.markers);
        let batch = match backfills.as_deref_mut() {
            Some(b) => b.process(batch).await?, // backfilled rows at their watermarks
            None => {
                warn_columns_added(&batch.markers);
                batch
            }
        };
        position = stages.process(batch).await?; // transforms, then every sink
        versions.save_if_changed().await?; // schema versions, for the next run
        if let Some(lsn) = stages.durable_lsn(&position) {
            source.acknowledge(lsn); // the slot's flush position: only what is durable
            stats.set_checkpoint(lsn);
        }
        let backfilling = backfills.as_deref().is_some_and(|b| !b.idle());
        if !backfilling
            && ends
                .caught_up
                .as_ref()
                .is_some_and(|t| t.reached(&position))
        {
            tracing::info!(position = %position.delivered_through(), "Caught up with the source.");
            return Ok((position, false));
        }
        if let Some(w) = ends.new_tables.as_mut()
            && !position.in_tx
            && w.appeared(control).await?
        {
            return Ok((position, true));
        }
    }
}
