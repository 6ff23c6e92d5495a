//! End to end, in trades/s, on topics of a production shape (Zipf-skewed symbols, gzip in
//! 1 MB batches) with 4, 32 and 64 partitions on librdkafka's mock cluster: the job draining
//! each (`--drain`: Kafka → clean → bars → Parquet → commit) into a fresh local lake at `-w 1`
//! and `-w 2`; beside it, a bare librdkafka consumer reading the same records a batch per
//! call and touching every payload, the ceiling for any consumer of this broker on this
//! machine (with the job's `fetch.queue.backoff.ms`). After the runs it prints, per shape and worker count, the
//! median rate of each over criterion's samples with their range, and the job's median as a
//! share of the bare drain's; then the 64-partition rate against the 4-partition one.
//!
//! `cargo bench --bench e2e` (`STOCKFLOW_BENCH_TRADES` sets the size, default 360k: the mock
//! broker keeps the newest 5 MiB of batches a partition, about 100k of these trades, so
//! four partitions hold only so many);
//! `-- --test` runs each once.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use stockflow::job::{self, ClusterConfig, JobConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::lake::writer::WriterConfig;
use stockflow::simulate::topic::{TopicShape, generate, produce};
use stockflow::sink::SinkConfig;
use stockflow::source::queue::{Batch, BatchQueue};

/// Partition counts of the measured topics.
const SHAPES: [i32; 3] = [4, 32, 64];

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
                    let consumer: Arc<BaseConsumer> = Arc::new(
                        kafka
                            .client_config()
                            .set("group.id", "bench-bare")
                            .set("fetch.queue.backoff.ms", "20")
                            .create()
                            .expect("consumer"),
                    );
                    let mut tpl = TopicPartitionList::new();
                    let mut total = 0;
                    for (p, end) in ends.iter().filter(|(p, _)| **p as usize % consumers == i) {
                        tpl.add_partition_offset(&kafka.topic, *p, Offset::Beginning).expect("partition");
                        total += end;
                    }
                    consumer.assign(&tpl).expect("assign");
                    // Every partition's records in one queue, taken a batch per call: the
                    // cheapest way to read librdkafka's fetched records.
                    let queue = BatchQueue::consumer(&consumer).expect("consumer queue");
                    let mut batch = Batch::new();
                    let (mut read, mut bytes) = (0i64, 0usize);
                    while read < total {
                        if queue.read(32 * 1024, Duration::ZERO, &mut batch) == 0 {
                            queue.read(1, Duration::from_millis(100), &mut batch);
                        }
                        for m in batch.iter().filter(|m| m.error().is_none()) {
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

/// The rates (trades/s) of one benchmark's samples in this run, sorted: criterion's
/// `sample.json` holds each sample's iteration count and total time.
fn rates(group: &str, id: &str) -> Option<Vec<f64>> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/{group}/{id}/new/sample.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let iters = json["iters"].as_array()?;
    let times = json["times"].as_array()?;
    let n = trades() as f64;
    let mut out: Vec<f64> =
        iters.iter().zip(times).filter_map(|(i, t)| Some(n * i.as_f64()? / (t.as_f64()? / 1e9))).collect();
    out.sort_by(f64::total_cmp);
    (!out.is_empty()).then_some(out)
}

/// The median of sorted rates.
fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// Per shape and worker count, the median rate of the bare drain and of the job with the
/// range of their samples, and the job's median as a share of the drain's; then the widest
/// shape's median against the narrowest one's.
fn summary() {
    let rate = |p: i32, id: String| rates(&format!("e2e_p{p}"), &id);
    let span = |r: &[f64]| format!("{:.0} ({:.0}–{:.0})", median(r), r[0], r[r.len() - 1]);
    println!("\nshape            workers  bare drain/s (range)        job/s (range)              job/bare");
    for p in SHAPES {
        for w in [1, 2] {
            if let (Some(bare), Some(job)) =
                (rate(p, format!("bare_drain_w{w}")), rate(p, format!("kafka_to_lake_w{w}")))
            {
                println!(
                    "{p:>3} partitions  -w {w}  {:<26} {:<26} {:>7.2}",
                    span(&bare),
                    span(&job),
                    median(&job) / median(&bare)
                );
            }
        }
    }
    let job = |p: i32, w: usize| rate(p, format!("kafka_to_lake_w{w}")).map(|r| median(&r));
    let (narrow, wide) = (SHAPES[0], SHAPES[SHAPES.len() - 1]);
    for w in [1, 2] {
        if let (Some(a), Some(b)) = (job(narrow, w), job(wide, w)) {
            println!("-w {w}: {wide} partitions at {:.2} of the {narrow}-partition rate", b / a);
        }
    }
    if let (Some(one), Some(two)) = (job(narrow, 1), job(narrow, 2)) {
        println!("-w 2 / -w 1 at {narrow} partitions: {:.2}", two / one);
    }
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
