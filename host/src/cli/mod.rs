//! The `weir` command line.

mod demo;
mod lake;
mod pipeline_status;
mod plugin;
mod status;

use crate::config::{PipelineConfig, SinkConfig};
use crate::pipeline::{self, RunOptions};
use crate::stats::Stats;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// PostgreSQL change data capture into Parquet.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until stopped (SIGINT or SIGTERM: finish the batch in hand,
    /// checkpoint, exit 0).
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Exit 0 once everything committed on the source before the start is durable.
        #[arg(long)]
        until_caught_up: bool,
        /// When the slot is gone but the output holds a checkpoint: create a new slot and
        /// stream from now on, accepting that changes committed in between are missing.
        #[arg(long)]
        new_slot: bool,
    },
    /// Check a pipeline file and print what it would do. Connects to PostgreSQL only to
    /// read (unless --offline); changes nothing.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Check the file only, without connecting.
        #[arg(long)]
        offline: bool,
    },
    /// Re-read a table's existing rows into the output while the pipeline streams (a
    /// backfill with watermarks: exact, without pausing the stream). The running pipeline
    /// picks the request up from the WAL; a stopped one does at its next start.
    Snapshot {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The table, `schema.table`; one of the pipeline's tables.
        #[arg(long)]
        table: crate::config::TableName,
    },
    /// Show the slot on the server (active, confirmed position, lag, retained WAL) and
    /// each sink's checkpoint.
    Status {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List or drop replication slots of the pipeline's database.
    #[command(subcommand)]
    Slot(SlotCommand),
    /// Ask the running pipeline to reload its transforms now (as SIGHUP does, but from
    /// any machine that reaches the database): new versions are compiled and swapped in
    /// at a batch boundary; a version that fails to load leaves the old one running.
    Reload {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// List or replay the events plugins set aside under on_error = "dead-letter".
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Create, build, try and inspect plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// The Iceberg tables of a pipeline: snapshots, time travel, rollback, maintenance.
    #[command(subcommand)]
    Lake(lake::LakeCommand),
    /// Run a demonstration: a throwaway PostgreSQL, generated changes, a pipeline run,
    /// and a summary of what landed.
    Demo {
        /// Where the Parquet output goes.
        #[arg(long, default_value = "weir-demo-out")]
        out: PathBuf,
        /// Orders to generate.
        #[arg(long, default_value_t = 10_000)]
        rows: u32,
    },
}

#[derive(Debug, Subcommand)]
enum SlotCommand {
    /// The logical slots of the database: active, confirmed position, lag, retained WAL.
    List {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop an inactive slot (default: the pipeline's own), freeing the WAL it holds.
    Drop {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Another slot of the same database.
        #[arg(long)]
        slot: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Print each dead letter: stage, position, table, plugin and error.
    List {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Send each dead letter through the pipeline again from where it failed (after
    /// fixing the plugin or its config). The pipeline must be stopped. Delivered letters
    /// are removed; the others stay.
    Replay {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Only the letters of one stage, as `list` prints it (`transform-0`, `sink-1`).
        #[arg(long)]
        stage: Option<String>,
    },
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    limit_heap_fragmentation();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run {
                pipeline,
                until_caught_up,
                new_slot,
            } => run(&pipeline, until_caught_up, new_slot).await,
            Command::Validate { pipeline, offline } => validate(&pipeline, offline).await,
            Command::DeadLetter(c) => dead_letter(c).await,
            Command::Reload { pipeline } => reload(&pipeline).await,
            Command::Status { pipeline, json } => pipeline_status::status(&pipeline, json).await,
            Command::Slot(SlotCommand::List { pipeline, json }) => {
                pipeline_status::slot_list(&pipeline, json).await
            }
            Command::Slot(SlotCommand::Drop { pipeline, slot }) => {
                pipeline_status::slot_drop(&pipeline, slot.as_deref()).await
            }
            Command::Lake(c) => lake::lake(c).await,
            Command::Plugin(c) => plugin::plugin(c).await,
            Command::Snapshot { pipeline, table } => snapshot(&pipeline, &table).await,
            Command::Demo { out, rows } => demo::demo(&out, rows).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc raises its mmap threshold each time a large block is freed, after which large
/// buffers (row groups, upload parts) come from the heap and fragment it: peak memory
/// then creeps up with the length of a burst. A fixed threshold keeps it flat (ADR 0004).
#[allow(unsafe_code)]
fn limit_heap_fragmentation() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called once, before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels the token on SIGINT or SIGTERM; a second signal exits at once.
fn shutdown_on_signals(timeout: std::time::Duration) -> CancellationToken {
    // SIGHUP asks for a transform reload (the reloader listens too); from the start, so it
    // never ends the process, with or without transforms.
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!(
                    "SIGHUP: changed transforms are reloaded (a pipeline without transforms has nothing to reload)."
                );
            }
        });
    }
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        if std::io::stderr().is_terminal() {
            eprintln!(); // leave the status line before logging
        }
        tracing::info!(
            "Stopping: finishing the batch in hand, then checkpointing (signal again to stop at once)."
        );
        t.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = tokio::time::sleep(timeout) => {
                tracing::error!(timeout_s = timeout.as_secs(), "Did not stop within shutdown_timeout; exiting. The next run resumes from the last checkpoint.");
                std::process::exit(1);
            }
        }
        tracing::warn!("Stopped at once; the next run resumes from the last checkpoint.");
        std::process::exit(130);
    });
    token
}

