//! A seeded trades topic of a production shape: many partitions, Zipf-skewed symbols, large
//! compressed batches, a partition running ahead, a bad tick. Tests, benches and
//! `stockflow dev-kafka --fill` use it to reproduce what real clusters hold.
//!
//! The log is generated first (a [`MemLog`], a pure function of the [`TopicShape`]) and then
//! produced record by record to the partition the shape assigns, with its Kafka timestamp, so
//! the topic holds exactly that log and a test can compute the expected lake from it.

use std::time::Duration;

use dataflows::memlog::{MemLog, MemRecord};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::simulate::market::DEFAULT_START_MS;
use crate::simulate::universe;

/// How symbols are spread over the records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keys {
    /// Every symbol equally likely.
    Uniform,
    /// Symbol of rank `k` (from 1) with probability proportional to `1 / k^s`.
    Zipf(f64),
}

/// The shape of a generated topic.
#[derive(Clone, Debug)]
pub struct TopicShape {
    /// Seed of every draw.
    pub seed: u64,
    /// Records in the whole topic.
    pub records: usize,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Distinct symbols.
    pub symbols: usize,
    /// Symbol popularity.
    pub keys: Keys,
    /// Event time of the first record, ms since the epoch.
    pub start_ms: i64,
    /// Event time the records span, evenly in record order.
    pub span_ms: i64,
    /// Share of trades dated back by up to ten minutes (late, some beyond the lateness).
    pub late_rate: f64,
    /// Partitions whose event times (and Kafka timestamps) run ahead by this much.
    pub ahead: Vec<(i32, i64)>,
    /// Record indices whose trade is dated 2099-01-01 (a bad tick; Kafka timestamp unchanged).
    pub bad_ticks: Vec<usize>,
    /// Kafka timestamp of every record (`None`: its event time plus 30 ms, as if ingest
    /// received each trade as it happened).
    pub stamped_at: Option<i64>,
    /// Producer compression (`none`, `gzip`, `lz4`, `zstd`, `snappy`).
    pub compression: String,
    /// Producer `batch.size` in bytes: large values make each fetch one big batch.
    pub batch_bytes: usize,
    /// Producer `linger.ms`.
    pub linger_ms: u64,
}

impl Default for TopicShape {
    fn default() -> Self {
        TopicShape {
            seed: 1,
            records: 100_000,
            partitions: 4,
            symbols: 500,
            keys: Keys::Zipf(1.1),
            start_ms: DEFAULT_START_MS,
            span_ms: 3_600_000,
            late_rate: 0.01,
            ahead: Vec::new(),
            bad_ticks: Vec::new(),
            stamped_at: None,
            compression: "gzip".into(),
            batch_bytes: 1_000_000,
            linger_ms: 50,
        }
    }
}

/// 2099-01-01T00:00:00Z: the bad tick's event time.
pub const BAD_TICK_MS: i64 = 4_070_908_800_000;

/// The partition a symbol's records go to: FNV-1a of the symbol, so it is the same in every
/// process and release (Kafka's own partitioners differ between clients).
pub fn partition_of(symbol: &str, partitions: i32) -> i32 {
    let hash = symbol.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % partitions.max(1) as u64) as i32
}

