"""Sets table properties of a Delta table (the `deltalake` package), as a user lowering
a retention would.

Usage: delta_properties.py TABLE_URI KEY=VALUE...
"""
import sys

from deltalake import DeltaTable


def main():
    properties = dict(arg.split("=", 1) for arg in sys.argv[2:])
    DeltaTable(sys.argv[1]).alter.set_table_properties(properties)


if __name__ == "__main__":
    main()
