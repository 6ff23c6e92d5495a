//! Kafka connection settings shared by the job, ingest and demo, and the metadata look-ups
//! (partition count, end offsets) they need before streaming.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

/// How long metadata look-ups wait before the brokers count as unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to Kafka outside the record stream.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// The client could not be created (bad `-X` property, for example).
    #[error("invalid Kafka client configuration: {0}")]
    Config(KafkaError),
    /// No broker answered.
    #[error("cannot reach Kafka brokers at {brokers}: {source}")]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The topic does not exist.
    #[error("topic '{topic}' does not exist on {brokers}")]
    MissingTopic {
        /// The topic name.
        topic: String,
        /// The bootstrap list.
        brokers: String,
    },
    /// A partition the lake never read no longer starts at offset 0.
    #[error(
        "partition {partition} was never read by this lake and now starts at offset {low}: retention deleted \
         records before the job read them (a partition added while the job was down, or a lake started after its \
         commits on an older topic)"
    )]
    Unread {
        /// The partition.
        partition: i32,
        /// Its first offset.
        low: i64,
    },
    /// A partition the lake has read is not in the topic's metadata.
    #[error(
        "partition {partition} is in the lake's newest commit, but the brokers report {count} partitions (stale \
         metadata or another topic); nothing was read"
    )]
    Vanished {
        /// The partition.
        partition: i32,
        /// Partitions the brokers report.
        count: usize,
    },
    /// The log no longer holds records a restart must replay.
    #[error(
        "partition {partition} must be replayed from offset {replay}, but the topic now starts at {low} (retention \
         deleted records while the job was down; raise the topic's retention above the revision horizon)"
    )]
    Retention {
        /// The partition.
        partition: i32,
        /// Where the restart must read from.
        replay: i64,
        /// The partition's first offset.
        low: i64,
    },
}

/// Where the trades topic lives, plus extra librdkafka properties (`-X key=value`).
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic name.
    pub topic: String,
    /// Extra librdkafka properties, applied last (TLS, SASL, tuning).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A client configuration with the bootstrap list and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// Checks the client properties (`-X`) the way librdkafka reads them, without connecting.
    pub fn check(&self) -> Result<(), KafkaSetupError> {
        self.client_config().create_native_config().map(|_| ()).map_err(KafkaSetupError::Config)
    }

    /// A client for metadata look-ups.
    pub fn metadata(&self) -> Result<Metadata<'_>, KafkaSetupError> {
        let consumer = self.client_config().create().map_err(KafkaSetupError::Config)?;
        Ok(Metadata { cfg: self, consumer })
    }

    /// The number of partitions of the topic; fails clearly if brokers or topic are missing.
    pub fn partition_count(&self) -> Result<i32, KafkaSetupError> {
        self.metadata()?.partition_count()
    }

    /// The end offset (next offset to be written) of each partition: where a drain stops.
    pub fn end_offsets(&self, partitions: i32) -> Result<HashMap<i32, i64>, KafkaSetupError> {
        Ok(ends(&self.watermarks(partitions)?))
    }

    /// `(low, high)` watermarks of each partition: the first offset still held and the next
    /// offset to be written.
    pub fn watermarks(&self, partitions: i32) -> Result<HashMap<i32, (i64, i64)>, KafkaSetupError> {
        let metadata = self.metadata()?;
        (0..partitions).map(|p| metadata.watermark(p).map(|w| (p, w))).collect()
    }
}

/// An open client for metadata look-ups: one connection for many requests (a discovery loop
/// must not pay a TLS or SASL handshake per refresh).
pub struct Metadata<'a> {
    cfg: &'a KafkaConfig,
    consumer: BaseConsumer,
}

impl Metadata<'_> {
    fn unreachable(&self, source: KafkaError) -> KafkaSetupError {
        KafkaSetupError::Unreachable { brokers: self.cfg.brokers.clone(), source }
    }

    /// The number of partitions of the topic; fails clearly if brokers or topic are missing.
    pub fn partition_count(&self) -> Result<i32, KafkaSetupError> {
        let (topic, brokers) = (&self.cfg.topic, &self.cfg.brokers);
        let metadata = self.consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(|e| self.unreachable(e))?;
        let missing = || KafkaSetupError::MissingTopic { topic: topic.clone(), brokers: brokers.clone() };
        let found = metadata.topics().iter().find(|t| t.name() == topic).ok_or_else(missing)?;
        if found.error().is_some() || found.partitions().is_empty() {
            return Err(missing());
        }
        Ok(found.partitions().len() as i32)
    }

    /// `(low, high)` watermarks of partition `p`.
    pub fn watermark(&self, p: i32) -> Result<(i64, i64), KafkaSetupError> {
        self.consumer.fetch_watermarks(&self.cfg.topic, p, METADATA_TIMEOUT).map_err(|e| self.unreachable(e))
    }
}

/// The high watermark of each partition, from `(low, high)` pairs.
pub fn ends(watermarks: &HashMap<i32, (i64, i64)>) -> HashMap<i32, i64> {
    watermarks.iter().map(|(p, (_, hi))| (*p, *hi)).collect()
}

/// Parses `key=value` (the `-X` flag).
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got '{s}'")),
    }
}
