//! `weir demo`: the main job end to end on a throwaway database.

use crate::config::PipelineConfig;
use crate::pgtemp::TempPostgres;
use crate::pipeline::{self, RunOptions};
use anyhow::{Context, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SCHEMA: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    amount numeric(10,2) NOT NULL,
    status text NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now(),
    note varchar(200)
);";

pub async fn demo(out: &Path, rows: u32) -> anyhow::Result<()> {
    let out = std::path::absolute(out)?;
    prepare_out_dir(&out)?;
    println!("1/5 Starting a throwaway PostgreSQL (initdb, wal_level = logical)...");
    let pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
    pg.psql("postgres", "CREATE DATABASE shop")?;
    pg.psql("shop", SCHEMA)?;
    let config_path = out.join("pipeline.toml");
    let data = out.join("data");
    let config = write_config(&pg, &config_path, &data)?;

    println!("2/5 Creating the publication and replication slot...");
    run_until_caught_up(&config).await?;

    println!(
        "3/5 Generating changes: {rows} orders, updates, deletes, and a rolled-back transaction..."
    );
    generate_changes(&pg, rows)?;

    println!("4/5 Running the pipeline until it has caught up...");
    let summary = run_until_caught_up(&config).await?;

    println!("5/5 What landed in {}:\n", data.display());
    print_landed(&pg, &data)?;
    println!(
        "\n{} change events, checkpoint {}. The pipeline is in {}.",
        summary.events,
        summary
            .checkpoint
            .map(|l| l.to_string())
            .unwrap_or_default(),
        config_path.display()
    );
    println!(
        "Rebuild a table's current state with DuckDB (the last change per key, without deletes; see README, \"Reading the changelog\"):"
    );
    println!(
        "  duckdb -c \"SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _cdc_commit_lsn DESC, _cdc_seq DESC) AS _rn FROM read_parquet('{}/public/orders/**/*.parquet', union_by_name = true, hive_partitioning = false)) WHERE _rn = 1 AND _cdc_op <> 'd' ORDER BY id\"",
        data.display()
    );
    Ok(())
}

/// Writes the demo's pipeline file (the database's two tables into Parquet under
/// `data`) and loads it.
fn write_config(pg: &TempPostgres, path: &Path, data: &Path) -> anyhow::Result<PipelineConfig> {
    std::fs::write(
        path,
        format!(
            "# Written by `weir demo`.\n[source]\nurl = \"{}\"\nslot = \"weir_demo\"\npublication = \"weir_demo\"\n\
             tables = [\"public.customers\", \"public.orders\"]\n\n[[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\n\
             flush_interval = \"1s\"\n",
            pg.url("shop"),
            data.display()
        ),
    )?;
    Ok(PipelineConfig::load(path)?)
}

/// Customers, then `rows` orders in transactions of a thousand, then updates, deletes
/// and a transaction rolled back (whose changes must not land).
fn generate_changes(pg: &TempPostgres, rows: u32) -> anyhow::Result<()> {
    let customers = (rows / 100).max(10);
    pg.psql(
        "shop",
        &format!(
            "INSERT INTO customers (id, name, email) SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, {customers}) g;"
        ),
    )?;
    let per_tx = 1000;
    for start in (0..rows).step_by(per_tx as usize) {
        let end = (start + per_tx).min(rows);
        pg.psql(
            "shop",
            &format!(
                "INSERT INTO orders (id, customer_id, amount, status, note) \
                 SELECT g, 1 + g % {customers}, round((g % 997) * 1.37, 2), 'new', CASE WHEN g % 7 = 0 THEN 'gift' END \
                 FROM generate_series({}, {end}) g;",
                start + 1
            ),
        )?;
    }
    pg.psql(
        "shop",
        "UPDATE orders SET status = 'shipped' WHERE id % 5 = 0;",
    )?;
    pg.psql("shop", "DELETE FROM orders WHERE id % 20 = 3;")?;
    pg.psql(
        "shop",
        "UPDATE customers SET email = NULL WHERE id % 3 = 0;",
    )?;
    pg.psql("shop", "BEGIN; DELETE FROM orders; ROLLBACK;")?;
    Ok(())
}

/// A line per table: its files and operations, and its rebuilt rows against the
/// source's.
fn print_landed(pg: &TempPostgres, data: &Path) -> anyhow::Result<()> {
    let landed = summarize(data)?;
    println!(
        "{:<18} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "table", "files", "inserts", "updates", "deletes", "rebuilt"
    );
    for (table, t) in &landed {
        let source: u64 = pg
            .psql("shop", &format!("SELECT count(*) FROM {table}"))?
            .trim()
            .parse()?;
        println!(
            "{:<18} {:>6} {:>9} {:>9} {:>9} {:>9}  (source has {source} rows{})",
            table,
            t.files,
            t.ops.get("c").unwrap_or(&0),
            t.ops.get("u").unwrap_or(&0),
            t.ops.get("d").unwrap_or(&0),
            t.live.len(),
            if source == t.live.len() as u64 {
                ", equal"
            } else {
                ", DIFFERENT"
            }
        );
    }
    Ok(())
}

async fn run_until_caught_up(config: &PipelineConfig) -> anyhow::Result<pipeline::RunSummary> {
    let options = RunOptions {
        until_caught_up: true,
        ..Default::default()
    };
    Ok(pipeline::run(config, options, Arc::default()).await?)
}

/// The demo owns its output directory: it refuses to write into one it did not make.
fn prepare_out_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        if !out.join("pipeline.toml").exists() && std::fs::read_dir(out)?.next().is_some() {
            bail!(
                "{} exists and was not made by `weir demo`; choose another --out",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out)?;
    Ok(())
}

#[derive(Default)]
struct Landed {
    files: usize,
    ops: HashMap<String, u64>,
    /// Keys present after applying every change in (commit_lsn, seq) order.
    live: std::collections::HashSet<i64>,
}

fn parquet_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            parquet_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found.push(path);
        }
    }
    Ok(())
}

/// Reads every changelog file back and rebuilds each table's set of live keys.
fn summarize(data: &Path) -> anyhow::Result<BTreeMap<String, Landed>> {
    let mut files = Vec::new();
    parquet_files(data, &mut files)?;
    let mut changes: BTreeMap<String, Vec<(i64, i64, String, i64)>> = BTreeMap::new();
    let mut tables: BTreeMap<String, Landed> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(data)?;
        let mut parts = rel.iter().map(|p| p.to_string_lossy());
        let table = format!(
            "{}.{}",
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        );
        tables.entry(table.clone()).or_default().files += 1;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("{name} missing"))
            };
            let ids = col("id")?.as_primitive::<Int64Type>().clone();
            let ops = col("_cdc_op")?.as_string::<i32>().clone();
            let lsns = col("_cdc_commit_lsn")?.as_primitive::<Int64Type>().clone();
            let seqs = col("_cdc_seq")?.as_primitive::<Int64Type>().clone();
            let rows = changes.entry(table.clone()).or_default();
            for i in 0..batch.num_rows() {
                let id = if ids.is_null(i) { 0 } else { ids.value(i) };
                rows.push((lsns.value(i), seqs.value(i), ops.value(i).to_string(), id));
            }
        }
    }
    for (table, mut rows) in changes {
        rows.sort();
        let t = tables.entry(table).or_default();
        for (_, _, op, id) in rows {
            *t.ops.entry(op.clone()).or_default() += 1;
            match op.as_str() {
                "d" => {
                    t.live.remove(&id);
                }
                "t" => t.live.clear(),
                _ => {
                    t.live.insert(id);
                }
            }
        }
    }
    Ok(tables)
}
