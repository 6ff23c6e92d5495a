//! Gaps in what ingest received: from the feed's last known instant before a connection was
//! lost to the first trade after it resubscribed, written as gap records
//! ([`dataflows::gap`]) for every subscribed symbol.
//!
//! Intervals are placed in the feed's event time, the time the bars are windowed by: the gap
//! starts at the newest trade time received, advanced by the wall time the connection was
//! still heard from afterwards (pings, quiet frames), and ends at the earliest trade after
//! the reconnect that is newer than that start (late prints the feed delivers first do not
//! end it). Receive times alone would misplace the flags by
//! any offset between ingest's clock and the exchange's (and in a replayed or simulated feed,
//! by the whole distance between the two clocks).
//!
//! A trade dated more than the job's default clock skew after it was received is a bad tick
//! (the job quarantines it as `future_timestamp`) and is not the feed's position: one 2099
//! print would otherwise start every later gap in 2099, where no trade could close it.

use dataflows::gap::{GapBody, reasons};
use dataflows::time::DEFAULT_MAX_SKEW_MS;

/// Why a connection was lost, as a gap record's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Closed, broken, or refused on reconnect.
    Disconnect,
    /// Silent for the stale timeout.
    Stale,
}

impl Loss {
    fn reason(self) -> &'static str {
        match self {
            Loss::Disconnect => reasons::DISCONNECT,
            Loss::Stale => reasons::STALE,
        }
    }
}

/// Follows the feed's position in event time across connections.
#[derive(Debug, Default)]
pub struct GapTracker {
    /// Newest trade time seen, and the receive time of the frame that carried it.
    newest: Option<(i64, i64)>,
    /// Receive time of the last frame of any kind.
    heard: Option<i64>,
    /// A loss not yet closed by a trade frame: where the gap starts, and why.
    open: Option<(i64, Loss)>,
}

/// A gap to write for every subscribed symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// Start, event-time ms.
    pub from: i64,
    /// End (exclusive), event-time ms.
    pub to: i64,
    /// Why.
    pub reason: &'static str,
}

impl GapTracker {
    /// Notes a frame received at `at` (ms since the epoch) carrying trades at `times` (empty
    /// for a frame without trades). Returns the gap the frame closes: the first trade newer
    /// than the gap's start ends it.
    pub fn frame(&mut self, at: i64, times: &[i64]) -> Option<Interval> {
        self.heard = Some(self.heard.map_or(at, |h| h.max(at)));
        let horizon = at.saturating_add(DEFAULT_MAX_SKEW_MS as i64);
        let sane = || times.iter().copied().filter(move |t| *t <= horizon);
        let greatest = sane().max()?;
        let closed = match self.open {
            Some((from, loss)) => match sane().filter(|t| *t > from).min() {
                Some(to) => {
                    self.open = None;
                    Some(Interval { from, to, reason: loss.reason() })
                }
                None => None,
            },
            None => None,
        };
        if self.newest.is_none_or(|(t, _)| greatest >= t) {
            self.newest = Some((greatest, at));
        }
        closed
    }

    /// Notes that the connection was lost. A loss before any trade was received opens no gap
    /// (there is no known instant to start it from); a second loss before the feed resumed
    /// (a refused or failed reconnect) extends the gap already open.
    pub fn lost(&mut self, loss: Loss) {
        if self.open.is_some() {
            return;
        }
        if let (Some((t, received)), Some(heard)) = (self.newest, self.heard) {
            self.open = Some((t.saturating_add((heard - received).max(0)), loss));
        }
    }
}

/// The gap records of `interval` for every symbol, as ingest on `host` writes them.
pub fn records(interval: &Interval, symbols: &[String], host: &str) -> Vec<GapBody> {
    symbols
        .iter()
        .map(|s| GapBody {
            s: s.as_str().into(),
            from: interval.from,
            to: interval.to,
            reason: interval.reason.to_owned(),
            host: host.to_owned(),
        })
        .collect()
}

/// This machine's name, for the `host` of gap records: `$HOSTNAME`, else the kernel's.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_runs_from_the_last_heard_instant_to_the_first_trade_after() {
        let mut g = GapTracker::default();
        assert_eq!(g.frame(1_000, &[500, 900]), None);
        // A ping 300 ms later: the feed was alive until event time 900 + 300.
        assert_eq!(g.frame(1_300, &[]), None);
        g.lost(Loss::Stale);
        // Pings after the loss do not close it, nor late prints; a newer trade does.
        assert_eq!(g.frame(9_000, &[]), None);
        assert_eq!(g.frame(9_050, &[700, 1_100]), None);
        assert_eq!(g.frame(9_100, &[400, 8_100, 8_000]), Some(Interval { from: 1_200, to: 8_000, reason: "stale" }));
        // Closed once.
        assert_eq!(g.frame(9_200, &[8_200, 8_300]), None);
    }

    #[test]
    fn no_gap_before_the_first_trade_or_when_the_feed_resumes_behind() {
        let mut g = GapTracker::default();
        g.lost(Loss::Disconnect);
        assert_eq!(g.frame(100, &[50, 60]), None, "nothing known before the first trade");
        g.lost(Loss::Disconnect);
        g.lost(Loss::Stale);
        let gap = g.frame(300, &[90, 95]).expect("a gap");
        assert_eq!((gap.from, gap.to, gap.reason), (60, 90, "disconnect"), "the first loss names it: {gap:?}");
    }

    #[test]
    fn a_bad_tick_neither_starts_nor_ends_a_gap() {
        let year_2099 = 4_102_444_800_000;
        let mut g = GapTracker::default();
        assert_eq!(g.frame(1_000, &[900, year_2099]), None);
        g.lost(Loss::Disconnect);
        // Another bad tick after the reconnect does not close the gap; the next sane trade does.
        assert_eq!(g.frame(5_000, &[year_2099 + 1]), None);
        assert_eq!(g.frame(5_100, &[4_000]), Some(Interval { from: 900, to: 4_000, reason: "disconnect" }));
    }
}
