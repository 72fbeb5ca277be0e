//! `weir lake`: the history of an Iceberg or Delta sink's tables, time travel and
//! maintenance.

use crate::config::{DeltaSinkConfig, IcebergSinkConfig, PipelineConfig, SinkConfig};
use crate::sink::iceberg::compact::{self, CompactOptions};
use crate::sink::iceberg::{self, lake};
use ::iceberg::TableIdent;
use ::iceberg::table::Table;
use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum LakeCommand {
    /// List a table's snapshots, oldest first, with what weir recorded in each.
    Snapshots {
        #[command(flatten)]
        table: TableArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a changelog table's change rows (not the current state), now or as of an
    /// earlier snapshot (time travel), in file order.
    Query {
        #[command(flatten)]
        table: TableArgs,
        /// Read this snapshot (an id from `weir lake snapshots`).
        #[arg(long, conflicts_with_all = ["as_of", "lsn"])]
        snapshot: Option<i64>,
        /// Read the snapshot current at this time (RFC 3339, `2026-11-22T08:00:00Z`).
        #[arg(long, conflicts_with = "lsn")]
        as_of: Option<String>,
        /// Read the table as of this source LSN: the last weir commit at or before it.
        #[arg(long)]
        lsn: Option<crate::lsn::Lsn>,
        /// Most rows to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Make an earlier snapshot the current one again. Stop the pipeline first: changes
    /// after that snapshot are not read again from PostgreSQL.
    Rollback {
        #[command(flatten)]
        table: TableArgs,
        /// The snapshot to return to.
        #[arg(long)]
        snapshot: i64,
        /// Roll back even while the pipeline runs (its next commit may build on the
        /// rolled-back state).
        #[arg(long)]
        force: bool,
    },
    /// Remove snapshots older than a duration (the current one always stays).
    ExpireSnapshots {
        #[command(flatten)]
        table: TableArgs,
        /// For example `7d` or `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
    },
    /// Delete files in the table's data/ and metadata/ that no snapshot or metadata
    /// refers to (data files of expired snapshots, files of runs killed before their
    /// commit).
    RemoveOrphans {
        #[command(flatten)]
        table: TableArgs,
        /// Keep files younger than this (at least 1d without --force). A commit still in
        /// progress, such as a long initial snapshot or a long source transaction, has
        /// files as old as it: keep the cutoff past the longest, or stop the pipeline.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3d")]
        older_than: std::time::Duration,
        /// Allow a cutoff under one day.
        #[arg(long)]
        force: bool,
        /// Print what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rewrite small data files, and data files position deletes have thinned (mirror
    /// tables), into target-size files without their deleted rows, in one `replace`
    /// commit (same content; the SQL catalog only). Safe beside a running pipeline.
    Compact {
        #[command(flatten)]
        table: TableArgs,
        /// Size of the files written. Default: the sink's target_file_size.
        #[arg(long, value_parser = parse_size)]
        target_size: Option<u64>,
        /// Rewrite a data file once this fraction of its rows is deleted.
        #[arg(long, default_value_t = crate::sink::iceberg::compact::DEFAULT_DELETE_THRESHOLD)]
        delete_threshold: f64,
    },
}

#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// The pipeline file (TOML) with the Iceberg or Delta sink.
    pipeline: PathBuf,
    /// The source table, `schema.table` (a bare name means `public`).
    table: String,
    /// Which sink, when the pipeline has several Iceberg and Delta sinks (0 = the first
    /// of them).
    #[arg(long, default_value_t = 0)]
    sink: usize,
}

/// The table sink a `weir lake` command works on.
enum LakeSink {
    Iceberg(IcebergSinkConfig),
    /// With the pipeline's slot (a Delta table records it).
    Delta(DeltaSinkConfig, String),
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(anyhow::Error::msg)
}

impl TableArgs {
    fn sink(&self) -> anyhow::Result<LakeSink> {
        let config = PipelineConfig::load(&self.pipeline)?;
        let slot = config.source.slot.clone();
        let sinks: Vec<LakeSink> = config
            .sinks
            .into_iter()
            .filter_map(|s| match s {
                SinkConfig::Iceberg(c) => Some(LakeSink::Iceberg(c)),
                SinkConfig::Delta(c) => Some(LakeSink::Delta(c, slot.clone())),
                _ => None,
            })
            .collect();
        match sinks.into_iter().nth(self.sink) {
            Some(c) => Ok(c),
            None => bail!(
                "{} has no Iceberg or Delta sink number {} (sinks of type = \"iceberg\" and \"delta\" count from 0)",
                self.pipeline.display(),
                self.sink
            ),
        }
    }
}

impl LakeCommand {
    /// The table the command names.
    fn table(&self) -> &TableArgs {
        match self {
            LakeCommand::Snapshots { table, .. }
            | LakeCommand::Query { table, .. }
            | LakeCommand::Rollback { table, .. }
            | LakeCommand::ExpireSnapshots { table, .. }
            | LakeCommand::RemoveOrphans { table, .. }
            | LakeCommand::Compact { table, .. } => table,
        }
    }
}

pub async fn lake(command: LakeCommand) -> anyhow::Result<()> {
    let args = command.table();
    let config = match args.sink()? {
        LakeSink::Iceberg(c) => c,
        LakeSink::Delta(c, slot) => return delta_lake(command, c, &slot).await,
    };
    let catalog = iceberg::connect(&config).await?;
    let ident = iceberg::named_table(&config, &args.table);
    if !catalog.table_exists(&ident).await.unwrap_or(true) {
        bail!(
            "there is no Iceberg table {ident} (of source table {}) in {}: is the table in the pipeline's source.tables, and has the pipeline run since it was added?",
            args.table,
            config.warehouse
        );
    }
    let table = catalog
        .load_table(&ident)
        .await
        .with_context(|| format!("Iceberg table {ident} (of source table {})", args.table))?;
    match command {
        LakeCommand::Snapshots { json, .. } => show_snapshots(&table, json)?,
        LakeCommand::Query {
            snapshot,
            as_of,
            lsn,
            limit,
            ..
        } => {
            let at = query_at(snapshot, as_of, lsn)?;
            show_rows(&table, &ident, at, limit).await?
        }
        LakeCommand::Rollback {
            snapshot, force, ..
        } => {
            if !force {
                ensure_stopped(&args.pipeline).await?;
            }
            lake::rollback(&config, &ident, &table, snapshot)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{ident} is at snapshot {snapshot} again");
            println!(
                "The changes of {} committed after that snapshot are no longer in the table, and the pipeline will not read them again. To have its current rows in the table again, run: weir snapshot {} --table {}",
                args.table,
                args.pipeline.display(),
                args.table
            );
        }
        LakeCommand::ExpireSnapshots { older_than, .. } => {
            let (table, expired) = lake::expire_snapshots(catalog.as_ref(), &ident, older_than)
                .await
                .with_context(|| format!("expiring snapshots of {ident}"))?;
            println!(
                "{expired} snapshots expired; {} kept",
                table.metadata().snapshots().count()
            );
        }
        LakeCommand::RemoveOrphans {
            older_than,
            force,
            dry_run,
            ..
        } => remove_orphans(&table, &ident, older_than, force, dry_run).await?,
        LakeCommand::Compact {
            target_size,
            delete_threshold,
            ..
        } => {
            let options = CompactOptions {
                target_size: target_size.unwrap_or(config.target_file_size),
                delete_threshold,
            };
            compact(&config, &table, options).await?;
        }
    }
    Ok(())
}

/// The table state `weir lake query`'s flags name.
fn query_at(
    snapshot: Option<i64>,
    as_of: Option<String>,
    lsn: Option<crate::lsn::Lsn>,
) -> anyhow::Result<lake::At> {
    Ok(match (snapshot, as_of, lsn) {
        (Some(id), _, _) => lake::At::Snapshot(id),
        (None, Some(t), _) => {
            let t = chrono::DateTime::parse_from_rfc3339(&t).with_context(|| {
                format!("--as-of `{t}`: write RFC 3339, like 2026-11-22T08:00:00Z")
            })?;
            lake::At::Time(t.timestamp_millis())
        }
        (None, None, Some(l)) => lake::At::Lsn(l),
        (None, None, None) => lake::At::Current,
    })
}

/// The Delta version `at` names (a snapshot is a version number); None for the current.
fn delta_version(
    versions: &[crate::sink::delta::TableVersion],
    at: lake::At,
) -> anyhow::Result<Option<u64>> {
    let last = |found: Option<&crate::sink::delta::TableVersion>, what: String| {
        found.map(|v| Some(v.version)).context(what)
    };
    match at {
        lake::At::Current => Ok(None),
        lake::At::Snapshot(v) => Ok(Some(u64::try_from(v).context("--snapshot: a version")?)),
        lake::At::Time(ms) => last(
            versions.iter().rev().find(|v| v.timestamp_ms <= ms),
            "no version of the table is that old".into(),
        ),
        lake::At::Lsn(l) => last(
            versions
                .iter()
                .rev()
                .find(|v| v.commit_lsn.is_some_and(|c| c <= l)),
            format!("no weir commit of the table is at or before {l}"),
        ),
    }
}

/// `weir lake snapshots`: as JSON, or a line per snapshot.
fn show_snapshots(table: &Table, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&lake::snapshots(table))?);
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<9} {:>10} {:>10}  weir",
        "snapshot", "committed (UTC)", "operation", "added", "total"
    );
    for s in lake::snapshots(table) {
        let when = chrono::DateTime::from_timestamp_millis(s.timestamp_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let n = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "{:<20} {:<24} {:<9} {:>10} {:>10}  {}{}",
            s.id,
            when,
            s.operation,
            n(s.added_records),
            n(s.total_records),
            s.weir.unwrap_or_default(),
            if s.current { "  (current)" } else { "" }
        );
    }
    Ok(())
}

