//! Gap records: ingest's statement that it received nothing for a symbol between two instants,
//! the part of the log's data contract that is not a trade.
//!
//! A gap record is a Kafka record with the header `stockflow-kind: gap/1` and a JSON object
//! value `{"s", "from", "to", "reason", "host"}` (times in ms since the epoch, `from < to`),
//! keyed by the symbol so it lands in that symbol's partition, ordered with its trades.
//! Consumers that do not know the header see a JSON object without the trade fields and
//! skip or reject it as they would any non-trade. A record whose header names another kind
//! or version is quarantined as `unknown_kind`; a `gap/1` record whose value breaks the rules
//! below as `bad_gap`; one whose `to` lies beyond its log timestamp plus the allowed skew as
//! `future_timestamp` (like a bad tick, it could otherwise flag bars far ahead).

use serde::{Deserialize, Serialize};

use crate::clean::{MAX_PAYLOAD, MAX_TS_MS, MIN_TS_MS, valid_symbol};
use crate::reason::Reason;
use crate::trade::Symbol;

/// Header naming what a record is; absent on trades (Finnhub's own payloads).
pub const KIND_HEADER: &str = "stockflow-kind";
/// The header value of a gap record in the format this module reads.
pub const GAP_KIND: &[u8] = b"gap/1";
/// Longest accepted `reason` or `host`, in bytes.
pub const MAX_LABEL_BYTES: usize = 255;

/// Why ingest was not receiving (the `reason` of a gap record ingest writes; other producers
/// may use other words, which are kept as given).
pub mod reasons {
    /// The connection closed or failed (refused reconnects, if any, extend the gap).
    pub const DISCONNECT: &str = "disconnect";
    /// The connection stayed open but went silent past the stale timeout.
    pub const STALE: &str = "stale";
}

/// The value of a gap record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapBody {
    /// The symbol nothing was received for.
    pub s: Symbol,
    /// Last instant data was received before the gap, ms since the epoch.
    pub from: i64,
    /// First instant data was received again, ms since the epoch.
    pub to: i64,
    /// Why (see [`reasons`]).
    pub reason: String,
    /// The ingest host that saw it.
    pub host: String,
}

impl GapBody {
    /// The record value, as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A gap read from the log: a row of the `gaps` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The record's value.
    pub body: GapBody,
    /// Kafka partition of the record.
    pub partition: i32,
    /// Kafka offset of the record.
    pub offset: i64,
    /// Kafka timestamp (when ingest produced it), ms since the epoch.
    pub kafka_ts: Option<i64>,
    /// True when every window it overlaps was beyond the revision horizon on arrival: it is
    /// stored, and flags no bar.
    pub beyond_horizon: bool,
}

/// What the bars need of a gap: its symbol and interval, and the partition's watermark when
/// it arrived (which windows it may still revise), like a trade's [`crate::bars::Tick`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapTick {
    /// Symbol.
    pub symbol: Symbol,
    /// Start, ms since the epoch (inclusive).
    pub from: i64,
    /// End, ms since the epoch (exclusive).
    pub to: i64,
    /// `pw` of the partition when the record arrived.
    pub watermark: Option<i64>,
}

/// What a record is, by its kind header (`None`: no header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A trade payload (no kind header).
    Trade,
    /// A gap record in the format of this module.
    Gap,
}

impl Kind {
    /// Classifies a record by the value of its [`KIND_HEADER`].
    pub fn of(header: Option<&[u8]>) -> Result<Kind, Reason> {
        match header {
            None => Ok(Kind::Trade),
            Some(GAP_KIND) => Ok(Kind::Gap),
            Some(_) => Err(Reason::UnknownKind),
        }
    }
}

