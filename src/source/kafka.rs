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
//! Queues are read a batch at a time ([`super::queue`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dataflows::{RawRecord, RecordSource, SourcePoll};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::discover::TopicPartitions;
use super::queue::{Batch, BatchQueue, Record, Waker};
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

/// One partition being read.
struct Reader {
    queue: BatchQueue<SourceContext>,
    /// Next offset to deliver.
    next: i64,
    paused: bool,
}

/// One worker's Kafka consumer.
pub struct KafkaSource {
    /// Records taken from a partition's queue, released after each read. First, so it is
    /// dropped before the queues and the consumer its records refer to.
    batch: Batch,
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
            batch: Batch::new(),
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
            let Some(mut queue) = BatchQueue::split(&self.consumer, &self.topic, p) else {
                return Err(SourceError::Consume {
                    partition: Some(p),
                    source: KafkaError::MessageConsumption(RDKafkaErrorCode::InvalidArgument),
                });
            };
            if let Some(waker) = &self.waker {
                queue.set_waker(Arc::clone(waker));
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

/// What an error entry of a partition's batch means: nothing more now (`Ok(false)`), a hiccup
/// librdkafka retries by itself (`Ok(true)`: read on), or a failure.
/// Classified by [`take`], as the binding would have reported it (end of partition apart).
fn batch_error(code: RDKafkaErrorCode, partition: i32) -> Result<bool, SourceError> {
    let error = match code {
        RDKafkaErrorCode::PartitionEOF => KafkaError::PartitionEOF(partition),
        code => KafkaError::MessageConsumption(code),
    };
    take(Some(Err(error)), Some(partition)).map(|got| matches!(got, Got::Retry))
}

/// The `stockflow-kind` header's name, as librdkafka looks it up.
fn kind_name() -> &'static std::ffi::CStr {
    static NAME: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    NAME.get_or_init(|| std::ffi::CString::new(dataflows::gap::KIND_HEADER).expect("no NUL in a header name"))
}

/// A record of the main queue as the dataflow reads it.
fn raw_message<'a>(msg: &'a BorrowedMessage<'_>) -> RawRecord<'a> {
    let kind = msg.headers().and_then(|headers| {
        headers.iter().find(|h| h.key == dataflows::gap::KIND_HEADER).map(|h| h.value.unwrap_or_default())
    });
    RawRecord {
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
        payload: msg.payload(),
        kind,
    }
}

/// A record of a partition's batch as the dataflow reads it.
#[inline]
fn raw_record<'a>(rec: Record<'a>) -> RawRecord<'a> {
    RawRecord {
        partition: rec.partition(),
        offset: rec.offset(),
        timestamp: rec.timestamp(),
        payload: rec.payload(),
        kind: rec.header(kind_name()),
    }
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
                    each(raw_message(&msg));
                    reader.next = offset + 1;
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
            'queue: while taken < share && stop_at.is_none_or(|e| reader.next < e) {
                if reader.queue.read(share - taken, Duration::ZERO, &mut self.batch) == 0 {
                    break;
                }
                for rec in self.batch.iter() {
                    if let Some(code) = rec.error() {
                        if batch_error(code, p)? {
                            continue;
                        }
                        break 'queue;
                    }
                    if stop_at.is_some_and(|e| rec.offset() >= e) {
                        break 'queue; // past the stop offset: not ours to read in this run
                    }
                    each(raw_record(rec));
                    reader.next = rec.offset() + 1;
                    taken += 1;
                }
            }
            self.batch.clear();
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
            reader.queue.set_waker(Arc::clone(&waker));
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

#[cfg(test)]
mod tests {
    use std::sync::{OnceLock, mpsc};

    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;

    /// What the source delivered of one record.
    #[derive(Debug, PartialEq)]
    struct Seen {
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        payload: Option<Vec<u8>>,
        kind: Option<Vec<u8>>,
    }

    /// A topic of `partitions` on a mock broker holding `records` per partition: record `i`
    /// has payload `p{p}-{i}`, timestamp `1000 + i`, and every third a `stockflow-kind`
    /// header (every sixth with a null value).
    fn topic(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        partitions: i32,
        records: i64,
    ) -> KafkaConfig {
        let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "t".into(), properties: vec![] };
        mock.create_topic(&kafka.topic, partitions, 1).expect("topic");
        let producer: BaseProducer = kafka.client_config().create().expect("producer");
        for p in 0..partitions {
            for i in 0..records {
                let payload = format!("p{p}-{i}");
                let mut record =
                    BaseRecord::<(), _>::to(&kafka.topic).partition(p).payload(&payload).timestamp(1000 + i);
                if i % 3 == 0 {
                    let value = (i % 6 != 0).then_some("gap/1");
                    record = record.headers(OwnedHeaders::new().insert(Header { key: "stockflow-kind", value }));
                }
                producer.send(record).expect("send");
            }
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        kafka
    }

