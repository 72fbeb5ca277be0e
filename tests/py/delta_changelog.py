"""Independent reader for weir's Delta Lake changelog tables (the `deltalake` package,
delta-rs's Python binding), used by the e2e tests.

Usage: delta_changelog.py TABLE_URI KEY[,KEY...] APP_ID

Loads the table's current version (only the files its log references: a file written by
a commit that never happened is not read), rebuilds the current state with DuckDB as
changelog.py does for Parquet, and prints changelog.py's report plus:
  version      the table's version
  txn          the table's transaction version for APP_ID (weir's commit LSN), or null
  history      per version, weir's commit LSN from the commit info (null for the create)
  types        each column's Delta type
"""
import json
import sys

import duckdb
from deltalake import DeltaTable

from changelog import empty, report


def main():
    uri, keys, app_id = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    table = DeltaTable(uri)
    data = table.to_pyarrow_table()
    files = len(table.file_uris())
    if data.num_rows == 0:
        out = empty(files)
    else:
        con = duckdb.connect()
        con.register("raw_arrow", data)
        con.execute("CREATE VIEW raw AS SELECT * FROM raw_arrow")
        out = report(con, keys, files)
    out["types"] = {f.name: str(f.type) for f in table.schema().fields}
    out["version"] = table.version()
    out["txn"] = table.transaction_version(app_id)
    out["history"] = [
        {"version": h.get("version"), "commit_lsn": h.get("weir.commit_lsn")}
        for h in sorted(table.history(), key=lambda h: h.get("version", 0))
    ]
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
