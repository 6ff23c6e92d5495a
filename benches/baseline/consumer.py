#!/usr/bin/env python3
"""The tutorial-style Python pipeline that stockflow's throughput is measured against.

Does the same job as `stockflow --drain`, the way most Kafka-to-Parquet tutorials do it:

* a confluent-kafka `Consumer`, polled one message at a time, `json.loads` per message;
* each trade validated (the lake's data contract: p > 0 and finite, v >= 0 and finite,
  s a non-empty string, t an integer millisecond timestamp, c null or a list of strings);
  rejected records become quarantine rows with a reason;
* rows appended to plain Python lists and written with pyarrow as ZSTD Parquet
  (timestamp[ms, UTC], hive `dt=YYYY-MM-DD/hour=HH` folders) every ~100k rows;
* 1-minute OHLCV bars per symbol kept in a dict and written as Parquet at the end.

It assigns every partition of the topic explicitly and reads it from its low watermark up
to the high watermark seen at start, so it processes exactly the records `--drain` does.
Prints one summary line:

    baseline done: records=N trades=T quarantine=Q bars=B files=F bytes=S in 12.3s
"""

import argparse
import json
import math
import os
import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

# The same limits as the job's cleaner.
MAX_PAYLOAD = 64 * 1024
MAX_QUARANTINE_PAYLOAD = 4 * 1024
MAX_SYMBOL_BYTES = 64
MIN_TS_MS = 946_684_800_000  # 2000-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01
WINDOW_MS = 60_000
LATENESS_MS = 5_000

TS = pa.timestamp("ms", tz="UTC")
TRADES_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("trade_ts", TS, nullable=False),
        pa.field("conditions", pa.list_(pa.field("element", pa.string()))),
        pa.field("late", pa.bool_(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("ingest_ts", TS),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("kafka_ts", TS),
    ]
)
BARS_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64()),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("revision", pa.int32(), nullable=False),
    ]
)


class Invalid(Exception):
    """A record that fails the data contract; its message is the quarantine reason."""


def _reject_constant(name):
    # NaN / Infinity are not JSON.
    raise ValueError(name)


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(raw):
    """Parses one Kafka value into (symbol, price, volume, ts, conditions) or raises Invalid."""
    if not raw:
        raise Invalid("empty_payload")
    if len(raw) > MAX_PAYLOAD:
        raise Invalid("oversized")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Invalid("malformed_json")
    if not isinstance(obj, dict):
        raise Invalid("not_object")
    if "s" not in obj or "p" not in obj or "v" not in obj or "t" not in obj:
        raise Invalid("missing_field")
    s, p, v, t = obj["s"], obj["p"], obj["v"], obj["t"]
    if not isinstance(s, str) or not _is_number(p) or not _is_number(v) or not _is_number(t):
        raise Invalid("bad_type")
    if not s or len(s.encode()) > MAX_SYMBOL_BYTES or not s.isprintable():
        raise Invalid("bad_symbol")
    p, v = float(p), float(v)
    if not (math.isfinite(p) and p > 0):
        raise Invalid("bad_price")
    if not (math.isfinite(v) and v >= 0):
        raise Invalid("bad_volume")
    if not isinstance(t, int) or not MIN_TS_MS <= t < MAX_TS_MS:
        raise Invalid("bad_timestamp")
    c = obj.get("c")
    if c is not None and not (isinstance(c, list) and all(isinstance(x, str) for x in c)):
        raise Invalid("bad_conditions")
    return s, p, v, t, c


def partition_columns(table, ts_column):
    """Adds the hive partition columns `dt` and `hour` (UTC) from a timestamp column."""
    # Rows without a timestamp (quarantined records without a Kafka timestamp) go to 1970-01-01.
    ts = pc.fill_null(table.column(ts_column), pa.scalar(0, TS))
    dt = pc.strftime(ts, format="%Y-%m-%d")
    hour = pc.strftime(ts, format="%H")
    return table.append_column("dt", dt).append_column("hour", hour)


