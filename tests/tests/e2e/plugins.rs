//! Plugins as real components under the real host: the built-in transforms end to end,
//! hostile plugins, and the failure policies.

use crate::harness::{TestDb, assert_same_state, stderr};
use std::path::Path;

const MASK: (&str, &str) = ("weir-plugin-mask", "plugins/mask/weir-plugin.toml");
const FILTER: (&str, &str) = ("weir-plugin-filter", "plugins/filter/weir-plugin.toml");
const RENAME: (&str, &str) = ("weir-plugin-rename", "plugins/rename/weir-plugin.toml");
const HOSTILE: (&str, &str) = (
    "weir-test-hostile",
    "tests/plugins/hostile/weir-plugin.toml",
);

/// A pipeline file with the given `[[transform]]` sections.
fn with_transforms(db: &TestDb, tables: &[&str], transforms: &str) -> std::path::PathBuf {
    let config = db.config(tables);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{transforms}\n")).unwrap();
    config
}

fn transform(plugin: &Path, config: &str) -> String {
    format!(
        "[[transform]]\nplugin = \"{}\"\nconfig = {config}\n",
        plugin.display()
    )
}

/// A pipeline of `table` through the built-in `mask`, then `filter`, with these configs.
fn mask_then_filter(db: &TestDb, table: &str, mask: &str, filter: &str) -> std::path::PathBuf {
    let transforms = format!(
        "{}{}",
        transform(&db.plugin(MASK.0, MASK.1, |m| m), mask),
        transform(&db.plugin(FILTER.0, FILTER.1, |m| m), filter)
    );
    with_transforms(db, &[table], &transforms)
}

