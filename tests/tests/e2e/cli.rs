use crate::harness::{TestDb, stderr};
use std::path::Path;

#[test]
fn validate_prints_what_a_run_would_do_and_changes_nothing() {
    let db = TestDb::new("validate");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["public.t"]);
    let out = db
        .weir(&["validate", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(&format!("would     create replication slot `{}`", db.name)),
        "{text}"
    );
    assert!(text.contains("would     create publication"), "{text}");
    assert!(db.confirmed_flush().is_none(), "validate created no slot");
    assert!(!db.out().exists());

    db.catch_up(&config);
    let out = db
        .weir(&["validate", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("uses      replication slot `{}`", db.name)),
        "{text}"
    );
}

#[test]
fn every_example_configuration_parses() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let env = |_: &str| None; // every variable falls back to its default
            let text = std::fs::read_to_string(&path).unwrap();
            weir::config::PipelineConfig::parse(&text, &path, &env)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parsed += 1;
        }
    }
    assert!(
        parsed >= 2,
        "examples/ holds example pipelines ({parsed} found)"
    );
}
