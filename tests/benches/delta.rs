//! Delta Lake benchmark: weir writing Delta changelog and mirror tables against
//! `pg_recvlogical` draining a copy of the same slot, in one run.
//!
//! `cargo bench -p weir-tests --bench delta` (env `WEIR_BENCH_ROWS`, default 1M;
//! `WEIR_BENCH_CHANGES`, default as many as rows; `WEIR_BENCH_ROUNDS`, default 1;
//! `WEIR_BENCH_ONLY=<text>` runs the scenarios whose label contains it;
//! `WEIR_TEST_PYTHON`, a Python with `deltalake`).
//!
//! A throwaway PostgreSQL gets the benchmarks' 7-column table and a slot, then the
//! insert workload (`WEIR_BENCH_ROWS` inserts in 10k-row transactions); the insert
//! scenarios drain copies of the slot to the load's end. Then the mixed workload's
//! changes (`WEIR_BENCH_CHANGES`: 60% updates, 20% inserts, 20% deletes spread over the
//! key space, 10k changes per transaction); the mixed scenarios drain copies of the slot
//! from before the load to the end (the load and the changes). Each scenario runs
//! `weir run --until-caught-up` (`snapshot = "never"`) into a fresh directory and checks
//! the table against the source with the `deltalake` package (a mirror: row count and
//! sums; a changelog: one row per change). Reported: changes per second, the ratio to
//! `pg_recvlogical`, CPU seconds per million changes, peak RSS, the table's versions and
//! bytes written; for mirrors, the time and peak RSS of opening the table again (`weir
//! lake snapshots`: the key index read from the live files).

use std::path::Path;
use weir::pgtemp::TempPostgres;
use weir_tests::bench::{
    dir_size, loaded_source, machine, measure, mixed_changes, recvlogical, weir_until_caught_up,
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A scenario: its label, the sink's options, and whether it is a mirror.
struct Scenario {
    label: &'static str,
    options: &'static str,
    mirror: bool,
}

const INSERTS: &[Scenario] = &[
    Scenario {
        label: "insert: changelog, 60s",
        options: "mode = \"changelog\"\ncommit_interval = \"60s\"",
        mirror: false,
    },
    Scenario {
        label: "insert: mirror, 60s, 128MiB",
        options: "mode = \"mirror\"\ncommit_interval = \"60s\"",
        mirror: true,
    },
];

const MIXED: &[Scenario] = &[
    Scenario {
        label: "mixed: changelog, 60s",
        options: "mode = \"changelog\"\ncommit_interval = \"60s\"",
        mirror: false,
    },
    Scenario {
        label: "mixed: mirror, 60s, 128MiB",
        options: "mode = \"mirror\"\ncommit_interval = \"60s\"",
        mirror: true,
    },
    Scenario {
        label: "mixed: mirror, 10s, 128MiB",
        options: "mode = \"mirror\"\ncommit_interval = \"10s\"",
        mirror: true,
    },
    Scenario {
        label: "mixed: mirror, 1s, 128MiB",
        options: "mode = \"mirror\"\ncommit_interval = \"1s\"",
        mirror: true,
    },
    Scenario {
        label: "mixed: mirror, 1s, 8MiB",
        options: "mode = \"mirror\"\ncommit_interval = \"1s\"\ntarget_file_size = \"8MiB\"",
        mirror: true,
    },
];

fn main() {
    let rows = env_or("WEIR_BENCH_ROWS", 1_000_000);
    let changes_wanted = env_or("WEIR_BENCH_CHANGES", rows);
    let rounds = env_or("WEIR_BENCH_ROUNDS", 1) as usize;
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    let pg = TempPostgres::start().expect("start PostgreSQL");
    println!(
        "weir Delta Lake benchmark: {rows}-row load, then {changes_wanted} changes (60% updates, 20% inserts, 20% deletes), 7 columns"
    );
    println!("machine: {}", machine());
    let db = "bench_delta";
    loaded_source(&pg, db, &["delta_src"], rows);
    let bench = Bench {
        pg: &pg,
        db,
        rounds,
        only: &only,
    };
    bench.scenarios(INSERTS, rows);
    mixed_changes(
        &mut |sql| {
            pg.psql(db, sql).unwrap();
        },
        rows,
        changes_wanted,
    );
    let changes: u64 = pg
        .psql(db, "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('delta_src', NULL, NULL, 'proto_version', '1', 'publication_names', 'weir_bench') WHERE get_byte(data, 0) IN (73, 85, 68)")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    bench.scenarios(MIXED, changes);
}

struct Bench<'a> {
    pg: &'a TempPostgres,
    db: &'a str,
    rounds: usize,
    only: &'a str,
}

