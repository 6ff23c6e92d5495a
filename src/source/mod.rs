//! The Kafka source: a worker's share of the trades topic as a [`dataflows::RecordSource`].
//!
//! Partitions are assigned statically (`partition % peers == index`), never through a
//! consumer group: assignment must be a pure function of the cluster shape for results to be,
//! and a group join costs seconds. Offsets are never auto-committed; where the job stands is
//! decided by the dataflow's own frontier.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dataflows::{RawRecord, RecordSource, SourcePoll};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::metrics::JobMetrics;

/// End offsets (exclusive) per partition at which the source stops. Unset: it never stops.
/// `--drain` sets it at start; the demo sets it once ingest has flushed.
pub type StopAt = Arc<OnceLock<HashMap<i32, i64>>>;

/// Errors reading the topic.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Consumer creation or assignment failed.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The broker reported an error the consumer cannot ride out.
    #[error("reading partition {partition:?} of Kafka: {source}")]
    Consume {
        /// The partition, when known.
        partition: Option<i32>,
        /// librdkafka's error.
        source: KafkaError,
    },
}

/// The consumer's context: keeps the high watermarks librdkafka reports in its statistics
/// (every second, on the polling thread), so consumer lag costs no broker round trip.
#[derive(Default)]
struct SourceContext {
    highs: std::sync::Mutex<HashMap<i32, i64>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let mut highs = self.highs.lock().unwrap_or_else(|e| e.into_inner());
        for topic in statistics.topics.values() {
            for (&p, partition) in &topic.partitions {
                // The last stable offset under read_committed; the high watermark otherwise.
                let end = if partition.ls_offset >= 0 { partition.ls_offset } else { partition.hi_offset };
                if p >= 0 && end >= 0 {
                    highs.insert(p, end);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// One worker's Kafka consumer.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    /// Next offset to deliver per owned partition.
    next: HashMap<i32, i64>,
    stop: StopAt,
    metrics: JobMetrics,
    /// When the consumer lag was last published.
    lag_published: std::time::Instant,
}

impl KafkaSource {
    /// Assigns partitions `p % peers == index` of `partitions`, each from `start` (or the
    /// beginning of what the broker holds; the job passes the low watermark then, so the
    /// offsets it reports are real ones).
    pub fn new(
        cfg: &KafkaConfig,
        partitions: i32,
        index: usize,
        peers: usize,
        start: &HashMap<i32, i64>,
        stop: StopAt,
        metrics: JobMetrics,
    ) -> Result<Self, SourceError> {
        let mine: Vec<i32> = (0..partitions).filter(|p| *p as usize % peers == index).collect();
        let consumer: BaseConsumer<SourceContext> = cfg
            .client_config()
            .set("group.id", "stockflow")
            .set("client.id", format!("stockflow-w{index}"))
            .set("statistics.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Records that vanished before we read them are a loss to report, not to skip.
            .set("auto.offset.reset", "error")
            // Once the prefetch queue is full, librdkafka waits this long before fetching that
            // partition again (default 1 s). A worker drains a full queue in far less and would
            // then sit idle for the rest of the second: a short backoff keeps the queue fed.
            .set("fetch.queue.backoff.ms", "20")
            .create_with_context(SourceContext::default())
            .map_err(KafkaSetupError::Config)?;
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        for &p in &mine {
            let offset = start.get(&p).map_or(Offset::Beginning, |&o| Offset::Offset(o));
            assignment
                .add_partition_offset(&cfg.topic, p, offset)
                .map_err(|source| SourceError::Consume { partition: Some(p), source })?;
            next.insert(p, start.get(&p).copied().unwrap_or(0));
        }
        if !mine.is_empty() {
            consumer.assign(&assignment).map_err(|source| SourceError::Consume { partition: None, source })?;
        }
        let lag_published = std::time::Instant::now();
        Ok(KafkaSource { consumer, next, stop, metrics, lag_published })
    }

    /// Publishes each partition's consumer lag (its end as of the last statistics minus the
    /// next offset to read), at most once a second.
    fn publish_lag(&mut self) {
        if self.lag_published.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.lag_published = std::time::Instant::now();
        let highs = self.consumer.context().highs.lock().unwrap_or_else(|e| e.into_inner());
        for (&p, &next) in &self.next {
            if let Some(&high) = highs.get(&p) {
                self.metrics.lag(p, (high - next).max(0));
            }
        }
    }

    fn done(&self) -> bool {
        match self.stop.get() {
            Some(end) => self.next.iter().all(|(p, next)| end.get(p).is_none_or(|e| next >= e)),
            None => false,
        }
    }
}

/// Whether a consumer error means data cannot be read (rather than a broker hiccup that
/// librdkafka retries by itself).
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            RDKafkaErrorCode::OffsetOutOfRange
                // With `auto.offset.reset=error` a vanished offset surfaces as this, and the
                // partition stops fetching: reading on would silently skip it.
                | RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::Fatal
        ),
        _ => false,
    }
}

impl RecordSource for KafkaSource {
    type Error = SourceError;

    fn partitions(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.next.keys().copied().collect();
        p.sort_unstable();
        p
    }

    fn start_offset(&self, p: i32) -> i64 {
        self.next.get(&p).copied().unwrap_or(0)
    }

    fn poll(&mut self, max: usize, each: &mut dyn FnMut(RawRecord<'_>)) -> Result<SourcePoll, SourceError> {
        let mut delivered = 0;
        let end = self.stop.get();
        while delivered < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(msg)) => {
                    let (p, o) = (msg.partition(), msg.offset());
                    if end.and_then(|e| e.get(&p)).is_some_and(|&e| o >= e) {
                        continue; // past the stop offset: not ours to read in this run
                    }
                    each(RawRecord {
                        partition: p,
                        offset: o,
                        timestamp: msg.timestamp().to_millis(),
                        payload: msg.payload(),
                    });
                    if let Some(next) = self.next.get_mut(&p) {
                        *next = o + 1;
                    }
                    delivered += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if is_fatal(&e) => {
                    return Err(SourceError::Consume { partition: None, source: e });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error; retrying");
                    break;
                }
            }
        }
        self.metrics.records.inc_by(delivered as u64);
        self.publish_lag();
        Ok(if self.done() {
            SourcePoll::Done
        } else if delivered > 0 {
            SourcePoll::Busy
        } else {
            SourcePoll::Idle
        })
    }

    fn set_waker(&mut self, waker: Box<dyn Fn() + Send + Sync>) {
        self.consumer.set_nonempty_callback(waker);
    }
}
