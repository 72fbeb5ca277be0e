//! The `weir` command line.

mod dead_letter;
mod demo;
mod lake;
mod pipeline_status;
mod plugin;
mod proof;
mod sdk_files;
mod status;

use crate::config::{PipelineConfig, SinkConfig};
use crate::pipeline::RunOptions;
use crate::plugin::Instance;
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
    /// Apply the pipeline's Parquet changelog to a postgres sink (a projection), after
    /// --from (default: what the sink holds), in one target transaction; the next run
    /// hands over to the stream. The pipeline must be stopped; the slot is not touched.
    Replay {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The sink to fill, by its place in the file, from 0 (as `sink-N` in dead letters).
        #[arg(long)]
        sink: usize,
        /// Apply changes committed after this LSN (`0/0` for everything the changelog
        /// holds); default: the sink's checkpoint.
        #[arg(long)]
        from: Option<crate::lsn::Lsn>,
    },
    /// Compare each table's state in the outputs (parquet, iceberg and delta changelogs
    /// and mirrors) with
    /// the source's, both as of one LSN: a snapshot of the source taken now, while the
    /// pipeline runs. Prints rows in source and output, missing, extra, different and
    /// duplicated, with example keys; exits 0 only when everything matches. Writes
    /// nothing to the outputs and does not move the slot.
    Verify(proof::VerifyArgs),
    /// Walk the evidence ledger (one record per durable commit of each parquet and
    /// iceberg sink, chained by sha256), re-hash every file it names, and report a
    /// broken link, a missing record, or a missing, altered or extra file; exits non-zero
    /// on any. Reads only.
    Audit(proof::AuditArgs),
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
        /// Drop the pipeline's publication too (teardown: nothing of weir's stays on the
        /// server; the output is left as it is).
        #[arg(long)]
        publication: bool,
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
        stage: Option<crate::plugin::Stage>,
    },
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    limit_heap_fragmentation();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        exit_quietly_on_closed_pipe();
    }
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
            Command::Slot(SlotCommand::Drop {
                pipeline,
                slot,
                publication,
            }) => pipeline_status::slot_drop(&pipeline, slot.as_deref(), publication).await,
            Command::Lake(c) => lake::lake(c).await,
            Command::Plugin(c) => plugin::plugin(c).await,
            Command::Snapshot { pipeline, table } => snapshot(&pipeline, &table).await,
            Command::Replay {
                pipeline,
                sink,
                from,
            } => replay(&pipeline, sink, from).await,
            Command::Demo { out, rows } => demo::demo(&out, rows).await,
            Command::Verify(args) => proof::verify(args).await,
            Command::Audit(args) => proof::audit(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: typed errors name their
/// source in their own message already.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
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

/// `weir status | head -4`: a reader that stops early ends a command that prints, as
/// it ends any Unix tool, instead of a panic on the next line printed. Not for `run`:
/// a closed socket there is an error to handle, not a reason to die.
#[allow(unsafe_code)]
fn exit_quietly_on_closed_pipe() {
    // SAFETY: sets the signal's disposition back to the default before any thread
    // exists; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(format: LogFormat) {
    let mut directives = std::env::var("WEIR_LOG").unwrap_or_else(|_| "info".into());
    // delta-rs and its kernel log every table snapshot they build at info: weir's own
    // lines say what happened; theirs show at `WEIR_LOG=...,deltalake_core=info`.
    for noisy in ["buoyant_kernel", "deltalake_core"] {
        if !directives.contains(noisy) {
            directives.push_str(&format!(",{noisy}=warn"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
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
    // Registered here, not in the task: a signal that arrives before the task first runs
    // is still a clean stop, not the default action's kill.
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return token;
    };
    tokio::spawn(async move {
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
    let lsn = control
        .emit(&crate::batch::Signal::Reload {
            slot: config.source.slot.clone(),
        })
        .await?;
    println!(
        "reload requested at {lsn}: the running pipeline of slot {} loads changed transforms when its stream reaches it",
        config.source.slot
    );
    Ok(())
}

async fn replay(
    path: &std::path::Path,
    sink: usize,
    from: Option<crate::lsn::Lsn>,
) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    let done = crate::replay::replay(&config, sink, from).await?;
    println!(
        "replayed {} changes in {} transactions after {} into sink {sink}; it holds the changelog up to {} (the next run streams from there)",
        done.changes, done.transactions, done.from, done.to.end_lsn
    );
    Ok(())
}

async fn snapshot(path: &std::path::Path, table: &crate::config::TableName) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    if !config.source.selects(table) {
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
    if !control.has_primary_key(table).await? {
        return Err(crate::source::SourceError::NoKeyToBackfill {
            table: table.clone(),
        }
        .into());
    }
    let lsn = control
        .emit(&crate::batch::Signal::BackfillRequest(table.clone()))
        .await?;
    println!(
        "backfill of {table} requested at {lsn}: the running pipeline (or its next run) reads its rows in chunks while it streams"
    );
    Ok(())
}

async fn dead_letter(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { pipeline } => {
            let config = PipelineConfig::load(&pipeline)?;
            let letters = dead_letter::list(&config).await?;
            for letter in &letters {
                println!("{}", dead_letter::describe(letter));
            }
            println!("{} dead letter(s)", letters.len());
            Ok(())
        }
        DeadLetterCommand::Replay { pipeline, stage } => {
            let config = PipelineConfig::load(&pipeline)?;
            let done = dead_letter::replay(&config, stage).await?;
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
    // Every line of the run carries the pipeline and its slot (a `span` in JSON logs),
    // those of the tasks beside it too.
    let span = tracing::info_span!("run", pipeline = %config.name(), slot = %config.source.slot);
    tracing::Instrument::instrument(run_in_span(path, &config, until_caught_up, new_slot), span)
        .await
}

async fn run_in_span(
    path: &std::path::Path,
    config: &PipelineConfig,
    until_caught_up: bool,
    new_slot: bool,
) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let reporter = status::spawn(stats.clone());
    let options = RunOptions {
        until_caught_up,
        new_slot,
        shutdown: shutdown_on_signals(config.shutdown_timeout),
        pipeline_file: Some(path.to_path_buf()),
    };
    let over_limit = Arc::new(std::sync::Mutex::new(None));
    let watch = crate::supervisor::slot_watch(
        config,
        stats.clone(),
        options.shutdown.clone(),
        over_limit.clone(),
    );
    let metrics = match &config.metrics {
        Some(m) => Some(crate::metrics::serve(m, config, stats.clone()).await?),
        None => None,
    };
    let result = crate::supervisor::run_with_retries(config, &options, &stats).await;
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

async fn validate(path: &std::path::Path, offline: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    println!("pipeline  {} ({})", config.name(), path.display());
    print_source(&config)?;
    load_transforms(&config).await?;
    for sink in &config.sinks {
        describe_sink(sink).await?;
    }
    if offline {
        println!("valid (file and plugins checked; --offline: the database was not)");
        return Ok(());
    }
    check_database(&config).await
}

/// The source, its tables and the batch limits, as the file sets them.
fn print_source(config: &PipelineConfig) -> anyhow::Result<()> {
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
    println!("tables    {}", table_list(config));
    let b = &config.batch;
    println!(
        "batches   up to {} events, {}, {}",
        b.max_events,
        bytesize::ByteSize(b.max_bytes).display().iec(),
        humantime::format_duration(b.max_delay)
    );
    Ok(())
}

fn table_list(config: &PipelineConfig) -> String {
    let tables: Vec<String> = config.source.tables.iter().map(|t| t.to_string()).collect();
    tables.join(", ")
}

/// Compiles each transform and calls its init with its configuration.
async fn load_transforms(config: &PipelineConfig) -> anyhow::Result<()> {
    if config.transforms.is_empty() {
        return Ok(());
    }
    let specs = config.transforms.clone();
    let lines = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let engine =
            crate::plugin::PluginEngine::new(crate::plugin::PluginEngine::default_cache_dir())?;
        specs
            .iter()
            .map(|t| {
                let plugin = crate::plugin::TransformPlugin::load(&engine, &t.plugin, &t.config)?;
                Ok(format!("transform {}", plugin.describe()))
            })
            .collect()
    })
    .await??;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// A line for the sink; a plugin sink is compiled and linked but not started, since its
/// init may reach its destination.
async fn describe_sink(sink: &SinkConfig) -> anyhow::Result<()> {
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
        SinkConfig::Delta(c) => println!(
            "sink      delta {} ({:?}, files up to {}, committed every {})",
            c.url,
            c.mode,
            bytesize::ByteSize(c.target_file_size).display().iec(),
            humantime::format_duration(c.commit_interval)
        ),
        SinkConfig::Stdout(_) => println!("sink      stdout (one JSON line per change)"),
        SinkConfig::Postgres(c) => {
            let found = crate::sink::postgres::check(c).await?;
            println!(
                "sink      postgres projection {} ({:?}, deletes {:?}, on_error {}): {found}",
                c.projection(),
                c.mode,
                c.deletes,
                c.on_error.as_str()
            )
        }
        SinkConfig::Plugin(p) => {
            let (config, engine) = (
                p.clone(),
                crate::plugin::PluginEngine::new(crate::plugin::PluginEngine::default_cache_dir())?,
            );
            let plugin = tokio::task::spawn_blocking(move || {
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
    Ok(())
}

/// Each postgres sink's target tables, checked against the source tables (without
/// transforms: what they produce is known only when they run).
async fn describe_projections(
    config: &PipelineConfig,
    control: &crate::source::Control,
    info: &crate::source::SourceInfo,
) -> anyhow::Result<()> {
    for (i, sink) in config.sinks.iter().enumerate() {
        let SinkConfig::Postgres(p) = sink else {
            continue;
        };
        if !config.transforms.is_empty() {
            println!(
                "target    sink {i}: tables checked when the run sees what the transforms produce"
            );
            continue;
        }
        let mut relations = Vec::new();
        for table in &config.source.tables {
            relations
                .push(crate::source::snapshot::table_relation(&control.client, info, table).await?);
        }
        for line in crate::sink::postgres::describe_tables(p, &relations).await? {
            println!("target    sink {i}: {line}");
        }
    }
    Ok(())
}

/// What a run would find and do in the database: the preflight checks, then the
/// publication and the slot it would create or use.
async fn check_database(config: &PipelineConfig) -> anyhow::Result<()> {
    let control = crate::source::Control::connect(&config.source.url).await?;
    let selected = control.resolve_tables(&config.source.tables).await?;
    if config.source.has_patterns() {
        let names: Vec<String> = selected.tables.iter().map(|t| t.to_string()).collect();
        println!("selects   {}", names.join(", "));
        for table in &selected.left_out {
            println!(
                "leaves    {table} out: no primary key, and REPLICA IDENTITY DEFAULT or NOTHING"
            );
        }
    }
    let config = &config.with_tables(selected.tables);
    let info = control.preflight(&config.source).await?;
    crate::sink::postgres::check_keys(config, &info)?;
    println!(
        "database  `{}` as `{}`: wal_level logical, replication allowed, tables found and readable, may create or extend the publication",
        info.database, info.user
    );
    config.check_outputs_writable().await?;
    println!(
        "output    writable: {} (probed with a temporary file or object, removed again)",
        config.output_urls().join(", ")
    );
    describe_projections(config, &control, &info).await?;
    match &info.publication_missing {
        None => println!(
            "would     create publication `{}` for {}",
            config.source.publication,
            table_list(config)
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
    if !info.publication_extra.is_empty() {
        let extra: Vec<String> = info
            .publication_extra
            .iter()
            .map(|t| t.to_string())
            .collect();
        println!(
            "would     remove {} from publication `{}` (no longer in source.tables)",
            extra.join(", "),
            config.source.publication
        );
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
