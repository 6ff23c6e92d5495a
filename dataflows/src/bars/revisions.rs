//! Revisions: the state of every bar that can still change, and the rows its changes write.
//! Revision 0 of a bar is written when the frontier passes its window end; every later time at
//! which the bar changes (a late trade within the horizon) writes the next revision. At window
//! end + horizon no trade can change the bar again and its state is dropped, writing nothing.
//!
//! Each row leaves at a timely time fixed by the log alone: revision 0 at its window end (or,
//! for a bar made only of late trades, at the time of that change), revision n at the time of
//! the change that made it. What is output before a time is therefore a function of the log,
//! which a replay that must skip already-written output relies on.

use std::collections::{BTreeMap, HashMap};

use super::partials::expiry;
use super::{Bar, BarAcc, BarKey, BarsConfig};
use crate::Time;

/// What is known of one bar.
struct BarState {
    latest: BarAcc,
    /// Revision last written, `None` before revision 0.
    written: Option<u32>,
}

/// The live bars of a worker: a key index into slots that are reused once a bar expires.
///
/// Growing a hash table rehashes into a second table twice the size while the first is still
/// held; with the accumulators inline that transient was the worker's peak memory (hundreds
/// of MB at 10k symbols). Here the table holds only key and slot number, and the slots grow
/// by reallocation, which for large vectors the allocator does by remapping pages.
#[derive(Default)]
struct Live {
    index: HashMap<BarKey, u32>,
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

    fn remove(&mut self, key: &BarKey) {
        if let Some(slot) = self.index.remove(key) {
            self.free.push(slot);
        }
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

/// Bar rows with the timely time each leaves at.
pub(super) type Rows = Vec<(Time, (u8, Bar))>;

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

    fn row(&self, key: &BarKey, acc: &BarAcc, revision: u32) -> (u8, Bar) {
        (key.0, acc.finish(key.1.clone(), key.2, self.cfg.widths[key.0 as usize], revision))
    }

    /// Writes revision 0 of every bar whose window ended by `upto`, by window end then key.
    pub(super) fn write_due(&mut self, upto: i64, rows: &mut Rows) {
        while let Some(entry) = self.unwritten.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let (end, mut keys) = entry.remove_entry();
            keys.sort_unstable();
            for key in keys {
                if let Some(s) = self.state.get_mut(&key) {
                    s.written = Some(0);
                    let acc = s.latest.clone();
                    rows.push((end as Time, self.row(&key, &acc, 0)));
                }
            }
        }
    }

    /// Applies the partials of one completed time, in key order.
    pub(super) fn apply(&mut self, time: Time, partials: HashMap<BarKey, BarAcc>, rows: &mut Rows) {
        // Everything ending by `time` is complete: its revision 0 goes first.
        self.write_due(time as i64, rows);
        let mut partials: Vec<_> = partials.into_iter().collect();
        partials.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, partial) in partials {
            match self.state.get_mut(&key) {
                Some(s) => {
                    s.latest.merge(&partial);
                    if let Some(r) = s.written {
                        s.written = Some(r + 1);
                        let acc = s.latest.clone();
                        rows.push((time, self.row(&key, &acc, r + 1)));
                    }
                }
                None => {
                    let end = self.window_end(&key);
                    let written = if end <= time as i64 {
                        // A bar made only of late trades: its first version is revision 0.
                        rows.push((time, self.row(&key, &partial, 0)));
                        Some(0)
                    } else {
                        self.unwritten.entry(end).or_default().push(key.clone());
                        None
                    };
                    self.expiring.entry(expiry(&self.cfg, key.0, key.2)).or_default().push(key.clone());
                    self.state.insert(key, BarState { latest: partial, written });
                }
            }
        }
    }

    /// Drops the state of every bar that expires by `upto`: no tick at `upto` or later can
    /// change it (see [`expiry`]), and every earlier time has been applied.
    pub(super) fn expire(&mut self, upto: i64) {
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > upto {
                break;
            }
            for key in entry.remove() {
                self.state.remove(&key);
            }
        }
        self.state.shrink();
    }

    /// The earliest window end whose revision 0 is still to be written.
    pub(super) fn next_due(&self) -> Option<Time> {
        self.unwritten.first_key_value().map(|(end, _)| (*end).max(0) as Time)
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
        let mut rows = Rows::new();
        for minute in 0..100 {
            let time = minute * MIN;
            let mut partials = HashMap::new();
            for symbol in ["A", "B", "C"] {
                partials.insert((0, symbol.into(), time), partial(symbol, time + 1));
            }
            if minute >= 3 {
                // A late trade for "A" two windows back: its bar is written, so this revises it.
                partials.insert((0, "A".into(), time - 2 * MIN), partial("A", time - 2 * MIN + 7));
            }
            revisions.apply(time as Time, partials, &mut rows);
            revisions.write_due(time, &mut rows);
            revisions.expire(time);
            // Windows [t - 5m, t] of three symbols at most: older ones have expired.
            assert!(revisions.state.len() <= 3 * 7, "{} bars held at minute {minute}", revisions.state.len());
            assert!(revisions.expiring.values().map(Vec::len).sum::<usize>() == revisions.state.len());
        }
        let revised: Vec<_> = rows.iter().filter(|(_, (_, bar))| bar.revision == 1).collect();
        assert_eq!(revised.len(), 97);
        assert!(revised.iter().all(|(_, (_, bar))| bar.symbol == "A" && bar.trade_count == 2));
        // Every bar whose window has ended got its revision 0, once.
        assert_eq!(rows.iter().filter(|(_, (_, bar))| bar.revision == 0).count(), 3 * 99);
    }
}
