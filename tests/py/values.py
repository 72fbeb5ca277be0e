"""Each value of a changelog as text, read back by DuckDB, for the type round-trip test.

Usage: values.py TABLE_DIR

Prints a JSON list of rows (ordered by id), each {column: text or null}: DuckDB's own
rendering of the value read from Parquet (CAST AS VARCHAR; BLOB as lowercase hex), or,
for a value its column type could not hold, the text weir kept in _cdc_unfit.
"""
import glob
import json
import sys

import duckdb


def main():
    files = sorted(glob.glob(f"{sys.argv[1]}/**/*.parquet", recursive=True))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW log AS SELECT * FROM read_parquet([{file_list}], union_by_name = true, hive_partitioning = false)")
    types = {r[0]: r[1] for r in con.execute("DESCRIBE log").fetchall()}
    exprs = []
    for c, t in types.items():
        if c.startswith("_cdc_"):
            continue
        q = c.replace("'", "''")
        v = f'lower(hex("{c}"))' if t == "BLOB" else f'CAST("{c}" AS VARCHAR)'
        exprs.append(f"coalesce({v}, json_extract_string(_cdc_unfit, '$.\"{q}\"')) AS \"{c}\"")
    cur = con.execute(f"SELECT {', '.join(exprs)} FROM log WHERE _cdc_op IN ('r', 'c') ORDER BY id")
    names = [d[0] for d in cur.description]
    print(json.dumps({"types": types, "rows": [dict(zip(names, r)) for r in cur.fetchall()]}))


if __name__ == "__main__":
    main()
