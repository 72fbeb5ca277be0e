//! Iceberg output through the SQLite catalog, read back with PyIceberg (not through
//! weir): schema, identifier fields, partitioning, the rebuilt state, exactly once across
//! `kill -9`, schema evolution, `weir lake`, and tables on a real S3-compatible server.

use crate::harness::{Changelog, TestDb, assert_audit_passes, read_iceberg, stderr};
use crate::recovery::Writer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A pipeline with one Iceberg sink whose warehouse is `warehouse` (default: `out()`),
/// committing every 300ms.
fn iceberg_config(db: &TestDb, tables: &[&str], warehouse: Option<&str>, extra: &str) -> PathBuf {
    let tables: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
    let warehouse = warehouse
        .map(str::to_owned)
        .unwrap_or_else(|| format!("file://{}", db.out().display()));
    let text = format!(
        "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [{}]\n\n\
         [batch]\nmax_delay = \"100ms\"\nmax_events = 300\n\n\
         [[sink]]\ntype = \"iceberg\"\nwarehouse = \"{warehouse}\"\ncommit_interval = \"300ms\"\n{extra}\n",
        db.url(),
        db.name,
        db.name,
        tables.join(", "),
    );
    let path = db.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn catalog(db: &TestDb) -> PathBuf {
    db.out().join("catalog.db")
}

fn snapshot_ids(report: &Value) -> Vec<i64> {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect()
}

fn lake(db: &TestDb, config: &Path, args: &[&str]) -> String {
    let mut all = vec!["lake"];
    all.extend_from_slice(&args[..1]);
    all.push(config.to_str().unwrap());
    all.extend_from_slice(&args[1..]);
    let out = db.weir(&all).output().unwrap();
    assert!(out.status.success(), "weir {all:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn iceberg_changelog_reads_back_with_pyiceberg_and_rebuilds_the_source() {
    let db = TestDb::new("ice");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 500) g");
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, g, 'new' FROM generate_series(1, 300) g");
    db.sql("UPDATE t SET v = v + 1, note = 'changed' WHERE id BETWEEN -50 AND 50");
    db.sql("DELETE FROM t WHERE id % 7 = 0");
    db.catch_up(&config);

    let (log, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    let columns: Vec<(&str, &str, bool)> = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["type"].as_str().unwrap(),
                c["required"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        vec![
            ("id", "int", true),
            ("v", "int", false),
            ("note", "string", false),
            ("_cdc_op", "string", true),
            ("_cdc_commit_lsn", "long", true),
            ("_cdc_seq", "long", true),
            ("_cdc_xid", "long", true),
            ("_cdc_commit_ts", "timestamptz", true),
            ("_cdc_unchanged", "list<string>", false),
            ("_cdc_unfit", "string", false),
        ]
    );
    assert_eq!(report["identifier_fields"], serde_json::json!(["id"]));
    assert_eq!(
        report["partition"],
        serde_json::json!([{"source": "_cdc_commit_ts", "transform": "day"}])
    );
    assert_eq!(
        report["properties"]["write.parquet.compression-codec"],
        "zstd"
    );
    let deleted: u64 = db
        .sql("SELECT count(*) FROM generate_series(-500, 300) g WHERE g % 7 = 0 AND g <> 0")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        (log.op("r"), log.op("c"), log.op("u"), log.op("d")),
        (500, 300, 100, deleted),
        "the snapshot's rows, then each change once"
    );
    assert_eq!(log.duplicates, 0);
    assert_eq!(
        log.rows,
        db.rows("public.t", "id"),
        "the rebuilt state equals the source"
    );
    let last = report["snapshots"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let lsn = last["summary"]["weir.commit-lsn"].as_str().unwrap();
    assert!(
        lsn.contains('/'),
        "each commit records its position: {last}"
    );
}

#[test]
fn iceberg_is_exactly_once_across_kill_9() {
    let db = TestDb::new("ice_kill");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 1000) g");
    let config = iceberg_config(&db, &["public.t"], None, "target_file_size = \"64KiB\"");
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let run = || db.weir(&["run", config.to_str().unwrap()]);
    crate::recovery::kill_9_rounds(4, run, |r| 1200 + 350 * r, |_| {});
    let [inserts, updates, deletes] = writer.finish();
    assert!(inserts > 50, "the writer made changes: {inserts}");
    db.catch_up(&config);
    let (log, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(log.duplicates, 0, "{:?}", log.duplicate_examples);
    assert_eq!(
        (log.op("r"), log.op("c"), log.op("u"), log.op("d")),
        (1000, inserts, updates, deletes),
        "every change exactly once"
    );
    assert_eq!(
        log.rows,
        db.rows("public.t", "id"),
        "the rebuilt state equals the source"
    );
    assert!(
        snapshot_ids(&report).len() > 3,
        "commits were batched, not one per run"
    );
    // A ledger record for every table commit, none for a commit a kill undid.
    assert_audit_passes(&db, &config);
}

#[test]
fn a_column_added_mid_stream_evolves_the_table_and_old_snapshots_still_read() {
    let db = TestDb::new("ice_ddl");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, gone text, n int)");
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, g, 'x' FROM generate_series(1, 100) g");
    db.catch_up(&config);
    let (_, before) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    let old_snapshot = *snapshot_ids(&before).last().unwrap();

    db.sql("ALTER TABLE t ADD COLUMN extra text");
    db.sql("ALTER TABLE t DROP COLUMN gone");
    db.sql("ALTER TABLE t ALTER COLUMN n TYPE bigint");
    db.sql("INSERT INTO t (id, v, n) VALUES (1000, 0, 5000000000)");
    db.sql("INSERT INTO t (id, v, extra) SELECT g, g, 'added' FROM generate_series(101, 150) g");
    db.sql("UPDATE t SET extra = 'later' WHERE id <= 10");
    db.catch_up(&config);

    let (now, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    let names: Vec<&str> = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"extra"),
        "the new column is in the schema: {names:?}"
    );
    assert!(
        names.contains(&"gone"),
        "a dropped column stays readable: {names:?}"
    );
    let n_type = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "n")
        .unwrap()["type"]
        .clone();
    assert_eq!(n_type, "long", "int widened to bigint in place");
    let big = now.rows.iter().find(|r| r["id"] == 1000).unwrap();
    assert_eq!(big["n"], 5_000_000_000i64);
    assert_eq!((now.op("c"), now.op("u")), (151, 10));
    let extra: Vec<&Value> = now.rows.iter().map(|r| &r["extra"]).collect();
    assert_eq!(extra.iter().filter(|v| **v == "added").count(), 50);
    let without_gone: Vec<Value> = now
        .rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("gone");
            r
        })
        .collect();
    assert_eq!(
        without_gone,
        db.rows("public.t", "id"),
        "the rebuilt state equals the source"
    );
    assert_eq!(extra.iter().filter(|v| **v == "later").count(), 10);
    let gone_written = now.rows.iter().filter(|r| r["gone"] == "x").count();
    assert_eq!(
        gone_written, 90,
        "rows written before the drop keep their values"
    );

    let (old, old_report) = read_iceberg(&catalog(&db), "public.t", "id", Some(old_snapshot), &[]);
    assert_eq!(
        old.op("c"),
        100,
        "the old snapshot holds only the first rows"
    );
    let old_columns: Vec<&str> = old_report["scanned_columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        !old_columns.contains(&"extra") && old_columns.contains(&"gone"),
        "the old snapshot reads in its own schema: {old_columns:?}"
    );
}

