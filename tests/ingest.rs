//! Ingest under faults: the simulator drops connections, stalls, sends error frames and goes
//! down, the broker goes down and comes back; every trade the simulator sent must reach Kafka
//! exactly once, every interval the feed was lost must be a gap record per symbol, and an
//! error frame must end ingest with its message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::value::RawValue;
use stockflow::finnhub::{Frame, trade_head};
use stockflow::ingest::{self, IngestConfig, IngestError, IngestStats};
use stockflow::kafka::KafkaConfig;
use stockflow::simulate::{ERROR_MESSAGE, Faults, MarketConfig, Outage, SimulateConfig, serve, universe};

mod common;

const SYMBOLS: usize = 30;

struct Rig {
    rt: tokio::runtime::Runtime,
    mock: MockCluster<'static, DefaultProducerContext>,
    kafka: KafkaConfig,
}

fn rig(partitions: i32) -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("trades", partitions, 1).expect("topic");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    Rig { rt, mock, kafka }
}

type Running = (
    tokio::task::JoinHandle<Result<IngestStats, IngestError>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    Arc<Mutex<Vec<String>>>,
);

/// Starts a simulator with `faults` and ingest against it.
fn start(rig: &Rig, total: u64, rate: Option<f64>, faults: Faults, stale: Duration) -> Running {
    start_with(rig, total, rate, faults, stale, |_, _| {})
}

/// As `start`, after `setup` had its say on both configurations.
fn start_with(
    rig: &Rig,
    total: u64,
    rate: Option<f64>,
    faults: Faults,
    stale: Duration,
    setup: impl FnOnce(&mut SimulateConfig, &mut IngestConfig),
) -> Running {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let listener = rig.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let market = MarketConfig { seed: 5, symbols: SYMBOLS, anomaly_rate: 0.01, ..Default::default() };
    let mut cfg = SimulateConfig {
        market,
        rate,
        total: Some(total),
        ping_every: Duration::from_millis(100),
        faults,
        sent: Some(Arc::clone(&sent)),
        replay: None,
    };
    let mut ingest_cfg = IngestConfig {
        stale_after: stale,
        backoff_max: Duration::from_millis(200),
        ..IngestConfig::new(url, universe(SYMBOLS), rig.kafka.clone())
    };
    setup(&mut cfg, &mut ingest_cfg);
    let server = rig.rt.spawn(serve(listener, cfg));
    (rig.rt.spawn(ingest::run(ingest_cfg)), server, sent)
}

/// Waits for ingest to end; returns its result and every frame the simulator sent.
fn finish(rig: &Rig, running: Running) -> (Result<IngestStats, IngestError>, Vec<String>) {
    let (ingest, server, sent) = running;
    let result = rig.rt.block_on(ingest).expect("ingest task");
    server.abort();
    let frames = sent.lock().map(|f| f.clone()).unwrap_or_default();
    (result, frames)
}

fn run(
    rig: &Rig,
    total: u64,
    rate: Option<f64>,
    faults: Faults,
    stale: Duration,
) -> (Result<IngestStats, IngestError>, Vec<String>) {
    let running = start(rig, total, rate, faults, stale);
    finish(rig, running)
}

/// The records a correct ingest makes of `frames`, as a multiset of payloads.
fn expected_records(frames: &[String]) -> HashMap<Vec<u8>, usize> {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
    }
    let mut out = HashMap::new();
    for text in frames {
        match serde_json::from_str::<Frame<'_>>(text) {
            Ok(frame) => frame.data.iter().for_each(|raw| *out.entry(raw.get().as_bytes().to_vec()).or_insert(0) += 1),
            Err(_) => *out.entry(text.as_bytes().to_vec()).or_insert(0) += 1,
        }
    }
    out
}

/// Every payload in the topic but gap records, as a multiset.
fn topic_records(kafka: &KafkaConfig, partitions: i32) -> HashMap<Vec<u8>, usize> {
    topic(kafka, partitions).records
}

/// A topic read back.
struct Topic {
    /// Every payload but gap records, as a multiset.
    records: HashMap<Vec<u8>, usize>,
    /// Gap records: partition, key, body.
    gaps: Vec<(i32, Vec<u8>, dataflows::gap::GapBody)>,
    /// The partition of each key's other records.
    partition_of: HashMap<Vec<u8>, i32>,
}

/// Reads the whole topic back.
fn topic(kafka: &KafkaConfig, partitions: i32) -> Topic {
    let ends = kafka.watermarks(partitions).expect("watermarks");
    let total: i64 = ends.values().map(|(lo, hi)| hi - lo).sum();
    let consumer: BaseConsumer = kafka.client_config().set("group.id", "check").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Topic { records: HashMap::new(), gaps: Vec::new(), partition_of: HashMap::new() };
    for _ in 0..total {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                let kind = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == dataflows::gap::KIND_HEADER)
                        .map(|h| h.value.unwrap_or_default().to_vec())
                });
                match kind {
                    Some(kind) => {
                        assert_eq!(kind, dataflows::gap::GAP_KIND, "the only kind ingest writes");
                        let body = dataflows::gap::parse_gap(m.payload(), None, 0).expect("a valid gap record");
                        out.gaps.push((m.partition(), m.key().unwrap_or_default().to_vec(), body));
                    }
                    None => {
                        *out.records.entry(m.payload().unwrap_or_default().to_vec()).or_insert(0) += 1;
                        if let Some(key) = m.key() {
                            out.partition_of.insert(key.to_vec(), m.partition());
                        }
                    }
                }
            }
            other => panic!("reading the topic back: {:?}", other.map(|r| r.map(|m| m.offset()))),
        }
    }
    out
}

