//! `weir verify`: the outputs compared with the source at one LSN while writes go on, and
//! damage planted in a changelog (through pyarrow, not weir) reported key by key.

use crate::harness::{TestDb, py, stderr};
use crate::recovery::Writer;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// A pipeline with a Parquet sink (0) and an Iceberg sink (1) capturing `t` and `docs`.
fn two_sinks(db: &TestDb) -> PathBuf {
    let lake = format!("file://{}", db.dir.path().join("lake").display());
    db.config_with(
        &["public.t", "public.docs"],
        "",
        "max_events = 500",
        &format!(
            "\n[[sink]]\ntype = \"iceberg\"\nwarehouse = \"{lake}\"\ncommit_interval = \"300ms\"\n"
        ),
    )
}

fn tables(db: &TestDb) {
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT g, g, md5(g::text) FROM generate_series(1, 2000) g");
    // Bodies past the TOAST threshold: updates that leave them alone do not send them.
    db.sql("CREATE TABLE docs (id int PRIMARY KEY, v int NOT NULL, body text)");
    db.sql(
        "INSERT INTO docs SELECT g, 0, (SELECT string_agg(md5(random()::text || s || g), '') FROM generate_series(1, 200) s) FROM generate_series(1, 50) g",
    );
}

fn verify(db: &TestDb, config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["verify", config.to_str().unwrap()];
    all.extend_from_slice(args);
    db.weir(&all).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The report line of `table` in the sink whose name starts with `sink`.
fn line<'a>(report: &'a str, table: &str, sink: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{table} in {sink}")))
        .unwrap_or_else(|| panic!("no line for {table} in {sink}:\n{report}"))
}

#[test]
fn verify_passes_on_parquet_and_iceberg_while_the_source_is_written() {
    let db = TestDb::new("verify");
    tables(&db);
    let config = two_sinks(&db);
    let (mut weir, _log) = db.spawn_logged(&config);
    db.wait_slot_active();
    let writer = Writer::start_at(db.url(), 10_000);
    for i in 0..20 {
        db.sql(&format!(
            "UPDATE docs SET v = v + 1 WHERE id % 5 = {}",
            i % 5
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Twice during the writes, once after.
    let check = |round: u32| {
        let out = verify(&db, &config, &["--timeout", "60s"]);
        let report = stdout(&out);
        assert!(
            out.status.success(),
            "round {round}:\n{report}\n{}",
            stderr(&out)
        );
        for sink in ["parquet", "iceberg"] {
            for table in ["public.t", "public.docs"] {
                let l = line(&report, table, sink);
                assert!(l.contains(": OK: "), "{l}");
                assert!(!l.contains("source 0 rows"), "{l}");
            }
        }
    };
    check(0);
    check(1);
    let counts = writer.finish();
    assert!(
        counts[1] > 0 && counts[2] > 0,
        "updates and deletes: {counts:?}"
    );
    check(2);
    let _ = weir.kill();
    let _ = weir.wait();
}

#[test]
fn verify_names_the_damage_planted_in_a_changelog_and_what_it_cannot_do() {
    let db = TestDb::new("verify_damage");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, 300) g");
    db.sql("UPDATE t SET v = -v WHERE id > 290");
    db.sql("DELETE FROM t WHERE id > 295");
    db.catch_up(&config);

    // The pipeline is stopped and holds everything: verify passes.
    let out = verify(&db, &config, &[]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        line(&stdout(&out), "public.t", "parquet").contains("source 295 rows, output 295 rows")
    );

    // Key 10's insert removed, key 20's doubled, key 30's note altered.
    let dir = db.out().join("public").join("t");
    let files = py(
        "damage.py",
        &[
            dir.to_str().unwrap(),
            "id",
            "10",
            "20",
            "30",
            "note",
            "tampered",
        ],
    );
    assert!(!files.is_empty(), "damage.py rewrote no file");
    let out = verify(&db, &config, &[]);
    let report = stdout(&out);
    assert!(!out.status.success(), "{report}");
    let l = line(&report, "public.t", "parquet");
    assert!(
        l.contains("DIFFERS: source 295 rows, output 294 rows, missing 1, extra 0, different 1, duplicated 1"),
        "{report}"
    );
    assert!(report.contains("  missing: id=10\n"), "{report}");
    assert!(report.contains("  different: id=30\n"), "{report}");
    assert!(report.contains("  duplicated: id=20\n"), "{report}");
    assert!(
        stderr(&out).contains("1 of 1 table output(s) differ"),
        "{}",
        stderr(&out)
    );

    // A sample compares a share of the keys, and says so.
    let out = verify(&db, &config, &["--sample", "50", "--ignore-column", "note"]);
    let report = stdout(&out);
    assert!(report.contains("sample: 50% of the keys"), "{report}");
    assert!(report.contains("ignored columns: note"), "{report}");
    assert!(
        !report.contains("different: id=30"),
        "note is ignored:\n{report}"
    );

    // Stopped and behind: one line, how far.
    db.sql("INSERT INTO t VALUES (1000, 1, 'late')");
    let out = verify(&db, &config, &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("the pipeline is stopped and parquet")
            && err.contains("1 transaction(s) before"),
        "{err}"
    );
    // Not captured; not a changelog sink.
    let out = verify(&db, &config, &["--table", "public.nope"]);
    assert!(
        stderr(&out).contains("table public.nope is not captured"),
        "{}",
        stderr(&out)
    );
    let out = verify(&db, &config, &["--sink", "3"]);
    assert!(
        stderr(&out).contains("there is no sink 3"),
        "{}",
        stderr(&out)
    );
    let slots =
        db.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'weir_verify%'");
    assert_eq!(slots.trim(), "0", "the temporary slot goes with verify");
}

fn audit(db: &TestDb, config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["audit", config.to_str().unwrap()];
    all.extend_from_slice(args);
    db.weir(&all).output().unwrap()
}

/// Every file under `dir` whose name ends with `suffix`, sorted.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Runs audit after `tamper`, expects it to fail naming `kind` and `name`, then undoes
/// the tampering with `undo` and expects it to pass again.
fn expect_audit_finds(
    db: &TestDb,
    config: &Path,
    kind: &str,
    name: &str,
    tamper: impl FnOnce(),
    undo: impl FnOnce(),
) {
    tamper();
    let out = audit(db, config, &[]);
    let report = stdout(&out);
    assert!(!out.status.success(), "{kind}: audit passed:\n{report}");
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("{kind}: ")))
        .unwrap_or_else(|| panic!("no {kind} in:\n{report}"));
    assert!(line.contains(name), "{kind} does not name {name}: {line}");
    assert!(stderr(&out).contains("audit found"), "{}", stderr(&out));
    undo();
    let out = audit(db, config, &[]);
    assert!(
        out.status.success(),
        "after undoing {kind}:\n{}",
        stdout(&out)
    );
}