/// Regression: every Iceberg error was retried as if the network had blipped, so a
/// value the table's column cannot hold was retried for ever. It is a schema error: the
/// run stops at once with its kind, and nothing from it on is acknowledged.
#[test]
fn a_value_the_iceberg_column_cannot_hold_stops_the_run_at_once() {
    let db = TestDb::new("ice_unfit");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, n int)");
    db.sql("INSERT INTO t VALUES (1, 1)");
    // Retrying for ever (attempts = 0): only a permanent error ends the run.
    let retry = "\n[retry]\nattempts = 0\ninitial_backoff = \"100ms\"\nmax_backoff = \"200ms\"";
    let config = iceberg_config(&db, &["public.t"], None, retry);
    db.catch_up(&config);
    let (mut weir, log) = db.spawn_logged(&config);
    db.sql("INSERT INTO t VALUES (2, 2)");
    let written = db.current_wal_lsn();
    let streaming = std::time::Instant::now();
    while db.confirmed_flush() < Some(written) {
        assert!(
            streaming.elapsed() < Duration::from_secs(30),
            "weir did not stream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    db.sql("ALTER TABLE t ALTER COLUMN n TYPE text");
    db.sql("INSERT INTO t VALUES (3, 'not a number')");
    let after = db.current_wal_lsn();
    let status = crate::recovery::wait_with_timeout(&mut weir, Duration::from_secs(60));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("kind=schema"),
        "the error's kind is logged: {log}"
    );
    assert!(!log.contains("Transient failure"), "not retried: {log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("public.t"),
        "one line naming the table: {last}"
    );
    assert!(
        db.confirmed_flush().unwrap() < after,
        "the slot is not acknowledged past the failed change"
    );
    let (changes, _) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    let ids: Vec<i64> = changes
        .rows
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [1, 2],
        "the table holds what came before the failed change"
    );
}

