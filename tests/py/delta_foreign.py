"""Writes a Delta table that is not weir's at PATH (the `deltalake` package), for the
test that weir refuses to write into it.

Usage: delta_foreign.py PATH
"""
import sys

import pyarrow as pa
from deltalake import write_deltalake

write_deltalake(sys.argv[1], pa.table({"id": [1, 2], "x": ["a", "b"]}))
