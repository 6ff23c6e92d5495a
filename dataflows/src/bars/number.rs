//! Revision numbers: each time the flagged bar collection changes a bar, its new version is
//! written as the bar's next revision (0, 1, 2, ...), whatever made the change (the window
//! closing, a late trade, a gap).
//!
//! Changes are taken a complete time at a time, consolidated, so a late trade and a gap that
//! change a bar at the same time make one revision, and a change that nets to nothing (a gap
//! already covered by another) makes none. A bar's counter is dropped when the collection
//! retracts the bar without a new version: at its expiry, after which nothing can change it.

use std::collections::BTreeMap;

use differential_dataflow::collection::vec::Collection;
use differential_dataflow::consolidation::consolidate;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use super::{Bar, BarAcc, BarKey, BarsConfig, KeyMap, symbol_route};
use crate::Time;

type Flagged = (BarKey, (BarAcc, u64));

/// The flagged bar collection in; every new version out as a row with its revision number,
/// at the time of the change.
pub(super) fn number<'scope>(
    flagged: Collection<'scope, Time, Flagged>,
    cfg: BarsConfig,
) -> StreamVec<'scope, Time, (u8, Bar)> {
    let pact = Exchange::new(|((key, _), _, _): &(Flagged, Time, isize)| symbol_route(&key.1));
    flagged.inner.unary_frontier(pact, "Revisions", move |initial, _info| {
        let mut pending: BTreeMap<Time, Vec<(Flagged, isize)>> = BTreeMap::new();
        let mut next: KeyMap<u32> = KeyMap::default();
        // Held at the least time a row may still leave at: the input frontier or the earliest
        // pending change.
        let mut cap: Option<Capability<Time>> = Some(initial);

        move |(input, frontier), output| {
            input.for_each_stamp(|_, data| {
                for (change, time, diff) in data.flat_map(|batch| batch.drain(..)) {
                    pending.entry(time).or_default().push((change, diff));
                }
            });
            let frontier_time = frontier.frontier().first().copied();
            let Some(c) = cap.as_mut() else { return };
            while let Some(entry) = pending.first_entry() {
                if frontier_time.is_some_and(|f| *entry.key() >= f) {
                    break;
                }
                let (time, mut changes) = entry.remove_entry();
                consolidate(&mut changes);
                let at = c.delayed(&time.max(*c.time()));
                let mut session = output.session(&at);
                // Consolidated changes are sorted by key: a key's retraction and insertion
                // are adjacent.
                let mut i = 0;
                while i < changes.len() {
                    let key = &changes[i].0.0;
                    let mut inserted = false;
                    while let Some(((k, (acc, gap_ms)), diff)) = changes.get(i).filter(|(d, _)| d.0 == *key) {
                        if *diff > 0 {
                            inserted = true;
                            let revision = next.entry(k.clone()).or_default();
                            let mut bar = acc.finish(k.1.clone(), k.2, cfg.widths[k.0 as usize], *revision);
                            bar.gap_ms = *gap_ms;
                            *revision += 1;
                            session.give((k.0, bar));
                        }
                        i += 1;
                    }
                    if !inserted {
                        next.remove(&changes[i - 1].0.0);
                    }
                }
            }
            if next.capacity() > 4 * next.len().max(1024) {
                next.shrink_to_fit();
            }
            match [frontier_time, pending.first_key_value().map(|(t, _)| *t)].into_iter().flatten().min() {
                None => cap = None,
                Some(low) => c.downgrade(&low.max(*c.time())),
            }
        }
    })
}
