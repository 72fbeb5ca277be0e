"""Plants damage in one table's Parquet changelog, through pyarrow (not weir): removes
the change rows of one key, doubles the change rows of another, and alters a value of a
third. Each key's rows must all be in one file (the test writes each key once).

usage: damage.py <table dir> <key column> <remove key> <double key> <alter key> <column> <new value>
Prints the files it rewrote.
"""
import glob
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

table_dir, key, remove, double, alter, column, value = sys.argv[1:8]
remove, double, alter = int(remove), int(double), int(alter)

for path in sorted(glob.glob(f"{table_dir}/**/*.parquet", recursive=True)):
    f = pq.ParquetFile(path)
    t = f.read()
    keys = t.column(key)
    hit = pc.any(pc.is_in(keys, value_set=pa.array([remove, double, alter], keys.type))).as_py()
    if not hit:
        continue
    doubled = t.filter(pc.equal(keys, double))
    t = t.filter(pc.invert(pc.equal(keys, remove)))
    t = pa.concat_tables([t, doubled])
    i = t.schema.get_field_index(column)
    col = t.column(column).to_pylist()
    for r, k in enumerate(t.column(key).to_pylist()):
        if k == alter:
            col[r] = value
    t = t.set_column(i, t.schema.field(i), pa.array(col, t.schema.field(i).type))
    pq.write_table(t, path)
    print(path)
