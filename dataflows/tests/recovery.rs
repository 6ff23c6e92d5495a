//! Restarts from commit points, in memory: a run that stops after committing `T` and a new
//! run (another worker count) that replays from the positions reported for `T` must together
//! produce exactly the rows of one uninterrupted run — every record once, and every bar row
//! (revisions included) at the same timely time.

use std::collections::BTreeSet;
use std::sync::Arc;

use dataflows::bars::BarsConfig;
use dataflows::memlog::{Collected, MemLog, run_memlog};
use dataflows::resume::{Crossing, Resume, positions_at};
use dataflows::source::SourceConfig;
use dataflows::{Time, TimeConfig};

mod common;
use common::random_log;

/// A lake row, identified by what the sink would write: records by (table, partition,
/// offset) with their content, bars by their full content and the time they left at.
type Row = (Time, String);

/// What a commit at `commit` would hold of a run's output: rows with time `< commit`.
fn rows(c: &Collected, from: Time, to: Time) -> Vec<Row> {
    let mut out = Vec::new();
    let times: std::collections::HashMap<(i32, i64), Time> =
        c.record_times.iter().map(|(t, p, o)| ((*p, *o), *t)).collect();
    for t in &c.trades {
        out.push((
            times[&(t.partition, t.offset)],
            format!("trade {} {} {:?} late={}", t.partition, t.offset, t.ts, t.late),
        ));
    }
    for q in &c.quarantine {
        out.push((times[&(q.partition, q.offset)], format!("quarantine {} {} {:?}", q.partition, q.offset, q.reason)));
    }
    for g in &c.gaps {
        out.push((
            times[&(g.partition, g.offset)],
            format!("gap {} {} {:?} {}", g.partition, g.offset, g.body, g.beyond_horizon),
        ));
    }
    for ((time, ..), (width, bar)) in c.bar_times.iter().zip(&c.bars) {
        out.push((*time, format!("bar {width} {bar:?}")));
    }
    out.retain(|(t, _)| *t >= from && *t < to);
    out.sort();
    out
}

fn source(time: TimeConfig, resume: Option<Resume>) -> SourceConfig {
    let clocks = resume.iter().flat_map(|r| r.partitions.iter().map(|(p, pos)| (*p, pos.clock))).collect();
    SourceConfig { time, clocks, resume, ..Default::default() }
}

/// Commit points every source has reported positions for, in order.
fn commit_points(crossings: &[Crossing], partitions: usize, after: Time) -> Vec<Time> {
    let interval = 60_000;
    let finite: BTreeSet<Time> = crossings.iter().filter_map(|c| c.to).collect();
    let (Some(&lo), Some(&hi)) = (finite.first(), finite.last()) else { return Vec::new() };
    (lo / interval..=hi / interval)
        .map(|k| k * interval)
        .filter(|t| *t > after && positions_at(crossings, *t).len() == partitions)
        .collect()
}

fn restart(
    log: &Arc<MemLog>,
    crossings: &[Crossing],
    commit: Time,
    workers: usize,
    cfg: (TimeConfig, &BarsConfig),
) -> Collected {
    let resume = Resume { commit, partitions: positions_at(crossings, commit) };
    run_memlog(Arc::clone(log), workers, 13, source(cfg.0, Some(resume)), cfg.1.clone())
}

#[test]
fn restarts_from_any_commit_point_reproduce_an_uninterrupted_run() {
    let time = TimeConfig::default();
    let bars = BarsConfig { widths: vec![60_000, 300_000, 3_600_000], horizon_ms: 120_000 };
    let mut restarts = 0;
    for seed in 0..6u64 {
        let partitions = 1 + (seed % 4) as usize;
        let log = Arc::new(random_log(100 + seed, partitions, 3_000));
        let whole = run_memlog(Arc::clone(&log), 1 + (seed % 3) as usize, 7, source(time, None), bars.clone());
        let want = rows(&whole, 0, Time::MAX);
        let points = commit_points(&whole.crossings, partitions, 0);
        assert!(points.len() > 5, "seed {seed}: the log should cross several commit points");
        for (i, &t1) in points.iter().enumerate().step_by(points.len() / 4) {
            // Crash after committing t1; restart with another worker count.
            let second = restart(&log, &whole.crossings, t1, 1 + (seed as usize + i) % 3, (time, &bars));
            let mut lake = rows(&whole, 0, t1);
            // That run commits a later point t2, crashes again, and a third run finishes.
            let later = commit_points(&second.crossings, partitions, t1);
            let Some(&t2) = later.get(later.len() / 2) else {
                lake.extend(rows(&second, t1, Time::MAX));
                lake.sort();
                assert_eq!(lake, want, "seed {seed}: restart at {t1}");
                restarts += 1;
                continue;
            };
            lake.extend(rows(&second, t1, t2));
            let third = restart(&log, &second.crossings, t2, 1 + (seed as usize + i + 1) % 3, (time, &bars));
            lake.extend(rows(&third, t2, Time::MAX));
            lake.sort();
            if lake != want {
                let got: BTreeSet<_> = lake.iter().collect();
                let exp: BTreeSet<_> = want.iter().collect();
                let missing: Vec<_> = exp.difference(&got).take(5).collect();
                let extra: Vec<_> = got.difference(&exp).take(5).collect();
                panic!(
                    "seed {seed}: restarts at {t1} and {t2}: {} rows, want {}; missing {missing:?}; extra {extra:?}",
                    lake.len(),
                    want.len()
                );
            }
            restarts += 2;
        }
    }
    assert!(restarts >= 30, "only {restarts} restarts were checked");
}

#[test]
fn replay_never_starts_after_resume_and_forgets_expired_bars() {
    let time = TimeConfig::default();
    let bars = BarsConfig { widths: vec![60_000], horizon_ms: 60_000 };
    let log = Arc::new(random_log(7, 2, 4_000));
    let whole = run_memlog(Arc::clone(&log), 2, 50, source(time, None), bars);
    let points = commit_points(&whole.crossings, 2, 0);
    let last = *points.last().expect("commit points");
    let positions = positions_at(&whole.crossings, last);
    for (p, pos) in &positions {
        assert!(pos.replay <= pos.resume, "partition {p}: {pos:?}");
        // A 2-minute reach (1m bars, 1m horizon) needs only a few minutes of log, not all of it.
        assert!(pos.replay > 0, "partition {p} replays from the start: {pos:?}");
    }
    // What the sources still track stays bounded by the horizon, not by the log's length.
    let alive = whole.crossings.iter().flat_map(|c| c.partitions.iter().map(|m| m.alive.len())).max();
    assert!(alive.is_some_and(|a| a <= 8), "alive entries per partition: {alive:?}");
}
