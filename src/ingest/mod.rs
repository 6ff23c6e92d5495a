//! `stockflow ingest`: Finnhub's trade websocket into Kafka, one record per trade.
//!
//! The socket reader and the Kafka producer run apart, joined by a bounded queue: when Kafka
//! is slow the queue fills, the reader stops reading, and TCP pushes back on the server, so
//! memory stays bounded and nothing received is dropped. Records keep the trade object's
//! bytes exactly as received; frames that are not valid JSON are forwarded whole (without a
//! key) so the job quarantines them instead of ingest losing them. Trade frames repeated
//! byte for byte on one connection are counted, and dropped when asked
//! ([`repeated::RepeatedFrames`]). When a connection is lost, the interval until the feed
//! resumes is written as a gap record per subscribed symbol ([`gaps`]), ahead of the first
//! trade after it.

mod gaps;
mod repeated;

pub use gaps::host_name;

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::finnhub::{Captured, END_OF_STREAM, Frame, Request, trade_head};
use crate::kafka::KafkaConfig;
use crate::metrics::IngestMetrics;
use gaps::{GapTracker, Loss};
use repeated::RepeatedFrames;

/// Frames buffered between socket and producer before the reader stops reading.
const QUEUE_FRAMES: usize = 4096;

/// What ingest needs.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Websocket URL (Finnhub or `stockflow simulate`).
    pub url: String,
    /// Finnhub API token, appended to the URL; never logged.
    pub token: Option<String>,
    /// Symbols to subscribe to.
    pub symbols: Vec<String>,
    /// A connection without any frame (trades or pings) for this long is replaced.
    pub stale_after: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// Append every received frame with its receive time to this file (JSON lines).
    pub record: Option<PathBuf>,
    /// Interval of the `ingest progress` event.
    pub stats_every: Duration,
    /// A trade frame byte-identical to one received on the same connection this recently is
    /// a repeated frame.
    pub duplicate_window: Duration,
    /// Do not forward repeated frames (they are counted either way).
    pub drop_duplicate_frames: bool,
    /// Names this ingest in its gap records.
    pub host: String,
    /// Target topic.
    pub kafka: KafkaConfig,
    /// Where the counters go (served on `--metrics-addr`).
    pub metrics: IngestMetrics,
}

impl IngestConfig {
    /// Defaults for everything but where to read, what, and where to write.
    pub fn new(url: String, symbols: Vec<String>, kafka: KafkaConfig) -> Self {
        IngestConfig {
            url,
            token: None,
            symbols,
            kafka,
            metrics: IngestMetrics::default(),
            stale_after: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            record: None,
            stats_every: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(5),
            drop_duplicate_frames: false,
            host: gaps::host_name(),
        }
    }
}

/// Counts of one ingest run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Websocket frames received.
    pub frames: u64,
    /// Records handed to the producer (trades, plus malformed frames forwarded whole).
    pub records: u64,
    /// Records the broker acknowledged.
    pub delivered: u64,
    /// Records the producer gave up on.
    pub failed: u64,
    /// Ping frames received.
    pub pings: u64,
    /// Connections lost and re-established.
    pub reconnects: u64,
    /// Trade frames repeated byte for byte on their connection within the duplicate window.
    pub duplicate_frames: u64,
    /// Intervals the feed was not received (each written as a gap record per symbol).
    pub gaps: u64,
    /// Gap records handed to the producer (included in `records`).
    pub gap_records: u64,
}

/// Why ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The websocket could not be opened or broke.
    #[error("websocket {url}: {source}")]
    Socket {
        /// The URL.
        url: String,
        /// The websocket error.
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The server refused the websocket upgrade (Finnhub: missing or invalid token).
    #[error("{url} refused the connection (HTTP {status}): check FINNHUB_TOKEN")]
    Rejected {
        /// The URL, without the token.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server sent an error frame.
    #[error("server error: {0}")]
    Server(String),
    /// The producer could not be created.
    #[error("invalid Kafka producer configuration: {0}")]
    Config(KafkaError),
    /// The producer failed for good.
    #[error("kafka producer: {0}")]
    Produce(KafkaError),
    /// The capture file could not be written.
    #[error("recording to {}: {source}", path.display())]
    Record {
        /// The capture file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Some records were not delivered.
    #[error("{0} records could not be delivered to Kafka")]
    Undelivered(u64),
}

/// Ingest's counters are its metrics: the progress event and `/metrics` read the same atomics.
type Counters = IngestMetrics;

/// The `ingest progress` event: what ingest has done so far, logged every `stats_every`
/// with structured fields (the same counters a metrics endpoint exports).
struct IngestProgress<'a> {
    counters: &'a Counters,
    queue_depth: usize,
}

impl IngestProgress<'_> {
    fn emit(&self) {
        let c = self.counters;
        tracing::info!(
            frames = c.frames.get(),
            records = c.records.get(),
            delivered = c.delivered.get(),
            delivery_failures = c.failed.get(),
            reconnects = c.reconnects.get(),
            duplicate_frames = c.duplicate_frames.get(),
            gaps = c.gaps.get(),
            queue_depth = self.queue_depth,
            "ingest progress"
        );
    }
}

