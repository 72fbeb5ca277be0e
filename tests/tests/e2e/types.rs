//! Type fidelity: every built-in type, snapshotted and streamed, read back by DuckDB and
//! compared value by value with PostgreSQL's own rendering; unchanged TOAST values.

use crate::harness::{TestDb, assert_same_state, stderr};
use crate::snapshot::logged_field;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

/// Column name, type, and two values (SQL literals): ordinary and edge.
type Spec = (&'static str, &'static str, &'static str, &'static str);

const COLUMNS: &[Spec] = &[
    ("b", "bool", "true", "false"),
    ("i2", "int2", "-32768", "32767"),
    ("i4", "int4", "-2147483648", "2147483647"),
    ("i8", "int8", "-9223372036854775808", "9223372036854775807"),
    ("o", "oid", "4294967295", "0"),
    ("f4", "float4", "3.14", "'NaN'"),
    ("f8", "float8", "-1e+100", "'-Infinity'"),
    ("f8b", "float8", "0.1", "'Infinity'"),
    (
        "n",
        "numeric",
        "'NaN'",
        "123456789012345678901234567890.123456789012345678901234567890",
    ),
    ("ninf", "numeric", "'Infinity'", "'-Infinity'"),
    ("n2", "numeric(10,2)", "-12345678.90", "'NaN'"),
    (
        "n50",
        "numeric(50,10)",
        "1234567890123456789012345678901234567890.0123456789",
        "0",
    ),
    ("m", "money", "12.34", "-0.01"),
    ("t", "text", "'héllo, \"wörld\"\n\ttab'", "''"),
    ("vc", "varchar(20)", "'abc'", "' '"),
    ("c", "char(5)", "'ab'", "'abcde'"),
    ("nm", "name", "'a_name'", "'x'"),
    ("by", "bytea", "'\\x00ff10'", "''"),
    (
        "u",
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'00000000-0000-0000-0000-000000000000'",
    ),
    (
        "j",
        "json",
        "'{\"a\": [1, 2.5, null], \"b\": \"x\"}'",
        "'[]'",
    ),
    (
        "jb",
        "jsonb",
        "'{\"b\": 1, \"a\": {\"c\": true}}'",
        "'\"s\"'",
    ),
    ("x", "xml", "'<a b=\"1\">t</a>'", "'<e/>'"),
    ("d", "date", "'2024-02-29'", "'infinity'"),
    ("dbc", "date", "'0044-03-15 BC'", "'-infinity'"),
    ("tm", "time", "'12:34:56.789012'", "'24:00:00'"),
    ("ttz", "timetz", "'12:34:56+05:30'", "'00:00:00-12'"),
    (
        "ts",
        "timestamp",
        "'2024-02-29 23:59:59.999999'",
        "'infinity'",
    ),
    (
        "tsz",
        "timestamptz",
        "'2024-01-01 12:00:00+02'",
        "'-infinity'",
    ),
    (
        "tsbc",
        "timestamptz",
        "'0001-01-01 00:00:00+00 BC'",
        "'2038-01-19 03:14:08+00'",
    ),
    (
        "iv",
        "interval",
        "'1 year 2 mons 3 days 04:05:06.789'",
        "'-1 days'",
    ),
    ("ip", "inet", "'192.168.0.1/24'", "'::1'"),
    ("cd", "cidr", "'10.0.0.0/8'", "'2001:db8::/32'"),
    (
        "mac",
        "macaddr",
        "'08:00:2b:01:02:03'",
        "'ff:ff:ff:ff:ff:ff'",
    ),
    (
        "mac8",
        "macaddr8",
        "'08:00:2b:01:02:03:04:05'",
        "'00:00:00:00:00:00:00:00'",
    ),
    ("bt", "bit(4)", "B'1010'", "B'0000'"),
    ("vb", "varbit", "B'1'", "B''"),
    ("tv", "tsvector", "'a fat cat'", "''"),
    ("en", "mood", "'happy'", "'sad'"),
    ("dm", "posint", "42", "1"),
    ("cp", "pair", "ROW(1, 'x')", "ROW(NULL, '')"),
    ("r", "int4range", "'[1,10)'", "'empty'"),
    ("tr", "tstzrange", "'[2024-01-01 00:00:00+00,)'", "'(,)'"),
    ("mr", "int4multirange", "'{[1,3), [5,7)}'", "'{}'"),
    ("ai", "int4[]", "ARRAY[1, NULL, 3]", "'{}'"),
    (
        "at",
        "text[][]",
        "ARRAY[['a', 'b \"q\"'], ['NULL', NULL]]",
        "'{}'",
    ),
    (
        "ats",
        "timestamptz[]",
        "ARRAY['2024-01-01 00:00:00+00'::timestamptz, 'infinity']",
        "'{}'",
    ),
    ("pt", "point", "'(1.5,-2)'", "'(0,0)'"),
    // Types whose cast to text renders differently from their output function, and a
    // domain over one (the snapshot's COPY must not cast them).
    ("ch", "\"char\"", "'a'", "'Z'"),
    ("ab", "bool[]", "ARRAY[true, NULL, false]", "'{}'"),
    ("fl", "flag", "true", "false"),
    ("ipd", "ipaddr", "'10.1.2.3'", "'::ffff:1.2.3.4/128'"),
];

