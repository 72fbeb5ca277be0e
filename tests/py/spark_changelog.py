"""Independent reader for weir's Parquet changelog with Apache Spark (PySpark, local mode),
used by the e2e tests.

Usage: spark_changelog.py TABLE_DIR KEY

Reads every Parquet file under TABLE_DIR into the view `changelog` and rebuilds the
table's current state with one Spark SQL query, the README's: changes after the last
truncate, unchanged TOAST values carried from the key's last change that wrote them, the
last change per key, deletes left out. Prints one JSON object: `rows`, the source
columns, ordered by KEY; `query`, the SQL run.
"""
import json
import sys

from pyspark.sql import SparkSession

CDC = ["_cdc_op", "_cdc_commit_lsn", "_cdc_seq", "_cdc_xid", "_cdc_commit_ts", "_cdc_unchanged", "_cdc_unfit"]


def current_state_sql(columns, key, has_unchanged):
    """The README's Spark SQL query for a table of `columns` with primary key `key`."""

    def carried(c):
        if not has_unchanged or c == key:
            return f"`{c}`"
        return (
            f"CASE WHEN array_contains(coalesce(_cdc_unchanged, array()), '{c}') THEN\n"
            f"            last(CASE WHEN NOT array_contains(coalesce(_cdc_unchanged, array()), '{c}') THEN named_struct('v', `{c}`) END, true)\n"
            f"                OVER (PARTITION BY `{key}` ORDER BY _pos ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW).v\n"
            f"        ELSE `{c}` END AS `{c}`"
        )

    select = ",\n        ".join(carried(c) for c in columns)
    names = ", ".join(f"`{c}`" for c in columns)
    return f"""WITH log AS (
    SELECT *, row_number() OVER (ORDER BY _cdc_commit_lsn, _cdc_seq) AS _pos FROM changelog
),
since_truncate AS (
    SELECT * FROM log WHERE _pos > coalesce((SELECT max(_pos) FROM log WHERE _cdc_op = 't'), 0)
),
carried AS (
    SELECT _pos, _cdc_op,
        {select}
    FROM since_truncate
),
latest AS (
    SELECT *, row_number() OVER (PARTITION BY `{key}` ORDER BY _pos DESC) AS _rn FROM carried
)
SELECT {names} FROM latest WHERE _rn = 1 AND _cdc_op <> 'd' ORDER BY `{key}`"""


def main():
    table_dir, key = sys.argv[1], sys.argv[2]
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("weir-e2e")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    log = (
        spark.read.option("recursiveFileLookup", "true")
        .option("mergeSchema", "true")
        .parquet(table_dir)
    )
    log.createOrReplaceTempView("changelog")
    columns = [c for c in log.columns if c not in CDC]
    query = current_state_sql(columns, key, "_cdc_unchanged" in log.columns)
    rows = [r.asDict() for r in spark.sql(query).collect()]
    spark.stop()
    print(json.dumps({"rows": rows, "query": query}, default=str))


if __name__ == "__main__":
    main()
