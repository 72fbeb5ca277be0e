//! Stages: the one path every batch takes, whether it comes from the stream, the initial
//! snapshot or a dead-letter replay. The transform chain in declared order, then every
//! sink; what is durable afterwards decides how far the slot may be acknowledged.
//!
//! The rule it keeps: a batch reaches the sinks whole or not at all, through one version
//! of each transform, and nothing is reported durable that a sink has not made durable.

use crate::batch::{Marker, Position, Signal, SourceBatch};
use crate::config::PipelineConfig;
use crate::error::{ErrorKind, HostPanic};
use crate::lsn::Lsn;
use crate::plugin::reload::{Reloader, Trigger};
use crate::plugin::{
    DeadLetter, DeadLetterError, Instance, LoadError, PluginFailure, Plugins, Stage,
    TransformChain, load_chain,
};
use crate::sink::{NamedSinkError, SinkError, Sinks};
use crate::stats::Stats;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument;

/// A stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Not a `#[source]`: the message already says everything, once.
    #[error("sink {sink}: {error}")]
    Sink { sink: String, error: SinkError },
    #[error("opening sinks: {0}")]
    OpenSinks(SinkError),
    #[error(transparent)]
    LoadPlugin(#[from] LoadError),
    /// Not a `#[source]`: the message already says everything, once.
    #[error("{0}; the checkpoint stays before this batch")]
    Plugin(PluginFailure),
    #[error(transparent)]
    Panic(#[from] HostPanic),
}

impl StageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StageError::Sink { error, .. } | StageError::OpenSinks(error) => error.kind(),
            StageError::LoadPlugin(e) => e.kind(),
            StageError::Plugin(_) => ErrorKind::Plugin,
            StageError::Panic(_) => ErrorKind::Internal,
        }
    }

    fn opening(e: NamedSinkError) -> StageError {
        match e.error {
            SinkError::LoadPlugin(e) => StageError::LoadPlugin(e),
            error => StageError::OpenSinks(error),
        }
    }
}

impl From<NamedSinkError> for StageError {
    fn from(NamedSinkError { sink, error }: NamedSinkError) -> StageError {
        match error {
            // The failure names the plugin already.
            SinkError::Plugin(failure) => StageError::Plugin(failure),
            SinkError::Panic(panic) => StageError::Panic(panic),
            error => StageError::Sink { sink, error },
        }
    }
}

impl From<PluginFailure> for StageError {
    fn from(failure: PluginFailure) -> StageError {
        StageError::Plugin(failure)
    }
}

/// The transforms and sinks of a pipeline, and the counters of what passes through.
pub struct Stages {
    transforms: Transforms,
    sinks: Sinks,
    stats: Arc<Stats>,
}

impl Stages {
    /// Loads the transforms (watching `pipeline_file` for new versions, when given) and
    /// opens every sink.
    pub async fn open(
        config: &PipelineConfig,
        plugins: &Plugins,
        stats: Arc<Stats>,
        pipeline_file: Option<&std::path::Path>,
    ) -> Result<Stages, StageError> {
        let mut transforms = Transforms::load(config, plugins).await?;
        if let (Some(file), true) = (pipeline_file, transforms.configured) {
            transforms.reloader = Some(Reloader::start(
                file.to_path_buf(),
                config,
                plugins.clone(),
                config.reload.watch,
                config.reload.poll_interval,
            ));
        }
        transforms.slot = config.source.slot.clone();
        let mut sinks = Sinks::open(&config.sinks, &config.source.slot, plugins)
            .await
            .map_err(StageError::opening)?;
        if let Some(url) = config.state_url().filter(|_| config.keeps_ledger()) {
            sinks
                .keep_ledger(url, &config.source.slot)
                .await
                .map_err(StageError::opening)?;
        }
        Ok(Stages {
            transforms,
            sinks,
            stats,
        })
    }

    /// The stages of a dead-letter replay: no reloads, sinks opened to take dead letters.
    pub async fn for_replay(
        config: &PipelineConfig,
        plugins: &Plugins,
    ) -> Result<Stages, StageError> {
        let transforms = Transforms::load(config, plugins).await?;
        let sinks = Sinks::open_for_replay(&config.sinks, &config.source.slot, plugins)
            .await
            .map_err(StageError::opening)?;
        Ok(Stages {
            transforms,
            sinks,
            stats: Arc::default(),
        })
    }