fn values_as_duckdb_reads_them(dir: &Path) -> Value {
    serde_json::from_slice(&crate::harness::py("values.py", &[dir])).unwrap()
}

/// PostgreSQL's rendering of a value, in the form DuckDB's differs by only in notation.
fn normalize(column: &str, pg: &str) -> String {
    match column {
        "b" | "fl" => (if pg == "t" { "true" } else { "false" }).to_string(),
        // DuckDB writes the era after the date: `0001-01-01 (BC) 00:00:00+00`.
        "d" | "dbc" | "ts" | "tsz" | "tsbc" => match pg.strip_suffix(" BC") {
            Some(rest) => match rest.split_once(' ') {
                Some((date, time)) => format!("{date} (BC) {time}"),
                None => format!("{rest} (BC)"),
            },
            None => pg.to_string(),
        },
        _ => pg.to_string(),
    }
}

fn same_float(pg: &str, duck: &str, single: bool) -> bool {
    let p: f64 = pg.parse().unwrap_or(f64::NAN);
    let d: f64 = duck.parse().unwrap_or(f64::NAN);
    if p.is_nan() || d.is_nan() {
        return p.is_nan() && d.is_nan() && pg.contains("NaN");
    }
    if single { p as f32 == d as f32 } else { p == d }
}

/// Table `t` with an id and `columns`; rows 1-3 (each column's ordinary value, its edge
/// value, NULL) exist before weir starts and are snapshotted, 4-6 are streamed.
fn snapshot_then_stream(db: &TestDb, columns: &[Spec], config: &Path) {
    let defs: Vec<String> = columns
        .iter()
        .map(|(n, t, _, _)| format!("{n} {t}"))
        .collect();
    db.sql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, {})",
        defs.join(", ")
    ));
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let insert = |id: i32, pick: &dyn Fn(&Spec) -> String| {
        let values: Vec<String> = columns
            .iter()
            .map(|c| format!("({})::{}", pick(c), c.1))
            .collect();
        db.sql(&format!(
            "INSERT INTO t (id, {}) VALUES ({id}, {})",
            names.join(", "),
            values.join(", ")
        ));
    };
    for base in [0, 3] {
        if base == 3 {
            db.catch_up(config);
        }
        insert(base + 1, &|c| c.2.to_string());
        insert(base + 2, &|c| c.3.to_string());
        insert(base + 3, &|_| "NULL".to_string());
    }
    db.catch_up(config);
}

