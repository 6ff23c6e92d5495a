//! Criterion benches of the compute core, each in trades/s: parse + clean; bar aggregation
//! (ticks → bars of 1m/5m/1h with revisions); Parquet encoding of the trades table; and the
//! in-memory dataflow (source → clean → bars) at one and two workers.
//!
//! `cargo bench --bench dataflow`; `cargo bench --bench dataflow -- --test` runs each once.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataflows::bars::{BarsConfig, Tick, bars};
use dataflows::build_pipeline;
use dataflows::gap::GapTick;
use dataflows::memlog::{MemLog, MemRecord, MemSource};
use dataflows::source::SourceConfig;
use dataflows::{Time, Trade};
use parquet::arrow::ArrowWriter;
use stockflow::lake::encode::{Columns, TradeColumns};
use stockflow::lake::writer::properties;
use stockflow::simulate::{Market, MarketConfig};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::{Input, Inspect, Probe};

/// `cargo bench` passes --bench; anything else (`cargo test --all-targets`, `-- --test`)
/// runs each bench once on a twentieth of the data, to keep it working.
fn size(n: usize) -> usize {
    let full = std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--test");
    if full { n } else { n / 20 }
}

/// Trade payloads exactly as ingest would put them in Kafka, from the seeded simulator.
fn payloads(n: usize) -> Vec<Vec<u8>> {
    let n = size(n);
    let cfg = MarketConfig { symbols: 500, ..Default::default() };
    let subscribed = vec![true; cfg.symbols];
    let mut market = Market::new(cfg);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let Some(frame) = market.next_frame(&subscribed, n - out.len()) else {
            continue;
        };
        match serde_json::from_str::<serde_json::Value>(&frame.text) {
            Ok(v) => out.extend(v["data"].as_array().into_iter().flatten().map(|t| t.to_string().into_bytes())),
            Err(_) => out.push(frame.text.into_bytes()),
        }
    }
    out
}

/// The clean trades among `payloads`, with Kafka coordinates as one partition would give them.
fn trades(payloads: &[Vec<u8>]) -> Vec<Trade> {
    payloads
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let t = dataflows::clean(Some(p)).ok()?;
            Some(Trade {
                symbol: t.symbol,
                price: t.price,
                volume: t.volume,
                ts: t.ts,
                conditions: t.conditions,
                partition: 0,
                offset: i as i64,
                ingest_ts: Some(t.ts + 40),
                late: false,
            })
        })
        .collect()
}

fn clean(c: &mut Criterion) {
    let data = payloads(100_000);
    let mut group = c.benchmark_group("clean");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_function("parse_and_clean", |b| {
        b.iter(|| data.iter().filter(|p| dataflows::clean(Some(black_box(p))).is_ok()).count())
    });
    // The two usual stock-trade shapes on their own: with a conditions list, and without
    // (`"c":null`); crypto pairs (exponent volumes) and anomalies left out.
    let has = |p: &[u8], needle: &[u8]| p.windows(needle.len()).any(|w| w == needle);
    for (name, conditions) in [("usual_with_conditions", true), ("usual_without_conditions", false)] {
        let shape: Vec<&Vec<u8>> = data
            .iter()
            .filter(|p| !has(p, b"BINANCE") && has(p, b"\"c\":[") == conditions && dataflows::clean(Some(p)).is_ok())
            .collect();
        group.throughput(Throughput::Elements(shape.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| shape.iter().filter(|p| dataflows::clean(Some(black_box(p))).is_ok()).count())
        });
    }
    group.finish();
}

