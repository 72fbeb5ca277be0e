//! Each mistake a user can make prints one line that names the problem and the fix,
//! exits non-zero, writes no output and creates or moves no slot.

use crate::harness::{TestDb, pg, stderr, weir_bin};
use std::path::Path;
use std::process::Command;
use weir::pgtemp::TempPostgres;

/// Runs `weir run` on `config` and returns its one-line error.
fn fails(db: &TestDb, config: &Path) -> String {
    let out = Command::new(weir_bin())
        .args(["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "weir should fail, stderr:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "exactly one line:\n{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!db.out().exists(), "no output may be written");
    err
}

fn slot_exists(db: &TestDb) -> bool {
    let n = pg().psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ),
    );
    n.unwrap().trim() != "0"
}

fn with_url(db: &TestDb, url: &str) -> std::path::PathBuf {
    let config = db.config(&["public.t"]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&db.url(), url);
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn an_unknown_config_key_names_its_path_and_a_suggestion() {
    let db = TestDb::new("badkey");
    let config = db.config_with(&["public.t"], "slott = \"x\"", "", "");
    let err = fails(&db, &config);
    assert!(
        err.contains("unknown key `source.slott` (did you mean `slot`?)"),
        "{err}"
    );
}

#[test]
fn a_malformed_url_is_named() {
    let db = TestDb::new("badurl");
    let err = fails(&db, &with_url(&db, "postgres://u@localhost:notaport/db"));
    assert!(err.contains("`source.url`: not a PostgreSQL URL"), "{err}");
}

#[test]
fn an_unreachable_server_says_where_it_tried() {
    let db = TestDb::new("unreach");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = fails(
        &db,
        &with_url(&db, &format!("postgres://postgres@127.0.0.1:{port}/x")),
    );
    assert!(
        err.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn bad_credentials_say_which_user() {
    let db = TestDb::new("badpw");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let url = format!(
        "postgres://weir_pw:wrong-password@127.0.0.1:{}/{}",
        pg().port(),
        db.name
    );
    let err = fails(&db, &with_url(&db, &url));
    assert!(
        err.contains("authentication failed for user `weir_pw`"),
        "{err}"
    );
    assert!(!slot_exists(&db));
}

#[test]
fn wal_level_replica_says_how_to_fix_it() {
    let replica = TempPostgres::start_with("wal_level = replica").unwrap();
    let db = TestDb::new("wallevel");
    let err = fails(&db, &with_url(&db, &replica.url("postgres")));
    assert!(
        err.contains("wal_level is `replica`")
            && err.contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
}

#[test]
fn a_role_without_replication_is_told_to_get_it() {
    let db = TestDb::new("norepl");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let role = format!("norepl_{}", db.name);
    db.sql(&format!("CREATE ROLE {role} LOGIN"));
    let err = fails(
        &db,
        &with_url(
            &db,
            &format!("postgres://{role}@127.0.0.1:{}/{}", pg().port(), db.name),
        ),
    );
    assert!(
        err.contains(&format!("ALTER ROLE {role} WITH REPLICATION")),
        "{err}"
    );
    assert!(!slot_exists(&db));
}

#[test]
fn a_missing_table_is_named() {
    let db = TestDb::new("notable");
    let err = fails(&db, &db.config(&["public.nope"]));
    assert!(err.contains("table public.nope does not exist"), "{err}");
    assert!(!slot_exists(&db));
}

#[test]
fn a_table_without_primary_key_is_told_which_replica_identity_it_needs() {
    let db = TestDb::new("nopk");
    db.sql("CREATE TABLE t (a int)");
    let err = fails(&db, &db.config(&["public.t"]));
    assert!(
        err.contains("no primary key") && err.contains("REPLICA IDENTITY FULL"),
        "{err}"
    );
    assert!(!slot_exists(&db));
}

#[test]
fn a_slot_in_use_names_the_process_and_leaves_it_alone() {
    let db = TestDb::new("inuse");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    db.sql("INSERT INTO t VALUES (1)");
    db.catch_up(&config);
    let before = db.confirmed_flush();
    let mut first = db.spawn(&config);
    // Wait until the first process holds the slot.
    let held = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        db.sql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ))
        .trim()
            == "t"
    });
    assert!(held, "the first weir took the slot");
    let out = Command::new(weir_bin())
        .args(["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let err = stderr(&out);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.status.success());
    assert!(err.contains("is in use by process"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(db.confirmed_flush(), before, "the slot did not move");
}
