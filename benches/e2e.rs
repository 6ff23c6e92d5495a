//! End to end, in trades/s, on topics of a production shape (Zipf-skewed symbols, gzip in
//! 1 MB batches) with 4 and 64 partitions on librdkafka's mock cluster: the job draining
//! each (`--drain`: Kafka → clean → bars → Parquet → commit) into a fresh local lake at `-w 1`
//! and `-w 2`; beside it, a bare librdkafka consumer reading the same records and touching
//! every payload, the ceiling for any consumer of this broker on this machine. After the
//! runs it prints the job's rate as a share of the bare drain, per shape and worker count,
//! and the 64-partition rate against the 4-partition one.
//!
//! `cargo bench --bench e2e` (`STOCKFLOW_BENCH_TRADES` sets the size, default 360k: the mock
//! broker keeps the newest 5 MiB of batches a partition, about 100k of these trades, so
//! four partitions hold only so many);
//! `-- --test` runs each once.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use stockflow::job::{self, ClusterConfig, JobConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::lake::writer::WriterConfig;
use stockflow::simulate::topic::{TopicShape, generate, produce};
use stockflow::sink::SinkConfig;

/// Partition counts of the measured topics.
const SHAPES: [i32; 2] = [4, 64];

/// Trades in each topic: 360k (or `STOCKFLOW_BENCH_TRADES`) under `cargo bench`, which passes
/// --bench; 20k for the quick run of `cargo test --all-targets` or `-- --test`.
fn trades() -> usize {
    let default = if measuring() { 360_000 } else { 20_000 };
    std::env::var("STOCKFLOW_BENCH_TRADES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--test")
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
    for partitions in SHAPES {
        let mock = MockCluster::new(1).expect("mock cluster");
        let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
        mock.create_topic(&kafka.topic, partitions, 1).expect("topic");
        let shape = TopicShape { records: n, partitions, ..Default::default() };
        produce(&kafka, &shape, &generate(&shape)).expect("fill the topic");
        let watermarks = kafka.watermarks(partitions).expect("watermarks");
        assert!(watermarks.values().all(|(low, _)| *low == 0), "the mock broker dropped records: {watermarks:?}");
        let ends = stockflow::kafka::ends(&watermarks);
        assert_eq!(ends.values().sum::<i64>() as usize, n);

        let mut group = c.benchmark_group(format!("e2e_p{partitions}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(20));
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
                        read: Default::default(),
                        sink: SinkConfig {
                            epochs: dataflows::epoch::Epochs::every_commit(3_600_000),
                            bar_widths: dataflows::bars::BarsConfig::default().widths,
                            open_after_ms: 3 * 3_600_000,
                            writer: WriterConfig::default(),
                        },
                        cluster: ClusterConfig::local(workers),
                        drain: true,
                        catalog: None,
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
        drop(mock);
    }
    if measuring() {
        summary();
    }
}

/// Criterion's mean time of one benchmark of this run, seconds.
fn mean(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/{group}/{id}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(json["mean"]["point_estimate"].as_f64()? / 1e9)
}

/// The job's rate as a share of the bare drain per shape and worker count, and the widest
/// shape's rate against the narrowest one's.
fn summary() {
    let n = trades() as f64;
    let rate = |p: i32, id: String| mean(&format!("e2e_p{p}"), &id).map(|s| n / s);
    println!("\nshape        workers  bare drain/s   job/s   job/bare");
    for p in SHAPES {
        for w in [1, 2] {
            if let (Some(bare), Some(job)) =
                (rate(p, format!("bare_drain_w{w}")), rate(p, format!("kafka_to_lake_w{w}")))
            {
                println!("{p:>3} partitions  -w {w}  {bare:>11.0}  {job:>8.0}  {:>7.2}", job / bare);
            }
        }
    }
    for w in [1, 2] {
        let (narrow, wide) = (SHAPES[0], SHAPES[SHAPES.len() - 1]);
        if let (Some(a), Some(b)) =
            (rate(narrow, format!("kafka_to_lake_w{w}")), rate(wide, format!("kafka_to_lake_w{w}")))
        {
            println!("-w {w}: {wide} partitions at {:.2} of the {narrow}-partition rate", b / a);
        }
    }
    if let (Some(one), Some(two)) =
        (rate(SHAPES[0], "kafka_to_lake_w1".into()), rate(SHAPES[0], "kafka_to_lake_w2".into()))
    {
        println!("-w 2 / -w 1 at {} partitions: {:.2}", SHAPES[0], two / one);
    }
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