fn sha256_hex(data: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut out = out;
    out.stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn mask_hashes_pii_before_it_reaches_the_output() {
    let db = TestDb::new("mask");
    db.sql("CREATE TABLE customers (id int PRIMARY KEY, email text, phone text, name text)");
    let mask = db.plugin(MASK.0, MASK.1, |m| m);
    let config = with_transforms(
        &db,
        &["public.customers"],
        &transform(
            &mask,
            r#"{ salt = "pepper", tags = { pii = ["email"] }, rules = [ { tag = "pii", method = "hash" }, { columns = ["customers.phone"], method = "partial", keep = 2 } ] }"#,
        ),
    );
    db.catch_up(&config);
    db.sql("INSERT INTO customers SELECT g, 'user' || g || '@example.com', '555-01' || lpad(g::text, 2, '0'), 'n' || g FROM generate_series(1, 50) g");
    db.sql("UPDATE customers SET email = 'changed' || id || '@example.com' WHERE id <= 5");
    db.sql("DELETE FROM customers WHERE id > 45");
    db.catch_up(&config);

    let log = db.changelog("public.customers", "id");
    assert_eq!(log.duplicates, 0);
    assert_eq!(log.rows.len(), 45);
    for row in &log.rows {
        let id = row["id"].as_i64().unwrap();
        let clear = if id <= 5 {
            format!("changed{id}@example.com")
        } else {
            format!("user{id}@example.com")
        };
        assert_eq!(
            row["email"].as_str().unwrap(),
            sha256_hex(&format!("pepper{clear}")),
            "salted SHA-256 of the email"
        );
        assert_eq!(
            row["phone"].as_str().unwrap(),
            format!("******{:02}", id % 100),
            "partial: the last 2 kept"
        );
        assert_eq!(
            row["name"],
            format!("n{id}"),
            "unmasked columns pass through"
        );
    }
    let dump = std::process::Command::new("grep")
        .args(["-r", "-l", "@example.com"])
        .arg(db.out())
        .output()
        .unwrap();
    assert!(
        dump.stdout.is_empty(),
        "no clear-text email anywhere in the output"
    );
    // verify compares the masked columns as the transform makes them from the source.
    let out = db
        .weir(&["verify", config.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    assert!(
        report.contains(": OK: source 45 rows, output 45 rows"),
        "{report}"
    );
    assert!(
        report.contains("source rows compared as the transforms make them: mask@0.1.0#"),
        "{report}"
    );
}

#[test]
fn mask_then_filter_writes_only_kept_events_with_hashed_values() {
    let db = TestDb::new("maskfilter");
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, email text, status text, amount numeric(10,2))",
    );
    let config = mask_then_filter(
        &db,
        "public.orders",
        r#"{ salt = "s1", rules = [ { columns = ["email"], method = "hash" } ] }"#,
        r#"{ where = [ { column = "status", in = ["paid", "shipped"] } ] }"#,
    );
    db.catch_up(&config);
    db.sql(
        "INSERT INTO orders SELECT g, 'buyer' || g || '@example.com', \
         (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4], g * 1.5 FROM generate_series(1, 100) g",
    );
    db.sql("UPDATE orders SET status = 'paid' WHERE status = 'new'");
    db.sql("DELETE FROM orders WHERE id <= 10");
    db.catch_up(&config);

    let log = db.changelog("public.orders", "id");
    // Inserts with status paid or shipped (50), the 25 updates to paid; deletes carry only
    // the key, so their status is null and the predicate drops them.
    assert_eq!((log.op("c"), log.op("u"), log.op("d")), (50, 25, 0));
    for row in &log.rows {
        let status = row["status"].as_str().unwrap();
        assert!(status == "paid" || status == "shipped", "{row}");
        let id = row["id"].as_i64().unwrap();
        assert_eq!(
            row["email"].as_str().unwrap(),
            sha256_hex(&format!("s1buyer{id}@example.com"))
        );
    }
    let dump = std::process::Command::new("grep")
        .args(["-r", "-l", "@example.com"])
        .arg(db.out())
        .output()
        .unwrap();
    assert!(
        dump.stdout.is_empty(),
        "no clear-text email anywhere in the output"
    );
}

/// Runs the hostile plugin in `mode` under `on_error = "fail"` and returns weir's error.
fn hostile_fails(mode: &str, manifest_edit: impl Fn(String) -> String) -> (TestDb, String) {
    let db = TestDb::new(&format!("hostile_{}", mode.replace('-', "_")));
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let plugin = db.plugin(HOSTILE.0, HOSTILE.1, manifest_edit);
    let passing = transform(&plugin, "{ mode = \"poison\", every = 1000000000 }");
    // Create the slot with a plugin that passes, so the failing run has changes to fail on.
    db.catch_up(&with_transforms(&db, &["public.t"], &passing));
    let failing =
        format!("{{ mode = \"{mode}\", file = \"/etc/hostname\", env = \"WEIR_TEST_SECRET\" }}");
    let config = with_transforms(&db, &["public.t"], &transform(&plugin, &failing));
    db.sql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g");
    let after_insert = db.current_wal_lsn();
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .env("WEIR_TEST_SECRET", "hunter2")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "weir must stop on a failing plugin:\n{err}"
    );
    let last = err.trim().lines().last().unwrap_or_default().to_string();
    assert_eq!(
        last.matches("hostile@0.1.0").count(),
        1,
        "said once: {last}"
    );
    assert!(
        last.starts_with("error: plugin hostile@0.1.0"),
        "the error names plugin and version: {last}"
    );
    assert!(
        last.contains("tables public.t") && last.contains("LSN "),
        "and the tables and LSN range: {last}"
    );
    assert!(
        db.confirmed_flush().unwrap() < after_insert,
        "the slot does not pass the unprocessed changes"
    );
    assert_eq!(
        db.changelog("public.t", "id").rows.len(),
        0,
        "nothing of the failed batch was written"
    );

    // Nothing is lost: with a plugin that passes, the next run writes every row once.
    db.catch_up(&with_transforms(&db, &["public.t"], &passing));
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(t.op("c"), 100);
    (db, last)
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let (_, err) = hostile_fails("loop", |m| m);
    assert!(err.contains("ran past its 500ms deadline"), "{err}");
}

#[test]
fn a_memory_bomb_hits_the_limit() {
    let (_, err) = hostile_fails("bomb", |m| m);
    assert!(err.contains("more than its 32.0 MiB memory limit"), "{err}");
}

#[test]
fn a_trap_is_an_error_not_a_crash() {
    let (_, err) = hostile_fails("trap", |m| m);
    assert!(err.contains("trapped"), "{err}");
}

#[test]
fn malformed_output_is_refused() {
    let (_, err) = hostile_fails("garbage", |m| m);
    assert!(err.contains("malformed batch"), "{err}");
}

/// Between two transforms the batch passes as bytes, checked but not decoded: a
/// malformed one is still caught at the transform that returned it, not the next.
#[test]
fn malformed_output_is_named_before_the_next_transform_reads_it() {
    let db = TestDb::new("hostile_garbage_chain");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let hostile = db.plugin(HOSTILE.0, HOSTILE.1, |m| m);
    let filter = db.plugin(FILTER.0, FILTER.1, |m| m);
    let keep_inserts = transform(&filter, "{ ops = [\"c\"] }");
    db.catch_up(&with_transforms(&db, &["public.t"], &keep_inserts));
    db.sql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g");
    let chain = format!(
        "{}{keep_inserts}",
        transform(&hostile, "{ mode = \"garbage\" }")
    );
    let config = with_transforms(&db, &["public.t"], &chain);
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: plugin hostile@0.1.0") && last.contains("malformed batch"),
        "{last}"
    );
    assert!(!last.contains("filter"), "{last}");
    assert_eq!(
        db.changelog("public.t", "id").rows.len(),
        0,
        "nothing written"
    );
}

