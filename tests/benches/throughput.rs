//! Throughput benchmark: weir against `pg_recvlogical` on the same WAL, in one run.
//!
//! `cargo bench -p weir-tests --bench throughput` (env `WEIR_BENCH_ROWS`, default 1M).
//!
//! A throwaway PostgreSQL gets a 7-column table, a publication and a slot; the workload
//! is written once; then copies of the slot (`pg_copy_logical_replication_slot`, all at
//! the same position) are drained by `pg_recvlogical` (pgoutput, the WAL sender's own
//! decode rate: the ceiling for one slot) and by `weir run --until-caught-up` writing
//! zstd Parquet. Rates are rows per second of wall time, start to exit. weir's peak RSS
//! is read from /proc while it runs, and its CPU time (user and system) from
//! `getrusage`, reported as CPU seconds per million events. Workloads: many 10k-row
//! transactions, and one transaction of a quarter and of all the rows (peak memory must
//! not grow with transaction size); and the first again with a transform (`mask` hashing
//! one column), with a chain of three (`mask`, `filter` dropping a quarter of the rows,
//! `rename` of the table and a column), without the evidence ledger
//! (`[state] ledger = false`), which shows what keeping it costs, and with an eighth
//! column `tags text[]` of two elements, written as a Parquet list (what nested types
//! cost against the same table without it), and the first again into Delta Lake tables
//! (`type = "delta"`) instead of Parquet files.
//!
//! `WEIR_BENCH_ONLY=<text>` runs the workloads whose label contains it.

use std::path::Path;
use std::time::Instant;
use weir::pgtemp::TempPostgres;
use weir_tests::bench::{
    TABLE, insert_rows, machine, measure, parquet_rows, recvlogical, weir_until_caught_up,
};

struct Run {
    seconds: f64,
    peak_rss_kib: u64,
    cpu_seconds: f64,
}

/// The transforms a workload runs.
#[derive(Clone, Copy)]
enum Transforms {
    None,
    /// `mask` hashing `note`.
    Mask,
    /// `mask` hashing `note`, `filter` keeping status other than `returned` (three rows
    /// in four), `rename` of the table and of `amount`.
    Chain,
}

impl Transforms {
    /// The rows that reach the output when rows `1..=rows` go in.
    fn rows_out(self, rows: u64) -> u64 {
        match self {
            // insert_rows: status `returned` is row g with g % 4 == 3.
            Transforms::Chain => (1..=rows).filter(|g| g % 4 != 3).count() as u64,
            _ => rows,
        }
    }

    fn config(self, plugins: &Plugins) -> String {
        let mask = format!(
            "[[transform]]\nplugin = \"{}\"\nconfig = {{ salt = \"bench\", rules = [ {{ columns = [\"note\"], method = \"hash\" }} ] }}\n\n",
            plugins.mask.display()
        );
        match self {
            Transforms::None => String::new(),
            Transforms::Mask => mask,
            Transforms::Chain => format!(
                "{mask}[[transform]]\nplugin = \"{}\"\nconfig = {{ where = [ {{ column = \"status\", not_in = [\"returned\"] }} ] }}\n\n\
                 [[transform]]\nplugin = \"{}\"\nconfig = {{ tables = {{ \"public.bench\" = \"sales.bench\" }}, columns = {{ \"amount\" = \"total\" }} }}\n\n",
                plugins.filter.display(),
                plugins.rename.display()
            ),
        }
    }
}

/// The built-in plugins the workloads use, built as components.
struct Plugins {
    mask: std::path::PathBuf,
    filter: std::path::PathBuf,
    rename: std::path::PathBuf,
}