async fn reload(path: &std::path::Path) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    if config.transforms.is_empty() {
        anyhow::bail!("the pipeline has no [[transform]] to reload");
    }
    let control = crate::source::Control::connect(&config.source.url).await?;
    let row = control
        .client
        .query_one(
            "SELECT pg_logical_emit_message(false, $1, $2)::text",
            &[&crate::reload::RELOAD_MARKER, &config.source.slot],
        )
        .await?;
    let lsn: String = row.get(0);
    println!(
        "reload requested at {lsn}: the running pipeline of slot {} loads changed transforms when its stream reaches it",
        config.source.slot
    );
    Ok(())
}

async fn snapshot(path: &std::path::Path, table: &crate::config::TableName) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    if !config.source.tables.contains(table) {
        anyhow::bail!(
            "{table} is not one of the pipeline's tables ({}): add it to source.tables first",
            config
                .source
                .tables
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if config.source.snapshot == crate::config::SnapshotMode::Never {
        anyhow::bail!(
            "the pipeline has snapshot = \"never\": set it to \"initial\" to backfill tables"
        );
    }
    let control = crate::source::Control::connect(&config.source.url).await?;
    let row = control
        .client
        .query_one(
            "SELECT pg_logical_emit_message(false, $1, $2)::text",
            &[&crate::backfill::REQUEST, &table.to_string()],
        )
        .await?;
    let lsn: String = row.get(0);
    println!(
        "backfill of {table} requested at {lsn}: the running pipeline (or its next run) reads its rows in chunks while it streams"
    );
    Ok(())
}

async fn dead_letter(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { pipeline } => {
            let config = PipelineConfig::load(&pipeline)?;
            let letters = crate::dead_letters::list(&config).await?;
            for letter in &letters {
                println!("{}", crate::dead_letters::describe(letter));
            }
            println!("{} dead letter(s)", letters.len());
            Ok(())
        }
        DeadLetterCommand::Replay { pipeline, stage } => {
            let config = PipelineConfig::load(&pipeline)?;
            let done = crate::dead_letters::replay(&config, stage.as_deref()).await?;
            println!("{} replayed, {} still failing", done.delivered, done.failed);
            if done.failed > 0 {
                anyhow::bail!(
                    "{} dead letter(s) could not be delivered; they stay",
                    done.failed
                );
            }
            Ok(())
        }
    }
}

async fn run(path: &std::path::Path, until_caught_up: bool, new_slot: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    let stats = Arc::new(Stats::default());
    let reporter = status::spawn(stats.clone());
    let options = RunOptions {
        until_caught_up,
        new_slot,
        shutdown: shutdown_on_signals(config.shutdown_timeout),
        pipeline_file: Some(path.to_path_buf()),
    };
    let over_limit = Arc::new(std::sync::Mutex::new(None));
    let watch = slot_watch(
        &config,
        stats.clone(),
        options.shutdown.clone(),
        over_limit.clone(),
    );
    let metrics = match &config.metrics {
        Some(m) => Some(crate::metrics::serve(m, &config, stats.clone()).await?),
        None => None,
    };
    // Every line of the run carries the pipeline and its slot (a `span` in JSON logs).
    let span = tracing::info_span!("run", pipeline = %config.name(), slot = %config.source.slot);
    let result =
        tracing::Instrument::instrument(run_with_retries(&config, &options, &stats), span).await;
    drop(metrics);
    watch.abort();
    reporter.finish();
    if let Some(reason) = over_limit.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("{reason}");
    }
    let summary = result?;
    tracing::info!(
        events = summary.events,
        checkpoint = %summary.checkpoint.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
        "Pipeline stopped."
    );
    Ok(())
}

