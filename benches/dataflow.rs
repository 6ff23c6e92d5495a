//! Criterion benches of the compute core: parse + clean, and the in-memory dataflow
//! (source → clean → bars) at one and two workers. `cargo bench -- --test` runs each once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataflows::bars::BarsConfig;
use dataflows::memlog::{MemLog, MemRecord, run_memlog};
use dataflows::source::SourceConfig;
use stockflow::simulate::{Market, MarketConfig};

/// Trade payloads exactly as ingest would put them in Kafka, from the seeded simulator.
fn payloads(n: usize) -> Vec<Vec<u8>> {
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

fn clean(c: &mut Criterion) {
    let data = payloads(100_000);
    let mut group = c.benchmark_group("clean");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_function("parse_and_clean", |b| {
        b.iter(|| data.iter().filter(|p| dataflows::clean(Some(black_box(p))).is_ok()).count())
    });
    group.finish();
}

fn dataflow(c: &mut Criterion) {
    let partitions = 8;
    let mut log = MemLog { partitions: vec![Vec::new(); partitions] };
    for (i, p) in payloads(400_000).into_iter().enumerate() {
        log.partitions[i % partitions].push(MemRecord { timestamp: None, payload: Some(p) });
    }
    let log = Arc::new(log);
    let mut group = c.benchmark_group("dataflow");
    group.sample_size(10);
    group.throughput(Throughput::Elements(log.len() as u64));
    for workers in [1, 2] {
        group.bench_function(format!("memlog_w{workers}"), |b| {
            b.iter(|| {
                run_memlog(Arc::clone(&log), workers, 4096, SourceConfig::default(), BarsConfig::default()).bars.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, clean, dataflow);
criterion_main!(benches);