/// `weir lake query`: the rows as of a snapshot, or of the time `as_of` names.
async fn show_rows(
    table: &Table,
    ident: &TableIdent,
    at: lake::At,
    limit: usize,
) -> anyhow::Result<()> {
    let mirror = table
        .metadata()
        .properties()
        .get(iceberg::mirror::PROP_MODE)
        .is_some_and(|m| m == "mirror");
    let id = lake::resolve(table, at).map_err(anyhow::Error::msg)?;
    let batches = lake::query(table, at, limit)
        .await
        .map_err(anyhow::Error::msg)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    match id {
        Some(id) if mirror => println!(
            "{rows} rows (limit {limit}) of the mirror table {ident} at snapshot {id}: the source table as of that commit"
        ),
        Some(id) => println!(
            "{rows} change rows (limit {limit}) of the changelog {ident} at snapshot {id}, in file order; order by _cdc_commit_lsn, _cdc_seq and apply them by key for the current state"
        ),
        None => println!("{ident} has no snapshot yet"),
    }
    Ok(())
}

/// `weir lake remove-orphans`: lists, or deletes, the files nothing refers to.
async fn remove_orphans(
    table: &Table,
    ident: &TableIdent,
    older_than: Duration,
    force: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    if older_than < Duration::from_secs(86_400) && !force {
        bail!(
            "--older-than {} could delete files of a commit still in progress (a long initial snapshot or transaction): use at least 1d, or add --force with the pipeline stopped",
            humantime::format_duration(older_than)
        );
    }
    let orphans = lake::find_orphans(table, older_than)
        .await
        .map_err(anyhow::Error::msg)?;
    let bytes: u64 = orphans.files.iter().map(|(_, size)| size).sum();
    let size = bytesize::ByteSize(bytes).display().iec().to_string();
    let age = humantime::format_duration(older_than);
    if dry_run {
        for (path, size) in &orphans.files {
            println!("{path}  {}", bytesize::ByteSize(*size).display().iec());
        }
        println!(
            "{} files ({size}) would be deleted: referenced by nothing {ident} keeps, older than {age} ({} referenced, {} younger kept)",
            orphans.files.len(),
            orphans.referenced,
            orphans.recent
        );
    } else {
        lake::remove_orphans(table, &orphans)
            .await
            .map_err(anyhow::Error::msg)?;
        println!(
            "{} files ({size}) deleted: referenced by nothing {ident} keeps, older than {age} ({} referenced, {} younger kept)",
            orphans.files.len(),
            orphans.referenced,
            orphans.recent
        );
    }
    Ok(())
}