    fn source(kafka: &KafkaConfig, starts: &[(i32, i64)], stop: StopAt) -> (KafkaSource, mpsc::Receiver<()>) {
        let known = TopicPartitions::new(starts.iter().copied().collect());
        let mut source = KafkaSource::new(kafka, &known, (0, 1, 1), stop, JobMetrics::default()).expect("source");
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        source.set_waker(Box::new(move || {
            let _ = tx.lock().map(|tx| tx.send(()));
        }));
        (source, rx)
    }

    /// Polls until the source is done, fails, or has been idle with no wake for 10 s.
    fn drain(source: &mut KafkaSource, woken: &mpsc::Receiver<()>, max: usize) -> (Vec<Seen>, Result<(), SourceError>) {
        let mut seen = Vec::new();
        loop {
            let polled = source.poll(max, &mut |r| {
                seen.push(Seen {
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    payload: r.payload.map(<[u8]>::to_vec),
                    kind: r.kind.map(<[u8]>::to_vec),
                })
            });
            match polled {
                Ok(SourcePoll::Done) => return (seen, Ok(())),
                Ok(SourcePoll::Busy) => {}
                Ok(SourcePoll::Idle) => {
                    if woken.recv_timeout(Duration::from_secs(10)).is_err() {
                        return (seen, Ok(()));
                    }
                }
                Err(e) => return (seen, Err(e)),
            }
        }
    }

    #[test]
    fn batches_deliver_every_record_in_order_with_timestamp_and_kind_up_to_the_stop() {
        let mock = MockCluster::new(1).expect("mock");
        let kafka = topic(&mock, 3, 50);
        // Partition 1 from offset 10; partition 2 stops at 40; a small `max` makes many batches.
        let stop: StopAt = Arc::new(OnceLock::new());
        stop.set([(0, 50), (1, 50), (2, 40)].into()).expect("stop");
        let (mut source, woken) = source(&kafka, &[(0, 0), (1, 10), (2, 0)], stop);
        let (seen, result) = drain(&mut source, &woken, 7);
        result.expect("no error");
        let expected = |p: i32, from: i64, to: i64| {
            (from..to).map(move |i| Seen {
                partition: p,
                offset: i,
                timestamp: Some(1000 + i),
                payload: Some(format!("p{p}-{i}").into_bytes()),
                kind: (i % 3 == 0).then(|| if i % 6 == 0 { Vec::new() } else { b"gap/1".to_vec() }),
            })
        };
        for (p, from, to) in [(0, 0, 50), (1, 10, 50), (2, 0, 40)] {
            let mine: Vec<&Seen> = seen.iter().filter(|s| s.partition == p).collect();
            let want: Vec<Seen> = expected(p, from, to).collect();
            assert_eq!(mine.len(), want.len(), "partition {p}");
            assert!(mine.iter().zip(&want).all(|(a, b)| *a == b), "partition {p}: {mine:?}");
        }
        assert_eq!(seen.len(), 50 + 40 + 40);
        assert_eq!(source.start_offset(2), 40, "the position stops at the stop offset");
    }

    #[test]
    fn batch_errors_are_classified_like_the_bindings() {
        // The end of a partition (with `enable.partition.eof`) is nothing more now, not a
        // hiccup to warn about; a broker hiccup reads on; a lost offset stops the job.
        assert!(!batch_error(RDKafkaErrorCode::PartitionEOF, 3).expect("not a failure"));
        assert!(batch_error(RDKafkaErrorCode::BrokerTransportFailure, 3).expect("not a failure"));
        assert!(matches!(
            batch_error(RDKafkaErrorCode::AutoOffsetReset, 3),
            Err(SourceError::Consume { partition: Some(3), .. })
        ));
    }

    #[test]
    fn a_start_past_the_partitions_end_is_an_error_not_a_skip() {
        let mock = MockCluster::new(1).expect("mock");
        let kafka = topic(&mock, 1, 5);
        let (mut source, woken) = source(&kafka, &[(0, 100)], Arc::new(OnceLock::new()));
        let (seen, result) = drain(&mut source, &woken, 64);
        assert!(seen.is_empty());
        match result {
            Err(SourceError::Consume { partition: Some(0), .. }) => {}
            other => panic!("expected a consume error on partition 0, got {other:?}"),
        }
    }
}
