"""An Iceberg changelog table's rows read back by PyIceberg, as lists.py prints a
Parquet changelog's, for the nested-type round-trip test.

Usage: iceberg_lists.py CATALOG_DB TABLE

Loads TABLE (`namespace.table`) from the SQL catalog `weir` in the SQLite file CATALOG_DB
and prints {"rows": [...], "types": {column: Iceberg type}}: the rows with _cdc_op r or c,
ordered by id, converted as lists.py converts them.

The rows are those of the data files PyIceberg's scan plans, each read by pyarrow (a
table with deletes, a mirror, is read by PyIceberg's scan):
PyIceberg's own `to_arrow()` turns a null list of structs into an empty list
(apache/iceberg-python#3833, open), though the files hold the null.
"""
import json
import sys

import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog

from lists import in_order, rows_of


def main():
    catalog = SqlCatalog("weir", uri=f"sqlite:///{sys.argv[1]}")
    table = catalog.load_table(sys.argv[2])
    rows = []
    tasks = list(table.scan().plan_files())
    if any(task.delete_files for task in tasks):
        # A mirror table: PyIceberg applies its deletes.
        rows = rows_of(table.scan().to_arrow(), None, False)
    else:
        for task in tasks:
            path = task.file.file_path.removeprefix("file://")
            rows += rows_of(pq.read_table(path), None, False)
    in_order(rows, False)
    types = {f.name: str(f.field_type) for f in table.schema().fields}
    print(json.dumps({"rows": rows, "types": types}))


if __name__ == "__main__":
    main()
