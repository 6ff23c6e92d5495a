//! End to end through the embedded broker: simulator (with two feed outages and repeated
//! frames) → ingest → Kafka (librdkafka's mock cluster) → job → lake, checked against the
//! sequential reference computed from the very log that landed in Kafka, gaps and gap flags
//! included, and across cluster shapes: `-w 1`, `-w 3` and two processes (`-n 2`) must land
//! the same final bars and the same trades.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dataflows::TimeConfig;
use dataflows::bars::BarsConfig;
use dataflows::memlog::{MemLog, MemRecord};
use dataflows::reference::{diff_bars, expected};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use stockflow::ingest::{self, IngestConfig};
use stockflow::job::{self, ClusterConfig, JobConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::lake::Lake;
use stockflow::lake::writer::WriterConfig;
use stockflow::simulate::{Faults, MarketConfig, Outage, SimulateConfig, serve, universe};
use stockflow::sink::SinkConfig;

mod common;
use common::{Landed, read_lake};

/// Every record of the topic, per partition in offset order, as the job will see it.
fn read_topic(kafka: &KafkaConfig, partitions: i32) -> MemLog {
    let ends = kafka.watermarks(partitions).expect("watermarks");
    let consumer: BaseConsumer = kafka.client_config().set("group.id", "test-reader").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut log = MemLog { partitions: vec![Vec::new(); partitions as usize] };
    let total: i64 = ends.values().map(|(lo, hi)| hi - lo).sum();
    let mut read = 0;
    while read < total {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                let records = &mut log.partitions[m.partition() as usize];
                assert_eq!(records.len() as i64, m.offset(), "gap in partition {}", m.partition());
                let kind = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == dataflows::gap::KIND_HEADER)
                        .map(|h| h.value.unwrap_or_default().to_vec())
                });
                let (timestamp, payload) = (m.timestamp().to_millis(), m.payload().map(<[u8]>::to_vec));
                records.push(MemRecord { kind, timestamp, payload });
                read += 1;
            }
            Some(Err(e)) => panic!("reading the topic back: {e}"),
            None => panic!("topic read stalled at {read} of {total}"),
        }
    }
    log
}

const WIDTHS: [u64; 2] = [60_000, 300_000];
const HORIZON_MS: u64 = 1_800_000;

fn bars_config() -> BarsConfig {
    BarsConfig { widths: WIDTHS.to_vec(), horizon_ms: HORIZON_MS }
}

/// A mock cluster whose topic holds a seeded log (with anomalies and late trades) put there by
/// the simulator and ingest, and that log as the job will read it.
struct Fixture {
    rt: tokio::runtime::Runtime,
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    kafka: KafkaConfig,
    log: MemLog,
}

fn fixture(seed: u64, records: u64, partitions: i32) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, partitions, 1).expect("topic");

    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let market = MarketConfig {
        seed,
        symbols: 40,
        anomaly_rate: 0.02,
        late_rate: 0.02,
        market_rate: 200.0,
        ..Default::default()
    };
    let sim = SimulateConfig {
        market,
        rate: None,
        total: Some(records),
        ping_every: Duration::from_secs(1),
        faults: Faults {
            // Two outages of a few seconds of market time; every 50th frame repeated (and
            // forwarded: ingest counts it, the job sees its trades twice, as Kafka holds them).
            outages: vec![
                Outage { at: records / 3, length: Duration::from_secs(8) },
                Outage { at: 2 * records / 3, length: Duration::from_secs(5) },
            ],
            duplicate_every: Some(50),
            ..Faults::default()
        },
        sent: None,
        replay: None,
    };
    let server = rt.spawn(serve(listener, sim));
    let stats = rt.block_on(ingest::run(IngestConfig::new(url, universe(40), kafka.clone()))).expect("ingest");
    server.abort();
    assert_eq!((stats.gaps, stats.gap_records), (2, 80), "one gap record per symbol per outage: {stats:?}");
    assert!(stats.duplicate_frames > 0, "{stats:?}");
    assert_eq!(stats.delivered, stats.records);

    let log = read_topic(&kafka, partitions);
    assert_eq!(log.len() as u64, stats.records);
    Fixture { rt, mock, kafka, log }
}

