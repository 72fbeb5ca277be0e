"""Times a full read of an Iceberg table with PyIceberg (which applies position deletes),
for the mirror benchmark.

Usage: read_time.py CATALOG_DB TABLE [RUNS]

Prints one JSON object: the best of RUNS (default 3) wall-clock times of
`scan().to_arrow()`, the rows read, and the data and delete files the scan plans.
"""
import json
import sys
import time

from pyiceberg.catalog.sql import SqlCatalog


def main():
    db, name = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    table = SqlCatalog("weir", uri=f"sqlite:///{db}").load_table(name)
    tasks = list(table.scan().plan_files())
    best, rows = None, 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = table.scan().to_arrow().num_rows
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    print(json.dumps({
        "seconds": best,
        "rows": rows,
        "data_files": len(tasks),
        "delete_files": len({d.file_path for t in tasks for d in t.delete_files}),
    }))


if __name__ == "__main__":
    main()
