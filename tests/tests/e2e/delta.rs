//! Delta Lake changelog and mirror tables, read back by the `deltalake` Python package (delta-rs's
//! own binding, reading only what the table's log references) and rebuilt by DuckDB.

use crate::harness::{Changelog, TestDb, py, stderr};
use crate::recovery::{Writer, kill_9_rounds};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn delta_config(db: &TestDb, tables: &[&str], extra: &str) -> PathBuf {
    let tables: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
    let text = format!(
        "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [{}]\n\n\
         [batch]\nmax_delay = \"100ms\"\nmax_events = 300\n\n\
         [[sink]]\ntype = \"delta\"\nurl = \"file://{}\"\ncommit_interval = \"300ms\"\n{extra}\n",
        db.url(),
        db.name,
        db.name,
        tables.join(", "),
        db.out().display(),
    );
    let path = db.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The table of `schema.table` as the `deltalake` package reads it: the changelog report
/// of `changelog.py`, with the table's version, weir's `txn` version and its history.
fn read_delta(db: &TestDb, table: &str, key: &str) -> (Changelog, Value) {
    let (schema, name) = table.split_once('.').unwrap();
    read_delta_at(&db.out().join(schema).join(name), key, &db.name)
}

/// The Delta table in directory `dir`, as [`read_delta`] reads it; `slot` names weir's
/// `txn` app id.
pub(crate) fn read_delta_at(dir: &std::path::Path, key: &str, slot: &str) -> (Changelog, Value) {
    let out = py(
        "delta_changelog.py",
        &[
            dir.as_os_str(),
            key.as_ref(),
            format!("weir:{slot}").as_ref(),
        ],
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    (Changelog::from_json(&v), v)
}

#[test]
fn a_delta_changelog_rebuilds_to_the_source_and_records_its_position() {
    let db = TestDb::new("delta_log");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text, tn timestamp, tm time, \
         u uuid, tags text[])",
    );
    db.sql(
        "INSERT INTO t SELECT g, g, 'snap', '2026-01-02 03:04:05.5', '12:34:56', \
         gen_random_uuid(), ARRAY['a', NULL] FROM generate_series(1, 200) g",
    );
    let config = delta_config(&db, &["public.t"], "");
    db.catch_up(&config);
    db.sql("UPDATE t SET v = v + 1000 WHERE id % 3 = 0");
    db.sql("DELETE FROM t WHERE id % 7 = 0");
    db.sql("INSERT INTO t SELECT g, g, 'new' FROM generate_series(201, 260) g");
    // A column added mid-stream is added to the table (older rows null in it).
    db.sql("ALTER TABLE t ADD COLUMN extra text");
    db.sql("UPDATE t SET extra = 'x' || id WHERE id <= 20");
    db.catch_up(&config);
    let (log, report) = read_delta(&db, "public.t", "id");
    assert_eq!(log.duplicates, 0, "{:?}", log.duplicate_examples);
    assert_eq!(log.op("r"), 200, "the initial snapshot, once");
    let columns = ["id", "v", "note", "extra", "u", "tm"];
    let picked: Vec<Value> = log
        .rows
        .iter()
        .map(|r| columns.iter().map(|c| r[*c].clone()).collect())
        .collect();
    let source: Vec<Value> = db
        .rows("(SELECT id, v, note, extra, u, tm FROM public.t)", "id")
        .iter()
        .map(|r| columns.iter().map(|c| r[*c].clone()).collect())
        .collect();
    assert_eq!(picked, source, "the rebuilt state equals the source");
    // What Delta has no type for is text; a timestamp without time zone is timestamp_ntz.
    let types = &report["types"];
    assert_eq!(types["u"], "PrimitiveType(\"string\")", "{types}");
    assert_eq!(types["tm"], "PrimitiveType(\"string\")", "{types}");
    assert_eq!(types["tn"], "PrimitiveType(\"timestamp_ntz\")", "{types}");
    assert!(
        types["tags"].as_str().unwrap().starts_with("ArrayType("),
        "{types}"
    );
    assert_eq!(log.rows[0]["tags"], serde_json::json!(["a", null]));
    // weir's position is the table's transaction version for the pipeline, and each
    // commit's info records it.
    assert_eq!(report["txn"].as_u64(), Some(log.max_commit_lsn), "{report}");
    let history = report["history"].as_array().unwrap();
    assert!(history.len() >= 3, "create, then commits: {report}");
    assert_eq!(
        history.last().unwrap()["commit_lsn"],
        Value::String(log.max_commit_lsn.to_string()),
        "{report}"
    );
    // weir lake: the versions with weir's position, and the rows as of one of them.
    let lake = |args: &[&str]| {
        let mut all = vec!["lake"];
        all.extend_from_slice(args);
        let out = db.weir(&all).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pipeline = config.to_str().unwrap();
    let versions: Value =
        serde_json::from_str(&lake(&["snapshots", pipeline, "public.t", "--json"])).unwrap();
    let versions = versions.as_array().unwrap();
    let last = versions.last().unwrap();
    assert_eq!(last["current"], true);
    assert_eq!(
        last["commit_lsn"].as_str(),
        Some(weir::Lsn(log.max_commit_lsn).to_string().as_str())
    );
    let first = versions
        .iter()
        .find(|v| !v["commit_lsn"].is_null())
        .unwrap();
    let at = first["version"].as_u64().unwrap().to_string();
    let rows = lake(&[
        "query",
        pipeline,
        "public.t",
        "--snapshot",
        &at,
        "--limit",
        "100000",
    ]);
    assert!(
        rows.contains(&format!(
            "200 change rows (limit 100000) of the Delta changelog of public.t at version {at}"
        )),
        "the first weir commit holds the snapshot's rows: {rows}"
    );
    // A restart skips what the table holds.
    db.catch_up(&config);
    let (again, _) = read_delta(&db, "public.t", "id");
    assert_eq!(again.ops, log.ops, "nothing written twice");
    let status = db
        .weir(&["status", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("sink        delta file://"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[test]
fn delta_is_exactly_once_across_kill_9() {
    let db = TestDb::new("delta_kill");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 1000) g");
    let config = delta_config(&db, &["public.t"], "target_file_size = \"64KiB\"");
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let run = || db.weir(&["run", config.to_str().unwrap()]);
    kill_9_rounds(4, run, |r| 1200 + 350 * r, |_| {});
    let [inserts, updates, deletes] = writer.finish();
    assert!(inserts > 50, "the writer made changes: {inserts}");
    db.catch_up(&config);
    let (log, report) = read_delta(&db, "public.t", "id");
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
    // Polars reads the same changes.
    let polars: Value = serde_json::from_slice(&py(
        "delta_polars.py",
        &[db.out().join("public").join("t").into_os_string()],
    ))
    .unwrap();
    for op in ["r", "c", "u", "d"] {
        assert_eq!(
            polars["ops"][op].as_u64().unwrap_or(0),
            log.op(op),
            "{op}: {polars}"
        );
    }
    assert!(
        report["version"].as_u64().unwrap() > 4,
        "commits were batched in several versions: {report}"
    );
    verify(&db, &config, 1);
    // The files of commits the kills undid are in no version; removing them leaves the
    // table as it was.
    let out = db
        .weir(&[
            "lake",
            "remove-orphans",
            config.to_str().unwrap(),
            "public.t",
            "--older-than",
            "1s",
            "--force",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("files deleted: referenced by no version"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (after, _) = read_delta(&db, "public.t", "id");
    assert_eq!(after.ops, log.ops, "nothing the table holds was removed");
    assert_eq!(after.rows, log.rows);
}

#[test]
fn another_writer_committing_beside_weir_neither_doubles_nor_loses_a_change() {
    let db = TestDb::new("delta_conc");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 300) g");
    let config = delta_config(&db, &["public.t"], "");
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let mut weir = db
        .weir(&["run", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 20 commits of another writer while weir commits every 300 ms: weir's commits are
    // made against a table that has moved on, and delta-rs tries them again on top.
    py(
        "delta_append.py",
        &[
            db.out().join("public").join("t").into_os_string(),
            "20".into(),
            "60".into(),
        ],
    );
    let [inserts, updates, deletes] = writer.finish();
    std::thread::sleep(Duration::from_millis(500));
    weir.kill().unwrap();
    weir.wait().unwrap();
    db.catch_up(&config);
    let (log, _) = read_delta(&db, "public.t", "id");
    assert_eq!(log.op("x"), 20, "the other writer's rows are all there");
    assert_eq!(log.duplicates, 0, "{:?}", log.duplicate_examples);
    assert_eq!(
        (log.op("r"), log.op("c"), log.op("u"), log.op("d")),
        (300, inserts, updates, deletes),
        "every change of weir's exactly once"
    );
    // The other writer's rows have no key: they are not rows of the source table.
    let rows: Vec<&Value> = log.rows.iter().filter(|r| !r["id"].is_null()).collect();
    let source = db.rows("public.t", "id");
    assert_eq!(rows.len(), source.len(), "{} rows rebuilt", log.rows.len());
    assert!(
        rows.iter().zip(&source).all(|(a, b)| *a == b),
        "the rebuilt state equals the source"
    );
}

#[test]
fn dead_letters_replay_into_a_delta_changelog_once() {
    let db = TestDb::new("delta_dlq");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = delta_config(&db, &["public.t"], "");
    crate::iceberg::replay_after_a_crash(&db, &config, &|| read_delta(&db, "public.t", "id").0);
    let (log, report) = read_delta(&db, "public.t", "id");
    assert_eq!((log.op("c"), log.duplicates), (200, 0));
    assert_eq!(log.rows, db.rows("public.t", "id"));
    let txn = report["txn"].clone();

    // Streaming goes on from the pipeline's own position.
    db.sql("INSERT INTO t SELECT g, 'w' FROM generate_series(201, 205) g");
    db.catch_up(&config);
    let (log, report) = read_delta(&db, "public.t", "id");
    assert_eq!((log.op("c"), log.duplicates), (205, 0));
    assert_ne!(report["txn"], txn, "the pipeline's position moved on");
}

#[test]
fn a_delta_table_that_is_not_weirs_is_refused_and_left_untouched() {
    let db = TestDb::new("delta_foreign");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, x text)");
    db.sql("INSERT INTO t VALUES (1, 'a')");
    let config = delta_config(&db, &["public.t"], "");
    std::fs::create_dir_all(db.out().join("public")).unwrap();
    py(
        "delta_foreign.py",
        &[db.out().join("public").join("t").into_os_string()],
    );
    let run = || {
        let out = db
            .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default().to_string();
        assert!(
            last.contains("is not a weir table") && last.contains("public/t"),
            "{err}"
        );
    };
    run();
    run();
    let log: Vec<_> = std::fs::read_dir(db.out().join("public/t/_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(
        log,
        ["00000000000000000000.json"],
        "the table was not written"
    );
}

/// A pipeline with a Delta mirror at `<out>/delta` and, beside it, a Parquet changelog
/// at `<out>/parquet`: the source's changes, to check the mirror's change feed against.
fn mirror_config(db: &TestDb, interval: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [\"public.t\"]\n\n\
         [batch]\nmax_delay = \"20ms\"\nmax_events = 300\n\n\
         [[sink]]\ntype = \"delta\"\nurl = \"file://{}/delta\"\nmode = \"mirror\"\ncommit_interval = \"{interval}\"\n{extra}\n\n\
         [[sink]]\ntype = \"parquet\"\nurl = \"file://{}/parquet\"\nflush_interval = \"200ms\"\n",
        db.url(),
        db.name,
        db.name,
        db.out().display(),
        db.out().display(),
    );
    let path = db.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The mirror of `public.t` as `delta_mirror.py` reads it (`state`: only its rows).
fn read_mirror_as(db: &TestDb, what: &str) -> Value {
    let out = py(
        "delta_mirror.py",
        &[
            db.out().join("delta/public/t").into_os_string(),
            "id".into(),
            db.out().join("parquet/public/t").into_os_string(),
            what.into(),
        ],
    );
    serde_json::from_slice(&out).unwrap()
}

/// `weir verify` of the pipeline: `sinks` sinks, every one equal to the source.
fn verify(db: &TestDb, config: &std::path::Path, sinks: usize) {
    let out = db
        .weir(&["verify", config.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    assert_eq!(report.matches("public.t in ").count(), sinks, "{report}");
    assert!(report.contains("public.t in delta "), "{report}");
    assert_eq!(report.matches(": OK: ").count(), sinks, "{report}");
}

/// The number just before `words` in `out`.
fn count_before(out: &str, words: &str) -> usize {
    let at = out
        .find(words)
        .unwrap_or_else(|| panic!("{words:?} in {out}"));
    out[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number before {words:?} in {out}"))
}

fn read_mirror(db: &TestDb) -> Value {
    read_mirror_as(db, "all")
}

/// `weir lake <args> <config> public.t`'s output; it must succeed.
fn lake(db: &TestDb, config: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["lake", args[0], config.to_str().unwrap(), "public.t"];
    all.extend(&args[1..]);
    let out = db.weir(&all).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_feed_is_the_source_changes(report: &Value) {
    assert_eq!(
        report["replayed_equal"], true,
        "the feed replays to the mirror: {report}"
    );
    assert_eq!(report["preimage_errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["version_errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["changes_after_last_version"], 0, "{report}");
}

#[test]
fn a_delta_mirror_equals_the_source_and_its_change_feed_the_changes_across_kill_9() {
    let db = TestDb::new("delta_mirror");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 1000) g");
    // Small files: a commit rewrites some of them, not all.
    let config = mirror_config(&db, "40ms", "target_file_size = \"16KiB\"");
    db.catch_up(&config);
    let report = read_mirror(&db);
    assert_eq!(report["rows"].as_array().unwrap().len(), 1000, "{report}");
    assert_eq!(report["config"]["delta.enableChangeDataFeed"], "true");
    // A checkpoint every 10 versions (100 by default), set as a user would.
    py(
        "delta_properties.py",
        &[
            db.out().join("delta/public/t").into_os_string(),
            "delta.checkpointInterval=10".into(),
        ],
    );
    let writer = Writer::start(db.url());
    // Changes to the loaded rows too: updates, deletes, a key changed.
    let changes = |round: u64| {
        db.sql(&format!(
            "UPDATE t SET v = v + 1, note = 'round {round}' WHERE id < 0 AND id % 7 = -{round}"
        ));
        db.sql(&format!(
            "DELETE FROM t WHERE id < 0 AND id % 13 = -{round}"
        ));
        db.sql(&format!(
            "UPDATE t SET id = id - 100000 WHERE id = -{}",
            500 + round * 2 + 1
        ));
    };
    let run = || db.weir(&["run", config.to_str().unwrap()]);
    kill_9_rounds(4, run, |r| 1200 + 350 * r, changes);
    let [inserts, updates, deletes] = writer.finish();
    assert!(
        inserts > 50 && updates > 50 && deletes > 10,
        "the writer made changes"
    );
    db.catch_up(&config);
    let report = read_mirror(&db);
    assert_eq!(
        report["rows"],
        Value::Array(db.rows("public.t", "id")),
        "the mirror equals the source"
    );
    assert_feed_is_the_source_changes(&report);
    verify(&db, &config, 2);
    // Polars reads the same rows.
    let polars: Value = serde_json::from_slice(&py(
        "delta_polars.py",
        &[
            db.out().join("delta/public/t").into_os_string(),
            "id".into(),
        ],
    ))
    .unwrap();
    assert_eq!(
        polars["rows"], report["rows"],
        "Polars reads the mirror alike"
    );
    assert!(
        report["versions_checked"].as_u64().unwrap() > 40,
        "commits in many versions: {}",
        report["versions_checked"]
    );
    for kind in ["insert", "update_preimage", "update_postimage", "delete"] {
        assert!(
            report["feed"][kind].as_u64().unwrap_or(0) > 10,
            "{kind} rows in the feed: {}",
            report["feed"]
        );
    }
    let log = db.out().join("delta/public/t/_delta_log");
    let checkpoints = std::fs::read_dir(&log)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with("0.checkpoint.parquet")
        })
        .count();
    assert!(
        checkpoints > 3,
        "a checkpoint every 10 versions: {checkpoints}"
    );

    // The files of commits the kills undid go; the change data files versions refer to
    // stay (the feed still replays from version 0).
    // (One orphan for certain: a kill between the files and the log entry is a matter of
    // timing.)
    let table = db.out().join("delta/public/t");
    let live = std::fs::read_dir(&table)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".parquet"))
        .unwrap();
    let orphan = table.join("part-orphan.zstd.parquet");
    std::fs::copy(live, &orphan).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let out = lake(
        &db,
        &config,
        &["remove-orphans", "--older-than", "1s", "--force"],
    );
    assert!(
        count_before(&out, "files deleted: referenced by no version") > 0 && !orphan.exists(),
        "the orphan is deleted: {out}"
    );
    assert_feed_is_the_source_changes(&read_mirror(&db));

    // Compaction: the many small files into few, no row changed; the pipeline goes on
    // from the compacted table.
    let before = read_mirror(&db)["rows"].clone();
    let out = lake(&db, &config, &["compact", "--target-size", "1MiB"]);
    let (rewritten, written) = (
        count_before(&out, "small files rewritten into"),
        count_before(&out, "in version"),
    );
    assert!(rewritten > 1 && written < rewritten, "{out}");
    let report = read_mirror(&db);
    assert_eq!(report["rows"], before, "compaction changes no row");
    assert_feed_is_the_source_changes(&report);
    db.sql("UPDATE t SET v = v + 10 WHERE id % 5 = 0");
    db.sql("DELETE FROM t WHERE id % 9 = 0");
    db.sql("INSERT INTO t SELECT g, 1, 'after' FROM generate_series(900000, 900099) g");
    db.catch_up(&config);
    let report = read_mirror(&db);
    assert_eq!(report["rows"], Value::Array(db.rows("public.t", "id")));
    assert_feed_is_the_source_changes(&report);

    // Expiring versions: refused under the table's retention floor; with the floor
    // lowered, old versions' files and change data go and the current state stays.
    let out = db
        .weir(&[
            "lake",
            "expire-snapshots",
            config.to_str().unwrap(),
            "public.t",
            "--older-than",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("under the table's delta.deletedFileRetentionDuration"),
        "{}",
        stderr(&out)
    );
    py(
        "delta_properties.py",
        &[
            db.out().join("delta/public/t").into_os_string(),
            "delta.deletedFileRetentionDuration=interval 1 seconds".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = lake(&db, &config, &["expire-snapshots", "--older-than", "1s"]);
    assert!(count_before(&out, "files deleted") > 0, "{out}");
    assert_eq!(
        read_mirror_as(&db, "state")["rows"],
        Value::Array(db.rows("public.t", "id")),
        "the current version is whole"
    );
}

#[test]
fn a_delta_mirror_takes_truncates_and_unchanged_toast_values() {
    let db = TestDb::new("delta_mirror_toast");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    // Notes big enough to be TOASTed: an update that leaves them alone does not send them.
    let big =
        "(SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 300) g)";
    db.sql(&format!(
        "INSERT INTO t SELECT g, 0, {big} FROM generate_series(1, 50) g"
    ));
    let config = mirror_config(&db, "300ms", "");
    db.catch_up(&config);
    // A key's row in a data file, and a key's row written earlier in the same commit.
    db.sql("UPDATE t SET v = 1 WHERE id <= 3");
    db.sql(&format!("INSERT INTO t VALUES (51, 0, {big})"));
    db.sql("UPDATE t SET v = 2 WHERE id = 51");
    db.catch_up(&config);
    let report = read_mirror(&db);
    assert_eq!(report["rows"], Value::Array(db.rows("public.t", "id")));
    assert_feed_is_the_source_changes(&report);
    // A truncate deletes every row, the rows after it stay.
    db.sql("TRUNCATE t");
    db.sql("INSERT INTO t VALUES (7, 7, 'after'), (70, 70, 'after')");
    db.catch_up(&config);
    let report = read_mirror(&db);
    assert_eq!(report["rows"], Value::Array(db.rows("public.t", "id")));
    assert_eq!(report["rows"].as_array().unwrap().len(), 2);
    assert_feed_is_the_source_changes(&report);
    assert!(
        report["feed"]["delete"].as_u64().unwrap() >= 49,
        "{}",
        report["feed"]
    );
}

#[test]
fn a_delta_mirror_commits_early_once_its_rows_in_memory_reach_the_file_size() {
    let db = TestDb::new("delta_mirror_early");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = mirror_config(&db, "1h", "target_file_size = \"64KiB\"");
    db.catch_up(&config);
    for n in 0..20 {
        db.sql(&format!(
            "INSERT INTO t SELECT g, g, md5(g::text) FROM generate_series({}, {}) g",
            n * 2000 + 1,
            n * 2000 + 2000
        ));
    }
    db.catch_up(&config);
    let report = read_mirror(&db);
    assert_eq!(report["rows"], Value::Array(db.rows("public.t", "id")));
    assert_feed_is_the_source_changes(&report);
    assert!(
        report["versions_checked"].as_u64().unwrap() > 3,
        "an hour's interval, yet several commits: {}",
        report["versions_checked"]
    );
}

#[test]
fn a_delta_mirror_beside_another_writer_loses_and_doubles_nothing() {
    let db = TestDb::new("delta_mirror_conc");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 300) g");
    let config = mirror_config(&db, "300ms", "");
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let mut weir = db
        .weir(&["run", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // weir's commit of a version the other writer took first fails, and the pipeline
    // starts again from the table as it is now.
    py(
        "delta_append.py",
        &[
            db.out().join("delta/public/t").into_os_string(),
            "20".into(),
            "60".into(),
        ],
    );
    writer.finish();
    std::thread::sleep(Duration::from_millis(500));
    weir.kill().unwrap();
    weir.wait().unwrap();
    db.catch_up(&config);
    let report = read_mirror(&db);
    let (foreign, ours): (Vec<Value>, Vec<Value>) = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .partition(|r| r["id"].as_i64().unwrap() <= -10_000_000);
    assert_eq!(foreign.len(), 20, "the other writer's rows are all there");
    assert_eq!(
        ours,
        db.rows("public.t", "id"),
        "the mirror equals the source"
    );
    assert_eq!(report["replayed_equal"], true, "{report}");
}

#[test]
fn a_delta_mirror_refuses_a_table_without_a_key_and_a_changelog_table() {
    let db = TestDb::new("delta_mirror_bad");
    db.sql("CREATE TABLE t (id int, x text)");
    db.sql("ALTER TABLE t REPLICA IDENTITY FULL");
    db.sql("INSERT INTO t VALUES (1, 'a')");
    let config = mirror_config(&db, "300ms", "");
    let last_line = |config: &PathBuf| {
        let out = db
            .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        stderr(&out).lines().last().unwrap_or_default().to_string()
    };
    let last = last_line(&config);
    assert!(last.contains("table public.t has no primary key"), "{last}");
    // A changelog table where a mirror is configured (and the other way round).
    let changelog = delta_config(&db, &["public.t"], "");
    db.catch_up(&changelog);
    let text = std::fs::read_to_string(&changelog)
        .unwrap()
        .replace("commit_interval", "mode = \"mirror\"\ncommit_interval");
    std::fs::write(&changelog, text).unwrap();
    db.sql("ALTER TABLE t ADD PRIMARY KEY (id)");
    let last = last_line(&changelog);
    assert!(
        last.contains("holds a changelog table, and this sink writes mode = \"mirror\""),
        "{last}"
    );
}
