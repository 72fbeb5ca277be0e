//! Helpers shared by weir's end-to-end tests and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Builds a plugin crate of the workspace into a WebAssembly component (release,
/// `wasm32-wasip2`) under `target_dir`, and returns the component's path.
pub fn build_component(package: &str, target_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building {package} for wasm32-wasip2 failed (rustup target add wasm32-wasip2):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(wasm.exists(), "{} was not produced", wasm.display());
    wasm
}

/// What the benchmarks share: the machine they ran on and a process's peak memory.
pub mod bench {
    /// Peak resident set size of a live process, from /proc.
    pub fn vm_hwm_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The machine, for the report: cores, CPU model, memory.
    pub fn machine() -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        format!(
            "{} cores, {cpu}, {} GiB RAM",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem / (1 << 20)
        )
    }

    /// Seconds `pg_recvlogical` takes to drain `slot` of database `url` to `end_lsn`
    /// (pgoutput, publication `weir_bench`): the WAL sender's own rate.
    pub fn recvlogical(url: &str, slot: &str, end_lsn: &str) -> f64 {
        let started = std::time::Instant::now();
        let status = std::process::Command::new("pg_recvlogical")
            .args([
                "-d",
                url,
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "-E",
                end_lsn,
            ])
            .args(["-f", "/dev/null", "-o", "proto_version=1"])
            .args(["-o", "publication_names=weir_bench"])
            .status()
            .expect("run pg_recvlogical");
        assert!(status.success(), "pg_recvlogical failed");
        started.elapsed().as_secs_f64()
    }

    /// A benchmarked process's run: exit status, wall seconds, peak RSS (KiB) and the
    /// CPU seconds (user and system) it used.
    pub struct Measured {
        pub status: std::process::ExitStatus,
        pub seconds: f64,
        pub peak_rss_kib: u64,
        pub cpu_seconds: f64,
    }

    /// Runs `command` to its end, reading its peak RSS from /proc every 20 ms (printed
    /// every 500 ms with `trace`); returns its status, wall seconds and peak RSS (KiB).
    pub fn run_measured(
        command: &mut std::process::Command,
        trace: bool,
    ) -> (std::process::ExitStatus, f64, u64) {
        let m = measure(command, trace);
        (m.status, m.seconds, m.peak_rss_kib)
    }

    /// [`run_measured`], with the process's CPU time: the growth of the waited-for
    /// children's user and system time (`getrusage(RUSAGE_CHILDREN)`) across its run, so
    /// nothing else may be waited for meanwhile (this function is the only waiter).
    pub fn measure(command: &mut std::process::Command, trace: bool) -> Measured {
        let cpu_before = children_cpu_seconds();
        let started = std::time::Instant::now();
        let mut child = command.spawn().expect("start the benchmarked process");
        let (mut peak, mut last_trace) = (0, started);
        let status = loop {
            peak = peak.max(vm_hwm_kib(child.id()));
            if trace && last_trace.elapsed().as_millis() > 500 {
                last_trace = std::time::Instant::now();
                let secs = started.elapsed().as_secs_f64();
                eprintln!("    {secs:>5.1}s RSS {} MiB", peak / 1024);
            }
            if let Some(status) = child.try_wait().expect("wait for the process") {
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Measured {
            status,
            seconds: started.elapsed().as_secs_f64(),
            peak_rss_kib: peak,
            cpu_seconds: children_cpu_seconds() - cpu_before,
        }
    }

    /// User plus system CPU seconds of every child this process has waited for.
    #[allow(unsafe_code)] // one libc call, with no safe wrapper among the dependencies
    fn children_cpu_seconds() -> f64 {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
            usage
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }

    /// `weir run CONFIG --until-caught-up` of binary `bin`, logging at `WEIR_BENCH_LOG`
    /// (default `warn`), its standard output dropped.
    pub fn weir_until_caught_up(bin: &str, config: &std::path::Path) -> std::process::Command {
        let mut command = std::process::Command::new(bin);
        command
            .args([
                "run",
                config.to_str().expect("a UTF-8 path"),
                "--until-caught-up",
            ])
            .env(
                "WEIR_LOG",
                std::env::var("WEIR_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null());
        command
    }

    /// The benchmarks' table: seven columns of the common types.
    pub const TABLE: &str = "CREATE TABLE bench (
    id bigint PRIMARY KEY,
    customer_id int NOT NULL,
    amount numeric(12,2) NOT NULL,
    status text NOT NULL,
    note text,
    created_at timestamptz NOT NULL,
    flagged bool NOT NULL
)";

    /// Inserts rows `start..=end` of the benchmarks' table.
    pub fn insert_rows(start: u64, end: u64) -> String {
        format!(
            "INSERT INTO bench SELECT g, g % 10007, (g % 100000) / 100.0, \
             (ARRAY['new','paid','shipped','returned'])[1 + g % 4], \
             CASE WHEN g % 3 = 0 THEN 'note ' || g END, \
             timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g % 2 = 0 \
             FROM generate_series({start}, {end}) g"
        )
    }

    /// Database `db` on `pg` with the benchmarks' table, the publication `weir_bench` and
    /// the pgoutput slots `slots`, then `rows` rows inserted in 10k-row transactions.
    pub fn loaded_source(pg: &weir::pgtemp::TempPostgres, db: &str, slots: &[&str], rows: u64) {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        pg.psql(db, TABLE).unwrap();
        pg.psql(db, "CREATE PUBLICATION weir_bench FOR TABLE bench")
            .unwrap();
        for slot in slots {
            pg.psql(
                db,
                &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
            )
            .unwrap();
        }
        let mut start = 1;
        while start <= rows {
            let end = (start + 9_999).min(rows);
            pg.psql(db, &insert_rows(start, end)).unwrap();
            start = end + 1;
        }
    }

    /// The mixed workload after a load of `rows`: `changes` row changes in 10k-change
    /// transactions, each 6k updates, 2k deletes and 2k inserts spread by a stride over
    /// the key space; `sql` runs each transaction. Returns the next free id.
    pub fn mixed_changes(sql: &mut dyn FnMut(&str), rows: u64, changes: u64) -> u64 {
        let (mut next, mut done) = (rows + 1, 0);
        let mut round = 0u64;
        while done < changes {
            let stride = 997 + round % 13;
            sql(&format!(
                "BEGIN; \
                 UPDATE bench SET amount = amount + 1, status = 'paid' WHERE id IN (SELECT (({round} * 6000 + g) * {stride}) % {next} + 1 FROM generate_series(1, 6000) g); \
                 DELETE FROM bench WHERE id IN (SELECT (({round} * 2000 + g) * {stride} + 7) % {next} + 1 FROM generate_series(1, 2000) g); \
                 {}; COMMIT;",
                insert_rows(next, next + 1_999)
            ));
            next += 2_000;
            done += 10_000;
            round += 1;
        }
        next
    }

    /// Bytes of the files below `path`.
    pub fn dir_size(path: &std::path::Path) -> u64 {
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| match e.path().is_dir() {
                        true => dir_size(&e.path()),
                        false => e.metadata().map_or(0, |m| m.len()),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Rows in the Parquet files below `path`, from their footers.
    pub fn parquet_rows(path: &std::path::Path) -> u64 {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    parquet_rows(&p)
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    let file = std::fs::File::open(&p).expect("open a Parquet file");
                    let reader = SerializedFileReader::new(file).expect("read a Parquet footer");
                    reader.metadata().file_metadata().num_rows() as u64
                } else {
                    0
                }
            })
            .sum()
    }
}
