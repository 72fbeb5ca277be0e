//! Iceberg mirror tables (`mode = "mirror"`): the source table's current state, read back
//! with PyIceberg and with DuckDB's Iceberg extension (both apply the position deletes
//! themselves), after a mixed workload, a lost primary-key index, compactions, `kill -9`
//! and a truncate, and at earlier LSNs.

use crate::harness::{TestDb, py, stderr};
use crate::recovery::Writer;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// A pipeline with one Iceberg mirror sink (SQL catalog in `out()`), committing every
/// 300 ms, its index in `<dir>/index`.
fn mirror_config(db: &TestDb, tables: &[&str]) -> PathBuf {
    mirror_config_with(db, tables, "")
}

/// [`mirror_config`] with `extra` appended to the sink's table.
fn mirror_config_with(db: &TestDb, tables: &[&str], extra: &str) -> PathBuf {
    let tables: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
    let text = format!(
        "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [{}]\n\n\
         [batch]\nmax_delay = \"100ms\"\nmax_events = 300\n\n\
         [[sink]]\ntype = \"iceberg\"\nwarehouse = \"file://{}\"\nmode = \"mirror\"\ncommit_interval = \"300ms\"\nindex_dir = \"{}\"\n{extra}",
        db.url(),
        db.name,
        db.name,
        tables.join(", "),
        db.out().display(),
        index_dir(db).display(),
    );
    let path = db.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn index_dir(db: &TestDb) -> PathBuf {
    db.dir.path().join("index")
}

/// The readers of mirror tables: PyIceberg and DuckDB's Iceberg extension.
const PYICEBERG: &str = "iceberg_mirror.py";
const DUCKDB: &str = "mirror_duckdb.py";

/// The mirror table as `reader` (a script in `tests/py`) reads it, at `snapshot` or the
/// current one.
fn read_mirror_with(
    reader: &str,
    db: &TestDb,
    table: &str,
    key: &str,
    snapshot: Option<&str>,
) -> Value {
    let catalog = db.out().join("catalog.db");
    let mut args = vec![
        catalog.to_str().unwrap().to_string(),
        table.into(),
        key.into(),
    ];
    args.extend(snapshot.map(str::to_string));
    serde_json::from_slice(&py(reader, &args)).unwrap()
}

fn read_mirror(db: &TestDb, table: &str, key: &str) -> Value {
    read_mirror_with(PYICEBERG, db, table, key, None)
}

/// The mirror of `table` holds exactly the source's rows, read by PyIceberg and by
/// DuckDB's Iceberg extension.
fn assert_mirrors(db: &TestDb, table: &str, key: &str) -> Value {
    let mirror = read_mirror(db, table, key);
    assert_eq!(mirror["repeated_keys"], 0, "one row per key");
    let source = db.rows(table, key);
    let duck = read_mirror_with(DUCKDB, db, table, key, None);
    for (reader, rows) in [("PyIceberg", &mirror["rows"]), ("DuckDB", &duck["rows"])] {
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), source.len(), "rows in {table} read by {reader}");
        for (m, s) in rows.iter().zip(&source) {
            assert_eq!(
                m, s,
                "{table} read by {reader}: a row differs from the source"
            );
        }
    }
    mirror
}

fn toasted(id: &str) -> String {
    format!(
        "(SELECT string_agg(md5(random()::text || s || {id}), '') FROM generate_series(1, 200) s)"
    )
}

