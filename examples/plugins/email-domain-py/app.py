"""email-domain: a weir transform written in Python (componentize-py).

Enriches each table that has the configured column (default `email`) with a new column
`<column>_domain`: the part after the `@`, lowercased, or null. The new column is added
to the relation, so it lands in the Parquet or Iceberg output like any other.

    [[transform]]
    plugin = "examples/plugins/email-domain-py"
    config = { column = "email" }
"""
import json

import mpack
from wit_world import exports
from componentize_py_types import Err
from wit_world.imports.types import PluginError_BadConfig, PluginError_Fatal


# componentize-py makes a new Transform for each call: settings live in the module.
SETTINGS = {}


class Transform(exports.Transform):
    def init(self, config: str) -> None:
        try:
            settings = json.loads(config)
        except ValueError as e:
            raise Err(PluginError_BadConfig(f"config is not JSON: {e}"))
        column = settings.get("column", "email")
        if not isinstance(column, str) or not column:
            raise Err(PluginError_BadConfig("`column` must be a column name"))
        SETTINGS["column"] = column
        SETTINGS["added"] = f"{column}_domain"

    def process(self, input: bytes) -> bytes:
        column, added = SETTINGS["column"], SETTINGS["added"]
        try:
            batch = mpack.unpackb(input)
        except Exception as e:  # truncated input fails as IndexError or struct.error too
            raise Err(PluginError_Fatal(f"malformed batch: {e}"))
        # Per relation: the index of the column to read, or None.
        sources = []
        for rel in batch["relations"]:
            names = [c["name"] for c in rel["columns"]]
            if column in names and added not in names:
                sources.append(names.index(column))
                rel["columns"].append(
                    {"name": added, "type_oid": 25, "type_name": "text", "typmod": -1, "key": False}
                )
            else:
                sources.append(None)
        for event in batch["events"]:
            i = sources[event["rel"]]
            if i is None:
                continue
            for side in ("before", "after"):
                row = event.get(side)
                if row is not None:
                    row.append(domain(row[i]))
        return mpack.packb(batch)


def domain(value):
    if isinstance(value, str) and "@" in value:
        return value.rsplit("@", 1)[1].lower()
    return None
