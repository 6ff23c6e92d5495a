//! Sustained simulator → ingest → Kafka (librdkafka's mock cluster) throughput, in trades/s:
//! the websocket, frame splitting, the bounded queue and the idempotent producer together.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdkafka::mocking::MockCluster;
use stockflow::ingest::{self, IngestConfig};
use stockflow::kafka::KafkaConfig;
use stockflow::simulate::{MarketConfig, SimulateConfig, serve, universe};

const RECORDS: u64 = 200_000;

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("ingest");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("simulator_to_mock_kafka", |b| {
        b.iter(|| {
            // A fresh broker and topic per run: the mock keeps only ~100k records a partition.
            let mock = MockCluster::new(1).expect("mock cluster");
            mock.create_topic("trades", 8, 1).expect("topic");
            let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
            let url = format!("ws://{}", listener.local_addr().expect("addr"));
            let sim = SimulateConfig {
                market: MarketConfig { symbols: 100, ..Default::default() },
                rate: None,
                total: Some(RECORDS),
                ping_every: Duration::from_secs(5),
                faults: Default::default(),
                sent: None,
                replay: None,
            };
            let server = rt.spawn(serve(listener, sim));
            let stats = rt.block_on(ingest::run(IngestConfig::new(url, universe(100), kafka))).expect("ingest");
            server.abort();
            assert_eq!(stats.delivered, RECORDS);
        })
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
