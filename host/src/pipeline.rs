//! The pipeline: source, batches, sinks, checkpoint. The whole data flow in one place.

use crate::backfill::Backfills;
use crate::batch::{Position, SourceBatch};
use crate::config::SnapshotMode;
use crate::config::{PipelineConfig, SinkConfig};
use crate::lsn::Lsn;
use crate::plugin::{
    DeadLetters, LoadError, PluginEngine, PluginFailure, TransformChain, TransformPlugin,
};
use crate::reload::Reloader;
use crate::sink::{SinkError, Sinks};
use crate::source::schemas::SchemaVersions;
use crate::source::snapshot::{
    self, Plan, Progress, SnapshotReader, SnapshotState, snapshot_commit,
};
use crate::source::{Control, PgSource, SourceError, SourceInfo};
use crate::stats::Stats;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Not a `#[source]`: the message already says everything, once.
    #[error("sink {sink}: {error}")]
    Sink { sink: String, error: SinkError },
    #[error("opening sinks: {0}")]
    OpenSinks(SinkError),
    #[error(
        "the replication stream ended unexpectedly (the server closed it); restart to resume from the checkpoint"
    )]
    StreamEnded,
    #[error(transparent)]
    LoadPlugin(#[from] LoadError),
    /// Not a `#[source]`: the message already says everything, once.
    #[error("{0}; the checkpoint stays before this batch")]
    Plugin(PluginFailure),
}

impl PipelineError {
    /// Whether running again may succeed: a lost connection, a server that is down or
    /// restarting, storage that failed to write. Configuration, permission, plugin and
    /// data errors are not retried.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => matches!(
                e,
                SourceError::Connect { .. }
                    | SourceError::Stream { .. }
                    | SourceError::Sql { .. }
                    | SourceError::SlotInUse { .. }
            ),
            PipelineError::StreamEnded => true,
            PipelineError::Sink { error, .. } | PipelineError::OpenSinks(error) => {
                matches!(error, SinkError::Write { .. } | SinkError::Checkpoint(_))
            }
            PipelineError::LoadPlugin(_) | PipelineError::Plugin(_) => false,
        }
    }
}

impl From<PluginFailure> for PipelineError {
    fn from(failure: PluginFailure) -> PipelineError {
        PipelineError::Plugin(failure)
    }
}

