"""The files of a changelog with their schema version, columns and row count (DuckDB).

Usage: versions.py TABLE_DIR
Prints a JSON list sorted by schema version then file: {"version", "columns", "rows"}.
"""
import glob
import json
import sys

import duckdb


def main():
    con = duckdb.connect()
    out = []
    for f in sorted(glob.glob(f"{sys.argv[1]}/**/*.parquet", recursive=True)):
        q = f.replace("'", "''")
        meta = dict(
            (k.decode(), v.decode())
            for k, v in con.execute(f"SELECT key, value FROM parquet_kv_metadata('{q}')").fetchall()
        )
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{q}', hive_partitioning = false)").fetchall()]
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{q}', hive_partitioning = false)").fetchone()[0]
        out.append({"version": int(meta["weir.schema_version"]), "columns": [c for c in columns if not c.startswith("_cdc_")], "rows": rows, "file": f})
    out.sort(key=lambda x: (x["version"], x["file"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
