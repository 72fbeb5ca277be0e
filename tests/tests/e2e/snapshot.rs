//! The initial snapshot: existing rows first, then the stream from the slot's consistent
//! point, exactly, under concurrent writes and across a crash mid-snapshot.

use crate::harness::{TestDb, assert_same_state, stderr};
use crate::recovery::Writer;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Updates and deletes rows of the snapshot (negative ids) until stopped.
struct Churn {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u32>,
}

impl Churn {
    fn start(db: &TestDb, rows: i32) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let url = db.url();
        let handle = std::thread::spawn(move || {
            let mut rounds = 0;
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                i = (i + 7919) % rows;
                let lo = -(i + 1);
                let sql = format!(
                    "UPDATE t SET v = v + 1 WHERE id BETWEEN {lo} AND {lo} + 50; DELETE FROM t WHERE id = {};",
                    lo + 60
                );
                let out = std::process::Command::new("psql")
                    .args([&url, "-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                rounds += 1;
            }
            rounds
        });
        Churn { stop, handle }
    }

    fn finish(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn snapshot_progress(db: &TestDb) -> String {
    let path = db.out().join("_weir").join(&db.name).join("snapshot.json");
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_snapshot_hands_over_to_the_stream_exactly_under_concurrent_writes() {
    let db = TestDb::new("snap_concurrent");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, md5(g::text) FROM generate_series(1, 40000) g");
    let config = db.config_with(&["public.t"], "", "max_events = 500", "");
    let writer = Writer::start(db.url());
    let churn = Churn::start(&db, 40000);
    std::thread::sleep(Duration::from_millis(300));
    let out = db.catch_up(&config);
    let err = stderr(&out);
    assert!(err.contains("Initial snapshot done"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let rounds = churn.finish();
    let [inserts, _, _] = writer.finish();
    assert!(
        rounds > 2 && inserts > 20,
        "writes ran during the snapshot ({rounds} rounds, {inserts} inserts)"
    );
    db.catch_up(&config);
    let t = assert_same_state(&db, "public.t", "id");
    assert!(
        t.op("r") > 30_000,
        "the existing rows came as op = r ({})",
        t.op("r")
    );
    assert!(snapshot_progress(&db).contains("\"done\""));

    // A later run does not take it again.
    let out = db.catch_up(&config);
    assert!(!stderr(&out).contains("Snapshot of the table started"));
    assert_same_state(&db, "public.t", "id");
}

#[test]
fn a_snapshot_killed_midway_is_taken_again_and_nothing_doubles() {
    let db = TestDb::new("snap_kill");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT g, 0, md5(g::text) FROM generate_series(1, 300000) g");
    let config = db.config_with(
        &["public.t"],
        "",
        "max_events = 1000",
        "target_file_size = \"256KiB\"\nrow_group_rows = 2000",
    );
    let mut weir = db.spawn(&config);
    let mut lines = BufReader::new(weir.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("Snapshot of the table started") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    weir.kill().unwrap();
    weir.wait().unwrap();
    assert!(
        snapshot_progress(&db).contains("\"started\""),
        "killed during the snapshot: {}",
        snapshot_progress(&db)
    );
    db.sql("UPDATE t SET v = 1 WHERE id <= 10");
    let out = db.catch_up(&config);
    assert!(stderr(&out).contains("did not finish"), "{}", stderr(&out));
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(t.op("r"), 300_000, "every row once");
    assert_eq!(t.op("u"), 0, "the update predates the new snapshot");
}

#[test]
fn with_snapshot_never_only_changes_after_the_slot_are_captured() {
    let db = TestDb::new("snap_never");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 10) g");
    let config = db.config_with(&["public.t"], "snapshot = \"never\"", "", "");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 'new' FROM generate_series(11, 15) g");
    db.catch_up(&config);
    let t = db.changelog("public.t", "id");
    assert_eq!((t.op("r"), t.op("c")), (0, 5));
}
