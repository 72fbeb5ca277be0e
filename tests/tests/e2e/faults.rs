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
    let log_path = db.dir.path().join("weir.log");
    let mut weir = db
        .weir(&["run", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
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
    assert!(
        weir.try_wait().unwrap().is_none(),
        "weir is still running after the cuts: {}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(cuts >= 2, "the connection was cut: {cuts}");
    assert!(
        log.contains("reconnecting and resuming from the checkpoint"),
        "{log}"
    );

    db.catch_up(&config);
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(
        (t.op("c"), t.op("u"), t.op("d")),
        (inserts, updates, deletes),
        "every change once"
    );
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
    assert!(
        weir.try_wait().unwrap().is_none(),
        "weir is still running after the restart: {}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("reconnecting and resuming from the checkpoint"),
        "{log}"
    );

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
