"""Independent reader for weir's Parquet changelog (DuckDB), used by the e2e tests.

Usage: changelog.py TABLE_DIR KEY[,KEY...]

Prints one JSON object:
  rows        the table's current state rebuilt from the changelog, ordered by key
  ops         count of changelog rows per _cdc_op
  duplicates  number of (_cdc_commit_lsn, _cdc_seq) pairs that appear more than once
  files       number of Parquet files read
  delete_rows the delete rows, as full rows (to check what a delete carries)
  max_commit_lsn the highest _cdc_commit_lsn
  unchanged_rows number of rows naming unchanged TOAST columns
"""
import glob
import json
import sys

import duckdb


def main():
    table_dir, keys = sys.argv[1], sys.argv[2].split(",")
    files = sorted(glob.glob(f"{table_dir}/**/*.parquet", recursive=True))
    if not files:
        print(json.dumps(empty(0)))
        return
    con = duckdb.connect()
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW raw AS SELECT * FROM read_parquet([{file_list}], union_by_name = true, hive_partitioning = false)"
    )
    print(json.dumps(report(con, keys, len(files)), default=str))


def empty(files):
    return {"rows": [], "ops": {}, "duplicates": 0, "files": files, "delete_rows": [], "max_commit_lsn": 0, "unchanged_rows": 0}


def report(con, keys, files):
    """The summary of the changelog in relation `raw` of DuckDB connection `con`."""
    out = empty(files)
    con.execute(
        "CREATE VIEW log AS SELECT *, row_number() OVER (ORDER BY _cdc_commit_lsn, _cdc_seq) AS _pos FROM raw"
    )
    key_list = ", ".join(f'"{k}"' for k in keys)
    columns = [r[0] for r in con.execute("DESCRIBE log").fetchall()]
    cdc = {"_pos", "_cdc_op", "_cdc_commit_lsn", "_cdc_seq", "_cdc_xid", "_cdc_commit_ts", "_cdc_unchanged", "_cdc_unfit"}
    source = [c for c in columns if c not in cdc]
    has_unchanged = "_cdc_unchanged" in columns

    def carried(c):
        # An update that left a TOAST value untouched names it in _cdc_unchanged: the
        # value is the last one written for that key before it.
        if not has_unchanged or c in keys:
            return f'"{c}"'
        q = c.replace("'", "''")
        return (
            f"CASE WHEN list_contains(coalesce(_cdc_unchanged, []), '{q}') THEN "
            f"(last_value(CASE WHEN NOT list_contains(coalesce(_cdc_unchanged, []), '{q}') THEN {{'v': \"{c}\"}} END IGNORE NULLS) "
            f"OVER (PARTITION BY {key_list} ORDER BY _pos ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)).v "
            f'ELSE "{c}" END AS "{c}"'
        )

    select = ", ".join(carried(c) for c in source)
    # The README's state-rebuild query.
    rebuild = f"""
        WITH since_truncate AS (
            SELECT * FROM log WHERE _pos > coalesce((SELECT max(_pos) FROM log WHERE _cdc_op = 't'), 0)
        ),
        carried AS (
            SELECT {select}, _cdc_op, _pos FROM since_truncate
        ),
        latest AS (
            SELECT *, row_number() OVER (PARTITION BY {key_list} ORDER BY _pos DESC) AS _rn FROM carried
        )
        SELECT * EXCLUDE (_pos, _rn, _cdc_op)
        FROM latest WHERE _rn = 1 AND _cdc_op <> 'd' ORDER BY {key_list}
    """
    cur = con.execute(rebuild)
    names = [d[0] for d in cur.description]
    out["rows"] = [dict(zip(names, r)) for r in cur.fetchall()]
    out["ops"] = dict(con.execute("SELECT _cdc_op, count(*) FROM log GROUP BY 1").fetchall())
    out["duplicates"] = con.execute(
        "SELECT count(*) FROM (SELECT _cdc_commit_lsn, _cdc_seq FROM log GROUP BY 1, 2 HAVING count(*) > 1)"
    ).fetchone()[0]
    out["duplicate_examples"] = [
        list(r) for r in con.execute(
            "SELECT _cdc_commit_lsn, _cdc_seq, list(_cdc_op), list(_cdc_commit_ts::VARCHAR) FROM log GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5"
        ).fetchall()
    ]
    out["max_commit_lsn"] = con.execute("SELECT max(_cdc_commit_lsn) FROM log").fetchone()[0]
    if has_unchanged:
        out["unchanged_rows"] = con.execute("SELECT count(*) FROM log WHERE len(_cdc_unchanged) > 0").fetchone()[0]
    cur = con.execute("SELECT * EXCLUDE (_pos) FROM log WHERE _cdc_op = 'd' ORDER BY _pos")
    names = [d[0] for d in cur.description]
    out["delete_rows"] = [dict(zip(names, r)) for r in cur.fetchall()]
    return out


if __name__ == "__main__":
    main()
