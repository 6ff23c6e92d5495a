//! The contract computed the plain way, for tests to compare the dataflow (and the lake)
//! against: one pass per partition in offset order, a watermark, late flags, bars folded
//! from sorted trades with ordinary floating-point sums, and each bar's gap overlap from the
//! merged intervals of the gaps that could still revise it. Deliberately shares nothing with
//! the dataflow but [`clean_record`](crate::clean::clean_record) and
//! [`parse_gap`](crate::gap::parse_gap), which have their own rule-by-rule tests.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::bars::{Bar, BarsConfig};
use crate::clean::clean_record;
use crate::gap::{GapBody, Kind, parse_gap};
use crate::memlog::MemLog;
use crate::reason::Reason;
use crate::time::TimeConfig;

/// Everything the contract says a log must produce.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    /// `(partition, offset)` of every valid trade, with its `late` flag.
    pub trades: BTreeMap<(i32, i64), bool>,
    /// `(partition, offset)` of every rejected record, with its reason.
    pub quarantine: BTreeMap<(i32, i64), Reason>,
    /// `(partition, offset)` of every gap record, with its body and whether it lay beyond the
    /// horizon of every width.
    pub gaps: BTreeMap<(i32, i64), (GapBody, bool)>,
    /// Final bars (latest revision, revision number not predicted) by
    /// `(width index, symbol, window_start)`.
    pub bars: BTreeMap<FinalKey, Bar>,
}

/// `(t, partition, offset, price, volume)` of a trade in a bar.
type InBar = (i64, i32, i64, f64, f64);

/// `(width index, symbol, window_start)`.
pub type FinalKey = (u8, String, i64);

/// Computes [`Expected`] for `log` sequentially: trades are late by the base window of
/// `time`; a trade belongs to the final bar of width `w` when that window's end is past the
/// partition's watermark minus the horizon at its arrival.
pub fn expected(log: &MemLog, time: TimeConfig, bars: &BarsConfig) -> Expected {
    let mut out = Expected::default();
    let base = time.window_ms as i64;
    let mut members: BTreeMap<FinalKey, Vec<InBar>> = BTreeMap::new();
    let mut gaps: BTreeMap<FinalKey, Vec<(i64, i64)>> = BTreeMap::new();
    for (p, records) in log.partitions.iter().enumerate() {
        let mut max_ts: Option<i64> = None;
        for (o, rec) in records.iter().enumerate() {
            let key = (p as i32, o as i64);
            let pw = max_ts.map(|m| m - time.lateness_ms as i64);
            let verdict = match Kind::of(rec.kind.as_deref()) {
                Err(reason) => Err(reason),
                Ok(Kind::Trade) => clean_record(rec.payload.as_deref(), rec.timestamp, time.max_skew_ms),
                Ok(Kind::Gap) => match parse_gap(rec.payload.as_deref(), rec.timestamp, time.max_skew_ms) {
                    Err(reason) => Err(reason),
                    Ok(gap) => {
                        // Every window of every width the gap overlaps that ends past the
                        // horizon's reach (from the watermark, or from the gap's end before one).
                        let reach = pw.unwrap_or(gap.to) - bars.horizon_ms as i64;
                        let mut flags = false;
                        for (i, &width) in bars.widths.iter().enumerate() {
                            let w = width as i64;
                            let mut start = gap.from.div_euclid(w) * w;
                            while start < gap.to {
                                if start + w > reach {
                                    flags = true;
                                    gaps.entry((i as u8, gap.s.to_string(), start))
                                        .or_default()
                                        .push((gap.from, gap.to));
                                }
                                start += w;
                            }
                        }
                        out.gaps.insert(key, (gap, !flags));
                        continue;
                    }
                },
            };
            match verdict {
                Err(reason) => {
                    out.quarantine.insert(key, reason);
                }
                Ok(t) => {
                    let late = pw.is_some_and(|pw| t.ts.div_euclid(base) * base + base <= pw);
                    out.trades.insert(key, late);
                    for (i, &width) in bars.widths.iter().enumerate() {
                        let w = width as i64;
                        let start = t.ts.div_euclid(w) * w;
                        if pw.is_none_or(|pw| start + w > pw - bars.horizon_ms as i64) {
                            members
                                .entry((i as u8, t.symbol.to_string(), start))
                                .or_default()
                                .push((t.ts, key.0, key.1, t.price, t.volume));
                        }
                    }
                    max_ts = Some(max_ts.map_or(t.ts, |m| m.max(t.ts)));
                }
            }
        }
    }
    for ((width, symbol, start), mut ts) in members {
        let end = start + bars.widths[width as usize] as i64;
        let gap_ms = union_ms(start, end, gaps.remove(&(width, symbol.clone(), start)).unwrap_or_default());
        ts.sort_by_key(|t| (t.0, t.1, t.2));
        let volume: f64 = ts.iter().map(|t| t.4).sum();
        let notional: f64 = ts.iter().map(|t| t.3 * t.4).sum();
        let bar = Bar {
            symbol: symbol.as_str().into(),
            window_start: start,
            window_end: start + bars.widths[width as usize] as i64,
            open: ts[0].3,
            high: ts.iter().map(|t| t.3).fold(f64::MIN, f64::max),
            low: ts.iter().map(|t| t.3).fold(f64::MAX, f64::min),
            close: ts[ts.len() - 1].3,
            volume,
            vwap: (volume > 0.0).then(|| notional / volume),
            trade_count: ts.len() as u64,
            revision: 0,
            gap_ms,
        };
        out.bars.insert((width, symbol, start), bar);
    }
    out
}

