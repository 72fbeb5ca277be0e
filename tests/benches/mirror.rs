//! Mirror table benchmark: weir keeping an Iceberg mirror table (position deletes, the
//! primary-key index) against `pg_recvlogical` draining a copy of the same slot, in one
//! run.
//!
//! `cargo bench -p weir-tests --bench mirror` (env `WEIR_BENCH_ROWS`, default 1M;
//! `WEIR_BENCH_CHANGES`, default as many as rows; `WEIR_BENCH_ROUNDS`, default 2).
//!
//! A throwaway PostgreSQL gets the benchmarks' 7-column table and a slot, then the
//! workload: `WEIR_BENCH_ROWS` inserts (the load), then as many changes spread over the
//! key space, 60% updates, 20% inserts and 20% deletes, all in 10k-row transactions. Each
//! round drains a copy of the slot with `pg_recvlogical` and another with `weir run
//! --until-caught-up` into a fresh warehouse (`mode = "mirror"`, SQL catalog,
//! `commit_interval = "10s"`), then checks the mirror against the source with `weir
//! verify`.
//! Reported: changes per second and the ratio, weir's peak RSS, the index's size on disk,
//! and data and delete files per commit.
//!
//! Before the rounds, a read study: a pipeline on its own slot mirrors the load (read
//! time of the fresh table), then runs while the changes are written, committing every
//! second (about a hundred commits: the position deletes of a day of 60-second commits
//! on a busy table), then `weir lake compact` runs. Each state is read in full with
//! PyIceberg (`tests/py/read_time.py`, `WEIR_TEST_PYTHON`, best of three) and its row
//! count checked against the source.

use std::path::Path;
use std::time::Instant;
use weir::pgtemp::TempPostgres;
use weir_tests::bench::{
    dir_size, loaded_source, machine, mixed_changes, recvlogical, run_measured,
    weir_until_caught_up,
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rows = env_or("WEIR_BENCH_ROWS", 1_000_000);
    let changes_wanted = env_or("WEIR_BENCH_CHANGES", rows);
    let rounds = env_or("WEIR_BENCH_ROUNDS", 2) as usize;
    let pg = TempPostgres::start().expect("start PostgreSQL");
    println!(
        "weir mirror benchmark: {rows}-row load, then {changes_wanted} changes (60% updates, 20% inserts, 20% deletes), 7 columns"
    );
    println!("machine: {}", machine());
    let db = "bench_mirror";
    let load = Instant::now();
    loaded_source(&pg, db, &["mirror_src", "mirror_read"], rows);
    let study = ReadStudy::new(&pg.url(db));
    study.catch_up();
    let fresh = study.read("after the load", rows);
    let mut running = study.run();
    mixed_changes(
        &mut |sql| {
            pg.psql(db, sql).unwrap();
        },
        rows,
        changes_wanted,
    );
    let changes = pg
        .psql(db, "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('mirror_src', NULL, NULL, 'proto_version', '1', 'publication_names', 'weir_bench') WHERE get_byte(data, 0) IN (73, 85, 68)")
        .unwrap();
    let changes: u64 = changes.trim().parse().unwrap();
    let end_lsn = pg
        .psql(db, "SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .to_string();
    let source_rows: u64 = pg
        .psql(db, "SELECT count(*) FROM bench")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    println!(
        "written in {:.1}s: {changes} row changes (inserts, updates, deletes), WAL end {end_lsn}, {source_rows} rows now",
        load.elapsed().as_secs_f64(),
    );
    // SIGTERM: the pipeline finishes the batch in hand and stops.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status();
    assert!(
        stopped.unwrap().success(),
        "kill -TERM the read study's pipeline"
    );
    assert!(
        running.wait().unwrap().success(),
        "the read study's pipeline failed"
    );
    study.catch_up();
    let changed = study.read("after the changes", source_rows);
    study.compact();
    let compacted = study.read("after weir lake compact", source_rows);
    println!(
        "  read time: {:.2}x the fresh table's after the changes, {:.2}x after compaction",
        changed / fresh,
        compacted / fresh
    );
    let total = changes as f64;
    for r in 0..rounds {
        let (ref_slot, weir_slot) = (format!("mirror_ref_{r}"), format!("mirror_weir_{r}"));
        for s in [&ref_slot, &weir_slot] {
            pg.psql(
                db,
                &format!("SELECT pg_copy_logical_replication_slot('mirror_src', '{s}')"),
            )
            .unwrap();
        }
        let reference = recvlogical(&pg.url(db), &ref_slot, &end_lsn);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{}\"\nslot = \"{weir_slot}\"\npublication = \"weir_bench\"\ntables = [\"public.bench\"]\nsnapshot = \"never\"\n\n\
                 [[sink]]\ntype = \"iceberg\"\nwarehouse = \"file://{}\"\nmode = \"mirror\"\ncommit_interval = \"10s\"\nindex_dir = \"{}\"\n",
                pg.url(db),
                dir.path().join("lake").display(),
                dir.path().join("index").display()
            ),
        )
        .unwrap();
        let bin = env!("CARGO_BIN_EXE_weir-e2e");
        let (status, seconds, peak) = run_measured(&mut weir_until_caught_up(bin, &config), false);
        assert!(status.success(), "weir failed");
        let verified = std::process::Command::new(bin)
            .args(["verify", config.to_str().unwrap()])
            .env("WEIR_LOG", "warn")
            .output()
            .expect("run weir verify");
        assert!(
            verified.status.success(),
            "the mirror differs from the source:\n{}",
            String::from_utf8_lossy(&verified.stdout)
        );
        let index = dir_size(&dir.path().join("index"));
        let data = dir.path().join("lake").join("public").join("bench");
        let (data_files, delete_files) = count_files(&data.join("data"));
        let commits = count_named(&data.join("metadata"), "snap-");
        println!(
            "  round {}: pg_recvlogical {:>8.0} changes/s   weir {:>8.0} changes/s   ratio {:.2}   peak RSS {} MiB   index {} MiB   {} commits, {:.1} data and {:.1} delete files per commit",
            r + 1,
            total / reference,
            total / seconds,
            reference / seconds,
            peak / 1024,
            index >> 20,
            commits,
            data_files as f64 / commits.max(1) as f64,
            delete_files as f64 / commits.max(1) as f64,
        );
        for s in [&ref_slot, &weir_slot] {
            pg.psql(db, &format!("SELECT pg_drop_replication_slot('{s}')"))
                .unwrap();
        }
    }
}