#[test]
fn files_environment_clock_and_network_are_denied_without_capabilities() {
    let (_, err) = hostile_fails("probe", |m| m);
    assert!(err.contains("file: denied"), "{err}");
    assert!(err.contains("env: absent"), "{err}");
    assert!(err.contains("clock: 0,"), "the clock reads zero: {err}");
    assert!(err.contains("net: denied"), "{err}");
}

#[test]
fn a_granted_environment_variable_is_visible() {
    let (_, err) = hostile_fails("probe", |m| {
        format!("{m}\n[capabilities]\nenv = [\"WEIR_TEST_SECRET\"]\nclock = true\n")
    });
    assert!(err.contains("env: present (hunter2)"), "{err}");
    assert!(!err.contains("clock: 0,"), "the real clock: {err}");
    assert!(err.contains("file: denied"), "still no files: {err}");
}

/// `on_error = "skip"`: the failing events are isolated and dropped, the rest lands,
/// and the instance is recycled after each trap.
fn skip_policy(mode: &str) {
    let db = TestDb::new(&format!("skip_{}", mode.replace('-', "_")));
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let plugin = db.plugin(HOSTILE.0, HOSTILE.1, |m| {
        m.replace("on_error = \"fail\"", "on_error = \"skip\"")
    });
    let config = with_transforms(
        &db,
        &["public.t"],
        &transform(&plugin, &format!("{{ mode = \"{mode}\", every = 10 }}")),
    );
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 200) g");
    let out = db.catch_up(&config);
    let log = db.changelog("public.t", "id");
    assert_eq!(
        log.op("c"),
        180,
        "the 20 ids divisible by 10 are skipped, the rest kept"
    );
    assert!(log.rows.iter().all(|r| r["id"].as_i64().unwrap() % 10 != 0));
    assert!(
        stderr(&out).contains("Skipped an event"),
        "skips are logged"
    );
    let err = stderr(&out);
    let total = err
        .lines()
        .find(|l| l.contains("Events skipped"))
        .unwrap_or_default();
    assert!(total.contains("events=20"), "and counted per run: {err}");
    assert!(db.confirmed_flush().is_some());
}

#[test]
fn skip_isolates_events_that_trap() {
    skip_policy("poison");
}

#[test]
fn skip_drops_events_the_plugin_reports_as_bad() {
    skip_policy("bad-event");
}

#[test]
fn validate_loads_each_transform_and_reports_a_bad_plugin_config() {
    let db = TestDb::new("validate_plugin");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let mask = db.plugin(MASK.0, MASK.1, |m| m);
    let good = with_transforms(
        &db,
        &["public.t"],
        &transform(
            &mask,
            r#"{ rules = [ { columns = ["id"], method = "hash" } ] }"#,
        ),
    );
    let out = db
        .weir(&["validate", good.to_str().unwrap(), "--offline"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("transform mask@0.1.0 (on_error fail, memory 64.0 MiB, call timeout 5s, grants: nothing)"), "{text}");
    let bad = with_transforms(
        &db,
        &["public.t"],
        &transform(
            &mask,
            r#"{ rules = [ { columns = ["id"], method = "rot13" } ] }"#,
        ),
    );
    let out = db
        .weir(&["validate", bad.to_str().unwrap(), "--offline"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("plugin mask@0.1.0 rejected its configuration: unknown variant `rot13`"),
        "{err}"
    );
}

#[test]
fn guest_output_logs_and_metrics_reach_the_host_tagged_with_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = crate::harness::install_plugin(dir.path(), HOSTILE.0, HOSTILE.1, |m| m);
    let engine = weir::plugin::PluginEngine::new(Some(dir.path().join("cache"))).unwrap();
    let config: toml::Table = "mode = \"probe\"".parse().unwrap();
    let mut hostile = weir::plugin::TransformPlugin::load(&engine, &plugin, &config).unwrap();
    use weir_sdk::plugin::testing;
    let mut batch = weir_sdk::Batch::default();
    let rel = batch.push_relation(testing::relation("s", "t", &[]));
    batch.events.push(testing::event(
        weir_sdk::Op::Insert,
        rel,
        0,
        None,
        Some(vec![]),
    ));
    assert!(hostile.apply(batch).is_err());
    let metrics = weir::plugin::Instance::metrics(&hostile);
    assert_eq!(metrics.counters.get("probes{kind=all}"), Some(&1));
    assert_eq!(metrics.gauges.get("depth"), Some(&2.5));
    assert_eq!(metrics.histograms.get("latency_ms"), Some(&vec![7.0]));
}

#[test]
fn guest_stdout_stderr_and_log_records_go_to_weirs_log() {
    let db = TestDb::new("guest_log");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let plugin = db.plugin(HOSTILE.0, HOSTILE.1, |m| m);
    // Create the slot with a passing plugin, then make a change for the probe to see.
    let passing = transform(&plugin, "{ mode = \"poison\", every = 1000000 }");
    db.catch_up(&with_transforms(&db, &["public.t"], &passing));
    db.sql("INSERT INTO t VALUES (1)");
    let config = with_transforms(
        &db,
        &["public.t"],
        &transform(&plugin, "{ mode = \"probe\" }"),
    );
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let err = stderr(&out);
    for line in [
        "hostile probe on stdout",
        "hostile probe on stderr",
        "hostile probe through the host log",
    ] {
        let found = err
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("`{line}` not logged:\n{err}"));
        assert!(
            found.contains("plugin=\"hostile@0.1.0\"") || found.contains("plugin=hostile@0.1.0"),
            "tagged: {found}"
        );
    }
}

