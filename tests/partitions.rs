//! Partitions added to the topic: found by discovery while the job runs and read by the
//! worker that owns them; after a restart read completely; and a partition that retention
//! trimmed before the lake ever read it is one clear error, never a silent skip.
//!
//! librdkafka's mock cluster cannot add partitions to a topic, so the growth is staged in
//! the two ways it allows: a source whose view of the topic starts with fewer partitions
//! than the broker holds (discovery then finds the rest), and a restart against a second
//! broker whose topic holds the same records plus new partitions.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::bars::BarsConfig;
use dataflows::memlog::MemLog;
use dataflows::reference::{diff_bars, expected};
use dataflows::{RecordSource, SourcePoll, TimeConfig};
use rdkafka::mocking::MockCluster;
use stockflow::job::{self, ClusterConfig, JobConfig, JobError};
use stockflow::kafka::{KafkaConfig, KafkaSetupError};
use stockflow::lake::Lake;
use stockflow::lake::writer::WriterConfig;
use stockflow::metrics::JobMetrics;
use stockflow::simulate::topic::{Keys, TopicShape, generate, produce};
use stockflow::sink::SinkConfig;
use stockflow::source::discover::{TopicPartitions, refresh};
use stockflow::source::{KafkaSource, ReadConfig};

mod common;
use common::read_lake;

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock broker whose topic holds `log` (one partition per entry).
fn broker(shape: &TopicShape, log: &MemLog) -> (Mock, KafkaConfig) {
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, log.partitions.len() as i32, 1).expect("topic");
    produce(&kafka, shape, log).expect("produce");
    (mock, kafka)
}

fn shape(partitions: i32, records: usize, start_ms: i64) -> TopicShape {
    TopicShape {
        seed: partitions as u64,
        records,
        partitions,
        keys: Keys::Uniform,
        symbols: 60,
        start_ms,
        span_ms: 10 * 60_000,
        compression: "lz4".into(),
        ..Default::default()
    }
}