#[test]
fn a_mirror_table_holds_the_source_table_through_changes_a_lost_index_and_a_truncate() {
    let db = TestDb::new("mirror");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, 500) g");
    db.sql("CREATE TABLE docs (id int PRIMARY KEY, v int NOT NULL, body text)");
    db.sql(&format!(
        "INSERT INTO docs SELECT g, 0, {} FROM generate_series(1, 20) g",
        toasted("g")
    ));
    let config = mirror_config(&db, &["public.t", "public.docs"]);
    db.catch_up(&config);
    let first = assert_mirrors(&db, "public.t", "id");
    assert_eq!(first["identifier_fields"], serde_json::json!(["id"]));
    assert_eq!(first["delete_files"], 0, "the snapshot is a bulk load");
    assert_eq!(first["properties"]["weir.mode"], "mirror");

    db.sql("INSERT INTO t SELECT g, g, 'new' FROM generate_series(501, 800) g");
    db.sql("UPDATE t SET v = -v WHERE id % 3 = 0");
    db.sql("DELETE FROM t WHERE id % 7 = 0");
    // Inserted, updated and deleted in one transaction: never reaches the table.
    db.sql("BEGIN; INSERT INTO t VALUES (5000, 1, 'x'); UPDATE t SET v = 2 WHERE id = 5000; DELETE FROM t WHERE id = 5000; COMMIT;");
    // A key change, and updates that leave a TOASTed value unchanged.
    db.sql("UPDATE t SET id = 10001 WHERE id = 1");
    db.sql("UPDATE docs SET v = v + 1");
    db.sql("UPDATE docs SET v = v + 1 WHERE id <= 5");
    db.catch_up(&config);
    let after = assert_mirrors(&db, "public.t", "id");
    assert!(
        after["delete_files"].as_u64().unwrap() > 0,
        "updates and deletes are position deletes"
    );
    assert_mirrors(&db, "public.docs", "id");
    let ops: Vec<&str> = after["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["operation"].as_str().unwrap())
        .collect();
    assert!(ops.iter().all(|o| !o.contains("replace")), "{ops:?}");

    // The index lost: rebuilt from the table before anything is written.
    std::fs::remove_dir_all(index_dir(&db)).unwrap();
    db.sql("UPDATE t SET note = 'after' WHERE id % 5 = 0");
    db.sql("DELETE FROM t WHERE id % 11 = 0");
    db.sql("UPDATE docs SET v = 100 WHERE id = 3");
    let out = db.catch_up(&config);
    assert!(
        stderr(&out).contains("Primary-key index rebuilt"),
        "{}",
        stderr(&out)
    );
    assert_mirrors(&db, "public.t", "id");
    assert_mirrors(&db, "public.docs", "id");
    // weir verify reads mirror tables too (the current state, by key).
    let out = db
        .weir(&["verify", config.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    assert!(
        report.contains("public.docs in iceberg") && report.contains(": OK: "),
        "{report}"
    );

    // Compaction applies the deletes: the thinned files are rewritten without their
    // deleted rows, the delete files go, the content stays.
    let deleted_before = read_mirror(&db, "public.t", "id")["delete_files"]
        .as_u64()
        .unwrap();
    let out = db
        .weir(&["lake", "compact", config.to_str().unwrap(), "public.t"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(
        said.contains(&format!("{deleted_before} position delete files dropped")),
        "{deleted_before} delete files before:\n{said}"
    );
    let compacted = assert_mirrors(&db, "public.t", "id");
    assert_eq!(compacted["delete_files"], 0, "{said}");
    assert_eq!(compacted["data_files"], 1, "{said}");
    let current = &compacted["current"];
    assert_eq!(current["operation"], "replace", "{current}");
    assert_eq!(current["summary"]["weir.compaction"], "true", "{current}");
    // The pipeline goes on from the compacted files: its index is remapped, not rebuilt.
    db.sql("UPDATE t SET v = v + 1000 WHERE id % 4 = 0");
    db.sql("DELETE FROM t WHERE id % 13 = 0");
    let out = db.catch_up(&config);
    let log = stderr(&out);
    assert!(log.contains("remapped to the compacted files"), "{log}");
    assert!(!log.contains("Primary-key index rebuilt"), "{log}");
    assert_mirrors(&db, "public.t", "id");

    // A truncate removes every live file; rows after it are the table.
    db.sql("TRUNCATE docs");
    db.sql("INSERT INTO docs VALUES (1, 1, 'after the truncate')");
    db.catch_up(&config);
    let docs = assert_mirrors(&db, "public.docs", "id");
    assert_eq!(docs["rows"].as_array().unwrap().len(), 1);
    assert_eq!(docs["delete_files"], 0, "{docs}");
}

#[test]
fn mirror_mode_refuses_a_keyless_table_and_a_rest_catalog() {
    let db = TestDb::new("mirror_bad");
    db.sql("CREATE TABLE k (a int, b text)");
    db.sql("ALTER TABLE k REPLICA IDENTITY FULL");
    db.sql("INSERT INTO k VALUES (1, 'x')");
    let config = mirror_config(&db, &["public.k"]);
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("public.k")
            && err.contains("has no primary key")
            && err.contains("mode = \"changelog\""),
        "{err}"
    );
    // A REST catalog cannot take a mirror commit: refused when the file is read.
    let rest = db.dir.path().join("rest.toml");
    let text = std::fs::read_to_string(&config).unwrap()
        + "\n[sink.catalog]\ntype = \"rest\"\nuri = \"http://127.0.0.1:9/catalog\"\n";
    std::fs::write(&rest, text).unwrap();
    let out = db
        .weir(&["validate", rest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"mirror\" needs the SQL catalog"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_mirror_table_is_exact_across_kill_9_and_travels_back_to_earlier_lsns() {
    let db = TestDb::new("mirror_kill");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 1000) g");
    // Maintenance compacts the table as it goes (about every second), killed or not.
    let config = mirror_config_with(
        &db,
        &["public.t"],
        "\n[sink.maintenance]\nevery = \"1s\"\ncompact = true\n",
    );
    db.catch_up(&config);
    // Source states at three LSNs where the pipeline had caught up.
    let mut points = Vec::new();
    let writer = Writer::start(db.url());
    for round in 0..4u64 {
        let mut weir = db
            .weir(&["run", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // `weir lake compact` beside the running pipeline: one of the two commits meets
        // the other's and fails its compare-and-swap (the compaction says to try again;
        // the pipeline starts again from its last commit and remaps its index).
        std::thread::sleep(Duration::from_millis(600));
        let compact = db
            .weir(&["lake", "compact", config.to_str().unwrap(), "public.t"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&compact.stdout);
        assert!(
            compact.status.success() || stderr(&compact).contains("try again"),
            "{said}{}",
            stderr(&compact)
        );
        std::thread::sleep(Duration::from_millis(600 + 350 * round));
        weir.kill().unwrap(); // SIGKILL: data files and index updates cut short
        weir.wait().unwrap();
        if round < 3 {
            // A pause in the writes: catch up and note the state and its LSN.
            let paused = writer.pause();
            db.catch_up(&config);
            let lsn = db.current_wal_lsn();
            points.push((lsn, db.rows("public.t", "id")));
            drop(paused);
        }
    }
    let [inserts, updates, deletes] = writer.finish();
    assert!(
        inserts > 50 && updates > 0 && deletes > 0,
        "{inserts} {updates} {deletes}"
    );
    db.catch_up(&config);
    let mirror = assert_mirrors(&db, "public.t", "id");
    let compactions = mirror["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["summary"]["weir.compaction"] == "true")
        .count();
    assert!(compactions > 0, "maintenance compacted nothing");
    // A ledger record for every table commit (data and delete files), none for one a
    // kill undid.
    crate::harness::assert_audit_passes(&db, &config);

    for (lsn, rows) in points {
        let out = db
            .weir(&[
                "lake",
                "query",
                config.to_str().unwrap(),
                "public.t",
                "--lsn",
                &lsn.to_string(),
                "--limit",
                "0",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        let snapshot = text
            .lines()
            .last()
            .and_then(|l| l.split("at snapshot ").nth(1))
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("no snapshot named in:\n{text}"));
        let then = read_mirror_with(PYICEBERG, &db, "public.t", "id", Some(snapshot));
        assert_eq!(
            then["rows"].as_array().unwrap(),
            &rows,
            "the table at {lsn}, read by PyIceberg"
        );
        let then = read_mirror_with(DUCKDB, &db, "public.t", "id", Some(snapshot));
        assert_eq!(
            then["rows"].as_array().unwrap(),
            &rows,
            "the table at {lsn}, read by DuckDB"
        );
    }
}

#[test]
fn a_mirror_table_holds_nested_types_read_back_equal_by_pyiceberg() {
    let db = TestDb::new("mirror_nested");
    // Every value equal to PostgreSQL's, the one a list cannot hold in _cdc_unfit.
    crate::iceberg::nested_table_reads_back(&db, &mirror_config(&db, &["public.t"]));
}

#[test]
fn a_mirror_keeps_its_text_columns_and_adds_new_ones_as_lists() {
    let db = TestDb::new("mirror_arrays");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a text[])");
    db.sql("INSERT INTO t VALUES (1, '{x,y}')");
    let config = mirror_config_with(&db, &["public.t"], "nested_types = false\n");
    db.catch_up(&config);
    // Unset now (true), with columns added: the table's text column stays text, the
    // new array is a list.
    let config = mirror_config(&db, &["public.t"]);
    db.sql("ALTER TABLE t ADD COLUMN b int[], ADD COLUMN big text");
    db.sql("INSERT INTO t VALUES (2, '{z}', '{1,NULL}')");
    db.sql("UPDATE t SET b = '{}' WHERE id = 1");
    // A TOASTed value and a list; the next update leaves the TOASTed value unchanged, so
    // the row is read back from its data file (a later interval), by column name (the
    // added columns come after the _cdc_ columns there).
    db.sql(
        "UPDATE t SET big = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g), \
         b = '{7,8}' WHERE id = 2",
    );
    db.catch_up(&config);
    db.sql("UPDATE t SET a = '{w}' WHERE id = 2");
    db.catch_up(&config);
    let read: Value = serde_json::from_slice(&py(
        "iceberg_lists.py",
        &[
            db.out().join("catalog.db").into_os_string(),
            "public.t".into(),
        ],
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read["types"]["a"], "string", "{read}");
    assert_eq!(read["types"]["b"], "list<int>", "{read}");
    let rows: Vec<(Value, Value, usize)> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let big = r["big"].as_str().map_or(0, str::len);
            (r["a"].clone(), r["b"].clone(), big)
        })
        .collect();
    assert_eq!(
        rows,
        [
            (Value::from("{x,y}"), serde_json::json!([]), 0),
            (Value::from("{w}"), serde_json::json!([7, 8]), 12_800)
        ]
    );
    let out = db
        .weir(&["verify", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