    pub fn sinks(&self) -> &Sinks {
        &self.sinks
    }

    pub fn sinks_mut(&mut self) -> &mut Sinks {
        &mut self.sinks
    }

    /// Takes a batch through the transforms into every sink; returns the position after
    /// it. Counts what was read and written, and how long it took.
    pub async fn process(&mut self, batch: SourceBatch) -> Result<Position, StageError> {
        let started = std::time::Instant::now();
        let span = batch_span(&batch);
        let events = batch.batch.events.len();
        if events > 0 {
            self.stats.add_batch();
            self.stats.add_read(&batch.batch);
        }
        self.stats.add_bytes_in(batch.bytes);
        let batch = self
            .transforms
            .apply(batch)
            .instrument(span.clone())
            .await?; // declared order
        self.sinks
            .write_all(&batch)
            .instrument(span.clone())
            .await?; // fan-out; all must succeed
        self.stats.add_written(&batch.batch);
        if events > 0 {
            self.stats.observe_batch(started.elapsed());
            let written = batch.batch.events.len();
            span.in_scope(|| tracing::debug!(events = written, "Batch written to every sink."));
        }
        Ok(batch.position)
    }

    /// Makes everything written durable (at a transaction boundary).
    pub async fn flush(&mut self, position: &Position) -> Result<(), StageError> {
        Ok(self.sinks.flush_all(position).await?)
    }

    /// The LSN the slot may be acknowledged up to: durable in every sink.
    pub fn durable_lsn(&self, position: &Position) -> Option<Lsn> {
        self.sinks.durable_lsn(position)
    }

    /// Reacts to the stream's signals for the stages (`weir reload`).
    pub fn observe(&self, markers: &[Marker]) {
        self.transforms.observe(markers);
    }

    /// Abandons unfinished output and logs what plugins set aside in this run.
    pub async fn close(self) {
        self.sinks.abort().await;
        self.transforms.report();
    }

    /// Delivers a dead letter from where it failed: a transform's through that transform
    /// and the ones after it into every sink, a sink's into that sink only. Its output is
    /// named after it, so a replay run again rewrites instead of repeating.
    pub async fn replay(&mut self, letter: &DeadLetter) -> Result<(), ReplayError> {
        let event = letter.event()?;
        let name = format!(
            "replay-{}-{:016X}-{:010}",
            letter.stage, letter.commit_lsn, letter.seq
        );
        let (batch, only) = match letter.stage {
            Stage::Transform(i) => (self.transforms.replay_from(i, event).await?, None),
            Stage::Sink(i) => (event, Some(i)),
        };
        if batch.events.is_empty() {
            return Ok(());
        }
        self.sinks
            .write_replay(&batch, only, &name)
            .await
            .map_err(|e| ReplayError::Stage(e.into()))
    }
}

/// A dead letter that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("the pipeline has no transforms now")]
    NoTransforms,
    #[error("the plugin set it aside again (see the log above)")]
    SetAsideAgain,
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

/// The transform chain, run on a blocking thread (plugin calls are synchronous), and the
/// reloader that hands it new transform versions.
#[derive(Default)]
struct Transforms {
    /// `None` while a call runs, and for good once a panic took the chain with it.
    chain: Option<TransformChain>,
    /// The pipeline has transforms.
    configured: bool,
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
    async fn load(config: &PipelineConfig, plugins: &Plugins) -> Result<Transforms, StageError> {
        let (config, plugins) = (config.clone(), plugins.clone());
        let chain =
            crate::error::blocking("loading transforms", move || load_chain(&config, &plugins))
                .await??;
        let mut t = Transforms {
            configured: chain.is_some(),
            chain,
            ..Default::default()
        };
        t.labels = t.current_labels();
        Ok(t)
    }

    fn current_labels(&self) -> Option<Arc<str>> {
        let chain = self.chain.as_ref()?;
        let labels: Vec<String> = chain
            .plugins()
            .iter()
            .map(|p| format!("{}#{}", p.label(), p.common().sha256))
            .collect();
        Some(Arc::from(labels.join(",")))
    }

