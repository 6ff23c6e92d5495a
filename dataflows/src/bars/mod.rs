//! Bars: the OHLCV + VWAP summary of one symbol's trades in one window, and its fold.
//!
//! The fold is independent of the order in which trades arrive: open and close are chosen by
//! the total order `(t, partition, offset)`, and volume and notional are summed exactly in fixed
//! point, so a bar is the same whichever worker, interleaving or replay produced it.

mod flags;
mod number;
mod partials;
mod revisions;

use std::hash::{DefaultHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use differential_dataflow::AsCollection;

use crate::Time;
use crate::gap::GapTick;
use crate::time::TimeConfig;
use crate::trade::{Symbol, Trade};
use partials::Partials;
use revisions::{Revisions, Updates};

/// A bar's identity: index of its width in [`BarsConfig::widths`], symbol, window start.
pub type BarKey = (u8, Symbol, i64);

/// A map keyed by bar. Every tick touches one entry per width and every revision one more, so
/// the hasher is on the hot path: Fx hashes a short symbol several times faster than the
/// standard library's SipHash, and no key here comes from anyone who could aim collisions at
/// it (symbols are cleaned, windows aligned). Iteration order never reaches an output.
pub type KeyMap<V> = rustc_hash::FxHashMap<BarKey, V>;

/// Which bars to build and how long late trades may revise them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarsConfig {
    /// Window widths in ms (e.g. 1m, 5m, 1h), each a table of its own.
    pub widths: Vec<u64>,
    /// A late trade revises its bar while the window ended less than this long before the
    /// partition's watermark; later trades are stored and counted only.
    pub horizon_ms: u64,
}

impl BarsConfig {
    /// Checks the widths against the base window of the time model: each a distinct,
    /// positive multiple of it (windows must close on frontier steps), at most 255 of them.
    pub fn validate(&self, time: &TimeConfig) -> Result<(), String> {
        if self.widths.is_empty() || self.widths.len() > 255 {
            return Err(format!("between 1 and 255 bar widths are needed, got {}", self.widths.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for &w in &self.widths {
            if w == 0 || w % time.window_ms != 0 {
                return Err(format!("bar width {w}ms is not a multiple of the {}ms window", time.window_ms));
            }
            if !seen.insert(w) {
                return Err(format!("bar width {w}ms is listed twice"));
            }
        }
        Ok(())
    }
}

impl Default for BarsConfig {
    fn default() -> Self {
        BarsConfig { widths: vec![60_000], horizon_ms: 3_600_000 }
    }
}

/// Routes a symbol to a worker. `DefaultHasher::new()` has fixed keys, so every process of a
/// cluster sends a symbol to the same worker.
pub fn symbol_route(symbol: &str) -> u64 {
    let mut h = DefaultHasher::new();
    symbol.hash(&mut h);
    h.finish()
}

/// Ticks and gap ticks in; bar rows (every revision, tagged with the width index, with the
/// gap overlap of each) out.
///
/// The bars are a differential collection: the fold ([`fold`]) makes each bar's versions,
/// the gap windows ([`flags::gap_ms`]) say how much of each window a gap covers, a left join
/// puts the two together, and [`number`] writes every change of a bar as its next revision.
/// A gap that arrives after the bars it touches were written therefore revises them, as a
/// late trade does, with no bookkeeping of its own.
pub fn bars<'scope>(
    ticks: StreamVec<'scope, Time, Tick>,
    gaps: StreamVec<'scope, Time, GapTick>,
    cfg: BarsConfig,
) -> StreamVec<'scope, Time, (u8, Bar)> {
    let versions = fold(ticks, cfg.clone()).as_collection();
    let flagged = flags::flag(versions, flags::gap_ms(gaps, &cfg));
    number::number(flagged, cfg)
}

/// Ticks in; the bar collection out: each bar enters at its window end, changes (retraction
/// and insertion) at each time a late trade within the horizon revises it, and leaves at
/// window end + horizon.
///
/// Ticks are exchanged by symbol, folded into per-time partials as they arrive, and applied
/// to the bar state in time order once the frontier has passed their time: a keyed fold
/// whose changes over time are the revisions. The fold is a semigroup (`BarAcc::merge`), so
/// each bar is one accumulator, not a history of updates, and it is dropped at window end +
/// horizon: state is bounded by symbols x windows within the horizon, whatever the input.
/// (A differential `reduce` over the trades was measured slower and larger than this fold.)
pub fn fold<'scope>(
    ticks: StreamVec<'scope, Time, Tick>,
    cfg: BarsConfig,
) -> StreamVec<'scope, Time, ((BarKey, BarAcc), Time, isize)> {
    let pact = Exchange::new(|t: &Tick| symbol_route(&t.symbol));
    ticks.unary_frontier(pact, "Bars", move |initial, _info| {
        let mut partials = Partials::new(cfg.clone());
        let mut revisions = Revisions::new(cfg);
        // Held at the least time a change may still leave at: the input frontier (ticks yet
        // to come), the earliest pending partials, the earliest window to enter, or the
        // earliest retraction (always at or after the input frontier, so holding it delays
        // nothing downstream).
        let mut cap: Option<Capability<Time>> = Some(initial);

        move |(input, frontier), output| {
            input.for_each_stamp(|stamp, data| {
                let Some(time) = stamp.least().copied() else { return };
                for tick in data.flat_map(|batch| batch.drain(..)) {
                    partials.add(time, &tick);
                }
            });

            let frontier_time: Option<Time> = frontier.frontier().first().copied();
            let mut updates: Updates = Vec::new();
            while let Some((time, changes)) = partials.pop_before(frontier_time) {
                revisions.apply(time, changes, &mut updates);
            }
            let upto = frontier_time.map_or(i64::MAX, |f| f as i64);
            revisions.write_due(upto, &mut updates);
            revisions.expire(upto, &mut updates);

            if let Some(c) = cap.as_mut() {
                updates.sort_by_key(|(_, time, _)| *time);
                let mut updates = updates.into_iter().peekable();
                while let Some((_, time, _)) = updates.peek() {
                    let time = (*time).max(*c.time());
                    let at = c.delayed(&time);
                    let mut session = output.session(&at);
                    while let Some((data, _, diff)) = updates.next_if(|(_, t, _)| (*t).max(*c.time()) == time) {
                        session.give((data, time, diff));
                    }
                }
                let holds = [frontier_time, partials.first_time(), revisions.next_due(), revisions.next_expiry()];
                match holds.into_iter().flatten().min() {
                    None => cap = None,
                    Some(low) => c.downgrade(&low.max(*c.time())),
                }
            }
        }
    })
}