/// Bar aggregation alone: ticks stamped with their window (the time a source gives an on-time
/// trade), the input advanced window by window as a source's watermark does, bars of three
/// widths with a one-hour horizon.
fn aggregate(c: &mut Criterion) {
    let ticks: Arc<Vec<Tick>> = Arc::new(trades(&payloads(400_000)).iter().map(|t| Tick::new(t, None)).collect());
    let cfg = BarsConfig { widths: vec![60_000, 300_000, 3_600_000], horizon_ms: 3_600_000 };
    let mut group = c.benchmark_group("bars");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ticks.len() as u64));
    group.bench_function("aggregate_1m_5m_1h", |b| {
        b.iter(|| {
            let (ticks, cfg) = (Arc::clone(&ticks), cfg.clone());
            timely::execute_directly(move |worker| {
                let mut input = InputHandle::<Time, CapacityContainerBuilder<Vec<Tick>>>::new();
                // No gaps: the feed was never down (their input closed at once).
                let mut gaps = InputHandle::<Time, CapacityContainerBuilder<Vec<GapTick>>>::new();
                let probe = worker
                    .dataflow(|scope| bars(scope.input_from(&mut input), scope.input_from(&mut gaps), cfg).probe().0);
                gaps.close();
                for tick in ticks.iter() {
                    let window = (tick.ts as u64 / 60_000) * 60_000;
                    if window > *input.time() {
                        input.advance_to(window);
                        worker.step_while(|| probe.less_than(input.time()));
                    }
                    input.send(tick.clone());
                }
                input.close();
                while worker.step() {}
            })
        })
    });
    group.finish();
}

/// Encoding the trades table: column builders filled row by row, then ZSTD Parquet in memory.
fn encode(c: &mut Criterion) {
    let trades = trades(&payloads(200_000));
    let mut group = c.benchmark_group("parquet");
    group.sample_size(10);
    group.throughput(Throughput::Elements(trades.len() as u64));
    group.bench_function("encode_trades", |b| {
        let mut columns = TradeColumns::new();
        b.iter(|| {
            let mut writer = ArrowWriter::try_new(Vec::new(), trades_schema(), Some(properties())).expect("writer");
            for chunk in trades.chunks(8192) {
                for t in chunk {
                    columns.push(t);
                }
                writer.write(&columns.finish().expect("batch")).expect("write");
            }
            writer.into_inner().expect("close").len()
        })
    });
    group.finish();
}

fn trades_schema() -> arrow::datatypes::SchemaRef {
    stockflow::lake::Table::Trades.schema()
}

/// The dataflow core on `workers` threads of one process: the in-memory log read, cleaned and
/// aggregated into bars, trades and quarantine leaving to a sink that drops them (the lake
/// sink's work is measured by `encode` and the e2e bench). Returns the number of bar rows.
fn run_core(log: &Arc<MemLog>, workers: usize) -> usize {
    let rows = Arc::new(AtomicUsize::new(0));
    let (log, counted) = (Arc::clone(log), Arc::clone(&rows));
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let source = MemSource::new(Arc::clone(&log), worker.index(), worker.peers(), 4096);
        let counted = Arc::clone(&counted);
        let probe = worker.dataflow(|scope| {
            let out = build_pipeline(scope, source, SourceConfig::default(), BarsConfig::default());
            let (probe, _) = out
                .bars
                .inspect_core(move |event| {
                    if let Ok((_, rows)) = event {
                        counted.fetch_add(rows.len(), Relaxed);
                    }
                })
                .probe();
            out.trades.probe_with(&probe);
            out.quarantine.probe_with(&probe);
            probe
        });
        while !probe.done() {
            worker.step();
        }
    });
    guards.expect("timely workers").join().into_iter().for_each(|r| r.expect("worker"));
    rows.load(Relaxed)
}

fn dataflow(c: &mut Criterion) {
    let partitions = 8;
    let mut log = MemLog { partitions: vec![Vec::new(); partitions] };
    for (i, p) in payloads(400_000).into_iter().enumerate() {
        log.partitions[i % partitions].push(MemRecord { kind: None, timestamp: None, payload: Some(p) });
    }
    let log = Arc::new(log);
    // The same bars whatever the worker count, or the figures would not compare like with like.
    let expected = run_core(&log, 1);
    assert!(expected > 0 && run_core(&log, 2) == expected, "bar rows differ between -w 1 and -w 2");
    let mut group = c.benchmark_group("dataflow");
    group.sample_size(10);
    group.throughput(Throughput::Elements(log.len() as u64));
    for workers in [1, 2] {
        group.bench_function(format!("memlog_w{workers}"), |b| b.iter(|| run_core(&log, workers)));
    }
    group.finish();
}

criterion_group!(benches, clean, aggregate, encode, dataflow);
criterion_main!(benches);
