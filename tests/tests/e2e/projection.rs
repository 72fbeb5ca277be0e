//! The PostgreSQL projection sink (`type = "postgres"`) against a second, real PostgreSQL
//! server: current state through `kill -9` of weir and a restart of the target, the
//! provenance ledger recomputed from the Parquet changelog, tombstones, changelog mode,
//! renames, schema changes, unchanged TOAST values and refused changes set aside.

use crate::harness::{TestDb, python, stderr};
use crate::recovery::Writer;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use weir::pgtemp::TempPostgres;

/// A target database of its own on a target server.
struct Target<'a> {
    pg: &'a TempPostgres,
    db: String,
}

/// The target server shared by tests that do not restart it.
fn shared_target() -> &'static TempPostgres {
    static PG: OnceLock<TempPostgres> = OnceLock::new();
    PG.get_or_init(|| TempPostgres::start().expect("start the target PostgreSQL"))
}

impl<'a> Target<'a> {
    fn new(pg: &'a TempPostgres, name: &str) -> Target<'a> {
        pg.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap();
        Target {
            pg,
            db: name.into(),
        }
    }

    fn url(&self) -> String {
        self.pg.url(&self.db)
    }

    fn sql(&self, sql: &str) -> String {
        self.pg
            .psql(&self.db, sql)
            .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"))
    }
}

/// Appends a postgres sink with `extra` TOML lines to the pipeline file.
fn with_projection(config: &Path, target: &Target, extra: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[[sink]]\ntype = \"postgres\"\nurl = \"{}\"\n{extra}\n",
        target.url()
    ));
    std::fs::write(config, text).unwrap();
}

/// The rows of `select` (ordered) as one JSON text, from either side.
fn json_rows(run: impl Fn(&str) -> String, select: &str, order: &str) -> String {
    run(&format!(
        "SELECT coalesce(json_agg(r ORDER BY {order}), '[]') FROM ({select}) r"
    ))
    .trim()
    .to_string()
}

fn assert_equal_tables(db: &TestDb, target: &Target, source: &str, projected: &str, columns: &str) {
    let parse = |text: String| -> Vec<serde_json::Value> { serde_json::from_str(&text).unwrap() };
    let src = parse(json_rows(
        |q| db.sql(q),
        &format!("SELECT {columns} FROM {source}"),
        "r.id",
    ));
    let dst = parse(json_rows(
        |q| target.sql(q),
        &format!("SELECT {columns} FROM {projected}"),
        "r.id",
    ));
    assert!(!src.is_empty(), "the source has rows");
    let first = src.iter().zip(&dst).find(|(a, b)| a != b);
    assert!(
        src == dst,
        "{projected} in the target differs from {source}: {} rows there, {} in the source; first difference: {first:?}",
        dst.len(),
        src.len()
    );
}

#[test]
fn a_mirror_equals_the_source_through_kill_9_and_a_target_restart_with_its_ledger() {
    let db = TestDb::new("proj_kill9");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT g, 0, 'seed' FROM generate_series(1, 50) g");
    let target_pg = TempPostgres::start().unwrap();
    let target = Target::new(&target_pg, "mirror");
    let config = db.config_with(&["public.t"], "", "max_events = 200", "");
    with_projection(&config, &target, "schema = \"replica\"\nname = \"shop\"");
    db.catch_up(&config);
    let writer = Writer::start_at(db.url(), 51);
    for round in 0..6 {
        let mut weir = db.spawn(&config);
        std::thread::sleep(Duration::from_millis(700 + 300 * round));
        if round == 3 {
            // The target goes away under a running pipeline, and comes back.
            target_pg.restart(Duration::from_millis(1500)).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        }
        weir.kill().unwrap();
        weir.wait().unwrap();
    }
    let [inserts, ..] = writer.finish();
    assert!(inserts > 50, "the writer made progress ({inserts} inserts)");
    db.catch_up(&config);
    assert_equal_tables(&db, &target, "t", "replica.t", "id, v, note");

    // One ledger row per source transaction that touched the table, none twice.
    let log_lsns = crate::harness::read_changelog(&db.out().join("public/t"), "id").max_commit_lsn;
    assert!(log_lsns > 0);
    let ledger: serde_json::Value = serde_json::from_str(&target.sql(
        "SELECT json_object_agg((commit_lsn - '0/0'::pg_lsn)::bigint::text, evidence_id) FROM weir.projection_ledger WHERE projection = 'shop'",
    ))
    .unwrap();
    let recomputed = evidence(&db.out(), "shop", "", &[("public.t", "public/t")]);
    let ledger = ledger.as_object().unwrap();
    assert_eq!(
        ledger.len(),
        recomputed.as_object().unwrap().len(),
        "one ledger row per source transaction in the changelog"
    );
    assert_eq!(
        &serde_json::Value::Object(ledger.clone()),
        &recomputed,
        "every evidence_id recomputed from the Parquet changelog"
    );
    let checkpoint = target.sql("SELECT end_lsn FROM weir.checkpoints WHERE sink = 'shop'");
    assert!(
        !checkpoint.trim().is_empty(),
        "the checkpoint is in the target"
    );
}