/// Whether a gap that arrived at `time` may flag a bar of some width (else it is beyond the
/// horizon: stored in the `gaps` table and counted only).
pub fn gap_may_flag(cfg: &BarsConfig, gap: &GapTick, time: Time) -> bool {
    let mut any = false;
    flags::windows(cfg, gap, time, |_, _| any = true);
    any
}

/// Prices and volumes are accumulated in units of 1e-9 (crypto volumes carry up to 8
/// decimals), and notional as their exact integer product, in units of 1e-18.
const SCALE: f64 = 1e9;

/// The part of a trade the bars need, small enough to exchange cheaply between workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Ticker symbol.
    pub symbol: Symbol,
    /// Event time, ms since the epoch.
    pub ts: i64,
    /// Kafka partition (tie-breaker for open/close).
    pub partition: i32,
    /// Kafka offset (tie-breaker for open/close).
    pub offset: i64,
    /// Price.
    pub price: f64,
    /// Volume.
    pub volume: f64,
    /// The partition's watermark `pw` when the trade arrived (`None`: nothing seen before);
    /// decides whether the trade can still revise a bar of a given width.
    pub watermark: Option<i64>,
}

impl Tick {
    /// The bar input of `trade`, which arrived at watermark `watermark`.
    pub fn new(t: &Trade, watermark: Option<i64>) -> Self {
        Tick {
            symbol: t.symbol.clone(),
            ts: t.ts,
            partition: t.partition,
            offset: t.offset,
            price: t.price,
            volume: t.volume,
            watermark,
        }
    }
}

/// One row of a `bars_<width>` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    /// Ticker symbol.
    pub symbol: Symbol,
    /// Window start, ms since the epoch (inclusive).
    pub window_start: i64,
    /// Window end, ms since the epoch (exclusive).
    pub window_end: i64,
    /// Price of the first trade by `(t, partition, offset)`.
    pub open: f64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Price of the last trade by `(t, partition, offset)`.
    pub close: f64,
    /// Total volume.
    pub volume: f64,
    /// Volume-weighted average price; `None` when the volume is 0.
    pub vwap: Option<f64>,
    /// Number of trades.
    pub trade_count: u64,
    /// 0 for the first version of the bar, then 1, 2, ... for each revision by late trades
    /// or gaps.
    pub revision: u32,
    /// How many ms of the window a gap of the symbol's feed covers (0: none known).
    pub gap_ms: u64,
}

type OrderKey = (i64, i32, i64);

/// Running state of one bar; `add` and `merge` in any order give the same `finish`.
///
/// Prices are kept as their IEEE bits: for the positive finite prices cleaning admits, bit
/// order is numeric order, which makes the state `Ord`, `Eq` and hashable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BarAcc {
    open: (OrderKey, u64),
    close: (OrderKey, u64),
    high: u64,
    low: u64,
    volume: i128,
    notional: i128,
    count: u64,
}

impl BarAcc {
    /// A bar holding one trade.
    pub fn new(tick: &Tick) -> Self {
        let key = (tick.ts, tick.partition, tick.offset);
        let price = tick.price.to_bits();
        BarAcc {
            open: (key, price),
            close: (key, price),
            high: price,
            low: price,
            volume: fixed(tick.volume),
            notional: notional(tick),
            count: 1,
        }
    }