#[test]
fn a_slow_stage_does_not_let_wal_sender_timeout_expire() {
    let db = TestDb::new("backpressure");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    // A role whose WAL sender gives up after one second without a reply.
    let role = format!("impatient_{}", db.name);
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER; ALTER ROLE {role} SET wal_sender_timeout = '1s'"
    ));
    let plugin = db.plugin(HOSTILE.0, HOSTILE.1, |m| {
        format!(
            "{}\n[capabilities]\nclock = true\n",
            m.replace("call_timeout = \"500ms\"", "call_timeout = \"10s\"")
        )
    });
    let config = db.config_with(&["public.t"], "", "max_events = 50", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    std::fs::write(
        &config,
        format!(
            "{text}\n{}",
            transform(&plugin, "{ mode = \"slow\", every = 1500 }")
        ),
    )
    .unwrap();
    db.catch_up(&config);
    for i in 0..6 {
        db.sql(&format!(
            "INSERT INTO t SELECT g, 'v' FROM generate_series({}, {}) g",
            i * 50 + 1,
            i * 50 + 50
        ));
    }
    // Six batches at 1.5 s each: the pipeline is blocked for far longer than the timeout;
    // the replication client keeps answering the server meanwhile (pgwire-replication
    // replies to keepalives while its buffer is full, whatever weir's status interval).
    let started = std::time::Instant::now();
    db.catch_up(&config);
    assert!(
        started.elapsed() > std::time::Duration::from_secs(5),
        "the stage really was slow"
    );
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(t.op("c"), 300);

    // The timeout is real for this role: a weir frozen for four seconds loses its
    // connection, reconnects by itself from its checkpoint, and loses nothing.
    let mut frozen = db.spawn(&config);
    std::thread::sleep(std::time::Duration::from_secs(2));
    db.sql("INSERT INTO t VALUES (1000, 'during the freeze')");
    let pid = frozen.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        frozen.try_wait().unwrap().is_none(),
        "weir reconnected instead of stopping"
    );
    assert_eq!(
        crate::recovery::unsafe_kill(frozen.id() as i32, libc::SIGTERM),
        0
    );
    let out = frozen.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("reconnecting and resuming from the checkpoint"),
        "the server dropped the frozen weir's connection: {log}"
    );
    db.catch_up(&config);
    assert_eq!(assert_same_state(&db, "public.t", "id").op("c"), 301);
}

