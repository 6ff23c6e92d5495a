//! The bars operator: on-time ticks in, one bar per (symbol, window) out once the frontier
//! (the watermark) has passed the window.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use super::{Bar, BarAcc, Tick};
use crate::Time;
use crate::time::TimeConfig;
use crate::trade::Symbol;

/// Routes a symbol to a worker. `DefaultHasher::new()` has fixed keys, so every process of a
/// cluster sends a symbol to the same worker.
pub fn symbol_route(symbol: &str) -> u64 {
    let mut h = DefaultHasher::new();
    symbol.hash(&mut h);
    h.finish()
}

/// Bars still accumulating, by timely time, each with the capability to emit them.
type OpenWindows = BTreeMap<Time, (Capability<Time>, HashMap<(Symbol, i64), BarAcc>)>;

/// Turns a stream of on-time ticks into bars.
pub trait BarsExt<'scope> {
    /// One bar per (symbol, window) at revision 0, emitted at the window's start time once the
    /// frontier has passed it. Ticks must carry the time `window_start(ts)` (on-time trades).
    fn bars(self, cfg: TimeConfig) -> StreamVec<'scope, Time, Bar>;
}

impl<'scope> BarsExt<'scope> for StreamVec<'scope, Time, Tick> {
    fn bars(self, cfg: TimeConfig) -> StreamVec<'scope, Time, Bar> {
        let pact = Exchange::new(|t: &Tick| symbol_route(&t.symbol));
        self.unary_frontier(pact, "Bars", move |_cap, _info| {
            // Open windows by timely time (= window start), each with the capability to emit it.
            let mut open: OpenWindows = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    let (_, window) = open
                        .entry(time)
                        .or_insert_with(|| (cap.delayed(&time, 0), HashMap::new()));
                    for tick in data.flat_map(|batch| batch.drain(..)) {
                        // Keyed by the window of the trade's own time: the timely time is the
                        // same for on-time trades, but may be later if the source had to clamp.
                        let start = cfg.window_start(tick.ts);
                        match window.get_mut(&(tick.symbol.clone(), start)) {
                            Some(acc) => acc.add(&tick),
                            None => {
                                let acc = BarAcc::new(&tick);
                                window.insert((tick.symbol, start), acc);
                            }
                        }
                    }
                });
                while let Some(entry) = open.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, window) = entry.remove();
                    let mut session = output.session(&cap);
                    for ((symbol, start), acc) in window {
                        session.give(acc.finish(symbol, start, cfg.window_ms, 0));
                    }
                }
            }
        })
    }
}