struct DeliveryCounter(Arc<Counters>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.inc(),
            Err((e, _)) => {
                tracing::error!(error = %e, "kafka delivery failed");
                self.0.failed.inc()
            }
        };
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A frame received: its receive time (ms since the epoch, the Kafka timestamp of its
/// records), the frame, and whether it repeats one received just before on its connection.
struct Received {
    at: i64,
    frame: Message,
    repeated: bool,
}

/// What the socket side tells the producer, in order.
enum Event {
    /// A frame.
    Frame(Received),
    /// The connection was lost: a gap starts (see [`gaps`]).
    Lost(Loss),
}

/// `--record`: every received frame with its receive time, one JSON object a line
/// (`{"t":1763997374633,"frame":"..."}`), the format `simulate --replay` plays back.
struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Recorder {
    fn open(path: &Path) -> Result<Self, IngestError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| IngestError::Record { path: path.to_owned(), source: e })?;
        Ok(Recorder { path: path.to_owned(), out: BufWriter::new(file) })
    }

    fn write(&mut self, t: i64, frame: &str) -> Result<(), IngestError> {
        let fail = |e: std::io::Error| IngestError::Record { path: self.path.clone(), source: e };
        serde_json::to_writer(&mut self.out, &Captured { t, frame: Cow::Borrowed(frame) })
            .map_err(|e| fail(e.into()))?;
        self.out.write_all(b"\n").map_err(fail)
    }

    fn flush(&mut self) -> Result<(), IngestError> {
        self.out.flush().map_err(|e| IngestError::Record { path: self.path.clone(), source: e })
    }
}

/// How one connection ended.
enum Session {
    /// The server closed with [`END_OF_STREAM`] (the simulator's end; Finnhub never ends).
    EndOfStream,
    /// The producer stopped (its error is reported from its thread).
    ProducerStopped,
    /// The connection broke, went stale or was closed: reconnect.
    Lost(Loss, String),
}

async fn subscribe<S>(ws: &mut S, symbols: &[String]) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    for symbol in symbols {
        ws.feed(Message::text(Request::Subscribe(symbol.clone()).to_text())).await?;
    }
    ws.flush().await
}

