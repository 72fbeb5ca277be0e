//! Sinks: where batches go. Each sink keeps its own checkpoint with its output and
//! reports the last transaction it has made durable.

pub mod columns;
pub mod delta;
mod error;
pub mod iceberg;
pub mod keys;
pub mod parquet;
pub mod postgres;
pub mod rows;
pub mod stdout;

pub use error::{NamedSinkError, SinkError};

use crate::batch::{CommitPos, Position, SourceBatch};
use crate::config::{PluginSinkConfig, SinkConfig};
use crate::error::HostPanic;
use crate::lsn::Lsn;
use crate::plugin::loader::no_dead_letter_location;
use crate::plugin::{Instance, OnError, PluginFailure, Plugins, SinkPlugin, Stage};
use crate::stats::{CallStats, Component, Stats};
use std::sync::Arc;

/// A sink's name in metrics, errors and `weir status`: its kind and where it writes.
pub fn sink_name(config: &SinkConfig) -> String {
    match config {
        SinkConfig::Parquet(c) => format!("parquet {}", c.url),
        SinkConfig::Iceberg(c) => format!("iceberg {}", c.warehouse),
        SinkConfig::Plugin(c) => format!("plugin {}", c.plugin.display()),
        SinkConfig::Stdout(_) => "stdout".into(),
        SinkConfig::Postgres(c) => format!("postgres {}", redacted(&c.url)),
        SinkConfig::Delta(c) => format!("delta {}", c.url),
    }
}

/// One configured sink.
pub enum Sink {
    Parquet(parquet::ParquetSink),
    Iceberg(Box<iceberg::IcebergSink>),
    Mirror(Box<iceberg::mirror::MirrorSink>),
    /// Run on a blocking thread (plugin calls are synchronous); `None` once a panic
    /// took the instance with it.
    Plugin(Option<SinkPlugin>),
    Stdout(stdout::StdoutSink),
    Postgres(Box<postgres::PostgresSink>),
    Delta(Box<delta::DeltaSink>),
}

