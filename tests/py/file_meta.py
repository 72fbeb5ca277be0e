"""Per-file view of a Parquet changelog directory (DuckDB), used by the hot-reload test.

Usage: file_meta.py TABLE_DIR COLUMN

Prints a JSON list, one object per Parquet file: its `weir.transforms` metadata, its row
count, and how the non-null values of COLUMN look: `redacted` ("[redacted]"), `sha256`
(64 hex digits) or `other`.
"""
import glob
import json
import re
import sys

import duckdb


def main():
    table_dir, column = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    out = []
    for f in sorted(glob.glob(f"{table_dir}/**/*.parquet", recursive=True)):
        meta = dict(
            (k.decode(), v.decode())
            for k, v in con.execute("SELECT key, value FROM parquet_kv_metadata(?)", [f]).fetchall()
        )
        values = [r[0] for r in con.execute(f'SELECT "{column}" FROM read_parquet(?)', [f]).fetchall()]
        kinds = {"redacted": 0, "sha256": 0, "other": 0}
        for v in values:
            if v is None:
                continue
            if v == "[redacted]":
                kinds["redacted"] += 1
            elif re.fullmatch(r"[0-9a-f]{64}", v):
                kinds["sha256"] += 1
            else:
                kinds["other"] += 1
        out.append({"file": f, "transforms": meta.get("weir.transforms"), "rows": len(values), **kinds})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
