//! The one harness every end-to-end test uses: a real PostgreSQL (one server per test
//! binary, one database per test), the real `weir` binary, and DuckDB as an independent
//! reader of the output.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use weir::pgtemp::TempPostgres;

/// The shared server: the one `WEIR_TEST_PG_URL` names (a superuser URL to a server
/// with `wal_level = logical`, left running), or one started once per test binary.
/// Tests that restart a server or change its TLS or `pg_hba.conf` start their own.
pub fn pg() -> &'static TempPostgres {
    static PG: OnceLock<TempPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = TempPostgres::from_env_or_start()
            .expect("start a throwaway PostgreSQL (initdb and pg_ctl must be installed), or reach WEIR_TEST_PG_URL");
        // One role that must authenticate with a password, for the bad-credentials test
        // (a given server must ask for passwords over TCP itself).
        let role = "CREATE ROLE weir_pw LOGIN REPLICATION PASSWORD 'right-password'";
        let made = pg.psql("postgres", role);
        if !pg.is_external() {
            made.unwrap();
            pg.prepend_hba("host all weir_pw 127.0.0.1/32 scram-sha-256")
                .unwrap();
        }
        pg
    })
}

/// The `weir` binary under test.
pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir-e2e")
}

/// A database of its own, with a directory for its pipeline file and output.
pub struct TestDb {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// A server of the test's own (one whose settings it changes), or `None`: the shared one.
    own: Option<TempPostgres>,
}

impl TestDb {
    pub fn new(prefix: &str) -> TestDb {
        TestDb::create(prefix, None)
    }

    /// A database on a server of its own, for a test that changes server settings.
    pub fn on_own_server(prefix: &str) -> TestDb {
        TestDb::create(prefix, Some(TempPostgres::start().unwrap()))
    }