/// Milliseconds of `[start, end)` inside at least one of `intervals`.
fn union_ms(start: i64, end: i64, mut intervals: Vec<(i64, i64)>) -> u64 {
    intervals.sort_unstable();
    let (mut total, mut covered_to) = (0, start);
    for (from, to) in intervals {
        let (from, to) = (from.max(covered_to), to.min(end));
        if to > from {
            total += (to - from) as u64;
            covered_to = to;
        }
    }
    total
}

/// The latest revision of every bar in `rows`; `Err` if a revision is written twice or the
/// revisions of a bar are not dense (0, 1, 2, ...).
pub fn latest(rows: &[(u8, Bar)]) -> Result<BTreeMap<FinalKey, Bar>, String> {
    let mut all: BTreeMap<FinalKey, BTreeMap<u32, &Bar>> = BTreeMap::new();
    let mut report = String::new();
    for (width, bar) in rows {
        let key = (*width, bar.symbol.to_string(), bar.window_start);
        if all.entry(key.clone()).or_default().insert(bar.revision, bar).is_some() {
            let _ = writeln!(report, "revision {} of {key:?} written twice", bar.revision);
        }
    }
    let mut out = BTreeMap::new();
    for (key, revisions) in all {
        let dense = revisions.keys().copied().eq(0..revisions.len() as u32);
        if !dense {
            let _ = writeln!(report, "revisions of {key:?} are not dense: {:?}", revisions.keys().collect::<Vec<_>>());
        }
        if let Some((_, bar)) = revisions.last_key_value() {
            out.insert(key, (*bar).clone());
        }
    }
    if report.is_empty() { Ok(out) } else { Err(report) }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Whether two bars agree (revision aside): prices and counts exactly, sums to a relative
/// 1e-9 (the dataflow sums in fixed point, the reference in floating point).
pub fn same_bar(a: &Bar, b: &Bar) -> bool {
    a.symbol == b.symbol
        && a.window_start == b.window_start
        && a.window_end == b.window_end
        && a.open == b.open
        && a.high == b.high
        && a.low == b.low
        && a.close == b.close
        && a.trade_count == b.trade_count
        && a.gap_ms == b.gap_ms
        && close(a.volume, b.volume)
        && match (a.vwap, b.vwap) {
            (Some(x), Some(y)) => close(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// Compares the latest revisions of produced bar rows with the expected final bars; `Err`
/// lists every difference (and any duplicate or missing revision).
pub fn diff_bars(got: &[(u8, Bar)], want: &BTreeMap<FinalKey, Bar>) -> Result<(), String> {
    let mut report = String::new();
    let got = latest(got).unwrap_or_else(|e| {
        report.push_str(&e);
        BTreeMap::new()
    });
    for (key, w) in want {
        match got.get(key) {
            None => {
                let _ = writeln!(report, "missing  {key:?} {w:?}");
            }
            Some(g) if !same_bar(g, w) => {
                let _ = writeln!(report, "differs  {key:?}\n         got  {g:?}\n         want {w:?}");
            }
            Some(_) => {}
        }
    }
    for (key, g) in &got {
        if !want.contains_key(key) {
            let _ = writeln!(report, "extra    {key:?} {g:?}");
        }
    }
    if report.is_empty() { Ok(()) } else { Err(report) }
}
