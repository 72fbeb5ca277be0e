//! Parquet output on S3, against a real S3-compatible server (moto's, from PyPI) on a
//! loopback port; the objects are read back with boto3 and DuckDB, not through weir.

use crate::harness::{TestDb, read_changelog, stderr};
use crate::recovery::Writer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// The server, with one bucket; killed on drop.
struct S3 {
    child: Child,
    port: u16,
    bucket: String,
}

impl S3 {
    fn start(bucket: &str) -> S3 {
        let (child, port) = crate::harness::serve_py("s3_server.py", &["serve", bucket]);
        S3 {
            child,
            port,
            bucket: bucket.into(),
        }
    }

    /// `weir` with the AWS environment pointing at this server.
    fn weir(&self, db: &TestDb, args: &[&str]) -> Command {
        let mut c = db.weir(args);
        c.env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", self.port),
        )
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
        c
    }

    fn run(&self, db: &TestDb, config: &Path) -> Output {
        let out = self
            .weir(db, &["run", config.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out
    }

    fn download(&self, prefix: &str, dir: &Path) {
        let port = self.port.to_string();
        let dir = dir.to_str().unwrap();
        crate::harness::py(
            "s3_server.py",
            &["download", &port, &self.bucket, prefix, dir],
        );
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let port = self.port.to_string();
        let out = crate::harness::py("s3_server.py", &["list", &port, &self.bucket, prefix]);
        String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pipeline writing to `s3://<bucket>/<db>` (the harness's sink line replaced).
fn s3_config(db: &TestDb, s3: &S3, tables: &[&str], batch: &str, sink: &str) -> PathBuf {
    let config = db.config_with(tables, "", batch, sink);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"file://{}\"", db.out().display()),
        &format!("url = \"s3://{}/{}\"", s3.bucket, db.name),
    );
    assert!(text.contains("s3://"));
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn parquet_on_s3_is_exactly_once_across_restarts_and_kill_9() {
    let db = TestDb::new("s3");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 2000) g");
    let s3 = S3::start("weir-test");
    let config = s3_config(
        &db,
        &s3,
        &["public.t"],
        "max_events = 300",
        "flush_interval = \"200ms\"\ntarget_file_size = \"64KiB\"\nrow_group_rows = 500",
    );
    s3.run(&db, &config);
    assert!(
        s3.keys(&format!("{}/_weir/", db.name))
            .iter()
            .any(|k| k.ends_with("checkpoint.json")),
        "the checkpoint lives beside the output in the bucket"
    );

    let writer = Writer::start(db.url());
    // SIGKILL: multipart uploads in flight are abandoned.
    let run = || s3.weir(&db, &["run", config.to_str().unwrap()]);
    crate::recovery::kill_9_rounds(3, run, |r| 1500 + 300 * r, |_| {});
    let [inserts, updates, deletes] = writer.finish();
    assert!(inserts > 50);
    s3.run(&db, &config);

    let local = tempfile::tempdir().unwrap();
    s3.download(&format!("{}/", db.name), local.path());
    let log = read_changelog(&local.path().join("public").join("t"), "id");
    assert_eq!(log.duplicates, 0);
    assert_eq!(
        (log.op("r"), log.op("c"), log.op("u"), log.op("d")),
        (2000, inserts, updates, deletes),
        "every change exactly once, read back from the bucket"
    );
    let source = db.rows("public.t", "id");
    assert_eq!(log.rows.len(), source.len());
    assert_eq!(log.rows, source, "the rebuilt state equals the source");
}

/// A Delta sink (`sink` its extra lines) of `public.t` (500 loaded rows) on a bucket,
/// through two `kill -9` under a concurrent writer (`during` runs in each round), then
/// caught up; returns the writer's counts and the table downloaded to `local`.
fn delta_on_s3(db: &TestDb, sink: &str, during: impl Fn(u64), local: &std::path::Path) -> [u64; 3] {
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    db.sql("INSERT INTO t SELECT -g, 0, 'existing' FROM generate_series(1, 500) g");
    let s3 = S3::start("lake");
    let config = s3_config(db, &s3, &["public.t"], "max_events = 300", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("type = \"parquet\"", &format!("type = \"delta\"\n{sink}"))
        .replace("flush_interval = \"200ms\"", "commit_interval = \"200ms\"");
    std::fs::write(&config, text).unwrap();
    s3.run(db, &config);
    let writer = Writer::start(db.url());
    let run = || s3.weir(db, &["run", config.to_str().unwrap()]);
    crate::recovery::kill_9_rounds(2, run, |r| 1500 + 300 * r, during);
    let counts = writer.finish();
    s3.run(db, &config);
    s3.download(&format!("{}/", db.name), local);
    counts
}

#[test]
fn delta_tables_on_s3_are_exactly_once_across_kill_9() {
    let db = TestDb::new("s3_delta");
    let local = tempfile::tempdir().unwrap();
    let [inserts, updates, deletes] = delta_on_s3(&db, "", |_| {}, local.path());
    assert!(inserts > 50);
    let (log, _) =
        crate::delta::read_delta_at(&local.path().join("public").join("t"), "id", &db.name);
    assert_eq!(log.duplicates, 0);
    assert_eq!(
        (log.op("r"), log.op("c"), log.op("u"), log.op("d")),
        (500, inserts, updates, deletes),
        "every change exactly once, read back from the bucket"
    );
    assert_eq!(
        log.rows,
        db.rows("public.t", "id"),
        "the rebuilt state equals the source"
    );
}

#[test]
fn a_delta_mirror_on_s3_equals_the_source_across_kill_9() {
    let db = TestDb::new("s3_delta_mirror");
    let local = tempfile::tempdir().unwrap();
    let changes = |round: u64| {
        db.sql(&format!(
            "UPDATE t SET v = v + 1 WHERE id < 0 AND id % 3 = -{round}"
        ));
        db.sql(&format!(
            "DELETE FROM t WHERE id < 0 AND id % 17 = -{round}"
        ));
    };
    let [inserts, ..] = delta_on_s3(&db, "mode = \"mirror\"", changes, local.path());
    assert!(inserts > 50);
    let report: serde_json::Value = serde_json::from_slice(&crate::harness::py(
        "delta_mirror.py",
        &[
            local.path().join("public/t").into_os_string(),
            "id".into(),
            "-".into(),
        ],
    ))
    .unwrap();
    assert_eq!(
        report["rows"],
        serde_json::Value::Array(db.rows("public.t", "id")),
        "the mirror, read back from the bucket, equals the source"
    );
    assert_eq!(report["replayed_equal"], true, "{report}");
    assert_eq!(report["preimage_errors"], serde_json::json!([]), "{report}");
}

#[test]
fn a_bucket_that_does_not_exist_is_a_clear_error() {
    let db = TestDb::new("s3_missing");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let s3 = S3::start("present");
    let config = db.config(&["public.t"]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"file://{}\"", db.out().display()),
        "url = \"s3://absent/x\"",
    );
    std::fs::write(&config, text).unwrap();
    let out = s3
        .weir(&db, &["run", config.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("absent") && err.lines().last().unwrap_or("").starts_with("error:"),
        "{err}"
    );
}