/// Evidence ids recomputed from the Parquet changelog by `tests/py/evidence.py`.
fn evidence(
    out: &Path,
    projection: &str,
    transforms: &str,
    tables: &[(&str, &str)],
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/evidence.py");
    let mut args: Vec<String> = vec![projection.into(), transforms.into()];
    args.extend(
        tables
            .iter()
            .map(|(t, d)| format!("{t}={}", out.join(d).display())),
    );
    let run = Command::new(python())
        .arg(script)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

#[test]
fn tombstones_a_changelog_and_a_renamed_table_side_by_side() {
    let db = TestDb::new("proj_modes");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let target = Target::new(shared_target(), "proj_modes");
    let config = db.config(&["public.t"]);
    with_projection(
        &config,
        &target,
        "schema = \"tomb\"\nname = \"tomb\"\ndeletes = \"tombstone\"\ntables = { \"public.t\" = \"t_v1\" }",
    );
    with_projection(
        &config,
        &target,
        "schema = \"log\"\nname = \"log\"\nmode = \"changelog\"",
    );
    let out = db
        .weir(&["validate", config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        said.contains("target    sink 1: would create \"tomb\".\"t_v1\""),
        "{said}"
    );
    assert!(
        said.contains("target    sink 2: would create \"log\".\"t\""),
        "{said}"
    );
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
    db.sql("UPDATE t SET v = 'b' WHERE id <= 3");
    db.sql("DELETE FROM t WHERE id IN (4, 5)");
    db.sql("UPDATE t SET id = 100 WHERE id = 10");
    db.catch_up(&config);
    let live = target.sql(
        "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM tomb.t_v1 WHERE NOT _cdc_deleted",
    );
    let source = db.sql("SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t");
    assert_eq!(
        live, source,
        "the live rows of the tombstone projection are the source"
    );
    assert_eq!(
        target
            .sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM tomb.t_v1 WHERE _cdc_deleted")
            .trim(),
        "4,5,10",
        "deleted rows (and the old key of a key change) stay as tombstones"
    );
    let ops = target.sql("SELECT string_agg(_cdc_op || '=' || n, ',' ORDER BY _cdc_op) FROM (SELECT _cdc_op, count(*) n FROM log.t GROUP BY 1) x");
    assert_eq!(ops.trim(), "c=11,d=3,u=3", "one changelog row per change");
    db.sql("TRUNCATE t");
    db.catch_up(&config);
    assert_eq!(
        target
            .sql("SELECT count(*) FROM tomb.t_v1 WHERE NOT _cdc_deleted")
            .trim(),
        "0"
    );
    assert_eq!(
        target
            .sql("SELECT count(*) FROM log.t WHERE _cdc_op = 't'")
            .trim(),
        "1"
    );
    // weir status reads each projection's checkpoint from its target.
    let status = db
        .weir(&["status", config.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let checkpoint = target.sql("SELECT end_lsn FROM weir.checkpoints WHERE sink = 'tomb'");
    assert_eq!(status["sinks"][1]["kind"], "postgres");
    assert_eq!(
        status["sinks"][1]["checkpoint"]["end_lsn"],
        checkpoint.trim(),
        "{status}"
    );
}

#[test]
fn a_schema_change_mid_stream_changes_the_target_table() {
    let db = TestDb::new("proj_ddl");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a int, gone text)");
    let target = Target::new(shared_target(), "proj_ddl");
    let config = db.config(&["public.t"]);
    with_projection(&config, &target, "");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, g, 'x' FROM generate_series(1, 5) g");
    db.catch_up(&config);
    db.sql("ALTER TABLE t ADD COLUMN extra text DEFAULT 'd'");
    db.sql("INSERT INTO t VALUES (6, 6, 'y', 'e')");
    db.sql("ALTER TABLE t ALTER COLUMN a TYPE bigint");
    db.sql("UPDATE t SET a = 10000000000 WHERE id = 1");
    db.sql("ALTER TABLE t DROP COLUMN gone");
    db.sql("INSERT INTO t VALUES (7, 7, 'f')");
    db.catch_up(&config);
    assert_equal_tables(&db, &target, "t", "public.t", "id, a");
    assert_eq!(
        target.sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = 'a'").trim(),
        "bigint",
        "the type change reached the target"
    );
    assert_eq!(
        target.sql("SELECT extra FROM public.t WHERE id = 6").trim(),
        "e"
    );
    assert_eq!(
        target.sql("SELECT extra FROM public.t WHERE id = 2").trim(),
        "d",
        "a row untouched since the column was added holds its default"
    );
    assert_eq!(
        target
            .sql("SELECT coalesce(gone, 'null') FROM public.t WHERE id = 7")
            .trim(),
        "null",
        "a dropped column stays, null in later rows"
    );
}

#[test]
fn an_unchanged_toast_value_is_kept_in_the_target() {
    let db = TestDb::new("proj_toast");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int, big text)");
    let target = Target::new(shared_target(), "proj_toast");
    let config = db.config(&["public.t"]);
    with_projection(&config, &target, "");
    db.catch_up(&config);
    // Incompressible, so it is stored out of line.
    db.sql("INSERT INTO t SELECT g, 0, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i) FROM generate_series(1, 3) g");
    db.catch_up(&config);
    db.sql("UPDATE t SET v = 1 WHERE id = 1");
    db.sql(
        "BEGIN; UPDATE t SET big = 'small' WHERE id = 2; UPDATE t SET v = 2 WHERE id = 2; COMMIT",
    );
    db.catch_up(&config);
    assert_equal_tables(&db, &target, "t", "public.t", "id, v, md5(big) AS big");
}

#[test]
fn a_change_the_target_refuses_is_set_aside_and_replayed_after_the_fix() {
    let db = TestDb::new("proj_refused");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, email text)");
    let target = Target::new(shared_target(), "proj_refused");
    let config = db.config(&["public.t"]);
    with_projection(&config, &target, "on_error = \"dead-letter\"");
    db.sql("INSERT INTO t VALUES (1, 'a@x')");
    db.catch_up(&config);
    target.sql("CREATE UNIQUE INDEX ON public.t (email)");
    db.sql("INSERT INTO t VALUES (2, 'a@x'), (3, 'b@x')");
    db.catch_up(&config);
    assert_eq!(
        target
            .sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.t")
            .trim(),
        "1,3",
        "the refused row is set aside, the rest applied"
    );
    let list = db
        .weir(&["dead-letter", "list", config.to_str().unwrap()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("public.t") && listed.contains("sink-1"),
        "{listed}\n{}",
        stderr(&list)
    );
    // The fix, then the replay.
    target.sql("DROP INDEX public.t_email_idx");
    let replay = db
        .weir(&["dead-letter", "replay", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_equal_tables(&db, &target, "t", "public.t", "id, email");
}

#[test]
fn a_target_that_cannot_take_the_projection_is_one_clear_error_and_the_checkpoint_stays() {
    let db = TestDb::new("proj_bad");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let target = Target::new(shared_target(), "proj_bad");
    target.sql("CREATE TABLE public.t (id int PRIMARY KEY, v int, _cdc_commit_lsn pg_lsn)");
    let config = db.config(&["public.t"]);
    with_projection(&config, &target, "");
    // validate says it first, and writes nothing.
    let out = db
        .weir(&["validate", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("column v is integer there, text in the source"),
        "{}",
        stderr(&out)
    );
    db.catch_up(&config);
    let before = db.confirmed_flush();
    db.sql("INSERT INTO t VALUES (1, 'x')");
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("column v is integer there, text in the source"),
        "{err}"
    );
    assert_eq!(db.confirmed_flush(), before, "the checkpoint did not move");

    // A table without a primary key cannot be mirrored.
    let other = TestDb::new("proj_keyless");
    other.sql("CREATE TABLE k (a int, b text)");
    other.sql("ALTER TABLE k REPLICA IDENTITY FULL");
    let keyless = other.config(&["public.k"]);
    with_projection(&keyless, &target, "schema = \"k\"\nname = \"k\"");
    let out = other
        .weir(&["run", keyless.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("table public.k has no primary key: mode = \"mirror\""),
        "{}",
        stderr(&out)
    );

    // An unreachable target.
    let unreachable = db.config(&["public.t"]);
    let dead = Target {
        pg: shared_target(),
        db: "x".into(),
    };
    let mut text = std::fs::read_to_string(&unreachable).unwrap();
    text.push_str(&format!(
        "\n[[sink]]\ntype = \"postgres\"\nurl = \"{}\"\n",
        dead.url().replace(&shared_target().port().to_string(), "1")
    ));
    text.push_str("\n[retry]\nattempts = 1\n");
    std::fs::write(&unreachable, text).unwrap();
    let out = db
        .weir(&["run", unreachable.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_projection_added_later_is_filled_by_replay_from_the_changelog_then_streams() {
    let db = TestDb::new("proj_replay");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, price numeric(10,2), at timestamptz, day date, \
         uid uuid, ok bool, f4 real, f8 float8, raw bytea, doc jsonb, note text, \
         tags text[], valid tstzrange, iv interval, grid int[][])",
    );
    // The changelog holds the last four as lists and structs (nested_types), which
    // replay gives the projection back as PostgreSQL's values.
    let row = |id: i32| {
        format!(
            "({id}, {id}.25, '2026-01-02 03:04:05.{id:06}+00', '2026-02-03', gen_random_uuid(), {}, 1.1, 0.1, '\\x00ff', '{{\"k\": {id}}}', 'tab\there', \
             ARRAY['a{id}', NULL, 'x y', '\"q\"'], tstzrange('2026-01-01', NULL, '(]'), '-{id} mons {id} days -00:00:01.5', '{{{{1,{id}}},{{NULL,3}}}}')",
            id % 2 == 0
        )
    };
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    let rows: Vec<String> = (1..=20).map(row).collect();
    db.sql(&format!("INSERT INTO t VALUES {}", rows.join(", ")));
    db.sql("UPDATE t SET note = 'changed', price = 9.99 WHERE id <= 5");
    db.sql("DELETE FROM t WHERE id IN (6, 7)");
    db.catch_up(&config);

    // A projection added now has none of that history: the run says how to fill it.
    let target = Target::new(shared_target(), "proj_replay");
    with_projection(&config, &target, "");
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("weir replay PIPELINE --sink 1"),
        "{}",
        stderr(&out)
    );

    let replay = |from: Option<&str>| {
        let mut args = vec!["replay", config.to_str().unwrap(), "--sink", "1"];
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        let out = db.weir(&args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = replay(None);
    assert!(
        said.contains("replayed 27 changes in 3 transactions"),
        "{said}"
    );
    let columns = "id, price::text, at::text, day::text, uid::text, ok, f4::text, f8::text, raw::text, doc::text, note, tags::text, valid::text, iv::text, grid::text";
    assert_equal_tables(&db, &target, "t", "public.t", columns);

    // The stream takes over where the changelog ended.
    db.sql(&format!("INSERT INTO t VALUES {}", row(21)));
    db.sql("UPDATE t SET ok = NOT ok WHERE id = 1");
    db.catch_up(&config);
    assert_equal_tables(&db, &target, "t", "public.t", columns);

    // A --from the changelog does not reach back to is refused (it starts with the
    // initial snapshot; 0/0 means all of it).
    let out = db
        .weir(&[
            "replay",
            config.to_str().unwrap(),
            "--sink",
            "1",
            "--from",
            "0/1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not reach back that far"),
        "{}",
        stderr(&out)
    );

    // A damaged projection is rebuilt from the start of the changelog.
    target.sql("TRUNCATE public.t");
    replay(Some("0/0"));
    assert_equal_tables(&db, &target, "t", "public.t", columns);
    db.catch_up(&config);
    // One ledger row per source transaction of the changelog, whether replayed or
    // streamed (the Parquet changelog's transactions, as DuckDB reads them).
    let ledger: serde_json::Value = serde_json::from_str(&target.sql(
        "SELECT json_agg((commit_lsn - '0/0'::pg_lsn)::bigint::text ORDER BY commit_lsn) FROM weir.projection_ledger",
    ))
    .unwrap();
    let log = evidence(&db.out(), "x", "", &[("public.t", "public/t")]);
    let mut lsns: Vec<&String> = log.as_object().unwrap().keys().collect();
    lsns.sort_by_key(|l| l.parse::<u64>().unwrap());
    let ledger: Vec<&str> = ledger
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        ledger, lsns,
        "the ledger names each transaction of the changelog once"
    );
}

#[test]
fn a_wrong_password_and_a_missing_right_on_the_target_are_named() {
    let db = TestDb::new("proj_rights");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let pg = shared_target();
    let target = Target::new(pg, "proj_rights");
    pg.psql("postgres", "CREATE ROLE weir_weak LOGIN PASSWORD 'right'")
        .unwrap();
    pg.prepend_hba("host all weir_weak 127.0.0.1/32 scram-sha-256")
        .unwrap();
    let as_weak = |password: &str| {
        target
            .url()
            .replace("postgres@", &format!("weir_weak:{password}@"))
    };
    for (password, said) in [
        (
            "wrong",
            "authentication failed for user `weir_weak`: check the password in the postgres sink's url",
        ),
        ("right", "GRANT CREATE ON DATABASE"),
    ] {
        let config = db.config(&["public.t"]);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[[sink]]\ntype = \"postgres\"\nurl = \"{}\"\n",
            as_weak(password)
        ));
        std::fs::write(&config, text).unwrap();
        let file = config.to_str().unwrap();
        for command in [
            vec!["validate", file],
            vec!["run", file, "--until-caught-up"],
        ] {
            let out = db.weir(&command).output().unwrap();
            assert!(
                !out.status.success(),
                "{command:?} with password {password}"
            );
            assert!(stderr(&out).contains(said), "{command:?}: {}", stderr(&out));
        }
        assert!(
            db.sql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
                db.name
            ))
            .trim()
                == "0",
            "nothing was created on the source"
        );
    }
}

#[test]
fn a_projection_holds_what_the_transforms_made_through_snapshot_stream_and_backfill() {
    let db = TestDb::new("proj_mask");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), v int)");
    db.sql("INSERT INTO t SELECT g, g * 1.5, 0 FROM generate_series(1, 20) g");
    let mask = db.plugin("weir-plugin-mask", "plugins/mask/weir-plugin.toml", |m| m);
    let config = db.config(&["public.t"]);
    let target = Target::new(shared_target(), "proj_mask");
    with_projection(&config, &target, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[transform]]\nplugin = \"{}\"\nconfig = {{ salt = \"s\", rules = [ {{ columns = [\"amount\"], method = \"hash\" }} ] }}\n",
        mask.display()
    ));
    std::fs::write(&config, text).unwrap();
    db.catch_up(&config); // the initial snapshot, through the transform
    db.sql("UPDATE t SET v = 1 WHERE id <= 5");
    db.sql("DELETE FROM t WHERE id = 20");
    let out = db
        .weir(&["snapshot", config.to_str().unwrap(), "--table", "public.t"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    db.sql("UPDATE t SET v = 2 WHERE id = 1");
    db.catch_up(&config); // the stream, and the backfill at its watermark
    assert_eq!(
        target
            .sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = 'amount'")
            .trim(),
        "text",
        "a masked column is text in the target"
    );
    assert_equal_tables(&db, &target, "t", "public.t", "id, v");
    // The masked values are the ones the changelog holds (read by DuckDB).
    let log = db.changelog("public.t", "id");
    let masked: Vec<serde_json::Value> =
        serde_json::from_str(&target.sql("SELECT json_agg(amount ORDER BY id) FROM public.t"))
            .unwrap();
    let expected: Vec<serde_json::Value> = log.rows.iter().map(|r| r["amount"].clone()).collect();
    assert_eq!(masked, expected);
    assert!(
        masked
            .iter()
            .all(|m| m.as_str().is_some_and(|s| s != "1.50" && s.len() > 10)),
        "{masked:?}"
    );
}

#[test]
fn a_pipeline_whose_only_sink_is_a_projection_snapshots_streams_and_resumes() {
    let db = TestDb::new("proj_only");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO t SELECT g, 'seed' FROM generate_series(1, 30) g");
    let target = Target::new(shared_target(), "proj_only");
    let config = db.dir.path().join("only.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [\"public.t\"]\n\n\
             [batch]\nmax_delay = \"100ms\"\n\n\
             [[sink]]\ntype = \"postgres\"\nurl = \"{}\"\n\n\
             [state]\nurl = \"file://{}\"\n",
            db.url(),
            db.name,
            db.name,
            target.url(),
            db.dir.path().join("state").display()
        ),
    )
    .unwrap();
    db.catch_up(&config); // the initial snapshot
    assert_equal_tables(&db, &target, "t", "public.t", "id, v");
    db.sql("UPDATE t SET v = 'x' WHERE id % 3 = 0");
    db.sql("DELETE FROM t WHERE id > 25");
    let mut weir = db.spawn(&config);
    db.wait_slot_active();
    db.sql("INSERT INTO t VALUES (100, 'while running')");
    std::thread::sleep(Duration::from_secs(2));
    weir.kill().unwrap();
    weir.wait().unwrap();
    db.sql("INSERT INTO t VALUES (101, 'after the kill')");
    db.catch_up(&config);
    assert_equal_tables(&db, &target, "t", "public.t", "id, v");
    assert_eq!(
        target.sql("SELECT count(*) FROM weir.checkpoints").trim(),
        "1",
        "one checkpoint row for the projection"
    );
}

