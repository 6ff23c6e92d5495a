"""Opens a stockflow lake the way its users will: pyarrow and DuckDB, no options.

usage: check_lake.py LAKE EXPECTED_RECORDS
Exits non-zero (with the reason) if a table does not open, a timestamp column does not read
as a timestamp, or trades + quarantine does not hold exactly EXPECTED_RECORDS rows (gap
records are counted apart).
"""
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

lake, expected = sys.argv[1], int(sys.argv[2])
timestamps = {
    "trades": ["trade_ts", "ingest_ts"],
    "bars_1m": ["window_start", "window_end"],
    "quarantine": ["kafka_ts"],
    "gaps": ["gap_start", "gap_end", "kafka_ts"],
}
counts = {}
for table, columns in timestamps.items():
    t = pq.read_table(f"{lake}/{table}")
    counts[table] = t.num_rows
    for c in columns:
        typ = t.schema.field(c).type
        assert pa.types.is_timestamp(typ) and typ.tz == "UTC" and typ.unit in ("ms", "us"), f"{table}.{c}: {typ}"
    assert "dt" in t.schema.names and "hour" in t.schema.names, f"{table}: hive partitions not detected"

con = duckdb.connect()
for table, columns in timestamps.items():
    rel = con.sql(f"select * from read_parquet('{lake}/{table}/**/*.parquet')")
    for c in columns:
        typ = dict(zip(rel.columns, rel.types))[c]
        assert str(typ).startswith("TIMESTAMP"), f"duckdb {table}.{c}: {typ}"
    n = con.execute(f"select count(*) from read_parquet('{lake}/{table}/**/*.parquet')").fetchone()[0]
    assert n == counts[table], f"duckdb sees {n} rows in {table}, pyarrow {counts[table]}"

assert counts["trades"] + counts["quarantine"] == expected, f"{counts} != {expected} records"
assert counts["bars_1m"] > 0, "no bars"
assert counts["gaps"] > 0, "no gaps: the demo's feed has an outage"
symbols = con.execute(f"select count(distinct symbol) from read_parquet('{lake}/bars_1m/**/*.parquet')").fetchone()[0]
print(f"ok: {counts}, bars for {symbols} symbols")
