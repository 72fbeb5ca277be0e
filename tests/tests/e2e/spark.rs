//! Apache Spark reads the Parquet changelog: PySpark in local mode (Java 17) loads every
//! file of a table and rebuilds its current state with the README's Spark SQL query,
//! equal to the source table after inserts, updates (some leaving a TOASTed value
//! unchanged), deletes, a key change and a truncate.

use crate::harness::{TestDb, assert_same_state, py};
use serde_json::Value;

/// The current state of `schema.table` rebuilt by Spark SQL from its changelog.
fn spark_state(db: &TestDb, table: &str, key: &str) -> Value {
    let (schema, name) = table.split_once('.').unwrap();
    let dir = db.out().join(schema).join(name);
    serde_json::from_slice(&py("spark_changelog.py", &[dir.to_str().unwrap(), key])).unwrap()
}

fn toasted(id: &str) -> String {
    format!(
        "(SELECT string_agg(md5(random()::text || s || {id}), '') FROM generate_series(1, 200) s)"
    )
}

#[test]
fn spark_sql_rebuilds_the_current_state_from_the_parquet_changelog() {
    let db = TestDb::new("spark");
    db.sql("CREATE TABLE docs (id int PRIMARY KEY, v int NOT NULL, body text)");
    db.sql(&format!(
        "INSERT INTO docs SELECT g, 0, {} FROM generate_series(1, 40) g",
        toasted("g")
    ));
    let config = db.config(&["public.docs"]);
    db.catch_up(&config);
    db.sql("UPDATE docs SET v = v + 1"); // bodies unchanged: TOAST values left out
    db.sql("UPDATE docs SET body = 'short ' || id WHERE id % 4 = 0");
    db.sql("DELETE FROM docs WHERE id % 5 = 0");
    // A key change (of a row whose body is short: an untouched TOASTed value is not in
    // the WAL after a key change, see the README).
    db.sql("UPDATE docs SET id = 1000 WHERE id = 4");
    db.sql("INSERT INTO docs VALUES (41, 7, NULL)");
    db.catch_up(&config);
    // DuckDB's reading first: the changelog is right, so a difference is Spark's.
    let duck = assert_same_state(&db, "public.docs", "id");
    assert!(
        duck.unchanged_rows > 0,
        "some updates left TOAST values out"
    );
    let spark = spark_state(&db, "public.docs", "id");
    assert_eq!(
        spark["rows"].as_array().unwrap(),
        &db.rows("public.docs", "id"),
        "Spark's rebuild of public.docs, with:\n{}",
        spark["query"].as_str().unwrap()
    );

    // After a truncate, only what follows it.
    db.sql("TRUNCATE docs");
    db.sql("INSERT INTO docs VALUES (1, 1, 'after')");
    db.catch_up(&config);
    let spark = spark_state(&db, "public.docs", "id");
    assert_eq!(
        spark["rows"].as_array().unwrap(),
        &db.rows("public.docs", "id")
    );
}
