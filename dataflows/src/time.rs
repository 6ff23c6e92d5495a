//! Event time: tumbling windows, the per-partition watermark and the timely time of a record.
//!
//! The model (docs/architecture.md#time-model, with a worked example), for one Kafka partition: `pw(o)` is the largest event time of the valid
//! trades before offset `o`, minus the allowed lateness. A trade is *late* when its window has
//! ended by then (`window_end <= pw(o)`). A record's timely time is
//! `max(window_start(t), floor_W(pw(o)))`, so the source can hold its capability at the least
//! `floor_W(pw)` of its partitions and the dataflow frontier *is* the watermark. Everything here
//! depends only on the partition's own log, which is what makes results independent of worker
//! count, interleaving and restarts.

use serde::{Deserialize, Serialize};

/// Timely timestamp of every stockflow dataflow: event time in milliseconds since the Unix
/// epoch, as the time model defines it (a record's window start or its partition's
/// watermark window, see [`PartitionClock`]).
pub type Time = u64;

/// Window width, allowed lateness and the clock skew a trade may have, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeConfig {
    /// Tumbling window width `W`, aligned to the Unix epoch (UTC).
    pub window_ms: u64,
    /// Allowed lateness `L`: how far event time may run backwards before trades count as late.
    pub lateness_ms: u64,
    /// How far a trade's time may lie after its record's log timestamp before it is a bad tick
    /// (`future_timestamp`) that never reaches the watermark.
    #[serde(default = "default_max_skew")]
    pub max_skew_ms: u64,
}

/// One minute: far beyond NTP drift and exchange clock offsets (milliseconds to seconds),
/// so no genuine trade is refused, while one bad tick can push a partition's watermark at
/// most a minute past the wall clock of ingest, about one window of late-marked trades.
pub const DEFAULT_MAX_SKEW_MS: u64 = 60_000;

fn default_max_skew() -> u64 {
    DEFAULT_MAX_SKEW_MS
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig { window_ms: 60_000, lateness_ms: 5_000, max_skew_ms: DEFAULT_MAX_SKEW_MS }
    }
}

impl TimeConfig {
    /// Start of the window containing `ts`.
    #[inline]
    pub fn window_start(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.window_ms as i64)
    }

    /// End (exclusive) of the window containing `ts`.
    #[inline]
    pub fn window_end(&self, ts: i64) -> i64 {
        self.window_start(ts) + self.window_ms as i64
    }

    /// `floor_W(pw)` as a timely time; times before the epoch (or no watermark) map to 0.
    #[inline]
    pub fn floor_time(&self, watermark: Option<i64>) -> Time {
        match watermark {
            Some(pw) if pw > 0 => self.window_start(pw) as Time,
            _ => 0,
        }
    }
}

/// The watermark state of one Kafka partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Largest event time of a valid trade seen so far, if any.
    max_event: Option<i64>,
    /// Least timely time of the partition's records from now on, beyond its watermark: raised
    /// when the worker's frontier moved past an idle partition, and at a restart's resume
    /// offset. Raises are logged with their offsets, so a replay places records identically.
    #[serde(default)]
    floor: Time,
}

/// How the clock placed one valid trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The record's timely time.
    pub time: Time,
    /// Whether the trade's window had already closed.
    pub late: bool,
}

impl PartitionClock {
    /// A clock that has seen nothing: its watermark is minus infinity.
    pub const fn new() -> Self {
        PartitionClock { max_event: None, floor: 0 }
    }

    /// A clock resumed at a known watermark (from a commit record).
    pub fn with_watermark(cfg: &TimeConfig, watermark: Option<i64>) -> Self {
        PartitionClock { max_event: watermark.map(|pw| pw + cfg.lateness_ms as i64), floor: 0 }
    }

    /// Raises the least time of the partition's records to `floor` (never lowers it).
    #[inline]
    pub fn raise_floor(&mut self, floor: Time) {
        self.floor = self.floor.max(floor);
    }

