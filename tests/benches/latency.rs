//! Latency benchmark: how long after its commit a change is visible to a reader of each
//! kind of sink, at a steady write rate.
//!
//! `cargo bench -p weir-tests --bench latency` (env `WEIR_LATENCY_SECONDS`, default 40;
//! `WEIR_BENCH_ONLY` to pick scenarios by label).
//!
//! A throwaway PostgreSQL; one writer commits a one-row transaction (increasing ids)
//! every 20 ms and notes the time of each commit and the WAL position after it. A
//! watcher per sink kind notes when each change became visible:
//! - Parquet: the slot's `confirmed_flush_lsn`, read every 10 ms, passes the commit's
//!   WAL position (the change is in a complete, checkpointed file);
//! - PostgreSQL projection: `max(id)` of the target table (another database on the same
//!   server), polled every 10 ms, reaches the row's id;
//! - stdout: a reader of weir's standard output reads the change's line.
//!
//! A change's latency is that moment minus its commit time.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::pgtemp::TempPostgres;

/// What a sink makes visible, as (moment, position): a WAL position or a row id.
type Seen = Arc<Mutex<Vec<(Instant, u64)>>>;

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[derive(Clone, Copy)]
enum Kind {
    Parquet,
    Postgres,
    Stdout,
}

fn main() {
    let seconds: u64 = std::env::var("WEIR_LATENCY_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    let pg = TempPostgres::start().expect("start PostgreSQL");
    pg.psql("postgres", "CREATE DATABASE lat").unwrap();
    pg.psql(
        "lat",
        "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)",
    )
    .unwrap();
    println!("weir latency benchmark: one-row transactions every 20 ms for {seconds} s");
    println!("machine: {}", weir_tests::bench::machine());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut next_id = 0i64;
    let scenarios = [
        (
            "parquet, default settings (flush_interval 10s)",
            Kind::Parquet,
            "",
        ),
        (
            "parquet, flush_interval = \"1s\"",
            Kind::Parquet,
            "flush_interval = \"1s\"\n",
        ),
        ("postgres projection, default settings", Kind::Postgres, ""),
        ("stdout, default settings", Kind::Stdout, ""),
    ];
    for (i, (label, kind, sink_extra)) in scenarios.into_iter().enumerate() {
        if !label.contains(&only) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let slot = format!("lat_{i}");
        let config = dir.path().join("pipeline.toml");
        let sink = match kind {
            Kind::Parquet => format!(
                "type = \"parquet\"\nurl = \"file://{}\"\n{sink_extra}",
                dir.path().join("out").display()
            ),
            Kind::Postgres => {
                let db = format!("lat_target_{i}");
                pg.psql("postgres", &format!("CREATE DATABASE {db}"))
                    .unwrap();
                format!("type = \"postgres\"\nurl = \"{}\"\n", pg.url(&db))
            }
            Kind::Stdout => "type = \"stdout\"\n".into(),
        };
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\ntables = [\"public.t\"]\nsnapshot = \"never\"\n\n\
                 [[sink]]\n{sink}",
                pg.url("lat"),
            ),
        )
        .unwrap();
        let weir = env!("CARGO_BIN_EXE_weir-e2e");
        let ok = Command::new(weir)
            .args(["run", config.to_str().unwrap(), "--until-caught-up"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let mut child = Command::new(weir)
            .args(["run", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let stdout = child.stdout.take().unwrap();
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                // Drains the pipe in every scenario; notes ids only for stdout.
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    if let (Kind::Stdout, Ok(v)) =
                        (kind, serde_json::from_str::<serde_json::Value>(&line))
                        && let Some(id) = v["after"]["id"].as_u64()
                    {
                        seen.lock().unwrap().push((at, id));
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        let watcher = match kind {
            Kind::Stdout => None,
            Kind::Parquet | Kind::Postgres => {
                let (seen, stop) = (seen.clone(), stop.clone());
                let (url, query) = match kind {
                    Kind::Parquet => (
                        pg.url("lat"),
                        format!(
                            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
                        ),
                    ),
                    _ => (
                        pg.url(&format!("lat_target_{i}")),
                        "SELECT coalesce(max(id), -1)::text FROM public.t".to_string(),
                    ),
                };
                Some(rt.spawn(async move {
                    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        // The target table appears with the first change.
                        if let Ok(row) = client.query_one(query.as_str(), &[]).await {
                            let text: String = row.get(0);
                            let at = Instant::now();
                            let position = match kind {
                                Kind::Parquet => lsn(&text),
                                _ => text.parse::<i64>().unwrap_or(-1).max(0) as u64,
                            };
                            seen.lock().unwrap().push((at, position));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }))
            }
        };
        let commits = write_commits(&rt, &pg.url("lat"), next_id, seconds);
        next_id += commits.len() as i64;
        // Until the last commit is visible (or a minute).
        let key = |c: &(Instant, u64, u64)| match kind {
            Kind::Parquet => c.1,
            _ => c.2,
        };
        let last = key(commits.last().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().iter().all(|s| s.1 < last) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(w) = watcher {
            rt.block_on(w).unwrap();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        reader.join().unwrap();
        let samples = seen.lock().unwrap().clone();
        report(label, &commits, &samples, key);
    }
}

/// Commits one row every 20 ms for `seconds`; returns (moment, WAL position, id) of each.
fn write_commits(
    rt: &tokio::runtime::Runtime,
    url: &str,
    first: i64,
    seconds: u64,
) -> Vec<(Instant, u64, u64)> {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut commits = Vec::new();
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut id = first;
        while Instant::now() < end {
            client
                .execute("INSERT INTO t VALUES ($1, 'x')", &[&id])
                .await
                .unwrap();
            let at = Instant::now();
            let row = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .unwrap();
            commits.push((at, lsn(&row.get::<_, String>(0)), id as u64));
            id += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        commits
    })
}

/// Prints p50, p99 and max of commit-to-visible.
fn report(
    label: &str,
    commits: &[(Instant, u64, u64)],
    samples: &[(Instant, u64)],
    key: impl Fn(&(Instant, u64, u64)) -> u64,
) {
    let mut latencies: Vec<f64> = commits
        .iter()
        .filter_map(|c| {
            samples
                .iter()
                .find(|(t, p)| *t >= c.0 && *p >= key(c))
                .map(|(t, _)| (*t - c.0).as_secs_f64() * 1000.0)
        })
        .collect();
    let missing = commits.len() - latencies.len();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label}: {} commits, commit-to-visible p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{}",
        commits.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
        if missing > 0 {
            format!(" ({missing} never seen)")
        } else {
            String::new()
        }
    );
}
