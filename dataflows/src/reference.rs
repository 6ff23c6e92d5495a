//! The contract computed the plain way, for tests to compare the dataflow (and the lake)
//! against: one pass per partition in offset order, a watermark, late flags, and bars folded
//! from sorted trades with ordinary floating-point sums. Deliberately shares nothing with the
//! dataflow but [`clean`](crate::clean::clean), which has its own rule-by-rule tests.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::bars::Bar;
use crate::clean::{Reason, clean};
use crate::memlog::MemLog;
use crate::time::TimeConfig;

/// Everything the contract says a log must produce.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    /// `(partition, offset)` of every valid trade, with its `late` flag.
    pub trades: BTreeMap<(i32, i64), bool>,
    /// `(partition, offset)` of every rejected record, with its reason.
    pub quarantine: BTreeMap<(i32, i64), Reason>,
    /// Bars by `(symbol, window_start)`.
    pub bars: BTreeMap<(String, i64), Bar>,
}

/// `(t, partition, offset, price, volume)` of an on-time trade.
type OnTime = (i64, i32, i64, f64, f64);

/// Computes [`Expected`] for `log` sequentially.
pub fn expected(log: &MemLog, cfg: TimeConfig) -> Expected {
    let mut out = Expected::default();
    let w = cfg.window_ms as i64;
    let mut on_time: BTreeMap<(String, i64), Vec<OnTime>> = BTreeMap::new();
    for (p, records) in log.partitions.iter().enumerate() {
        let mut max_ts: Option<i64> = None;
        for (o, rec) in records.iter().enumerate() {
            let key = (p as i32, o as i64);
            match clean(rec.payload.as_deref()) {
                Err(reason) => {
                    out.quarantine.insert(key, reason);
                }
                Ok(t) => {
                    let start = t.ts.div_euclid(w) * w;
                    let late = max_ts.is_some_and(|m| start + w <= m - cfg.lateness_ms as i64);
                    max_ts = Some(max_ts.map_or(t.ts, |m| m.max(t.ts)));
                    out.trades.insert(key, late);
                    if !late {
                        on_time
                            .entry((t.symbol.to_string(), start))
                            .or_default()
                            .push((t.ts, key.0, key.1, t.price, t.volume));
                    }
                }
            }
        }
    }
    for ((symbol, start), mut ts) in on_time {
        ts.sort_by_key(|t| (t.0, t.1, t.2));
        let volume: f64 = ts.iter().map(|t| t.4).sum();
        let notional: f64 = ts.iter().map(|t| t.3 * t.4).sum();
        let bar = Bar {
            symbol: symbol.as_str().into(),
            window_start: start,
            window_end: start + w,
            open: ts[0].3,
            high: ts.iter().map(|t| t.3).fold(f64::MIN, f64::max),
            low: ts.iter().map(|t| t.3).fold(f64::MAX, f64::min),
            close: ts[ts.len() - 1].3,
            volume,
            vwap: (volume > 0.0).then(|| notional / volume),
            trade_count: ts.len() as u64,
            revision: 0,
        };
        out.bars.insert((symbol, start), bar);
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Whether two bars agree: prices and counts exactly, sums to a relative 1e-9 (the dataflow
/// sums in fixed point, the reference in floating point).
pub fn same_bar(a: &Bar, b: &Bar) -> bool {
    a.symbol == b.symbol
        && a.window_start == b.window_start
        && a.window_end == b.window_end
        && a.open == b.open
        && a.high == b.high
        && a.low == b.low
        && a.close == b.close
        && a.trade_count == b.trade_count
        && a.revision == b.revision
        && close(a.volume, b.volume)
        && match (a.vwap, b.vwap) {
            (Some(x), Some(y)) => close(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// Compares produced bars with the expected ones; `Err` lists every difference.
pub fn diff_bars(got: &[Bar], want: &BTreeMap<(String, i64), Bar>) -> Result<(), String> {
    let mut report = String::new();
    let mut by_key: BTreeMap<(String, i64), &Bar> = BTreeMap::new();
    for bar in got {
        if by_key
            .insert((bar.symbol.to_string(), bar.window_start), bar)
            .is_some()
        {
            let _ = writeln!(
                report,
                "duplicate bar {} @ {}",
                bar.symbol, bar.window_start
            );
        }
    }
    for (key, w) in want {
        match by_key.get(key) {
            None => {
                let _ = writeln!(report, "missing  {w:?}");
            }
            Some(g) if !same_bar(g, w) => {
                let _ = writeln!(report, "differs  got  {g:?}\n         want {w:?}");
            }
            Some(_) => {}
        }
    }
    for (key, g) in &by_key {
        if !want.contains_key(key) {
            let _ = writeln!(report, "extra    {g:?}");
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}
