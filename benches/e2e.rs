//! End to end, in trades/s: a topic on librdkafka's mock cluster pre-filled with the seeded
//! simulator's trades, drained by the job (`--drain`: Kafka → clean → bars → Parquet →
//! commit) into a fresh local lake at `-w 1` and `-w 2`; beside it, a bare librdkafka
//! consumer reading the same records and touching every payload, the ceiling for any
//! consumer of this broker on this machine.
//!
//! `cargo bench --bench e2e` (`STOCKFLOW_BENCH_TRADES` sets the size, default 1M);
//! `-- --test` runs each once.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use stockflow::job::{self, ClusterConfig, JobConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::lake::writer::WriterConfig;
use stockflow::simulate::{Market, MarketConfig};
use stockflow::sink::SinkConfig;

/// The mock broker keeps at most 5 MiB of record batches a partition (~200k lz4-compressed
/// trades); stay well below.
const PER_PARTITION: usize = 50_000;

/// Trades in the topic: 1M (or `STOCKFLOW_BENCH_TRADES`) under `cargo bench`, which passes
/// --bench; 20k for the quick run of `cargo test --all-targets` or `-- --test`.
fn trades() -> usize {
    let full = std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--test");
    let default = if full { 1_000_000 } else { 20_000 };
    std::env::var("STOCKFLOW_BENCH_TRADES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Fills `topic` with `n` trade records keyed by symbol, as ingest writes them.
fn fill(kafka: &KafkaConfig, n: usize) {
    let producer: BaseProducer = kafka
        .client_config()
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let cfg = MarketConfig { symbols: 1_000, ..Default::default() };
    let subscribed = vec![true; cfg.symbols];
    let mut market = Market::new(cfg);
    let mut sent = 0;
    while sent < n {
        let Some(frame) = market.next_frame(&subscribed, n - sent) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&frame.text) else { continue };
        for t in v["data"].as_array().into_iter().flatten() {
            let payload = t.to_string();
            let key = t["s"].as_str().unwrap_or_default().to_owned();
            let mut record = BaseRecord::to(&kafka.topic).payload(&payload).key(&key);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// Reads every record of the topic once with `consumers` plain consumers on as many threads
/// (partitions split as the job splits them), summing payload bytes.
fn bare_drain(kafka: &KafkaConfig, ends: &HashMap<i32, i64>, consumers: usize) -> usize {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..consumers)
            .map(|i| {
                s.spawn(move || {
                    let consumer: BaseConsumer =
                        kafka.client_config().set("group.id", "bench-bare").create().expect("consumer");
                    let mut tpl = TopicPartitionList::new();
                    let mut total = 0;
                    for (p, end) in ends.iter().filter(|(p, _)| **p as usize % consumers == i) {
                        tpl.add_partition_offset(&kafka.topic, *p, Offset::Beginning).expect("partition");
                        total += end;
                    }
                    consumer.assign(&tpl).expect("assign");
                    let (mut read, mut bytes) = (0i64, 0usize);
                    while read < total {
                        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                            bytes += m.payload().map_or(0, |p| black_box(p).len());
                            read += 1;
                        }
                    }
                    bytes
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("consumer thread")).sum()
    })
}

fn end_to_end(c: &mut Criterion) {
    let n = trades();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let partitions = n.div_ceil(PER_PARTITION).max(4) as i32;
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, partitions, 1).expect("topic");
    fill(&kafka, n);
    let watermarks = kafka.watermarks(partitions).expect("watermarks");
    assert!(watermarks.values().all(|(low, _)| *low == 0), "the mock broker dropped records: {watermarks:?}");
    let ends = stockflow::kafka::ends(&watermarks);
    assert_eq!(ends.values().sum::<i64>() as usize, n);

    let mut group = c.benchmark_group("e2e");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(n as u64));
    for workers in [1, 2] {
        group.bench_function(format!("bare_drain_w{workers}"), |b| b.iter(|| bare_drain(&kafka, &ends, workers)));
        group.bench_function(format!("kafka_to_lake_w{workers}"), |b| {
            b.iter(|| {
                let dir = tempfile::tempdir().expect("tempdir");
                let cfg = JobConfig {
                    kafka: kafka.clone(),
                    lake: dir.path().to_string_lossy().into_owned(),
                    lake_options: Default::default(),
                    time: Default::default(),
                    bars: Default::default(),
                    idle_timeout: None,
                    sink: SinkConfig {
                        commit_interval_ms: 3_600_000,
                        bar_widths: dataflows::bars::BarsConfig::default().widths,
                        writer: WriterConfig::default(),
                    },
                    cluster: ClusterConfig::local(workers),
                    drain: true,
                };
                let report = job::run(cfg, job::Controls::default(), rt.handle().clone()).expect("job");
                assert_eq!(
                    report.written.rows.get("trades").copied().unwrap_or(0) as usize
                        + report.written.rows.get("quarantine").copied().unwrap_or(0) as usize,
                    n
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
