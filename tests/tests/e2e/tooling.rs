//! Plugin author tooling: `weir plugin new`, `build`, `test` and `inspect`, on freshly
//! scaffolded crates in a temporary directory outside the checkout, with the SDK the
//! binary carries (no `--sdk`), built into real components; the transform then runs in a
//! real pipeline.

use crate::harness::{TestDb, stderr, weir_bin};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// `weir` in `cwd`, building into `target`, its caches (components, the SDK) under
/// `cwd/cache`.
fn weir(args: &[&str], cwd: &Path, target: &Path) -> Output {
    Command::new(weir_bin())
        .args(args)
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", target)
        .env("WEIR_CACHE_DIR", cwd.join("cache").join("components"))
        .output()
        .unwrap()
}

/// `cargo test` in a scaffolded crate; its output.
fn cargo_test(crate_dir: &Path, target: &Path) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = Command::new(&cargo)
        .args(["test", "--quiet"])
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    ok(test, "cargo test in the scaffold")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const EVENTS: &str = r#"{
  "tables": { "public.users": [ {"name": "id", "type": "int8", "key": true},
                                {"name": "email", "type": "text"} ] },
  "events": [ {"op": "c", "table": "public.users", "after": {"id": 1, "email": "Ada@Example.COM"}},
              {"op": "u", "table": "users", "after": {"id": 1, "email": "GRACE@x.org"}},
              {"op": "d", "table": "public.users", "before": {"id": 1}} ]
}"#;

#[test]
fn a_scaffolded_transform_builds_passes_its_test_and_runs_on_sample_events() {
    let dir = tempfile::tempdir().unwrap();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold");
    let out = weir(&["plugin", "new", "lower-email"], dir.path(), &target);
    ok(out, "weir plugin new");
    let crate_dir = dir.path().join("lower-email");
    assert!(crate_dir.join("weir-plugin.toml").exists());
    // The SDK the binary carries, written beside the components' cache.
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let sdk = dir.path().join("cache").join("sdk");
    assert!(
        manifest.contains(&format!("path = \"{}", sdk.display())),
        "{manifest}"
    );
    // A directory that holds something is refused.
    let again = weir(&["plugin", "new", "lower-email"], dir.path(), &target);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists and is not empty"),
        "{}",
        stderr(&again)
    );

    // The native unit test passes out of the box.
    let test_out = cargo_test(&crate_dir, &target);
    assert!(test_out.contains("1 passed"), "{test_out}");

    let built = ok(
        weir(&["plugin", "build"], &crate_dir, &target),
        "weir plugin build",
    );
    assert!(
        built.contains("built") && built.contains("lower-email@0.1.0"),
        "{built}"
    );
    assert!(crate_dir.join("lower_email.wasm").exists());

    std::fs::write(dir.path().join("events.json"), EVENTS).unwrap();
    let printed = ok(
        weir(
            &[
                "plugin",
                "test",
                crate_dir.to_str().unwrap(),
                "--input",
                "events.json",
                "--config",
                r#"{"columns":["email"]}"#,
            ],
            dir.path(),
            &target,
        ),
        "weir plugin test",
    );
    let result: Value = serde_json::from_str(&printed).unwrap();
    let events = result["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["after"]["email"], "ada@example.com");
    assert_eq!(events[1]["after"]["email"], "grace@x.org");
    assert_eq!(events[1]["op"], "u");
    assert_eq!(events[2]["before"]["id"], 1);

    // A configuration the plugin rejects is reported, with a non-zero exit.
    let rejected = weir(
        &[
            "plugin",
            "test",
            crate_dir.to_str().unwrap(),
            "--input",
            "events.json",
            "--config",
            r#"{"columns":[""]}"#,
        ],
        dir.path(),
        &target,
    );
    assert!(!rejected.status.success());
    assert!(
        stderr(&rejected).contains("a column name is empty"),
        "{}",
        stderr(&rejected)
    );

    let shown = ok(
        weir(
            &["plugin", "inspect", crate_dir.to_str().unwrap()],
            dir.path(),
            &target,
        ),
        "weir plugin inspect",
    );
    for expected in [
        "lower-email@0.1.0",
        "weir:plugin@0.1.0",
        "exports     weir:plugin/transform@0.1.0",
        "grants: nothing",
        "weir:plugin/types@0.1.0",
    ] {
        assert!(shown.contains(expected), "{expected} in:\n{shown}");
    }

    // The scaffold in a real pipeline: the emails land lowercased.
    let db = TestDb::new("scaffold");
    db.sql("CREATE TABLE users (id int8 PRIMARY KEY, email text)");
    db.sql("INSERT INTO users VALUES (1, 'Ada@Example.COM'), (2, 'GRACE@x.org')");
    let config = db.config(&["public.users"]);
    let text = std::fs::read_to_string(&config).unwrap();
    let transform = format!(
        "[[transform]]\nplugin = \"{}\"\nconfig = {{ columns = [\"email\"] }}\n",
        crate_dir.join("weir-plugin.toml").display()
    );
    std::fs::write(&config, format!("{text}\n{transform}")).unwrap();
    let out = db.catch_up(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    let changelog = db.changelog("public.users", "id");
    let emails: Vec<&str> = changelog
        .rows
        .iter()
        .map(|r| r["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ada@example.com", "grace@x.org"]);
}

#[test]
fn a_scaffolded_sink_builds_and_reports_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold");
    ok(
        weir(
            &["plugin", "new", "counter", "--kind", "sink"],
            dir.path(),
            &target,
        ),
        "weir plugin new --kind sink",
    );
    let crate_dir = dir.path().join("counter");
    let test_out = cargo_test(&crate_dir, &target);
    assert!(test_out.contains("1 passed"), "{test_out}");
    ok(
        weir(&["plugin", "build"], &crate_dir, &target),
        "weir plugin build",
    );
    std::fs::write(dir.path().join("events.json"), EVENTS).unwrap();
    let printed = ok(
        weir(
            &[
                "plugin",
                "test",
                crate_dir.to_str().unwrap(),
                "--input",
                "events.json",
            ],
            dir.path(),
            &target,
        ),
        "weir plugin test (sink)",
    );
    let result: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(result["delivered"], 3);
    assert_eq!(result["durable_commit_lsn"], 3, "{result}");

    // A name that cannot be a crate is refused before anything is written.
    let bad = weir(&["plugin", "new", "Bad Name"], dir.path(), &target);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("not a plugin name"),
        "{}",
        stderr(&bad)
    );
}