class Writer:
    """Writes a table's rows as ZSTD Parquet under `root/<table>/dt=.../hour=.../`."""

    def __init__(self, root):
        self.root = root
        self.files = 0
        self.seq = 0

    def write(self, name, table, ts_column):
        if table.num_rows == 0:
            return
        table = partition_columns(table, ts_column)
        written = []
        self.seq += 1
        pq.write_to_dataset(
            table,
            root_path=os.path.join(self.root, name),
            partition_cols=["dt", "hour"],
            compression="zstd",
            basename_template=f"part-{self.seq:05d}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda f: written.append(f.path),
        )
        self.files += len(written)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="localhost:9092")
    ap.add_argument("--topic", default="trades")
    ap.add_argument("--out", required=True, help="output folder (trades/, quarantine/, bars_1m/)")
    ap.add_argument("--flush-rows", type=int, default=100_000, help="rows buffered before a Parquet write")
    ap.add_argument("--idle-timeout", type=float, default=60.0, help="give up after this many seconds without a message")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": "stockflow-baseline",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    meta = consumer.list_topics(args.topic, timeout=30)
    topic_meta = meta.topics.get(args.topic)
    if topic_meta is None or topic_meta.error is not None:
        sys.exit(f"topic {args.topic}: {topic_meta.error if topic_meta else 'not found'}")

    # Read each partition from its low to its high watermark as seen now.
    ends, assignment = {}, []
    for p in sorted(topic_meta.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=30)
        if high > low:
            ends[p] = high
            assignment.append(TopicPartition(args.topic, p, low))
    expected = sum(ends[tp.partition] - tp.offset for tp in assignment)
    consumer.assign(assignment)

    trades = {name: [] for name in TRADES_SCHEMA.names}
    quarantine = {name: [] for name in QUARANTINE_SCHEMA.names}
    bars = {}  # (symbol, window_start) -> [open_key, open, high, low, close_key, close, volume, pv, count]
    watermark = {}  # partition -> highest event time seen
    reasons = Counter()
    writer = Writer(args.out)
    n_records = n_trades = n_quarantine = 0
    last_message = time.monotonic()

    def flush():
        if trades["symbol"]:
            writer.write("trades", pa.Table.from_pydict(trades, schema=TRADES_SCHEMA), "trade_ts")
            for column in trades.values():
                column.clear()
        if quarantine["reason"]:
            writer.write("quarantine", pa.Table.from_pydict(quarantine, schema=QUARANTINE_SCHEMA), "kafka_ts")
            for column in quarantine.values():
                column.clear()

    while ends:
        msg = consumer.poll(1.0)
        if msg is None:
            if time.monotonic() - last_message > args.idle_timeout:
                sys.exit(f"no message for {args.idle_timeout}s; still waiting on partitions {sorted(ends)}")
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(msg.error())
        last_message = time.monotonic()
        partition, offset = msg.partition(), msg.offset()
        end = ends.get(partition)
        if end is None or offset >= end:
            continue  # past the end seen at start
        n_records += 1
        ts_type, kafka_ts = msg.timestamp()
        kafka_ts = kafka_ts if ts_type != 0 and kafka_ts >= 0 else None
        try:
            symbol, price, volume, ts, conditions = validate(msg.value())
        except Invalid as e:
            reason = str(e)
            reasons[reason] += 1
            n_quarantine += 1
            payload = (msg.value() or b"")[:MAX_QUARANTINE_PAYLOAD].decode("utf-8", "replace")
            quarantine["reason"].append(reason)
            quarantine["payload"].append(payload)
            quarantine["kafka_partition"].append(partition)
            quarantine["kafka_offset"].append(offset)
            quarantine["kafka_ts"].append(kafka_ts)
        else:
            n_trades += 1
            window = ts - ts % WINDOW_MS
            mark = watermark.get(partition, ts)
            if ts > mark:
                mark = ts
            watermark[partition] = mark
            trades["symbol"].append(symbol)
            trades["price"].append(price)
            trades["volume"].append(volume)
            trades["trade_ts"].append(ts)
            trades["conditions"].append(conditions)
            trades["late"].append(window + WINDOW_MS <= mark - LATENESS_MS)
            trades["kafka_partition"].append(partition)
            trades["kafka_offset"].append(offset)
            trades["ingest_ts"].append(kafka_ts)

            # Open and close follow event time, ties broken by Kafka position.
            key = (ts, partition, offset)
            bar = bars.get((symbol, window))
            if bar is None:
                bars[(symbol, window)] = [key, price, price, price, key, price, volume, price * volume, 1]
            else:
                if key < bar[0]:
                    bar[0], bar[1] = key, price
                if price > bar[2]:
                    bar[2] = price
                if price < bar[3]:
                    bar[3] = price
                if key > bar[4]:
                    bar[4], bar[5] = key, price
                bar[6] += volume
                bar[7] += price * volume
                bar[8] += 1

        if len(trades["symbol"]) + len(quarantine["reason"]) >= args.flush_rows:
            flush()
        if offset + 1 >= end:
            del ends[partition]

    consumer.close()
    flush()

    columns = {name: [] for name in BARS_SCHEMA.names}
    for (symbol, window), (_, o, h, l, _, c, v, pv, n) in sorted(bars.items()):
        columns["symbol"].append(symbol)
        columns["window_start"].append(window)
        columns["window_end"].append(window + WINDOW_MS)
        columns["open"].append(o)
        columns["high"].append(h)
        columns["low"].append(l)
        columns["close"].append(c)
        columns["volume"].append(v)
        columns["vwap"].append(pv / v if v > 0 else None)
        columns["trade_count"].append(n)
        columns["revision"].append(0)
    writer.write("bars_1m", pa.Table.from_pydict(columns, schema=BARS_SCHEMA), "window_start")

    size = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.out) for f in files if f.endswith(".parquet")
    )
    if n_records != expected:
        sys.exit(f"read {n_records} records, expected {expected}")
    why = " ".join(f"{r}={n}" for r, n in sorted(reasons.items()))
    print(
        f"baseline done: records={n_records} trades={n_trades} quarantine={n_quarantine} "
        f"bars={len(bars)} files={writer.files} bytes={size} in {time.perf_counter() - started:.1f}s"
        + (f" (quarantine reasons: {why})" if why else ""),
        flush=True,
    )


if __name__ == "__main__":
    main()