/// `weir lake compact`.
async fn compact(
    config: &IcebergSinkConfig,
    table: &Table,
    options: CompactOptions,
) -> anyhow::Result<()> {
    let done = compact::compact(config, table, options)
        .await
        .map_err(anyhow::Error::msg)?;
    match done.snapshot {
        Some(id) => {
            println!(
                "{} data files rewritten into {} ({} rows) in snapshot {id}",
                done.removed_files, done.added_files, done.rows
            );
            if done.thinned_files > 0 || done.removed_delete_files > 0 {
                println!(
                    "{} of them thinned by deletes: {} deleted rows purged, {} position delete files dropped",
                    done.thinned_files, done.purged_rows, done.removed_delete_files
                );
            }
        }
        None => println!(
            "nothing to compact: no partition has two files under 3/4 of {}, and no data file has {}% of its rows deleted or {} delete files",
            bytesize::ByteSize(options.target_size).display().iec(),
            options.delete_threshold * 100.0,
            compact::DELETE_FILES_LIMIT
        ),
    }
    Ok(())
}

/// Refuses to roll a table back under a running pipeline: its next commit would build on
/// a state it did not write.
async fn ensure_stopped(pipeline: &std::path::Path) -> anyhow::Result<()> {
    let config = PipelineConfig::load(pipeline)?;
    let control = crate::source::Control::connect(&config.source.url).await?;
    if control.slot_active(&config.source.slot).await? {
        bail!(
            "the slot `{}` is in use: stop the pipeline before rolling its table back (or give --force)",
            config.source.slot
        );
    }
    Ok(())
}

