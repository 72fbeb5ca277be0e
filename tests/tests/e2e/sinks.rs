//! Sink plugins in pipelines: the `webhook` sink against a real HTTP receiver, a file
//! sink that is exactly once across `kill -9`, the failure policies for sinks and
//! transforms, and dead-letter list and replay.

use crate::harness::{TestDb, assert_same_state, stderr};
use crate::recovery::{Writer, unsafe_kill, wait_with_timeout};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

const WEBHOOK: (&str, &str) = ("weir-plugin-webhook", "plugins/webhook/weir-plugin.toml");
pub(crate) const RECORDER: (&str, &str) = (
    "weir-test-recorder",
    "tests/plugins/recorder/weir-plugin.toml",
);
const HOSTILE: (&str, &str) = (
    "weir-test-hostile",
    "tests/plugins/hostile/weir-plugin.toml",
);

/// The test webhook receiver (`tests/py/webhook_server.py`), killed on drop.
pub(crate) struct Receiver {
    child: Child,
    pub port: u16,
    out: PathBuf,
}

impl Receiver {
    pub fn start(dir: &Path, args: &[&str]) -> Receiver {
        let out = dir.join("received.jsonl");
        let mut all = vec![out.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        let (child, port) = crate::harness::serve_py("webhook_server.py", &all);
        Receiver { child, port, out }
    }

    /// Every accepted request: (idempotency key, content type, body).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds sections to a pipeline file.
fn append(config: &Path, text: &str) {
    let old = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("{old}\n{text}\n")).unwrap();
}

fn run_with_env(db: &TestDb, config: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = db.weir(&["run", config.to_str().unwrap(), "--until-caught-up"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `(commit_lsn, seq)` of each event the receiver accepted, in arrival order.
fn received_events(receiver: &Receiver) -> Vec<(String, u64, String)> {
    receiver
        .requests()
        .iter()
        .flat_map(|r| r["body"]["events"].as_array().unwrap().clone())
        .map(|e| {
            (
                e["commit_lsn"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
                e["op"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn webhook_posts_every_event_once_retrying_a_receiver_that_is_down() {
    let db = TestDb::new("webhook");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text, b bytea)");
    let receiver = Receiver::start(db.dir.path(), &["--fail-first", "3"]);
    let plugin = db.plugin(WEBHOOK.0, WEBHOOK.1, |m| m);
    let config = db.config_with(&["public.t"], "", "max_events = 100", "");
    append(
        &config,
        &format!(
            "[[sink]]\ntype = \"plugin\"\nplugin = \"{}\"\nconfig = {{ url = \"http://127.0.0.1:{}/hook\", headers = {{ x-token = \"secret\" }} }}",
            plugin.display(),
            receiver.port
        ),
    );
    let host = format!("127.0.0.1:{}", receiver.port);
    let env = [("WEIR_WEBHOOK_HOST", host.as_str())];
    let out = run_with_env(&db, &config, &env);
    assert!(out.status.success(), "{}", stderr(&out));

    db.sql("INSERT INTO t SELECT g, 'v' || g, '\\x00ff' FROM generate_series(1, 250) g");
    db.sql("UPDATE t SET v = 'changed' WHERE id <= 40");
    db.sql("DELETE FROM t WHERE id > 240");
    let out = run_with_env(&db, &config, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Transient plugin failure; retrying"),
        "the 503s were retried: {}",
        stderr(&out)
    );

    let events = received_events(&receiver);
    assert_eq!(events.len(), 300, "250 inserts, 40 updates, 10 deletes");
    let unique: BTreeSet<(u64, u64)> = events.iter().map(|(l, s, _)| (lsn(l), *s)).collect();
    assert_eq!(unique.len(), 300, "no event posted twice");
    let order: Vec<(u64, u64)> = events.iter().map(|(l, s, _)| (lsn(l), *s)).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "posted in commit order"
    );
    let count = |op: &str| events.iter().filter(|e| e.2 == op).count();
    assert_eq!((count("c"), count("u"), count("d")), (250, 40, 10));
    let requests = receiver.requests();
    for r in &requests {
        let n = r["body"]["events"].as_array().unwrap().len();
        assert!(
            n <= 200,
            "one POST per batch (max_events = 100), not one per run: {n}"
        );
        assert_eq!(r["content_type"], "application/json");
        let key = r["key"].as_str().unwrap();
        assert!(
            key.contains('-') && key.contains(':'),
            "idempotency key {key}"
        );
    }
    let first = &requests[0]["body"]["events"][0];
    assert_eq!(first["after"]["b"], "\\x00ff");
    assert_eq!(first["table"], "t");
    // The Parquet sink beside it has the same changes.
    let t = db.changelog("public.t", "id");
    assert_eq!((t.op("c"), t.op("u"), t.op("d")), (250, 40, 10));
}

#[test]
fn a_webhook_to_a_host_its_manifest_does_not_grant_is_refused() {
    let db = TestDb::new("webhook_denied");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let receiver = Receiver::start(db.dir.path(), &[]);
    let plugin = db.plugin(WEBHOOK.0, WEBHOOK.1, |m| m);
    let config = db.config(&["public.t"]);
    append(
        &config,
        &format!(
            "[[sink]]\ntype = \"plugin\"\nplugin = \"{}\"\nconfig = {{ url = \"http://127.0.0.1:{}/hook\" }}",
            plugin.display(),
            receiver.port
        ),
    );
    // The manifest grants another port only.
    let env = [("WEIR_WEBHOOK_HOST", "127.0.0.1:1")];
    let out = run_with_env(&db, &config, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = db.confirmed_flush();
    db.sql("INSERT INTO t VALUES (1)");
    let out = run_with_env(&db, &config, &env);
    assert!(!out.status.success(), "a denied request stops the pipeline");
    let err = stderr(&out);
    assert!(
        err.contains("webhook@0.1.0") && err.contains("grant the host"),
        "{err}"
    );
    assert!(err.contains("Denied an HTTP request"), "{err}");
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    assert_eq!(db.confirmed_flush(), before, "the checkpoint did not move");

    // Without the variable the manifest names, the plugin does not load at all.
    let out = run_with_env(&db, &config, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("WEIR_WEBHOOK_HOST"),
        "{}",
        stderr(&out)
    );
}

/// Installs the recorder sink writing into `<dir>/recorder` and adds it to `config`.
pub(crate) fn with_recorder(
    db: &TestDb,
    config: &Path,
    on_error: &str,
    plugin_config: &str,
) -> PathBuf {
    let dir = db.dir.path().join("recorder");
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = db.plugin(RECORDER.0, RECORDER.1, |m| {
        m.replace("${RECORDER_DIR}", dir.to_str().unwrap())
            .replace("on_error = \"fail\"", &format!("on_error = \"{on_error}\""))
    });
    append(
        config,
        &format!(
            "[[sink]]\ntype = \"plugin\"\nplugin = \"{}\"\nflush_interval = \"300ms\"\nconfig = {plugin_config}",
            plugin.display()
        ),
    );
    dir
}

/// The recorder's lines: (lsn, seq, op, row).
pub(crate) fn recorded(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn op_counts(lines: &[Value]) -> (u64, u64, u64) {
    let n = |op: &str| lines.iter().filter(|l| l["op"] == op).count() as u64;
    (n("c"), n("u"), n("d"))
}

/// No (lsn, seq) twice; on failure, names the first repeated event and both lines.
pub(crate) fn assert_unique(lines: &[Value]) {
    let mut first_seen = std::collections::BTreeMap::new();
    let mut repeats = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let key = (l["lsn"].as_u64().unwrap(), l["seq"].as_u64().unwrap());
        if let Some(first) = first_seen.insert(key, i) {
            repeats.push((first, i));
        }
    }
    if let Some(&(a, b)) = repeats.first() {
        panic!(
            "{} of {} events recorded twice; the first at lines {a} and {b}: {} / {}",
            repeats.len(),
            lines.len(),
            lines[a],
            lines[b]
        );
    }
}

#[test]
fn a_sink_that_reports_what_it_holds_is_exactly_once_across_kill_9() {
    let db = TestDb::new("sink_kill9");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config_with(
        &["public.t"],
        "",
        "max_events = 150",
        "flush_interval = \"150ms\"",
    );
    // Buffered: it holds events until weir calls flush, so a kill loses some it had.
    let dir = with_recorder(&db, &config, "fail", "{ resume = true, buffer = true }");
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let mut rng = rand::rng();
    use rand::Rng;
    for round in 0..5 {
        let mut weir = db.spawn(&config);
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2000)));
        if round == 2 {
            assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
            assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
        } else {
            weir.kill().unwrap();
            weir.wait().unwrap();
        }
    }
    let [inserts, updates, deletes] = writer.finish();
    assert!(inserts > 50, "the writer made progress ({inserts} inserts)");
    db.catch_up(&config);
    let lines = recorded(&dir);
    assert_unique(&lines);
    assert_eq!(
        op_counts(&lines),
        (inserts, updates, deletes),
        "every committed change exactly once in the plugin sink"
    );
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(
        (t.op("c"), t.op("u"), t.op("d")),
        (inserts, updates, deletes)
    );
}

#[test]
fn a_sink_skips_the_events_it_rejects_and_keeps_the_rest() {
    let db = TestDb::new("sink_skip");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.t"]);
    let dir = with_recorder(&db, &config, "skip", "{ reject = \"poison\" }");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, CASE WHEN g % 25 = 0 THEN 'poison' ELSE 'ok' END FROM generate_series(1, 100) g");
    let out = db.catch_up(&config);
    let lines = recorded(&dir);
    assert_eq!(lines.len(), 96, "4 rejected events skipped, 96 kept");
    assert!(lines.iter().all(|l| l["row"][1] == "ok"));
    assert!(stderr(&out).contains("events=4"), "{}", stderr(&out));
    // The Parquet sink beside it is not affected.
    assert_eq!(db.changelog("public.t", "id").op("c"), 100);
}

#[test]
fn dead_letters_of_a_sink_are_listed_and_replayed_into_that_sink_only() {
    let db = TestDb::new("sink_dlq");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.t"]);
    let dir = with_recorder(&db, &config, "dead-letter", "{ reject = \"poison\" }");
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, CASE WHEN g IN (7, 70) THEN 'poison' ELSE 'ok' END FROM generate_series(1, 100) g");
    let out = db.catch_up(&config);
    assert!(
        stderr(&out).contains("dead-letter location"),
        "{}",
        stderr(&out)
    );
    assert_eq!(recorded(&dir).len(), 98);

    let list = db
        .weir(&["dead-letter", "list", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(text.contains("2 dead letter(s)"), "{text}");
    assert!(
        text.contains("sink-1") && text.contains("public.t") && text.contains("recorder@0.1.0")
    );
    assert!(text.contains("rejected by configuration"), "{text}");

    // Still rejected: the letters stay.
    let replay = db
        .weir(&["dead-letter", "replay", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stdout).contains("0 replayed, 2 still failing"));

    // Fixed: delivered to the recorder, once, and not to the Parquet sink again.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("reject = \"poison\"", "reject = \"nothing\""),
    )
    .unwrap();
    let replay = db
        .weir(&["dead-letter", "replay", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&replay.stdout),
        stderr(&replay)
    );
    assert!(String::from_utf8_lossy(&replay.stdout).contains("2 replayed, 0 still failing"));
    let lines = recorded(&dir);
    assert_eq!(lines.len(), 100);
    assert_unique(&lines);
    assert_eq!(
        db.changelog("public.t", "id").op("c"),
        100,
        "the Parquet sink had them already"
    );
    let list = db
        .weir(&["dead-letter", "list", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("0 dead letter(s)"));
}

#[test]
fn dead_letters_of_a_transform_are_replayed_through_the_rest_of_the_pipeline() {
    let db = TestDb::new("transform_dlq");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let plugin = db.plugin(HOSTILE.0, HOSTILE.1, |m| {
        m.replace("on_error = \"fail\"", "on_error = \"dead-letter\"")
    });
    let config = db.config(&["public.t"]);
    append(
        &config,
        &format!(
            "[[transform]]\nplugin = \"{}\"\nconfig = {{ mode = \"bad-event\", every = 10 }}",
            plugin.display()
        ),
    );
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 200) g");
    let checkpoint_before = db.confirmed_flush();
    db.catch_up(&config);
    assert!(
        db.confirmed_flush() > checkpoint_before,
        "the stream went on"
    );
    assert_eq!(db.changelog("public.t", "id").op("c"), 180);
    let list = db
        .weir(&["dead-letter", "list", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(text.contains("20 dead letter(s)"), "{text}");
    assert!(
        text.contains("transform-0") && text.contains("hostile@0.1.0"),
        "{text}"
    );

    // A replay while the pipeline runs is refused.
    let mut running = db.spawn(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let replay = db
            .weir(&["dead-letter", "replay", config.to_str().unwrap()])
            .output()
            .unwrap();
        if stderr(&replay).contains("is in use") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(unsafe_kill(running.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut running, Duration::from_secs(30)).success());
    assert!(refused, "replay beside a running pipeline is refused");

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("every = 10 }", "every = 100000 }")).unwrap();
    let replay = db
        .weir(&["dead-letter", "replay", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert!(String::from_utf8_lossy(&replay.stdout).contains("20 replayed, 0 still failing"));
    // A second replay finds nothing and writes nothing.
    let replay = db
        .weir(&["dead-letter", "replay", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&replay.stdout).contains("0 replayed"));
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(t.op("c"), 200, "every event in the changelog once");
}

#[test]
fn a_sink_instance_lost_with_buffered_changes_stops_instead_of_skipping_them() {
    let db = TestDb::new("sink_lost");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.t"]);
    // Buffered, so a trap loses what the instance held; skip would isolate the bad event.
    let dir = with_recorder(
        &db,
        &config,
        "skip",
        "{ resume = true, buffer = true, trap = \"poison\" }",
    );
    db.catch_up(&config);
    let before = db.confirmed_flush();
    db.sql("INSERT INTO t SELECT g, CASE WHEN g = 70 THEN 'poison' ELSE 'ok' END FROM generate_series(1, 100) g");
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the run stops");
    assert!(
        stderr(&out).contains("had not made durable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(db.confirmed_flush(), before, "the checkpoint did not move");

    // Fixed: everything arrives, once.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("trap = \"poison\"", "trap = \"nothing\""),
    )
    .unwrap();
    db.catch_up(&config);
    let lines = recorded(&dir);
    assert_unique(&lines);
    assert_eq!(lines.len(), 100);
}

/// The `stdout` sink: each change as one JSON line, the initial snapshot first, then
/// every later change once; logs stay on standard error.
#[test]
fn the_stdout_sink_prints_every_change_as_one_json_line() {
    let db = TestDb::new("stdout");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text, b bytea)");
    db.sql("INSERT INTO t SELECT g, 'old', '\\x0a0b' FROM generate_series(1, 20) g");
    let state = db.dir.path().join("state");
    let config = db.dir.path().join("stdout.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [\"public.t\"]\n\n\
             [batch]\nmax_delay = \"100ms\"\n\n[[sink]]\ntype = \"stdout\"\n\n[state]\nurl = \"file://{}\"\n",
            db.url(),
            db.name,
            db.name,
            state.display()
        ),
    )
    .unwrap();
    let lines = |out: &Output| -> Vec<Value> {
        assert!(out.status.success(), "{}", stderr(out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let first = lines(&db.catch_up(&config));
    assert_eq!(first.len(), 20, "the snapshot's rows");
    assert!(first.iter().all(|e| e["op"] == "r" && e["table"] == "t"));
    assert_eq!(first[0]["after"]["b"], "\\x0a0b");
    assert!(
        stderr(&db.catch_up(&config)).contains("Pipeline stopped"),
        "logs on stderr"
    );

    db.sql("UPDATE t SET v = 'new' WHERE id <= 5");
    db.sql("DELETE FROM t WHERE id = 20");
    db.sql("INSERT INTO t VALUES (21, 'added', NULL)");
    let next = lines(&db.catch_up(&config));
    let ops: Vec<&str> = next.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["u", "u", "u", "u", "u", "d", "c"],
        "each change once, in commit order"
    );
    assert_eq!(next[0]["after"]["v"], "new");
    assert_eq!(next[5]["before"]["id"], 20);
    assert_eq!(
        next[6]["after"],
        serde_json::json!({"id": 21, "v": "added", "b": null})
    );
    let lsn = next[6]["commit_lsn"].as_str().unwrap();
    assert!(lsn.contains('/'), "{lsn}");
    assert!(
        lines(&db.catch_up(&config)).is_empty(),
        "nothing again once delivered"
    );
}
