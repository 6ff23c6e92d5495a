//! Reading the trades topic: each worker's Kafka consumer ([`KafkaSource`]), partition
//! discovery ([`discover`]), how the job reads ([`ReadConfig`]), and partition queues read a
//! batch at a time ([`queue`]).

pub mod discover;
mod kafka;
pub mod queue;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::kafka::KafkaSetupError;
pub use kafka::KafkaSource;

/// How the job reads the topic, beyond where it starts.
#[derive(Clone, Debug)]
pub struct ReadConfig {
    /// Silence after which a partition stops holding the watermark back (`None`: never; right
    /// for a drain of a finite log).
    pub idle_timeout: Option<Duration>,
    /// Watermark alignment: how far (event time) a partition may run ahead of its worker's
    /// frontier before it is paused (`None`: never paused).
    pub max_drift: Option<Duration>,
    /// How often the topic's metadata is checked for added partitions (`None`: never).
    pub discovery: Option<Duration>,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            idle_timeout: None,
            max_drift: Some(Duration::from_millis(dataflows::source::DEFAULT_MAX_DRIFT_MS)),
            discovery: Some(Duration::from_secs(30)),
        }
    }
}

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