#[test]
fn weir_lake_lists_time_travels_rolls_back_and_expires() {
    let db = TestDb::new("ice_lake");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)");
    db.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 10) g");
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.catch_up(&config);
    let between = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(50));
    db.sql("INSERT INTO t SELECT g, 1 FROM generate_series(11, 15) g");
    db.catch_up(&config);

    let listed: Vec<Value> =
        serde_json::from_str(&lake(&db, &config, &["snapshots", "public.t", "--json"])).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (first, second) = (
        listed[0]["id"].as_i64().unwrap(),
        listed[1]["id"].as_i64().unwrap(),
    );
    assert_eq!(listed[0]["added_records"], 10);
    assert_eq!(listed[1]["total_records"], 15);
    assert_eq!(listed[1]["current"], true);
    let table = lake(&db, &config, &["snapshots", "t"]);
    assert!(
        table.contains(&second.to_string())
            && table.contains("(current)")
            && table.contains("commit-lsn"),
        "{table}"
    );

    let now = lake(&db, &config, &["query", "public.t", "--limit", "100"]);
    assert!(now.contains("15 change rows (limit 100)"), "{now}");
    let then = lake(
        &db,
        &config,
        &["query", "public.t", "--snapshot", &first.to_string()],
    );
    assert!(
        then.contains(&format!(
            "10 change rows (limit 20) of the changelog public.t at snapshot {first}"
        )),
        "{then}"
    );
    let as_of = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let then = lake(&db, &config, &["query", "public.t", "--as-of", &as_of]);
    assert!(then.contains(&format!("at snapshot {first}")), "{then}");
    let limited = lake(&db, &config, &["query", "public.t", "--limit", "3"]);
    assert!(limited.contains("3 change rows (limit 3)"), "{limited}");

    lake(
        &db,
        &config,
        &["rollback", "public.t", "--snapshot", &first.to_string()],
    );
    let (log, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(
        log.op("r") + log.op("c"),
        10,
        "PyIceberg reads the rolled-back state"
    );
    assert_eq!(
        snapshot_ids(&report).len(),
        2,
        "the later snapshot stays in history"
    );

    let expired = lake(
        &db,
        &config,
        &["expire-snapshots", "public.t", "--older-than", "1ms"],
    );
    assert!(expired.contains("1 snapshots expired; 1 kept"), "{expired}");
    let (_, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(
        snapshot_ids(&report),
        vec![first],
        "the current snapshot stays"
    );

    let out = db
        .weir(&["lake", "snapshots", config.to_str().unwrap(), "public.nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("public.nope"), "{}", stderr(&out));
}

#[test]
fn compaction_rewrites_small_files_in_one_replace_commit_and_streaming_goes_on() {
    let db = TestDb::new("ice_compact");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.catch_up(&config);
    for round in 0..4 {
        db.sql(&format!(
            "INSERT INTO t SELECT g, g, 'r{round}' FROM generate_series({}, {}) g",
            round * 100 + 1,
            round * 100 + 100
        ));
        db.sql(&format!("UPDATE t SET v = -v WHERE id % 10 = {round}"));
        db.catch_up(&config); // one small file per run
    }
    let (before, _) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert!(before.files >= 4, "{} files", before.files);

    let out = lake(&db, &config, &["compact", "public.t"]);
    assert!(
        out.contains(&format!("{} data files rewritten into 1", before.files)),
        "{out}"
    );
    let (after, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(after.files, 1, "one file now");
    assert_eq!(after.ops, before.ops, "the same rows");
    assert_eq!(after.duplicates, 0);
    assert_eq!(after.rows, db.rows("public.t", "id"));
    let current = report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == report["current_snapshot"])
        .unwrap()
        .clone();
    assert_eq!(current["operation"], "Operation.REPLACE", "{current}");
    assert_eq!(
        current["summary"]["deleted-data-files"],
        before.files.to_string()
    );
    let again = lake(&db, &config, &["compact", "public.t"]);
    assert!(again.contains("nothing to compact"), "{again}");

    // The pipeline resumes from the position the compaction carried over.
    db.sql("INSERT INTO t SELECT g, 0, 'after' FROM generate_series(401, 450) g");
    db.catch_up(&config);
    let (log, _) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(log.duplicates, 0);
    assert_eq!(log.op("c"), 450);
    assert_eq!(log.rows, db.rows("public.t", "id"));
}

#[test]
fn scheduled_maintenance_compacts_and_expires_while_the_pipeline_streams() {
    let db = TestDb::new("ice_maint");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = iceberg_config(
        &db,
        &["public.t"],
        None,
        "[sink.maintenance]\nevery = \"1s\"\nexpire_older_than = \"1s\"\ncompact = true",
    );
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let weir = db
        .weir(&["run", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let [inserts, updates, deletes] = writer.finish();
    crate::recovery::unsafe_kill(weir.id() as i32, libc::SIGTERM);
    let out = weir.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Maintenance compacted the table."), "{log}");
    assert!(log.contains("Maintenance expired old snapshots."), "{log}");
    db.catch_up(&config);
    let (changes, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(changes.duplicates, 0);
    assert_eq!(
        (changes.op("c"), changes.op("u"), changes.op("d")),
        (inserts, updates, deletes)
    );
    assert_eq!(changes.rows, db.rows("public.t", "id"));
    assert!(
        snapshot_ids(&report).len() < 10,
        "old snapshots were expired: {}",
        snapshot_ids(&report).len()
    );
}

/// Dead letters of 200 inserts into `public.t (id int PRIMARY KEY, v text)` through a
/// transform that sets every tenth aside (`read` counts what the output holds), replayed
/// after the transform is fixed, by a replay that committed and died before removing
/// its letters, then twice again: the second replay finds its commits, the third nothing.
pub(crate) fn replay_after_a_crash(db: &TestDb, config: &Path, read: &dyn Fn() -> Changelog) {
    let plugin = db.plugin(
        "weir-test-hostile",
        "tests/plugins/hostile/weir-plugin.toml",
        |m| m.replace("on_error = \"fail\"", "on_error = \"dead-letter\""),
    );
    let transform = |every: u32| {
        format!(
            "[[transform]]\nplugin = \"{}\"\nconfig = {{ mode = \"bad-event\", every = {every} }}",
            plugin.display()
        )
    };
    let base = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("{base}\n{}\n", transform(10))).unwrap();
    db.catch_up(config);
    db.sql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 200) g");
    db.catch_up(config);
    assert_eq!(read().op("c"), 180, "every tenth event set aside");

    std::fs::write(config, format!("{base}\n{}\n", transform(100_000))).unwrap();
    let letters = db.out().join("_weir").join(&db.name).join("dead-letter");
    let kept = db.dir.path().join("letters-copy");
    copy_dir(&letters, &kept);
    let replay = db
        .weir(&["dead-letter", "replay", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", stderr(&replay));
    std::fs::remove_dir_all(&letters).ok();
    copy_dir(&kept, &letters);
    for expected in ["20 replayed, 0 still failing", "0 replayed"] {
        let replay = db
            .weir(&["dead-letter", "replay", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(replay.status.success(), "{}", stderr(&replay));
        let out = String::from_utf8_lossy(&replay.stdout);
        assert!(out.contains(expected), "{out}");
    }
}

#[test]
fn dead_letters_replay_into_iceberg_once() {
    let db = TestDb::new("ice_dlq");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = iceberg_config(&db, &["public.t"], None, "");
    replay_after_a_crash(&db, &config, &|| {
        read_iceberg(&catalog(&db), "public.t", "id", None, &[]).0
    });
    let (log, report) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!((log.op("c"), log.duplicates), (200, 0));
    assert_eq!(log.rows, db.rows("public.t", "id"));
    let current = report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == report["current_snapshot"])
        .unwrap()
        .clone();
    assert!(
        current["summary"]["weir.commit-lsn"].is_string(),
        "a replay commit keeps the position: {current}"
    );

    // Streaming goes on from there.
    db.sql("INSERT INTO t SELECT g, 'w' FROM generate_series(201, 205) g");
    db.catch_up(&config);
    let (log, _) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!((log.op("c"), log.duplicates), (205, 0));
}

#[test]
fn a_two_million_row_transaction_goes_to_iceberg_in_bounded_memory() {
    let db = TestDb::new("ice_huge");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = iceberg_config(&db, &["public.t"], None, "target_file_size = \"4MiB\"");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, g % 1000, 'note ' || g FROM generate_series(1, 2000000) g");
    let mut weir = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak) = crate::streaming::peak_rss_until_exit(&mut weir);
    assert!(status.success());
    let (log, _) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!((log.op("c"), log.duplicates), (2_000_000, 0));
    assert!(
        log.files > 1,
        "data files rolled at the target size: {}",
        log.files
    );
    println!(
        "peak RSS for one 2M-row transaction into Iceberg: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 160 << 20,
        "peak RSS {} MiB is bounded by the batch and file settings, not the transaction",
        peak >> 20
    );
}

#[test]
fn an_initial_snapshot_killed_midway_into_iceberg_ends_equal_without_doubles() {
    use std::io::BufRead;
    let db = TestDb::new("ice_snap_kill");
    for t in ["a", "b"] {
        db.sql(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v int NOT NULL, note text)"
        ));
        db.sql(&format!(
            "INSERT INTO {t} SELECT g, 0, md5(g::text) FROM generate_series(1, 150000) g"
        ));
    }
    let config = iceberg_config(
        &db,
        &["public.a", "public.b"],
        None,
        "target_file_size = \"1MiB\"",
    );
    let mut weir = db.spawn(&config);
    let mut lines = std::io::BufReader::new(weir.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("Iceberg table created") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    weir.kill().unwrap(); // mid-snapshot: tables exist, files written, some chunks committed or none
    weir.wait().unwrap();
    db.sql("UPDATE a SET v = 1 WHERE id <= 10");
    let out = db.catch_up(&config);
    let err = stderr(&out);
    // Killed before the first commit round, the snapshot is taken again; after, the
    // committed chunks are kept and the rest is read by backfills.
    let retaken = err.contains("did not finish: dropping its slot");
    assert!(retaken || err.contains("did not finish: keeping"), "{err}");
    assert_eq!(
        retaken,
        err.contains("Dropped the Iceberg table of an unfinished initial snapshot"),
        "what a retaken snapshot left is discarded: {err}"
    );
    for t in ["a", "b"] {
        let (log, _) = read_iceberg(&catalog(&db), &format!("public.{t}"), "id", None, &[]);
        let updated = match (retaken, t) {
            (false, "a") => 10,
            _ => 0,
        };
        assert_eq!((log.op("u"), log.duplicates), (updated, 0), "{t}");
        // A row updated after a kept chunk copied it is read again, with its new value.
        assert!(
            log.op("r") == 150_000 || log.op("r") == 150_000 + updated,
            "{t}: every row once, or twice when changed since ({})",
            log.op("r")
        );
        assert_eq!(log.rows, db.rows(&format!("public.{t}"), "id"), "{t}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}

/// The moto server of the `s3` tests.
fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

#[test]
fn iceberg_on_s3_with_credentials_from_the_environment() {
    let db = TestDb::new("ice_s3");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT g, g, 'existing' FROM generate_series(1, 400) g");
    let (mut server, port) = crate::harness::serve_py("s3_server.py", &["serve", "lake"]);
    let catalog = db.dir.path().join("catalog.db");
    let config = iceberg_config(
        &db,
        &["public.t"],
        Some(&format!("s3://lake/{}", db.name)),
        &format!(
            "[sink.catalog]\ntype = \"sql\"\npath = \"{}\"",
            catalog.display()
        ),
    );
    let env = s3_env(port);
    let run = |config: &Path| {
        let mut c: Command = db.weir(&["run", config.to_str().unwrap(), "--until-caught-up"]);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    run(&config);
    db.sql("UPDATE t SET v = -v WHERE id <= 100");
    db.sql("DELETE FROM t WHERE id > 350");
    run(&config);
    let (log, report) = read_iceberg(&catalog, "public.t", "id", None, &env);
    assert_eq!((log.op("r"), log.op("u"), log.op("d")), (400, 100, 50));
    assert_eq!(log.rows, db.rows("public.t", "id"));
    let keys = String::from_utf8_lossy(&crate::harness::py(
        "s3_server.py",
        &["list", &port.to_string(), "lake", &format!("{}/", db.name)],
    ))
    .into_owned();
    assert!(
        keys.contains("/public/t/metadata/") && keys.contains("/public/t/data/"),
        "data and metadata are in the bucket: {keys}"
    );
    assert!(
        report["snapshots"].as_array().unwrap().len() >= 2,
        "{report}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The files below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_below(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn orphan_files_are_removed_and_every_kept_snapshot_still_reads() {
    let db = TestDb::new("ice_orphans");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)");
    db.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 10) g");
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 1 FROM generate_series(11, 15) g");
    db.catch_up(&config);
    db.sql("UPDATE t SET v = v + 10");
    db.catch_up(&config);

    // The table's location: where its metadata directory is.
    let metadata_file = files_below(&db.out())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .unwrap();
    let location = metadata_file.parent().unwrap().parent().unwrap();
    let data = location.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (old, fresh) = (
        data.join("orphan-old.parquet"),
        data.join("orphan-new.parquet"),
    );
    for f in [&old, &fresh] {
        std::fs::write(f, b"left behind by a run killed before its commit").unwrap();
    }
    let ten_days = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(ten_days)
        .unwrap();

    // Beside data/ and metadata/ (a table nested below this one, say): never touched.
    let beside = location.join("nested").join("data").join("old.parquet");
    std::fs::create_dir_all(beside.parent().unwrap()).unwrap();
    std::fs::write(&beside, b"another table's").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&beside)
        .unwrap()
        .set_modified(ten_days)
        .unwrap();

    let dry = lake(
        &db,
        &config,
        &[
            "remove-orphans",
            "public.t",
            "--older-than",
            "1d",
            "--dry-run",
        ],
    );
    assert!(
        dry.contains("orphan-old.parquet")
            && !dry.contains("orphan-new.parquet")
            && dry.contains("1 files (")
            && dry.contains("would be deleted"),
        "{dry}"
    );
    assert!(old.exists() && fresh.exists(), "a dry run deletes nothing");
    let removed = lake(&db, &config, &["remove-orphans", "public.t"]);
    assert!(
        removed.contains("1 files ("),
        "the default keeps 3 days: {removed}"
    );
    assert!(!old.exists() && fresh.exists());

    // Every snapshot the table keeps still reads in full.
    let listed: Vec<Value> =
        serde_json::from_str(&lake(&db, &config, &["snapshots", "public.t", "--json"])).unwrap();
    assert_eq!(listed.len(), 3);
    for s in &listed {
        let (log, _) = read_iceberg(&catalog(&db), "public.t", "id", s["id"].as_i64(), &[]);
        assert_eq!(
            log.op("r") + log.op("c") + log.op("u"),
            s["total_records"].as_u64().unwrap(),
            "snapshot {s}"
        );
    }

    // Expired snapshots leave their manifest lists behind: removed too, and the current
    // state still equals the source.
    lake(
        &db,
        &config,
        &["expire-snapshots", "public.t", "--older-than", "1ms"],
    );
    let out = db
        .weir(&[
            "lake",
            "remove-orphans",
            config.to_str().unwrap(),
            "public.t",
            "--older-than",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "under a day needs --force");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let removed = lake(
        &db,
        &config,
        &[
            "remove-orphans",
            "public.t",
            "--older-than",
            "0s",
            "--force",
        ],
    );
    let count: usize = removed.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        count >= 3,
        "two manifest lists and the fresh orphan: {removed}"
    );
    assert!(!fresh.exists());
    assert!(
        beside.exists(),
        "only the table's own data/ and metadata/ are swept"
    );
    let (log, _) = read_iceberg(&catalog(&db), "public.t", "id", None, &[]);
    assert_eq!(
        log.rows,
        db.rows("t", "id"),
        "the current state equals the source"
    );
    assert_eq!(log.duplicates, 0);

    // A file the table needs, missing from the listing: the paths cannot be trusted to
    // compare, so nothing is deleted.
    let live = files_below(&data)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::remove_file(&live).unwrap();
    let out = db
        .weir(&[
            "lake",
            "remove-orphans",
            config.to_str().unwrap(),
            "public.t",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing is deleted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nested_types_in_iceberg_are_read_back_equal_by_pyiceberg() {
    let db = TestDb::new("ice_nested");
    let config = iceberg_config(&db, &["public.t"], None, "");
    nested_table_reads_back(&db, &config);
}

/// The table of every nested type through `config`'s Iceberg sink (changelog or
/// mirror) reads back equal by PyIceberg, as lists and structs, and `weir verify`
/// (reading them back through iceberg-rust) finds it equal to the source.
pub(crate) fn nested_table_reads_back(db: &TestDb, config: &Path) {
    let specs = crate::types::nested_table(db, config);
    let read: Value = serde_json::from_slice(&crate::harness::py(
        "iceberg_lists.py",
        &[catalog(db).into_os_string(), "public.t".into()],
    ))
    .unwrap();
    crate::types::assert_nested_values(db, &specs, &read);
    let types = &read["types"];
    assert_eq!(types["ai"], "list<int>", "{types}");
    assert!(
        types["cp"].as_str().unwrap().starts_with("struct<"),
        "{types}"
    );
    let out = db
        .weir(&["verify", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_iceberg_table_keeps_its_text_columns_when_nested_types_change() {
    let db = TestDb::new("ice_form");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a text[])");
    db.sql("INSERT INTO t VALUES (1, '{x,y}')");
    let config = iceberg_config(&db, &["public.t"], None, "nested_types = false");
    db.catch_up(&config);
    // Unset now, with a column added: the table's text column stays text, the new one
    // is a list.
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.sql("ALTER TABLE t ADD COLUMN b int[]");
    db.sql("INSERT INTO t VALUES (2, '{z}', '{1,NULL}')");
    db.catch_up(&config);
    let read: Value = serde_json::from_slice(&crate::harness::py(
        "iceberg_lists.py",
        &[catalog(&db).into_os_string(), "public.t".into()],
    ))
    .unwrap();
    assert_eq!(read["types"]["a"], "string", "{read}");
    assert_eq!(read["types"]["b"], "list<int>", "{read}");
    let rows: Vec<(Value, Value)> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["a"].clone(), r["b"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (Value::from("{x,y}"), Value::Null),
            (Value::from("{z}"), serde_json::json!([1, null]))
        ]
    );
}

#[test]
fn a_composite_type_altered_evolves_the_iceberg_struct() {
    let db = TestDb::new("ice_alter_type");
    db.sql("CREATE TYPE pair AS (a int, b text)");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, p pair, ps pair[])");
    db.sql("INSERT INTO t VALUES (1, ROW(1, 'x'), ARRAY[ROW(2, 'y')::pair])");
    let config = iceberg_config(&db, &["public.t"], None, "");
    db.catch_up(&config);
    // Between runs: a field added, then another dropped (PostgreSQL refuses a field's
    // type change while a table uses the type).
    db.sql("ALTER TYPE pair ADD ATTRIBUTE c int");
    db.sql("INSERT INTO t VALUES (2, ROW(3, 'z', 4), ARRAY[ROW(5, 'w', 6)::pair])");
    let out = db.catch_up(&config);
    assert!(
        stderr(&out).contains("fields added to composite columns"),
        "{}",
        stderr(&out)
    );
    db.sql("ALTER TYPE pair DROP ATTRIBUTE b");
    db.sql("INSERT INTO t VALUES (3, ROW(7, 8), NULL)");
    db.catch_up(&config);

    let read: Value = serde_json::from_slice(&crate::harness::py(
        "iceberg_lists.py",
        &[catalog(&db).into_os_string(), "public.t".into()],
    ))
    .unwrap();
    let rows: Vec<(Value, Value)> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["p"].clone(), r["ps"].clone()))
        .collect();
    use serde_json::json;
    assert_eq!(
        rows,
        [
            (json!({"a": 1, "b": "x"}), json!([{"a": 2, "b": "y"}])),
            (
                json!({"a": 3, "b": "z", "c": 4}),
                json!([{"a": 5, "b": "w", "c": 6}])
            ),
            (json!({"a": 7, "b": null, "c": 8}), Value::Null),
        ],
        "each file in its own struct shape: {read}"
    );
    assert!(
        read["types"]["p"]
            .as_str()
            .unwrap()
            .contains("c: optional int"),
        "{read}"
    );
}