/// `weir lake` on a Delta sink's table: versions, their rows, removing the files no
/// version refers to, expiring old versions and compacting small files (Delta's own
/// tools do the rest).
async fn delta_lake(
    command: LakeCommand,
    config: DeltaSinkConfig,
    slot: &str,
) -> anyhow::Result<()> {
    use crate::sink::delta;
    let args = command.table();
    let source = args.table.clone();
    let (schema, name) = source.split_once('.').unwrap_or(("public", &source));
    let (url, target_file_size) = (config.url.clone(), config.target_file_size);
    let mirror = config.mode == crate::config::DeltaMode::Mirror;
    let sink = delta::DeltaSink::open(config, slot).await?;
    let Some(mut table) = sink.table_of(schema, name).await? else {
        bail!(
            "there is no Delta table of source table {schema}.{name} in {url}: is the table in the pipeline's source.tables, and has the pipeline run since it was added?"
        );
    };
    let versions = delta::versions(&table).await?;
    match command {
        LakeCommand::Snapshots { json: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&versions)?)
        }
        LakeCommand::Snapshots { .. } => {
            println!(
                "{:<8} {:<24} {:<13}  weir",
                "version", "committed (UTC)", "operation"
            );
            for v in &versions {
                let when = chrono::DateTime::from_timestamp_millis(v.timestamp_ms)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                    .unwrap_or_default();
                let weir = match (v.commit_lsn, v.end_lsn) {
                    (Some(c), Some(e)) => format!("commit_lsn {c}, end_lsn {e}"),
                    _ => String::new(),
                };
                println!(
                    "{:<8} {:<24} {:<13}  {weir}{}",
                    v.version,
                    when,
                    v.operation,
                    if v.current { "  (current)" } else { "" }
                );
            }
        }
        LakeCommand::Query {
            snapshot,
            as_of,
            lsn,
            limit,
            ..
        } => {
            let version = delta_version(&versions, query_at(snapshot, as_of, lsn)?)?;
            let shown = version.unwrap_or_else(|| versions.last().map_or(0, |v| v.version));
            let batches = delta::rows_at(&mut table, version, limit).await?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
            match mirror {
                true => println!(
                    "{rows} rows (limit {limit}) of the Delta mirror of {schema}.{name} at version {shown}"
                ),
                false => println!(
                    "{rows} change rows (limit {limit}) of the Delta changelog of {schema}.{name} at version {shown}, in file order; order by _cdc_commit_lsn, _cdc_seq and apply them by key for the current state"
                ),
            }
        }
        LakeCommand::RemoveOrphans {
            older_than,
            force,
            dry_run,
            ..
        } => {
            if older_than < Duration::from_secs(86_400) && !force {
                bail!(
                    "--older-than {} could delete files of a commit still in progress: use at least 1d, or add --force with the pipeline stopped",
                    humantime::format_duration(older_than)
                );
            }
            let files = delta::remove_unreferenced(table, older_than, dry_run).await?;
            for f in &files {
                println!("{f}");
            }
            let verb = if dry_run {
                "would be deleted"
            } else {
                "deleted"
            };
            println!(
                "{} files {verb}: referenced by no version of the table, older than {} (Delta's VACUUM, full mode)",
                files.len(),
                humantime::format_duration(older_than)
            );
        }
        LakeCommand::ExpireSnapshots { older_than, .. } => {
            let expired = delta::expire(&mut table, older_than).await?;
            println!(
                "{} files deleted: data files removed from the table, and change data files of versions, older than {}; {} log entries removed",
                expired.files.len(),
                humantime::format_duration(older_than),
                expired.log_entries
            );
        }
        LakeCommand::Compact { target_size, .. } => {
            let target = target_size.unwrap_or(target_file_size);
            let compacted = delta::compact(&mut table, target, &delta::writer_properties()).await?;
            match compacted.version {
                Some(v) => println!(
                    "{} small files rewritten into {} in version {v} (OPTIMIZE: no row changed)",
                    compacted.rewritten, compacted.written
                ),
                None => println!(
                    "nothing to compact: no two data files under three quarters of {target} bytes fit one file"
                ),
            }
        }
        LakeCommand::Rollback { .. } => bail!(
            "rollback works on Iceberg tables only; for a Delta table use Delta's RESTORE (Spark or delta-rs) with the pipeline stopped"
        ),
    }
    Ok(())
}