    fn create(prefix: &str, own: Option<TempPostgres>) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        own.as_ref()
            .unwrap_or_else(|| pg())
            .psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap();
        // WEIR_TEST_KEEP=1 leaves each test's directory (pipeline, output, logs) behind.
        let dir = tempfile::Builder::new()
            .prefix(&format!("weir-{prefix}-"))
            .disable_cleanup(std::env::var_os("WEIR_TEST_KEEP").is_some())
            .tempdir()
            .unwrap();
        TestDb { name, dir, own }
    }

    /// The server this database is on.
    pub fn server(&self) -> &TempPostgres {
        self.own.as_ref().unwrap_or_else(|| pg())
    }

    pub fn url(&self) -> String {
        self.server().url(&self.name)
    }

    /// Runs SQL; panics with the server's message on error.
    pub fn sql(&self, sql: &str) -> String {
        self.server()
            .psql(&self.name, sql)
            .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"))
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Writes a pipeline file capturing `tables` into `out()` with test-friendly timings.
    pub fn config(&self, tables: &[&str]) -> PathBuf {
        self.config_with(tables, "", "", "")
    }

    /// Like [`config`](Self::config), with extra TOML lines for `[source]`, `[batch]` and
    /// the Parquet `[[sink]]`.
    pub fn config_with(&self, tables: &[&str], source: &str, batch: &str, sink: &str) -> PathBuf {
        let tables: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
        let flush = if sink.contains("flush_interval") {
            ""
        } else {
            "flush_interval = \"200ms\""
        };
        let text = format!(
            "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\ntables = [{}]\n{source}\n\n\
             [batch]\nmax_delay = \"100ms\"\n{batch}\n\n\
             [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\n{flush}\n{sink}\n",
            self.url(),
            self.name,
            self.name,
            tables.join(", "),
            self.out().display()
        );
        let path = self.dir.path().join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn weir(&self, args: &[&str]) -> Command {
        let mut c = Command::new(weir_bin());
        c.args(args).env("WEIR_LOG", "info").stdin(Stdio::null());
        c
    }

    /// `weir run CONFIG --until-caught-up`, which must succeed.
    pub fn catch_up(&self, config: &Path) -> Output {
        let out = self
            .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weir run --until-caught-up failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `weir run CONFIG` in the background.
    pub fn spawn(&self, config: &Path) -> Child {
        self.weir(&["run", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `weir run CONFIG` in the background, its log in `<dir>/weir.log` (made anew).
    pub fn spawn_logged(&self, config: &Path) -> (Child, PathBuf) {
        let log = self.dir.path().join("weir.log");
        let child = self
            .weir(&["run", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    }

    /// The table's rows as JSON objects, ordered by `order_by`.
    pub fn rows(&self, table: &str, order_by: &str) -> Vec<Value> {
        let json = self.sql(&format!(
            "SELECT coalesce(json_agg(t ORDER BY {order_by}), '[]') FROM {table} t"
        ));
        serde_json::from_str(json.trim()).unwrap()
    }

    /// The changelog of `schema.table` read back by DuckDB.
    pub fn changelog(&self, table: &str, keys: &str) -> Changelog {
        let (schema, name) = table.split_once('.').unwrap();
        let dir = self.out().join(schema).join(name);
        read_changelog(&dir, keys)
    }

    /// Waits (up to 30 s) until a process streams from the slot.
    pub fn wait_slot_active(&self) {
        let started = std::time::Instant::now();
        let active = format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
            self.name
        );
        while self.sql(&active).trim() != "t" {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "nothing took the slot"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The slot's confirmed flush position.
    pub fn confirmed_flush(&self) -> Option<weir::Lsn> {
        let s = self.sql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
            self.name
        ));
        s.trim().parse().ok()
    }

    pub fn current_wal_lsn(&self) -> weir::Lsn {
        self.sql("SELECT pg_current_wal_lsn()")
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Free the slot (it would hold WAL for the rest of the run).
        let _ = self.server().psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{}' AND NOT active",
                self.name
            ),
        );
    }
}

/// What DuckDB read from a changelog.
#[derive(Debug)]
pub struct Changelog {
    /// The current state rebuilt with the README's query.
    pub rows: Vec<Value>,
    pub ops: HashMap<String, u64>,
    pub duplicates: u64,
    pub files: u64,
    pub delete_rows: Vec<Value>,
    /// The highest `_cdc_commit_lsn` in the changelog.
    pub max_commit_lsn: u64,
    /// Rows whose `_cdc_unchanged` names a column.
    pub unchanged_rows: u64,
    /// Up to 5 duplicated positions: (commit_lsn, seq, ops, commit times).
    pub duplicate_examples: Value,
}

impl Changelog {
    /// From the readers' JSON report.
    pub fn from_json(v: &Value) -> Changelog {
        Changelog {
            rows: v["rows"].as_array().unwrap().clone(),
            ops: serde_json::from_value(v["ops"].clone()).unwrap(),
            duplicates: v["duplicates"].as_u64().unwrap(),
            files: v["files"].as_u64().unwrap(),
            delete_rows: v["delete_rows"].as_array().unwrap().clone(),
            max_commit_lsn: v["max_commit_lsn"].as_u64().unwrap_or(0),
            unchanged_rows: v["unchanged_rows"].as_u64().unwrap_or(0),
            duplicate_examples: v["duplicate_examples"].clone(),
        }
    }

    pub fn op(&self, op: &str) -> u64 {
        self.ops.get(op).copied().unwrap_or(0)
    }
}

/// The Python of the test venv (`scripts/test.sh` sets `WEIR_TEST_PYTHON`).
pub fn python() -> String {
    std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Starts `tests/py/<script>` with `args` as a server on a loopback port: it prints the
/// port on its first line. Returns the process (kill it when done) and the port.
pub fn serve_py<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> (std::process::Child, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    let mut child = Command::new(python())
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{script} prints its port first, not {line:?}"));
    (child, port)
}

/// Runs `tests/py/<script>` with `args`; panics with its stderr when it fails; returns
/// its stdout.
pub fn py<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn read_changelog(dir: &Path, keys: &str) -> Changelog {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/changelog.py");
    let out = Command::new(python())
        .arg(script)
        .arg(dir)
        .arg(keys)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the DuckDB reader failed (run the suite with scripts/test.sh, which installs DuckDB):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Changelog::from_json(&v)
}

/// Reads an Iceberg changelog table back with PyIceberg through the SQL catalog in
/// `catalog_db` (at `snapshot`, else the current one): the changelog summary, and the
/// whole report (schema, identifier fields, partition spec, snapshots) as JSON.
pub fn read_iceberg(
    catalog_db: &Path,
    table: &str,
    keys: &str,
    snapshot: Option<i64>,
    env: &[(&str, String)],
) -> (Changelog, Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/iceberg_table.py");
    let mut c = Command::new(python());
    c.arg(script).arg(catalog_db).arg(table).arg(keys);
    if let Some(id) = snapshot {
        c.arg(id.to_string());
    }
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let out = c.output().expect("run python");
    assert!(
        out.status.success(),
        "the PyIceberg reader failed (run the suite with scripts/test.sh, which installs PyIceberg):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (Changelog::from_json(&v), v)
}

/// Asserts the rebuilt state equals the source table, row for row.
pub fn assert_same_state(db: &TestDb, table: &str, key: &str) -> Changelog {
    let changelog = db.changelog(table, key);
    let source = db.rows(table, key);
    assert_eq!(
        changelog.duplicates, 0,
        "changelog of {table} has duplicate (commit_lsn, seq) rows, for example {:?}",
        changelog.duplicate_examples
    );
    assert_eq!(
        changelog.rows.len(),
        source.len(),
        "row count of {table} rebuilt from the changelog"
    );
    for (rebuilt, src) in changelog.rows.iter().zip(&source) {
        assert_eq!(rebuilt, src, "{table}: rebuilt row differs from the source");
    }
    changelog
}

/// The stderr of a finished process, as text.
/// `weir audit CONFIG` passes: the evidence ledger names every durable file as written.
pub fn assert_audit_passes(db: &TestDb, config: &Path) {
    let out = db
        .weir(&["audit", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weir audit:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub use weir_tests::workspace;

/// Builds a plugin crate into a component (once per test binary) and returns its path.
pub fn component(package: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if let Some((_, path)) = built.iter().find(|(p, _)| p == package) {
        return path.clone();
    }
    let wasm = weir_tests::build_component(
        package,
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm"),
    );
    built.push((package.to_string(), wasm.clone()));
    wasm
}

/// Installs a plugin into `dir/plugins/<name>/`: its manifest from `manifest` (relative
/// to the workspace), edited by `edit`, and its component built from `package`.
pub fn install_plugin(
    dir: &Path,
    package: &str,
    manifest: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let source = workspace().join(manifest);
    let text = edit(std::fs::read_to_string(&source).unwrap());
    let parsed: toml::Table = text.parse().unwrap();
    let name = parsed["name"].as_str().unwrap().to_string();
    let dir = dir.join("plugins").join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weir-plugin.toml"), &text).unwrap();
    std::fs::copy(
        component(package),
        dir.join(parsed["wasm"].as_str().unwrap()),
    )
    .unwrap();
    dir
}

impl TestDb {
    /// Installs a plugin into this test's directory (see [`install_plugin`]).
    pub fn plugin(
        &self,
        package: &str,
        manifest: &str,
        edit: impl Fn(String) -> String,
    ) -> PathBuf {
        install_plugin(self.dir.path(), package, manifest, edit)
    }
}
