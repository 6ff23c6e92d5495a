//! The Kafka source: a worker's share of the trades topic as a [`dataflows::RecordSource`].
//!
//! Partitions are assigned statically (`partition % peers == index`), never through a
//! consumer group: assignment must be a pure function of the cluster shape for results to be,
//! and a group join costs seconds. Offsets are never auto-committed; where the job stands is
//! decided by the dataflow's own frontier.
//!
//! Each partition is read from a queue of its own (librdkafka's partition queues), so pausing
//! a partition that runs ahead in event time is simply not reading its queue: librdkafka stops
//! fetching it once its queue holds `queued.max.messages.kbytes`, and what it fetched stays
//! fetched. librdkafka's own `pause` would drop the fetched batches and fetch them again on
//! `resume` (measured: a third of the throughput on a 64-partition gzip topic at `-w 1`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dataflows::{RawRecord, RecordSource, SourcePoll};
use rdkafka::ClientContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::discover::TopicPartitions;
use super::{SourceError, StopAt};
use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::metrics::JobMetrics;

/// What a process may hold fetched but not yet read, over all its workers' partitions. Split
/// evenly, at least [`MIN_QUEUE_KB`] a partition: a paused partition keeps at most its share.
/// At 64 partitions a process that is 4 MiB each, where the fetcher keeps pace (measured: 2 MiB
/// a partition was 15% slower than 4 MiB; 16 and 64 MiB no faster).
pub const FETCHED_KB_PER_PROCESS: usize = 256 * 1024;
/// The least a partition's queue may hold: a couple of large (1 MB) batches.
const MIN_QUEUE_KB: usize = 2 * 1024;

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

type Waker = Arc<dyn Fn() + Send + Sync>;

/// One partition being read.
struct Reader {
    queue: PartitionQueue<SourceContext>,
    /// Next offset to deliver.
    next: i64,
    paused: bool,
}

/// One worker's Kafka consumer.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
    /// This worker's place in the cluster: it reads `partition % peers == index`.
    index: usize,
    peers: usize,
    readers: BTreeMap<i32, Reader>,
    /// Where the next poll starts, so every partition gets its turn.
    turn: usize,
    stop: StopAt,
    metrics: JobMetrics,
    /// When the consumer lag was last published.
    lag_published: std::time::Instant,
    /// The topic's partitions, refreshed in the background.
    known: Arc<TopicPartitions>,
    /// The version of `known` last looked at.
    seen: u64,
    waker: Option<Waker>,
    /// Why reading must stop, reported at the next poll.
    failed: Option<SourceError>,
}