    /// Folds one more trade in.
    #[inline]
    pub fn add(&mut self, tick: &Tick) {
        self.merge(&BarAcc::new(tick));
    }

    /// Folds another partial bar of the same symbol and window in.
    #[inline]
    pub fn merge(&mut self, other: &BarAcc) {
        if other.open.0 < self.open.0 {
            self.open = other.open;
        }
        if other.close.0 > self.close.0 {
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.volume = self.volume.saturating_add(other.volume);
        self.notional = self.notional.saturating_add(other.notional);
        self.count += other.count;
    }

    /// Number of trades folded in.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The finished row for `symbol` in the window starting at `window_start`.
    pub fn finish(&self, symbol: Symbol, window_start: i64, window_ms: u64, revision: u32) -> Bar {
        let volume = self.volume as f64 / SCALE;
        let vwap = (self.volume != 0).then(|| (self.notional as f64 / (SCALE * SCALE)) / volume);
        Bar {
            symbol,
            window_start,
            window_end: window_start + window_ms as i64,
            open: f64::from_bits(self.open.1),
            high: f64::from_bits(self.high),
            low: f64::from_bits(self.low),
            close: f64::from_bits(self.close.1),
            volume,
            vwap,
            trade_count: self.count,
            revision,
            gap_ms: 0,
        }
    }
}

/// `x` in units of 1e-9 (saturating, so extreme inputs cannot panic).
#[inline]
fn fixed(x: f64) -> i128 {
    (x * SCALE).round() as i128
}

/// `price x volume` in units of 1e-18, exact for prices and volumes with up to 9 decimals.
#[inline]
fn notional(tick: &Tick) -> i128 {
    fixed(tick.price).saturating_mul(fixed(tick.volume))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(ts: i64, offset: i64, price: f64, volume: f64) -> Tick {
        Tick { symbol: "AAPL".into(), ts, partition: 0, offset, price, volume, watermark: None }
    }

    #[test]
    fn ohlc_follows_event_time_then_offset() {
        let ticks = [tick(30, 5, 10.0, 1.0), tick(10, 9, 12.0, 1.0), tick(10, 2, 11.0, 1.0), tick(50, 1, 9.0, 2.0)];
        let mut acc = BarAcc::new(&ticks[0]);
        ticks[1..].iter().for_each(|t| acc.add(t));
        let bar = acc.finish("AAPL".into(), 0, 60_000, 0);
        assert_eq!((bar.open, bar.high, bar.low, bar.close), (11.0, 12.0, 9.0, 9.0));
        assert_eq!(bar.trade_count, 4);
        assert_eq!(bar.volume, 5.0);
        assert_eq!(bar.vwap, Some((10.0 + 12.0 + 11.0 + 18.0) / 5.0));
        assert_eq!(bar.window_end, 60_000);
    }

    #[test]
    fn zero_volume_bar_has_no_vwap() {
        let bar = BarAcc::new(&tick(1, 1, 5.0, 0.0)).finish("AAPL".into(), 0, 60_000, 0);
        assert_eq!(bar.vwap, None);
        assert_eq!(bar.volume, 0.0);
    }

    #[test]
    fn fold_is_order_independent() {
        let ticks: Vec<Tick> = (0..200)
            .map(|i| tick((i * 7919) % 1000, i, 100.0 + (i % 13) as f64 * 0.01, 0.1 + (i % 7) as f64 * 0.37))
            .collect();
        let fold = |order: &mut dyn Iterator<Item = &Tick>| {
            let first = order.next().unwrap();
            let mut acc = BarAcc::new(first);
            order.for_each(|t| acc.add(t));
            acc.finish("AAPL".into(), 0, 60_000, 0)
        };
        let forward = fold(&mut ticks.iter());
        let backward = fold(&mut ticks.iter().rev());
        assert_eq!(forward, backward);
    }

    #[test]
    fn merging_partials_equals_folding_everything() {
        let ticks: Vec<Tick> = (0..50).map(|i| tick((i * 31) % 97, i, 10.0 + (i % 5) as f64, 1.5)).collect();
        let fold = |ts: &[Tick]| {
            let mut acc = BarAcc::new(&ts[0]);
            ts[1..].iter().for_each(|t| acc.add(t));
            acc
        };
        let mut merged = fold(&ticks[30..]);
        merged.merge(&fold(&ticks[..12]));
        merged.merge(&fold(&ticks[12..30]));
        assert_eq!(merged, fold(&ticks));
    }

    #[test]
    fn extreme_values_saturate_instead_of_panicking() {
        let mut acc = BarAcc::new(&tick(1, 1, f64::MAX, f64::MAX));
        acc.add(&tick(2, 2, f64::MAX, f64::MAX));
        let bar = acc.finish("AAPL".into(), 0, 60_000, 0);
        assert!(bar.volume > 0.0);
    }
}