/// A connection URL without its password.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Sink {
    /// Opens a sink for streaming, undoing any flush that did not reach its checkpoint.
    async fn open(
        config: &SinkConfig,
        slot: &str,
        plugins: &Plugins,
        stage: Stage,
    ) -> Result<Sink, SinkError> {
        Ok(match config {
            SinkConfig::Parquet(c) => {
                Sink::Parquet(parquet::ParquetSink::open(c.clone(), slot).await?)
            }
            SinkConfig::Iceberg(c) if c.mode == crate::config::IcebergMode::Mirror => Sink::Mirror(
                Box::new(iceberg::mirror::MirrorSink::open(c.clone(), slot).await?),
            ),
            SinkConfig::Iceberg(c) => {
                Sink::Iceberg(Box::new(iceberg::IcebergSink::open(c.clone(), slot).await?))
            }
            SinkConfig::Delta(c) => {
                Sink::Delta(Box::new(delta::DeltaSink::open(c.clone(), slot).await?))
            }
            SinkConfig::Plugin(c) => {
                let mut plugin = load_plugin(c, plugins).await?;
                match &plugins.dead_letters {
                    Some(d) => plugin.set_dead_letters(d.clone(), stage),
                    None if plugin.on_error() == OnError::DeadLetter => {
                        return Err(no_dead_letter_location(plugin.label()).into());
                    }
                    None => {}
                }
                tracing::info!(plugin = %plugin.label(), on_error = plugin.on_error().as_str(), "Sink plugin loaded.");
                Sink::Plugin(Some(plugin))
            }
            SinkConfig::Stdout(_) => Sink::Stdout(stdout::StdoutSink::default()),
            SinkConfig::Postgres(c) => {
                let letters = plugins.dead_letters.clone().map(|d| (d, stage));
                if letters.is_none() && c.on_error == OnError::DeadLetter {
                    return Err(SinkError::Config {
                        what: "the postgres sink".into(),
                        message: "on_error = \"dead-letter\" needs a place for dead letters: add [state] url = \"file:///...\" (or a parquet sink)".into(),
                    });
                }
                Sink::Postgres(Box::new(
                    postgres::PostgresSink::open(c.clone(), slot, letters).await?,
                ))
            }
        })
    }

    /// Opens a sink to deliver dead letters into (checkpoints untouched).
    async fn open_for_replay(
        config: &SinkConfig,
        slot: &str,
        plugins: &Plugins,
    ) -> Result<Sink, SinkError> {
        Ok(match config {
            SinkConfig::Parquet(p) => {
                Sink::Parquet(parquet::ParquetSink::open_for_replay(p.clone(), slot).await?)
            }
            SinkConfig::Iceberg(c) if c.mode == crate::config::IcebergMode::Mirror => Sink::Mirror(
                Box::new(iceberg::mirror::MirrorSink::open(c.clone(), slot).await?),
            ),
            SinkConfig::Iceberg(c) => {
                Sink::Iceberg(Box::new(iceberg::IcebergSink::open(c.clone(), slot).await?))
            }
            SinkConfig::Delta(c) => {
                Sink::Delta(Box::new(delta::DeltaSink::open(c.clone(), slot).await?))
            }
            SinkConfig::Plugin(c) => Sink::Plugin(Some(load_plugin(c, plugins).await?)),
            SinkConfig::Stdout(_) => Sink::Stdout(stdout::StdoutSink::default()),
            SinkConfig::Postgres(c) => Sink::Postgres(Box::new(
                postgres::PostgresSink::open(c.clone(), slot, None).await?,
            )),
        })
    }

    /// Keeps a checkpoint weir reads back (Parquet, Iceberg): flushed last, so that its
    /// checkpoint proves every other sink has flushed.
    fn native(&self) -> bool {
        matches!(
            self,
            Sink::Parquet(_) | Sink::Iceberg(_) | Sink::Mirror(_) | Sink::Delta(_)
        )
    }

    async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.write(batch).await,
            Sink::Iceberg(s) => s.write(batch).await,
            Sink::Mirror(s) => s.write(batch).await,
            Sink::Delta(s) => s.write(batch).await,
            Sink::Plugin(p) => {
                let (events, position) = (batch.batch.clone(), batch.position);
                on_plugin_thread(p, "sink plugin write", move |p| p.write(events, &position)).await
            }
            Sink::Stdout(s) => s.write(batch),
            Sink::Postgres(s) => s.write(batch).await,
        }
    }

    async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.flush(position).await,
            Sink::Iceberg(s) => s.flush(position).await,
            Sink::Mirror(s) => s.flush(position).await,
            Sink::Delta(s) => s.flush(position).await,
            Sink::Plugin(p) => on_plugin_thread(p, "sink plugin flush", |p| p.flush()).await,
            Sink::Stdout(s) => s.flush(position),
            Sink::Postgres(s) => s.flush(position).await,
        }
    }

    /// Writes dead-lettered events as output of their own, named `name`.
    async fn write_replay(&mut self, batch: &weir_sdk::Batch, name: &str) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.write_replay(batch, name).await.map(drop),
            Sink::Iceberg(s) => s.write_replay(batch, name).await,
            Sink::Delta(s) => s.write_replay(batch, name).await,
            Sink::Mirror(_) => Err(SinkError::Config {
                what: "an iceberg mirror sink".into(),
                message: "dead letters cannot be replayed into a mirror table yet".into(),
            }),
            Sink::Plugin(p) => {
                let events = batch.clone();
                on_plugin_thread(p, "sink plugin replay", move |p| p.replay(&events)).await
            }
            Sink::Stdout(s) => s.write_events(batch),
            Sink::Postgres(s) => s.write_replay(batch).await,
        }
    }

    /// Bytes of output this sink completed (for plugin sinks: handed over) since the
    /// last call.
    fn take_new_bytes(&mut self) -> u64 {
        match self {
            Sink::Parquet(s) => s.take_bytes_written(),
            Sink::Iceberg(s) => s.take_bytes_written(),
            Sink::Mirror(_) => 0,
            Sink::Delta(s) => s.take_bytes_written(),
            Sink::Plugin(p) => p.as_mut().map_or(0, SinkPlugin::take_bytes_out),
            Sink::Stdout(s) => s.take_bytes_written(),
            Sink::Postgres(_) => 0,
        }
    }

    /// Whether the sink holds the commit a ledger record describes.
    fn holds(&self, record: &crate::ledger::Record) -> bool {
        match self {
            Sink::Parquet(s) => s.holds(record),
            Sink::Iceberg(s) => s.holds(record),
            Sink::Mirror(s) => s.holds(record),
            _ => true,
        }
    }

    fn durable(&self) -> Option<CommitPos> {
        match self {
            Sink::Parquet(s) => s.durable(),
            Sink::Iceberg(s) => s.durable(),
            Sink::Mirror(s) => s.durable(),
            Sink::Delta(s) => s.durable(),
            Sink::Plugin(p) => p.as_ref().and_then(SinkPlugin::durable),
            Sink::Stdout(s) => s.durable(),
            Sink::Postgres(s) => s.durable(),
        }
    }

    async fn abort(self) {
        match self {
            Sink::Parquet(s) => s.abort().await,
            Sink::Iceberg(s) => s.abort().await,
            Sink::Mirror(s) => s.abort().await,
            Sink::Delta(_) => {}
            Sink::Plugin(p) => p.iter().for_each(SinkPlugin::report),
            Sink::Stdout(_) => {}
            Sink::Postgres(s) => s.abort().await,
        }
    }
}

