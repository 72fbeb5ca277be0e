//! Operations: the Prometheus and health endpoint during a run, and `weir status`.

use crate::harness::{TestDb, stderr};
use crate::recovery::{unsafe_kill, wait_with_timeout};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A plain HTTP GET on the loopback endpoint: (status code, body).
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// A loopback port nothing listens on.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until `/readyz` answers 200.
pub(crate) fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(port, "/readyz").is_none_or(|(code, _)| code != 200) {
        assert!(
            Instant::now() < deadline,
            "never ready: {:?}",
            get(port, "/readyz")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `/metrics` text.
pub(crate) fn scrape(port: u16) -> String {
    let (code, body) = get(port, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(code, 200);
    body
}

/// A pipeline of table `t` whose column `v` the `mask` transform redacts, with `extra`
/// TOML at the end.
fn masked_config(db: &TestDb, extra: &str) -> std::path::PathBuf {
    let mask = db.plugin("weir-plugin-mask", "plugins/mask/weir-plugin.toml", |m| m);
    let config = db.config(&["public.t"]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[[transform]]\nplugin = \"{}\"\nconfig = {{ rules = [ {{ columns = [\"t.v\"], method = \"redact\" }} ] }}\n\n{extra}",
            mask.display()
        ),
    )
    .unwrap();
    config
}

/// The value of the first sample whose line starts with `prefix` and has `label`.
fn labelled(metrics: &str, prefix: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_and_health_are_served_during_a_run_and_counters_move() {
    let db = TestDb::new("metrics");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let port = free_port();
    let config = masked_config(&db, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    db.catch_up(&config);
    let mut weir = db.spawn(&config);
    wait_ready(port);
    assert_eq!(get(port, "/healthz").unwrap().0, 200);

    let written = |port| {
        let (code, body) = get(port, "/metrics").unwrap();
        assert_eq!(code, 200);
        (sample(&body, "weir_events_written_total{"), body)
    };
    db.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 300) g");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let (n, body) = written(port);
        if n == Some(300.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for family in [
        "weir_replication_lag_bytes{",
        "weir_replication_lag_seconds{",
        "weir_checkpoint_lsn{",
        "weir_slot_retained_wal_bytes{",
        "weir_connected{",
        "weir_batches_total{",
        "weir_durable_commit_timestamp_seconds{",
        "weir_sink_call_seconds_total{",
        "weir_plugin_call_seconds_total{",
        "weir_plugin_errors_total{",
    ] {
        assert!(sample(&first, family).is_some(), "{family} in\n{first}");
    }
    // Read and written per table and op; each sink and plugin counted and healthy.
    let read = first
        .lines()
        .find(|l| l.starts_with("weir_events_read_total{") && l.contains("op=\"c\""));
    assert!(
        read.is_some_and(|l| l.contains("table=\"public.t\"") && l.ends_with(" 300")),
        "{first}"
    );
    assert!(sample(&first, "weir_events_decoded_total{").unwrap() >= 300.0);
    assert!(sample(&first, "weir_sink_calls_total{").unwrap() >= 1.0);
    assert_eq!(sample(&first, "weir_sink_errors_total{"), Some(0.0));
    assert_eq!(sample(&first, "weir_sink_healthy{"), Some(1.0));
    assert!(
        first.contains("sink=\"parquet file://"),
        "sinks are named by kind and place: {first}"
    );
    let calls = labelled(&first, "weir_plugin_calls_total{", "plugin=\"mask\"");
    assert!(calls.is_some_and(|n| n >= 1.0), "{first}");
    assert_eq!(
        labelled(&first, "weir_plugin_healthy{", "plugin=\"mask\""),
        Some(1.0)
    );
    assert!(sample(&first, "weir_batch_duration_seconds_count{").unwrap() >= 1.0);

    // The live state, as `weir status` shows it.
    let (code, live) = get(port, "/status").unwrap();
    assert_eq!(code, 200);
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(
        (live["state"].as_str(), live["ready"].as_bool()),
        (Some("streaming"), Some(true)),
        "{live}"
    );
    let status = db
        .weir(&["status", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        text.contains("state       streaming, ready")
            && text.contains("plugin      mask: healthy")
            && text.contains("last commit ")
            && text.lines().any(|l| l.trim_start().starts_with("healthy,")),
        "{text}"
    );
    assert!(
        first.contains("table=\"public.t\"") && first.contains("op=\"c\""),
        "{first}"
    );
    assert_eq!(sample(&first, "weir_connected{"), Some(1.0));
    let checkpoint = sample(&first, "weir_checkpoint_lsn{").unwrap();

    db.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(301, 500) g");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (n, body) = written(port);
        let moved = sample(&body, "weir_checkpoint_lsn{").unwrap() > checkpoint;
        if n == Some(500.0) && moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters and checkpoint move: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The Parquet files completed by the flushes are counted.
    let written = labelled(
        &scrape(port),
        "weir_sink_bytes_written_total{",
        "sink=\"parquet",
    );
    assert!(written.is_some_and(|b| b > 500.0), "{written:?}");
    assert_eq!(get(port, "/nope").unwrap().0, 404);
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
}

/// Waits (up to 60 s) until `/metrics` on `port` has a sample starting with `prefix`,
/// with `label`, of value `value`; returns the text.
fn wait_for_sample(port: u16, prefix: &str, label: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Not served yet while the run starts.
        let body = get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        if labelled(&body, prefix, label) == Some(value) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix} {label} = {value} in\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn snapshot_and_backfill_progress_is_logged_and_served() {
    let db = TestDb::new("copy_progress");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.sql("CREATE TABLE b (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20000) g");
    db.sql("INSERT INTO b SELECT g, 'x' FROM generate_series(1, 5000) g");
    db.sql("ANALYZE t; ANALYZE b");
    let port = free_port();
    let with_metrics = |tables: &[&str]| {
        let config = db.config_with(tables, "", "max_events = 1000", "");
        let text = std::fs::read_to_string(&config).unwrap();
        let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
        std::fs::write(&config, format!("{text}\n{metrics}")).unwrap();
        config
    };

    // The initial snapshot: rows against the catalog's estimate, in /metrics and the log.
    let config = with_metrics(&["public.t"]);
    let (mut weir, log) = db.spawn_logged(&config);
    let t = "table=\"public.t\"";
    let body = wait_for_sample(port, "weir_snapshot_done{", t, 1.0);
    assert_eq!(
        labelled(&body, "weir_snapshot_rows_total{", t),
        Some(20000.0),
        "{body}"
    );
    assert_eq!(
        labelled(&body, "weir_snapshot_rows_estimated{", t),
        Some(20000.0),
        "{body}"
    );
    assert_eq!(
        labelled(&body, "weir_snapshot_seconds_left{", t),
        Some(0.0),
        "{body}"
    );
    assert!(body.contains("kind=\"initial\""), "{body}");
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let done = text
        .lines()
        .find(|l| l.contains("Snapshot of the table done."));
    assert!(
        done.is_some_and(|l| l.contains("rows=20000")
            && l.contains("estimated_rows=20000")
            && l.contains("percent=100")),
        "{text}"
    );

    // A backfill: the same, and in /status.
    let config = with_metrics(&["public.t", "public.b"]);
    let (mut weir, log) = db.spawn_logged(&config);
    let b = "table=\"public.b\"";
    let body = wait_for_sample(port, "weir_snapshot_done{", b, 1.0);
    assert_eq!(
        labelled(&body, "weir_snapshot_rows_total{", b),
        Some(5000.0),
        "{body}"
    );
    assert!(body.contains("kind=\"backfill\""), "{body}");
    let (_, live) = get(port, "/status").unwrap();
    let live: Value = serde_json::from_str(&live).unwrap();
    let copy = &live["copies"][0];
    assert_eq!(
        (
            copy["table"].as_str(),
            copy["kind"].as_str(),
            copy["rows"].as_u64(),
            copy["estimated_rows"].as_u64(),
            copy["done"].as_bool()
        ),
        (
            Some("public.b"),
            Some("backfill"),
            Some(5000),
            Some(5000),
            Some(true)
        ),
        "{live}"
    );
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("Backfill done.")
            && l.contains("estimated_rows=5000")
            && l.contains("percent=100")),
        "{text}"
    );
}

#[test]
fn weir_status_shows_the_slot_and_each_sinks_checkpoint() {
    let db = TestDb::new("status");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.t"]);
    let before = db
        .weir(&["status", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(before.status.success(), "{}", stderr(&before));
    assert!(String::from_utf8_lossy(&before.stdout).contains("does not exist"));

    db.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50) g");
    db.catch_up(&config);
    // The slot is idle, so its restart_lsn stays put while the server's WAL grows.
    let retained_now = || -> i64 {
        db.sql(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ))
        .trim()
        .parse()
        .unwrap()
    };
    let retained_before = retained_now();
    let out = db
        .weir(&["status", config.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let retained_after = retained_now();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["slot"]["exists"], true);
    assert_eq!(doc["slot"]["active"], false, "no pipeline is running");
    let confirmed = doc["slot"]["confirmed_flush_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let lsn = |s: &str| s.parse::<weir::Lsn>().unwrap();
    let checkpoint = lsn(doc["sinks"][0]["checkpoint"]["end_lsn"].as_str().unwrap());
    // Confirmed up to the checkpoint, or past it over idle WAL (keepalives).
    assert!(
        lsn(&confirmed) >= checkpoint && checkpoint > weir::Lsn(0),
        "the slot was confirmed up to the sink's checkpoint: {doc}"
    );
    let retained = doc["slot"]["retained_wal_bytes"].as_i64().unwrap();
    assert!(
        (retained_before..=retained_after).contains(&retained),
        "the WAL the slot retains, as the server counts it: {retained} not in {retained_before}..={retained_after}"
    );

    let mut weir = db.spawn(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = db
            .weir(&["status", config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("active (walsender pid") {
            assert!(
                text.contains("sink        parquet") && text.contains("checkpoint"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
}

#[test]
fn weir_slot_lists_and_drops_only_an_inactive_slot() {
    let db = TestDb::new("slots");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO t VALUES (0, 'before')");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    let list = |db: &TestDb| -> Vec<Value> {
        let out = db
            .weir(&["slot", "list", config.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let slots = list(&db);
    let ours = slots
        .iter()
        .find(|s| s["name"] == db.name.as_str())
        .unwrap();
    assert_eq!(
        (ours["this_pipeline"].clone(), ours["plugin"].clone()),
        (Value::Bool(true), Value::from("pgoutput"))
    );

    let mut weir = db.spawn(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !list(&db)
        .iter()
        .any(|s| s["name"] == db.name.as_str() && s["active"] == true)
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = db
        .weir(&["slot", "drop", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("in use by process"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());

    let dropped = db
        .weir(&["slot", "drop", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(dropped.status.success(), "{}", stderr(&dropped));
    assert!(String::from_utf8_lossy(&dropped.stdout).contains("dropped replication slot"));
    assert!(!list(&db).iter().any(|s| s["name"] == db.name.as_str()));

    // The slot is gone but the output holds a checkpoint: weir stops and says what to do,
    // rather than silently skipping what was committed in between.
    db.sql("INSERT INTO t VALUES (1, 'lost with the slot')");
    let refused = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("does not exist, but the output is checkpointed at")
            && err.contains("--new-slot")
            && err.contains("move the output and its _weir state aside"),
        "{err}"
    );
    assert!(
        !list(&db).iter().any(|s| s["name"] == db.name.as_str()),
        "no slot made"
    );
    // Regression: `weir status` said the first run would create the slot.
    let status = db
        .weir(&["status", config.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains("does not exist, but the output holds changes up to")
            && status.contains("`weir run` refuses")
            && status.contains("--new-slot")
            && !status.contains("the first run creates it"),
        "status says what run will do: {status}"
    );
    let validated = db
        .weir(&["validate", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!validated.status.success(), "validate says so too");
    assert!(
        stderr(&validated).contains("does not exist, but the output is checkpointed at"),
        "{}",
        stderr(&validated)
    );
    let accepted = db
        .weir(&[
            "run",
            config.to_str().unwrap(),
            "--until-caught-up",
            "--new-slot",
        ])
        .output()
        .unwrap();
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert!(
        stderr(&accepted)
            .contains("Changes committed between the checkpoint and now are not captured")
    );
    db.sql("INSERT INTO t VALUES (2, 'after the new slot')");
    db.catch_up(&config);
    let log = db.changelog("public.t", "id");
    let ids: Vec<i64> = log.rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        vec![0, 2],
        "changes from the new slot on: {:?}",
        log.rows
    );

    // Teardown: the slot and the publication go, the output stays.
    let count = |sql: &str| db.sql(sql).trim().to_string();
    let torn = db
        .weir(&["slot", "drop", config.to_str().unwrap(), "--publication"])
        .output()
        .unwrap();
    assert!(torn.status.success(), "{}", stderr(&torn));
    let said = String::from_utf8_lossy(&torn.stdout).to_string();
    assert!(said.contains("dropped publication"), "{said}");
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        )),
        "0"
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
            db.name
        )),
        "0"
    );
    assert_eq!(
        db.changelog("public.t", "id").rows.len(),
        2,
        "the output stays"
    );
}

#[test]
fn max_slot_lag_alerts_or_stops_as_configured() {
    let db = TestDb::new("slot_lag");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    let base = std::fs::read_to_string(&config).unwrap();
    // Any slot holds some WAL: one byte is always too much.
    let with = |policy: &str| {
        base.replace(
            "[batch]",
            &format!("max_slot_lag = 1\nslot_lag_policy = \"{policy}\"\n\n[batch]"),
        )
    };
    std::fs::write(&config, with("stop")).unwrap();
    let started = Instant::now();
    let out = db
        .weir(&["run", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "policy stop ends the run");
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = stderr(&out);
    assert!(
        err.contains("over max_slot_lag")
            && err.lines().last().unwrap().starts_with("error: stopped"),
        "{err}"
    );

    std::fs::write(&config, with("alert")).unwrap();
    let mut weir = db.spawn(&config);
    std::thread::sleep(Duration::from_secs(2));
    assert!(weir.try_wait().unwrap().is_none(), "policy alert goes on");
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    let out = weir.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("slot_lag_policy = \"alert\": weir goes on")
    );
}

#[test]
fn json_log_lines_about_a_batch_carry_pipeline_table_and_lsn() {
    let db = TestDb::new("batch_logs");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = masked_config(&db, "");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20) g");
    let out = db
        .weir(&[
            "--log-format",
            "json",
            "run",
            config.to_str().unwrap(),
            "--until-caught-up",
        ])
        .env("WEIR_LOG", "weir=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let about_batches: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            let m = l["fields"]["message"].as_str().unwrap_or("");
            m == "Batch written to every sink." || m == "Transform call."
        })
        .collect();
    assert!(about_batches.len() >= 2, "{lines:#?}");
    let expected_lsn = db.confirmed_flush().unwrap();
    for line in about_batches {
        let spans = line["spans"].as_array().expect("the line's spans");
        let field = |name: &str| spans.iter().find_map(|s| s.get(name).cloned());
        assert_eq!(field("pipeline"), Some(Value::from("pipeline")), "{line}");
        assert_eq!(field("slot"), Some(Value::from(db.name.as_str())), "{line}");
        assert_eq!(field("table"), Some(Value::from("public.t")), "{line}");
        let lsn: weir::Lsn = field("lsn").unwrap().as_str().unwrap().parse().unwrap();
        assert!(lsn > weir::Lsn(0) && lsn <= expected_lsn, "{line}");
    }
}
