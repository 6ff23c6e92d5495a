#!/usr/bin/env python3
"""Freshness of a live local lake: how long after its event time each row became visible.

Watches the lake's table folders while the job runs; the first time a row is seen in a
table (a trade by its Kafka partition and offset, a bar by symbol, window and revision) is
its visibility. Reports p50 and p99 of (visible - event time) per table, where the event
time is a trade's `trade_ts` and a bar's `window_end` (the moment the bar could first be
known). Rows already in the lake when watching starts are not counted.

    python3 benches/freshness.py LAKE --seconds 4200 [--every 1]
"""

import argparse
import os
import time

import pyarrow.parquet as pq


def parquet_files(folder):
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".parquet"):
                path = os.path.join(root, name)
                try:
                    yield path, os.stat(path).st_mtime_ns
                except FileNotFoundError:
                    pass  # replaced between listing and stat


def keyed_rows(table, path):
    """(key, event time ms) of every row of one file."""
    if table == "trades":
        t = pq.read_table(path, columns=["kafka_partition", "kafka_offset", "trade_ts"])
        times = t.column("trade_ts").cast("int64").to_pylist()
        keys = zip(t.column("kafka_partition").to_pylist(), t.column("kafka_offset").to_pylist())
    else:
        t = pq.read_table(path, columns=["symbol", "window_start", "window_end", "revision"])
        times = t.column("window_end").cast("int64").to_pylist()
        keys = zip(
            t.column("symbol").to_pylist(),
            t.column("window_start").cast("int64").to_pylist(),
            t.column("revision").to_pylist(),
        )
    return zip(keys, times)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lake")
    parser.add_argument("--seconds", type=float, required=True, help="how long to watch")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between looks")
    parser.add_argument("--tables", default="trades,bars_1m")
    args = parser.parse_args()
    tables = args.tables.split(",")

    seen_files = {}  # path -> mtime
    seen_rows = {t: set() for t in tables}
    lags = {t: [] for t in tables}
    first_look = True
    end = time.time() + args.seconds
    while time.time() < end:
        for table in tables:
            for path, mtime in parquet_files(os.path.join(args.lake, table)):
                if seen_files.get(path) == mtime:
                    continue
                now_ms = time.time() * 1000
                seen_files[path] = mtime
                try:
                    rows = list(keyed_rows(table, path))
                except (OSError, ValueError):
                    seen_files.pop(path)  # replaced while reading: look again
                    continue
                for key, event_ms in rows:
                    if key not in seen_rows[table]:
                        seen_rows[table].add(key)
                        if not first_look:
                            lags[table].append((now_ms - event_ms) / 1000)
        first_look = False
        time.sleep(args.every)

    for table in tables:
        v = lags[table]
        if not v:
            print(f"{table}: no new rows")
            continue
        print(
            f"{table}: {len(v)} rows, visible after event time: p50 {percentile(v, 0.5):.1f} s, "
            f"p99 {percentile(v, 0.99):.1f} s, min {min(v):.1f} s, max {max(v):.1f} s"
        )


if __name__ == "__main__":
    main()