fn main() {
    let rows: u64 = std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = std::env::var("WEIR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let pg = TempPostgres::start().expect("start PostgreSQL");
    println!("weir throughput benchmark: {rows} rows, 7 columns, best of {rounds} rounds each");
    println!("machine: {}", machine());
    let plugins = Plugins {
        mask: plugin("mask"),
        filter: plugin("filter"),
        rename: plugin("rename"),
    };
    // Label, rows, rows per transaction, transforms, evidence ledger, `tags text[]` (as a
    // list, `nested_types`, or as text), Delta Lake tables instead of Parquet files.
    let scenarios = [
        (
            "10k-row transactions",
            rows,
            10_000,
            Transforms::None,
            true,
            None,
            false,
        ),
        (
            "10k-row transactions, without the evidence ledger",
            rows,
            10_000,
            Transforms::None,
            false,
            None,
            false,
        ),
        (
            "10k-row transactions, mask plugin hashing a column",
            rows,
            10_000,
            Transforms::Mask,
            true,
            None,
            false,
        ),
        (
            "10k-row transactions, chain of mask, filter and rename",
            rows,
            10_000,
            Transforms::Chain,
            true,
            None,
            false,
        ),
        (
            "10k-row transactions, with a text[] column",
            rows,
            10_000,
            Transforms::None,
            true,
            Some(true),
            false,
        ),
        (
            "10k-row transactions, with a text[] column written as text",
            rows,
            10_000,
            Transforms::None,
            true,
            Some(false),
            false,
        ),
        (
            "one transaction of a quarter of the rows",
            rows / 4,
            rows / 4,
            Transforms::None,
            true,
            None,
            false,
        ),
        (
            "one transaction",
            rows,
            rows,
            Transforms::None,
            true,
            None,
            false,
        ),
        (
            "10k-row transactions, into Delta Lake",
            rows,
            10_000,
            Transforms::None,
            true,
            None,
            true,
        ),
    ];
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    for (i, (label, rows, per_tx, transform, ledger, array, delta)) in
        scenarios.into_iter().enumerate()
    {
        if !label.contains(&only) {
            continue;
        }
        let db = format!("bench_{i}");
        pg.psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        pg.psql(&db, TABLE).unwrap();
        if array.is_some() {
            // Evaluated for each inserted row: two elements, the first of 21 values.
            pg.psql(
                &db,
                "ALTER TABLE bench ADD COLUMN tags text[] \
                 DEFAULT ARRAY['tag' || (random() * 20)::int, 'x']",
            )
            .unwrap();
        }
        pg.psql(&db, "CREATE PUBLICATION weir_bench FOR TABLE bench")
            .unwrap();
        let src = format!("{db}_src");
        pg.psql(
            &db,
            &format!("SELECT pg_create_logical_replication_slot('{src}', 'pgoutput')"),
        )
        .unwrap();
        let load = Instant::now();
        let mut start = 1;
        while start <= rows {
            let end = (start + per_tx - 1).min(rows);
            pg.psql(&db, &insert_rows(start, end)).unwrap();
            start = end + 1;
        }
        let end_lsn = pg
            .psql(&db, "SELECT pg_current_wal_lsn()")
            .unwrap()
            .trim()
            .to_string();
        println!(
            "\n{label}: loaded in {:.1}s, WAL end {end_lsn}",
            load.elapsed().as_secs_f64()
        );

        let mut best_ref: Option<Run> = None;
        let mut best_weir: Option<Run> = None;
        for round in 0..rounds {
            let ref_slot = format!("{db}_ref_{round}");
            let weir_slot = format!("{db}_weir_{round}");
            for s in [&ref_slot, &weir_slot] {
                pg.psql(
                    &db,
                    &format!("SELECT pg_copy_logical_replication_slot('{src}', '{s}')"),
                )
                .unwrap();
            }
            let r = Run {
                seconds: recvlogical(&pg.url(&db), &ref_slot, &end_lsn),
                peak_rss_kib: 0,
                cpu_seconds: 0.0,
            };
            let sink = match (array, delta) {
                (_, true) => "delta",
                (Some(false), _) => "nested_types = false\n",
                _ => "",
            };
            let w = run_weir(
                &pg,
                &db,
                &weir_slot,
                rows,
                transform,
                &plugins,
                (ledger, sink),
            );
            println!(
                "  round {}: pg_recvlogical {:>9.0} rows/s   weir {:>9.0} rows/s   ratio {:.2}   weir peak RSS {} MiB   weir CPU {:.2} s per M events",
                round + 1,
                rows as f64 / r.seconds,
                rows as f64 / w.seconds,
                r.seconds / w.seconds,
                w.peak_rss_kib / 1024,
                w.cpu_seconds * 1e6 / rows as f64
            );
            if best_ref.as_ref().is_none_or(|b| r.seconds < b.seconds) {
                best_ref = Some(r);
            }
            if best_weir.as_ref().is_none_or(|b| w.seconds < b.seconds) {
                best_weir = Some(w);
            }
            for s in [&ref_slot, &weir_slot] {
                pg.psql(&db, &format!("SELECT pg_drop_replication_slot('{s}')"))
                    .unwrap();
            }
        }
        let (r, w) = (best_ref.unwrap(), best_weir.unwrap());
        println!(
            "  best:    pg_recvlogical {:>9.0} rows/s   weir {:>9.0} rows/s   ratio {:.2}   weir peak RSS {} MiB   weir CPU {:.2} s per M events",
            rows as f64 / r.seconds,
            rows as f64 / w.seconds,
            r.seconds / w.seconds,
            w.peak_rss_kib / 1024,
            w.cpu_seconds * 1e6 / rows as f64
        );
    }
}

fn run_weir(
    pg: &TempPostgres,
    db: &str,
    slot: &str,
    rows: u64,
    transforms: Transforms,
    plugins: &Plugins,
    (ledger, sink): (bool, &str),
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    let transform = transforms.config(plugins);
    let state = match ledger {
        true => "",
        false => "[state]\nledger = false\n\n",
    };
    let out = dir.path().join("out").display().to_string();
    let sink = match sink {
        "delta" => format!("[[sink]]\ntype = \"delta\"\nurl = \"file://{out}\"\n"),
        other => format!(
            "[[sink]]\ntype = \"parquet\"\nurl = \"file://{out}\"\ncompression = \"zstd\"\n{other}"
        ),
    };
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"weir_bench\"\ntables = [\"public.bench\"]\n\n\
             {state}{transform}{sink}",
            pg.url(db),
        ),
    )
    .unwrap();
    let trace = std::env::var_os("WEIR_BENCH_TRACE_RSS").is_some();
    let bin = env!("CARGO_BIN_EXE_weir-e2e");
    let m = measure(&mut weir_until_caught_up(bin, &config), trace);
    assert!(m.status.success(), "weir failed");
    let written = parquet_rows(&dir.path().join("out"));
    assert_eq!(written, transforms.rows_out(rows), "weir wrote every row");
    Run {
        seconds: m.seconds,
        peak_rss_kib: m.peak_rss_kib,
        cpu_seconds: m.cpu_seconds,
    }
}

/// Built-in plugin `name` built as a component, in a plugin directory with its manifest.
fn plugin(name: &str) -> std::path::PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let wasm = weir_tests::build_component(&format!("weir-plugin-{name}"), &tmp.join("wasm"));
    let dir = tmp.join(format!("bench-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = weir_tests::workspace().join(format!("plugins/{name}/weir-plugin.toml"));
    std::fs::copy(manifest, dir.join("weir-plugin.toml")).unwrap();
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).unwrap();
    dir
}
