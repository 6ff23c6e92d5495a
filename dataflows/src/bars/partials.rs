//! Window partials: ticks in, one partial bar per (width, symbol, window) and timely time out,
//! as a differential collection that also retracts each partial once it can no longer change.
//!
//! Pre-aggregating per time keeps differential's state at one record per bar per distinct
//! arrival time (on time, or each later revision) rather than one per trade, so memory is
//! bounded by symbols x windows within the horizon, not by the trade rate.

use std::collections::{BTreeMap, HashMap};

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use super::{BarAcc, BarKey, BarsConfig, Tick, symbol_route};
use crate::Time;

/// Partials still accumulating, by timely time, with the capability to emit them.
type Pending = BTreeMap<Time, (Capability<Time>, HashMap<BarKey, BarAcc>)>;

/// The bars a tick may still change: for each width, its window if the window's end is past
/// `pw - horizon` at arrival (and the tick's time is before the window's expiry).
fn admit(cfg: &BarsConfig, tick: &Tick, time: Time, mut each: impl FnMut(u8, i64)) {
    for (i, &width) in cfg.widths.iter().enumerate() {
        let w = width as i64;
        let start = tick.ts - tick.ts.rem_euclid(w);
        let end = start + w;
        let revisable = tick.watermark.is_none_or(|pw| end > pw - cfg.horizon_ms as i64);
        if revisable && (time as i64) < end + cfg.horizon_ms as i64 {
            each(i as u8, start);
        }
    }
}

/// Turns ticks into the partial-bar collection of every configured width.
pub fn window_partials<'scope>(
    ticks: StreamVec<'scope, Time, Tick>,
    cfg: BarsConfig,
) -> VecCollection<'scope, Time, (BarKey, BarAcc)> {
    let pact = Exchange::new(|t: &Tick| symbol_route(&t.symbol));
    ticks
        .unary_frontier(pact, "WindowPartials", move |_cap, _info| {
            let mut pending: Pending = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else { return };
                    let (_, bars) = pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), HashMap::new()));
                    for tick in data.flat_map(|batch| batch.drain(..)) {
                        admit(&cfg, &tick, time, |width, start| {
                            bars.entry((width, tick.symbol.clone(), start))
                                .and_modify(|acc| acc.add(&tick))
                                .or_insert_with(|| BarAcc::new(&tick));
                        });
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (time, (cap, bars)) = entry.remove_entry();
                    let mut session = output.session(&cap);
                    for (key, acc) in bars {
                        // The temporal filter: once the frontier reaches window end + horizon
                        // no trade can change this bar again, so its partials are retracted
                        // and differential can forget them.
                        let width = cfg.widths[key.0 as usize];
                        let expiry = (key.2 + width as i64 + cfg.horizon_ms as i64).max(0) as Time;
                        session.give(((key.clone(), acc.clone()), expiry.max(time), -1isize));
                        session.give(((key, acc), time, 1isize));
                    }
                }
            }
        })
        .as_collection()
}
