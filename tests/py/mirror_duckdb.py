"""A second reader of weir's Iceberg mirror tables: DuckDB applies the position deletes.

Usage: mirror_duckdb.py CATALOG_DB TABLE KEY

The live data files and the position delete files come from the table's current
snapshot (PyIceberg plans them; DuckDB's own Iceberg extension is not installable
offline). DuckDB reads the data files with each row's file name and row number, and
removes the rows a delete file names by (file_path, pos): merge-on-read as the Iceberg
spec defines it, done in SQL. Prints the rows (source columns, sorted by KEY) as JSON.
"""
import json
import sys

import duckdb
from pyiceberg.catalog.sql import SqlCatalog


def sql_list(paths):
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def local(path):
    return path[len("file://"):] if path.startswith("file://") else path


def main():
    db, name, key = sys.argv[1], sys.argv[2], sys.argv[3]
    table = SqlCatalog("weir", uri=f"sqlite:///{db}").load_table(name)
    tasks = list(table.scan().plan_files())
    data = sorted({local(t.file.file_path) for t in tasks})
    deletes = sorted({local(d.file_path) for t in tasks for d in t.delete_files})
    con = duckdb.connect()
    if not data:
        print(json.dumps({"rows": [], "data_files": 0, "delete_files": 0}))
        return
    con.execute(
        f"CREATE VIEW live AS SELECT * FROM read_parquet({sql_list(data)}, filename = true, file_row_number = true)"
    )
    if deletes:
        con.execute(
            f"CREATE VIEW gone AS SELECT replace(file_path, 'file://', '') AS file, pos FROM read_parquet({sql_list(deletes)})"
        )
        query = "SELECT l.* FROM live l ANTI JOIN gone g ON l.filename = g.file AND l.file_row_number = g.pos"
    else:
        query = "SELECT * FROM live"
    rel = con.execute(f"SELECT * EXCLUDE (filename, file_row_number) FROM ({query}) ORDER BY {key}")
    columns = [d[0] for d in rel.description]
    rows = [
        {c: v for c, v in zip(columns, r) if not c.startswith("_cdc_")}
        for r in rel.fetchall()
    ]
    print(json.dumps({"rows": rows, "data_files": len(data), "delete_files": len(deletes)}, default=str))


if __name__ == "__main__":
    main()