impl KafkaSource {
    /// Assigns the partitions of `known` worker `index` of `peers` owns (`p % peers == index`),
    /// each from its start offset (the job passes the replay offset of a restart, or the low
    /// watermark); `local` workers share this process's fetch budget.
    pub fn new(
        cfg: &KafkaConfig,
        known: &Arc<TopicPartitions>,
        (index, peers, local): (usize, usize, usize),
        stop: StopAt,
        metrics: JobMetrics,
    ) -> Result<Self, SourceError> {
        let owns = |p: i32| p >= 0 && p as usize % peers.max(1) == index;
        let mine: Vec<(i32, i64)> = known.starts().into_iter().filter(|(p, _)| owns(*p)).collect();
        let queue_kb = (FETCHED_KB_PER_PROCESS / local.max(1) / mine.len().max(1)).max(MIN_QUEUE_KB);
        let mut config = cfg.client_config();
        config
            .set("group.id", "stockflow")
            .set("client.id", format!("stockflow-w{index}"))
            .set("statistics.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Records that vanished before we read them are a loss to report, not to skip.
            .set("auto.offset.reset", "error")
            // Once a partition's queue is full, librdkafka waits this long before fetching it
            // again (default 1 s). A worker drains a full queue in far less and would then sit
            // idle for the rest of the second: a short backoff keeps the queue fed.
            .set("fetch.queue.backoff.ms", "20")
            // Per partition, since each has its own queue: bounds what paused partitions hold.
            .set("queued.max.messages.kbytes", queue_kb.to_string())
            // librdkafka caps a fetch response at the queue size unless this is set; one
            // response still carries many partitions' batches.
            .set("fetch.max.bytes", (50 * 1024 * 1024).to_string());
        // The operator's `-X` properties win over these defaults.
        for (k, v) in &cfg.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> =
            config.create_with_context(SourceContext::default()).map_err(KafkaSetupError::Config)?;
        let mut source = KafkaSource {
            consumer: Arc::new(consumer),
            topic: cfg.topic.clone(),
            index,
            peers,
            readers: BTreeMap::new(),
            turn: 0,
            stop,
            metrics,
            lag_published: std::time::Instant::now(),
            seen: known.version(),
            known: Arc::clone(known),
            waker: None,
            failed: None,
        };
        source.assign(&mine, false)?;
        Ok(source)
    }

    fn owns(&self, p: i32) -> bool {
        p >= 0 && p as usize % self.peers.max(1) == self.index
    }

    /// Starts reading `partitions` (with their start offsets), each from a queue of its own.
    fn assign(&mut self, partitions: &[(i32, i64)], incremental: bool) -> Result<(), SourceError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, start) in partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(start))
                .map_err(|source| SourceError::Consume { partition: Some(p), source })?;
        }
        // Split before assigning, so no record of these partitions lands in the main queue.
        for &(p, start) in partitions {
            let Some(mut queue) = self.consumer.split_partition_queue(&self.topic, p) else {
                return Err(SourceError::Consume {
                    partition: Some(p),
                    source: KafkaError::MessageConsumption(RDKafkaErrorCode::InvalidArgument),
                });
            };
            if let Some(waker) = &self.waker {
                let waker = Arc::clone(waker);
                queue.set_nonempty_callback(move || waker());
            }
            self.readers.insert(p, Reader { queue, next: start, paused: false });
        }
        let assigned = if incremental { self.consumer.incremental_assign(&tpl) } else { self.consumer.assign(&tpl) };
        assigned.map_err(|source| SourceError::Consume { partition: None, source })?;
        self.publish_partitions();
        Ok(())
    }

    fn publish_partitions(&self) {
        let paused = self.readers.values().filter(|r| r.paused).count();
        self.metrics.partitions(self.index, self.readers.len(), paused);
    }

    /// Publishes each partition's consumer lag (its end as of the last statistics minus the
    /// next offset to read), at most once a second.
    fn publish_lag(&mut self) {
        if self.lag_published.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.lag_published = std::time::Instant::now();
        let highs = self.consumer.context().highs.lock().unwrap_or_else(|e| e.into_inner());
        for (&p, reader) in &self.readers {
            if let Some(&high) = highs.get(&p) {
                self.metrics.lag(p, (high - reader.next).max(0));
            }
        }
    }

    fn done(&self) -> bool {
        self.stop.get().is_some() && self.readers.keys().all(|p| self.ended(*p))
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

/// What one poll of a queue gave.
enum Got<'a> {
    Record(BorrowedMessage<'a>),
    Empty,
    Retry,
}

fn take<'a>(
    polled: Option<Result<BorrowedMessage<'a>, KafkaError>>,
    partition: Option<i32>,
) -> Result<Got<'a>, SourceError> {
    match polled {
        None => Ok(Got::Empty),
        Some(Ok(msg)) => Ok(Got::Record(msg)),
        Some(Err(KafkaError::PartitionEOF(_))) => Ok(Got::Empty),
        Some(Err(e)) if is_fatal(&e) => Err(SourceError::Consume { partition, source: e }),
        Some(Err(e)) => {
            tracing::warn!(error = %e, partition, "kafka consumer error; retrying");
            Ok(Got::Retry)
        }
    }
}

/// The value of the record's `stockflow-kind` header, if it has one (trades have none).
#[inline]
fn kind_header<'a>(msg: &'a BorrowedMessage<'_>) -> Option<&'a [u8]> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == dataflows::gap::KIND_HEADER).map(|h| h.value.unwrap_or_default())
}

/// Hands one record to `each` and moves its partition's position past it.
fn deliver(next: &mut i64, msg: &BorrowedMessage<'_>, each: &mut dyn FnMut(RawRecord<'_>)) {
    let offset = msg.offset();
    each(RawRecord {
        partition: msg.partition(),
        offset,
        timestamp: msg.timestamp().to_millis(),
        payload: msg.payload(),
        kind: kind_header(msg),
    });
    *next = offset + 1;
}

