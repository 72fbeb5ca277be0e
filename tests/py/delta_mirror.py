"""Independent reader for weir's Delta Lake mirror tables (the `deltalake` package,
delta-rs's Python binding), used by the e2e tests.

Usage: delta_mirror.py TABLE_URI KEY CHANGELOG_DIR [state]

With `state`, only the rows, version and configuration (for a table whose early
versions have expired). With CHANGELOG_DIR `-`, no comparison with the source's changes.

Reads the mirror's current version and its Change Data Feed from version 0
(`load_cdf`), and checks the feed against the source's changes as a Parquet changelog of
the same pipeline (CHANGELOG_DIR) holds them. Prints one JSON object:
  rows            the mirror's rows (source columns only), ordered by KEY
  version         the table's version
  config          the table's configuration
  feed            count of change feed rows per _change_type
  replayed_equal  the feed replayed from version 0 gives the mirror's rows
  preimage_errors feed rows (update_preimage, delete) whose row is not the one the
                  replay holds for the key at that point (first 5)
  versions_checked versions with weir's position whose feed was compared
  version_errors  versions whose feed is not the net change, per key, of the source's
                  changes between the previous version's position and theirs (first 5)
"""
import glob
import json
import sys
from collections import Counter, defaultdict

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

CDC = {"_cdc_op", "_cdc_commit_lsn", "_cdc_seq", "_cdc_xid", "_cdc_commit_ts", "_cdc_unchanged", "_cdc_unfit"}


def source_row(row, columns):
    return {c: row[c] for c in columns}


def main():
    uri, key, log_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    table = DeltaTable(uri)
    data = table.to_pyarrow_table()
    columns = [f.name for f in data.schema if not f.name.startswith("_cdc_")]
    rows = sorted((source_row(r, columns) for r in data.to_pylist()), key=lambda r: r[key])
    out = {
        "rows": rows,
        "version": table.version(),
        "config": table.metadata().configuration,
    }

    if sys.argv[4:] == ["state"]:
        print(json.dumps(out, default=str))
        return

    feed = pa.table(table.load_cdf(starting_version=0).read_all()).to_pylist()
    out["feed"] = Counter(r["_change_type"] for r in feed)
    by_version = defaultdict(list)
    for r in feed:
        by_version[r["_commit_version"]].append(r)

    # The feed replayed from version 0: each preimage must be the row the key has then.
    state, preimage_errors = {}, []
    for version in sorted(by_version):
        changes = by_version[version]
        for r in changes:
            if r["_change_type"] in ("update_preimage", "delete"):
                if state.get(r[key]) != source_row(r, columns):
                    preimage_errors.append({"version": version, "row": source_row(r, columns), "held": state.get(r[key])})
        for r in changes:
            if r["_change_type"] == "delete":
                state.pop(r[key], None)
            elif r["_change_type"] in ("insert", "update_postimage"):
                state[r[key]] = source_row(r, columns)
    out["replayed_equal"] = sorted(state.values(), key=lambda r: r[key]) == rows
    out["preimage_errors"] = preimage_errors[:5]

    if log_dir == "-":
        print(json.dumps(out, default=str))
        return

    # The source's changes, from the Parquet changelog, in commit order.
    files = sorted(glob.glob(f"{log_dir}/**/*.parquet", recursive=True))
    con = duckdb.connect()
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    log = con.execute(
        f"SELECT * FROM read_parquet([{file_list}], union_by_name = true) ORDER BY _cdc_commit_lsn, _cdc_seq"
    ).to_arrow_table().to_pylist()

    positions = {}
    for h in table.history():
        lsn = h.get("weir.commit_lsn")
        if lsn is not None:
            positions[h["version"]] = int(lsn)
    source, at, previous = {}, 0, 0
    version_errors, checked = [], 0
    for version in sorted(positions):
        lsn = positions[version]
        before = dict(source)
        touched = []
        while at < len(log) and log[at]["_cdc_commit_lsn"] <= lsn:
            change = log[at]
            at += 1
            op = change["_cdc_op"]
            if op == "t":
                touched.extend(source.keys())
                source.clear()
                continue
            k = change[key]
            touched.append(k)
            if op == "d":
                source.pop(k, None)
                continue
            row = source_row(change, columns)
            # An update that left TOAST values unchanged names them; they are the key's.
            for c in change.get("_cdc_unchanged") or []:
                row[c] = source.get(k, {}).get(c)
            source[k] = row
        expected = []
        for k in dict.fromkeys(touched):
            b, a = before.get(k), source.get(k)
            if b is not None and a is not None:
                expected += [("update_preimage", b), ("update_postimage", a)]
            elif b is not None:
                expected.append(("delete", b))
            elif a is not None:
                expected.append(("insert", a))
        actual = [(r["_change_type"], source_row(r, columns)) for r in by_version.get(version, [])]
        norm = lambda xs: sorted(json.dumps(x, sort_keys=True, default=str) for x in xs)
        if norm(expected) != norm(actual):
            version_errors.append({
                "version": version, "from_lsn": previous, "to_lsn": lsn,
                "expected": len(expected), "actual": len(actual),
                "missing": [x for x in norm(expected) if x not in norm(actual)][:3],
                "extra": [x for x in norm(actual) if x not in norm(expected)][:3],
            })
        checked += 1
        previous = lsn
    # Versions without weir's position (the create, columns added) change no rows.
    for version in by_version:
        if version not in positions:
            version_errors.append({"version": version, "unexpected_rows": len(by_version[version])})
    out["versions_checked"] = checked
    out["version_errors"] = version_errors[:5]
    out["changes_after_last_version"] = len(log) - at
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
