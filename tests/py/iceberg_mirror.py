"""Independent reader for weir's Iceberg mirror tables (PyIceberg, which applies position
deletes), used by the e2e tests.

Usage: iceberg_mirror.py CATALOG_DB TABLE KEY [SNAPSHOT_ID]

Prints one JSON object: the table's rows (source columns only, sorted by KEY), how many
keys appear more than once, the data and delete files the scan plans, the snapshots and
the current one.
"""
import json
import sys

from pyiceberg.catalog.sql import SqlCatalog


def snapshot(s):
    return {"id": s.snapshot_id, "operation": s.summary.operation.value, "summary": dict(s.summary.additional_properties)}


def main():
    db, name, key = sys.argv[1], sys.argv[2], sys.argv[3]
    snapshot_id = int(sys.argv[4]) if len(sys.argv) > 4 else None
    table = SqlCatalog("weir", uri=f"sqlite:///{db}").load_table(name)
    scan = table.scan(snapshot_id=snapshot_id) if snapshot_id else table.scan()
    tasks = list(scan.plan_files())
    rows = scan.to_arrow().to_pylist()
    rows.sort(key=lambda r: r[key])
    keys = [r[key] for r in rows]
    source = [{k: v for k, v in r.items() if not k.startswith("_cdc_")} for r in rows]
    schema = table.schema()
    out = {
        "rows": source,
        "repeated_keys": len(keys) - len(set(keys)),
        "data_files": len(tasks),
        "delete_files": len({d.file_path for t in tasks for d in t.delete_files}),
        "columns": [f.name for f in schema.fields],
        "identifier_fields": [schema.find_field(i).name for i in schema.identifier_field_ids],
        "snapshots": [snapshot(s) for s in table.snapshots()],
        "current": snapshot(table.current_snapshot()),
        "properties": dict(table.properties),
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