/// Checks a lake against the reference of the fixture's log.
fn check_lake(f: &Fixture, dir: &Path) -> Landed {
    let want = expected(&f.log, TimeConfig::default(), &bars_config());
    let lake = Lake::open(&dir.to_string_lossy()).expect("lake");
    let landed = f.rt.block_on(read_lake(&lake, &WIDTHS));
    assert_eq!(landed.duplicates, 0, "records landed twice");
    assert_eq!(landed.trades, want.trades, "trades (and late flags) differ from the log");
    let reasons: BTreeMap<_, _> = want.quarantine.iter().map(|(k, r)| (*k, r.as_str().to_owned())).collect();
    assert_eq!(landed.quarantine, reasons, "quarantine differs from the log");
    assert_eq!(landed.gaps, want.gaps, "gaps differ from the log");
    assert_eq!(want.gaps.len(), 80, "every interval once per symbol");
    assert!(want.bars.values().any(|b| b.gap_ms > 0), "the outages flag bars");
    assert!(want.trades.values().any(|&late| late), "the log exercises lateness");
    if let Err(diff) = diff_bars(&landed.bars, &want.bars) {
        panic!("lake bars differ from the sequential reference:\n{diff}");
    }
    landed
}

/// The in-process job on the fixture's topic, writing `lake`.
fn job_config(f: &Fixture, lake: &Path, workers: usize, drain: bool) -> JobConfig {
    JobConfig {
        kafka: f.kafka.clone(),
        lake: lake.to_string_lossy().into_owned(),
        lake_options: Default::default(),
        time: TimeConfig::default(),
        bars: bars_config(),
        read: Default::default(),
        sink: SinkConfig {
            epochs: dataflows::epoch::Epochs::every_commit(60_000),
            bar_widths: WIDTHS.to_vec(),
            open_after_ms: 3 * 3_600_000,
            writer: WriterConfig { rows_per_file: 5_000, ..Default::default() },
        },
        cluster: ClusterConfig::local(workers),
        drain,
        catalog: None,
    }
}

fn run_in_process(seed: u64, records: u64, partitions: i32, workers: usize) {
    let f = fixture(seed, records, partitions);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = job_config(&f, dir.path(), workers, true);
    let report = job::run(cfg, job::Controls::default(), f.rt.handle().clone()).expect("job");
    assert!(report.written.files > 0);
    let landed = check_lake(&f, dir.path());
    assert!(landed.bars.iter().any(|(_, b)| b.revision > 0), "late trades within the horizon revise bars");
    drop(f.mock);
}

#[test]
fn lake_matches_reference_through_mock_kafka_1w() {
    run_in_process(7, 40_000, 3, 1);
}

#[test]
fn lake_matches_reference_through_mock_kafka_2w() {
    run_in_process(11, 40_000, 4, 2);
}