impl Bench<'_> {
    /// Runs `scenarios` on copies of the slot, to the WAL's end now (`changes` row
    /// changes).
    fn scenarios(&self, scenarios: &[Scenario], changes: u64) {
        let (pg, db) = (self.pg, self.db);
        let end_lsn = pg
            .psql(db, "SELECT pg_current_wal_lsn()")
            .unwrap()
            .trim()
            .to_string();
        let source: serde_json::Value = serde_json::from_str(
            pg.psql(
                db,
                "SELECT json_build_object('rows', count(*), 'ids', coalesce(sum(id), 0), 'amount', coalesce(sum(amount), 0)::text) FROM bench",
            )
            .unwrap()
            .trim(),
        )
        .unwrap();
        println!("{changes} row changes to drain, WAL end {end_lsn}; the source: {source}");
        for s in scenarios.iter().filter(|s| s.label.contains(self.only)) {
            for r in 0..self.rounds {
                self.run(s, r, changes, &end_lsn, &source);
            }
        }
    }

    fn run(
        &self,
        scenario: &Scenario,
        round: usize,
        changes: u64,
        end_lsn: &str,
        source: &serde_json::Value,
    ) {
        let (pg, db) = (self.pg, self.db);
        let (ref_slot, weir_slot) = ("delta_ref", "delta_weir");
        for s in [ref_slot, weir_slot] {
            pg.psql(
                db,
                &format!("SELECT pg_copy_logical_replication_slot('delta_src', '{s}')"),
            )
            .unwrap();
        }
        let reference = recvlogical(&pg.url(db), ref_slot, end_lsn);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bench.toml");
        let lake = dir.path().join("lake");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{}\"\nslot = \"{weir_slot}\"\npublication = \"weir_bench\"\ntables = [\"public.bench\"]\nsnapshot = \"never\"\n\n\
                 [[sink]]\ntype = \"delta\"\nurl = \"file://{}\"\n{}\n",
                pg.url(db),
                lake.display(),
                scenario.options,
            ),
        )
        .unwrap();
        let bin = env!("CARGO_BIN_EXE_weir-e2e");
        let m = measure(&mut weir_until_caught_up(bin, &config), false);
        assert!(m.status.success(), "weir failed");
        let table = lake.join("public").join("bench");
        let read = sums(&table);
        if scenario.mirror {
            for key in ["rows", "ids", "amount"] {
                assert_eq!(
                    read[key], source[key],
                    "the mirror's {key} differ from the source's: {read} against {source}"
                );
            }
        } else {
            assert_eq!(
                read["rows"].as_u64().unwrap(),
                changes,
                "one changelog row per change"
            );
        }
        let versions = count_files(&table.join("_delta_log"), ".json");
        let written = dir_size(&table);
        let mut line = format!(
            "  {} (round {}): pg_recvlogical {:>8.0} changes/s   weir {:>8.0} changes/s   ratio {:.2}   {:.2} s CPU per M   peak RSS {} MiB   {} versions   {} MiB written   {} live files",
            scenario.label,
            round + 1,
            changes as f64 / reference,
            changes as f64 / m.seconds,
            reference / m.seconds,
            m.cpu_seconds * 1e6 / changes as f64,
            m.peak_rss_kib / 1024,
            versions,
            written >> 20,
            read["files"],
        );
        if scenario.mirror {
            let mut open = std::process::Command::new(bin);
            open.args([
                "lake",
                "snapshots",
                config.to_str().unwrap(),
                "public.bench",
            ])
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::null());
            let o = measure(&mut open, false);
            assert!(o.status.success(), "weir lake snapshots failed");
            line += &format!(
                "   reopened (index of {} keys) in {:.2}s, peak RSS {} MiB",
                read["rows"],
                o.seconds,
                o.peak_rss_kib / 1024
            );
        }
        println!("{line}");
        for s in [ref_slot, weir_slot] {
            pg.psql(db, &format!("SELECT pg_drop_replication_slot('{s}')"))
                .unwrap();
        }
    }
}

/// `delta_sums.py`'s reading of the table at `path`.
fn sums(path: &Path) -> serde_json::Value {
    let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join("delta_sums.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(path)
        .output()
        .expect("run delta_sums.py");
    assert!(
        out.status.success(),
        "delta_sums.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}
