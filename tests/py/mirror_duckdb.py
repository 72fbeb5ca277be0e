"""A second reader of weir's Iceberg mirror tables: DuckDB's own Iceberg extension
(`iceberg_scan`, installed from PyPI's duckdb-extension-iceberg wheel, no network at
run time), which applies the position deletes itself.

Usage: mirror_duckdb.py CATALOG_DB TABLE KEY [SNAPSHOT_ID]

The table's current metadata file comes from the SQL catalog's own SQLite table (not
through PyIceberg). Prints the rows (source columns, sorted by KEY) as JSON.
"""
import json
import sqlite3
import sys

import duckdb
import duckdb_extensions


def metadata_location(db, name):
    namespace, table = name.rsplit(".", 1)
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
            (namespace, table),
        ).fetchone()
    if row is None:
        sys.exit(f"no table {name} in {db}")
    return row[0]


def main():
    db, name, key = sys.argv[1], sys.argv[2], sys.argv[3]
    snapshot = int(sys.argv[4]) if len(sys.argv) > 4 else None
    con = duckdb.connect()
    for extension in ("avro", "iceberg"):
        duckdb_extensions.import_extension(extension, con=con)
    location = metadata_location(db, name).replace("'", "''")
    at = f", snapshot_from_id = {snapshot}" if snapshot else ""
    rel = con.execute(f"SELECT * FROM iceberg_scan('{location}'{at}) ORDER BY {key}")
    columns = [d[0] for d in rel.description]
    rows = [
        {c: v for c, v in zip(columns, r) if not c.startswith("_cdc_")}
        for r in rel.fetchall()
    ]
    print(json.dumps({"rows": rows}, default=str))


if __name__ == "__main__":
    main()