/// Loads a sink plugin off the async threads (compiling it can take seconds).
async fn load_plugin(
    config: &PluginSinkConfig,
    plugins: &Plugins,
) -> Result<SinkPlugin, SinkError> {
    let engine = plugins
        .engine
        .clone()
        .expect("an engine is made when a plugin is configured");
    let config = config.clone();
    let mut plugin = crate::error::blocking("loading a sink plugin", move || {
        SinkPlugin::load(
            &engine,
            &config.plugin,
            &config.config,
            config.flush_interval,
        )
    })
    .await??;
    if let Some(stats) = &plugins.stats {
        plugin.set_call_stats(stats.component(Component::Plugin, plugin.name()));
    }
    Ok(plugin)
}

/// Runs `f` on the plugin on a blocking thread; a panic there is an error naming
/// `stage`, and the instance is gone with it.
async fn on_plugin_thread(
    slot: &mut Option<SinkPlugin>,
    stage: &str,
    f: impl FnOnce(&mut SinkPlugin) -> Result<(), PluginFailure> + Send + 'static,
) -> Result<(), SinkError> {
    let mut plugin = slot.take().ok_or_else(|| HostPanic {
        stage: stage.into(),
        message: "the plugin instance was lost in an earlier panic".into(),
    })?;
    let span = tracing::Span::current();
    let (plugin, result) = crate::error::blocking(stage, move || {
        let _batch = span.enter();
        let result = f(&mut plugin);
        (plugin, result)
    })
    .await?;
    *slot = Some(plugin);
    result.map_err(SinkError::Plugin)
}

/// Where the source resumes so that no sink misses a transaction: the lowest checkpoint,
/// or none (the slot's own position) when any sink has none.
fn resume_of(sinks: &[Sink]) -> Option<CommitPos> {
    sinks
        .iter()
        .map(Sink::durable)
        .collect::<Option<Vec<_>>>()
        .and_then(|d| d.into_iter().min())
}

/// All sinks of a pipeline: every batch goes to each, in order.
pub struct Sinks {
    sinks: Vec<Sink>,
    /// Each sink's name (see [`sink_name`]).
    names: Vec<String>,
    /// Each sink's calls, their time and failures.
    calls: Vec<Arc<CallStats>>,
    /// Where the source must resume so that no sink misses a transaction.
    resume: Option<CommitPos>,
}

