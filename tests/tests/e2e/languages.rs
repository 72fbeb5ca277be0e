//! Plugins written in Python (componentize-py) and JavaScript (ComponentizeJS), built
//! from `examples/plugins/` against the WIT `weir plugin wit` prints, and run in a real
//! pipeline.

use crate::harness::{TestDb, read_changelog, stderr, weir_bin, workspace};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The plugin contract as the binary prints it (`weir plugin wit`), in `<dir>/wit/`:
/// what a plugin author without weir's sources builds against.
fn wit_dir(dir: &Path) -> PathBuf {
    let wit = dir.join("wit");
    std::fs::create_dir_all(&wit).unwrap();
    let out = Command::new(weir_bin())
        .args(["plugin", "wit"])
        .output()
        .unwrap();
    assert!(out.status.success(), "weir plugin wit: {}", stderr(&out));
    std::fs::write(wit.join("weir-plugin.wit"), &out.stdout).unwrap();
    wit
}

/// Builds an example plugin into `<dir>/<name>/`: its manifest and its component.
fn build(dir: &Path, example: &str, wasm: &str, command: &mut Command) -> PathBuf {
    let source = workspace().join("examples/plugins").join(example);
    let dest = dir.join(example);
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(
        source.join("weir-plugin.toml"),
        dest.join("weir-plugin.toml"),
    )
    .unwrap();
    let out = command
        .current_dir(&source)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(dest.join(wasm))
        .output()
        .unwrap_or_else(|e| panic!("building {example}: {e} (run the suite with scripts/test.sh, which installs the toolchains)"));
    assert!(
        out.status.success(),
        "building {example}:\n{}",
        stderr(&out)
    );
    dest
}

/// The Python example, built with componentize-py from the test venv.
pub fn python_plugin(dir: &Path) -> PathBuf {
    let python = crate::harness::python();
    let bin = Path::new(&python).with_file_name("componentize-py");
    let wit = wit_dir(dir);
    let mut c = Command::new(bin);
    c.args([
        "-d",
        wit.to_str().unwrap(),
        "-w",
        "transformer",
        "componentize",
        "app",
        "-o",
    ]);
    build(dir, "email-domain-py", "email_domain.wasm", &mut c)
}

/// The JavaScript example, built with ComponentizeJS (installed by scripts/test.sh under
/// `$WEIR_TEST_NODE_MODULES`).
pub fn javascript_plugin(dir: &Path) -> PathBuf {
    let modules = std::env::var("WEIR_TEST_NODE_MODULES").unwrap_or_else(|_| {
        let target =
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/var/tmp/weir-target".into());
        format!("{target}/jsenv/node_modules")
    });
    let wit = wit_dir(dir);
    let mut c = Command::new(Path::new(&modules).join(".bin/componentize-js"));
    c.args([
        "route.js",
        "--wit",
        wit.to_str().unwrap(),
        "--world-name",
        "transformer",
        "-o",
    ]);
    build(dir, "route-js", "route.wasm", &mut c)
}

#[test]
fn python_and_javascript_transforms_run_in_a_pipeline() {
    let db = TestDb::new("langs");
    db.sql("CREATE TABLE users (id int PRIMARY KEY, email text)");
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, region text, amount int NOT NULL)");
    // Deletes route by their old row: it must carry the routing column.
    db.sql("ALTER TABLE orders REPLICA IDENTITY FULL");
    let py = python_plugin(db.dir.path());
    let js = javascript_plugin(db.dir.path());
    let config = db.config(&["public.users", "public.orders"]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[[transform]]\nplugin = \"{}\"\n\n[[transform]]\nplugin = \"{}\"\nconfig = {{ table = \"public.orders\", column = \"region\" }}\n",
            py.display(),
            js.display()
        ),
    )
    .unwrap();
    db.catch_up(&config);
    db.sql("INSERT INTO users VALUES (1, 'Ada@Example.COM'), (2, 'grace@navy.mil'), (3, NULL)");
    db.sql("UPDATE users SET email = 'ada@lovelace.org' WHERE id = 1");
    db.sql("INSERT INTO orders SELECT g, CASE g % 3 WHEN 0 THEN 'EU' WHEN 1 THEN 'us' END, g FROM generate_series(1, 30) g");
    db.sql("DELETE FROM orders WHERE id = 3");
    let out = db.catch_up(&config);
    assert!(stderr(&out).contains("email-domain@0.1.0") && stderr(&out).contains("route@0.1.0"));

    // Python enriched users with the email's domain.
    let users = read_changelog(&db.out().join("public/users"), "id");
    let domains: Vec<(Value, Value)> = users
        .rows
        .iter()
        .map(|r| (r["id"].clone(), r["email_domain"].clone()))
        .collect();
    assert_eq!(
        domains,
        vec![
            (1.into(), "lovelace.org".into()),
            (2.into(), "navy.mil".into()),
            (3.into(), Value::Null)
        ]
    );
    assert_eq!((users.op("c"), users.op("u"), users.duplicates), (3, 1, 0));

    // JavaScript routed orders by region; those without one stayed.
    let eu = read_changelog(&db.out().join("public/orders_eu"), "id");
    let us = read_changelog(&db.out().join("public/orders_us"), "id");
    let rest = read_changelog(&db.out().join("public/orders"), "id");
    assert_eq!((eu.op("c"), eu.op("d"), eu.rows.len()), (10, 1, 9));
    assert_eq!((us.op("c"), us.rows.len()), (10, 10));
    assert_eq!((rest.op("c"), rest.rows.len()), (10, 10));
    assert!(eu.rows.iter().all(|r| r["region"] == "EU"));
    assert!(rest.rows.iter().all(|r| r["region"].is_null()));
}

#[test]
fn weir_plugin_test_times_plugins_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    let py = python_plugin(dir.path());
    let js = javascript_plugin(dir.path());
    let mut events = Vec::new();
    for i in 0..200 {
        events.push(serde_json::json!({"op": "c", "table": "public.users",
            "after": {"id": i, "email": format!("u{i}@Example.com"), "region": if i % 2 == 0 { "eu" } else { "us" }}}));
    }
    let input = serde_json::json!({
        "tables": {"public.users": [{"name": "id", "type": "int8", "key": true},
                                     {"name": "email", "type": "text"},
                                     {"name": "region", "type": "text"}]},
        "events": events,
    });
    let file = dir.path().join("events.json");
    std::fs::write(&file, input.to_string()).unwrap();
    for (plugin, config) in [
        (py, "{}".to_string()),
        (
            js,
            r#"{"table":"public.users","column":"region"}"#.to_string(),
        ),
    ] {
        let out = Command::new(crate::harness::weir_bin())
            .args(["plugin", "test"])
            .arg(&plugin)
            .arg("--input")
            .arg(&file)
            .args(["--config", &config, "--bench", "5"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["events"].as_array().unwrap().len(), 200);
        assert_eq!(result["bench"]["events_per_batch"], 200);
        assert!(
            result["bench"]["us_per_event"].as_f64().unwrap() > 0.0,
            "{result}"
        );
    }
}
