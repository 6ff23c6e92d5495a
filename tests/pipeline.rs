//! End to end through the embedded broker: simulator → ingest → Kafka (librdkafka's mock
//! cluster) → job → lake, checked against the sequential reference computed from the very
//! log that landed in Kafka.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, BooleanArray, Int32Array, Int64Array, StringArray};
use dataflows::TimeConfig;
use dataflows::memlog::{MemLog, MemRecord};
use dataflows::reference::{diff_bars, expected};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use stockflow::ingest::{self, IngestConfig};
use stockflow::job::{self, ClusterConfig, JobConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::lake::writer::WriterConfig;
use stockflow::lake::{Lake, Table, read};
use stockflow::simulate::{MarketConfig, SimulateConfig, serve, universe};
use stockflow::sink::SinkConfig;

/// Every record of the topic, per partition in offset order, as the job will see it.
fn read_topic(kafka: &KafkaConfig, partitions: i32) -> MemLog {
    let ends = kafka.watermarks(partitions).expect("watermarks");
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "test-reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut log = MemLog {
        partitions: vec![Vec::new(); partitions as usize],
    };
    let total: i64 = ends.values().map(|(lo, hi)| hi - lo).sum();
    let mut read = 0;
    while read < total {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                let records = &mut log.partitions[m.partition() as usize];
                assert_eq!(
                    records.len() as i64,
                    m.offset(),
                    "gap in partition {}",
                    m.partition()
                );
                records.push(MemRecord {
                    timestamp: m.timestamp().to_millis(),
                    payload: m.payload().map(<[u8]>::to_vec),
                });
                read += 1;
            }
            Some(Err(e)) => panic!("reading the topic back: {e}"),
            None => panic!("topic read stalled at {read} of {total}"),
        }
    }
    log
}

struct Landed {
    trades: BTreeMap<(i32, i64), bool>,
    quarantine: BTreeMap<(i32, i64), String>,
    bars: Vec<dataflows::Bar>,
    duplicates: usize,
}

async fn read_lake(lake: &Lake) -> Landed {
    let mut landed = Landed {
        trades: BTreeMap::new(),
        quarantine: BTreeMap::new(),
        bars: Vec::new(),
        duplicates: 0,
    };
    for batch in read::read_table(lake, &Table::Trades)
        .await
        .expect("trades")
    {
        let col = |n: &str| batch.column_by_name(n).expect(n).clone();
        let (p, o, late) = (col("kafka_partition"), col("kafka_offset"), col("late"));
        let p = p.as_any().downcast_ref::<Int32Array>().expect("partition");
        let o = o.as_any().downcast_ref::<Int64Array>().expect("offset");
        let late = late.as_any().downcast_ref::<BooleanArray>().expect("late");
        for i in 0..batch.num_rows() {
            if landed
                .trades
                .insert((p.value(i), o.value(i)), late.value(i))
                .is_some()
            {
                landed.duplicates += 1;
            }
        }
    }
    for batch in read::read_table(lake, &Table::Quarantine)
        .await
        .expect("quarantine")
    {
        let col = |n: &str| batch.column_by_name(n).expect(n).clone();
        let (p, o, r) = (col("kafka_partition"), col("kafka_offset"), col("reason"));
        let p = p.as_any().downcast_ref::<Int32Array>().expect("partition");
        let o = o.as_any().downcast_ref::<Int64Array>().expect("offset");
        let r = r.as_any().downcast_ref::<StringArray>().expect("reason");
        for i in 0..batch.num_rows() {
            if landed
                .quarantine
                .insert((p.value(i), o.value(i)), r.value(i).to_owned())
                .is_some()
            {
                landed.duplicates += 1;
            }
        }
    }
    let bars = read::read_table(lake, &Table::Bars(60_000))
        .await
        .expect("bars");
    landed.bars = read::bars(&bars).expect("bars rows");
    landed
}

fn run_pipeline(seed: u64, records: u64, partitions: i32, workers: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        topic: "trades".into(),
        properties: vec![],
    };
    mock.create_topic(&kafka.topic, partitions, 1)
        .expect("topic");

    // Simulator → ingest → Kafka, with plenty of anomalies and late trades.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let market = MarketConfig {
        seed,
        symbols: 40,
        anomaly_rate: 0.02,
        late_rate: 0.02,
        market_rate: 200.0,
        ..Default::default()
    };
    let server = rt.spawn(serve(
        listener,
        SimulateConfig {
            market,
            rate: None,
            total: Some(records),
            ping_every: Duration::from_secs(1),
        },
    ));
    let stats = rt
        .block_on(ingest::run(IngestConfig {
            url,
            symbols: universe(40),
            kafka: kafka.clone(),
        }))
        .expect("ingest");
    server.abort();
    assert_eq!(
        stats.records, records,
        "ingest forwards one record per trade object"
    );
    assert_eq!(stats.delivered, records);

    let log = read_topic(&kafka, partitions);
    assert_eq!(log.len() as u64, records);
    let want = expected(&log, TimeConfig::default());

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = JobConfig {
        kafka,
        lake: dir.path().to_string_lossy().into_owned(),
        time: TimeConfig::default(),
        sink: SinkConfig {
            commit_interval_ms: 60_000,
            bar_width_ms: 60_000,
            writer: WriterConfig {
                rows_per_file: 5_000,
                ..Default::default()
            },
        },
        cluster: ClusterConfig::local(workers),
        drain: true,
    };
    let report = job::run(cfg, Arc::default(), rt.handle().clone()).expect("job");
    assert!(report.written.files > 0);

    let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
    let landed = rt.block_on(read_lake(&lake));
    assert_eq!(landed.duplicates, 0, "records landed twice");
    assert_eq!(
        landed.trades, want.trades,
        "trades (and late flags) differ from the log"
    );
    let reasons: BTreeMap<_, _> = want
        .quarantine
        .iter()
        .map(|(k, r)| (*k, r.as_str().to_owned()))
        .collect();
    assert_eq!(
        landed.quarantine, reasons,
        "quarantine differs from the log"
    );
    assert!(
        !want.quarantine.is_empty() && want.trades.values().any(|&late| late),
        "the log exercises anomalies and lateness"
    );
    if let Err(diff) = diff_bars(&landed.bars, &want.bars) {
        panic!("lake bars differ from the sequential reference:\n{diff}");
    }
    drop(mock);
}

#[test]
fn lake_matches_reference_through_mock_kafka_1w() {
    run_pipeline(7, 40_000, 3, 1);
}

#[test]
fn lake_matches_reference_through_mock_kafka_2w() {
    run_pipeline(11, 40_000, 4, 2);
}
