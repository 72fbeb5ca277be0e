"""Independent reader for weir's Parquet changelog (DuckDB), used by the e2e tests.

Usage: changelog.py TABLE_DIR KEY[,KEY...]

Prints one JSON object:
  rows        the table's current state rebuilt from the changelog, ordered by key
  ops         count of changelog rows per _cdc_op
  duplicates  number of (_cdc_commit_lsn, _cdc_seq) pairs that appear more than once
  files       number of Parquet files read
  delete_rows the delete rows, as full rows (to check what a delete carries)
  max_commit_lsn the highest _cdc_commit_lsn
"""
import glob
import json
import sys

import duckdb


def main():
    table_dir, keys = sys.argv[1], sys.argv[2].split(",")
    files = sorted(glob.glob(f"{table_dir}/**/*.parquet", recursive=True))
    out = {"rows": [], "ops": {}, "duplicates": 0, "files": len(files), "delete_rows": [], "max_commit_lsn": 0}
    if not files:
        print(json.dumps(out))
        return
    con = duckdb.connect()
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        "CREATE VIEW log AS SELECT *, row_number() OVER (ORDER BY _cdc_commit_lsn, _cdc_seq) AS _pos "
        f"FROM read_parquet([{file_list}], union_by_name = true, hive_partitioning = false)"
    )
    key_list = ", ".join(f'"{k}"' for k in keys)
    # The README's state-rebuild query.
    rebuild = f"""
        WITH since_truncate AS (
            SELECT * FROM log WHERE _pos > coalesce((SELECT max(_pos) FROM log WHERE _cdc_op = 't'), 0)
        ),
        latest AS (
            SELECT *, row_number() OVER (PARTITION BY {key_list} ORDER BY _pos DESC) AS _rn FROM since_truncate
        )
        SELECT * EXCLUDE (_pos, _rn, _cdc_op, _cdc_commit_lsn, _cdc_seq, _cdc_xid, _cdc_commit_ts)
        FROM latest WHERE _rn = 1 AND _cdc_op <> 'd' ORDER BY {key_list}
    """
    cur = con.execute(rebuild)
    names = [d[0] for d in cur.description]
    out["rows"] = [dict(zip(names, r)) for r in cur.fetchall()]
    out["ops"] = dict(con.execute("SELECT _cdc_op, count(*) FROM log GROUP BY 1").fetchall())
    out["duplicates"] = con.execute(
        "SELECT count(*) FROM (SELECT _cdc_commit_lsn, _cdc_seq FROM log GROUP BY 1, 2 HAVING count(*) > 1)"
    ).fetchone()[0]
    out["max_commit_lsn"] = con.execute("SELECT max(_cdc_commit_lsn) FROM log").fetchone()[0]
    cur = con.execute("SELECT * EXCLUDE (_pos) FROM log WHERE _cdc_op = 'd' ORDER BY _pos")
    names = [d[0] for d in cur.description]
    out["delete_rows"] = [dict(zip(names, r)) for r in cur.fetchall()]
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
