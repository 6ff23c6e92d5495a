//! The trade model: what a cleaned trade and a quarantined record carry through the dataflow.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::reason::Reason;

/// A ticker such as `AAPL` or `BINANCE:BTCUSDT`; stored inline (no allocation) up to 24 bytes.
pub type Symbol = CompactString;

/// Trade conditions (Finnhub's `c`): usually one to three short codes, kept inline.
pub type Conditions = SmallVec<[CompactString; 2]>;

/// A trade that passed cleaning, with its Kafka coordinates and lateness verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// Ticker symbol (`s`).
    pub symbol: Symbol,
    /// Price (`p`), finite and > 0.
    pub price: f64,
    /// Volume (`v`), finite and >= 0; fractional for crypto pairs.
    pub volume: f64,
    /// Event time (`t`), milliseconds since the Unix epoch.
    pub ts: i64,
    /// Trade conditions (`c`), `None` when absent or null.
    pub conditions: Option<Conditions>,
    /// Kafka partition the record was read from.
    pub partition: i32,
    /// Kafka offset of the record.
    pub offset: i64,
    /// Kafka timestamp (ingest receive time), milliseconds since the Unix epoch.
    pub ingest_ts: Option<i64>,
    /// True when the trade's window had closed (window end <= partition watermark) on arrival.
    pub late: bool,
}

impl Trade {
    /// The total order used for open/close ties: event time, then Kafka position.
    #[inline]
    pub fn order_key(&self) -> (i64, i32, i64) {
        (self.ts, self.partition, self.offset)
    }
}

/// A record that failed cleaning: the reason, a bounded copy of the payload, its Kafka position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Why the record was rejected.
    pub reason: Reason,
    /// The payload as (lossy) UTF-8, truncated to [`crate::clean::MAX_QUARANTINE_PAYLOAD`] bytes.
    pub payload: String,
    /// Kafka partition the record was read from.
    pub partition: i32,
    /// Kafka offset of the record.
    pub offset: i64,
    /// Kafka timestamp, milliseconds since the Unix epoch, when the broker had one.
    pub kafka_ts: Option<i64>,
    /// The record's event-time stamp in the dataflow (the partition's watermark window); used
    /// to place it in the lake when the Kafka timestamp is missing.
    pub time: u64,
}