/// The `/metrics` endpoint while the job runs and after it stopped: every listed series is
/// there, and its values are the run's own counts (records read, rows per table and reason,
/// late trades, revisions, files and bytes, commits, consumer lag).
#[test]
fn metrics_report_the_run() {
    use stockflow::metrics::MetricsServer;

    let f = fixture(13, 20_000, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let controls = job::Controls::default();
    let mut registry = prometheus_client::registry::Registry::default();
    controls.metrics.register(&mut registry);
    let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), registry).expect("metrics endpoint");
    let stop = std::sync::Arc::clone(&controls.stop);
    let (cfg, handle) = (job_config(&f, dir.path(), 2, false), f.rt.handle().clone());
    let job = std::thread::spawn(move || job::run(cfg, controls, handle));

    // While running (no stop offsets yet, so the job keeps going): wait until it has read the
    // whole topic, published zero lag for every partition and committed at least once.
    let total = f.log.len() as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let running = loop {
        let m = common::scrape(server.addr());
        let caught_up = (0..3).all(|p| m.get(&format!("stockflow_consumer_lag{{partition=\"{p}\"}}")) == Some(&0.0));
        if m.get("stockflow_records_consumed_total") == Some(&total)
            && caught_up
            && m.get("stockflow_commits_total").is_some_and(|c| *c >= 1.0)
        {
            break m;
        }
        assert!(!job.is_finished(), "the job stopped before it was told to");
        assert!(std::time::Instant::now() < deadline, "the job did not catch up; last scrape {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(running["stockflow_frontier_lag_seconds"] > 0.0, "simulated trades are in the past");
    assert!(running["stockflow_trades_total"] > 0.0);

    stop.set(f.kafka.end_offsets(3).expect("ends")).expect("stop offsets");
    let report = job.join().expect("job thread").expect("job");
    let m = common::scrape(server.addr());
    let landed = check_lake(&f, dir.path());
    let count = |name: &str| m.get(name).copied().unwrap_or_else(|| panic!("no {name} in {m:?}")) as u64;

    assert_eq!(count("stockflow_records_consumed_total"), f.log.len() as u64);
    assert_eq!(count("stockflow_trades_total"), landed.trades.len() as u64);
    assert_eq!(count("stockflow_late_trades_total"), landed.trades.values().filter(|l| **l).count() as u64);
    assert_eq!(count("stockflow_gaps_total"), landed.gaps.len() as u64);
    let mut reasons = BTreeMap::<String, u64>::new();
    for reason in landed.quarantine.values() {
        *reasons.entry(reason.clone()).or_default() += 1;
    }
    let scraped: BTreeMap<String, u64> = m
        .iter()
        .filter_map(|(k, v)| {
            let reason = k.strip_prefix("stockflow_quarantined_total{reason=\"")?.strip_suffix("\"}")?;
            Some((reason.to_owned(), *v as u64))
        })
        .collect();
    assert_eq!(scraped, reasons, "quarantine by reason");
    for (i, table) in ["bars_1m", "bars_5m"].iter().enumerate() {
        let rows = landed.bars.iter().filter(|(w, _)| *w as usize == i).count() as u64;
        assert_eq!(count(&format!("stockflow_bars_total{{table=\"{table}\"}}")), rows, "{table} rows");
    }
    assert_eq!(
        count("stockflow_bar_revisions_total"),
        landed.bars.iter().filter(|(_, b)| b.revision > 0).count() as u64
    );

    // Files and bytes per table, as they lie in the lake.
    for table in ["trades", "quarantine", "bars_1m", "bars_5m"] {
        let (mut files, mut bytes) = (0u64, 0u64);
        let mut stack = vec![dir.path().join(table)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("table folder").flatten() {
                let meta = e.metadata().expect("metadata");
                if meta.is_dir() {
                    stack.push(e.path());
                } else if e.path().extension().is_some_and(|x| x == "parquet") {
                    files += 1;
                    bytes += meta.len();
                }
            }
        }
        let (written, written_bytes) = (
            count(&format!("stockflow_files_written_total{{table=\"{table}\"}}")),
            count(&format!("stockflow_bytes_written_total{{table=\"{table}\"}}")),
        );
        if table.starts_with("bars") {
            // An hour's bar file is written again at each publish; the lake keeps the newest.
            assert!(
                written >= files && written_bytes >= bytes,
                "{table}: {written} files written, {files} in the lake"
            );
        } else {
            assert_eq!(written, files, "{table} files");
            assert_eq!(written_bytes, bytes, "{table} bytes");
        }
    }
    // The log also holds the run's claim of the lake, which commits nothing.
    let commits = common::commits(dir.path()) as u64;
    assert_eq!(count("stockflow_commits_total"), commits);
    assert_eq!(report.commits, commits);
    assert_eq!(count("stockflow_commit_duration_seconds_count"), commits);
    drop(server);
    drop(f.mock);
}

/// Runs the binary's job with `--drain` on the fixture's topic into `lake`.
fn job_command(f: &Fixture, lake: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stockflow"));
    cmd.args(["--brokers", &f.kafka.brokers, "--topic", &f.kafka.topic, "--drain", "--bars", "1m,5m"])
        .args(["--revision-horizon", "30m", "--lake"])
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn wait_ok(child: Child, what: &str) {
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn sorted_bars(landed: &Landed) -> Vec<(u8, String, i64, u32, u64, u64)> {
    let mut v: Vec<_> = landed
        .bars
        .iter()
        .map(|(w, b)| (*w, b.symbol.to_string(), b.window_start, b.revision, b.trade_count, b.gap_ms))
        .collect();
    v.sort();
    v
}

#[test]
fn same_lake_from_one_worker_three_workers_and_two_processes() {
    let f = fixture(23, 30_000, 6);
    let (w1, w3, n2) =
        (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));

    wait_ok(job_command(&f, w1.path(), &["-w", "1"]).spawn().expect("spawn"), "-w 1");
    wait_ok(job_command(&f, w3.path(), &["-w", "3"]).spawn().expect("spawn"), "-w 3");

    // Two processes of two workers each, talking over loopback.
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port())
        .collect();
    let hosts = n2.path().join("hosts.txt");
    std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).expect("hosts");
    let lake = n2.path().join("lake");
    let hosts = hosts.to_string_lossy().into_owned();
    let procs: Vec<Child> = (0..2)
        .map(|p| {
            let p = p.to_string();
            job_command(&f, &lake, &["-w", "2", "-n", "2", "-p", &p, "-h", &hosts]).spawn().expect("spawn")
        })
        .collect();
    for (i, child) in procs.into_iter().enumerate() {
        wait_ok(child, &format!("process {i} of -n 2"));
    }

    let one = check_lake(&f, w1.path());
    let three = check_lake(&f, w3.path());
    let two_procs = check_lake(&f, &lake);
    // Beyond matching the reference, the revision history itself agrees (no idle timeout fired).
    assert_eq!(sorted_bars(&one), sorted_bars(&three), "-w 1 and -w 3 wrote different bar rows");
    assert_eq!(sorted_bars(&one), sorted_bars(&two_procs), "-w 1 and -n 2 wrote different bar rows");
    assert_eq!(one.trades, two_procs.trades);
    drop(f.mock);
}