fn assert_exactly_once(rig: &Rig, partitions: i32, frames: &[String], total: u64) {
    let want = expected_records(frames);
    assert_eq!(want.values().sum::<usize>() as u64, total, "the simulator sent {total} records");
    let got = topic_records(&rig.kafka, partitions);
    let missing: usize = want.iter().map(|(k, n)| n.saturating_sub(*got.get(k).unwrap_or(&0))).sum();
    let extra: usize = got.iter().map(|(k, n)| n.saturating_sub(*want.get(k).unwrap_or(&0))).sum();
    assert_eq!((missing, extra), (0, 0), "records missing / duplicated in Kafka");
}

#[test]
fn disconnects_and_stalls_lose_and_duplicate_nothing() {
    let rig = rig(3);
    let faults = Faults {
        disconnect_every: Some(3_000),
        stall_every: Some(7_000),
        stall_for: Duration::from_millis(1_500),
        ..Faults::default()
    };
    // The run's counters are served on a metrics endpoint too; a scrape must agree with them.
    let metrics = stockflow::metrics::IngestMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let server = stockflow::metrics::MetricsServer::start("127.0.0.1:0".parse().expect("addr"), registry)
        .expect("metrics endpoint");
    let running = start_with(&rig, 20_000, None, faults, Duration::from_millis(400), |_, ingest| {
        ingest.metrics = metrics.clone();
    });
    let (result, frames) = finish(&rig, running);
    let stats = result.expect("ingest");
    assert_eq!((stats.records - stats.gap_records, stats.delivered, stats.failed), (20_000, stats.records, 0));
    // Six forced disconnects at least, plus the stalls detected as stale connections.
    assert!(stats.reconnects >= 6, "{stats:?}");
    assert_exactly_once(&rig, 3, &frames, 20_000);
    // Each loss after the first trade is a gap unless the feed resumed where it stopped (the
    // simulated market pauses while disconnected): one record per symbol for each.
    assert!(stats.gaps <= stats.reconnects, "{stats:?}");
    assert_eq!(stats.gap_records, stats.gaps * SYMBOLS as u64);
    assert_eq!(topic(&rig.kafka, 3).gaps.len() as u64, stats.gap_records);
    let scraped = common::scrape(server.addr());
    for (name, value) in [
        ("stockflow_ingest_frames_total", stats.frames),
        ("stockflow_ingest_records_total", stats.records),
        ("stockflow_ingest_delivered_total", stats.delivered),
        ("stockflow_ingest_failed_total", stats.failed),
        ("stockflow_ingest_reconnects_total", stats.reconnects),
        ("stockflow_ingest_duplicate_frames_total", stats.duplicate_frames),
        ("stockflow_ingest_gaps_total", stats.gaps),
    ] {
        assert_eq!(scraped.get(name).copied(), Some(value as f64), "{name}");
    }
    assert!(scraped.contains_key("stockflow_ingest_queue_depth"));
}

#[test]
fn broker_outage_loses_nothing() {
    let rig = rig(2);
    rig.mock.broker_down(1).expect("broker down");
    // Paced so the outage spans the first part of the stream; the broker returns after 1s.
    let running = start(&rig, 10_000, Some(5_000.0), Faults::default(), Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    rig.mock.broker_up(1).expect("broker up");
    let (result, frames) = finish(&rig, running);
    let stats = result.expect("ingest");
    assert_eq!((stats.delivered, stats.failed, stats.gaps), (10_000, 0, 0), "the feed itself never broke");
    assert_exactly_once(&rig, 2, &frames, 10_000);
}

#[test]
fn error_frame_stops_ingest_with_its_message() {
    let rig = rig(1);
    let faults = Faults { error_after: Some(500), ..Faults::default() };
    let (result, _) = run(&rig, 10_000, None, faults, Duration::from_secs(30));
    match result {
        Err(IngestError::Server(msg)) => assert_eq!(msg, ERROR_MESSAGE),
        other => panic!("expected the server's error, got {other:?}"),
    }
}

#[test]
fn a_recorded_session_replays_to_the_same_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("capture.jsonl");
    let recording = rig(2);
    let path = capture.clone();
    let running = start_with(&recording, 5_000, None, Faults::default(), Duration::from_secs(30), |_, ingest| {
        ingest.record = Some(path);
    });
    let (result, frames) = finish(&recording, running);
    let stats = result.expect("recording ingest");
    let lines = std::fs::read_to_string(&capture).expect("capture").lines().count() as u64;
    assert_eq!(lines, stats.frames, "one capture line per received frame");

    let replaying = rig(2);
    let replay = stockflow::simulate::Replay::load(&capture, Some(50.0)).expect("load capture");
    let running = start_with(&replaying, 5_000, None, Faults::default(), Duration::from_secs(30), |sim, _| {
        sim.replay = Some(replay);
    });
    let (result, _) = finish(&replaying, running);
    assert_eq!(result.expect("replaying ingest").records, 5_000 + stats.gap_records);
    assert_eq!(topic_records(&replaying.kafka, 2), topic_records(&recording.kafka, 2));
    assert_exactly_once(&replaying, 2, &frames, 5_000);
}