#[test]
fn every_type_round_trips_through_snapshot_and_stream() {
    let db = TestDb::new("types");
    db.sql("CREATE TYPE mood AS ENUM ('sad', 'happy')");
    db.sql("CREATE DOMAIN posint AS int CHECK (VALUE > 0)");
    db.sql("CREATE TYPE pair AS (a int, b text)");
    db.sql("CREATE DOMAIN flag AS bool");
    db.sql("CREATE DOMAIN ipaddr AS inet");
    // Arrays in their text form here (an output written before lists); as lists in the
    // test below.
    let config = db.config_with(&["public.t"], "", "", "nested_types = false");
    snapshot_then_stream(&db, COLUMNS, &config);

    let read = values_as_duckdb_reads_them(&db.out().join("public").join("t"));
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "3 snapshot rows and 3 streamed rows");
    let text_list: Vec<String> = COLUMNS
        .iter()
        .map(|(n, t, _, _)| match *t {
            "bytea" => format!("encode({n}, 'hex')"),
            // The type's output function, as pgoutput renders values (`::text` differs
            // for a few types: char(n) drops its padding, inet adds a netmask).
            _ => format!("CASE WHEN NOT ({n} IS NULL) THEN format('%s', {n}) END"),
        })
        .collect();
    let pg: Value = serde_json::from_str(&db.sql(&format!(
        "SELECT json_agg(json_build_array({}) ORDER BY id) FROM t",
        text_list.join(", ")
    )))
    .unwrap();
    let mut mismatches = Vec::new();
    for (row, (duck, pg)) in rows.iter().zip(pg.as_array().unwrap()).enumerate() {
        for (i, (name, ty, _, _)) in COLUMNS.iter().enumerate() {
            let p = pg[i].as_str().map(|s| normalize(name, s));
            let d = duck[*name].as_str().map(str::to_string);
            let same = match (&p, &d) {
                (Some(p), Some(d)) if ty.starts_with("float") => same_float(p, d, *ty == "float4"),
                _ => p == d,
            };
            if !same {
                mismatches.push(format!(
                    "row {} {name} ({ty}): postgres {p:?}, read back {d:?}",
                    row + 1
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "values differ:\n{}",
        mismatches.join("\n")
    );
    let types = &read["types"];
    for (column, expected) in [
        ("n2", "DECIMAL(10,2)"),
        ("u", "UUID"),
        ("d", "DATE"),
        ("tm", "TIME"),
        ("tsz", "TIMESTAMP WITH TIME ZONE"),
        ("by", "BLOB"),
        ("i8", "BIGINT"),
        ("dm", "INTEGER"),
    ] {
        assert_eq!(types[column], expected, "{column} keeps a typed column");
    }
}

#[test]
fn an_unchanged_toast_value_is_marked_and_carried_forward() {
    let db = TestDb::new("toast");
    db.sql("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)");
    let config = db.config(&["public.docs"]);
    db.catch_up(&config);
    // Random hex does not compress: the value is stored out of line (TOAST).
    db.sql("INSERT INTO docs SELECT g, (SELECT string_agg(md5(random()::text || g || s), '') FROM generate_series(1, 400) s), 0 FROM generate_series(1, 5) g");
    db.sql("UPDATE docs SET n = n + 1 WHERE id <= 3");
    db.sql("UPDATE docs SET n = n + 1 WHERE id = 1");
    db.sql("UPDATE docs SET body = 'short now' WHERE id = 2");
    db.sql("UPDATE docs SET n = 7 WHERE id = 2");
    db.catch_up(&config);
    let log = assert_same_state(&db, "public.docs", "id");
    assert_eq!(log.op("u"), 6);
    assert_eq!(
        log.unchanged_rows, 4,
        "the updates that left the out-of-line body alone say so"
    );
}

#[test]
fn each_kind_of_alter_table_mid_stream_starts_a_new_schema_version() {
    let db = TestDb::new("ddl");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a int, b text)");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);
    // One run sees every change and every ALTER in one stream, without stopping.
    db.sql("INSERT INTO t VALUES (1, 1, 'x')");
    db.sql("ALTER TABLE t ADD COLUMN c text DEFAULT 'new'");
    db.sql("INSERT INTO t VALUES (2, 2, 'y', 'z')");
    db.sql("ALTER TABLE t DROP COLUMN b");
    db.sql("INSERT INTO t VALUES (3, 3, 'w')");
    db.sql("ALTER TABLE t RENAME COLUMN c TO d");
    db.sql("INSERT INTO t VALUES (4, 4, 'v')");
    db.sql("ALTER TABLE t ALTER COLUMN a TYPE bigint");
    db.sql("INSERT INTO t VALUES (5, 5000000000, 'u')");
    db.sql("UPDATE t SET a = a + 1 WHERE id = 1");
    let out = db.catch_up(&config);
    assert!(
        crate::harness::stderr(&out).contains("The table's columns changed"),
        "each change is logged"
    );

    // A restart keeps the version: the next file is version 5 again, not 1.
    db.sql("INSERT INTO t VALUES (6, 6, 't')");
    db.catch_up(&config);

    let out = crate::harness::py("versions.py", &[db.out().join("public").join("t")]);
    let files: Value = serde_json::from_slice(&out).unwrap();
    let by_version = |v: u64| -> (Vec<String>, u64) {
        let fs: Vec<&Value> = files
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["version"] == v)
            .collect();
        assert!(!fs.is_empty(), "files of schema version {v}: {files}");
        let cols = fs[0]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        (cols, fs.iter().map(|f| f["rows"].as_u64().unwrap()).sum())
    };
    assert_eq!(
        by_version(1),
        (vec!["id".into(), "a".into(), "b".into()], 1)
    );
    assert_eq!(by_version(2).0, ["id", "a", "b", "c"], "ADD COLUMN");
    assert_eq!(by_version(3).0, ["id", "a", "c"], "DROP COLUMN");
    assert_eq!(by_version(4).0, ["id", "a", "d"], "RENAME COLUMN");
    assert_eq!(
        by_version(5),
        (vec!["id".into(), "a".into(), "d".into()], 3 + 5),
        "ALTER TYPE, the row written after a restart, and the five rows read again \
         because c was added with a default"
    );
    assert!(
        files
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["version"].as_u64() <= Some(5)),
        "no new version after the restart"
    );
    let log = db.changelog("public.t", "id");
    assert_eq!((log.op("c"), log.op("u"), log.op("r")), (6, 1, 5));
    assert_eq!(log.duplicates, 0);
}

