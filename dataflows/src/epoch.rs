//! Commit points and publish epochs: which commit makes an output row visible.
//!
//! Commit points are the multiples of the commit interval in event time. Each output table
//! has a publish interval, a multiple of the commit interval: a row at timely time `t` is
//! published by the commit at `epoch(t)`, the first multiple of its table's interval above
//! `t`. Until then its file stays open across commit points, so a table gets one file per
//! publish interval instead of one per commit. The sink (which file a row goes to), the
//! committer (which points it commits) and the source (what a restart must emit again, and
//! how far back it replays) all read the same [`Epochs`].

use serde::{Deserialize, Serialize};

use crate::Time;

/// An output table kind, as far as publishing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// The `trades` table.
    Trades,
    /// The `quarantine` table.
    Quarantine,
    /// The `bars_<w>` tables.
    Bars,
    /// The `gaps` table: published with the quarantine (both are small side tables of the
    /// log, read together when judging data quality).
    Gaps,
}

/// The commit interval and each table's publish interval, event-time ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epochs {
    /// Between commit points.
    pub commit_ms: u64,
    /// Between publishes of `trades`.
    pub trades_ms: u64,
    /// Between publishes of `quarantine`.
    pub quarantine_ms: u64,
    /// Between publishes of the bar tables.
    pub bars_ms: u64,
}

impl Default for Epochs {
    /// Every table published at every commit, once a minute.
    fn default() -> Self {
        Epochs::every_commit(60_000)
    }
}

impl Epochs {
    /// Every table published at every commit point.
    pub fn every_commit(commit_ms: u64) -> Self {
        Epochs { commit_ms, trades_ms: commit_ms, quarantine_ms: commit_ms, bars_ms: commit_ms }
    }

    /// The publish interval of `output`.
    pub fn interval(&self, output: Output) -> u64 {
        match output {
            Output::Trades => self.trades_ms,
            Output::Quarantine | Output::Gaps => self.quarantine_ms,
            Output::Bars => self.bars_ms,
        }
        .max(1)
    }

    /// The commit point that publishes a row of `output` at timely time `t`.
    #[inline]
    pub fn epoch(&self, output: Output, t: Time) -> Time {
        next_multiple(t, self.interval(output))
    }

    /// Once commit `commit` is stored, every row of `output` with a time below this is in
    /// the lake, and no row at or above it.
    #[inline]
    pub fn published_below(&self, output: Output, commit: Time) -> Time {
        if commit == Time::MAX {
            return Time::MAX; // a drain's final commit publishes everything
        }
        commit - commit % self.interval(output)
    }

    /// The greatest commit point at or below `frontier`.
    pub fn point(&self, frontier: Time) -> Time {
        frontier - frontier % self.commit_ms.max(1)
    }

    /// Checks that every publish interval is a whole number of commit intervals, so every
    /// epoch is a commit point.
    pub fn validate(&self) -> Result<(), String> {
        if self.commit_ms == 0 {
            return Err("the commit interval must be positive".into());
        }
        for (name, ms) in [("trades", self.trades_ms), ("quarantine", self.quarantine_ms), ("bars", self.bars_ms)] {
            if ms == 0 || ms % self.commit_ms != 0 {
                return Err(format!(
                    "the {name} publish interval ({ms} ms) must be a positive multiple of the commit interval ({} ms)",
                    self.commit_ms
                ));
            }
        }
        Ok(())
    }
}

/// The first multiple of `interval` above `t`.
#[inline]
fn next_multiple(t: Time, interval: u64) -> Time {
    (t / interval).saturating_add(1).saturating_mul(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_row_is_published_by_the_first_epoch_above_it() {
        let e = Epochs { commit_ms: MIN, trades_ms: HOUR, quarantine_ms: HOUR, bars_ms: MIN };
        assert_eq!(e.epoch(Output::Trades, 0), HOUR);
        assert_eq!(e.epoch(Output::Trades, HOUR - 1), HOUR);
        assert_eq!(e.epoch(Output::Trades, HOUR), 2 * HOUR);
        assert_eq!(e.epoch(Output::Bars, HOUR + 1), HOUR + MIN);
        assert_eq!(e.epoch(Output::Trades, Time::MAX), Time::MAX);
    }

    #[test]
    fn published_below_agrees_with_epoch() {
        let e = Epochs { commit_ms: MIN, trades_ms: HOUR, quarantine_ms: 5 * MIN, bars_ms: MIN };
        for output in [Output::Trades, Output::Quarantine, Output::Bars] {
            for commit in (0..3 * HOUR).step_by(MIN as usize) {
                let below = e.published_below(output, commit);
                for t in [below.saturating_sub(1), below, commit.saturating_sub(1), commit] {
                    // Published by `commit` exactly when its epoch is at or below it.
                    assert_eq!(t < below, e.epoch(output, t) <= commit, "{output:?} t={t} commit={commit}");
                }
            }
            assert_eq!(e.published_below(output, Time::MAX), Time::MAX);
        }
    }

    #[test]
    fn publish_intervals_must_be_whole_commit_intervals() {
        let e = Epochs { commit_ms: MIN, trades_ms: 90_000, quarantine_ms: HOUR, bars_ms: MIN };
        assert!(e.validate().unwrap_err().contains("trades"));
        assert!(Epochs { trades_ms: HOUR, ..e }.validate().is_ok());
        assert!(Epochs::every_commit(0).validate().is_err());
    }
}