/// The log the shape describes: per partition, in offset order.
pub fn generate(shape: &TopicShape) -> MemLog {
    let mut rng = fastrand::Rng::with_seed(shape.seed);
    let symbols = universe(shape.symbols.max(1));
    let cdf = popularity(shape.keys, symbols.len());
    let mut prices: Vec<f64> = (0..symbols.len()).map(|i| 20.0 + (i % 97) as f64 * 3.0).collect();
    let mut log = MemLog { partitions: vec![Vec::new(); shape.partitions.max(1) as usize] };
    let records = shape.records.max(1);
    for i in 0..shape.records {
        let draw = rng.f64();
        let k = cdf.partition_point(|&c| c < draw).min(symbols.len() - 1);
        let symbol = &symbols[k];
        let p = partition_of(symbol, shape.partitions);
        let ahead = shape.ahead.iter().find(|(q, _)| *q == p).map_or(0, |(_, ms)| *ms);
        let now = shape.start_ms + (shape.span_ms as i128 * i as i128 / records as i128) as i64 + ahead;
        let mut t = now - rng.i64(0..50);
        if rng.f64() < shape.late_rate {
            t -= rng.i64(1_000..600_000);
        }
        if shape.bad_ticks.contains(&i) {
            t = BAD_TICK_MS;
        }
        prices[k] = (prices[k] * (1.0 + (rng.f64() - 0.5) * 0.002)).max(0.01);
        let volume = rng.u32(1..500);
        let payload = format!(r#"{{"s":"{symbol}","p":{:.2},"t":{t},"v":{volume},"c":["1","12"]}}"#, prices[k]);
        let timestamp = Some(shape.stamped_at.unwrap_or(now + 30));
        log.partitions[p as usize].push(MemRecord { kind: None, timestamp, payload: Some(payload.into_bytes()) });
    }
    log
}

/// The cumulative distribution of symbol ranks.
fn popularity(keys: Keys, n: usize) -> Vec<f64> {
    let weights: Vec<f64> = match keys {
        Keys::Uniform => vec![1.0; n],
        Keys::Zipf(s) => (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect(),
    };
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect()
}

/// Produces `log` to `kafka`'s topic (which must have as many partitions), each record to its
/// partition with its timestamp and its symbol as key, in the shape's batching and compression.
pub fn produce(kafka: &KafkaConfig, shape: &TopicShape, log: &MemLog) -> Result<(), KafkaSetupError> {
    let producer: BaseProducer = kafka
        .client_config()
        .set("compression.type", &shape.compression)
        .set("batch.size", shape.batch_bytes.to_string())
        .set("linger.ms", shape.linger_ms.to_string())
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.max.bytes", (shape.batch_bytes + 100_000).max(1_000_000).to_string())
        .set("enable.idempotence", "false")
        .create()
        .map_err(KafkaSetupError::Config)?;
    let unreachable = |source| KafkaSetupError::Unreachable { brokers: kafka.brokers.clone(), source };
    // Round-robin over partitions, so every partition's batches fill at once as in a live topic.
    let mut cursors = vec![0usize; log.partitions.len()];
    let mut left = log.len();
    while left > 0 {
        for (p, records) in log.partitions.iter().enumerate() {
            let end = (cursors[p] + 64).min(records.len());
            for r in &records[cursors[p]..end] {
                let key = r.payload.as_deref().and_then(symbol_of).unwrap_or_default();
                let mut record = BaseRecord::<[u8], [u8]>::to(&kafka.topic).partition(p as i32).key(key);
                if let Some(payload) = &r.payload {
                    record = record.payload(payload);
                }
                if let Some(ts) = r.timestamp {
                    record = record.timestamp(ts);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            back,
                        )) => {
                            record = back;
                            producer.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => return Err(unreachable(e)),
                    }
                }
            }
            left -= end - cursors[p];
            cursors[p] = end;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300)).map_err(unreachable)
}

/// The `"s"` value of a generated payload (the record key), without parsing JSON.
fn symbol_of(payload: &[u8]) -> Option<&[u8]> {
    let rest = payload.strip_prefix(br#"{"s":""#)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_a_function_of_the_shape() {
        let shape = TopicShape { records: 5_000, partitions: 7, ..Default::default() };
        assert_eq!(generate(&shape), generate(&shape));
        let other = generate(&TopicShape { seed: 2, ..shape.clone() });
        assert_ne!(generate(&shape), other);
    }

    #[test]
    fn zipf_keys_are_skewed_and_partitions_ordered_by_time() {
        let shape = TopicShape { records: 20_000, partitions: 8, late_rate: 0.0, ..Default::default() };
        let log = generate(&shape);
        assert_eq!(log.len(), 20_000);
        let sizes: Vec<usize> = log.partitions.iter().map(Vec::len).collect();
        let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        assert!(max > 2 * min, "skewed partitions: {sizes:?}");
        for records in &log.partitions {
            let stamps: Vec<i64> = records.iter().filter_map(|r| r.timestamp).collect();
            assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "Kafka timestamps rise within a partition");
        }
        let uniform = generate(&TopicShape { keys: Keys::Uniform, ..shape });
        let sizes: Vec<usize> = uniform.partitions.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|s| *s > 1_000), "uniform keys spread: {sizes:?}");
    }

    #[test]
    fn a_bad_tick_is_dated_2099_and_an_ahead_partition_leads() {
        let shape = TopicShape {
            records: 2_000,
            partitions: 2,
            late_rate: 0.0,
            bad_ticks: vec![1_000],
            ahead: vec![(1, 600_000)],
            ..Default::default()
        };
        let log = generate(&shape);
        let payloads: Vec<String> = log
            .partitions
            .iter()
            .flatten()
            .filter_map(|r| r.payload.as_ref().map(|p| String::from_utf8_lossy(p).into_owned()))
            .collect();
        assert_eq!(payloads.iter().filter(|p| p.contains(&format!("\"t\":{BAD_TICK_MS}"))).count(), 1);
        let first = |p: usize| log.partitions[p].first().and_then(|r| r.timestamp).unwrap_or_default();
        assert!(first(1) - first(0) >= 590_000, "partition 1 starts ten minutes ahead");
    }
}
