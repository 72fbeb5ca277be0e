//! Verify benchmark: `weir verify` of a large table against a plain `SELECT count(*)` and
//! a checksum query of the same table, in one run.
//!
//! `cargo bench -p weir-tests --bench verify` (env `WEIR_BENCH_ROWS`, default 5M).
//!
//! A throwaway PostgreSQL gets the benchmarks' 7-column table with `WEIR_BENCH_ROWS`
//! rows; `weir run --until-caught-up` writes it to zstd Parquet (the initial snapshot)
//! and then a tenth of the rows updated and a twentieth deleted (streamed). Then, on the
//! same table: `SELECT count(*)`; a checksum of every row (`bit_xor` of
//! `hashtextextended` of the row's text, a query a DBA would write); and `weir verify`
//! (the source read in a snapshot, the changelog read and folded by key, both compared
//! in hash buckets). Times are wall seconds; weir's peak RSS is read from /proc.

use std::time::Instant;
use weir::pgtemp::TempPostgres;
use weir_tests::bench::{TABLE, insert_rows, machine, run_measured, weir_until_caught_up};

fn main() {
    let rows: u64 = std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let pg = TempPostgres::start().expect("start PostgreSQL");
    println!("weir verify benchmark: {rows} rows, 7 columns");
    println!("machine: {}", machine());
    let db = "bench_verify";
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    pg.psql(db, TABLE).unwrap();
    let load = Instant::now();
    let mut start = 1;
    while start <= rows {
        let end = (start + 499_999).min(rows);
        pg.psql(db, &insert_rows(start, end)).unwrap();
        start = end + 1;
    }
    pg.psql(db, "ANALYZE bench").unwrap();
    println!("loaded in {:.1}s", load.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"weir_verify_bench\"\npublication = \"weir_bench\"\ntables = [\"public.bench\"]\n\n\
             [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\ncompression = \"zstd\"\n",
            pg.url(db),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_weir-e2e");
    let (status, seconds, _) = run_measured(&mut weir_until_caught_up(bin, &config), false);
    assert!(status.success(), "the initial snapshot failed");
    println!("initial snapshot into Parquet: {seconds:.1}s");
    pg.psql(db, "UPDATE bench SET amount = amount + 1 WHERE id % 10 = 0")
        .unwrap();
    pg.psql(db, "DELETE FROM bench WHERE id % 20 = 1").unwrap();
    let (status, seconds, _) = run_measured(&mut weir_until_caught_up(bin, &config), false);
    assert!(status.success(), "streaming the changes failed");
    println!("updates and deletes streamed: {seconds:.1}s");

    let timed = |sql: &str| {
        let started = Instant::now();
        let out = pg.psql(db, sql).unwrap();
        (started.elapsed().as_secs_f64(), out.trim().to_string())
    };
    let (count_s, count) = timed("SELECT count(*) FROM bench");
    let (sum_s, _) = timed("SELECT bit_xor(hashtextextended(b::text, 0)) FROM bench b");
    let mut verify = std::process::Command::new(bin);
    verify
        .args(["verify", config.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::piped());
    let (status, verify_s, peak) = run_measured(&mut verify, false);
    assert!(status.success(), "weir verify found differences or failed");
    println!("\nrows in the table now: {count}");
    println!("  SELECT count(*)                 {count_s:>7.2}s");
    println!("  checksum query (bit_xor of row hashes) {sum_s:>7.2}s");
    println!(
        "  weir verify                     {verify_s:>7.2}s   ({:.1}x the checksum query)   peak RSS {} MiB",
        verify_s / sum_s,
        peak / 1024
    );
}
