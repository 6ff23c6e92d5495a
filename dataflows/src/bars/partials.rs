//! Window partials: each tick folded into the partial bar of every window it may still change,
//! grouped by the timely time it arrived at.
//!
//! Pre-aggregating per time means the bar state sees one merge per bar per distinct arrival
//! time (on time, or each later revision) rather than one per trade.

use std::collections::BTreeMap;

use super::{BarAcc, BarsConfig, KeyMap, Tick};
use crate::Time;

/// The bars a tick may still change: for each width, its window if the window's end is past
/// `pw - horizon` at arrival (and the tick's time is before the window's expiry).
fn admit(cfg: &BarsConfig, tick: &Tick, time: Time, mut each: impl FnMut(u8, i64)) {
    for (i, &width) in cfg.widths.iter().enumerate() {
        let w = width as i64;
        let start = tick.ts - tick.ts.rem_euclid(w);
        let end = start + w;
        let revisable = tick.watermark.is_none_or(|pw| end > pw - cfg.horizon_ms as i64);
        if revisable && (time as i64) < expiry(cfg, i as u8, start) {
            each(i as u8, start);
        }
    }
}

/// When the bar of width index `width` starting at `start` can no longer change: its window end
/// plus the revision horizon. No tick at this time or later is admitted to it.
pub(super) fn expiry(cfg: &BarsConfig, width: u8, start: i64) -> i64 {
    start + cfg.widths[width as usize] as i64 + cfg.horizon_ms as i64
}

/// Partial bars still accumulating, by the time their ticks arrived at.
pub(super) struct Partials {
    cfg: BarsConfig,
    pending: BTreeMap<Time, KeyMap<BarAcc>>,
}

impl Partials {
    pub(super) fn new(cfg: BarsConfig) -> Self {
        Partials { cfg, pending: BTreeMap::new() }
    }

    /// Folds `tick`, which arrived at `time`, into the partials it may still change.
    pub(super) fn add(&mut self, time: Time, tick: &Tick) {
        let mut windows = smallvec::SmallVec::<[(u8, i64); 4]>::new();
        admit(&self.cfg, tick, time, |width, start| windows.push((width, start)));
        if windows.is_empty() {
            return;
        }
        let bars = self.pending.entry(time).or_default();
        for (width, start) in windows {
            bars.entry((width, tick.symbol.clone(), start))
                .and_modify(|acc| acc.add(tick))
                .or_insert_with(|| BarAcc::new(tick));
        }
    }

    /// The partials of the earliest time before `frontier` (`None`: the input has ended).
    pub(super) fn pop_before(&mut self, frontier: Option<Time>) -> Option<(Time, KeyMap<BarAcc>)> {
        let entry = self.pending.first_entry()?;
        if frontier.is_some_and(|f| *entry.key() >= f) {
            return None;
        }
        Some(entry.remove_entry())
    }

    /// The earliest time with partials still to apply.
    pub(super) fn first_time(&self) -> Option<Time> {
        self.pending.first_key_value().map(|(t, _)| *t)
    }
}