/// The simulator sends every 7th data frame twice, byte for byte, across reconnects: ingest
/// counts each repeat, forwards it by default (Kafka holds every frame's records) and drops
/// it with `drop_duplicate_frames` (Kafka holds each trade once).
#[test]
fn repeated_frames_are_counted_and_dropped_only_when_asked() {
    for drop in [false, true] {
        let rig = rig(2);
        let faults = Faults { duplicate_every: Some(7), disconnect_every: Some(2_000), ..Faults::default() };
        let running = start_with(&rig, 10_000, None, faults, Duration::from_secs(30), |_, ingest| {
            ingest.drop_duplicate_frames = drop;
        });
        let (result, frames) = finish(&rig, running);
        let stats = result.expect("ingest");
        let repeats = frames.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(repeats > 50, "the simulator repeated {repeats} frames");
        assert_eq!(stats.duplicate_frames, repeats as u64, "drop: {drop}");
        assert!(stats.reconnects >= 4, "{stats:?}");
        if drop {
            let mut distinct = frames.clone();
            distinct.dedup();
            assert_eq!(distinct.len(), frames.len() - repeats);
            assert_exactly_once(&rig, 2, &distinct, 10_000);
        } else {
            let forwarded = expected_records(&frames).values().sum::<usize>() as u64;
            assert!(forwarded > 10_000);
            assert_eq!(stats.records - stats.gap_records, forwarded);
            assert_exactly_once(&rig, 2, &frames, forwarded);
        }
    }
}

/// Two outages of a minute of market time, each refusing the first reconnect: ingest writes
/// one gap per outage for every symbol, keyed by the symbol into its trades' partition and
/// ahead of the trades after it, spanning the market time no trade was sent in; every trade
/// still lands once.
#[test]
fn outages_become_one_gap_record_per_symbol_in_order_with_the_trades() {
    let rig = rig(3);
    let length = Duration::from_secs(60);
    let outages = vec![Outage { at: 3_000, length }, Outage { at: 7_000, length }];
    let faults = Faults { outages, ..Faults::default() };
    let running = start(&rig, 10_000, None, faults, Duration::from_secs(30));
    let (result, frames) = finish(&rig, running);
    let stats = result.expect("ingest");
    assert_eq!(stats.gaps, 2, "{stats:?}");
    assert_eq!(stats.gap_records, 2 * SYMBOLS as u64);
    assert!(stats.reconnects >= 3, "each outage closes the connection and refuses a reconnect: {stats:?}");
    assert_exactly_once(&rig, 3, &frames, 10_000);

    // Trade times the simulator sent, in order.
    let sent: Vec<i64> = frames
        .iter()
        .flat_map(|f| match Frame::parse(f) {
            Frame::Trades(data) => data.iter().filter_map(|raw| trade_head(raw).t).collect(),
            _ => Vec::new(),
        })
        .collect();
    let Topic { gaps, partition_of, .. } = topic(&rig.kafka, 3);
    let mut intervals: Vec<(i64, i64)> = gaps.iter().map(|(_, _, g)| (g.from, g.to)).collect();
    intervals.sort_unstable();
    intervals.dedup();
    assert_eq!(intervals.len(), 2, "every symbol's record of an outage has the same interval: {intervals:?}");
    for (from, to) in intervals {
        // The market time lost, give or take the market's disorder (trades up to 3 s behind
        // its clock) at either end.
        assert!((to - from - length.as_millis() as i64).abs() <= 4_000, "[{from}, {to})");
        let newest_before = sent.iter().copied().filter(|t| *t <= from).max();
        assert!(newest_before.is_some_and(|t| from - t < 1_000), "the gap starts at the last trade before it");
    }
    // One record per symbol per outage, in the partition of the symbol's trades.
    let mut per_symbol: HashMap<Vec<u8>, Vec<i32>> = HashMap::new();
    for (p, key, body) in &gaps {
        assert_eq!(key, body.s.as_bytes(), "keyed by the symbol");
        per_symbol.entry(key.clone()).or_default().push(*p);
    }
    assert_eq!(per_symbol.len(), SYMBOLS);
    for (symbol, partitions) in per_symbol {
        assert_eq!(partitions.len(), 2);
        if let Some(p) = partition_of.get(&symbol) {
            assert!(
                partitions.iter().all(|q| q == p),
                "{} gap records beside its trades",
                String::from_utf8_lossy(&symbol)
            );
        }
    }
}
