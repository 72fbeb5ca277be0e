//! `weir verify` and `weir audit`: arguments, and the reports as people and programs
//! read them.

use crate::config::{PipelineConfig, TableName};
use crate::verify::{Options, Report, TableReport, Tally};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The pipeline file (TOML).
    pipeline: PathBuf,
    /// Only these tables (`schema.table`, one or more); default: every captured table.
    #[arg(long = "table", num_args = 1..)]
    tables: Vec<TableName>,
    /// Only this sink, by its place in the file from 0; default: every parquet and
    /// iceberg sink.
    #[arg(long)]
    sink: Option<usize>,
    /// Compare this percentage of the keys (chosen by key hash, the same keys each run).
    #[arg(long, default_value_t = 100.0, value_parser = percent)]
    sample: f64,
    /// Leave a column out of the comparison: `column` in every table, or
    /// `schema.table.column`. Repeatable.
    #[arg(long = "ignore-column")]
    ignore: Vec<String>,
    /// How long to wait for each sink to pass the snapshot's position.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("`{s}` is not a percentage above 0 and at most 100")),
    }
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let config = PipelineConfig::load(&args.pipeline)?;
    let options = Options {
        tables: args.tables,
        sink: args.sink,
        sample: args.sample,
        ignore: args.ignore,
        timeout: args.timeout,
    };
    let report = crate::verify::verify(&config, &options).await?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print_report(&report),
    }
    let differing = report.tables.iter().filter(|t| !t.matches()).count();
    if differing > 0 {
        anyhow::bail!(
            "{differing} of {} table output(s) differ from the source at {}",
            report.tables.len(),
            report.at
        );
    }
    Ok(())
}

fn print_report(report: &Report) {
    println!(
        "verified at {} (transactions committed before it; source snapshot taken now)",
        report.at
    );
    for t in &report.tables {
        print_table(t);
    }
}

fn print_table(t: &TableReport) {
    let c = &t.comparison;
    if let Some(why) = &t.skipped {
        println!("{} in {}: not compared: {why}", t.table, t.sink);
        return;
    }
    let verdict = if t.matches() { "OK" } else { "DIFFERS" };
    println!(
        "{} in {}: {verdict}: source {} rows, output {} rows, missing {}, extra {}, different {}, duplicated {} ({:.1} s)",
        t.table,
        t.sink,
        c.source_rows,
        c.output_rows,
        c.missing.count,
        c.extra.count,
        c.different.count,
        c.duplicated.count,
        t.seconds
    );
    for (what, tally) in [
        ("missing", &c.missing),
        ("extra", &c.extra),
        ("different", &c.different),
        ("duplicated", &c.duplicated),
    ] {
        print_examples(what, tally);
    }
    if c.newer > 0 {
        println!(
            "  {} key(s) changed in the output after the verify position: not compared",
            c.newer
        );
    }
    if t.sample_percent < 100.0 {
        println!("  sample: {}% of the keys", t.sample_percent);
    }
    if !t.ignored.is_empty() {
        println!("  ignored columns: {}", t.ignored.join(", "));
    }
    if !t.transformed_by.is_empty() {
        println!(
            "  source rows compared as the transforms make them: {}",
            t.transformed_by.join(" -> ")
        );
    }
}

fn print_examples(what: &str, tally: &Tally) {
    if tally.count == 0 {
        return;
    }
    let more = match tally.count as usize > tally.examples.len() {
        true => format!(", and {} more", tally.count as usize - tally.examples.len()),
        false => String::new(),
    };
    println!("  {what}: {}{more}", tally.examples.join("; "));
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The pipeline file (TOML).
    pipeline: PathBuf,
    /// Re-hash the files of commits after this LSN only (the chain is always walked
    /// whole).
    #[arg(long)]
    from: Option<crate::lsn::Lsn>,
    /// ... and up to this LSN.
    #[arg(long)]
    to: Option<crate::lsn::Lsn>,
    /// Print the evidence bundle as JSON: the records of the range, what was checked,
    /// and the problems found.
    #[arg(long)]
    json: bool,
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let config = PipelineConfig::load(&args.pipeline)?;
    let report = crate::audit::audit(&config, args.from, args.to).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let (first, last) = (report.records.first(), report.records.last());
        println!(
            "ledger {}: {} records; checked {} files ({}) of {} records{}",
            report.ledger,
            report.chain_length,
            report.files_checked,
            bytesize::ByteSize(report.bytes_checked),
            report.records.len(),
            match (first, last) {
                (Some(f), Some(l)) => format!(", LSN {} to {}", f.from_lsn, l.end_lsn),
                _ => String::new(),
            }
        );
        if report.files_before_ledger > 0 {
            println!(
                "{} file(s) were written before the ledger began and are not covered",
                report.files_before_ledger
            );
        }
        for p in &report.problems {
            println!("{}: {}", p.kind, p.message);
        }
        if report.ok() {
            println!("OK: the chain is unbroken and every file is as recorded");
        }
    }
    if !report.ok() {
        anyhow::bail!("audit found {} problem(s)", report.problems.len());
    }
    Ok(())
}
