//! The first hour of a new user, each defect they hit pinned by a test: a missing
//! password named as such, checks that pass in `validate` and then fail in `run`, lag
//! and readiness, a table that cannot be backfilled, a rollback under a running
//! pipeline, closed pipes, a `validate` that wrote files, log lines outside the run's
//! span, and error messages that named neither key nor choice.

use crate::faults::Unwritable;
use crate::harness::{TestDb, pg, stderr, weir_bin};
use crate::operations::{free_port, get, scrape, wait_ready};
use crate::recovery::{unsafe_kill, wait_with_timeout};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run(db: &TestDb, config: &Path) -> Output {
    db.weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

fn validate(db: &TestDb, config: &Path) -> Output {
    db.weir(&["validate", config.to_str().unwrap()])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.sql(sql).trim().parse().unwrap()
}

fn publications(db: &TestDb) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
            db.name
        ),
    )
}

fn slots(db: &TestDb) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ),
    )
}

fn with_url(db: &TestDb, config: &Path, url: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace(&db.url(), url);
    std::fs::write(config, text).unwrap();
}

/// Regression: a missing password was diagnosed as a server that is not running, with
/// the same reason repeated for the TLS attempt.
#[test]
fn a_missing_password_is_named_with_where_it_goes() {
    let db = TestDb::new("nopw");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["public.t"]);
    let url = format!("postgres://weir_pw@127.0.0.1:{}/{}", pg().port(), db.name);
    with_url(&db, &config, &url);
    let out = run(&db, &config);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("asks user `weir_pw` for a password and source.url has none")
            && err.contains("PGPASSWORD"),
        "{err}"
    );
    assert!(!err.contains("is running"), "not a dead server: {err}");
    assert!(!err.contains("and with TLS"), "said once: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Regression: `validate` passed and `run` created the publication, then failed on a
/// role's missing rights (or an unwritable output), naming no fix.
#[test]
fn missing_rights_are_refused_by_validate_and_run_before_anything_is_created() {
    let db = TestDb::new("rights");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let role = format!("weak_{}", db.name);
    db.sql(&format!("CREATE ROLE {role} LOGIN REPLICATION"));
    let config = db.config(&["public.t"]);
    let url = format!("postgres://{role}@127.0.0.1:{}/{}", pg().port(), db.name);
    with_url(&db, &config, &url);

    for (grant, expected) in [
        (
            "",
            format!("may not read public.t: GRANT SELECT ON public.t TO {role}"),
        ),
        (
            "GRANT SELECT ON t TO",
            format!(
                "may not create publication `{}`: GRANT CREATE ON DATABASE",
                db.name
            ),
        ),
        (
            "GRANT CREATE ON DATABASE {db} TO",
            "a publication takes only tables its creator owns (public.t not)".into(),
        ),
    ] {
        if !grant.is_empty() {
            db.sql(&format!("{} {role}", grant.replace("{db}", &db.name)));
        }
        for out in [validate(&db, &config), run(&db, &config)] {
            let err = stderr(&out);
            assert!(!out.status.success(), "{err}");
            assert!(err.contains(&expected), "expected `{expected}` in: {err}");
            assert!(err.contains("nothing was created"), "{err}");
        }
        assert_eq!((publications(&db), slots(&db)), (0, 0), "nothing created");
    }
    assert!(!db.out().exists(), "no output written");
}

#[test]
fn an_unwritable_output_is_refused_by_validate_and_run_before_the_publication() {
    let db = TestDb::new("rooutput");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["public.t"]);
    std::fs::create_dir_all(db.out()).unwrap();
    let locked = Unwritable::set(&db.out());
    for out in [validate(&db, &config), run(&db, &config)] {
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "the output file://{} is not writable",
                db.out().display()
            )) && err.contains("write access"),
            "{err}"
        );
    }
    assert_eq!((publications(&db), slots(&db)), (0, 0), "nothing created");

    // A volume mounted read-only, as a container's can be: one line naming the cause.
    drop(locked);
    let _mounted = ReadOnlyMount::at(&db.out());
    for out in [validate(&db, &config), run(&db, &config)] {
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        let line = err
            .lines()
            .find(|l| l.contains("is not writable"))
            .unwrap_or_else(|| panic!("a line naming the output: {err}"));
        assert!(
            line.contains(&format!("file://{}", db.out().display()))
                && line.contains("Read-only file system"),
            "{err}"
        );
    }
    assert_eq!((publications(&db), slots(&db)), (0, 0), "nothing created");
}

