"""Recomputes a projection ledger's evidence ids from weir's Parquet changelog (DuckDB),
as the README documents them. Used by the e2e tests.

Usage: evidence.py PROJECTION TRANSFORMS SCHEMA.TABLE=TABLE_DIR [...]

Prints one JSON object: commit LSN (as a decimal string) -> "sha256:<hex>".
"""
import glob
import hashlib
import json
import sys

import duckdb


def field(v):
    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def main():
    projection, transforms = sys.argv[1], sys.argv[2]
    changes = []  # (lsn, seq, line)
    for spec in sys.argv[3:]:
        table, table_dir = spec.split("=", 1)
        files = sorted(glob.glob(f"{table_dir}/**/*.parquet", recursive=True))
        if not files:
            continue
        con = duckdb.connect()
        file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet([{file_list}], hive_partitioning = false)")
        columns = [r[0] for r in con.execute("DESCRIBE raw").fetchall()]
        source = [c for c in columns if not c.startswith("_cdc_")]
        select = ", ".join(f'"{c}"' for c in source)
        for row in con.execute(f"SELECT _cdc_commit_lsn, _cdc_seq, _cdc_op, {select} FROM raw").fetchall():
            lsn, seq, op, values = row[0], row[1], row[2], row[3:]
            if op == "t":
                values = ()
            line = "\t".join([str(seq), op, table] + [field(v) for v in values]) + "\n"
            changes.append((lsn, seq, line))
    changes.sort()
    out = {}
    current, digest = None, None
    for lsn, _, line in changes:
        if lsn != current:
            if digest is not None:
                out[str(current)] = "sha256:" + digest.hexdigest()
            current = lsn
            digest = hashlib.sha256(f"weir-evidence-v1\n{projection}\n{transforms}\n".encode())
        digest.update(line.encode())
    if digest is not None:
        out[str(current)] = "sha256:" + digest.hexdigest()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
