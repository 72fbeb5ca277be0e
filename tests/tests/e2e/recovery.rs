use crate::harness::{TestDb, assert_same_state};
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn a_restart_resumes_from_the_checkpoint_without_repeating_anything() {
    let db = TestDb::new("restart");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g");
    db.catch_up(&config);
    let first = db.changelog("public.t", "id");
    db.sql("INSERT INTO t SELECT g, 0 FROM generate_series(101, 200) g");
    db.sql("UPDATE t SET v = 1 WHERE id <= 10");
    db.catch_up(&config);
    db.catch_up(&config); // nothing new: nothing written
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!((t.op("c"), t.op("u")), (200, 10));
    assert_eq!(
        t.files,
        first.files + 1,
        "the run without changes wrote no file"
    );
}

#[test]
fn sigterm_finishes_the_batch_checkpoints_and_exits_zero() {
    let db = TestDb::new("sigterm");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = db.config_with(&["public.t"], "", "", "flush_interval = \"1h\"");
    db.catch_up(&config);
    let mut weir = db.spawn(&config);
    db.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g");
    // Wait until the server has sent the changes to weir, then give its batch time to land.
    let written = db.current_wal_lsn();
    let sent = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let lsn = db.sql(&format!(
            "SELECT coalesce(max(sent_lsn), '0/0') FROM pg_stat_replication WHERE application_name = 'weir:{}'",
            db.name
        ));
        lsn.trim().parse::<weir::Lsn>().is_ok_and(|l| l >= written)
    });
    assert!(sent, "the server sent the changes to weir");
    std::thread::sleep(Duration::from_secs(1));
    // The flush interval is an hour: only a clean shutdown makes these rows durable.
    let pid = weir.id() as i32;
    assert_eq!(unsafe_kill(pid, libc::SIGTERM), 0);
    let status = wait_with_timeout(&mut weir, Duration::from_secs(30));
    assert!(status.success(), "weir exits 0 on SIGTERM, got {status}");
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(t.op("c"), 1000);
}

/// Writes random transactions and counts what committed.
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    /// Set: the writer starts no new transaction; `idle` says it has stopped.
    pause: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<[u64; 3]>,
}

/// The writer paused until this is dropped.
pub(crate) struct Paused<'a>(&'a Writer);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.idle.store(false, Ordering::SeqCst);
        self.0.pause.store(false, Ordering::SeqCst);
    }
}

impl Writer {
    pub(crate) fn start(url: String) -> Writer {
        Writer::start_at(url, 1)
    }

    /// A writer whose inserts start at id `first` (a second writer on the same table).
    pub(crate) fn start_at(url: String, first: i32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (pause, idle) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (pausing, idling) = (pause.clone(), idle.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                let mut rng = rand::rng();
                let (mut next_id, mut counts) = (first, [0u64; 3]); // inserts, updates, deletes
                while !flag.load(Ordering::Relaxed) {
                    if pausing.load(Ordering::SeqCst) {
                        idling.store(true, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let tx = client.transaction().await.unwrap();
                    let n = rng.random_range(1..20);
                    let inserted = tx
                        .execute(
                            "INSERT INTO t SELECT g, 0, md5(g::text) FROM generate_series($1::int, $2::int) g",
                            &[&next_id, &(next_id + n - 1)],
                        )
                        .await
                        .unwrap();
                    let lo = rng.random_range(1..next_id.max(2));
                    let updated = tx
                        .execute("UPDATE t SET v = v + 1 WHERE id BETWEEN $1 AND $1 + 3", &[&lo])
                        .await
                        .unwrap();
                    let victim = rng.random_range(1..next_id.max(2));
                    let deleted = tx.execute("DELETE FROM t WHERE id = $1", &[&victim]).await.unwrap();
                    if rng.random_bool(0.1) {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        next_id += n;
                        counts[0] += inserted;
                        counts[1] += updated;
                        counts[2] += deleted;
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                }
                counts
            })
        });
        Writer {
            stop,
            pause,
            idle,
            handle,
        }
    }

    /// Stops writing (after the transaction under way) until the guard is dropped.
    pub(crate) fn pause(&self) -> Paused<'_> {
        self.pause.store(true, Ordering::SeqCst);
        while !self.idle.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        Paused(self)
    }

    pub(crate) fn finish(self) -> [u64; 3] {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// `rounds` runs of the command `start` makes (its output dropped), each killed with
/// SIGKILL after `ms(round)` milliseconds, so that what it wrote and did not commit stays
/// behind; `during(round)` runs halfway through each.
pub(crate) fn kill_9_rounds(
    rounds: u64,
    start: impl Fn() -> std::process::Command,
    ms: impl Fn(u64) -> u64,
    during: impl Fn(u64),
) {
    for round in 0..rounds {
        let mut weir = start()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let half = Duration::from_millis(ms(round) / 2);
        std::thread::sleep(half);
        during(round);
        std::thread::sleep(half);
        weir.kill().unwrap();
        weir.wait().unwrap();
    }
}

pub(crate) fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    // A process we started; kill(2) through the shell keeps this crate free of unsafe.
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    if status.success() { 0 } else { -1 }
}

pub(crate) fn wait_with_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("weir did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_at_random_moments_during_writes_loses_and_repeats_nothing() {
    let db = TestDb::new("kill9");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    // Small batches, frequent flushes and small files: many checkpoints to die between.
    let config = db.config_with(
        &["public.t"],
        "",
        "max_events = 200",
        "flush_interval = \"150ms\"\ntarget_file_size = \"64KiB\"\nrow_group_rows = 500",
    );
    db.catch_up(&config);
    let writer = Writer::start(db.url());
    let mut rng = rand::rng();
    let mut kills = 0;
    // 20 kill -9 at random moments, and now and then a clean stop.
    for round in 0..24 {
        let mut weir = db.spawn(&config);
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        if round % 6 == 5 {
            // Now and then a clean stop instead.
            assert_eq!(unsafe_kill(weir.id() as i32, libc::SIGINT), 0);
            assert!(wait_with_timeout(&mut weir, Duration::from_secs(30)).success());
        } else {
            weir.kill().unwrap(); // SIGKILL
            weir.wait().unwrap();
            kills += 1;
        }
    }
    let [inserts, updates, deletes] = writer.finish();
    assert!(
        inserts > 100,
        "the writer made progress ({inserts} inserts)"
    );
    db.catch_up(&config);
    let t = assert_same_state(&db, "public.t", "id");
    assert_eq!(
        (t.op("c"), t.op("u"), t.op("d")),
        (inserts, updates, deletes),
        "every committed change exactly once after {kills} kill -9"
    );
    // The evidence ledger has a record for every durable flush, and none for another.
    crate::harness::assert_audit_passes(&db, &config);
}