/// A read-only file system (tmpfs) mounted over a directory until dropped.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn at(dir: &Path) -> ReadOnlyMount {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a read-only tmpfs (the tests run as root): {}",
            stderr(&out)
        );
        ReadOnlyMount(dir.to_path_buf())
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Regression: lag read 0 while a change waited on an unwritable output, `/readyz`
/// stayed 200 while a change waited past `ready_max_lag`, and turned 503 at the first
/// write after an idle spell.
#[test]
fn lag_is_the_age_of_the_oldest_change_not_yet_durable() {
    let db = TestDb::new("lag");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let port = free_port();
    let config = db.config_with(&["public.t"], "", "", "flush_interval = \"12s\"");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nready_max_lag = \"3s\"\n"),
    )
    .unwrap();
    db.catch_up(&config);
    let (mut weir, log) = db.spawn_logged(&config);
    wait_ready(port);
    let lag = || -> f64 {
        let metrics = scrape(port);
        let line = metrics
            .lines()
            .find(|l| l.starts_with("weir_replication_lag_seconds"))
            .expect("the lag metric");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };

    // A change that waits for its flush past ready_max_lag makes weir not ready.
    db.sql("INSERT INTO t VALUES (1, 'waits')");
    std::thread::sleep(Duration::from_secs(4));
    let (code, body) = get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("the oldest change not yet durable is"),
        "{body}"
    );
    assert!(lag() >= 3.0, "lag counts the waiting change");
    let durable = Instant::now();
    while get(port, "/readyz").is_none_or(|(code, _)| code != 200) {
        assert!(durable.elapsed() < Duration::from_secs(20), "never flushed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lag(), 0.0, "nothing waits");

    // Idle, then a write: the new change is young, so weir stays ready.
    std::thread::sleep(Duration::from_secs(4));
    db.sql("INSERT INTO t VALUES (2, 'after idle')");
    let (code, body) = get(port, "/readyz").unwrap();
    assert_eq!(code, 200, "a fresh change is no lag: {body}");

    // Output unwritable with a change waiting: lag grows, the last durable commit stays.
    let locked = Unwritable::set(&db.out());
    std::thread::sleep(Duration::from_secs(10));
    assert!(lag() >= 5.0, "{}", std::fs::read_to_string(&log).unwrap());
    let (_, status) = get(port, "/status").unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert!(status["last_durable_commit"].is_string(), "{status}");
    drop(locked);
    let durable = Instant::now();
    while lag() > 0.0 {
        assert!(
            durable.elapsed() < Duration::from_secs(60),
            "never recovered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    assert_eq!(db.changelog("public.t", "id").rows.len(), 2);
}

/// Regression: a table without a primary key added later never got its rows; the only
/// sign was a warning at every start, and `weir snapshot` said "requested".
#[test]
fn a_keyless_table_added_later_is_refused_with_what_to_do() {
    let db = TestDb::new("nopk_later");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    db.sql("CREATE TABLE nopk (a int, b text)");
    db.sql("ALTER TABLE nopk REPLICA IDENTITY FULL");
    db.sql("INSERT INTO nopk VALUES (1, 'existing')");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);

    let config = db.config(&["public.t", "public.nopk"]);
    for out in [validate(&db, &config), run(&db, &config)] {
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("table public.nopk has no primary key, so weir cannot backfill"),
            "{err}"
        );
    }
    let published = count(
        &db,
        &format!(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = '{}' AND tablename = 'nopk'",
            db.name
        ),
    );
    assert_eq!(published, 0, "not added to the publication");
    let out = db
        .weir(&[
            "snapshot",
            config.to_str().unwrap(),
            "--table",
            "public.nopk",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no primary key"),
        "{}",
        stderr(&out)
    );
}

/// Regression: `weir status | head` and `weir lake query | head` panicked on the closed
/// pipe (exit 101).
#[test]
fn a_closed_pipe_ends_a_printing_command_quietly() {
    let db = TestDb::new("pipe");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g");
    let config = iceberg_config(&db);
    db.catch_up(&config);
    // Far more than a pipe holds, so weir is still printing when `head` has gone.
    for command in [
        format!("lake query {} public.t --limit 3000", config.display()),
        format!("status {}", config.display()),
    ] {
        let script = format!("set -o pipefail; {} {command} | head -2", weir_bin());
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{command}: {err}");
        assert!(
            matches!(out.status.code(), Some(0) | Some(141)),
            "{command}: ends as a Unix tool does ({:?}): {err}",
            out.status
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    }
}

fn iceberg_config(db: &TestDb) -> std::path::PathBuf {
    let config = db.dir.path().join("ice.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [\"public.t\"]\n\n\
             [[sink]]\ntype = \"iceberg\"\nwarehouse = \"file://{}\"\n",
            db.url(),
            db.name,
            db.name,
            db.out().display()
        ),
    )
    .unwrap();
    config
}

/// Regression: an online `validate` created the Iceberg SQL catalog's file.
#[test]
fn validate_writes_nothing() {
    let db = TestDb::new("validate_ro");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = iceberg_config(&db);
    let out = validate(&db, &config);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("would     create publication"), "{said}");
    assert!(said.contains("output    writable"), "{said}");
    assert!(
        !db.out().exists(),
        "validate created {}",
        db.out().display()
    );
    assert_eq!((publications(&db), slots(&db)), (0, 0));
}

/// Regression: some lines of a run (a schema change, the end of the run) were logged
/// outside its span, so they named neither pipeline nor slot; an ADD COLUMN across a
/// restart logged no change at all.
#[test]
fn every_line_of_a_run_names_its_pipeline_and_slot() {
    let db = TestDb::new("spans");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    db.sql("INSERT INTO t VALUES (1, 'x')");
    db.catch_up(&config);
    db.sql("ALTER TABLE t ADD COLUMN extra int");
    db.sql("INSERT INTO t VALUES (2, 'y', 7)");
    let out = db
        .weir(&[
            "--log-format",
            "json",
            "run",
            config.to_str().unwrap(),
            "--until-caught-up",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        lines
            .iter()
            .any(|l| message(l).starts_with("The table's columns changed")),
        "the ADD COLUMN is logged: {lines:#?}"
    );
    assert!(lines.iter().any(|l| message(l) == "Pipeline stopped."));
    for line in &lines {
        let spans = line["spans"].as_array();
        let slot = spans.and_then(|s| s.iter().find_map(|s| s.get("slot").cloned()));
        assert_eq!(slot, Some(Value::from(db.name.as_str())), "{line}");
    }
}

/// Regression: a wrong value of an enum key named neither the key nor the choices, and
/// a missing file said its reason twice.
#[test]
fn config_mistakes_name_the_key_and_the_choices() {
    let db = TestDb::new("cfgmsg");
    let config = db.config_with(&["public.t"], "", "", "compression = \"lz4\"");
    let err = stderr(&validate(&db, &config));
    assert!(
        err.contains("sink[0].compression") && err.contains("zstd"),
        "names the key and the choices: {err}"
    );
    let config = db.config_with(&["public.t"], "", "", "ulr = \"file:///x\"");
    let err = stderr(&validate(&db, &config));
    assert!(err.contains("did you mean `url`?"), "{err}");
    let missing = db.dir.path().join("nope.toml");
    let err = stderr(&validate(&db, &missing));
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "said once: {err}"
    );
}

/// Regression: `weir lake rollback` ran under a running pipeline and said nothing of the
/// gap it opens.
#[test]
fn a_rollback_is_refused_while_the_pipeline_runs_and_names_the_next_step() {
    let db = TestDb::new("rollback_live");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO t VALUES (1, 'first')");
    let config = iceberg_config(&db);
    db.catch_up(&config);
    let snapshots = db
        .weir(&[
            "lake",
            "snapshots",
            config.to_str().unwrap(),
            "public.t",
            "--json",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&snapshots.stdout).unwrap();
    let first = report[0]["id"].as_i64().unwrap().to_string();
    db.sql("INSERT INTO t VALUES (2, 'second')");
    db.catch_up(&config);

    let mut weir = db.spawn(&config);
    db.wait_slot_active();
    let rollback = |force: bool| {
        let mut args = vec!["lake", "rollback", config.to_str().unwrap(), "public.t"];
        args.extend(["--snapshot", first.as_str()]);
        if force {
            args.push("--force");
        }
        db.weir(&args).output().unwrap()
    };
    let refused = rollback(false);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("is in use: stop the pipeline before rolling its table back"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());

    let done = rollback(false);
    assert!(done.status.success(), "{}", stderr(&done));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        said.contains(&format!(
            "weir snapshot {} --table public.t",
            config.display()
        )),
        "names the next step: {said}"
    );
}

/// `source.tables` patterns: resolved at the start and listed by `validate`; a table
/// created later in a selected schema is picked up without restarting weir; a table no
/// longer selected leaves the publication.
#[test]
fn table_patterns_select_tables_now_and_later() {
    let db = TestDb::new("patterns");
    db.sql("CREATE SCHEMA sales");
    db.sql("CREATE TABLE sales.order_a (id int PRIMARY KEY, v text)");
    db.sql("CREATE TABLE sales.order_b (id int PRIMARY KEY, v text)");
    db.sql("CREATE TABLE sales.other (id int PRIMARY KEY)");
    db.sql("CREATE TABLE sales.order_nokey (v text)");
    db.sql("INSERT INTO sales.order_a VALUES (1, 'a')");
    let config = db.config(&["sales.order_*"]);
    let out = validate(&db, &config);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        said.contains("selects   sales.order_a, sales.order_b"),
        "{said}"
    );
    assert!(said.contains("leaves    sales.order_nokey out"), "{said}");

    let mut weir = db.spawn(&config);
    db.wait_slot_active();
    db.sql("INSERT INTO sales.order_b VALUES (1, 'b')");
    db.sql("CREATE TABLE sales.order_c (id int PRIMARY KEY, v text)");
    db.sql("INSERT INTO sales.order_c SELECT g, 'c' FROM generate_series(1, 50) g");
    let picked_up = Instant::now();
    let published = |table: &str| {
        count(
            &db,
            &format!(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = '{}' AND tablename = '{table}'",
                db.name
            ),
        )
    };
    while published("order_c") == 0 || db.out().join("sales/order_c").read_dir().is_err() {
        assert!(
            picked_up.elapsed() < Duration::from_secs(60),
            "order_c never picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    db.sql("INSERT INTO sales.order_c VALUES (51, 'streamed')");
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    db.catch_up(&config);
    for table in ["sales.order_a", "sales.order_b", "sales.order_c"] {
        crate::harness::assert_same_state(&db, table, "id");
    }
    assert_eq!(published("other"), 0, "not selected");

    // Narrowed: order_b leaves the publication at the next start.
    let config = db.config(&["sales.order_a", "sales.order_c"]);
    let out = db.catch_up(&config);
    assert!(
        stderr(&out).contains("Removed tables no longer in source.tables from the publication"),
        "{}",
        stderr(&out)
    );
    assert_eq!(published("order_b"), 0);
}

/// A URL without a user connects as libpq would: `PGUSER`, else the operating-system
/// user (here the one the test runs as, who has no role: the server names it).
#[test]
fn a_url_without_a_user_connects_as_pguser_or_the_system_user() {
    let db = TestDb::new("nouser");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    db.sql("INSERT INTO t VALUES (1)");
    let config = db.config(&["public.t"]);
    with_url(
        &db,
        &config,
        &format!("postgres://127.0.0.1:{}/{}", pg().port(), db.name),
    );
    let out = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .env("PGUSER", "postgres")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.changelog("public.t", "id").rows.len(), 1);

    let system_user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let out = db
        .weir(&["validate", config.to_str().unwrap()])
        .env_remove("PGUSER")
        .env("USER", "someone-else")
        .output()
        .unwrap();
    let err = stderr(&out);
    match system_user.as_str() {
        "postgres" => assert!(out.status.success(), "{err}"),
        user => assert!(
            !out.status.success() && err.contains(&format!("role \"{user}\" does not exist")),
            "connects as the system user, not $USER: {err}"
        ),
    }
}
