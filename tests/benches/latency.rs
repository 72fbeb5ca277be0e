//! Latency benchmark: how long after its commit a change is durable in the output and
//! confirmed to PostgreSQL, at a steady write rate.
//!
//! `cargo bench -p weir-tests --bench latency` (env `WEIR_LATENCY_SECONDS`, default 40).
//!
//! A throwaway PostgreSQL; one writer commits a one-row transaction every 20 ms and
//! notes the time of each commit and the WAL position after it; a watcher reads the
//! slot's `confirmed_flush_lsn` every 10 ms. A change's latency is the first moment the
//! confirmed position passes its WAL position, minus its commit time: the change is then
//! in a complete, checkpointed Parquet file and PostgreSQL knows it. Measured at default
//! settings (`flush_interval = "10s"`, `max_delay = "500ms"`) and with a 1 s flush.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::pgtemp::TempPostgres;

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn main() {
    let seconds: u64 = std::env::var("WEIR_LATENCY_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let pg = TempPostgres::start().expect("start PostgreSQL");
    pg.psql("postgres", "CREATE DATABASE lat").unwrap();
    pg.psql(
        "lat",
        "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)",
    )
    .unwrap();
    println!("weir latency benchmark: one-row transactions every 20 ms for {seconds} s");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut next_id = 0i64;
    for (i, (label, sink_extra)) in [
        ("default settings (flush_interval 10s)", ""),
        ("flush_interval = \"1s\"", "flush_interval = \"1s\"\n"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let slot = format!("lat_{i}");
        let config = dir.path().join("pipeline.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\ntables = [\"public.t\"]\nsnapshot = \"never\"\n\n\
                 [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\n{sink_extra}",
                pg.url("lat"),
                dir.path().join("out").display()
            ),
        )
        .unwrap();
        let weir = env!("CARGO_BIN_EXE_weir-e2e");
        let ok = Command::new(weir)
            .args(["run", config.to_str().unwrap(), "--until-caught-up"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let mut child = Command::new(weir)
            .args(["run", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));

        let confirmed: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let url = pg.url("lat");
        let watcher = {
            let (confirmed, stop, url, slot) =
                (confirmed.clone(), stop.clone(), url.clone(), slot.clone());
            rt.spawn(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) {
                    let row = client
                        .query_one(
                            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                            &[&slot],
                        )
                        .await
                        .unwrap();
                    let at = Instant::now();
                    confirmed.lock().unwrap().push((at, lsn(&row.get::<_, String>(0))));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let first = next_id;
        let commits = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
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
                commits.push((at, lsn(&row.get::<_, String>(0))));
                id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            commits
        });
        next_id += commits.len() as i64;
        // Until the last commit is confirmed (or a minute).
        let last = commits.last().unwrap().1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while confirmed.lock().unwrap().last().is_none_or(|c| c.1 < last)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        rt.block_on(watcher).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();

        let samples = confirmed.lock().unwrap().clone();
        let mut latencies: Vec<f64> = commits
            .iter()
            .filter_map(|(at, pos)| {
                samples
                    .iter()
                    .find(|(t, c)| t >= at && c >= pos)
                    .map(|(t, _)| (*t - *at).as_secs_f64() * 1000.0)
            })
            .collect();
        let missing = commits.len() - latencies.len();
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "{label}: {} commits, commit-to-durable p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{}",
            commits.len(),
            pct(0.5),
            pct(0.99),
            latencies.last().unwrap(),
            if missing > 0 {
                format!(" ({missing} never confirmed)")
            } else {
                String::new()
            }
        );
    }
}