impl From<(String, SinkError)> for PipelineError {
    fn from((sink, error): (String, SinkError)) -> PipelineError {
        match error {
            // The failure names the plugin already.
            SinkError::Plugin(failure) => PipelineError::Plugin(failure),
            error => PipelineError::Sink { sink, error },
        }
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
}

/// Runs a pipeline until shutdown, an error, or (with `until_caught_up`) the end of what
/// was committed before it started.
pub async fn run(
    config: &PipelineConfig,
    options: RunOptions,
    stats: Arc<Stats>,
) -> Result<RunSummary, PipelineError> {
    let control = Control::connect(&config.source.url).await?;
    // Nothing is created or written before every check has passed.
    let mut info = control.preflight(&config.source).await?;
    if let Some(state) = config.state_url() {
        info.versions = SchemaVersions::load(state, &config.source.slot).await?;
    }
    let mut target = match options.until_caught_up {
        true => Some(CaughtUp::mark(&control, info.slot_exists).await?),
        false => None,
    };
    let mut plugins = Plugins::setup(config)?;
    plugins.stats = Some(stats.clone());
    let mut transforms = Transforms::load(config, &plugins).await?;
    if let (Some(file), Some(_)) = (&options.pipeline_file, &transforms.chain) {
        transforms.reloader = Some(Reloader::start(
            file.clone(),
            config,
            plugins.clone(),
            config.reload.watch,
            config.reload.poll_interval,
        ));
    }
    transforms.slot = config.source.slot.clone();
    let mut sinks = Sinks::open(
        &config.sinks,
        &config.source.slot,
        plugins.engine.as_ref(),
        plugins.dead_letters.as_ref(),
    )
    .await
    .map_err(|e| match e {
        SinkError::LoadPlugin(e) => PipelineError::LoadPlugin(e),
        e => PipelineError::OpenSinks(e),
    })?;
    sinks.count_in(&config.sinks, &stats);

    // The initial snapshot, when the slot is new: its rows first, then the stream from
    // the slot's consistent point.
    let mut resume = sinks.resume();
    let mut session = None;
    let mut snapshot_taken = false;
    let plan = InitialSnapshot::plan(config, &info, &sinks).await?;
    let taking = matches!(plan, Some((_, Plan::Take { .. })));
    if let (false, false, Some(at)) = (info.slot_exists, taking, sinks.held_position()) {
        if !options.new_slot {
            return Err(SourceError::SlotMissing {
                slot: config.source.slot.clone(),
                checkpoint: at.end_lsn,
            }
            .into());
        }
        tracing::warn!(slot = %config.source.slot, checkpoint = %at.end_lsn, "The slot is gone: creating a new one (--new-slot). Changes committed between the checkpoint and now are not captured.");
    }
    match plan {
        None => control.prepare(&config.source, &info).await?,
        Some((state, Plan::Skip)) | Some((state, Plan::MarkDone)) => {
            control.prepare(&config.source, &info).await?;
            if !info.slot_exists || sinks.all_flushed_once() {
                state.write(Progress::Done, None).await?;
            }
        }
        Some((state, Plan::Take { drop_slot })) => {
            control.prepare_publication(&config.source, &info).await?;
            if drop_slot {
                tracing::warn!(slot = %config.source.slot, "The last snapshot did not finish: dropping its slot and taking it again.");
                control.drop_slot(&config.source.slot).await?;
            }
            sinks
                .discard_abandoned_snapshot()
                .await
                .map_err(|(_, e)| PipelineError::OpenSinks(e))?;
            // Recorded before the slot exists: a slot found without a record was not
            // made for a snapshot.
            state.write(Progress::Started, None).await?;
            let (client, point, name) =
                control.create_slot_exporting(&config.source, &info).await?;
            let snapshot = InitialSnapshot {
                config,
                info: &info,
                name,
                point,
            };
            match snapshot
                .take(&mut transforms, &mut sinks, &options, &stats)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Stopped by a signal: nothing of it is checkpointed; the next start
                    // takes it again.
                    sinks.abort().await;
                    transforms.report();
                    return Ok(RunSummary {
                        events: stats.snapshot().events,
                        checkpoint: None,
                    });
                }
                Err(e) => {
                    sinks.abort().await;
                    return Err(e);
                }
            }
            state.write(Progress::Done, Some(point)).await?;
            resume = Some(snapshot_commit(point));
            session = Some(client);
            snapshot_taken = true;
            if let Some(t) = target.as_mut() {
                t.slot_recreated();
            }
        }
    }

    // Tables added to the publication now have rows from before: backfill them.
    let mut backfills = match (config.source.snapshot, config.state_url()) {
        (SnapshotMode::Initial, Some(state)) => {
            let mut b = Backfills::open(
                &config.source.url,
                state,
                &config.source.slot,
                info.clone(),
                config.source.tables.clone(),
                config.batch.max_events,
                // Chunks at or before the lowest checkpoint are in every sink that keeps
                // one (sinks without are at least once anyway).
                match snapshot_taken {
                    true => resume,
                    false => sinks.lowest_checkpoint(),
                },
            )
            .await?;
            if !snapshot_taken {
                // The snapshot read every table; tables just added to the publication
                // need a backfill otherwise.
                for table in info.publication_missing.iter().flatten() {
                    b.request(table).await?;
                }
            }
            Some(b)
        }
        _ => None,
    };

    let mut source = PgSource::start(
        &control,
        &config.source,
        &info,
        config.batch.clone(),
        resume,
        stats.clone(),
        session,
    )
    .await?;

    let result = stream(
        &mut source,
        &mut transforms,
        &mut sinks,
        backfills.as_mut(),
        &info.versions,
        target,
        &options,
        &stats,
    )
    .await;
    let checkpoint = match &result {
        Ok(position) => {
            // Stopping: make what was written durable (at a transaction boundary).
            let flushed = sinks.flush_all(position).await;
            let lsn = sinks.durable_lsn(position);
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
    sinks.abort().await;
    transforms.report();
    result?;
    Ok(RunSummary {
        events: stats.snapshot().events,
        checkpoint,
    })
}

/// The loop: batches from the source into every sink, then the checkpoint.
// Each stage is its own argument so the loop reads top to bottom as the data flows.
#[allow(clippy::too_many_arguments)]
async fn stream(
    source: &mut PgSource,
    transforms: &mut Transforms,
    sinks: &mut Sinks,
    mut backfills: Option<&mut Backfills>,
    versions: &SchemaVersions,
    mut target: Option<CaughtUp>,
    options: &RunOptions,
    stats: &Stats,
) -> Result<Position, PipelineError> {
    let mut position = Position::default();
    stats.streaming_started();
    loop {
        if let Some(b) = backfills.as_deref_mut() {
            b.step().await?; // the next chunk of a table being backfilled, if any
        }
        let batch = tokio::select! {
            biased;
            _ = options.shutdown.cancelled() => return Ok(position),
            b = source.next_batch() => b?.ok_or(PipelineError::StreamEnded)?,
        };
        let started = std::time::Instant::now();
        if let Some(t) = target.as_mut() {
            t.observe(&batch.markers);
        }
        transforms.observe(&batch.markers);
        let batch = match backfills.as_deref_mut() {
            Some(b) => b.process(batch).await?, // backfilled rows at their watermarks
            None => batch,
        };
        let span = batch_span(&batch);
        if !batch.batch.events.is_empty() {
            stats.add_batch();
            stats.add_read(&batch.batch);
        }
        stats.add_bytes_in(batch.bytes);
        let batch = transforms.apply(batch).instrument(span.clone()).await?; // declared order
        sinks.write_all(&batch).instrument(span.clone()).await?; // fan-out; all must succeed
        stats.add_written(&batch.batch);
        if !batch.batch.events.is_empty() {
            stats.observe_batch(started.elapsed());
            span.in_scope(|| {
                tracing::debug!(
                    events = batch.batch.events.len(),
                    "Batch written to every sink."
                )
            });
        }
        versions.save_if_changed().await?; // schema versions, for the next run
        position = batch.position;
        if let Some(lsn) = sinks.durable_lsn(&position) {
            source.acknowledge(lsn); // the slot's flush position: only what is durable
            stats.set_checkpoint(lsn);
        }
        let backfilling = backfills.as_deref().is_some_and(|b| !b.idle());
        if !backfilling && target.as_ref().is_some_and(|t| t.reached(&position)) {
            tracing::info!(position = %position.delivered_through(), "Caught up with the source.");
            return Ok(position);
        }
    }
}

/// The span of one batch: every line logged while it is transformed and written says
/// which tables and which commit LSNs it holds (besides the pipeline and slot).
fn batch_span(batch: &SourceBatch) -> tracing::Span {
    let events = &batch.batch.events;
    if events.is_empty() {
        return tracing::Span::none();
    }
    let relations = &batch.batch.relations;
    let mut seen = vec![false; relations.len()];
    let (mut first, mut last) = (u64::MAX, 0);
    for e in events {
        seen[e.rel as usize] = true;
        first = first.min(e.commit_lsn);
        last = last.max(e.commit_lsn);
    }
    let tables: Vec<String> = relations
        .iter()
        .zip(seen)
        .filter(|(_, seen)| *seen)
        .map(|(r, _)| r.qualified_name())
        .collect();
    let lsn = match first == last {
        true => Lsn(first).to_string(),
        false => format!("{}..{}", Lsn(first), Lsn(last)),
    };
    tracing::info_span!("batch", table = %tables.join(","), lsn = %lsn)
}

/// The tables' rows at the slot's creation, written before the stream starts.
struct InitialSnapshot<'a> {
    config: &'a PipelineConfig,
    info: &'a SourceInfo,
    /// The exported snapshot and the slot's consistent point.
    name: String,
    point: Lsn,
}

