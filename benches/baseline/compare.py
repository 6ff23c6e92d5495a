#!/usr/bin/env python3
"""Throughput of `stockflow --drain` against the tutorial-style Python baseline (consumer.py).

One command: starts `stockflow dev-kafka`, fills its topic with N simulated trades
(`stockflow simulate` + `stockflow ingest`), then runs, against the same pre-filled topic,

  (a) `stockflow --drain -w W` into a fresh lake, and
  (b) `consumer.py` into a fresh folder,

each timed from spawn to exit, with its peak RSS from wait4(2). Both must report exactly N
records (stockflow: trades + quarantine rows, from its `done` line and from the lake itself;
baseline: from its summary line and its output) or the command fails. Prints a table, or JSON
with --json. Every child process is stopped on the way out, on error too.

    python3 benches/baseline/compare.py --stockflow target/release/stockflow --trades 1000000
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class BenchError(RuntimeError):
    pass


def log(msg):
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


class Children:
    """Every process started here, so that all of them are stopped on the way out."""

    def __init__(self):
        self.procs = []

    def spawn(self, name, cmd, out_dir, **kw):
        stdout = open(out_dir / f"{name}.out", "wb")
        stderr = open(out_dir / f"{name}.err", "wb")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, **kw)
        finally:
            stdout.close()
            stderr.close()
        proc.bench_name = name
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=15.0):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{proc.bench_name} (pid {proc.pid}) ignored SIGTERM; killing it")
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def wait_rusage(proc, timeout):
    """Waits for `proc` with wait4(2): (exit code, seconds since `proc.started`, peak RSS in KiB)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.bench_name} still running after {timeout:.0f}s")
        time.sleep(0.005)
    elapsed = time.perf_counter() - proc.started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, elapsed, usage.ru_maxrss


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, proc, timeout, err_file):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise BenchError(f"{what}: process exited with {proc.returncode}\n{tail(err_file)}")
        time.sleep(0.05)
    raise BenchError(f"{what}: not ready after {timeout}s\n{tail(err_file)}")


