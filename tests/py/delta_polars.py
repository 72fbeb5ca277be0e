"""A second reader of weir's Delta changelog tables: Polars (`read_delta`).

Usage: delta_polars.py TABLE_DIR

Prints {"ops": {op: rows}, "rows": rows} of the table's current version.
"""
import json
import sys

import polars as pl


def main():
    log = pl.read_delta(sys.argv[1])
    ops = {r["_cdc_op"]: r["len"] for r in log.group_by("_cdc_op").len().to_dicts()}
    print(json.dumps({"ops": ops, "rows": log.height}))


if __name__ == "__main__":
    main()