impl InitialSnapshot<'_> {
    /// The progress record and what to do, or `None` with `snapshot = "never"`.
    async fn plan(
        config: &PipelineConfig,
        info: &SourceInfo,
        sinks: &Sinks,
    ) -> Result<Option<(SnapshotState, Plan)>, PipelineError> {
        if config.source.snapshot == SnapshotMode::Never {
            return Ok(None);
        }
        let url = config
            .state_url()
            .expect("validated: snapshot = \"initial\" has a state location");
        let state =
            SnapshotState::open(url, &config.source.slot).map_err(PipelineError::OpenSinks)?;
        let progress = state.read().await?;
        let plan = snapshot::plan(progress, info.slot_exists, sinks.all_flushed_once());
        if plan == Plan::Skip && progress.is_none() && info.slot_exists {
            tracing::info!(slot = %config.source.slot, "The slot exists already: streaming from it without an initial snapshot.");
        }
        Ok(Some((state, plan)))
    }

    /// Reads every table in the exported snapshot through the transforms into the
    /// sinks, then checkpoints it as one transaction. `false` when stopped by a signal.
    async fn take(
        self,
        transforms: &mut Transforms,
        sinks: &mut Sinks,
        options: &RunOptions,
        stats: &Stats,
    ) -> Result<bool, PipelineError> {
        let started = std::time::Instant::now();
        let mut reader = SnapshotReader::begin(
            &self.config.source.url,
            &self.name,
            self.config.source.tables.clone(),
            self.info.clone(),
            self.config.batch.max_events,
            self.point,
        )
        .await?;
        let mut position = Position::default();
        while let Some(batch) = reader.next_batch().await? {
            if options.shutdown.is_cancelled() {
                return Ok(false);
            }
            stats.add_events(batch.batch.events.len() as u64);
            if !batch.batch.events.is_empty() {
                stats.add_batch();
            }
            let batch = transforms.apply(batch).await?;
            sinks.write_all(&batch).await?;
            position = batch.position;
        }
        sinks.flush_all(&position).await?;
        tracing::info!(rows = reader.rows, seconds = started.elapsed().as_secs(), consistent_point = %self.point, "Initial snapshot done and checkpointed; streaming from its consistent point.");
        Ok(true)
    }
}