impl Sinks {
    /// Opens every sink for streaming, undoing any flush that did not reach its
    /// checkpoint; counts their calls in `plugins.stats`.
    pub async fn open(
        configs: &[SinkConfig],
        slot: &str,
        plugins: &Plugins,
    ) -> Result<Sinks, NamedSinkError> {
        let mut sinks = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let sink = Sink::open(config, slot, plugins, Stage::Sink(i)).await;
            sinks.push(sink.map_err(|error| NamedSinkError {
                sink: sink_name(config),
                error,
            })?);
        }
        Ok(Sinks::new(configs, sinks, plugins.stats.as_deref()))
    }

    /// Opens every sink to deliver dead letters into.
    pub async fn open_for_replay(
        configs: &[SinkConfig],
        slot: &str,
        plugins: &Plugins,
    ) -> Result<Sinks, NamedSinkError> {
        let mut sinks = Vec::new();
        for config in configs {
            let sink = Sink::open_for_replay(config, slot, plugins).await;
            sinks.push(sink.map_err(|error| NamedSinkError {
                sink: sink_name(config),
                error,
            })?);
        }
        Ok(Sinks::new(configs, sinks, None))
    }

    fn new(configs: &[SinkConfig], sinks: Vec<Sink>, stats: Option<&Stats>) -> Sinks {
        let names: Vec<String> = configs.iter().map(sink_name).collect();
        let calls = names
            .iter()
            .map(|name| match stats {
                Some(stats) => stats.component(Component::Sink, name),
                None => Arc::default(),
            })
            .collect();
        Sinks {
            resume: resume_of(&sinks),
            sinks,
            names,
            calls,
        }
    }

    fn failed(&self, i: usize) -> impl FnOnce(SinkError) -> NamedSinkError + '_ {
        move |error| NamedSinkError {
            sink: self.names[i].clone(),
            error,
        }
    }

    /// Keeps the evidence ledger under `<url>/_weir/<slot>/ledger/`: each commit of a
    /// native sink appends a record. A record a crash left without its commit goes.
    pub async fn keep_ledger(&mut self, url: &str, slot: &str) -> Result<(), NamedSinkError> {
        let failed = |e: crate::storage::StorageError| NamedSinkError {
            sink: "the evidence ledger".into(),
            error: e.into(),
        };
        let mut ledger = crate::ledger::Ledger::open(url, slot)
            .await
            .map_err(failed)?;
        let sinks = &self.sinks;
        ledger
            .drop_unheld(|r| sinks.get(r.sink).is_none_or(|s| s.holds(r)))
            .await
            .map_err(failed)?;
        let shared = Arc::new(tokio::sync::Mutex::new(ledger));
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            let link = crate::ledger::LedgerLink {
                ledger: shared.clone(),
                sink: i,
                name: self.names[i].clone(),
            };
            match sink {
                Sink::Parquet(s) => s.set_ledger(link),
                Sink::Iceberg(s) => s.set_ledger(link),
                Sink::Mirror(s) => s.set_ledger(link),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether any sink holds a checkpoint (output of an earlier run).
    pub fn any_checkpoint(&self) -> bool {
        self.sinks.iter().any(|s| s.durable().is_some())
    }

    /// Whether a whole flush of every sink has happened: native sinks are flushed after
    /// plugin sinks, so one of theirs with a checkpoint proves it; without native sinks,
    /// any checkpoint does.
    pub fn all_flushed_once(&self) -> bool {
        let native: Vec<&Sink> = self.sinks.iter().filter(|s| s.native()).collect();
        match native.is_empty() {
            true => self.any_checkpoint(),
            false => native.iter().any(|s| s.durable().is_some()),
        }
    }

    /// The furthest position any sink (or any Iceberg table) holds output up to: where a
    /// slot that has gone missing left the output.
    pub fn held_position(&self) -> Option<CommitPos> {
        self.sinks
            .iter()
            .filter_map(|s| match s {
                Sink::Iceberg(s) => s.held(),
                Sink::Mirror(s) => s.held(),
                s => s.durable(),
            })
            .max()
    }

    /// A projection added to a pipeline whose other sinks hold output already would
    /// start at the slot's position without the rows written before: it is filled from
    /// the changelog with `weir replay` first.
    pub fn check_projections_filled(&self) -> Result<(), NamedSinkError> {
        let Some(others) = self.lowest_checkpoint() else {
            return Ok(());
        };
        for (i, sink) in self.sinks.iter().enumerate() {
            if let Sink::Postgres(p) = sink
                && p.durable().is_none()
            {
                return Err(self.failed(i)(SinkError::Config {
                    what: format!("sink {i}"),
                    message: format!(
                        "this projection is new, but the pipeline's other sinks hold changes up to {}: fill it first with `weir replay PIPELINE --sink {i}` (from the Parquet changelog), then run again",
                        others.end_lsn
                    ),
                }));
            }
        }
        Ok(())
    }

    /// The lowest checkpoint among the sinks that have one.
    pub fn lowest_checkpoint(&self) -> Option<CommitPos> {
        self.sinks.iter().filter_map(Sink::durable).min()
    }

    /// The position the source resumes after.
    pub fn resume(&self) -> Option<CommitPos> {
        self.resume
    }

    /// Writes a batch to every sink; all must succeed.
    pub async fn write_all(&mut self, batch: &SourceBatch) -> Result<(), NamedSinkError> {
        for i in 0..self.sinks.len() {
            let started = std::time::Instant::now();
            let result = crate::error::guarded("sink write", self.sinks[i].write(batch))
                .await
                .unwrap_or_else(|panic| Err(panic.into()));
            self.count(i, started, &result);
            result.map_err(self.failed(i))?;
        }
        Ok(())
    }

    /// Makes everything written durable (when the position is at a transaction boundary).
    /// Plugin sinks first: a native checkpoint then proves every sink has flushed.
    pub async fn flush_all(&mut self, position: &Position) -> Result<(), NamedSinkError> {
        for native in [false, true] {
            for i in 0..self.sinks.len() {
                if self.sinks[i].native() == native {
                    let started = std::time::Instant::now();
                    let result = crate::error::guarded("sink flush", self.sinks[i].flush(position))
                        .await
                        .unwrap_or_else(|panic| Err(panic.into()));
                    self.count(i, started, &result);
                    result.map_err(self.failed(i))?;
                }
            }
        }
        Ok(())
    }

    /// Delivers dead-lettered events to every sink, or to sink `only`.
    pub async fn write_replay(
        &mut self,
        batch: &weir_sdk::Batch,
        only: Option<usize>,
        name: &str,
    ) -> Result<(), NamedSinkError> {
        for i in 0..self.sinks.len() {
            if only.is_none_or(|o| o == i) {
                let result = self.sinks[i].write_replay(batch, name).await;
                result.map_err(self.failed(i))?;
            }
        }
        Ok(())
    }

    fn count<T>(&mut self, i: usize, started: std::time::Instant, result: &Result<T, SinkError>) {
        self.calls[i].record(started, false, result);
        self.calls[i].add_bytes(self.sinks[i].take_new_bytes());
        if let Sink::Postgres(p) = &mut self.sinks[i] {
            for (what, rows) in p.take_applied() {
                self.calls[i].add_applied(what, rows);
            }
        }
    }

    /// The LSN that may be reported to the server as flushed: everything before it is
    /// durable in every sink. When every sink holds everything delivered, that includes
    /// the idle WAL the server reported in keepalives.
    pub fn durable_lsn(&self, position: &Position) -> Option<Lsn> {
        let durables: Option<Vec<CommitPos>> = self.sinks.iter().map(Sink::durable).collect();
        let all_caught_up = |d: &[CommitPos]| match position.last_commit {
            None => true,
            Some(last) => d.iter().all(|p| *p >= last),
        };
        match durables {
            Some(d) if !position.in_tx && all_caught_up(&d) => Some(position.delivered_through()),
            Some(d) => d.iter().map(|p| p.end_lsn).min(),
            None if !position.in_tx && position.last_commit.is_none() => {
                Some(position.delivered_through())
            }
            None => None,
        }
    }

    /// Before an initial snapshot is taken again: drops what the unfinished one left in
    /// sinks that commit table by table (Iceberg). Parquet output needs nothing: its
    /// snapshot flush is one checkpoint.
    pub async fn discard_abandoned_snapshot(&mut self) -> Result<(), NamedSinkError> {
        for i in 0..self.sinks.len() {
            if let Sink::Iceberg(s) = &mut self.sinks[i] {
                let result = s.discard_abandoned_snapshot().await;
                result.map_err(self.failed(i))?;
            }
        }
        self.resume = resume_of(&self.sinks);
        Ok(())
    }

    /// Abandons unfinished output (what is durable stays).
    pub async fn abort(self) {
        for sink in self.sinks {
            sink.abort().await;
        }
    }
}
