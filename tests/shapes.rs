//! Production topic shapes through the embedded broker: 1 to 64 partitions per worker,
//! uniform and Zipf-skewed keys, gzip and lz4 in large batches, a partition running ten
//! minutes ahead, and a bad tick dated 2099. Every `--drain` ends, and the lake equals the
//! sequential reference of the topic's log.

use std::path::Path;
use std::time::{Duration, Instant};

use dataflows::TimeConfig;
use dataflows::bars::BarsConfig;
use dataflows::memlog::MemLog;
use dataflows::reference::{diff_bars, expected};
use rdkafka::mocking::MockCluster;
use stockflow::commit::CommitRecord;
use stockflow::job::{self, ClusterConfig, JobConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::lake::Lake;
use stockflow::lake::writer::WriterConfig;
use stockflow::simulate::topic::{BAD_TICK_MS, Keys, TopicShape, generate, produce};
use stockflow::sink::SinkConfig;
use stockflow::source::ReadConfig;

mod common;
use common::{Landed, read_lake};

/// A mock topic holding a shape's log.
struct Topic {
    rt: tokio::runtime::Runtime,
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    kafka: KafkaConfig,
    log: MemLog,
}

fn topic(shape: &TopicShape) -> Topic {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, shape.partitions, 1).expect("topic");
    let log = generate(shape);
    produce(&kafka, shape, &log).expect("produce");
    let watermarks = kafka.watermarks(shape.partitions).expect("watermarks");
    for (p, records) in log.partitions.iter().enumerate() {
        assert_eq!(watermarks[&(p as i32)], (0, records.len() as i64), "partition {p} holds its whole log");
    }
    Topic { rt, _mock: mock, kafka, log }
}

/// The job draining the topic into `lake`. No idle timeout: a partition that stops being
/// read must show as a stall, not be overtaken as idle.
fn job_config(t: &Topic, lake: &Path, workers: usize, bars: &BarsConfig) -> JobConfig {
    JobConfig {
        kafka: t.kafka.clone(),
        lake: lake.to_string_lossy().into_owned(),
        lake_options: Default::default(),
        time: TimeConfig::default(),
        bars: bars.clone(),
        read: ReadConfig::default(),
        sink: SinkConfig {
            epochs: dataflows::epoch::Epochs::every_commit(60_000),
            bar_widths: bars.widths.clone(),
            open_after_ms: 3 * 3_600_000,
            writer: WriterConfig::default(),
        },
        cluster: ClusterConfig::local(workers),
        drain: true,
        catalog: None,
    }
}

