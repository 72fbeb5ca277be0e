"""Independent reader for weir's Iceberg changelog tables (PyIceberg), used by the e2e tests.

Usage: iceberg_table.py CATALOG_DB TABLE KEY[,KEY...] [SNAPSHOT_ID]

Loads TABLE (`namespace.table`) from the SQL catalog `weir` in the SQLite file CATALOG_DB,
scans it with PyIceberg (at SNAPSHOT_ID when given, else the current snapshot) and prints
one JSON object: what changelog.py reports for the rows (rebuilt state, ops, duplicates),
plus the table's schema, identifier fields, partition spec and snapshots.

S3 settings, when the warehouse is in S3, come from the environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
"""
import json
import os
import sys

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

from changelog import empty, report


def main():
    db, name, keys = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    snapshot_id = int(sys.argv[4]) if len(sys.argv) > 4 else None
    props = {"uri": f"sqlite:///{db}"}
    if os.environ.get("AWS_ENDPOINT_URL"):
        props.update({
            "s3.endpoint": os.environ["AWS_ENDPOINT_URL"],
            "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
        })
    catalog = SqlCatalog("weir", **props)
    table = catalog.load_table(name)
    scan = table.scan(snapshot_id=snapshot_id) if snapshot_id else table.scan()
    schema = table.schema() if snapshot_id is None else table.schemas()[table.snapshot_by_id(snapshot_id).schema_id]
    arrow = scan.to_arrow()
    files = len(list(scan.plan_files()))
    if arrow.num_rows == 0:
        out = empty(files)
    else:
        con = duckdb.connect()
        con.register("raw", arrow)
        out = report(con, keys, files)
    out["columns"] = [
        {"name": f.name, "type": str(f.field_type), "required": f.required} for f in schema.fields
    ]
    out["scanned_columns"] = arrow.column_names
    out["identifier_fields"] = [schema.find_field(i).name for i in schema.identifier_field_ids]
    out["partition"] = [
        {"source": schema.find_field(f.source_id).name, "transform": str(f.transform)} for f in table.spec().fields
    ]
    out["snapshots"] = [
        {"id": s.snapshot_id, "summary": dict(s.summary.additional_properties), "operation": str(s.summary.operation)}
        for s in table.snapshots()
    ]
    current = table.current_snapshot()
    out["current_snapshot"] = current.snapshot_id if current else None
    out["properties"] = dict(table.properties)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
