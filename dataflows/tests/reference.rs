//! The dataflow against a plain sequential computation of the same contract, over many seeded
//! logs, worker counts and interleavings.

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::clean::clean;
use dataflows::memlog::{MemLog, MemRecord, run_memlog};
use dataflows::source::SourceConfig;
use dataflows::{Bar, Reason, TimeConfig};

const BASE: i64 = 1_763_997_000_000;

/// A random log: symbols pinned to partitions, event times that wander forwards with jitter,
/// late stragglers, duplicates of timestamps, zero volumes and some garbage.
fn random_log(seed: u64, partitions: usize, records: usize) -> MemLog {
    let mut rng = fastrand::Rng::with_seed(seed);
    let symbols: Vec<String> = (0..12).map(|i| format!("S{i}")).collect();
    let mut log = MemLog {
        partitions: vec![Vec::new(); partitions],
    };
    let mut clock = vec![BASE + rng.i64(0..60_000); partitions];
    for _ in 0..records {
        let s = rng.usize(..symbols.len());
        let p = s % partitions;
        clock[p] += rng.i64(0..1_500);
        let ts = match rng.u8(..100) {
            0..=4 => clock[p] - rng.i64(0..300_000), // late, often beyond the lateness
            5..=14 => clock[p] - rng.i64(0..6_000),  // around the lateness bound
            15..=19 => clock[p] - clock[p].rem_euclid(60_000), // exactly on a window start
            _ => clock[p],
        };
        let price = (rng.u32(1..50_000) as f64) / 100.0;
        let volume = if rng.u8(..10) == 0 {
            0.0
        } else {
            rng.u32(1..1000) as f64 / 8.0
        };
        let payload = match rng.u8(..100) {
            0 => b"{\"s\":\"S1\",\"p\":".to_vec(),
            1 => format!(r#"{{"s":"{}","p":-1,"t":{ts},"v":1}}"#, symbols[s]).into_bytes(),
            2 => format!(r#"{{"s":"{}","p":1,"t":{},"v":1}}"#, symbols[s], ts / 1000).into_bytes(),
            _ => format!(
                r#"{{"s":"{}","p":{price},"t":{ts},"v":{volume},"c":["1"]}}"#,
                symbols[s]
            )
            .into_bytes(),
        };
        log.partitions[p].push(MemRecord {
            timestamp: Some(clock[p]),
            payload: Some(payload),
        });
    }
    log
}

#[derive(Debug, PartialEq)]
struct Reference {
    trades: BTreeMap<(i32, i64), bool>,
    quarantine: BTreeMap<(i32, i64), Reason>,
    bars: BTreeMap<(String, i64), Bar>,
}

/// The contract, sequentially: per partition in offset order, keep a watermark, flag late
/// trades, and aggregate on-time ones into bars sorted by (t, partition, offset).
fn reference(log: &MemLog, cfg: TimeConfig) -> Reference {
    let mut trades = BTreeMap::new();
    let mut quarantine = BTreeMap::new();
    let mut on_time: BTreeMap<(String, i64), Vec<(i64, i32, i64, f64, f64)>> = BTreeMap::new();
    for (p, records) in log.partitions.iter().enumerate() {
        let mut max_ts: Option<i64> = None;
        for (o, rec) in records.iter().enumerate() {
            let key = (p as i32, o as i64);
            match clean(rec.payload.as_deref()) {
                Err(reason) => {
                    quarantine.insert(key, reason);
                }
                Ok(t) => {
                    let w = cfg.window_ms as i64;
                    let window_start = t.ts.div_euclid(w) * w;
                    let late =
                        max_ts.is_some_and(|m| window_start + w <= m - cfg.lateness_ms as i64);
                    max_ts = Some(max_ts.map_or(t.ts, |m| m.max(t.ts)));
                    trades.insert(key, late);
                    if !late {
                        on_time
                            .entry((t.symbol.to_string(), window_start))
                            .or_default()
                            .push((t.ts, key.0, key.1, t.price, t.volume));
                    }
                }
            }
        }
    }
    let bars = on_time
        .into_iter()
        .map(|((symbol, start), mut ts)| {
            ts.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
            let volume: f64 = ts.iter().map(|t| t.4).sum();
            let notional: f64 = ts.iter().map(|t| t.3 * t.4).sum();
            let bar = Bar {
                symbol: symbol.as_str().into(),
                window_start: start,
                window_end: start + cfg.window_ms as i64,
                open: ts[0].3,
                high: ts.iter().map(|t| t.3).fold(f64::MIN, f64::max),
                low: ts.iter().map(|t| t.3).fold(f64::MAX, f64::min),
                close: ts[ts.len() - 1].3,
                volume,
                vwap: (volume > 0.0).then(|| notional / volume),
                trade_count: ts.len() as u64,
                revision: 0,
            };
            ((symbol, start), bar)
        })
        .collect();
    Reference {
        trades,
        quarantine,
        bars,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn check(seed: u64, workers: usize, chunk: usize) {
    let log = random_log(seed, 1 + (seed % 4) as usize, 3_000);
    let cfg = TimeConfig::default();
    let expected = reference(&log, cfg);
    let got = run_memlog(
        Arc::new(log),
        workers,
        chunk,
        SourceConfig {
            time: cfg,
            ..Default::default()
        },
    );

    let trades: BTreeMap<_, _> = got
        .trades
        .iter()
        .map(|t| ((t.partition, t.offset), t.late))
        .collect();
    assert_eq!(
        trades.len(),
        got.trades.len(),
        "seed {seed}: a trade was emitted twice"
    );
    assert_eq!(
        trades, expected.trades,
        "seed {seed} workers {workers}: trades/late flags differ"
    );
    let quarantine: BTreeMap<_, _> = got
        .quarantine
        .iter()
        .map(|q| ((q.partition, q.offset), q.reason))
        .collect();
    assert_eq!(
        quarantine, expected.quarantine,
        "seed {seed} workers {workers}: quarantine differs"
    );

    let bars: BTreeMap<_, _> = got
        .bars
        .iter()
        .map(|b| ((b.symbol.to_string(), b.window_start), b.clone()))
        .collect();
    assert_eq!(
        bars.len(),
        got.bars.len(),
        "seed {seed}: a bar was emitted twice"
    );
    let missing: Vec<_> = expected
        .bars
        .keys()
        .filter(|k| !bars.contains_key(*k))
        .collect();
    let extra: Vec<_> = bars
        .keys()
        .filter(|k| !expected.bars.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "seed {seed}: missing bars {missing:?}, extra bars {extra:?}"
    );
    for (key, want) in &expected.bars {
        let have = &bars[key];
        let same = have.open == want.open
            && have.high == want.high
            && have.low == want.low
            && have.close == want.close
            && have.trade_count == want.trade_count
            && have.window_end == want.window_end
            && have.revision == 0
            && close(have.volume, want.volume)
            && match (have.vwap, want.vwap) {
                (Some(a), Some(b)) => close(a, b),
                (None, None) => true,
                _ => false,
            };
        assert!(
            same,
            "seed {seed} workers {workers}: bar {key:?}\n dataflow:  {have:?}\n reference: {want:?}"
        );
    }
}

fn check_seeds(workers: usize) {
    for seed in 0..12 {
        check(seed, workers, [1, 7, 250][seed as usize % 3]);
    }
}

#[test]
fn bars_match_reference_1w() {
    check_seeds(1);
}

#[test]
fn bars_match_reference_2w() {
    check_seeds(2);
}

#[test]
fn bars_match_reference_3w() {
    check_seeds(3);
}