/// Forwards frames to the producer until the connection ends one way or another.
async fn read_frames<S>(
    ws: &mut S,
    to_producer: &mpsc::Sender<Event>,
    stale_after: Duration,
    duplicate_window: Duration,
    counters: &Counters,
) -> Session
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    // Repeats are looked for within one connection: a reconnect's frames are new.
    let mut repeats = RepeatedFrames::new(duplicate_window);
    loop {
        match tokio::time::timeout(stale_after, ws.next()).await {
            Err(_) => return Session::Lost(Loss::Stale, format!("no frame for {}s", stale_after.as_secs_f64())),
            Ok(None) => return Session::Lost(Loss::Disconnect, "connection closed".into()),
            Ok(Some(Err(e))) => return Session::Lost(Loss::Disconnect, e.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return match frame {
                    Some(f) if f.reason.as_str() == END_OF_STREAM => Session::EndOfStream,
                    f => Session::Lost(
                        Loss::Disconnect,
                        format!("server closed: {}", f.map(|f| f.reason.to_string()).unwrap_or_default()),
                    ),
                };
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                counters.frames.inc();
                let repeated = repeats.check(&text, tokio::time::Instant::now().into_std());
                if repeated {
                    counters.duplicate_frames.inc();
                }
                let received = Received { at: now_ms(), frame: Message::Text(text), repeated };
                if to_producer.send(Event::Frame(received)).await.is_err() {
                    return Session::ProducerStopped;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Errors no retry can fix besides a rejected upgrade (handled first): a malformed URL.
fn is_fatal(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Url(_))
}

/// Exponential backoff from 100 ms with jitter (half to all of the step), capped at `max`.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let step = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(16)).min(max);
    step / 2 + step.mul_f64(fastrand::f64() / 2.0)
}

/// Subscribes, then forwards every trade to Kafka, reconnecting (and resubscribing) with
/// backoff whenever the connection breaks, goes stale or is closed, until the server ends
/// the stream or a fatal error (rejected token, error frame, producer failure).
pub async fn run(cfg: IngestConfig) -> Result<IngestStats, IngestError> {
    let socket_error = |source| IngestError::Socket { url: cfg.url.clone(), source: Box::new(source) };
    let counters = Arc::new(cfg.metrics.clone());
    let producer: BaseProducer<DeliveryCounter> = cfg
        .kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(DeliveryCounter(Arc::clone(&counters)))
        .map_err(IngestError::Config)?;

    let recorder = match &cfg.record {
        Some(path) => Some(Recorder::open(path)?),
        None => None,
    };
    let (frames_tx, frames_rx) = mpsc::channel::<Event>(QUEUE_FRAMES);
    let producer_counters = Arc::clone(&counters);
    let producing_cfg = Producing {
        topic: cfg.kafka.topic.clone(),
        drop_repeated: cfg.drop_duplicate_frames,
        symbols: cfg.symbols.clone(),
        host: cfg.host.clone(),
    };
    let producing = tokio::task::spawn_blocking(move || {
        produce_frames(producer, &producing_cfg, frames_rx, recorder, &producer_counters)
    });

    // The token travels only in the request URL; messages and logs use `cfg.url`.
    let url = match &cfg.token {
        Some(token) => format!("{}{}token={token}", cfg.url, if cfg.url.contains('?') { '&' } else { '?' }),
        None => cfg.url.clone(),
    };
    let (mut reconnects, mut attempt) = (0u64, 0u32);
    // Progress events while running; the task ends with the channel (it holds no sender).
    let (progress_counters, queue) = (Arc::clone(&counters), frames_tx.downgrade());
    let every = cfg.stats_every;
    tokio::spawn(async move {
        // The queue-depth gauge is sampled every second; the event is logged every `every`.
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(every));
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(queue) = queue.upgrade() else { break };
            let queue_depth = queue.max_capacity() - queue.capacity();
            progress_counters.queue_depth.set(queue_depth as i64);
            if last.elapsed() >= every {
                last = tokio::time::Instant::now();
                IngestProgress { counters: &progress_counters, queue_depth }.emit();
            }
        }
    });
    let mut read_error = None;
    loop {
        let session = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, _)) => match subscribe(&mut ws, &cfg.symbols).await {
                Ok(()) => {
                    tracing::info!(url = %cfg.url, symbols = cfg.symbols.len(), reconnects, "subscribed");
                    attempt = 0;
                    read_frames(&mut ws, &frames_tx, cfg.stale_after, cfg.duplicate_window, &counters).await
                }
                Err(e) => Session::Lost(Loss::Disconnect, e.to_string()),
            },
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status().is_client_error() => {
                read_error = Some(IngestError::Rejected { url: cfg.url.clone(), status: response.status().as_u16() });
                break;
            }
            Err(e) if is_fatal(&e) => {
                read_error = Some(socket_error(e));
                break;
            }
            Err(e) => Session::Lost(Loss::Disconnect, e.to_string()),
        };
        match session {
            Session::EndOfStream | Session::ProducerStopped => break,
            Session::Lost(loss, why) => {
                if frames_tx.send(Event::Lost(loss)).await.is_err() {
                    break;
                }
                reconnects += 1;
                counters.reconnects.inc();
                let delay = backoff(attempt, cfg.backoff_max);
                attempt = attempt.saturating_add(1);
                tracing::warn!(url = %cfg.url, reason = %why, retry_in_ms = delay.as_millis() as u64, "websocket lost; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
    drop(frames_tx);
    let produced = producing.await.map_err(|e| IngestError::Server(format!("producer thread: {e}")))?;
    let Produced { records, pings, gaps, gap_records } = produced?;
    let stats = IngestStats {
        frames: counters.frames.get(),
        records,
        delivered: counters.delivered.get(),
        failed: counters.failed.get(),
        pings,
        reconnects,
        duplicate_frames: counters.duplicate_frames.get(),
        gaps,
        gap_records,
    };
    if let Some(e) = read_error {
        return Err(e);
    }
    if stats.failed > 0 || stats.delivered < stats.records {
        return Err(IngestError::Undelivered(stats.records - stats.delivered));
    }
    Ok(stats)
}

/// What the producer thread needs besides its channel.
struct Producing {
    topic: String,
    /// Record repeated frames (in the capture) but do not produce them.
    drop_repeated: bool,
    /// Symbols subscribed: a gap is written for each.
    symbols: Vec<String>,
    /// Names this ingest in gap records.
    host: String,
}

/// What the producer thread did.
struct Produced {
    records: u64,
    pings: u64,
    gaps: u64,
    gap_records: u64,
}

/// The producer thread: splits frames into records and produces them, waiting for queue
/// space (by serving delivery reports) instead of dropping; with `drop_repeated`, repeated
/// frames are recorded but not produced. A trade frame that ends a gap is preceded by the
/// gap's records, keyed by symbol like the trades, so each lands in order in its symbol's
/// partition.
fn produce_frames(
    producer: BaseProducer<DeliveryCounter>,
    cfg: &Producing,
    mut events: mpsc::Receiver<Event>,
    mut recorder: Option<Recorder>,
    counters: &Counters,
) -> Result<Produced, IngestError> {
    let mut done = Produced { records: 0, pings: 0, gaps: 0, gap_records: 0 };
    let mut tracker = GapTracker::default();
    let mut times: Vec<i64> = Vec::new();
    while let Some(event) = events.blocking_recv() {
        let Received { at: received, frame: Message::Text(text), repeated } = (match event {
            Event::Lost(loss) => {
                tracker.lost(loss);
                continue;
            }
            Event::Frame(received) => received,
        }) else {
            continue;
        };
        if let Some(r) = recorder.as_mut() {
            r.write(received, text.as_str())?;
        }
        let mut send = |key: Option<&[u8]>, payload: &[u8], headers: Option<OwnedHeaders>| -> Result<(), IngestError> {
            let mut record = BaseRecord::to(&cfg.topic).payload(payload).timestamp(received);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                        record = rec;
                        producer.poll(Duration::from_millis(100));
                    }
                    Err((e, _)) => return Err(IngestError::Produce(e)),
                }
            }
            done.records += 1;
            counters.records.inc();
            Ok(())
        };
        let frame = Frame::parse(text.as_str());
        let heads: Vec<_> = match &frame {
            Frame::Trades(data) => data.iter().map(|raw| trade_head(raw)).collect(),
            _ => Vec::new(),
        };
        times.clear();
        times.extend(heads.iter().filter_map(|h| h.t));
        if let Some(gap) = tracker.frame(received, &times) {
            done.gaps += 1;
            counters.gaps.inc();
            tracing::warn!(from_ms = gap.from, to_ms = gap.to, reason = gap.reason, "feed gap");
            for body in gaps::records(&gap, &cfg.symbols, &cfg.host) {
                let headers = OwnedHeaders::new()
                    .insert(Header { key: dataflows::gap::KIND_HEADER, value: Some(dataflows::gap::GAP_KIND) });
                send(Some(body.s.as_bytes()), &body.to_json(), Some(headers))?;
                done.gap_records += 1;
            }
        }
        if repeated && cfg.drop_repeated {
            continue;
        }
        match frame {
            Frame::Malformed => send(None, text.as_bytes(), None)?,
            Frame::Trades(data) => {
                for (raw, head) in data.iter().zip(&heads) {
                    send(head.symbol.as_deref().map(str::as_bytes), raw.get().as_bytes(), None)?;
                }
            }
            Frame::Ping => done.pings += 1,
            Frame::Error(msg) => return Err(IngestError::Server(msg.into_owned())),
            Frame::Other => tracing::debug!(frame = %text.as_str(), "ignoring frame"),
        }
        producer.poll(Duration::ZERO);
    }
    if let Some(r) = recorder.as_mut() {
        r.flush()?;
    }
    producer.flush(Duration::from_secs(60)).map_err(IngestError::Produce)?;
    Ok(done)
}
