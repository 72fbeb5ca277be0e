"""Another writer of a weir Delta table: appends COUNT rows of its own, one commit each,
DELAY_MS apart (the `deltalake` package), for the tests that weir's commits beside it
neither double nor lose a change.

Usage: delta_append.py PATH COUNT DELAY_MS

In a changelog its rows have _cdc_op = 'x', no key, and _cdc_commit_lsn 0 with _cdc_seq
1..COUNT; in a mirror (keyed by `id`), ids -10000001 down to -(10000000 + COUNT), v 0.
"""
import datetime
import sys
import time

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake


def main():
    path, count, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000
    for seq in range(1, count + 1):
        schema = pa.schema(DeltaTable(path).schema().to_arrow())
        row = {f.name: None for f in schema}
        values = {
            "_cdc_op": "x",
            "_cdc_commit_lsn": 0,
            "_cdc_seq": seq,
            "_cdc_xid": 0,
            "_cdc_commit_ts": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        }
        if "_cdc_op" not in row:
            values.update({"id": -10000000 - seq, "v": 0})
        row.update({k: v for k, v in values.items() if k in row})
        write_deltalake(path, pa.Table.from_pylist([row], schema=schema), mode="append")
        time.sleep(delay)


if __name__ == "__main__":
    main()
