"""A second reader of weir's Delta tables: Polars (`read_delta`).

Usage: delta_polars.py TABLE_DIR [KEY]

A changelog: prints {"ops": {op: rows}, "rows": rows} of the table's current version.
A mirror (with KEY): prints {"rows": [the source columns of each row, ordered by KEY]}.
"""
import json
import sys

import polars as pl


def main():
    table = pl.read_delta(sys.argv[1])
    if len(sys.argv) > 2:
        columns = [c for c in table.columns if not c.startswith("_cdc_")]
        rows = table.select(columns).sort(sys.argv[2]).to_dicts()
        print(json.dumps({"rows": rows}, default=str))
        return
    ops = {r["_cdc_op"]: r["len"] for r in table.group_by("_cdc_op").len().to_dicts()}
    print(json.dumps({"ops": ops, "rows": table.height}))


if __name__ == "__main__":
    main()