/// Broker faults while the job runs: failed fetches (leader moved, timeouts) from the start,
/// then the broker down for a while and more records after it returns. The job rides them
/// out and the lake still equals the reference of the whole log.
#[test]
fn broker_faults_lose_nothing() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let f = fixture(31, 20_000, 3);
    let errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
    ];
    f.mock.request_errors(RDKafkaApiKey::Fetch, &errors.repeat(4));

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = job_config(&f, dir.path(), 2, false);
    let controls = job::Controls::default();
    let stop = controls.stop.clone();
    let handle = f.rt.handle().clone();
    let job = std::thread::spawn(move || job::run(cfg, controls, handle));

    // Once the job has committed through the failed fetches, take the broker away.
    let waiting = std::time::Instant::now();
    while common::commits(dir.path()) == 0 {
        assert!(!job.is_finished(), "the job stopped early");
        assert!(waiting.elapsed() < Duration::from_secs(120), "no commit through the fetch errors");
        std::thread::sleep(Duration::from_millis(20));
    }
    f.mock.broker_down(1).expect("broker down");
    std::thread::sleep(Duration::from_millis(1_500)); // the outage itself
    f.mock.broker_up(1).expect("broker up");

    // Records after the outage: the first 3,000 payloads again, now very late.
    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &f.kafka.brokers).create().expect("producer");
    for (p, records) in f.log.partitions.iter().enumerate() {
        for r in records.iter().take(1_000) {
            let mut record = BaseRecord::<(), [u8]>::to(&f.kafka.topic).partition(p as i32);
            if let Some(payload) = &r.payload {
                record = record.payload(payload);
            }
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let log = read_topic(&f.kafka, 3);
    assert_eq!(log.len(), f.log.len() + 3_000);
    let _ = stop.set(f.kafka.end_offsets(3).expect("ends"));
    let report = job.join().expect("job thread").expect("job rode out the faults");
    assert!(report.commits >= 2, "commits before and after the outage: {}", report.commits);
    let whole = Fixture { log, ..f };
    check_lake(&whole, dir.path());
    drop(whole.mock);
}
