//! Revisions: the state of every bar that can still change, and the changes to the bar
//! collection it makes. A bar enters the collection when the frontier passes its window end;
//! every later time at which it changes (a late trade within the horizon) retracts the old
//! version and inserts the new one. At window end + horizon no trade can change the bar again:
//! its state is dropped and its last version retracted, so everything downstream of the
//! collection (the gap join's arrangements) forgets it too.
//!
//! Each change happens at a timely time fixed by the log alone: a bar's entry at its window's
//! last instant (`end - 1`; or, for a bar made only of late trades, at the time of that change), a revision at
//! the time of the change that made it, the retraction at its expiry. What is output before a
//! time is therefore a function of the log, which a replay that must skip already-written
//! output relies on.

use std::collections::BTreeMap;

use super::partials::expiry;
use super::{BarAcc, BarKey, BarsConfig, KeyMap};
use crate::Time;

/// What is known of one bar.
struct BarState {
    latest: BarAcc,
    /// Whether the bar is in the collection (its window has ended).
    written: bool,
}

/// The live bars of a worker: a key index into slots that are reused once a bar expires.
///
/// Growing a hash table rehashes into a second table twice the size while the first is still
/// held; with the accumulators inline that transient was the worker's peak memory (hundreds
/// of MB at 10k symbols). Here the table holds only key and slot number, and the slots grow
/// by reallocation, which for large vectors the allocator does by remapping pages.
#[derive(Default)]
struct Live {
    index: KeyMap<u32>,
    slots: Vec<BarState>,
    free: Vec<u32>,
}

impl Live {
    fn get_mut(&mut self, key: &BarKey) -> Option<&mut BarState> {
        let slot = *self.index.get(key)?;
        self.slots.get_mut(slot as usize)
    }

