//! Revisions: the changes of the bars collection turned into rows. Revision 0 of a bar is
//! written when the frontier passes its window end; every later time at which the bar changes
//! (a late trade within the horizon) writes the next revision. A bar going to empty is the
//! expiry of its state, not a change, and writes nothing.
//!
//! Each row leaves at a timely time fixed by the log alone: revision 0 at its window end (or,
//! for a bar made only of late trades, at the time of that change), revision n at the time of
//! the change that made it. What is output before a time is therefore a function of the log,
//! which a replay that must skip already-written output relies on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use differential_dataflow::VecCollection;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use super::{Bar, BarAcc, BarKey, BarsConfig};
use crate::Time;

/// What is known of one bar.
struct BarState {
    latest: BarAcc,
    /// Revision last written, `None` before revision 0.
    written: Option<u32>,
}

/// The net change of one bar at one time: its new value (if any) and the summed weight.
type Change = (Option<BarAcc>, isize);

/// Revision numbering, apart from the operator plumbing.
struct Revisions {
    widths: Vec<u64>,
    state: HashMap<BarKey, BarState>,
    /// Bars whose revision 0 is still to be written, by window end.
    unwritten: BTreeSet<(i64, BarKey)>,
}

impl Revisions {
    fn window_end(&self, key: &BarKey) -> i64 {
        key.2 + self.widths[key.0 as usize] as i64
    }

    fn row(&self, key: &BarKey, acc: &BarAcc, revision: u32) -> (u8, Bar) {
        (key.0, acc.finish(key.1.clone(), key.2, self.widths[key.0 as usize], revision))
    }

    /// Writes revision 0 of every bar whose window ended by `upto`.
    fn write_due(&mut self, upto: i64, rows: &mut Vec<(Time, (u8, Bar))>) {
        while self.unwritten.first().is_some_and(|(end, _)| *end <= upto) {
            let Some((end, key)) = self.unwritten.pop_first() else {
                break;
            };
            if let Some(s) = self.state.get_mut(&key) {
                s.written = Some(0);
                let acc = s.latest.clone();
                rows.push((end as Time, self.row(&key, &acc, 0)));
            }
        }
    }

    /// Applies the changes of one completed time, in key order.
    fn apply(&mut self, time: Time, changes: HashMap<BarKey, Change>, rows: &mut Vec<(Time, (u8, Bar))>) {
        // Everything ending by `time` is complete: its revision 0 goes first.
        self.write_due(time as i64, rows);
        let mut changes: Vec<_> = changes.into_iter().collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, change) in changes {
            match change {
                (Some(acc), net) if net >= 0 => {
                    let end = self.window_end(&key);
                    match self.state.get_mut(&key) {
                        Some(s) => {
                            s.latest = acc;
                            if let Some(r) = s.written {
                                s.written = Some(r + 1);
                                let acc = s.latest.clone();
                                rows.push((time, self.row(&key, &acc, r + 1)));
                            }
                        }
                        None if end <= time as i64 => {
                            // A bar made only of late trades: its first version is revision 0.
                            rows.push((time, self.row(&key, &acc, 0)));
                            self.state.insert(key, BarState { latest: acc, written: Some(0) });
                        }
                        None => {
                            self.unwritten.insert((end, key.clone()));
                            self.state.insert(key, BarState { latest: acc, written: None });
                        }
                    }
                }
                // Net retraction: the bar's state expired.
                _ => {
                    let end = self.window_end(&key);
                    if let Some(s) = self.state.remove(&key) {
                        if s.written.is_none() {
                            self.unwritten.remove(&(end, key));
                        }
                    }
                }
            }
        }
    }
}

/// Rows of every width, tagged with the width's index in [`BarsConfig::widths`].
pub fn bar_revisions<'scope>(
    bars: VecCollection<'scope, Time, (BarKey, BarAcc)>,
    cfg: BarsConfig,
) -> StreamVec<'scope, Time, (u8, Bar)> {
    bars.inner.unary_frontier(Pipeline, "BarRevisions", move |initial, _info| {
        // Updates not yet final, by time.
        let mut updates: BTreeMap<Time, HashMap<BarKey, Change>> = BTreeMap::new();
        let mut revisions = Revisions { widths: cfg.widths, state: HashMap::new(), unwritten: BTreeSet::new() };
        // Held at the least time a row may still leave at: the input frontier (changes yet to
        // come), the earliest pending change, or the earliest unwritten window end.
        let mut cap: Option<Capability<Time>> = Some(initial);

        move |(input, frontier), output| {
            input.for_each_stamp(|_, data| {
                for ((key, acc), time, diff) in data.flat_map(|batch| batch.drain(..)) {
                    let slot = updates.entry(time).or_default().entry(key).or_insert((None, 0));
                    // A change arrives as (-old, +new); keep the value with positive weight.
                    if diff > 0 {
                        slot.0 = Some(acc);
                    }
                    slot.1 += diff;
                }
            });

            let frontier_time: Option<Time> = frontier.frontier().first().copied();
            let mut rows: Vec<(Time, (u8, Bar))> = Vec::new();
            while let Some(entry) = updates.first_entry() {
                if frontier_time.is_some_and(|f| *entry.key() >= f) {
                    break;
                }
                let (time, changes) = entry.remove_entry();
                revisions.apply(time, changes, &mut rows);
            }
            revisions.write_due(frontier_time.map_or(i64::MAX, |f| f as i64), &mut rows);

            if let Some(c) = cap.as_mut() {
                rows.sort_by_key(|(time, _)| *time);
                let mut rows = rows.into_iter().peekable();
                while let Some((time, _)) = rows.peek() {
                    let at = c.delayed(&(*time).max(*c.time()));
                    let time = *time;
                    let mut session = output.session(&at);
                    while let Some((_, row)) = rows.next_if(|(t, _)| *t == time) {
                        session.give(row);
                    }
                }
                let pending_update = updates.first_key_value().map(|(t, _)| *t);
                let pending_end = revisions.unwritten.first().map(|(end, _)| *end as Time);
                match [frontier_time, pending_update, pending_end].into_iter().flatten().min() {
                    None => cap = None,
                    Some(low) => c.downgrade(&low.max(*c.time())),
                }
            }
        }
    })
}
