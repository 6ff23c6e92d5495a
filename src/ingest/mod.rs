//! `stockflow ingest`: Finnhub's trade websocket into Kafka, one record per trade.
//!
//! The socket reader and the Kafka producer run apart, joined by a bounded queue: when Kafka
//! is slow the queue fills, the reader stops reading, and TCP pushes back on the server, so
//! memory stays bounded and nothing received is dropped. Records keep the trade object's
//! bytes exactly as received; frames that are not valid JSON are forwarded whole (without a
//! key) so the job quarantines them instead of ingest losing them.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::kafka::KafkaConfig;

/// Frames buffered between socket and producer before the reader stops reading.
const QUEUE_FRAMES: usize = 4096;

/// What ingest needs.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Websocket URL (Finnhub or `stockflow simulate`).
    pub url: String,
    /// Symbols to subscribe to.
    pub symbols: Vec<String>,
    /// Target topic.
    pub kafka: KafkaConfig,
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
    /// The server sent an error frame.
    #[error("server error: {0}")]
    Server(String),
    /// The producer could not be created.
    #[error("invalid Kafka producer configuration: {0}")]
    Config(KafkaError),
    /// The producer failed for good.
    #[error("kafka producer: {0}")]
    Produce(KafkaError),
    /// Some records were not delivered.
    #[error("{0} records could not be delivered to Kafka")]
    Undelivered(u64),
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct DeliveryCounter(Arc<Counters>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, "kafka delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[derive(Deserialize)]
struct FrameView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    msg: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct KeyView<'a> {
    #[serde(borrow)]
    s: Option<Cow<'a, str>>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Subscribes, then forwards every trade until the server closes the connection.
pub async fn run(cfg: IngestConfig) -> Result<IngestStats, IngestError> {
    let socket_error = |source| IngestError::Socket { url: cfg.url.clone(), source: Box::new(source) };
    let counters = Arc::new(Counters::default());
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

    let (mut ws, _) = tokio_tungstenite::connect_async(cfg.url.as_str()).await.map_err(socket_error)?;
    for symbol in &cfg.symbols {
        let request = serde_json::json!({"type": "subscribe", "symbol": symbol}).to_string();
        ws.feed(Message::text(request)).await.map_err(socket_error)?;
    }
    ws.flush().await.map_err(socket_error)?;
    tracing::info!(url = %cfg.url, symbols = cfg.symbols.len(), "subscribed");

    let (frames_tx, frames_rx) = mpsc::channel::<Message>(QUEUE_FRAMES);
    let topic = cfg.kafka.topic.clone();
    let producing = tokio::task::spawn_blocking(move || produce_frames(producer, &topic, frames_rx));

    let mut frames = 0;
    let mut read_error = None;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(msg @ Message::Text(_)) => {
                frames += 1;
                if frames_tx.send(msg).await.is_err() {
                    break; // the producer stopped; its error is reported below
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                read_error = Some(socket_error(e));
                break;
            }
        }
    }
    drop(frames_tx);
    let produced = producing.await.map_err(|e| IngestError::Server(format!("producer thread: {e}")))?;
    let (records, pings) = produced?;
    let stats = IngestStats {
        frames,
        records,
        delivered: counters.delivered.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        pings,
    };
    if let Some(e) = read_error {
        return Err(e);
    }
    if stats.failed > 0 || stats.delivered < stats.records {
        return Err(IngestError::Undelivered(stats.records - stats.delivered));
    }
    Ok(stats)
}

/// The producer thread: splits frames into records and produces them, waiting for queue
/// space (by serving delivery reports) instead of dropping.
fn produce_frames(
    producer: BaseProducer<DeliveryCounter>,
    topic: &str,
    mut frames: mpsc::Receiver<Message>,
) -> Result<(u64, u64), IngestError> {
    let (mut records, mut pings) = (0u64, 0u64);
    while let Some(Message::Text(text)) = frames.blocking_recv() {
        let received = now_ms();
        let mut send = |key: Option<&[u8]>, payload: &[u8]| -> Result<(), IngestError> {
            let mut record = BaseRecord::to(topic).payload(payload).timestamp(received);
            if let Some(key) = key {
                record = record.key(key);
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
            records += 1;
            Ok(())
        };
        match serde_json::from_str::<FrameView<'_>>(text.as_str()) {
            Err(_) => send(None, text.as_bytes())?,
            Ok(frame) => match frame.kind.as_deref() {
                Some("trade") => {
                    for raw in frame.data.unwrap_or_default() {
                        let key = serde_json::from_str::<KeyView<'_>>(raw.get()).ok().and_then(|k| k.s);
                        send(key.as_deref().map(str::as_bytes), raw.get().as_bytes())?;
                    }
                }
                Some("ping") => pings += 1,
                Some("error") => {
                    return Err(IngestError::Server(frame.msg.as_deref().unwrap_or("(no message)").to_owned()));
                }
                _ => tracing::debug!(frame = %text.as_str(), "ignoring frame"),
            },
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).map_err(IngestError::Produce)?;
    Ok((records, pings))
}