/// Polls `source` until it has delivered `want` records per partition (and no others).
fn read_until(source: &mut KafkaSource, want: &BTreeMap<i32, usize>) -> BTreeMap<i32, usize> {
    let mut got: BTreeMap<i32, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while &got != want {
        let poll = source.poll(10_000, &mut |r| *got.entry(r.partition).or_default() += 1).expect("poll");
        assert_ne!(poll, SourcePoll::Done, "a live source never ends");
        assert!(Instant::now() < deadline, "read {got:?}, want {want:?}");
        if poll == SourcePoll::Idle {
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
    got
}

#[test]
fn discovery_finds_added_partitions_and_their_owner_reads_them() {
    let shape = shape(6, 3_000, 1_763_994_600_000);
    let log = generate(&shape);
    let (_mock, kafka) = broker(&shape, &log);
    let sizes = |ps: &[i32]| ps.iter().map(|p| (*p, log.partitions[*p as usize].len())).collect::<BTreeMap<_, _>>();

    // The job's view before the topic grew: partitions 0..3. Worker 1 of 2 owns the odd ones.
    let known = TopicPartitions::new((0..3).map(|p| (p, 0)).collect());
    let mut source =
        KafkaSource::new(&kafka, &known, (1, 2, 2), Default::default(), JobMetrics::default()).expect("source");
    assert_eq!(source.partitions(), vec![1]);
    read_until(&mut source, &sizes(&[1]));
    assert!(source.added().is_empty(), "nothing new yet");

    refresh(&kafka.topic, &kafka.metadata().expect("metadata"), &known).expect("refresh");
    assert_eq!(known.starts().keys().copied().collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    assert_eq!(source.added(), vec![(3, 0), (5, 0)], "the owner picks up its new partitions");
    assert!(source.added().is_empty(), "once");
    read_until(&mut source, &sizes(&[3, 5]));
    refresh(&kafka.topic, &kafka.metadata().expect("metadata"), &known).expect("refresh again");
    assert!(source.added().is_empty(), "a refresh that finds nothing adds nothing");
}

fn job_config(kafka: &KafkaConfig, lake: &Path, drain: bool) -> JobConfig {
    let bars = BarsConfig::default();
    JobConfig {
        kafka: kafka.clone(),
        lake: lake.to_string_lossy().into_owned(),
        lake_options: Default::default(),
        time: TimeConfig::default(),
        read: ReadConfig::default(),
        sink: SinkConfig {
            epochs: dataflows::epoch::Epochs::every_commit(60_000),
            bar_widths: bars.widths.clone(),
            open_after_ms: 3 * 3_600_000,
            writer: WriterConfig::default(),
        },
        bars,
        cluster: ClusterConfig::local(2),
        drain,
        catalog: None,
    }
}

/// Runs the job live on `kafka` until it has read `records` and committed, then stops it as
/// SIGTERM does: what is complete is committed, the lake stays open for more.
fn run_then_stop(rt: &tokio::runtime::Runtime, kafka: &KafkaConfig, lake: &Path, records: u64) {
    let controls = job::Controls::default();
    let (metrics, pause) = (controls.metrics.clone(), Arc::clone(&controls.pause));
    let (cfg, handle) = (job_config(kafka, lake, false), rt.handle().clone());
    let job = std::thread::spawn(move || job::run(cfg, controls, handle));
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics.records.get() < records || metrics.commits.get() == 0 {
        assert!(!job.is_finished(), "the job stopped early");
        assert!(Instant::now() < deadline, "read {} of {records}, no commit", metrics.records.get());
        std::thread::park_timeout(Duration::from_millis(20));
    }
    pause.store(true, std::sync::atomic::Ordering::SeqCst);
    job.join().expect("job thread").expect("job");
}

#[test]
fn partitions_added_between_runs_are_read_completely_or_refused_if_trimmed() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // Ten minutes on four partitions, then the topic grows to eight and ten more minutes land.
    let (before, after) = (shape(4, 8_000, 1_763_994_600_000), shape(8, 8_000, 1_763_994_600_000 + 600_000));
    let (old, new) = (generate(&before), generate(&after));
    let grown = MemLog {
        partitions: (0..8)
            .map(|p| old.partitions.get(p).into_iter().flatten().chain(&new.partitions[p]).cloned().collect())
            .collect(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_a, kafka) = broker(&before, &old);
    run_then_stop(&rt, &kafka, dir.path(), old.len() as u64);
    assert!(common::commits(dir.path()) >= 1);

    // Retention trimmed partition 6 before the lake read it: one clear error. (The mock
    // broker keeps the newest 5 MiB of batches a partition: 8 MB of noise trims it.)
    let mut trimmed = grown.clone();
    let mut rng = fastrand::Rng::with_seed(6);
    let noise = (0..4_000).map(|_| dataflows::memlog::MemRecord {
        kind: None,
        timestamp: Some(1_763_994_600_000),
        payload: Some((0..1_000).map(|_| format!("{:02x}", rng.u8(..))).collect::<String>().into_bytes()),
    });
    trimmed.partitions[6].splice(0..0, noise);
    let (_c, kafka) = broker(&after, &trimmed);
    let (low, _) = kafka.metadata().and_then(|m| m.watermark(6)).expect("watermark");
    assert!(low > 0, "the mock broker trimmed partition 6");
    let err = job::run(job_config(&kafka, dir.path(), true), Default::default(), rt.handle().clone())
        .expect_err("a trimmed unread partition");
    assert!(matches!(err, JobError::Kafka(KafkaSetupError::Unread { partition: 6, .. })), "{err}");
    assert!(err.to_string().starts_with("partition 6 was never read by this lake"), "{err}");

    // The same topic intact: the new partitions are read from offset 0, the old ones resume.
    let (_b, kafka) = broker(&after, &grown);
    job::run(job_config(&kafka, dir.path(), true), Default::default(), rt.handle().clone()).expect("restart");
    let bars = BarsConfig::default();
    let want = expected(&grown, TimeConfig::default(), &bars);
    let landed = rt.block_on(read_lake(&Lake::open(&dir.path().to_string_lossy()).expect("lake"), &bars.widths));
    assert_eq!(landed.duplicates, 0, "records landed twice");
    assert_eq!(landed.trades, want.trades, "trades (and late flags) of the grown topic");
    let new_partitions: HashMap<i32, usize> =
        landed.trades.keys().filter(|(p, _)| *p >= 4).fold(HashMap::new(), |mut m, (p, _)| {
            *m.entry(*p).or_default() += 1;
            m
        });
    assert_eq!(new_partitions.len(), 4, "every new partition landed: {new_partitions:?}");
    diff_bars(&landed.bars, &want.bars).unwrap_or_else(|d| panic!("bars differ from the reference:\n{d}"));
}
