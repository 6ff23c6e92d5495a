//! Memory of the dataflow's state as the input grows with the symbol set fixed: the same
//! seeded stream of 1M and 10M trades over 10,000 symbols (with disorder, late trades, and a
//! feed gap record every 1,000 records reaching up to 10 minutes back) through source →
//! clean → bars (1m, 5m, 1h; 1h revision horizon) joined with the gaps, on two workers; then
//! the smaller input at 1, 2, 4 and 8 workers (one partition each), for what each worker adds
//! (on a 2-core machine the figure is memory, not speed). Each run is a child process so its
//! peak RSS (VmHWM) is its own. Prints figures; asserts nothing.
//!
//! `cargo bench --bench memory` (add `-- --test` for a quick 20k/200k run).

use std::convert::Infallible;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use dataflows::bars::BarsConfig;
use dataflows::gap::GAP_KIND;
use dataflows::source::SourceConfig;
use dataflows::{RawRecord, RecordSource, SourcePoll, build_pipeline};
use timely::dataflow::operators::Probe;

const SYMBOLS: u64 = 10_000;
const START_MS: i64 = 1_763_994_600_000;

/// Trades made on the fly (never stored), so the only memory that can grow is the dataflow's.
struct Synthetic {
    partition: i32,
    next: u64,
    end: u64,
    rng: fastrand::Rng,
    buf: Vec<u8>,
}

impl RecordSource for Synthetic {
    type Error = Infallible;

    fn partitions(&self) -> Vec<i32> {
        vec![self.partition]
    }

    fn start_offset(&self, _p: i32) -> i64 {
        0
    }

    fn poll(&mut self, max: usize, each: &mut dyn FnMut(RawRecord<'_>)) -> Result<SourcePoll, Infallible> {
        for _ in 0..max {
            if self.next == self.end {
                return Ok(SourcePoll::Done);
            }
            // 100 trades per simulated second per partition, so the larger run spans many
            // revision horizons; 1% of trades up to 10 minutes late.
            let mut t = START_MS + (self.next * 10) as i64;
            if self.rng.u8(..100) == 0 {
                t -= self.rng.i64(0..600_000);
            }
            let symbol = self.rng.u64(..SYMBOLS / 2) * 2 + self.partition as u64 % 2;
            self.buf.clear();
            if self.next % 1_000 == 999 {
                // What ingest writes after losing the feed: the symbol's gap, keyed with it.
                let to = START_MS + (self.next * 10) as i64;
                let from = to - self.rng.i64(1_000..600_000);
                let _ = write!(self.buf, r#"{{"s":"S{symbol}","from":{from},"to":{to},"reason":"stale","host":"h"}}"#);
                each(RawRecord {
                    partition: self.partition,
                    offset: self.next as i64,
                    timestamp: Some(to),
                    payload: Some(&self.buf),
                    kind: Some(GAP_KIND),
                });
                self.next += 1;
                continue;
            }
            let _ = write!(
                self.buf,
                r#"{{"s":"S{symbol}","p":{}.{},"t":{t},"v":{}}}"#,
                100 + self.rng.u32(..50),
                self.rng.u32(..100),
                self.rng.u32(1..500)
            );
            each(RawRecord {
                partition: self.partition,
                offset: self.next as i64,
                timestamp: Some(t),
                payload: Some(&self.buf),
                kind: None,
            });
            self.next += 1;
        }
        Ok(SourcePoll::Busy)
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn child(trades: u64, workers: usize) {
    let started = Instant::now();
    let bars = BarsConfig { widths: vec![60_000, 300_000, 3_600_000], horizon_ms: 3_600_000 };
    let result = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let source = Synthetic {
            partition: index as i32,
            next: 0,
            end: trades / workers as u64,
            rng: fastrand::Rng::with_seed(index as u64),
            buf: Vec::new(),
        };
        let cfg = SourceConfig::default();
        let probe = worker.dataflow(|scope| build_pipeline(scope, source, cfg, bars.clone()).bars.probe().0);
        while !probe.done() {
            worker.step();
        }
    });
    if let Ok(guards) = result {
        drop(guards.join());
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{trades} {} {secs:.2}", peak_rss_kib());
}

fn main() {
    if let Ok(n) = std::env::var("STOCKFLOW_MEMORY_CHILD") {
        let workers = std::env::var("STOCKFLOW_MEMORY_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(2);
        child(n.parse().unwrap_or(1_000_000), workers);
        return;
    }
    // `cargo bench` passes --bench; anything else (`cargo test --all-targets`, `-- --test`)
    // is the quick run that keeps the bench working.
    let full = std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--test");
    let sizes: [u64; 2] = if full { [1_000_000, 10_000_000] } else { [20_000, 200_000] };
    println!(
        "dataflow state vs input size ({SYMBOLS} symbols, 2 workers, bars 1m/5m/1h, horizon 1h, a gap per 1,000 records)"
    );
    let mut base = None;
    for n in sizes {
        let Some((rss, secs)) = run_child(n, 2) else { return };
        let ratio = base.map_or(1.0, |b| rss / b);
        base.get_or_insert(rss);
        println!(
            "{n:>11} trades: peak RSS {:>7.1} MiB ({ratio:.2}x the smallest), {secs:>6.2}s, {:.2}M trades/s",
            rss / 1024.0,
            n as f64 / secs / 1e6
        );
    }
    println!("{} trades by worker count (one partition a worker)", sizes[0]);
    let mut one = None;
    for workers in [1, 2, 4, 8] {
        let Some((rss, _)) = run_child(sizes[0], workers) else { return };
        let added = one.map_or(0.0, |o: f64| (rss - o) / 1024.0 / (workers - 1) as f64);
        one.get_or_insert(rss);
        println!("  -w {workers}: peak RSS {:>7.1} MiB ({added:+.1} MiB a worker beyond the first)", rss / 1024.0);
    }
}

/// Runs one size at one worker count in a child process: its peak RSS (KiB) and seconds.
fn run_child(trades: u64, workers: usize) -> Option<(f64, f64)> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .env("STOCKFLOW_MEMORY_CHILD", trades.to_string())
        .env("STOCKFLOW_MEMORY_WORKERS", workers.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    match fields[..] {
        [_, rss, secs] => Some((rss, secs)),
        _ => None,
    }
}