/// Column name, array type, two values (SQL literals), and the element's expected form
/// in JSON as PostgreSQL computes it from `x` (what `lists.py` makes of pyarrow's value;
/// see [`elements`]).
type ArraySpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const ARRAYS: &[ArraySpec] = &[
    ("ai", "int4[]", "ARRAY[1, NULL, 3]", "'{}'", "x"),
    (
        "ai2",
        "int2[]",
        "ARRAY[-32768, 32767]",
        "ARRAY[NULL]::int2[]",
        "x",
    ),
    (
        "ai8",
        "int8[]",
        "ARRAY[-9223372036854775808, 9223372036854775807]",
        "'{0}'",
        "x",
    ),
    (
        "atx",
        "text[]",
        r#"ARRAY['a', 'b "q" \', NULL, 'NULL', 'c,d', '', '{x}']"#,
        "'{}'",
        "x",
    ),
    (
        "avc",
        "varchar(5)[]",
        "ARRAY['ab', 'abcde']",
        "ARRAY[' ']",
        "x",
    ),
    ("abl", "bool[]", "ARRAY[true, NULL, false]", "'{}'", "x"),
    (
        "af8",
        "float8[]",
        "ARRAY[0.1, 'NaN', '-Infinity', NULL, -1e+100]",
        "ARRAY['Infinity']::float8[]",
        "to_json(x)",
    ),
    ("af4", "float4[]", "ARRAY[1.5, -0.25]", "'{}'", "to_json(x)"),
    (
        "an",
        "numeric(10,2)[]",
        "ARRAY[1.5, -12345678.90, NULL]",
        "'{0}'",
        "x::text",
    ),
    ("anu", "numeric[]", "ARRAY[1.25, 'NaN']", "'{}'", "x::text"),
    (
        "au",
        "uuid[]",
        "ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, NULL]",
        "'{}'",
        "replace(x::text, '-', '')",
    ),
    (
        "aby",
        "bytea[]",
        r"ARRAY['\x00ff10'::bytea, '', NULL]",
        "'{}'",
        "encode(x, 'hex')",
    ),
    (
        "jb",
        "jsonb[]",
        r#"ARRAY['{"a": [1, "x"]}'::jsonb, 'null', NULL]"#,
        "'{}'",
        "x",
    ),
    // Not one-dimensional lists: null in the column, PostgreSQL's text in _cdc_unfit.
    ("amd", "int4[]", "'{{1,2},{3,4}}'", "'[0:2]={1,2,3}'", "x"),
];

/// A timestamp's microseconds since the epoch, infinities as weir writes them.
fn micros(x: &str) -> String {
    format!(
        "CASE WHEN {x} IS NULL THEN NULL WHEN isfinite({x}) THEN (extract(epoch FROM {x}) * 1000000)::int8 \
         WHEN {x} > 'epoch' THEN 9223372036854775807 ELSE -9223372036854775807 END"
    )
}

/// A date's days since the epoch, infinities as weir writes them.
fn days(x: &str) -> String {
    format!(
        "CASE WHEN {x} IS NULL THEN NULL WHEN isfinite({x}) THEN {x} - '1970-01-01'::date \
         WHEN {x} > 'epoch' THEN 2147483647 ELSE -2147483647 END"
    )
}

fn interval(x: &str) -> String {
    format!(
        "CASE WHEN {x} IS NOT NULL THEN json_build_object('months', (extract(year FROM {x}) * 12 + extract(month FROM {x}))::int, \
         'days', extract(day FROM {x})::int, 'microseconds', (extract(hour FROM {x}) * 3600000000 \
         + extract(minute FROM {x}) * 60000000 + extract(microseconds FROM {x}))::int8) END"
    )
}

fn range(x: &str, bound: &dyn Fn(&str) -> String) -> String {
    format!(
        "CASE WHEN {x} IS NOT NULL THEN json_build_object('lower', {}, 'upper', {}, \
         'lower_inclusive', lower_inc({x}), 'upper_inclusive', upper_inc({x}), 'empty', isempty({x})) END",
        bound(&format!("lower({x})")),
        bound(&format!("upper({x})"))
    )
}

