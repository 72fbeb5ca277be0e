//! Faults while streaming: the replication connection cut, and the PostgreSQL server
//! restarted. weir reconnects by itself and resumes from its checkpoint; the rebuilt state
//! equals the source and no change is doubled.

use crate::harness::{TestDb, assert_same_state, read_changelog};
use crate::recovery::{Writer, unsafe_kill, wait_with_timeout};
use std::process::Stdio;
use std::time::Duration;
use weir::pgtemp::TempPostgres;

#[test]
fn the_replication_connection_cut_three_times_is_resumed_without_loss() {
    let db = TestDb::new("fault_cut");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config_with(&["public.t"], "", "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[retry]\ninitial_backoff = \"200ms\"\n"),
    )
    .unwrap();
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let (mut weir, log_path) = db.spawn_logged(&config);
    let mut cuts = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let killed = db.sql(&format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{}' AND active",
            db.name
        ));
        cuts += killed.trim().parse::<u32>().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let [inserts, updates, deletes] = writer.finish();
    stop_after_reconnecting(&mut weir, &log_path);
    assert!(cuts >= 2, "the connection was cut: {cuts}");

    assert_every_change_once(&db, &config, [inserts, updates, deletes]);
}

#[test]
fn a_server_restart_mid_stream_is_resumed_without_loss() {
    // A server of its own: the others' tests keep theirs.
    let pg = TempPostgres::start().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\ntables = [\"public.t\"]\n\n[batch]\nmax_delay = \"100ms\"\n\n\
             [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\nflush_interval = \"200ms\"\n\n\
             [retry]\ninitial_backoff = \"300ms\"\n",
            pg.url("app"),
            out.display()
        ),
    )
    .unwrap();
    let weir_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(crate::harness::weir_bin());
        c.args(args).env("WEIR_LOG", "info").stdin(Stdio::null());
        c
    };
    let caught_up = weir_cmd(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(
        caught_up.status.success(),
        "{}",
        crate::harness::stderr(&caught_up)
    );
    let log_path = dir.path().join("weir.log");
    let mut weir = weir_cmd(&["run", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    let before = Writer::start(pg.url("app"));
    std::thread::sleep(Duration::from_secs(2));
    let [i1, u1, d1] = before.finish();
    pg.restart(Duration::from_secs(2)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    pg.psql("app", "SELECT 1").unwrap();
    let after = Writer::start_at(pg.url("app"), 1_000_000);
    std::thread::sleep(Duration::from_secs(3));
    let [i2, u2, d2] = after.finish();
    std::thread::sleep(Duration::from_secs(2));
    stop_after_reconnecting(&mut weir, &log_path);

    let caught_up = weir_cmd(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(
        caught_up.status.success(),
        "{}",
        crate::harness::stderr(&caught_up)
    );
    let changes = read_changelog(&out.join("public").join("t"), "id");
    assert_eq!(changes.duplicates, 0);
    assert_eq!(
        (changes.op("c"), changes.op("u"), changes.op("d")),
        (i1 + i2, u1 + u2, d1 + d2),
        "every change once, across the restart"
    );
    let json = pg
        .psql(
            "app",
            "SELECT coalesce(json_agg(t ORDER BY id), '[]') FROM t",
        )
        .unwrap();
    let source: Vec<serde_json::Value> = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(changes.rows, source, "the rebuilt state equals the source");
}

/// SIGTERM, and a clean exit within 30 s.
fn stop_cleanly(weir: &mut std::process::Child) {
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(weir, Duration::from_secs(30)).success());
}

/// weir is still running after the fault, having reconnected by itself; then a clean
/// stop.
fn stop_after_reconnecting(weir: &mut std::process::Child, log_path: &std::path::Path) {
    let log = || std::fs::read_to_string(log_path).unwrap();
    assert!(
        weir.try_wait().unwrap().is_none(),
        "weir is still running: {}",
        log()
    );
    stop_cleanly(weir);
    assert!(
        log().contains("reconnecting and resuming from the checkpoint"),
        "{}",
        log()
    );
}

/// After catching up, table `t` rebuilt from the output equals the source, with each of
/// the writer's inserts, updates and deletes once.
fn assert_every_change_once(db: &TestDb, config: &std::path::Path, [c, u, d]: [u64; 3]) {
    db.catch_up(config);
    let t = assert_same_state(db, "public.t", "id");
    assert_eq!(
        (t.op("c"), t.op("u"), t.op("d")),
        (c, u, d),
        "every change once"
    );
}

/// Makes a directory tree unwritable, even for root (`chattr +i`), until dropped.
pub(crate) struct Unwritable(std::path::PathBuf);

impl Unwritable {
    pub(crate) fn set(dir: &std::path::Path) -> Unwritable {
        chattr(dir, "+i");
        Unwritable(dir.to_path_buf())
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        chattr(&self.0, "-i");
    }
}

pub(crate) fn chattr(dir: &std::path::Path, flag: &str) {
    let out = std::process::Command::new("chattr")
        .args(["-R", flag])
        .arg(dir)
        .output()
        .expect("chattr (e2fsprogs) is installed");
    assert!(
        out.status.success(),
        "chattr -R {flag} {}: {}",
        dir.display(),
        crate::harness::stderr(&out)
    );
}

#[test]
fn output_made_unwritable_then_writable_again_loses_and_doubles_nothing() {
    let db = TestDb::new("fault_unwritable");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config_with(&["public.t"], "", "", "");
    let base = std::fs::read_to_string(&config).unwrap();
    let port = crate::operations::free_port();
    let with_retry = |attempts: u32| {
        std::fs::write(
            &config,
            format!(
                "{base}\n[retry]\nattempts = {attempts}\ninitial_backoff = \"200ms\"\nmax_backoff = \"1s\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:{port}\"\n"
            ),
        )
        .unwrap();
    };
    with_retry(0);
    db.catch_up(&config);
    let out = db.out();
    let writer = Writer::start(db.url());
    let (mut weir, log_path) = db.spawn_logged(&config);

    // Retried without limit: weir waits for the output to come back, holding the
    // checkpoint where the output last was durable.
    crate::operations::wait_ready(port);
    std::thread::sleep(Duration::from_millis(1000));
    let locked = Unwritable::set(&out);
    std::thread::sleep(Duration::from_millis(1500));
    let held = db.confirmed_flush();
    let (code, why) = crate::operations::get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready while the output fails: {why}");
    assert!(why.contains("Operation not permitted"), "{why}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        db.confirmed_flush(),
        held,
        "the checkpoint does not move while nothing can be made durable"
    );
    assert!(
        weir.try_wait().unwrap().is_none(),
        "weir waits for the output"
    );
    drop(locked);
    crate::operations::wait_ready(port);
    std::thread::sleep(Duration::from_secs(2));
    let [inserts, updates, deletes] = writer.finish();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        db.confirmed_flush() > held,
        "the checkpoint moves again once the output is writable"
    );
    stop_cleanly(&mut weir);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("Transient failure") && log.contains("Operation not permitted"),
        "the failure is logged with its cause:\n{log}"
    );
    assert_every_change_once(&db, &config, [inserts, updates, deletes]);

    // With a limit: weir gives up after that many attempts in a row, exits non-zero, and
    // the checkpoint stays at what is durable; the next run delivers the rest once.
    with_retry(2);
    let (mut weir, _) = db.spawn_logged(&config);
    crate::operations::wait_ready(port);
    let locked = Unwritable::set(&out);
    db.sql(
        "INSERT INTO t SELECT g, g, 'while unwritable' FROM generate_series(5000000, 5000999) g",
    );
    let inserted = db.current_wal_lsn();
    let status = wait_with_timeout(&mut weir, Duration::from_secs(30));
    assert!(!status.success(), "weir gives up: {status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("Giving up after failed attempts in a row"),
        "{log}"
    );
    // (The slot may follow idle WAL up to the insert, never past it.)
    assert!(
        db.confirmed_flush().unwrap() < inserted,
        "nothing acknowledged past the durable output"
    );
    drop(locked);
    db.catch_up(&config);
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(
        t.op("c"),
        inserts + 1000,
        "the rows written while unwritable, once"
    );
}

/// Peak resident memory of a process, from `/proc` (KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_slow_sink_slows_the_stream_instead_of_growing_memory() {
    let db = TestDb::new("fault_slow_sink");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL)");
    // A role whose WAL sender gives up after one second without a reply: the stream must
    // stay alive while the sink holds everything up.
    let role = format!("impatient_{}", db.name);
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER; ALTER ROLE {role} SET wal_sender_timeout = '1s'"
    ));
    let port = crate::operations::free_port();
    let (max_events, max_bytes) = (500u64, 1u64 << 20);
    let config = db.config_with(
        &["public.t"],
        "",
        &format!("max_events = {max_events}\nmax_bytes = \"1MiB\""),
        "",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    std::fs::write(
        &config,
        format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    // 100 ms per write, 500 rows at most per batch: at most 5,000 rows a second.
    let recorder = crate::sinks::with_recorder(&db, &config, "fail", "{ delay_ms = 100 }");
    db.catch_up(&config);
    let (mut weir, log_path) = db.spawn_logged(&config);
    crate::operations::wait_ready(port);
    let baseline = peak_rss_kib(weir.id());

    // 240 MB of row data, committed far faster than the sink takes it.
    let rows = 60_000u64;
    for i in 0..6 {
        db.sql(&format!(
            "INSERT INTO t SELECT g, repeat(md5(g::text), 128) FROM generate_series({}, {}) g",
            i * 10_000 + 1,
            i * 10_000 + 10_000
        ));
    }
    let (mut ahead, mut behind) = (0u64, 0u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let metrics = crate::operations::scrape(port);
        let total = |prefix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (decoded, written) = (
            total("weir_events_decoded_total{"),
            total("weir_events_written_total{"),
        );
        ahead = ahead.max((decoded - written) as u64);
        behind = behind.max(rows.saturating_sub(decoded as u64));
        if written as u64 >= rows {
            assert_eq!(
                total("weir_reconnects_total{"),
                0.0,
                "the stream never broke"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow sink finishes: {written} of {rows}\n{}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let peak = peak_rss_kib(weir.id());
    stop_cleanly(&mut weir);

    // Backpressure: what weir had decoded but not yet written never exceeded the batch
    // being built, the two queued and the one being written (inside a transaction, a
    // batch runs to twice its bounds: here twice max_bytes of 4 KiB rows)...
    let per_batch = (2 * max_events).min(2 * max_bytes / 4096 + 1);
    assert!(
        ahead <= 4 * per_batch,
        "decoded ahead of the sinks: {ahead} events"
    );
    // ...while the rest of the backlog stayed on the server, not yet read.
    assert!(
        behind > rows / 4,
        "the server kept the backlog: at most {behind} rows committed and not yet read"
    );
    // Memory follows the configuration, not the backlog: four batches of up to twice
    // max_bytes, the replication buffer (4,096 messages of 4 KiB), one Parquet row group
    // (at most row_group_size), the plugin's instance and the allocator's slack come to
    // about 75 MiB here with the default Parquet settings (measured with 120 MB and
    // 240 MB backlogs alike), against 240 MB of rows waiting.
    let grew = peak.saturating_sub(baseline) * 1024;
    eprintln!(
        "slow sink: baseline {} MiB, peak {} MiB, ahead {ahead} events, behind {behind} events",
        baseline / 1024,
        peak / 1024,
    );
    assert!(
        grew < 96 << 20,
        "memory grew by {} MiB with a slow sink",
        grew >> 20
    );
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(t.op("c"), rows);
    let lines = crate::sinks::recorded(&recorder);
    assert_eq!(lines.len() as u64, rows, "the slow sink got every row");
    crate::sinks::assert_unique(&lines);
}

#[test]
fn an_invalidated_slot_stops_the_run_and_says_what_to_do() {
    // A server of its own: it invalidates any slot more than 1 MB of WAL behind.
    let pg = TempPostgres::start_with("max_slot_wal_keep_size = 1MB").unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\ntables = [\"public.t\"]\n\n\
             [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\n",
            pg.url("app"),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let weir = |args: &[&str]| {
        std::process::Command::new(crate::harness::weir_bin())
            .args(args)
            .arg(&config)
            .env("WEIR_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    pg.psql("app", "INSERT INTO t VALUES (1, 'captured')")
        .unwrap();
    let first = weir(&["run", "--until-caught-up"]);
    assert!(first.status.success(), "{}", crate::harness::stderr(&first));

    // While weir is stopped, the server moves several WAL segments on and checkpoints.
    for i in 0..4 {
        pg.psql(
            "app",
            &format!(
                "INSERT INTO t VALUES ({}, 'lost'); SELECT pg_switch_wal()",
                i + 2
            ),
        )
        .unwrap();
    }
    pg.psql("app", "CHECKPOINT").unwrap();
    let wal_status = pg
        .psql("app", "SELECT wal_status FROM pg_replication_slots")
        .unwrap();
    assert_eq!(wal_status.trim(), "lost", "the server invalidated the slot");

    let refused = weir(&["run", "--until-caught-up"]);
    assert!(!refused.status.success());
    let err = crate::harness::stderr(&refused);
    assert!(
        err.contains("has been invalidated") && err.contains("weir slot drop"),
        "{err}"
    );
    let status = weir(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("wal_status lost"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let dropped = weir(&["slot", "drop"]);
    assert!(
        dropped.status.success(),
        "{}",
        crate::harness::stderr(&dropped)
    );
    // The slot is gone and the output holds a checkpoint: the run says how to go on.
    let refused = weir(&["run", "--until-caught-up"]);
    assert!(!refused.status.success());
    assert!(
        crate::harness::stderr(&refused).contains("--new-slot"),
        "{}",
        crate::harness::stderr(&refused)
    );
}
