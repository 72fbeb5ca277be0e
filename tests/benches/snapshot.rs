//! Snapshot benchmark: weir's initial snapshot and backfill of a table against
//! `COPY ... TO STDOUT (FORMAT binary)` of the same table, in one run.
//!
//! `cargo bench -p weir-tests --bench snapshot` (env `WEIR_BENCH_ROWS`: a comma-separated
//! list of table sizes, default `2000000,10000000`; `WEIR_BENCH_ROUNDS`, default 2;
//! `WEIR_BENCH_ONLY=<text>` runs the workloads whose label contains it).
//!
//! A throwaway PostgreSQL gets the 7-column table of the throughput benchmark, loaded
//! once per size. The reference is `psql -c "COPY (SELECT * FROM bench) TO STDOUT (FORMAT
//! binary)"` into `/dev/null`: the server's own read and send rate for the table. Against
//! it, in the same round:
//! - **initial snapshot**: `weir run --until-caught-up` of a new pipeline (its slot
//!   created with an exported snapshot) writing zstd Parquet, start to exit, with
//!   `source.snapshot_parallelism = 1` and at its default;
//! - **backfill**: a pipeline that already streams another table is given this one, and
//!   `weir run --until-caught-up` backfills it in chunks while streaming, start to exit.
//!
//! Rates are rows per second of wall time; the ratio is weir's rate over COPY's. weir's
//! peak RSS is read from /proc while it runs, its CPU time from `getrusage`.

use std::time::Instant;
use weir::pgtemp::TempPostgres;
use weir_tests::bench::{TABLE, insert_rows, machine, measure, parquet_rows, weir_until_caught_up};

fn main() {
    let sizes: Vec<u64> = std::env::var("WEIR_BENCH_ROWS")
        .unwrap_or_else(|_| "2000000,10000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("WEIR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    let pg = TempPostgres::start_with("max_wal_size = 4GB").expect("start PostgreSQL");
    println!("weir snapshot benchmark: 7 columns, best of {rounds} rounds each");
    println!("machine: {}", machine());
    for (i, rows) in sizes.into_iter().enumerate() {
        let db = format!("snap_{i}");
        pg.psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        pg.psql(&db, TABLE).unwrap();
        pg.psql(&db, "CREATE TABLE other (id int PRIMARY KEY)")
            .unwrap();
        let load = Instant::now();
        let mut start = 1;
        while start <= rows {
            let end = (start + 1_000_000 - 1).min(rows);
            pg.psql(&db, &insert_rows(start, end)).unwrap();
            start = end + 1;
        }
        pg.psql(&db, "VACUUM ANALYZE bench").unwrap();
        println!(
            "\n{rows} rows: loaded in {:.1}s",
            load.elapsed().as_secs_f64()
        );
        for workload in [
            Workload::Initial(Some(1)),
            Workload::Initial(None),
            Workload::Backfill,
        ] {
            let label = format!("{rows} rows, {}", workload.label());
            if !label.contains(&only) {
                continue;
            }
            println!("{label}");
            let mut best: Option<(f64, Run)> = None;
            for round in 0..rounds {
                let copy = copy_seconds(&pg.url(&db));
                let w = run_weir(&pg, &db, &format!("{db}_{round}"), rows, workload);
                println!(
                    "  round {}: COPY binary {:>9.0} rows/s   weir {:>9.0} rows/s   ratio {:.2}   weir peak RSS {} MiB   weir CPU {:.2} s per M rows",
                    round + 1,
                    rows as f64 / copy,
                    rows as f64 / w.seconds,
                    copy / w.seconds,
                    w.peak_rss_kib / 1024,
                    w.cpu_seconds * 1e6 / rows as f64
                );
                if best.as_ref().is_none_or(|(_, b)| w.seconds < b.seconds) {
                    best = Some((copy, w));
                }
            }
            let (copy, w) = best.unwrap();
            println!(
                "  best:    COPY binary {:>9.0} rows/s   weir {:>9.0} rows/s   ratio {:.2}   weir peak RSS {} MiB   weir CPU {:.2} s per M rows",
                rows as f64 / copy,
                rows as f64 / w.seconds,
                copy / w.seconds,
                w.peak_rss_kib / 1024,
                w.cpu_seconds * 1e6 / rows as f64
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Workload {
    /// The initial snapshot at `source.snapshot_parallelism` (`None`: its default).
    Initial(Option<usize>),
    Backfill,
}

impl Workload {
    fn label(self) -> String {
        match self {
            Workload::Initial(Some(n)) => format!("initial snapshot, snapshot_parallelism = {n}"),
            Workload::Initial(None) => format!(
                "initial snapshot, default snapshot_parallelism ({})",
                std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
            ),
            Workload::Backfill => "backfill of a table added later".into(),
        }
    }

    /// The `[source]` line that sets the parallelism, if any.
    fn source_line(self) -> String {
        match self {
            Workload::Initial(Some(n)) => format!("snapshot_parallelism = {n}\n"),
            _ => String::new(),
        }
    }
}

struct Run {
    seconds: f64,
    peak_rss_kib: u64,
    cpu_seconds: f64,
}

/// Seconds `psql` takes to `COPY` the table out in binary into `/dev/null`.
fn copy_seconds(url: &str) -> f64 {
    let started = Instant::now();
    let status = std::process::Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-c",
            "COPY (SELECT * FROM bench) TO STDOUT (FORMAT binary)",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run psql");
    assert!(status.success(), "COPY failed");
    started.elapsed().as_secs_f64()
}

fn run_weir(pg: &TempPostgres, db: &str, slot: &str, rows: u64, workload: Workload) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    let out = dir.path().join("out");
    let write = |tables: &str| {
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\ntables = [{tables}]\n{}\n\
                 [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\ncompression = \"zstd\"\n",
                pg.url(db),
                workload.source_line(),
                out.display()
            ),
        )
        .unwrap();
    };
    let bin = env!("CARGO_BIN_EXE_weir-e2e");
    if let Workload::Backfill = workload {
        write("\"public.other\"");
        let m = measure(&mut weir_until_caught_up(bin, &config), false);
        assert!(m.status.success(), "weir failed to start streaming");
    }
    write("\"public.other\", \"public.bench\"");
    let m = measure(&mut weir_until_caught_up(bin, &config), false);
    assert!(m.status.success(), "weir failed");
    assert_eq!(
        parquet_rows(&out.join("public").join("bench")),
        rows,
        "weir wrote every row"
    );
    pg.psql(db, &format!("SELECT pg_drop_replication_slot('{slot}')"))
        .unwrap();
    pg.psql(db, &format!("DROP PUBLICATION {slot}")).unwrap();
    Run {
        seconds: m.seconds,
        peak_rss_kib: m.peak_rss_kib,
        cpu_seconds: m.cpu_seconds,
    }
}