/// An array (or multirange) `column` as a JSON list of `element` (over `x`), when it is
/// one list: null for several dimensions or explicit bounds.
fn elements(column: &str, element: &str) -> String {
    format!(
        "CASE WHEN {column} IS NOT NULL AND array_ndims({column}) IS DISTINCT FROM 2 \
         AND array_lower({column}, 1) IS DISTINCT FROM 0 THEN coalesce((SELECT \
         json_agg({element} ORDER BY o) FROM unnest({column}) WITH ORDINALITY u(x, o)), '[]') END"
    )
}

/// A column of the nested-types tests: name, type, two values (SQL literals) and the SQL
/// of the value's expected JSON.
pub(crate) type NestedSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    String,
);

/// Intervals, ranges and multiranges, composite types and enums, and arrays of them.
fn structures() -> Vec<NestedSpec> {
    let text = |x: &str| format!("{x}::text");
    let plain = |x: &str| x.to_string();
    let when = |c: &str, e: String| format!("CASE WHEN {c} IS NOT NULL THEN {e} END");
    vec![
        (
            "ats",
            "timestamptz[]",
            "ARRAY['2024-01-01 00:00:00+02'::timestamptz, 'infinity', '1999-12-31 23:59:59.999999+00']",
            "'{}'",
            elements("ats", &micros("x")),
        ),
        (
            "ad",
            "date[]",
            "ARRAY['2024-02-29'::date, '1970-01-01', '-infinity']",
            "'{}'",
            elements("ad", &days("x")),
        ),
        (
            "iv",
            "interval",
            "'1 year 2 mons 3 days 04:05:06.789'",
            "'-1 days'",
            when("iv", interval("iv")),
        ),
        (
            "aiv",
            "interval[]",
            "ARRAY['1 day -00:00:01', '-1 year +2 mons -3 days +04:05:06', '-00:00:00.000001', '0', '178000000 years']::interval[]",
            "ARRAY['-100:00:00.5', NULL]::interval[]",
            elements("aiv", &interval("x")),
        ),
        (
            "r4",
            "int4range",
            "'[1,10)'",
            "'empty'",
            when("r4", range("r4", &plain)),
        ),
        (
            "r8",
            "int8range",
            "'(,5]'",
            "'(,)'",
            when("r8", range("r8", &plain)),
        ),
        (
            "rn",
            "numrange",
            "'[1.5,2]'",
            "'(0,)'",
            when("rn", range("rn", &text)),
        ),
        (
            "rts",
            "tsrange",
            "'[2024-01-01 00:00:00, 2024-02-01 12:00:00.5)'",
            "'[-infinity,infinity]'",
            when("rts", range("rts", &micros)),
        ),
        (
            "rtz",
            "tstzrange",
            "'[2024-01-01 00:00:00+02,)'",
            "'empty'",
            when("rtz", range("rtz", &micros)),
        ),
        (
            "rd",
            "daterange",
            "'[2024-01-01,2024-02-01)'",
            "'[2024-01-01,infinity)'",
            when("rd", range("rd", &days)),
        ),
        (
            "mr",
            "int4multirange",
            "'{[1,3), [5,7)}'",
            "'{}'",
            when(
                "mr",
                format!(
                    "coalesce((SELECT json_agg({} ORDER BY o) FROM unnest(mr) WITH ORDINALITY u(r, o)), '[]')",
                    range("r", &plain)
                ),
            ),
        ),
        (
            "mtz",
            "tstzmultirange",
            "'{[2024-01-01 00:00:00+00,2024-01-02 00:00:00+00), [2024-03-01 00:00:00+00,)}'",
            "'{}'",
            when(
                "mtz",
                format!(
                    "coalesce((SELECT json_agg({} ORDER BY o) FROM unnest(mtz) WITH ORDINALITY u(r, o)), '[]')",
                    range("r", &micros)
                ),
            ),
        ),
        (
            "ar",
            "int4range[]",
            "ARRAY['[1,2)'::int4range, 'empty', NULL]",
            "'{}'",
            elements("ar", &range("x", &plain)),
        ),
        // Declared with two dimensions: lists of lists.
        (
            "a2",
            "int4[][]",
            "'{{1,2},{3,NULL}}'",
            "'{}'",
            "to_json(a2)".into(),
        ),
        (
            "at2",
            "text[][]",
            r#"ARRAY[['a', 'b "q"'], ['NULL', NULL]]"#,
            "'{}'",
            "to_json(at2)".into(),
        ),
        // money: a decimal at lc_monetary's scale, read from its currency text.
        (
            "mo",
            "money",
            "'1234.56'",
            "'-92233720368547758.08'",
            "to_jsonb(mo::numeric::text)".into(),
        ),
        // The database's own types (created by the test below).
        (
            "cp",
            "pair",
            r#"ROW(1, 'x, "y"')"#,
            "ROW(NULL, '')",
            "to_jsonb(cp)".into(),
        ),
        (
            "co",
            "outer_t",
            "ROW(ROW(2, 'z')::pair, ARRAY['a', NULL], true)",
            "ROW(NULL, '{}', NULL)",
            "to_jsonb(co)".into(),
        ),
        (
            "acp",
            "pair[]",
            "ARRAY[ROW(1, 'a')::pair, NULL, ROW(NULL, NULL)::pair]",
            "'{}'",
            // unnest() would spread the composite into its fields.
            "CASE WHEN acp IS NOT NULL THEN coalesce((SELECT json_agg(to_jsonb(acp[i]) \
             ORDER BY i) FROM generate_subscripts(acp, 1) i), '[]') END"
                .into(),
        ),
        (
            "en",
            "mood",
            "'happy'",
            "'sad'",
            "to_jsonb(en::text)".into(),
        ),
        (
            "aen",
            "mood[]",
            "ARRAY['sad', 'happy']::mood[]",
            "'{}'",
            elements("aen", "x::text"),
        ),
        (
            "adm",
            "posint[]",
            "ARRAY[1, 2]::posint[]",
            "'{}'",
            elements("adm", "x"),
        ),
        (
            "fr",
            "floatrange",
            "'[1.5,2.5)'",
            "'empty'",
            when("fr", range("fr", &|x: &str| format!("to_json({x})"))),
        ),
    ]
}