/// The point `--until-caught-up` waits for: the server's flushed WAL position when the
/// run started. Every transaction committed before then ends at or before it.
#[derive(Debug, Clone)]
struct CaughtUp {
    target: Lsn,
    /// A logical message written after the mark, when the stream will pass it (the slot
    /// existed before): reaching it proves every earlier message (a backfill request)
    /// was seen, which a keepalive position alone does not.
    marker: Option<String>,
    seen: bool,
}

impl CaughtUp {
    const PREFIX: &str = "weir.caught-up";

    async fn mark(control: &Control, slot_exists: bool) -> Result<CaughtUp, SourceError> {
        let target = control.current_wal_flush_lsn().await?;
        let id = format!("{:x}", chrono::Utc::now().timestamp_micros());
        // The message also lets the stream reach the mark at once when the server is
        // otherwise idle and its last record is incomplete.
        let marker = match control
            .client
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&Self::PREFIX, &id],
            )
            .await
        {
            Ok(_) => slot_exists.then_some(id),
            Err(e) => {
                tracing::debug!(error = %e, "No marker message; waiting for keepalives instead.");
                None
            }
        };
        Ok(CaughtUp {
            target,
            marker,
            seen: false,
        })
    }

    /// The slot was made after the mark: the stream never passes the marker.
    fn slot_recreated(&mut self) {
        self.marker = None;
    }

    fn observe(&mut self, markers: &[crate::batch::Marker]) {
        if let Some(id) = &self.marker
            && markers
                .iter()
                .any(|m| m.prefix == Self::PREFIX && m.content == *id)
        {
            self.seen = true;
        }
    }

    fn reached(&self, position: &Position) -> bool {
        !position.in_tx
            && match self.marker {
                Some(_) => self.seen,
                None => position.delivered_through() >= self.target,
            }
    }
}