    /// `pw`: largest event time seen minus the lateness, `None` while nothing was seen.
    #[inline]
    pub fn watermark(&self, cfg: &TimeConfig) -> Option<i64> {
        self.max_event.map(|m| m - cfg.lateness_ms as i64)
    }

    /// The least timely time this partition can still produce: `floor_W(pw)`, or its raised
    /// floor.
    #[inline]
    pub fn frontier(&self, cfg: &TimeConfig) -> Time {
        cfg.floor_time(self.watermark(cfg)).max(self.floor)
    }

    /// Places a valid trade with event time `ts` (using the watermark *before* it), then
    /// advances the watermark past it.
    #[inline]
    pub fn place(&mut self, cfg: &TimeConfig, ts: i64) -> Placement {
        let pw = self.watermark(cfg);
        let late = pw.is_some_and(|pw| cfg.window_end(ts) <= pw);
        let time = (cfg.window_start(ts).max(0) as Time).max(cfg.floor_time(pw)).max(self.floor);
        self.max_event = Some(self.max_event.map_or(ts, |m| m.max(ts)));
        Placement { time, late }
    }
}

impl Default for PartitionClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn windows_align_to_the_epoch() {
        let cfg = TimeConfig::default();
        assert_eq!(cfg.window_start(0), 0);
        assert_eq!(cfg.window_start(59_999), 0);
        assert_eq!(cfg.window_start(60_000), 60_000);
        assert_eq!(cfg.window_end(60_000), 120_000);
        assert_eq!(cfg.window_start(-1), -60_000);
    }

    #[test]
    fn first_trade_is_on_time_at_its_window() {
        let cfg = TimeConfig::default();
        let mut clock = PartitionClock::new();
        assert_eq!(clock.frontier(&cfg), 0);
        let p = clock.place(&cfg, 10 * MIN + 30_000);
        assert_eq!(p, Placement { time: (10 * MIN) as Time, late: false });
        assert_eq!(clock.watermark(&cfg), Some(10 * MIN + 25_000));
        assert_eq!(clock.frontier(&cfg), (10 * MIN) as Time);
    }

    #[test]
    fn lateness_keeps_a_window_open_past_its_end() {
        let cfg = TimeConfig::default();
        let mut clock = PartitionClock::new();
        clock.place(&cfg, 11 * MIN + 4_000); // pw = 10m59s: window [10m, 11m) still open
        let p = clock.place(&cfg, 10 * MIN + 59_999);
        assert_eq!(p, Placement { time: (10 * MIN) as Time, late: false });
        clock.place(&cfg, 11 * MIN + 5_000); // pw = 11m exactly: [10m, 11m) has ended
        let p = clock.place(&cfg, 10 * MIN + 59_999);
        assert_eq!(p, Placement { time: (11 * MIN) as Time, late: true });
    }

    #[test]
    fn out_of_order_trades_do_not_move_the_watermark_back() {
        let cfg = TimeConfig::default();
        let mut clock = PartitionClock::new();
        clock.place(&cfg, 20 * MIN);
        clock.place(&cfg, 19 * MIN);
        assert_eq!(clock.watermark(&cfg), Some(20 * MIN - 5_000));
    }

    #[test]
    fn a_raised_floor_delays_records_but_not_lateness() {
        let cfg = TimeConfig::default();
        let mut clock = PartitionClock::new();
        clock.place(&cfg, 10 * MIN);
        clock.raise_floor((30 * MIN) as Time);
        clock.raise_floor((20 * MIN) as Time);
        assert_eq!(clock.frontier(&cfg), (30 * MIN) as Time);
        let p = clock.place(&cfg, 12 * MIN);
        assert_eq!(p, Placement { time: (30 * MIN) as Time, late: false });
    }

    #[test]
    fn resumed_clock_has_the_same_watermark() {
        let cfg = TimeConfig::default();
        let mut clock = PartitionClock::new();
        clock.place(&cfg, 7 * MIN + 123);
        let resumed = PartitionClock::with_watermark(&cfg, clock.watermark(&cfg));
        assert_eq!(resumed, clock);
        assert_eq!(PartitionClock::with_watermark(&cfg, None), PartitionClock::new());
    }
}