/// Table `t` of [`ARRAYS`] and [`structures`] (with the types they need), rows 1-3
/// snapshotted and 4-6 streamed by `config`'s pipeline; returns the columns' specs.
pub(crate) fn nested_table(db: &TestDb, config: &Path) -> Vec<NestedSpec> {
    db.sql("CREATE TYPE pair AS (a int, b text)");
    db.sql("CREATE TYPE outer_t AS (p pair, tags text[], flag bool)");
    db.sql("CREATE TYPE mood AS ENUM ('sad', 'happy')");
    db.sql("CREATE DOMAIN posint AS int CHECK (VALUE > 0)");
    db.sql("CREATE TYPE floatrange AS RANGE (subtype = float8)");
    let mut specs: Vec<NestedSpec> = ARRAYS
        .iter()
        .map(|a| (a.0, a.1, a.2, a.3, elements(a.0, a.4)))
        .collect();
    specs.extend(structures());
    let columns: Vec<Spec> = specs.iter().map(|a| (a.0, a.1, a.2, a.3)).collect();
    snapshot_then_stream(db, &columns, config);
    specs
}

/// The six rows of [`nested_table`] as read back (`read["rows"]`, as `lists.py` gives
/// them) equal PostgreSQL's values, value by value; `amd` (two dimensions, explicit
/// bounds) is in `_cdc_unfit` as PostgreSQL's text.
pub(crate) fn assert_nested_values(db: &TestDb, specs: &[NestedSpec], read: &Value) {
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "3 snapshot rows and 3 streamed rows");
    let expected: Vec<&str> = specs.iter().map(|s| s.4.as_str()).collect();
    let pg: Value = serde_json::from_str(&db.sql(&format!(
        "SELECT json_agg(json_build_array({}, amd::text) ORDER BY id) FROM t",
        expected.join(", ")
    )))
    .unwrap();
    let mut mismatches = Vec::new();
    for (row, (read, pg)) in rows.iter().zip(pg.as_array().unwrap()).enumerate() {
        for (i, (name, ty, ..)) in specs.iter().enumerate() {
            if read[*name] != pg[i] {
                mismatches.push(format!(
                    "row {} {name} ({ty}): postgres {}, read back {}",
                    row + 1,
                    pg[i],
                    read[*name]
                ));
            }
        }
        let unfit = read["_cdc_unfit"]["amd"].clone();
        if unfit != pg[specs.len()] {
            mismatches.push(format!("row {} amd in _cdc_unfit: {unfit}", row + 1));
        }
    }
    assert!(
        mismatches.is_empty(),
        "values differ:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn nested_types_are_read_back_equal_by_snapshot_and_stream() {
    let db = TestDb::new("arrays");
    let config = db.config(&["public.t"]);
    let specs = nested_table(&db, &config);
    let read: Value = serde_json::from_slice(&crate::harness::py(
        "lists.py",
        &[db.out().join("public").join("t")],
    ))
    .unwrap();
    assert_nested_values(&db, &specs, &read);
    for (column, expected) in [
        ("ai", "INTEGER[]"),
        ("atx", "VARCHAR[]"),
        ("an", "DECIMAL(10,2)[]"),
        ("ats", "TIMESTAMP WITH TIME ZONE[]"),
        ("au", "UUID[]"),
        (
            "iv",
            r#"STRUCT("months" INTEGER, "days" INTEGER, "microseconds" BIGINT)"#,
        ),
        (
            "r4",
            "STRUCT(lower INTEGER, upper INTEGER, lower_inclusive BOOLEAN, upper_inclusive BOOLEAN, empty BOOLEAN)",
        ),
        ("cp", "STRUCT(a INTEGER, b VARCHAR)"),
        ("a2", "INTEGER[][]"),
        ("mo", "DECIMAL(19,2)"),
        ("aen", "VARCHAR[]"),
        ("adm", "INTEGER[]"),
    ] {
        assert_eq!(
            read["types"][column], expected,
            "DuckDB reads {column} as a list or struct"
        );
    }
    assert_eq!(
        read["metadata"]["en"]["weir.enum_labels"], r#"["sad","happy"]"#,
        "an enum's labels, in order, with its column"
    );
    // `weir verify` compares them with the source.
    let out = db
        .weir(&["verify", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
}

#[test]
fn an_output_keeps_its_form_of_arrays_until_the_user_changes_it() {
    let db = TestDb::new("array_form");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a text[])");
    db.sql("INSERT INTO t VALUES (1, '{x,y}')");
    let config = db.config_with(&["public.t"], "", "", "nested_types = false");
    db.catch_up(&config);
    let checkpoint = db
        .out()
        .join("_weir")
        .join(&db.name)
        .join("checkpoint.json");
    let recorded =
        || -> Value { serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap() };
    assert_eq!(recorded()["nested_types"], false);

    // Unset now: the checkpoint says text, so the output stays text.
    let config = db.config(&["public.t"]);
    db.sql("INSERT INTO t VALUES (2, '{z}')");
    let out = db.catch_up(&config);
    assert!(!crate::harness::stderr(&out).contains("Arrays change form"));
    // An output written by a weir before lists (no record) is text too.
    let mut old = recorded();
    old.as_object_mut().unwrap().remove("nested_types");
    std::fs::write(&checkpoint, old.to_string()).unwrap();
    db.sql("INSERT INTO t VALUES (3, '{w}')");
    db.catch_up(&config);
    assert_eq!(recorded()["nested_types"], false);

    // The user opts in: lists from the next file on, said in the log.
    let config = db.config_with(&["public.t"], "", "", "nested_types = true");
    db.sql("INSERT INTO t VALUES (4, '{v,NULL}')");
    let out = db.catch_up(&config);
    assert!(
        crate::harness::stderr(&out).contains("Arrays change form"),
        "{}",
        crate::harness::stderr(&out)
    );
    let read: Value = serde_json::from_slice(&crate::harness::py(
        "lists.py",
        &[db.out().join("public").join("t")],
    ))
    .unwrap();
    let a: Vec<Value> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["a"].clone())
        .collect();
    assert_eq!(
        a,
        [
            Value::from("{x,y}"),
            Value::from("{z}"),
            Value::from("{w}"),
            serde_json::json!(["v", null])
        ],
        "each file in one form"
    );
}