/// What plugins share: the engine (made when any plugin is configured) and the
/// dead-letter location (when the pipeline has one).
#[derive(Clone)]
pub struct Plugins {
    pub engine: Option<PluginEngine>,
    pub dead_letters: Option<DeadLetters>,
    /// Where plugins count their calls (none outside a pipeline run).
    pub stats: Option<Arc<Stats>>,
}

impl Plugins {
    /// Called once per run: the size of the error does not matter here.
    #[allow(clippy::result_large_err)]
    pub fn setup(config: &PipelineConfig) -> Result<Plugins, PipelineError> {
        let any = !config.transforms.is_empty()
            || config
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Plugin(_)));
        let engine = match any {
            true => Some(
                PluginEngine::new(PluginEngine::default_cache_dir()).map_err(|e| {
                    LoadError::Invalid {
                        plugin: "engine".into(),
                        message: e.to_string(),
                    }
                })?,
            ),
            false => None,
        };
        let dead_letters = match config.state_url() {
            Some(url) => Some(
                DeadLetters::open(url, &config.source.slot).map_err(PipelineError::OpenSinks)?,
            ),
            None => None,
        };
        Ok(Plugins {
            engine,
            dead_letters,
            stats: None,
        })
    }
}

/// Loads the transform chain of `config` (blocking: compiling can take seconds).
pub fn load_chain(
    config: &PipelineConfig,
    plugins: &Plugins,
) -> Result<Option<TransformChain>, LoadError> {
    if plugins.engine.is_none() {
        return Ok(None);
    }
    if config.transforms.is_empty() {
        return Ok(None);
    }
    let mut chain = Vec::new();
    for i in 0..config.transforms.len() {
        let plugin = load_transform(config, plugins, i)?;
        tracing::info!(plugin = %plugin.label(), on_error = plugin.on_error().as_str(), "Transform loaded.");
        chain.push(plugin);
    }
    Ok(Some(TransformChain::new(chain)))
}

/// Loads transform `i` of `config` (blocking), with its dead-letter stage.
pub fn load_transform(
    config: &PipelineConfig,
    plugins: &Plugins,
    i: usize,
) -> Result<TransformPlugin, LoadError> {
    let engine = plugins
        .engine
        .as_ref()
        .expect("an engine is made when a transform is configured");
    let t = &config.transforms[i];
    let mut plugin = TransformPlugin::load(engine, &t.plugin, &t.config)?;
    if let Some(stats) = &plugins.stats {
        plugin.set_call_stats(stats.component(crate::stats::Component::Plugin, plugin.name()));
    }
    if plugin.on_error() == crate::plugin::OnError::DeadLetter {
        let Some(d) = &plugins.dead_letters else {
            return Err(LoadError::Invalid {
                plugin: plugin.label(),
                message: "has on_error = \"dead-letter\" but the pipeline has no place for dead letters: add a parquet sink or [state] url".into(),
            });
        };
        plugin.set_dead_letters(d.clone(), format!("transform-{i}"));
    }
    Ok(plugin)
}

