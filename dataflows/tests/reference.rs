//! The dataflow against the sequential reference of the contract, over many seeded logs,
//! worker counts and interleavings: trades, late flags, quarantine, gaps, and the final
//! (latest revision) bars of several widths with their gap overlap, with dense revision numbers.

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::TimeConfig;
use dataflows::bars::BarsConfig;
use dataflows::memlog::run_memlog;
use dataflows::reference::{diff_bars, expected};
use dataflows::source::SourceConfig;

mod common;
use common::random_log;

/// Checks one seeded log; returns how many final bars a gap flags.
fn check(seed: u64, workers: usize, chunk: usize) -> usize {
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
    let gaps: BTreeMap<_, _> =
        got.gaps.iter().map(|g| ((g.partition, g.offset), (g.body.clone(), g.beyond_horizon))).collect();
    assert_eq!(gaps.len(), got.gaps.len(), "seed {seed}: a gap was emitted twice");
    assert_eq!(gaps, want.gaps, "seed {seed} workers {workers}: gaps differ");
    if let Err(diff) = diff_bars(&got.bars, &want.bars) {
        panic!("seed {seed} workers {workers} chunk {chunk}: bars differ from the reference:\n{diff}");
    }
    want.bars.values().filter(|b| b.gap_ms > 0).count()
}

fn check_seeds(workers: usize) {
    let flagged: usize = (0..12).map(|seed| check(seed, workers, [1, 7, 250][seed as usize % 3])).sum();
    assert!(flagged > 50, "the logs exercise gap flags: {flagged} flagged bars");
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
