//! Hot reload of transforms: a new version swapped in mid-stream under continuous writes,
//! each change processed once by the old or the new version, the output saying which, and
//! a broken replacement leaving the old version running.

use crate::harness::{TestDb, install_plugin, read_changelog};
use crate::recovery::{Writer, unsafe_kill, wait_with_timeout};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Replaces the pipeline file in one step (a reader never sees half of it).
fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The pipeline file with one mask transform from `plugin_dir` using `method` on `note`.
fn pipeline(base: &str, plugin_dir: &Path, method: &str) -> String {
    format!(
        "{base}\n[[transform]]\nplugin = \"{}\"\nconfig = {{ rules = [{{ columns = [\"note\"], method = \"{method}\" }}] }}\n\n[reload]\npoll_interval = \"200ms\"\n",
        plugin_dir.display()
    )
}

/// The mask plugin installed under `<dir>/<sub>/` with its manifest at `version`.
fn mask_version(db: &TestDb, sub: &str, version: &str) -> std::path::PathBuf {
    install_plugin(
        &db.dir.path().join(sub),
        "weir-plugin-mask",
        "plugins/mask/weir-plugin.toml",
        |m| m.replace("version = \"0.1.0\"", &format!("version = \"{version}\"")),
    )
}

#[test]
fn a_transform_swapped_mid_stream_processes_each_change_once_and_a_broken_one_changes_nothing() {
    let db = TestDb::new("reload");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config_with(&["public.t"], "", "max_events = 50", "");
    let base = std::fs::read_to_string(&config).unwrap();
    let v1 = mask_version(&db, "v1", "0.1.0");
    replace_atomically(&config, &pipeline(&base, &v1, "redact"));
    db.catch_up(&config);

    let writer = Writer::start(db.url());
    let (mut weir, log_path) = db.spawn_logged(&config);
    std::thread::sleep(Duration::from_secs(2));

    // A new version: another component file and manifest, and a new config, in place
    // in one rename of the pipeline file.
    let v2 = mask_version(&db, "v2", "0.2.0");
    let wasm = v2.join("mask.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    // A custom section: the same code in a different build of the component.
    bytes.extend_from_slice(&[0, 9, 8, b'w', b'e', b'i', b'r', b'-', b'v', b'0', b'2']);
    std::fs::write(&wasm, bytes).unwrap();
    replace_atomically(&config, &pipeline(&base, &v2, "hash"));
    std::thread::sleep(Duration::from_secs(2));

    // A broken replacement: its component does not compile.
    let v3 = mask_version(&db, "v3", "0.3.0");
    std::fs::write(v3.join("mask.wasm"), b"not a component").unwrap();
    replace_atomically(&config, &pipeline(&base, &v3, "null"));
    std::thread::sleep(Duration::from_secs(2));

    let [inserts, updates, deletes] = writer.finish();
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("Transform swapped in at a batch boundary") && log.contains("mask@0.2.0"),
        "{log}"
    );
    assert!(
        log.contains("Reload failed: the old version keeps running"),
        "{log}"
    );
    assert!(!log.contains("new=mask@0.3.0"), "{log}");
    // What was written after the last batch goes through the running version too.
    replace_atomically(&config, &pipeline(&base, &v2, "hash"));
    db.catch_up(&config);

    // Every change once, by one version or the other.
    let changes = read_changelog(&db.out().join("public").join("t"), "id");
    assert_eq!(changes.duplicates, 0);
    assert_eq!(
        (changes.op("c"), changes.op("u"), changes.op("d")),
        (inserts, updates, deletes)
    );
    let ids = |rows: &[Value]| -> Vec<Value> { rows.iter().map(|r| r["id"].clone()).collect() };
    assert_eq!(ids(&changes.rows), ids(&db.rows("public.t", "id")));

    // Each file names the version that produced it, and its values show that version.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/file_meta.py");
    let out = std::process::Command::new(crate::harness::python())
        .arg(script)
        .arg(db.out().join("public").join("t"))
        .arg("note")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let (mut old, mut new) = (0, 0);
    for f in &files {
        // `name@version#sha256` of the component.
        let label = f["transforms"].as_str().map(|t| {
            let (label, sha) = t.split_once('#').unwrap_or((t, ""));
            assert_eq!(sha.len(), 64, "the component's sha256 in {t}");
            label
        });
        match label {
            Some("mask@0.1.0") => {
                assert_eq!(
                    (f["sha256"].as_u64(), f["other"].as_u64()),
                    (Some(0), Some(0)),
                    "{f}"
                );
                old += f["redacted"].as_u64().unwrap();
            }
            Some("mask@0.2.0") => {
                assert_eq!(
                    (f["redacted"].as_u64(), f["other"].as_u64()),
                    (Some(0), Some(0)),
                    "{f}"
                );
                new += f["sha256"].as_u64().unwrap();
            }
            other => panic!("a file from {other:?}: {f}"),
        }
    }
    assert!(
        old > 0 && new > 0,
        "output of both versions: {old} before, {new} after"
    );
}

#[test]
fn weir_reload_and_sighup_trigger_a_reload_without_file_watching() {
    let db = TestDb::new("reload_cmd");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config_with(&["public.t"], "", "", "");
    let base = std::fs::read_to_string(&config).unwrap();
    let v1 = mask_version(&db, "v1", "0.1.0");
    let unwatched = |dir: &Path, method: &str| {
        pipeline(&base, dir, method).replace("[reload]\n", "[reload]\nwatch = false\n")
    };
    replace_atomically(&config, &unwatched(&v1, "redact"));
    db.catch_up(&config);
    let (mut weir, log_path) = db.spawn_logged(&config);
    std::thread::sleep(Duration::from_secs(2));
    let v2 = mask_version(&db, "v2", "0.2.0");
    replace_atomically(&config, &unwatched(&v2, "hash"));
    std::thread::sleep(Duration::from_secs(1));
    db.sql("INSERT INTO t VALUES (1, 1, 'before')");
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("mask@0.2.0"),
        "not watched, not reloaded: {log}"
    );

    let out = db
        .weir(&["reload", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.sql("INSERT INTO t VALUES (2, 2, 'after')");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("Transform swapped in")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no swap after weir reload"
        );
        db.sql("INSERT INTO t SELECT max(id) + 1, 0, 'more' FROM t");
        std::thread::sleep(Duration::from_millis(200));
    }

    let v3 = mask_version(&db, "v3", "0.3.0");
    replace_atomically(&config, &unwatched(&v3, "null"));
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGHUP), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        db.sql("INSERT INTO t SELECT max(id) + 1, 0, 'more' FROM t");
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("new=mask@0.3.0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no swap after SIGHUP: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGTERM), 0);
    assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
}