    fn insert(&mut self, key: BarKey, state: BarState) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = state;
                slot
            }
            None => {
                self.slots.push(state);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
    }

    /// Removes a bar, giving its state back (its slot keeps a copy until reused).
    fn take(&mut self, key: &BarKey) -> Option<BarState> {
        let slot = self.index.remove(key)?;
        self.free.push(slot);
        let state = &self.slots[slot as usize];
        Some(BarState { latest: state.latest.clone(), written: state.written })
    }

    /// Gives back memory after a burst of bars has expired.
    fn shrink(&mut self) {
        if self.index.capacity() > 4 * self.index.len().max(1024) {
            self.index.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

/// Changes to the bar collection: `((key, state), time, diff)`.
pub(super) type Updates = Vec<((BarKey, BarAcc), Time, isize)>;

/// The live bars of one worker and their revision numbering.
pub(super) struct Revisions {
    cfg: BarsConfig,
    state: Live,
    /// Bars whose revision 0 is still to be written, by window end.
    unwritten: BTreeMap<i64, Vec<BarKey>>,
    /// Every live bar, by the time its state can be dropped.
    expiring: BTreeMap<i64, Vec<BarKey>>,
}

impl Revisions {
    pub(super) fn new(cfg: BarsConfig) -> Self {
        Revisions { cfg, state: Live::default(), unwritten: BTreeMap::new(), expiring: BTreeMap::new() }
    }

    fn window_end(&self, key: &BarKey) -> i64 {
        key.2 + self.cfg.widths[key.0 as usize] as i64
    }

    /// Inserts every bar whose window ended by `upto` into the collection, at the window's last
    /// instant (`end - 1`): it holds the ticks of every time before its end, and a late trade
    /// placed at the end itself (a tick time, a multiple of the base window) then revises it
    /// rather than merging into its first version.
    pub(super) fn write_due(&mut self, upto: i64, rows: &mut Updates) {
        while let Some(entry) = self.unwritten.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let (end, mut keys) = entry.remove_entry();
            keys.sort_unstable();
            for key in keys {
                if let Some(s) = self.state.get_mut(&key) {
                    s.written = true;
                    rows.push(((key, s.latest.clone()), (end - 1).max(0) as Time, 1));
                }
            }
        }
    }

    /// Applies the partials of one completed time, in key order.
    pub(super) fn apply(&mut self, time: Time, partials: KeyMap<BarAcc>, rows: &mut Updates) {
        // Everything ending by `time` is complete: its revision 0 goes first.
        self.write_due(time as i64, rows);
        let mut partials: Vec<_> = partials.into_iter().collect();
        partials.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, partial) in partials {
            match self.state.get_mut(&key) {
                Some(s) => {
                    if s.written {
                        rows.push(((key.clone(), s.latest.clone()), time, -1));
                    }
                    s.latest.merge(&partial);
                    if s.written {
                        rows.push(((key, s.latest.clone()), time, 1));
                    }
                }
                None => {
                    let end = self.window_end(&key);
                    let written = if end <= time as i64 {
                        // A bar made only of late trades enters the collection at once.
                        rows.push(((key.clone(), partial.clone()), time, 1));
                        true
                    } else {
                        self.unwritten.entry(end).or_default().push(key.clone());
                        false
                    };
                    self.expiring.entry(expiry(&self.cfg, key.0, key.2)).or_default().push(key.clone());
                    self.state.insert(key, BarState { latest: partial, written });
                }
            }
        }
    }

    /// Drops the state of every bar that expires by `upto`, retracting it at its expiry: no
    /// tick at that time or later can change it (see [`expiry`]), and every earlier time has
    /// been applied.
    pub(super) fn expire(&mut self, upto: i64, rows: &mut Updates) {
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let (at, mut keys) = entry.remove_entry();
            keys.sort_unstable();
            for key in keys {
                if let Some(s) = self.state.take(&key) {
                    if s.written {
                        rows.push(((key, s.latest), at.max(0) as Time, -1));
                    }
                }
            }
        }
        self.state.shrink();
    }

    /// The earliest time a live bar is retracted at.
    pub(super) fn next_expiry(&self) -> Option<Time> {
        self.expiring.first_key_value().map(|(at, _)| (*at).max(0) as Time)
    }

    /// The earliest time a bar still to enter the collection enters at.
    pub(super) fn next_due(&self) -> Option<Time> {
        self.unwritten.first_key_value().map(|(end, _)| (*end - 1).max(0) as Time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bars::Tick;

    fn partial(symbol: &str, ts: i64) -> BarAcc {
        let tick =
            Tick { symbol: symbol.into(), ts, partition: 0, offset: ts, price: 10.0, volume: 1.0, watermark: None };
        BarAcc::new(&tick)
    }

    #[test]
    fn state_is_bounded_by_the_horizon_and_late_partials_revise() {
        const MIN: i64 = 60_000;
        let cfg = BarsConfig { widths: vec![MIN as u64], horizon_ms: 5 * MIN as u64 };
        let mut revisions = Revisions::new(cfg);
        let mut rows = Updates::new();
        for minute in 0..100 {
            let time = minute * MIN;
            let mut partials = KeyMap::default();
            for symbol in ["A", "B", "C"] {
                partials.insert((0, symbol.into(), time), partial(symbol, time + 1));
            }
            if minute >= 3 {
                // A late trade for "A" two windows back: its bar is written, so this revises it.
                partials.insert((0, "A".into(), time - 2 * MIN), partial("A", time - 2 * MIN + 7));
            }
            revisions.apply(time as Time, partials, &mut rows);
            revisions.write_due(time, &mut rows);
            revisions.expire(time, &mut rows);
            // Windows [t - 5m, t] of three symbols at most: older ones have expired.
            assert!(revisions.state.len() <= 3 * 7, "{} bars held at minute {minute}", revisions.state.len());
            assert!(revisions.expiring.values().map(Vec::len).sum::<usize>() == revisions.state.len());
        }
        // Each late partial retracts the written bar and inserts its revision.
        let revised: Vec<_> = rows.iter().filter(|((_, acc), _, diff)| *diff > 0 && acc.count() == 2).collect();
        assert_eq!(revised.len(), 97);
        assert!(revised.iter().all(|(((_, symbol, _), _), _, _)| symbol == "A"));
        // Every bar whose window has ended entered the collection once, and every expired one
        // left it: what remains are the bars still live.
        let inserted = rows.iter().filter(|(_, _, diff)| *diff > 0).count();
        assert_eq!(inserted, 3 * 99 + 97);
        let mut net: std::collections::HashMap<(BarKey, BarAcc), isize> = std::collections::HashMap::new();
        for (data, _, diff) in &rows {
            *net.entry(data.clone()).or_default() += diff;
        }
        net.retain(|_, d| *d != 0);
        assert!(net.values().all(|d| *d == 1));
        assert_eq!(net.len(), revisions.state.len() - 3, "live bars, less the three of the last window");
    }
}