def topic_records(brokers, topic):
    """(records between the watermarks, lowest low watermark) over all partitions."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "stockflow-compare", "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=30).topics[topic]
        total, lows = 0, []
        for p in meta.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += high - low
            lows.append(low)
        return total, max(lows)
    finally:
        c.close()


def lake_rows(root, table):
    import pyarrow.dataset as ds

    path = Path(root) / table
    if not path.exists():
        return 0
    return ds.dataset(str(path), format="parquet", partitioning="hive").count_rows()


def fill_topic(args, children, work):
    """Starts dev-kafka and fills its topic with exactly `args.trades` records; returns the brokers."""
    port_file = work / "brokers"
    kafka = children.spawn(
        "dev-kafka",
        [args.stockflow, "dev-kafka", "--partitions", str(args.partitions), "--topic", args.topic,
         "--port-file", str(port_file)],
        work,
    )

    def read_brokers():
        try:
            return port_file.read_text().strip()
        except FileNotFoundError:
            return None

    brokers = wait_for("dev-kafka", read_brokers, kafka, 30, work / "dev-kafka.err")
    log(f"dev-kafka up at {brokers} ({args.partitions} partitions)")

    port = free_port()
    sim = children.spawn(
        "simulate",
        [args.stockflow, "simulate", "--listen", f"127.0.0.1:{port}", "--rate", "0", "--trades", str(args.trades),
         "--seed", str(args.seed), "--symbols", str(args.symbols)],
        work,
    )

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for("simulate", listening, sim, 30, work / "simulate.err")
    symbols = subprocess.run(
        [args.stockflow, "simulate", "--list-symbols", "--symbols", str(args.symbols)],
        check=True, capture_output=True, text=True,
    ).stdout.split()

    # Ingest ends by itself when the simulator closes the stream after N records.
    started = time.perf_counter()
    ingest = children.spawn(
        "ingest",
        [args.stockflow, "ingest", "--url", f"ws://127.0.0.1:{port}", "--symbols", ",".join(symbols),
         "--brokers", brokers, "--topic", args.topic],
        work,
    )
    try:
        code = ingest.wait(args.timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"ingest still running after {args.timeout:.0f}s\n{tail(work / 'ingest.err')}")
    children.procs.remove(ingest)
    children.stop(sim)
    if code != 0:
        raise BenchError(f"ingest exited with {code}\n{tail(work / 'ingest.err')}")
    done = (work / "ingest.out").read_text()
    m = re.search(r"(\d+) records, (\d+) delivered", done)
    if not m or int(m.group(1)) != args.trades or int(m.group(2)) != args.trades:
        raise BenchError(f"ingest did not deliver {args.trades} records: {done.strip()}")
    total, low = topic_records(brokers, args.topic)
    if total != args.trades or low != 0:
        raise BenchError(
            f"topic holds {total} records (lowest offset {low}), expected {args.trades} from offset 0: "
            "the mock broker keeps at most 5 MiB (about 200k trades) a partition; raise --partitions"
        )
    log(f"topic {args.topic} filled with {total} records in {time.perf_counter() - started:.1f}s")
    return brokers


def run_measured(args, children, work, name, cmd, what):
    """Runs `cmd` to its end: (its stdout, seconds from spawn to exit, peak RSS in KiB).
    A non-zero exit is a BenchError carrying the tail of its stderr."""
    started = time.perf_counter()
    proc = children.spawn(name, cmd, work)
    proc.started = started
    code, seconds, rss = wait_rusage(proc, args.timeout)
    children.procs.remove(proc)
    if code != 0:
        raise BenchError(f"{what} exited with {code}\n{tail(work / f'{name}.err')}")
    return (work / f"{name}.out").read_text(), seconds, rss


def run_stockflow(args, children, work, brokers, run):
    lake = work / f"lake-{run}"
    name = f"stockflow-{run}"
    cmd = [args.stockflow, "--brokers", brokers, "--topic", args.topic, "--lake", str(lake),
           "-w", str(args.workers), "--drain", "--commit-interval", "1h"]
    out, seconds, rss = run_measured(args, children, work, name, cmd, "stockflow")
    m = re.search(r"stockflow job done: .*\brows ([^;]*);", out)
    if not m:
        raise BenchError(f"stockflow printed no `done` line:\n{out}\n{tail(work / f'{name}.err')}")
    rows = dict(kv.split("=", 1) for kv in m.group(1).split())
    trades, quarantine = int(rows.get("trades", 0)), int(rows.get("quarantine", 0))
    in_lake = lake_rows(lake, "trades") + lake_rows(lake, "quarantine")
    if in_lake != trades + quarantine:
        raise BenchError(f"stockflow reported {trades + quarantine} rows but its lake holds {in_lake}")
    result = dict(tool="stockflow", records=trades + quarantine, trades=trades, quarantine=quarantine,
                  bars=int(rows.get("bars_1m", 0)), seconds=seconds, rss_kib=rss)
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)
    return result


def run_baseline(args, children, work, brokers, run):
    out_dir = work / f"baseline-{run}"
    name = f"baseline-{run}"
    cmd = [args.python, str(HERE / "consumer.py"), "--brokers", brokers, "--topic", args.topic, "--out", str(out_dir)]
    out, seconds, rss = run_measured(args, children, work, name, cmd, "baseline")
    m = re.search(r"baseline done: records=(\d+) trades=(\d+) quarantine=(\d+) bars=(\d+)", out)
    if not m:
        raise BenchError(f"baseline printed no summary:\n{out}\n{tail(work / f'{name}.err')}")
    records, trades, quarantine, bars = map(int, m.groups())
    in_dir = lake_rows(out_dir, "trades") + lake_rows(out_dir, "quarantine")
    if in_dir != records or trades + quarantine != records:
        raise BenchError(f"baseline reported {records} records but wrote {in_dir} rows")
    result = dict(tool="python baseline", records=records, trades=trades, quarantine=quarantine, bars=bars,
                  seconds=seconds, rss_kib=rss)
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def best(runs):
    return min(runs, key=lambda r: r["seconds"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stockflow", default=os.environ.get("STOCKFLOW_BIN", str(REPO / "target/release/stockflow")),
                    help="stockflow binary (env STOCKFLOW_BIN; default: target/release/stockflow of this repo)")
    ap.add_argument("--trades", type=int, default=1_000_000, help="records to put in the topic (default 1000000)")
    ap.add_argument("--workers", "-w", type=int, default=2, help="stockflow worker threads (default 2)")
    ap.add_argument("--partitions", type=int, default=None,
                    help="topic partitions (default: max(4, ceil(trades / 50000)); the mock broker drops the oldest "
                         "records past 5 MiB (about 200k trades) a partition)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; the fastest one counts (default 1)")
    ap.add_argument("--symbols", type=int, default=100, help="size of the simulated universe (default 100)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--topic", default="trades")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the baseline")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds any one step may take")
    ap.add_argument("--keep", action="store_true", help="keep the outputs and logs (the folder is printed)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)
    if args.trades < 1 or args.repeat < 1 or args.workers < 1:
        ap.error("--trades, --repeat and --workers must be positive")
    if args.partitions is None:
        args.partitions = max(4, math.ceil(args.trades / 50_000))
    args.stockflow = str(Path(args.stockflow).resolve())
    if not os.access(args.stockflow, os.X_OK):
        ap.error(f"no stockflow binary at {args.stockflow} (build it with `cargo build --release`, or pass --stockflow)")

    # SIGTERM and SIGHUP stop the children too, like Ctrl-C.
    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    work = Path(tempfile.mkdtemp(prefix="stockflow-compare-"))
    children = Children()
    keep = args.keep
    try:
        result = measure(args, children, work)
    except BenchError as e:
        log(f"FAILED: {e}")
        keep = True
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stop_all()
        if keep:
            log(f"outputs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, result)
    return 0


def measure(args, children, work):
    brokers = fill_topic(args, children, work)
    sf_runs, py_runs = [], []
    for run in range(1, args.repeat + 1):
        r = run_stockflow(args, children, work, brokers, run)
        log(f"run {run}: stockflow {r['records']} records in {r['seconds']:.2f}s, {r['rss_kib'] / 1024:.0f} MiB")
        sf_runs.append(r)
        r = run_baseline(args, children, work, brokers, run)
        log(f"run {run}: baseline  {r['records']} records in {r['seconds']:.2f}s, {r['rss_kib'] / 1024:.0f} MiB")
        py_runs.append(r)
    for r in sf_runs + py_runs:
        if r["records"] != args.trades:
            raise BenchError(f"{r['tool']} processed {r['records']} records, expected {args.trades}")
    sf, py = best(sf_runs), best(py_runs)
    if (sf["trades"], sf["quarantine"]) != (py["trades"], py["quarantine"]):
        log(f"note: trades/quarantine split differs: stockflow {sf['trades']}/{sf['quarantine']}, "
            f"baseline {py['trades']}/{py['quarantine']}")
    for r in (sf, py):
        r["records_per_s"] = r["records"] / r["seconds"]
        r["peak_rss_mib"] = r["rss_kib"] / 1024
    return {
        "trades": args.trades, "partitions": args.partitions, "workers": args.workers, "repeat": args.repeat,
        "stockflow_bin": args.stockflow,
        "results": [sf, py],
        "runs": {"stockflow": [r["seconds"] for r in sf_runs], "baseline": [r["seconds"] for r in py_runs]},
        "ratio_records_per_s": sf["records_per_s"] / py["records_per_s"],
    }


def report(args, result):
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.trades} records, {args.partitions} partitions, stockflow -w {args.workers}, best of {args.repeat}")
    print(f"{'tool':<16} {'records':>10} {'seconds':>9} {'records/s':>12} {'peak RSS MiB':>13}")
    for r in result["results"]:
        print(f"{r['tool']:<16} {r['records']:>10} {r['seconds']:>9.2f} {r['records_per_s']:>12,.0f} "
              f"{r['peak_rss_mib']:>13.1f}")
    print(f"stockflow / baseline (records/s): {result['ratio_records_per_s']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