#[test]
fn a_table_with_arrays_json_ranges_intervals_and_a_composite_rebuilds_to_the_source() {
    let db = TestDb::new("nested_state");
    db.sql("CREATE TYPE address AS (street text, zip int)");
    db.sql(
        "CREATE TABLE s (id int PRIMARY KEY, n int, tags text[], doc jsonb, valid int4range, \
         span interval, addr address)",
    );
    // Documents of the first rows are large and incompressible: stored out of line, so
    // updates that leave them alone mark them unchanged.
    db.sql(
        "INSERT INTO s SELECT g, 0, ARRAY['t' || g % 7, 'x'], \
         CASE WHEN g <= 20 THEN jsonb_build_object('g', g, 'big', (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 300) i)) \
         ELSE jsonb_build_object('g', g) END, \
         int4range(g, g + 10), make_interval(days => g % 5, secs => g / 7.0), \
         ROW('Main St, ' || g, 10000 + g)::address \
         FROM generate_series(1, 2000) g",
    );
    let config = db.config(&["public.s"]);
    db.catch_up(&config);
    for step in [
        "UPDATE s SET n = n + 1 WHERE id % 3 = 0",
        "UPDATE s SET tags = tags || 'y'::text, valid = int4range(id, id + 10, '[]') WHERE id % 5 = 0",
        "DELETE FROM s WHERE id % 11 = 0",
        "INSERT INTO s SELECT g, 1, CASE g % 3 WHEN 0 THEN '{}' WHEN 1 THEN ARRAY[NULL, 'a,b', '\"q\"'] END, \
         'null', CASE WHEN g % 2 = 0 THEN 'empty'::int4range ELSE int4range(NULL, g) END, \
         make_interval(months => -1, days => 2, secs => -0.5), \
         CASE WHEN g % 4 = 0 THEN ROW(NULL, g)::address END FROM generate_series(2001, 2500) g",
        "UPDATE s SET addr.zip = 0, addr.street = '\"quoted\" (x)' WHERE id % 9 = 0",
        "UPDATE s SET span = span * -1 WHERE id % 7 = 0",
    ] {
        db.sql(step);
    }
    db.catch_up(&config);
    db.sql("UPDATE s SET doc = doc || '{\"k\": 1}' WHERE id % 13 = 0");
    db.sql("DELETE FROM s WHERE id BETWEEN 100 AND 150");
    db.sql("UPDATE s SET valid = NULL, tags = NULL WHERE id % 17 = 0");
    db.catch_up(&config);

    let log = db.changelog("public.s", "id");
    assert_eq!(log.duplicates, 0);
    assert!(
        log.unchanged_rows > 0,
        "some updates left a document out of line"
    );
    let plain = |x: &str| x.to_string();
    let expected: Value = serde_json::from_str(&db.sql(&format!(
        "SELECT json_agg(json_build_object('id', id, 'n', n, 'tags', {}, 'doc', doc::text, \
         'valid', CASE WHEN valid IS NOT NULL THEN {} END, 'span', {}, 'addr', to_jsonb(addr)) \
         ORDER BY id) FROM s",
        elements("tags", "x"),
        range("valid", &plain),
        interval("span")
    )))
    .unwrap();
    let expected = expected.as_array().unwrap();
    assert_eq!(log.rows.len(), expected.len(), "rows rebuilt");
    let differ: Vec<String> = log
        .rows
        .iter()
        .zip(expected)
        .filter(|(rebuilt, source)| rebuilt != source)
        .take(5)
        .map(|(rebuilt, source)| format!("rebuilt {rebuilt}\n source {source}"))
        .collect();
    assert!(differ.is_empty(), "rows differ:\n{}", differ.join("\n"));
}

