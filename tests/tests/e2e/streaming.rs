use crate::harness::{TestDb, assert_same_state};

#[test]
fn every_kind_of_change_across_tables_lands_once_and_rebuilds_the_source() {
    let db = TestDb::new("ops");
    db.sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int, status text, paid bool);
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         CREATE TABLE ignored (id int PRIMARY KEY);",
    );
    let config = db.config(&["public.orders", "public.notes"]);
    db.catch_up(&config); // creates the publication and the slot

    db.sql("INSERT INTO orders SELECT g, g % 7, 'new', false FROM generate_series(1, 500) g");
    db.sql(
        "BEGIN;
         UPDATE orders SET status = 'paid', paid = true WHERE id % 3 = 0;
         DELETE FROM orders WHERE id % 10 = 0;
         INSERT INTO notes VALUES (1, 'a'), (2, 'b');
         COMMIT;",
    );
    // Rolled back: none of it may appear.
    db.sql(
        "BEGIN; INSERT INTO orders VALUES (9999, 1, 'ghost', false); DELETE FROM notes; ROLLBACK;",
    );
    db.sql("INSERT INTO ignored VALUES (1)");
    // A key change: the old key is deleted, the new row inserted.
    db.sql("UPDATE orders SET id = 1001 WHERE id = 1");
    db.sql("TRUNCATE notes");
    db.sql("INSERT INTO notes VALUES (3, 'after the truncate')");
    db.catch_up(&config);

    let orders = assert_same_state(&db, "public.orders", "id");
    assert_eq!(orders.op("c"), 501, "500 inserts and the re-keyed row");
    assert_eq!(orders.op("u"), 166, "ids divisible by 3 up to 500");
    assert_eq!(
        orders.op("d"),
        51,
        "50 deletes and the old key of the re-keyed row"
    );
    assert!(
        orders.rows.iter().all(|r| r["id"] != 9999),
        "rolled-back insert is absent"
    );

    let notes = assert_same_state(&db, "public.notes", "id");
    assert_eq!((notes.op("c"), notes.op("t"), notes.op("d")), (3, 1, 0));
    assert_eq!(notes.rows.len(), 1);
    assert!(
        !db.out().join("public/ignored").exists(),
        "a table outside `tables` is not written"
    );
}

#[test]
fn deletes_carry_the_key_under_default_and_the_whole_row_under_full() {
    let db = TestDb::new("ident");
    db.sql(
        "CREATE TABLE keyed (id int PRIMARY KEY, a text, b int);
         CREATE TABLE full_row (id int PRIMARY KEY, a text, b int);
         ALTER TABLE full_row REPLICA IDENTITY FULL;
         CREATE TABLE no_pk (a int NOT NULL, b text NOT NULL);
         ALTER TABLE no_pk REPLICA IDENTITY FULL;",
    );
    let config = db.config(&["public.keyed", "public.full_row", "public.no_pk"]);
    db.catch_up(&config);
    for t in ["keyed", "full_row"] {
        db.sql(&format!(
            "INSERT INTO {t} SELECT g, 'v' || g, g * 10 FROM generate_series(1, 20) g"
        ));
        db.sql(&format!("UPDATE {t} SET a = 'changed' WHERE id <= 5"));
        db.sql(&format!("DELETE FROM {t} WHERE id > 15"));
    }
    db.sql("INSERT INTO no_pk SELECT g, 'x' || g FROM generate_series(1, 10) g");
    db.sql("DELETE FROM no_pk WHERE a > 7");
    db.catch_up(&config);

    let keyed = assert_same_state(&db, "public.keyed", "id");
    assert_eq!(keyed.delete_rows.len(), 5);
    for row in &keyed.delete_rows {
        assert!(
            row["id"].is_number() && row["a"].is_null() && row["b"].is_null(),
            "DEFAULT: key only: {row}"
        );
    }
    let full = assert_same_state(&db, "public.full_row", "id");
    for row in &full.delete_rows {
        assert!(
            row["a"].is_string() && row["b"].is_number(),
            "FULL: the whole old row: {row}"
        );
    }
    let no_pk = assert_same_state(&db, "public.no_pk", "a,b");
    assert_eq!(no_pk.delete_rows.len(), 3);
    assert!(no_pk.delete_rows.iter().all(|r| r["b"].is_string()));
}

#[test]
fn a_transaction_larger_than_a_batch_lands_whole_and_files_roll_inside_it() {
    let db = TestDb::new("bigtx");
    db.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)");
    let config = db.config_with(
        &["public.big"],
        "",
        "max_events = 500",
        "target_file_size = \"128KiB\"\nrow_group_rows = 1000",
    );
    db.catch_up(&config);
    db.sql("INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g");
    db.sql("UPDATE big SET payload = 'small' WHERE id % 1000 = 0");
    db.catch_up(&config);
    let big = assert_same_state(&db, "public.big", "id");
    assert_eq!((big.op("c"), big.op("u")), (30_000, 30));
    assert!(
        big.files > 3,
        "files rolled at the target size inside the transaction: {} files",
        big.files
    );

    let checkpoint: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(db.out().join(format!("_weir/{}/checkpoint.json", db.name)))
            .unwrap(),
    )
    .unwrap();
    let commit: weir::Lsn = checkpoint["commit_lsn"].as_str().unwrap().parse().unwrap();
    let end: weir::Lsn = checkpoint["end_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        commit.0, big.max_commit_lsn,
        "the checkpoint names the last transaction, whole"
    );
    assert!(
        db.confirmed_flush().unwrap() >= end,
        "the slot is confirmed up to the checkpoint"
    );
}

#[test]
fn an_idle_slot_is_advanced_past_wal_it_does_not_need() {
    let db = TestDb::new("idle");
    db.sql("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE noise (id int PRIMARY KEY, v text)");
    let config = db.config(&["public.watched"]);
    db.catch_up(&config);
    db.sql("INSERT INTO watched VALUES (1)");
    db.catch_up(&config);
    let before = db.confirmed_flush().unwrap();
    db.sql("INSERT INTO noise SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g");
    let wal = db.current_wal_lsn();
    assert!(wal > before);
    db.catch_up(&config);
    let after = db.confirmed_flush().unwrap();
    assert!(
        after >= wal,
        "slot confirmed at {after}, the server's WAL was at {wal}: the slot holds WAL it does not need"
    );
    assert_same_state(&db, "public.watched", "id");
}

/// The peak resident memory of a running process, polled until it exits.
pub(crate) fn peak_rss_until_exit(
    child: &mut std::process::Child,
) -> (std::process::ExitStatus, u64) {
    let path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&path)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib * 1024);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_five_million_row_transaction_streams_in_bounded_memory() {
    let db = TestDb::new("huge_tx");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    db.sql("INSERT INTO t SELECT g, g % 1000, 'note ' || g FROM generate_series(1, 5000000) g");
    let mut weir = db
        .weir(&["run", config.to_str().unwrap(), "--until-caught-up"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak) = peak_rss_until_exit(&mut weir);
    assert!(status.success());
    let log = db.changelog("public.t", "id");
    assert_eq!((log.op("c"), log.duplicates), (5_000_000, 0));
    println!("peak RSS for one 5M-row transaction: {} MiB", peak >> 20);
    // Default batches (10,000 events, 8 MiB) and row groups: the transaction is about
    // 400 MB of row data, and memory stays a fraction of it.
    assert!(
        peak < 160 << 20,
        "peak RSS {} MiB is bounded by the batch and file settings, not the transaction",
        peak >> 20
    );
}
