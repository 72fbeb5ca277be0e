"""Row count and sums of a Delta table of the benchmarks' table (the `deltalake`
package), for the Delta benchmark's check against the source.

Usage: delta_sums.py TABLE_URI

Prints {"rows": N, "ids": sum(id), "amount": sum(amount) as text, "files": live files}.
"""
import json
import sys

import pyarrow.compute as pc
from deltalake import DeltaTable


def main():
    table = DeltaTable(sys.argv[1])
    data = table.to_pyarrow_table(columns=["id", "amount"])
    print(json.dumps({
        "rows": data.num_rows,
        "ids": pc.sum(data["id"]).as_py() or 0,
        "amount": str(pc.sum(data["amount"]).as_py() or 0),
        "files": len(table.file_uris()),
    }))


if __name__ == "__main__":
    main()