/// Every 10 s, reads the WAL the slot retains (for `weir_slot_retained_wal_bytes`) and
/// applies `max_slot_lag`: an error in the log, or (policy `stop`) a clean stop whose
/// reason goes in `over_limit`.
fn slot_watch(
    config: &PipelineConfig,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    over_limit: Arc<std::sync::Mutex<Option<String>>>,
) -> tokio::task::JoinHandle<()> {
    let (url, slot) = (config.source.url.clone(), config.source.slot.clone());
    let (limit, policy) = (config.source.max_slot_lag, config.source.slot_lag_policy);
    tokio::spawn(async move {
        let mut control = None;
        let mut alerted = false;
        loop {
            if control.is_none() {
                control = crate::source::Control::connect(&url).await.ok();
            }
            if let Some(c) = &control {
                match retained_wal(c, &slot).await {
                    Ok(Some(retained)) => {
                        stats.set_retained_wal(retained);
                        match limit.filter(|max| retained > *max) {
                            Some(max) => {
                                let text =
                                    |b: u64| bytesize::ByteSize(b).display().iec().to_string();
                                let reason = format!(
                                    "replication slot `{slot}` retains {} of WAL, over max_slot_lag {}: the server keeps that WAL until weir confirms it",
                                    text(retained),
                                    text(max)
                                );
                                if policy == crate::config::SlotLagPolicy::Stop {
                                    tracing::error!(
                                        "{reason}; stopping (slot_lag_policy = \"stop\"). Find what holds weir back (weir status, /metrics), or drop the slot with `weir slot drop` to free the WAL and take a new snapshot."
                                    );
                                    *over_limit.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(format!("stopped: {reason}"));
                                    shutdown.cancel();
                                    return;
                                }
                                if !alerted {
                                    tracing::error!(
                                        "{reason} (slot_lag_policy = \"alert\": weir goes on)"
                                    );
                                    alerted = true;
                                }
                            }
                            None => alerted = false,
                        }
                    }
                    Ok(None) => {}
                    Err(_) => control = None,
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
    })
}

/// The WAL `slot` retains on the server, in bytes (none: no such slot).
async fn retained_wal(
    control: &crate::source::Control,
    slot: &str,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = control
        .client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64))
}

/// Runs the pipeline; once it has streamed, a transient failure (see
/// [`pipeline::PipelineError::is_transient`]) makes it wait and run again from its
/// checkpoint, with exponential backoff and jitter, up to `[retry] attempts` failures in
/// a row. A first run that fails stops at once with its error: that is a setup problem.
async fn run_with_retries(
    config: &PipelineConfig,
    options: &RunOptions,
    stats: &Arc<Stats>,
) -> Result<pipeline::RunSummary, pipeline::PipelineError> {
    let retry = &config.retry;
    let mut failures = 0u32;
    let mut events = 0;
    let mut options = options.clone();
    loop {
        let streamed_before = stats.streaming_runs();
        let result = pipeline::run(config, options.clone(), stats.clone()).await;
        // --new-slot accepts the gap it was given for, once: a run retried (only after
        // streaming, so with its new slot made) stops again at a slot lost later.
        options.new_slot = false;
        stats.disconnected();
        let streamed = stats.streaming_runs() > streamed_before;
        let error = match result {
            Ok(mut summary) => {
                summary.events += events;
                return Ok(summary);
            }
            Err(e) => e,
        };
        events = stats.snapshot().events;
        let ever_streamed = stats.streaming_runs() > 0;
        if !error.is_transient() || !ever_streamed || options.shutdown.is_cancelled() {
            return Err(error);
        }
        failures = if streamed { 1 } else { failures + 1 };
        if retry.attempts > 0 && failures > retry.attempts {
            tracing::error!(
                attempts = retry.attempts,
                "Giving up after failed attempts in a row."
            );
            return Err(error);
        }
        let delay = backoff(retry, failures);
        stats.set_retrying(Some(error.to_string()));
        tracing::warn!(
            error = %error,
            attempt = failures,
            max_attempts = retry.attempts,
            retry_in_ms = delay.as_millis() as u64,
            "Transient failure: reconnecting and resuming from the checkpoint (nothing past it was acknowledged)."
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = options.shutdown.cancelled() => return Err(error),
        }
        stats.add_reconnect();
    }
}

/// `initial_backoff * 2^(attempt-1)`, capped at `max_backoff`, minus up to a quarter of
/// it at random (so pipelines that lost the same server do not return in step).
fn backoff(retry: &crate::config::RetryConfig, attempt: u32) -> std::time::Duration {
    let base = retry
        .initial_backoff
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(retry.max_backoff);
    let jitter = rand::random::<f64>() * 0.25;
    base.mul_f64(1.0 - jitter)
}

async fn validate(path: &std::path::Path, offline: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    println!("pipeline  {} ({})", config.name(), path.display());
    let pg = crate::source::pg_config(&config.source.url)?;
    println!(
        "source    postgres://{}@{}:{}/{} slot `{}` publication `{}`",
        pg.get_user().unwrap_or_default(),
        crate::source::host_of(&pg),
        crate::source::port_of(&pg),
        pg.get_dbname().unwrap_or_default(),
        config.source.slot,
        config.source.publication
    );
    let tables: Vec<String> = config.source.tables.iter().map(|t| t.to_string()).collect();
    println!("tables    {}", tables.join(", "));
    let b = &config.batch;
    println!(
        "batches   up to {} events, {}, {}",
        b.max_events,
        bytesize::ByteSize(b.max_bytes).display().iec(),
        humantime::format_duration(b.max_delay)
    );
    if !config.transforms.is_empty() {
        let specs = config.transforms.clone();
        let lines = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let engine =
                crate::plugin::PluginEngine::new(crate::plugin::PluginEngine::default_cache_dir())?;
            specs
                .iter()
                .map(|t| {
                    // Compiles the component and calls its init with the configuration.
                    let plugin =
                        crate::plugin::TransformPlugin::load(&engine, &t.plugin, &t.config)?;
                    Ok(format!("transform {}", plugin.describe()))
                })
                .collect()
        })
        .await??;
        for line in lines {
            println!("{line}");
        }
    }
    for sink in &config.sinks {
        match sink {
            SinkConfig::Parquet(p) => println!(
                "sink      parquet {} ({:?} partitions, {:?}, files up to {}, flushed every {})",
                p.url,
                p.partition,
                p.compression,
                bytesize::ByteSize(p.target_file_size).display().iec(),
                humantime::format_duration(p.flush_interval)
            ),
            SinkConfig::Iceberg(c) => println!(
                "sink      iceberg {} ({} catalog, {:?} partitions, files up to {}, committed every {})",
                c.warehouse,
                match &c.catalog {
                    crate::config::CatalogConfig::Sql { .. } => "sql",
                    crate::config::CatalogConfig::Rest { .. } => "rest",
                },
                c.partition,
                bytesize::ByteSize(c.target_file_size).display().iec(),
                humantime::format_duration(c.commit_interval)
            ),
            SinkConfig::Plugin(p) => {
                let (config, engine) = (
                    p.clone(),
                    crate::plugin::PluginEngine::new(
                        crate::plugin::PluginEngine::default_cache_dir(),
                    )?,
                );
                let plugin = tokio::task::spawn_blocking(move || {
                    // Compiled and linked, not started: a sink's init may reach its destination.
                    crate::plugin::SinkPlugin::prepare(
                        &engine,
                        &config.plugin,
                        &config.config,
                        config.flush_interval,
                    )
                })
                .await??;
                println!(
                    "sink      plugin {} (init not called: it may reach its destination)",
                    plugin.describe()
                );
            }
        }
    }
    if offline {
        println!("valid (file and plugins checked; --offline: the database was not)");
        return Ok(());
    }
    let control = crate::source::Control::connect(&config.source.url).await?;
    let info = control.preflight(&config.source).await?;
    println!(
        "database  `{}` as `{}`: wal_level logical, replication allowed, tables found",
        info.database, info.user
    );
    match &info.publication_missing {
        None => println!(
            "would     create publication `{}` for {}",
            config.source.publication,
            tables.join(", ")
        ),
        Some(m) if !m.is_empty() => {
            let m: Vec<String> = m.iter().map(|t| t.to_string()).collect();
            println!(
                "would     add {} to publication `{}`",
                m.join(", "),
                config.source.publication
            )
        }
        Some(_) => println!("uses      publication `{}`", config.source.publication),
    }
    if info.slot_exists {
        println!("uses      replication slot `{}`", config.source.slot);
        return Ok(());
    }
    // As the run would: output that exists without its slot is a gap, not a new start.
    for sink in &config.sinks {
        if let Some(checkpoint) = pipeline_status::held_position(sink, &config.source.slot).await {
            return Err(crate::source::SourceError::SlotMissing {
                slot: config.source.slot.clone(),
                checkpoint,
            }
            .into());
        }
    }
    println!(
        "would     create replication slot `{}` (pgoutput)",
        config.source.slot
    );
    Ok(())
}
