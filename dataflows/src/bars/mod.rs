//! Bars: the OHLCV + VWAP summary of one symbol's trades in one window, and its fold.
//!
//! The fold is independent of the order in which trades arrive: open and close are chosen by
//! the total order `(t, partition, offset)`, and volume and notional are summed exactly in fixed
//! point, so a bar is the same whichever worker, interleaving or replay produced it.

mod operator;

use serde::{Deserialize, Serialize};

pub use operator::BarsExt;

use crate::trade::{Symbol, Trade};

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
}

impl From<&Trade> for Tick {
    fn from(t: &Trade) -> Self {
        Tick {
            symbol: t.symbol.clone(),
            ts: t.ts,
            partition: t.partition,
            offset: t.offset,
            price: t.price,
            volume: t.volume,
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
    /// 0 for the first version of the bar, then 1, 2, ... for each revision by late trades.
    pub revision: u32,
}

type OrderKey = (i64, i32, i64);

/// Running state of one bar; `add` in any order gives the same `finish`.
#[derive(Clone, Debug, PartialEq)]
pub struct BarAcc {
    open: (OrderKey, f64),
    close: (OrderKey, f64),
    high: f64,
    low: f64,
    volume: i128,
    notional: i128,
    count: u64,
}

impl BarAcc {
    /// A bar holding one trade.
    pub fn new(tick: &Tick) -> Self {
        let key = (tick.ts, tick.partition, tick.offset);
        BarAcc {
            open: (key, tick.price),
            close: (key, tick.price),
            high: tick.price,
            low: tick.price,
            volume: fixed(tick.volume),
            notional: notional(tick),
            count: 1,
        }
    }

    /// Folds one more trade in.
    #[inline]
    pub fn add(&mut self, tick: &Tick) {
        let key = (tick.ts, tick.partition, tick.offset);
        if key < self.open.0 {
            self.open = (key, tick.price);
        }
        if key > self.close.0 {
            self.close = (key, tick.price);
        }
        self.high = self.high.max(tick.price);
        self.low = self.low.min(tick.price);
        self.volume = self.volume.saturating_add(fixed(tick.volume));
        self.notional = self.notional.saturating_add(notional(tick));
        self.count += 1;
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
            open: self.open.1,
            high: self.high,
            low: self.low,
            close: self.close.1,
            volume,
            vwap,
            trade_count: self.count,
            revision,
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
        Tick {
            symbol: "AAPL".into(),
            ts,
            partition: 0,
            offset,
            price,
            volume,
        }
    }

    #[test]
    fn ohlc_follows_event_time_then_offset() {
        let ticks = [
            tick(30, 5, 10.0, 1.0),
            tick(10, 9, 12.0, 1.0),
            tick(10, 2, 11.0, 1.0),
            tick(50, 1, 9.0, 2.0),
        ];
        let mut acc = BarAcc::new(&ticks[0]);
        ticks[1..].iter().for_each(|t| acc.add(t));
        let bar = acc.finish("AAPL".into(), 0, 60_000, 0);
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.close),
            (11.0, 12.0, 9.0, 9.0)
        );
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
            .map(|i| {
                tick(
                    (i * 7919) % 1000,
                    i,
                    100.0 + (i % 13) as f64 * 0.01,
                    0.1 + (i % 7) as f64 * 0.37,
                )
            })
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
    fn extreme_values_saturate_instead_of_panicking() {
        let mut acc = BarAcc::new(&tick(1, 1, f64::MAX, f64::MAX));
        acc.add(&tick(2, 2, f64::MAX, f64::MAX));
        let bar = acc.finish("AAPL".into(), 0, 60_000, 0);
        assert!(bar.volume > 0.0);
    }
}