/// Runs `cfg`; fails if the job reads nothing for `stall` before it ends (a wedge), which
/// a test otherwise shows only as a hang.
fn drain(t: &Topic, cfg: JobConfig, stall: Duration) {
    let controls = job::Controls::default();
    let metrics = controls.metrics.clone();
    let handle = t.rt.handle().clone();
    let job = std::thread::spawn(move || job::run(cfg, controls, handle));
    let (mut seen, mut since) = (u64::MAX, Instant::now());
    while !job.is_finished() {
        let read = metrics.records.get();
        if read != seen {
            (seen, since) = (read, Instant::now());
        }
        assert!(
            since.elapsed() < stall,
            "the job stopped reading at {seen} of {} records and did not end (wedged)",
            t.log.len()
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    job.join().expect("job thread").expect("job");
}

/// Checks the lake against the reference of the topic's log.
fn check(t: &Topic, lake: &Path, bars: &BarsConfig) -> Landed {
    let want = expected(&t.log, TimeConfig::default(), bars);
    let lake = Lake::open(&lake.to_string_lossy()).expect("lake");
    let landed = t.rt.block_on(read_lake(&lake, &bars.widths));
    assert_eq!(landed.duplicates, 0, "records landed twice");
    assert_eq!(landed.trades.len() + landed.quarantine.len(), t.log.len(), "every record landed");
    assert_eq!(landed.trades, want.trades, "trades (and late flags) differ from the log");
    let reasons: std::collections::BTreeMap<_, _> =
        want.quarantine.iter().map(|(k, r)| (*k, r.as_str().to_owned())).collect();
    assert_eq!(landed.quarantine, reasons, "quarantine differs from the log");
    if let Err(diff) = diff_bars(&landed.bars, &want.bars) {
        panic!("lake bars differ from the sequential reference:\n{diff}");
    }
    landed
}

/// Drains one topic of `shape` at 1, 2 and 3 workers, each into a lake of its own.
fn drains_at_every_worker_count(shape: TopicShape) {
    let t = topic(&shape);
    let bars = BarsConfig::default();
    for workers in 1..=3 {
        let dir = tempfile::tempdir().expect("tempdir");
        drain(&t, job_config(&t, dir.path(), workers, &bars), Duration::from_secs(60));
        check(&t, dir.path(), &bars);
    }
}

/// A topic of `records` trades over one hour, produced in 1 MB batches.
fn shape(partitions: i32, records: usize, keys: Keys, compression: &str) -> TopicShape {
    TopicShape {
        seed: partitions as u64,
        records,
        partitions,
        keys,
        compression: compression.into(),
        ..Default::default()
    }
}

macro_rules! matrix {
    ($($name:ident: $partitions:expr, $keys:expr, $compression:expr;)*) => {$(
        #[test]
        fn $name() {
            drains_at_every_worker_count(shape($partitions, 40_000, $keys, $compression));
        }
    )*};
}

matrix! {
    drains_1_partition_uniform_lz4_at_1_2_3_workers: 1, Keys::Uniform, "lz4";
    drains_1_partition_zipf_gzip_at_1_2_3_workers: 1, Keys::Zipf(1.1), "gzip";
    drains_7_partitions_uniform_gzip_at_1_2_3_workers: 7, Keys::Uniform, "gzip";
    drains_7_partitions_zipf_lz4_at_1_2_3_workers: 7, Keys::Zipf(1.1), "lz4";
    drains_32_partitions_uniform_lz4_at_1_2_3_workers: 32, Keys::Uniform, "lz4";
    drains_32_partitions_zipf_gzip_at_1_2_3_workers: 32, Keys::Zipf(1.1), "gzip";
    drains_64_partitions_uniform_gzip_at_1_2_3_workers: 64, Keys::Uniform, "gzip";
    drains_64_partitions_zipf_lz4_at_1_2_3_workers: 64, Keys::Zipf(1.1), "lz4";
}

/// The shape that wedged the job: 64 partitions read by one worker, Zipf keys, gzip in
/// 1 MB batches, so one fetch hands the worker an hour of a cold partition's event time
/// while hot partitions are minutes in.
#[test]
fn wide_skewed_gzip_topic_drains_at_one_worker_64_partitions() {
    let records = std::env::var("STOCKFLOW_SHAPE_TRADES").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let t = topic(&shape(64, records, Keys::Zipf(1.1), "gzip"));
    let bars = BarsConfig::default();
    let dir = tempfile::tempdir().expect("tempdir");
    drain(&t, job_config(&t, dir.path(), 1, &bars), Duration::from_secs(60));
    check(&t, dir.path(), &bars);
}

/// One partition ten minutes of event time ahead of the others: it is paused and resumed
/// as they catch up, and nothing it holds is marked late or lost.
#[test]
fn a_partition_ten_minutes_ahead_is_held_back_and_loses_nothing() {
    let ahead = TopicShape { ahead: vec![(2, 600_000)], ..shape(7, 40_000, Keys::Uniform, "lz4") };
    drains_at_every_worker_count(ahead);
}

/// The bad tick: 12,000 in-order trades on 20 symbols (event times 30 to 20 minutes ago,
/// Kafka timestamps now) with one trade dated 2099-01-01 in the middle, arriving in four
/// rounds while the job runs; a drain then finishes the lake.
#[test]
fn a_bad_tick_is_quarantined_and_never_moves_the_watermark() {
    let now = chrono::Utc::now().timestamp_millis();
    let bad = TopicShape {
        seed: 2099,
        records: 12_000,
        partitions: 4,
        symbols: 20,
        keys: Keys::Uniform,
        start_ms: now - 30 * 60_000,
        span_ms: 10 * 60_000,
        late_rate: 0.0,
        bad_ticks: vec![6_000],
        stamped_at: Some(now),
        ..Default::default()
    };
    let log = generate(&bad);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, bad.partitions, 1).expect("topic");
    let t = Topic { rt, _mock: mock, kafka, log };
    // A short horizon, so replay offsets have to move on within the run.
    let bars = BarsConfig { widths: vec![60_000], horizon_ms: 120_000 };
    let dir = tempfile::tempdir().expect("tempdir");

    let tick = format!("\"t\":{BAD_TICK_MS}");
    let (p, o) = t
        .log
        .partitions
        .iter()
        .enumerate()
        .find_map(|(p, records)| {
            let bad = |r: &dataflows::memlog::MemRecord| {
                r.payload.as_ref().is_some_and(|b| String::from_utf8_lossy(b).contains(&tick))
            };
            Some((p as i32, records.iter().position(bad)? as i64))
        })
        .expect("the bad tick is in the log");
    let commits = || -> Vec<CommitRecord> {
        let mut records: Vec<CommitRecord> = std::fs::read_dir(dir.path().join("_stockflow/commits"))
            .map(|d| d.flatten().filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()).collect())
            .unwrap_or_default();
        records.retain(|r| r.is_commit() && !r.is_final());
        records.sort_by_key(|r| r.commit);
        records
    };

    let controls = job::Controls::default();
    let (metrics, pause) = (controls.metrics.clone(), std::sync::Arc::clone(&controls.pause));
    let (cfg, handle) = (JobConfig { drain: false, ..job_config(&t, dir.path(), 2, &bars) }, t.rt.handle().clone());
    let job = std::thread::spawn(move || job::run(cfg, controls, handle));
    for round in 0..4 {
        let part = MemLog {
            partitions: t
                .log
                .partitions
                .iter()
                .map(|records| {
                    let quarter = records.len().div_ceil(4);
                    records.iter().skip(round * quarter).take(quarter).cloned().collect()
                })
                .collect(),
        };
        let before = metrics.commits.get();
        produce(&t.kafka, &bad, &part).expect("produce");
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.commits.get() == before {
            assert!(!job.is_finished() && Instant::now() < deadline, "no commit after round {round}");
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
    // Replay offsets move past the bad tick once its bars can no longer change: the run's
    // commits get there (a deadline for failure, not a sleep).
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits().last().is_none_or(|r| r.partitions.get(&p).is_none_or(|pos| pos.replay <= o)) {
        assert!(!job.is_finished() && Instant::now() < deadline, "the bad tick at offset {o} pins the replay");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    pause.store(true, std::sync::atomic::Ordering::SeqCst);
    job.join().expect("job thread").expect("live job");
    drain(&t, job_config(&t, dir.path(), 1, &bars), Duration::from_secs(60));
    let landed = check(&t, dir.path(), &bars);

    assert_eq!(landed.quarantine.get(&(p, o)).map(String::as_str), Some("future_timestamp"));
    assert_eq!(landed.quarantine.len(), 1, "nothing else is quarantined");
    assert_eq!(landed.trades.values().filter(|late| **late).count(), 0, "no good trade is late");

    // Replay offsets move past the bad tick: it pins nothing once its bars could not change.
    let commits = commits();
    assert!(commits.len() >= 4, "commits during the run: {}", commits.len());
    let replays: Vec<i64> = commits.iter().map(|r| r.partitions[&p].replay).collect();
    assert!(replays.windows(2).all(|w| w[0] <= w[1]), "replay offsets never move back: {replays:?}");
    assert!(replays.last().is_some_and(|r| *r > o), "the bad tick at offset {o} pins the replay: {replays:?}");
    for r in &commits {
        let raises: usize = r.partitions.values().map(|pos| pos.raises.len()).sum();
        assert!(raises <= 2 * r.partitions.len(), "raises grow without bound: {raises} at {}", r.commit);
    }
}