#[test]
fn a_composite_type_altered_gets_a_new_schema_version_and_nothing_is_lost() {
    let db = TestDb::new("alter_type");
    db.sql("CREATE TYPE pair AS (a int, b text)");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, p pair)");
    db.sql("INSERT INTO t VALUES (1, ROW(1, 'x'))");
    let config = db.config(&["public.t"]);
    db.catch_up(&config);

    // Changed while weir is stopped: read at start, a new version at once.
    db.sql("ALTER TYPE pair ADD ATTRIBUTE c int");
    db.sql("UPDATE t SET p = ROW(2, 'y', 3) WHERE id = 1");
    let out = db.catch_up(&config);
    assert!(
        stderr(&out).contains("A type the table uses has a new structure"),
        "{}",
        stderr(&out)
    );

    // Changed while weir streams: the new shape does not fit the struct read at start,
    // so the value is kept as text until the next start, which makes the next version.
    let mut weir = db.spawn(&config);
    let mut lines = BufReader::new(weir.stderr.take().unwrap()).lines();
    logged_field(&mut lines, "Streaming started", "slot");
    db.sql("ALTER TYPE pair ADD ATTRIBUTE d text");
    db.sql("UPDATE t SET p = ROW(4, 'z', 5, 'w') WHERE id = 1");
    logged_field(&mut lines, "A value its column type cannot hold", "column");
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(1500));
    weir.kill().unwrap();
    weir.wait().unwrap();
    db.catch_up(&config);
    db.sql("UPDATE t SET p = ROW(6, 'v', 7, 'u') WHERE id = 1");
    db.catch_up(&config);

    let read: Value = serde_json::from_slice(&crate::harness::py(
        "lists.py",
        &[
            db.out().join("public").join("t").into_os_string(),
            "all".into(),
        ],
    ))
    .unwrap();
    let seen: Vec<(Value, Value, Value, Value)> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["_cdc_op"].clone(),
                r["_version"].clone(),
                r["p"].clone(),
                r["_cdc_unfit"]["p"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (json!("r"), json!(1), json!({"a": 1, "b": "x"}), Value::Null),
            (
                json!("u"),
                json!(2),
                json!({"a": 2, "b": "y", "c": 3}),
                Value::Null
            ),
            (json!("u"), json!(2), Value::Null, json!("(4,z,5,w)")),
            (
                json!("u"),
                json!(3),
                json!({"a": 6, "b": "v", "c": 7, "d": "u"}),
                Value::Null
            ),
        ],
        "{read}"
    );
}
