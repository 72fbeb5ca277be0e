//! PostgreSQL projection benchmark: weir mirroring a table into a second PostgreSQL,
//! against `pg_recvlogical` draining a copy of the same slot, in one run.
//!
//! `cargo bench -p weir-tests --bench projection` (env `WEIR_BENCH_ROWS`, default 1M;
//! `WEIR_BENCH_ROUNDS`, default 2; `WEIR_BENCH_ONLY` to pick a workload).
//!
//! Two throwaway servers on this machine: the source (the 7-column table of the
//! throughput benchmark, a publication and a slot) and the target. Workloads: inserts in
//! 10k-row transactions; and mixed, the same inserts then updates of 10% of the rows and
//! deletes of 5%, in 10k-row transactions. Each round drains a copy of the slot with
//! `pg_recvlogical` (pgoutput: the WAL sender's own rate, the ceiling for one slot) and
//! another with `weir run --until-caught-up` and only a `postgres` sink (mirror) into a
//! fresh target database, then checks the target equals the source. Rates are changes per
//! second of wall time; weir's peak RSS is read from /proc. "best" is the round with the
//! best ratio.

use std::time::Instant;
use weir::pgtemp::TempPostgres;
use weir_tests::bench::{
    TABLE, insert_rows, machine, recvlogical, run_measured, weir_until_caught_up,
};

fn main() {
    let rows: u64 = env_or("WEIR_BENCH_ROWS", 1_000_000);
    let rounds = env_or("WEIR_BENCH_ROUNDS", 2) as usize;
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    let source = TempPostgres::start().expect("start the source PostgreSQL");
    let target = TempPostgres::start().expect("start the target PostgreSQL");
    println!("weir projection benchmark: {rows} rows, 7 columns, best of {rounds} rounds each");
    println!("machine: {}", machine());
    for (i, (label, mixed)) in [
        ("inserts", false),
        ("mixed: inserts, updates of 10%, deletes of 5%", true),
    ]
    .into_iter()
    .enumerate()
    {
        if !label.contains(&only) {
            continue;
        }
        let db = format!("proj_{i}");
        source
            .psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        source.psql(&db, TABLE).unwrap();
        source
            .psql(&db, "CREATE PUBLICATION weir_bench FOR TABLE bench")
            .unwrap();
        let src = format!("{db}_src");
        source
            .psql(
                &db,
                &format!("SELECT pg_create_logical_replication_slot('{src}', 'pgoutput')"),
            )
            .unwrap();
        let load = Instant::now();
        let changes = write_workload(&source, &db, rows, mixed);
        let end_lsn = source
            .psql(&db, "SELECT pg_current_wal_lsn()")
            .unwrap()
            .trim()
            .to_string();
        println!(
            "\n{label}: {changes} changes loaded in {:.1}s, WAL end {end_lsn}",
            load.elapsed().as_secs_f64()
        );
        let mut best: Option<(f64, f64, u64)> = None;
        for round in 0..rounds {
            let (ref_slot, weir_slot) = (format!("{db}_ref_{round}"), format!("{db}_weir_{round}"));
            for s in [&ref_slot, &weir_slot] {
                source
                    .psql(
                        &db,
                        &format!("SELECT pg_copy_logical_replication_slot('{src}', '{s}')"),
                    )
                    .unwrap();
            }
            let reference = recvlogical(&source.url(&db), &ref_slot, &end_lsn);
            let into = format!("{db}_target_{round}");
            target
                .psql("postgres", &format!("CREATE DATABASE {into}"))
                .unwrap();
            let (seconds, rss) = weir(&source, &db, &weir_slot, &target.url(&into));
            let check =
                "SELECT count(*) || ' ' || sum(amount) || ' ' || sum(customer_id) FROM bench";
            let want = source.psql(&db, check).unwrap();
            let got = target
                .psql(&into, &check.replace("bench", "public.bench"))
                .unwrap();
            assert_eq!(got, want, "the target equals the source");
            println!(
                "  round {}: pg_recvlogical {:>9.0} changes/s   weir {:>9.0} changes/s   ratio {:.2}   weir peak RSS {} MiB",
                round + 1,
                changes as f64 / reference,
                changes as f64 / seconds,
                reference / seconds,
                rss / 1024
            );
            if best.is_none_or(|b| reference / seconds > b.0 / b.1) {
                best = Some((reference, seconds, rss));
            }
            for s in [&ref_slot, &weir_slot] {
                source
                    .psql(&db, &format!("SELECT pg_drop_replication_slot('{s}')"))
                    .unwrap();
            }
            target
                .psql("postgres", &format!("DROP DATABASE {into}"))
                .unwrap();
        }
        let (reference, seconds, rss) = best.unwrap();
        println!(
            "  best:    pg_recvlogical {:>9.0} changes/s   weir {:>9.0} changes/s   ratio {:.2}   weir peak RSS {} MiB",
            changes as f64 / reference,
            changes as f64 / seconds,
            reference / seconds,
            rss / 1024
        );
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes the workload; returns the number of row changes.
fn write_workload(pg: &TempPostgres, db: &str, rows: u64, mixed: bool) -> u64 {
    let per_tx = 10_000;
    let in_transactions = |sql: &dyn Fn(u64, u64) -> String, upto: u64| {
        let mut start = 1;
        while start <= upto {
            let end = (start + per_tx - 1).min(upto);
            pg.psql(db, &sql(start, end)).unwrap();
            start = end + 1;
        }
    };
    in_transactions(&insert_rows, rows);
    if !mixed {
        return rows;
    }
    // Every 10th row updated, every 20th (offset by 5) deleted: spread over the table.
    in_transactions(
        &|a, b| {
            format!(
                "UPDATE bench SET amount = amount + 1, status = 'paid' WHERE id BETWEEN {a} AND {b} AND id % 10 = 0"
            )
        },
        rows,
    );
    in_transactions(
        &|a, b| format!("DELETE FROM bench WHERE id BETWEEN {a} AND {b} AND id % 20 = 5"),
        rows,
    );
    rows + rows / 10 + rows / 20
}

/// Seconds and peak RSS (KiB) of `weir run --until-caught-up` projecting `slot` into
/// the target database at `target_url`.
fn weir(pg: &TempPostgres, db: &str, slot: &str, target_url: &str) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"weir_bench\"\ntables = [\"public.bench\"]\nsnapshot = \"never\"\n\n\
             [[sink]]\ntype = \"postgres\"\nurl = \"{target_url}\"\n",
            pg.url(db)
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_weir-e2e");
    let (status, seconds, peak) = run_measured(&mut weir_until_caught_up(bin, &config), false);
    assert!(status.success(), "weir failed");
    (seconds, peak)
}