/// The transform chain, run on a blocking thread (plugin calls are synchronous), and the
/// reloader that hands it new transform versions.
#[derive(Default)]
struct Transforms {
    chain: Option<TransformChain>,
    reloader: Option<Reloader>,
    slot: String,
    /// `name@version` of each transform, as recorded with the output; a new value (even
    /// of the same text) after every swap, so sinks start new files.
    labels: Option<Arc<str>>,
    /// The last batch ended inside a transaction: no swap until it ends, so a
    /// transaction goes through one version of each transform.
    mid_tx: bool,
}

impl Transforms {
    async fn load(config: &PipelineConfig, plugins: &Plugins) -> Result<Transforms, PipelineError> {
        let (config, plugins) = (config.clone(), plugins.clone());
        let chain = tokio::task::spawn_blocking(move || load_chain(&config, &plugins))
            .await
            .expect("plugin loading does not panic")?;
        let mut t = Transforms {
            chain,
            ..Default::default()
        };
        t.labels = t.current_labels();
        Ok(t)
    }

    fn current_labels(&self) -> Option<Arc<str>> {
        let chain = self.chain.as_ref()?;
        let labels: Vec<String> = chain.plugins().iter().map(|p| p.label()).collect();
        Some(Arc::from(labels.join(",")))
    }

    /// Logs what each transform set aside during the run.
    fn report(&self) {
        for plugin in self.chain.iter().flat_map(|c| c.plugins()) {
            if plugin.skipped() > 0 {
                tracing::warn!(plugin = %plugin.label(), events = plugin.skipped(), "Events skipped by on_error = \"skip\" in this run.");
            }
            if plugin.dead_lettered() > 0 {
                tracing::warn!(plugin = %plugin.label(), events = plugin.dead_lettered(), "Events written to the dead-letter location in this run; see `weir dead-letter list`.");
            }
        }
        if let Some(r) = &self.reloader {
            let (swapped, failed) = (
                r.counts.swapped.load(std::sync::atomic::Ordering::Relaxed),
                r.counts.failed.load(std::sync::atomic::Ordering::Relaxed),
            );
            if swapped + failed > 0 {
                tracing::info!(swapped, failed, "Transform reloads in this run.");
            }
        }
    }

    /// Reacts to `weir reload` for this pipeline's slot.
    fn observe(&self, markers: &[crate::batch::Marker]) {
        if let Some(r) = &self.reloader
            && markers
                .iter()
                .any(|m| m.prefix == crate::reload::RELOAD_MARKER && m.content == self.slot)
        {
            r.request(crate::reload::Trigger::Command);
        }
    }

    /// Swaps in the transform versions the reloader has ready: between two batches, so
    /// every batch goes through one version of each transform.
    fn swap_ready(&mut self) {
        let (Some(reloader), Some(chain)) = (self.reloader.as_mut(), self.chain.as_mut()) else {
            return;
        };
        let mut swapped = false;
        while let Some(swap) = reloader.ready() {
            let new = swap.plugin.label();
            let old = chain.replace(swap.index, swap.plugin);
            reloader
                .counts
                .swapped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(transform = swap.index, old = %old.label(), new = %new, "Transform swapped in at a batch boundary.");
            swapped = true;
        }
        if swapped {
            self.labels = self.current_labels();
        }
    }

    async fn apply(&mut self, mut batch: SourceBatch) -> Result<SourceBatch, PipelineError> {
        if !self.mid_tx {
            self.swap_ready();
        }
        self.mid_tx = batch.position.in_tx;
        batch.transforms = self.labels.clone();
        let Some(mut chain) = self.chain.take() else {
            return Ok(batch);
        };
        if batch.batch.events.is_empty() {
            self.chain = Some(chain);
            return Ok(batch);
        }
        let events = std::mem::take(&mut batch.batch);
        let span = tracing::Span::current();
        let (chain, result) = tokio::task::spawn_blocking(move || {
            let _batch = span.enter();
            let result = chain.apply(events);
            (chain, result)
        })
        .await
        .expect("the transform chain does not panic");
        self.chain = Some(chain);
        batch.batch = result?;
        Ok(batch)
    }
}