#[test]
fn arrays_ranges_intervals_composites_and_enums_are_projected_into_the_same_types() {
    let db = TestDb::new("proj_nested");
    let target = Target::new(shared_target(), "proj_nested");
    for sql in [
        "CREATE TYPE pair AS (a int, b text)",
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
    ] {
        db.sql(sql);
        target.sql(sql);
    }
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, tags text[], grid int[][], r int4range, \
         span interval, p pair, m mood, ps pair[], doc jsonb)",
    );
    db.sql(
        "INSERT INTO t SELECT g, ARRAY['t' || g, NULL, 'a,\"b\"'], ARRAY[[g, 2], [3, NULL]], \
         int4range(g, g + 5), make_interval(months => g, secs => -g / 3.0), ROW(g, 'x ' || g)::pair, \
         'happy', ARRAY[ROW(g, NULL)::pair], jsonb_build_object('g', g) \
         FROM generate_series(1, 20) g",
    );
    let config = db.config(&["public.t"]);
    with_projection(&config, &target, "");
    db.catch_up(&config);
    db.sql("UPDATE t SET tags = '{}', r = 'empty', p = ROW(NULL, ''), m = 'sad' WHERE id % 3 = 0");
    db.sql("UPDATE t SET grid = NULL, span = '-1 days +00:00:01', ps = '{}' WHERE id % 4 = 0");
    db.sql("DELETE FROM t WHERE id = 7");
    db.catch_up(&config);
    let columns = "id, tags, grid, r, span, p, m, ps, doc";
    assert_equal_tables(&db, &target, "public.t", "public.t", columns);
    let types = "SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
                 FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attnum > 0 \
                 AND NOT attisdropped AND attname NOT LIKE '\\_%'";
    assert_eq!(
        target.sql(types).trim(),
        db.sql(types).trim(),
        "the same types in the target (weir's own columns aside)"
    );
}
