//! Plugin author tooling: `weir plugin new`, `build`, `test` and `inspect`, on freshly
//! scaffolded crates built into real components, without PostgreSQL.

use crate::harness::{stderr, weir_bin, workspace};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn weir(args: &[&str], cwd: &Path, target: &Path) -> Output {
    Command::new(weir_bin())
        .args(args)
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap()
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
    let sdk = workspace().join("sdk");
    let out = weir(
        &[
            "plugin",
            "new",
            "lower-email",
            "--sdk",
            sdk.to_str().unwrap(),
        ],
        dir.path(),
        &target,
    );
    ok(out, "weir plugin new");
    let crate_dir = dir.path().join("lower-email");
    assert!(crate_dir.join("weir-plugin.toml").exists());

    // The native unit test passes out of the box.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = Command::new(&cargo)
        .args(["test", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let test_out = ok(test, "cargo test in the scaffold");
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
}

#[test]
fn a_scaffolded_sink_builds_and_reports_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold");
    let sdk = workspace().join("sdk");
    ok(
        weir(
            &[
                "plugin",
                "new",
                "counter",
                "--kind",
                "sink",
                "--sdk",
                sdk.to_str().unwrap(),
            ],
            dir.path(),
            &target,
        ),
        "weir plugin new --kind sink",
    );
    let crate_dir = dir.path().join("counter");
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