impl RecordSource for KafkaSource {
    type Error = SourceError;

    fn partitions(&self) -> Vec<i32> {
        self.readers.keys().copied().collect()
    }

    fn start_offset(&self, p: i32) -> i64 {
        self.readers.get(&p).map_or(0, |r| r.next)
    }

    fn poll(&mut self, max: usize, each: &mut dyn FnMut(RawRecord<'_>)) -> Result<SourcePoll, SourceError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let end = self.stop.get();
        let mut delivered = 0;
        // The main queue carries errors and statistics; records come from the partitions'
        // queues (split before assignment), but one arriving here is read all the same.
        while let Got::Record(msg) = take(self.consumer.poll(Duration::ZERO), None)? {
            let (p, offset) = (msg.partition(), msg.offset());
            let stop_at = end.and_then(|e| e.get(&p)).copied();
            match self.readers.get_mut(&p) {
                Some(reader) if reader.next == offset && stop_at.is_none_or(|e| offset < e) => {
                    deliver(&mut reader.next, &msg, each);
                    delivered += 1;
                }
                Some(reader) if reader.next > offset || stop_at.is_some_and(|e| offset >= e) => {}
                _ => {
                    return Err(SourceError::Consume {
                        partition: Some(p),
                        source: KafkaError::MessageConsumption(RDKafkaErrorCode::InvalidArgument),
                    });
                }
            }
        }
        let reading: Vec<i32> = self.readers.iter().filter(|(_, r)| !r.paused).map(|(p, _)| *p).collect();
        let share = (max / reading.len().max(1)).max(1);
        self.turn = self.turn.wrapping_add(1);
        for i in 0..reading.len() {
            if delivered >= max {
                break;
            }
            let p = reading[(self.turn + i) % reading.len()];
            let Some(reader) = self.readers.get_mut(&p) else { continue };
            let stop_at = end.and_then(|e| e.get(&p)).copied();
            let mut taken = 0;
            while taken < share && stop_at.is_none_or(|e| reader.next < e) {
                let msg = match take(reader.queue.poll(Duration::ZERO), Some(p))? {
                    Got::Record(msg) => msg,
                    Got::Empty | Got::Retry => break,
                };
                if stop_at.is_some_and(|e| msg.offset() >= e) {
                    break; // past the stop offset: not ours to read in this run
                }
                deliver(&mut reader.next, &msg, each);
                taken += 1;
            }
            delivered += taken;
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
        let waker: Waker = Arc::from(waker);
        for reader in self.readers.values_mut() {
            let waker = Arc::clone(&waker);
            reader.queue.set_nonempty_callback(move || waker());
        }
        // The main queue only carries errors and statistics: the operator's idle timer polls
        // it often enough, and its callback cannot be set once the queues share the consumer.
        self.waker = Some(waker);
    }

    fn pause(&mut self, p: i32) {
        if let Some(reader) = self.readers.get_mut(&p) {
            reader.paused = true;
        }
        self.publish_partitions();
    }

    fn resume(&mut self, p: i32) {
        if let Some(reader) = self.readers.get_mut(&p) {
            reader.paused = false;
        }
        self.publish_partitions();
    }

    fn added(&mut self) -> Vec<(i32, i64)> {
        let version = self.known.version();
        if version == self.seen {
            return Vec::new();
        }
        self.seen = version;
        if let Some(e) = self.known.take_error() {
            self.failed = Some(e.into());
            return Vec::new();
        }
        if self.stop.get().is_some() {
            // A drain reads to the end offsets it saw at start; new partitions were empty then.
            return Vec::new();
        }
        let new: Vec<(i32, i64)> =
            self.known.starts().into_iter().filter(|(p, _)| self.owns(*p) && !self.readers.contains_key(p)).collect();
        if let Err(e) = self.assign(&new, true) {
            self.failed = Some(e);
            return Vec::new();
        }
        for (p, start) in &new {
            tracing::info!(
                partition = p,
                offset = start,
                worker = self.index,
                "reading a partition added to the topic"
            );
        }
        new
    }

    fn ended(&self, p: i32) -> bool {
        self.stop
            .get()
            .is_some_and(|end| end.get(&p).is_none_or(|e| self.readers.get(&p).is_some_and(|r| r.next >= *e)))
    }
}