    /// Logs what each transform set aside during the run.
    fn report(&self) {
        for plugin in self.chain.iter().flat_map(|c| c.plugins()) {
            plugin.report();
        }
        if let Some(r) = &self.reloader {
            let swapped = r.counts.swapped.load(Ordering::Relaxed);
            let failed = r.counts.failed.load(Ordering::Relaxed);
            if swapped + failed > 0 {
                tracing::info!(swapped, failed, "Transform reloads in this run.");
            }
        }
    }

    /// Reacts to `weir reload` for this pipeline's slot.
    fn observe(&self, markers: &[Marker]) {
        let ours = |m: &Marker| matches!(&m.signal, Signal::Reload { slot } if *slot == self.slot);
        if let Some(r) = &self.reloader
            && markers.iter().any(ours)
        {
            r.request(Trigger::Command);
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
            reloader.counts.swapped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(transform = swap.index, old = %old.label(), new = %new, "Transform swapped in at a batch boundary.");
            swapped = true;
        }
        if swapped {
            self.labels = self.current_labels();
        }
    }

    async fn apply(&mut self, mut batch: SourceBatch) -> Result<SourceBatch, StageError> {
        if !self.mid_tx {
            self.swap_ready();
        }
        self.mid_tx = batch.position.in_tx;
        batch.transforms = self.labels.clone();
        if batch.batch.events.is_empty() || !self.configured {
            return Ok(batch);
        }
        let events = std::mem::take(&mut batch.batch);
        batch.batch = self.on_chain_thread(move |c| c.apply(events)).await??;
        Ok(batch)
    }

    /// Runs one dead-lettered event through transform `first` and the ones after it.
    async fn replay_from(
        &mut self,
        first: usize,
        event: weir_sdk::Batch,
    ) -> Result<weir_sdk::Batch, ReplayError> {
        if !self.configured {
            return Err(ReplayError::NoTransforms);
        }
        let (out, again) = self
            .on_chain_thread(move |c| {
                let set_aside =
                    |c: &TransformChain| c.plugins().get(first).map_or(0, |p| p.dead_lettered());
                let before = set_aside(c);
                let out = c.apply_from(first, event);
                (out, set_aside(c) > before)
            })
            .await
            .map_err(StageError::from)?;
        let out = out.map_err(StageError::from)?;
        match again {
            true => Err(ReplayError::SetAsideAgain),
            false => Ok(out),
        }
    }

    /// Runs `f` on the chain on a blocking thread; a panic there is an error, and the
    /// chain is gone with it.
    async fn on_chain_thread<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut TransformChain) -> T + Send + 'static,
    ) -> Result<T, HostPanic> {
        let mut chain = self.chain.take().ok_or_else(|| HostPanic {
            stage: "transform chain".into(),
            message: "the chain was lost in an earlier panic".into(),
        })?;
        let span = tracing::Span::current();
        let (chain, out) = crate::error::blocking("transform chain", move || {
            let _batch = span.enter();
            let out = f(&mut chain);
            (chain, out)
        })
        .await?;
        self.chain = Some(chain);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::{Column, Event, Op, Relation, Value};

    fn one_insert() -> SourceBatch {
        let mut batch = SourceBatch::default();
        let rel = batch.batch.push_relation(Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![Column::new("id", 23, "int4", true)],
            version: 1,
        });
        batch.batch.events.push(Event {
            op: Op::Insert,
            rel,
            commit_lsn: 16,
            seq: 0,
            xid: 1,
            commit_ts: 0,
            before: None,
            after: Some(vec![Value::Int(1)]),
            unchanged: Vec::new(),
        });
        batch
    }

    #[tokio::test]
    async fn a_panic_in_the_transform_chain_is_an_error_and_no_batch_passes_untransformed() {
        let mut t = Transforms {
            chain: Some(TransformChain::new(Vec::new())),
            configured: true,
            ..Default::default()
        };
        let err = t
            .on_chain_thread(|_| -> u32 { panic!("index out of bounds") })
            .await
            .unwrap_err();
        assert_eq!(
            (err.stage.as_str(), err.message.as_str()),
            ("transform chain", "index out of bounds")
        );

        let err = t.apply(one_insert()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(
            err.to_string()
                .contains("the chain was lost in an earlier panic"),
            "{err}"
        );
        assert!(!err.kind().is_transient(), "a defect stops the run");
    }
}