/// A mirror pipeline on the slot `mirror_read` (commits every second) and its table's
/// read time.
struct ReadStudy {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl ReadStudy {
    fn new(url: &str) -> ReadStudy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("read.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{url}\"\nslot = \"mirror_read\"\npublication = \"weir_bench\"\ntables = [\"public.bench\"]\nsnapshot = \"never\"\n\n\
                 [[sink]]\ntype = \"iceberg\"\nwarehouse = \"file://{}\"\nmode = \"mirror\"\ncommit_interval = \"1s\"\nindex_dir = \"{}\"\n",
                dir.path().join("lake").display(),
                dir.path().join("index").display()
            ),
        )
        .unwrap();
        ReadStudy { dir, config }
    }

    fn weir(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"));
        command.args(args).env("WEIR_LOG", "warn");
        command
    }

    fn catch_up(&self) {
        let config = self.config.to_str().unwrap();
        let status = self.weir(&["run", config, "--until-caught-up"]).status();
        assert!(
            status.unwrap().success(),
            "the read study's pipeline failed"
        );
    }

    /// The pipeline running until stopped.
    fn run(&self) -> std::process::Child {
        let config = self.config.to_str().unwrap();
        self.weir(&["run", config])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn compact(&self) {
        let config = self.config.to_str().unwrap();
        let out = self
            .weir(&["lake", "compact", config, "public.bench"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "weir lake compact failed: {said}");
        println!("  weir lake compact: {}", said.trim().replace('\n', "; "));
    }

    /// Seconds PyIceberg takes to read the whole table (best of three); the rows must be
    /// `rows`.
    fn read(&self, when: &str, rows: u64) -> f64 {
        let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/read_time.py");
        let catalog = self.dir.path().join("lake").join("catalog.db");
        let out = std::process::Command::new(python)
            .args([script, catalog.to_str().unwrap(), "public.bench"])
            .output()
            .expect("run tests/py/read_time.py (set WEIR_TEST_PYTHON to a Python with pyiceberg)");
        assert!(
            out.status.success(),
            "read_time.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            read["rows"], rows,
            "the mirror table {when} has the source's rows"
        );
        let seconds = read["seconds"].as_f64().unwrap();
        println!(
            "  read with PyIceberg {when}: {seconds:.2}s ({} data files, {} delete files)",
            read["data_files"], read["delete_files"]
        );
        seconds
    }
}

/// Data files and position delete files (named `-del-`) under `dir`.
fn count_files(dir: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|e| {
            e.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let deletes = names.iter().filter(|n| n.contains("-del-")).count();
    (names.len() - deletes, deletes)
}

fn count_named(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|e| {
            e.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}