#[test]
fn audit_passes_on_an_untouched_output_and_names_each_tampering() {
    let db = TestDb::new("audit");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    for round in 0..3 {
        db.sql(&format!(
            "INSERT INTO t SELECT g, g, 'n' FROM generate_series({}, {}) g",
            round * 100 + 1,
            round * 100 + 100
        ));
        db.sql(&format!(
            "UPDATE t SET v = -v WHERE id <= {}",
            round * 10 + 5
        ));
        db.catch_up(&config);
    }
    let out = audit(&db, &config, &[]);
    let report = stdout(&out);
    assert!(out.status.success(), "{report}\n{}", stderr(&out));
    assert!(
        report.contains("OK: the chain is unbroken and every file is as recorded"),
        "{report}"
    );

    // The evidence bundle: every record names its files, rows and the one before.
    let out = audit(&db, &config, &["--json"]);
    let bundle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = bundle["records"].as_array().unwrap();
    assert!(records.len() >= 3, "one record per flush: {bundle}");
    let inserts: u64 = records
        .iter()
        .map(|r| r["rows"]["public.t"]["c"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(inserts, 300, "{bundle}");
    assert!(records[0]["prev"].is_null());
    for pair in records.windows(2) {
        assert_eq!(
            pair[1]["seq"].as_u64(),
            pair[0]["seq"].as_u64().map(|s| s + 1)
        );
        assert_eq!(
            pair[1]["prev"].as_str().map(str::len),
            Some(64),
            "{}",
            pair[1]
        );
        let file = &pair[1]["files"][0];
        assert_eq!(file["sha256"].as_str().map(str::len), Some(64), "{file}");
    }

    let data = files_under(&db.out().join("public"), ".parquet");
    let victim = data[data.len() / 2].clone();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let original = std::fs::read(&victim).unwrap();
    let mut altered = original.clone();
    altered[original.len() / 2] ^= 0x01;
    expect_audit_finds(
        &db,
        &config,
        "altered-file",
        &name,
        || std::fs::write(&victim, &altered).unwrap(),
        || std::fs::write(&victim, &original).unwrap(),
    );
    expect_audit_finds(
        &db,
        &config,
        "missing-file",
        &name,
        || std::fs::remove_file(&victim).unwrap(),
        || std::fs::write(&victim, &original).unwrap(),
    );
    let extra = victim.with_file_name("part-0000000001-00099-planted.parquet");
    expect_audit_finds(
        &db,
        &config,
        "extra-file",
        "part-0000000001-00099-planted.parquet",
        || std::fs::write(&extra, &original).unwrap(),
        || std::fs::remove_file(&extra).unwrap(),
    );
    let ledger = files_under(&db.out().join("_weir"), ".json")
        .into_iter()
        .filter(|p| p.parent().unwrap().ends_with("ledger"))
        .collect::<Vec<_>>();
    assert!(ledger.len() >= 3, "{ledger:?}");
    let (middle, last) = (ledger[1].clone(), ledger[ledger.len() - 1].clone());
    let (middle_bytes, last_bytes) = (
        std::fs::read(&middle).unwrap(),
        std::fs::read(&last).unwrap(),
    );
    expect_audit_finds(
        &db,
        &config,
        "missing-record",
        "records 2 to 2 are missing",
        || std::fs::remove_file(&middle).unwrap(),
        || std::fs::write(&middle, &middle_bytes).unwrap(),
    );
    expect_audit_finds(
        &db,
        &config,
        "ledger-behind-checkpoint",
        "records were removed",
        || std::fs::remove_file(&last).unwrap(),
        || std::fs::write(&last, &last_bytes).unwrap(),
    );
    let edited = String::from_utf8(middle_bytes.clone())
        .unwrap()
        .replacen("\"c\": ", "\"c\": 1", 1);
    expect_audit_finds(
        &db,
        &config,
        "broken-link",
        "record 3 does not name record 2's hash",
        || std::fs::write(&middle, edited.as_bytes()).unwrap(),
        || std::fs::write(&middle, &middle_bytes).unwrap(),
    );
}