#[test]
fn a_stop_that_takes_longer_than_shutdown_timeout_exits_anyway_and_loses_nothing() {
    let db = TestDb::new("shutdown_timeout");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let plugin = db.plugin(HOSTILE.0, HOSTILE.1, |m| {
        format!(
            "{}\n[capabilities]\nclock = true\n",
            m.replace("call_timeout = \"500ms\"", "call_timeout = \"30s\"")
        )
    });
    let fast = db.config(&["public.t"]);
    let slow = db.dir.path().join("slow.toml");
    let text = std::fs::read_to_string(&fast).unwrap();
    std::fs::write(
        &slow,
        format!(
            "shutdown_timeout = \"1s\"\n{text}\n{}",
            transform(&plugin, "{ mode = \"slow\", every = 8000 }")
        ),
    )
    .unwrap();
    db.catch_up(&fast);
    db.sql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 20) g");
    let mut weir = db.spawn(&slow);
    std::thread::sleep(std::time::Duration::from_secs(3)); // inside an 8 s transform call
    let asked = std::time::Instant::now();
    assert_eq!(
        crate::recovery::unsafe_kill(weir.id() as i32, libc::SIGTERM),
        0
    );
    let status = crate::recovery::wait_with_timeout(&mut weir, std::time::Duration::from_secs(10));
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(4),
        "exited within shutdown_timeout, not after the batch: {:?}",
        asked.elapsed()
    );
    assert!(!status.success(), "a stop cut short is not a clean exit");
    db.catch_up(&fast);
    assert_eq!(assert_same_state(&db, "public.t", "id").op("c"), 20);
}

#[test]
fn mask_hashes_each_element_of_an_array_and_filter_keeps_rows_that_contain_one() {
    let db = TestDb::new("maskarray");
    db.sql("CREATE TABLE people (id int PRIMARY KEY, emails text[], tags text[])");
    let config = mask_then_filter(
        &db,
        "public.people",
        r#"{ salt = "s1", rules = [ { columns = ["emails"], method = "hash" } ] }"#,
        r#"{ where = [ { column = "tags", contains = "vip" } ] }"#,
    );
    db.sql(
        "INSERT INTO people SELECT g, ARRAY['a' || g || '@example.com', NULL, 'b' || g || '@example.com'], \
         CASE WHEN g % 2 = 0 THEN ARRAY['vip', 'x y'] ELSE ARRAY['new'] END FROM generate_series(1, 10) g",
    );
    db.catch_up(&config);
    db.sql("INSERT INTO people VALUES (11, '{}', '{vip}')");
    db.catch_up(&config);

    let log = db.changelog("public.people", "id");
    let ids: Vec<i64> = log.rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [2, 4, 6, 8, 10, 11], "rows whose tags contain vip");
    for row in &log.rows {
        let id = row["id"].as_i64().unwrap();
        let expected: serde_json::Value = match id {
            11 => serde_json::json!([]),
            _ => serde_json::json!([
                sha256_hex(&format!("s1a{id}@example.com")),
                null,
                sha256_hex(&format!("s1b{id}@example.com"))
            ]),
        };
        assert_eq!(
            row["emails"], expected,
            "a list of hashes, NULL kept: {row}"
        );
    }
}

/// Plugins that take nested types get lists and structs, one that does not gets text,
/// and every value of every structured type comes out as the source has it.
#[test]
fn plugins_get_lists_and_structs_or_text_as_they_ask_and_every_value_comes_back_whole() {
    let db = TestDb::new("nestedplugins");
    let text_filter = db.plugin(FILTER.0, FILTER.1, |m| {
        assert!(m.contains("nested_types = true"));
        m.replace("nested_types = true", "nested_types = false")
    });
    let transforms = format!(
        "{}{}{}",
        transform(
            &db.plugin(MASK.0, MASK.1, |m| m),
            r#"{ rules = [ { columns = ["a2"], method = "redact" } ] }"#
        ),
        transform(&text_filter, r#"{ where = [ { column = "id", ge = 0 } ] }"#),
        transform(
            &db.plugin(RENAME.0, RENAME.1, |m| m),
            r#"{ columns = { "absent" = "still_absent" } }"#
        ),
    );
    let config = with_transforms(&db, &["public.t"], &transforms);
    let specs = crate::types::nested_table(&db, &config);
    let read: serde_json::Value = serde_json::from_slice(&crate::harness::py(
        "lists.py",
        &[db.out().join("public").join("t")],
    ))
    .unwrap();
    // Through mask, a filter given text, and rename: every other column as the source.
    let untouched: Vec<_> = specs.iter().filter(|s| s.0 != "a2").cloned().collect();
    assert_eq!(untouched.len(), specs.len() - 1);
    crate::types::assert_nested_values(&db, &untouched, &read);
    // mask was given `int4[][]` as a list of lists: each element redacted in place (as
    // text it would have seen two elements, `{1,2}` and `{3,NULL}`).
    let r = "[redacted]";
    let a2: Vec<serde_json::Value> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["a2"].clone())
        .collect();
    let two = serde_json::json!([[r, r], [r, null]]);
    let empty = serde_json::json!([]);
    let null = serde_json::Value::Null;
    assert_eq!(
        a2,
        [two.clone(), empty.clone(), null.clone(), two, empty, null]
    );
}
