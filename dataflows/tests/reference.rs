//! The dataflow against the sequential reference of the contract, over many seeded logs,
//! worker counts and interleavings: trades, late flags, quarantine, and the final (latest
//! revision) bars of several widths, with dense revision numbers.

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::TimeConfig;
use dataflows::bars::BarsConfig;
use dataflows::memlog::{MemLog, MemRecord, run_memlog};
use dataflows::reference::{diff_bars, expected};
use dataflows::source::SourceConfig;

const BASE: i64 = 1_763_997_000_000;

/// A random log: symbols pinned to partitions, event times that wander forwards with jitter,
/// late stragglers, trades on window boundaries, zero volumes and some garbage.
fn random_log(seed: u64, partitions: usize, records: usize) -> MemLog {
    let mut rng = fastrand::Rng::with_seed(seed);
    let symbols: Vec<String> = (0..12).map(|i| format!("S{i}")).collect();
    let mut log = MemLog { partitions: vec![Vec::new(); partitions] };
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
        let volume = if rng.u8(..10) == 0 { 0.0 } else { rng.u32(1..1000) as f64 / 8.0 };
        let payload = match rng.u8(..100) {
            0 => b"{\"s\":\"S1\",\"p\":".to_vec(),
            1 => format!(r#"{{"s":"{}","p":-1,"t":{ts},"v":1}}"#, symbols[s]).into_bytes(),
            2 => format!(r#"{{"s":"{}","p":1,"t":{},"v":1}}"#, symbols[s], ts / 1000).into_bytes(),
            _ => format!(r#"{{"s":"{}","p":{price},"t":{ts},"v":{volume},"c":["1"]}}"#, symbols[s]).into_bytes(),
        };
        log.partitions[p].push(MemRecord { timestamp: Some(clock[p]), payload: Some(payload) });
    }
    log
}

fn check(seed: u64, workers: usize, chunk: usize) {
    let log = random_log(seed, 1 + (seed % 4) as usize, 3_000);
    let cfg = TimeConfig::default();
    // Several widths, and a horizon short enough that some late trades fall beyond it.
    let bars = BarsConfig { widths: vec![60_000, 300_000, 3_600_000], horizon_ms: 120_000 };
    let want = expected(&log, cfg, &bars);
    let source = SourceConfig { time: cfg, ..Default::default() };
    let got = run_memlog(Arc::new(log), workers, chunk, source, bars);

    let trades: BTreeMap<_, _> = got.trades.iter().map(|t| ((t.partition, t.offset), t.late)).collect();
    assert_eq!(trades.len(), got.trades.len(), "seed {seed}: a trade was emitted twice");
    assert_eq!(trades, want.trades, "seed {seed} workers {workers}: trades/late flags differ");
    let quarantine: BTreeMap<_, _> = got.quarantine.iter().map(|q| ((q.partition, q.offset), q.reason)).collect();
    assert_eq!(quarantine, want.quarantine, "seed {seed} workers {workers}: quarantine differs");
    if let Err(diff) = diff_bars(&got.bars, &want.bars) {
        panic!("seed {seed} workers {workers} chunk {chunk}: bars differ from the reference:\n{diff}");
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