/// Reads a gap record's value: the body, or why it is quarantined.
pub fn parse_gap(payload: Option<&[u8]>, log_ts: Option<i64>, max_skew_ms: u64) -> Result<GapBody, Reason> {
    let bytes = match payload {
        Some(b) if !b.is_empty() && b.len() <= MAX_PAYLOAD => b,
        _ => return Err(Reason::BadGap),
    };
    let body: GapBody = serde_json::from_slice(bytes).map_err(|_| Reason::BadGap)?;
    let in_range = |t: i64| (MIN_TS_MS..MAX_TS_MS).contains(&t);
    let label = |s: &str| !s.is_empty() && s.len() <= MAX_LABEL_BYTES && !s.chars().any(char::is_control);
    if !valid_symbol(&body.s)
        || !in_range(body.from)
        || !in_range(body.to)
        || body.from >= body.to
        || !label(&body.reason)
        || !label(&body.host)
    {
        return Err(Reason::BadGap);
    }
    match log_ts {
        Some(at) if body.to > at.saturating_add(max_skew_ms.min(i64::MAX as u64) as i64) => {
            Err(Reason::FutureTimestamp)
        }
        _ => Ok(body),
    }
}

/// How much of `[start, end)` the intervals cover, counting overlaps once.
pub fn covered_ms(start: i64, end: i64, intervals: impl IntoIterator<Item = (i64, i64)>) -> u64 {
    let mut clipped: Vec<(i64, i64)> =
        intervals.into_iter().map(|(f, t)| (f.max(start), t.min(end))).filter(|(f, t)| f < t).collect();
    clipped.sort_unstable();
    let (mut total, mut reach) = (0i64, i64::MIN);
    for (f, t) in clipped {
        let f = f.max(reach);
        if t > f {
            total += t - f;
            reach = t;
        }
    }
    total as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_763_994_600_000;

    fn body(from: i64, to: i64) -> GapBody {
        GapBody { s: "AAPL".into(), from, to, reason: reasons::DISCONNECT.into(), host: "ingest-1".into() }
    }

    #[test]
    fn a_gap_record_round_trips_and_its_rules_name_the_reason() {
        let good = body(T0, T0 + 4_000);
        assert_eq!(parse_gap(Some(&good.to_json()), Some(T0 + 4_000), 60_000), Ok(good));
        for bad in [body(T0, T0), body(T0 + 1, T0), body(0, T0), GapBody { s: "".into(), ..body(T0, T0 + 1) }] {
            assert_eq!(parse_gap(Some(&bad.to_json()), None, 60_000), Err(Reason::BadGap), "{bad:?}");
        }
        for payload in [&b""[..], b"{}", b"[1,2]", b"{\"s\":\"A\",\"p\":1,\"v\":1,\"t\":1}", b"\xff"] {
            assert_eq!(parse_gap(Some(payload), None, 60_000), Err(Reason::BadGap));
        }
        assert_eq!(parse_gap(None, None, 60_000), Err(Reason::BadGap));
        let ahead = body(T0, T0 + 120_000);
        assert_eq!(parse_gap(Some(&ahead.to_json()), Some(T0), 60_000), Err(Reason::FutureTimestamp));
    }

    #[test]
    fn only_the_known_kind_is_a_gap() {
        assert_eq!(Kind::of(None), Ok(Kind::Trade));
        assert_eq!(Kind::of(Some(b"gap/1")), Ok(Kind::Gap));
        assert_eq!(Kind::of(Some(b"gap/2")), Err(Reason::UnknownKind));
        assert_eq!(Kind::of(Some(b"")), Err(Reason::UnknownKind));
    }

    #[test]
    fn coverage_counts_overlaps_once_and_clips_to_the_window() {
        assert_eq!(covered_ms(0, 60, []), 0);
        assert_eq!(covered_ms(0, 60, [(10, 20)]), 10);
        assert_eq!(covered_ms(0, 60, [(-50, 20), (50, 500)]), 30);
        assert_eq!(covered_ms(0, 60, [(10, 30), (20, 40), (25, 26)]), 30);
        assert_eq!(covered_ms(0, 60, [(60, 70), (-10, 0)]), 0);
    }
}
