"""List columns of a changelog read back by pyarrow, for the array round-trip test.

Usage: lists.py TABLE_DIR [all]

Prints {"types": {column: DuckDB's type}, "rows": [{column: value}], "metadata":
{column: the Arrow field's metadata}} for the rows with
_cdc_op r or c, ordered by id, each file's columns read by pyarrow in its own schema:
lists as JSON lists, structs as objects, timestamps and dates as integers (microseconds, days: infinities
fit no Python datetime), decimals as text, bytes and UUIDs as hex, JSON elements parsed,
non-finite floats as PostgreSQL spells them; _cdc_unfit parsed. With `all`: every
change in source order, with _cdc_op, _cdc_commit_lsn, _cdc_seq and the file's schema
version (_version).
"""
import datetime
import decimal
import glob
import json
import math
import sys
import uuid

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def plain(v):
    if isinstance(v, list):
        return [plain(e) for e in v]
    if isinstance(v, dict):
        return {k: plain(e) for k, e in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, uuid.UUID):
        return v.hex
    return v


def intify(t):
    """The type with timestamps and dates (at any depth) as their integers."""
    if pa.types.is_timestamp(t):
        return pa.int64()
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_list(t):
        return pa.list_(pa.field(t.value_field.name, intify(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, intify(f.type)) for f in t])
    return t


def integers(column):
    t = intify(column.type)
    return column if t.equals(column.type) else column.cast(t)


def rows_of(table, version, every_change):
    """The rows of one file (or table scan), as main() prints them."""
    columns = {}
    for name in table.column_names:
        col = integers(table.column(name))
        values = [plain(v) for v in col.to_pylist()]
        t = table.schema.field(name).type
        if pa.types.is_list(t) and name.startswith("j"):
            values = [None if v is None else [json.loads(e) if isinstance(e, str) else e for e in v] for v in values]
        columns[name] = values
    rows = []
    for i in range(table.num_rows):
        row = {n: columns[n][i] for n in table.column_names}
        row["_cdc_unfit"] = json.loads(row["_cdc_unfit"]) if row.get("_cdc_unfit") else None
        if every_change:
            row["_version"] = version
            rows.append({k: v for k, v in row.items() if k not in ("_cdc_xid", "_cdc_commit_ts", "_cdc_unchanged")})
        elif row.get("_cdc_op", "r") in ("r", "c"):  # a mirror has no _cdc_op
            rows.append({k: v for k, v in row.items() if not k.startswith("_cdc_") or k == "_cdc_unfit"})
    return rows


def in_order(rows, every_change):
    if every_change:
        rows.sort(key=lambda r: (r["_cdc_commit_lsn"], r["_cdc_seq"]))
    else:
        rows.sort(key=lambda r: r["id"])
    return rows


def main():
    files = sorted(glob.glob(f"{sys.argv[1]}/**/*.parquet", recursive=True))
    every_change = len(sys.argv) > 2 and sys.argv[2] == "all"
    rows = []
    metadata = {}
    for f in files:
        table = pq.read_table(f)
        version = int(pq.read_metadata(f).metadata[b"weir.schema_version"])
        for field in table.schema:
            if field.metadata:
                metadata[field.name] = {k.decode(): v.decode() for k, v in field.metadata.items()}
        rows += rows_of(table, version, every_change)
    in_order(rows, every_change)
    con = duckdb.connect()
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    try:
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet([{file_list}], union_by_name = true)").fetchall()}
    except duckdb.Error as e:  # files of both forms
        types = {"error": str(e)}
    print(json.dumps({"types": types, "rows": rows, "metadata": metadata}))


if __name__ == "__main__":
    main()
