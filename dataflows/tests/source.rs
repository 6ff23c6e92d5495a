//! The source on log shapes production topics take, in memory: partitions added while the
//! job runs, a partition far ahead of the others, and restarts after the topic grew. Each
//! must land every record once with the sequential reference's verdicts and final bars.

use std::sync::Arc;

use dataflows::bars::BarsConfig;
use dataflows::memlog::{Collected, MemLog, MemSource, run_memlog, run_sources};
use dataflows::reference::{diff_bars, expected};
use dataflows::resume::{Resume, positions_at};
use dataflows::source::SourceConfig;
use dataflows::{Time, TimeConfig};

mod common;
use common::random_log;

fn bars() -> BarsConfig {
    BarsConfig { widths: vec![60_000, 300_000], horizon_ms: 3_600_000 }
}

/// Every record exactly once, late flags and final bars as the reference says.
fn check(log: &MemLog, got: &Collected, what: &str) {
    let want = expected(log, TimeConfig::default(), &bars());
    let mut records: Vec<(i32, i64)> = got.trades.iter().map(|t| (t.partition, t.offset)).collect();
    records.extend(got.quarantine.iter().map(|q| (q.partition, q.offset)));
    records.extend(got.gaps.iter().map(|g| (g.partition, g.offset)));
    records.sort_unstable();
    let total = records.len();
    records.dedup();
    assert_eq!(records.len(), total, "{what}: records emitted twice");
    assert_eq!(total, log.len(), "{what}: records lost");
    let late: std::collections::BTreeMap<(i32, i64), bool> =
        got.trades.iter().map(|t| ((t.partition, t.offset), t.late)).collect();
    assert_eq!(late, want.trades, "{what}: late flags");
    diff_bars(&got.bars, &want.bars).unwrap_or_else(|d| panic!("{what}: bars differ from the reference:\n{d}"));
}

/// At `-w 4` worker 3 owns only partition 3, which appears later: it starts with nothing to
/// read and must still pick it up.
#[test]
fn partitions_added_mid_run_are_read_like_the_others_at_1_2_3_4_workers() {
    let log = Arc::new(random_log(5, 6, 6_000));
    for workers in 1..=4 {
        let shared = Arc::clone(&log);
        let got = run_sources(workers, SourceConfig::default(), bars(), move |index, peers| {
            MemSource::new(Arc::clone(&shared), index, peers, 50).revealing(&[3, 4, 5], 500)
        });
        check(&log, &got, &format!("-w {workers}"));
    }
}

#[test]
fn a_partition_hours_ahead_of_the_others_loses_nothing() {
    let mut log = random_log(9, 4, 8_000);
    // Partition 1 runs three hours ahead (beyond the horizon): alignment pauses it.
    for rec in &mut log.partitions[1] {
        if let (Some(ts), Some(payload)) = (rec.timestamp.as_mut(), rec.payload.as_mut()) {
            *ts += 3 * 3_600_000;
            let text = String::from_utf8_lossy(payload).into_owned();
            if let Some((head, tail)) = text.split_once("\"t\":") {
                let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(t) = digits.parse::<i64>() {
                    *payload = format!("{head}\"t\":{}{}", t + 3 * 3_600_000, &tail[digits.len()..]).into_bytes();
                }
            }
        }
    }
    let log = Arc::new(log);
    for (workers, drift) in [(1, Some(120_000)), (2, Some(600_000)), (3, None)] {
        let cfg = SourceConfig { max_drift_ms: drift, ..Default::default() };
        let got = run_memlog(Arc::clone(&log), workers, 64, cfg, bars());
        check(&log, &got, &format!("-w {workers}, drift {drift:?}"));
    }
}

#[test]
fn a_restart_after_the_topic_grew_lands_every_record_once() {
    let log = Arc::new(random_log(17, 6, 6_000));
    let whole = run_sources(1, SourceConfig::default(), bars(), {
        let log = Arc::clone(&log);
        move |i, n| MemSource::new(Arc::clone(&log), i, n, 40).revealing(&[4, 5], 3_000)
    });
    // A commit point whose crossings know only the first partitions, where the first run's
    // output below it is what the lake holds.
    let interval: Time = 60_000;
    let ends: Vec<Time> = whole.crossings.iter().filter_map(|c| c.to).collect();
    let points: Vec<Time> = (ends.iter().min().copied().unwrap_or(0) / interval
        ..=ends.iter().max().copied().unwrap_or(0) / interval)
        .map(|k| k * interval)
        .filter(|t| {
            let known = positions_at(&whole.crossings, *t);
            (0..4).all(|p| known.contains_key(&p)) && !known.contains_key(&5)
        })
        .collect();
    let commit = *points.last().expect("a commit point before the topic grew");
    let resume = Resume { commit, partitions: positions_at(&whole.crossings, commit) };
    let clocks = resume.partitions.iter().map(|(p, pos)| (*p, pos.clock)).collect();
    let cfg = SourceConfig { clocks, resume: Some(resume), ..Default::default() };
    let rest = run_memlog(Arc::clone(&log), 2, 40, cfg, bars());

    // The lake: the first run's rows below the commit, the restart's from it on.
    let below = |t: &Time| *t < commit;
    let times: std::collections::HashMap<(i32, i64), Time> =
        whole.record_times.iter().map(|(t, p, o)| ((*p, *o), *t)).collect();
    let mut lake = Collected {
        trades: whole.trades.iter().filter(|t| below(&times[&(t.partition, t.offset)])).cloned().collect(),
        quarantine: whole.quarantine.iter().filter(|q| below(&times[&(q.partition, q.offset)])).cloned().collect(),
        gaps: whole.gaps.iter().filter(|g| below(&times[&(g.partition, g.offset)])).cloned().collect(),
        bars: whole.bar_times.iter().zip(&whole.bars).filter(|((t, ..), _)| below(t)).map(|(_, b)| b.clone()).collect(),
        ..Default::default()
    };
    lake.trades.extend(rest.trades.iter().cloned());
    lake.quarantine.extend(rest.quarantine.iter().cloned());
    lake.gaps.extend(rest.gaps.iter().cloned());
    // The sink drops bar rows below the commit point: they rebuild state, the lake has them.
    lake.bars.extend(rest.bar_times.iter().zip(&rest.bars).filter(|((t, ..), _)| !below(t)).map(|(_, b)| b.clone()));
    check(&log, &lake, &format!("restart from {commit}"));
}

/// The wedge of wide topics, in memory: one partition hands the source a batch hours ahead
/// while the other is still being read, in small batches. Every batch after the far one
/// must still count as finished once the pipeline passes it (alignment off, so the lead
/// bound alone is tested), and the run must end.
#[test]
fn a_batch_far_ahead_never_stalls_the_source() {
    const T0: i64 = 1_763_994_600_000;
    let trade = |t: i64| dataflows::memlog::MemRecord {
        kind: None,
        timestamp: Some(t),
        payload: Some(format!(r#"{{"s":"AAA","p":10.5,"t":{t},"v":2}}"#).into_bytes()),
    };
    let log = Arc::new(MemLog {
        partitions: vec![
            (0..5).map(|i| trade(T0 + 10 * 3_600_000 + i)).collect(),
            (0..6_000).map(|i| trade(T0 + i * 600)).collect(),
        ],
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = Arc::clone(&log);
    std::thread::spawn(move || {
        let cfg = SourceConfig { batch: 64, max_drift_ms: None, ..Default::default() };
        let _ = tx.send(run_memlog(shared, 1, 32, cfg, bars()));
    });
    // A deadline for failure, not a sleep: the run ends as soon as the records are read.
    let got = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the source stalled");
    check(&log, &got, "a batch far ahead");
}

/// Two silent workers whose partitions' clocks stopped early, beside one that trades on: the
/// silent ones follow the speaking one, not each other, so its windows close while the log
/// stays open (as equity partitions fall silent at the close while crypto trades).
#[test]
fn silent_workers_never_hold_each_other_back() {
    const T0: i64 = 1_763_994_600_000;
    let trade = |s: &str, t: i64| dataflows::memlog::MemRecord {
        kind: None,
        timestamp: Some(t),
        payload: Some(format!(r#"{{"s":"{s}","p":10.5,"t":{t},"v":2}}"#).into_bytes()),
    };
    let log = Arc::new(MemLog {
        partitions: vec![
            (0..3_600).map(|i| trade("BTC", T0 + i * 1_000)).collect(),
            (0..30).map(|i| trade("AAPL", T0 + i * 1_000)).collect(),
            (0..30).map(|i| trade("MSFT", T0 + i * 1_000)).collect(),
        ],
    });
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (tx, rx) = std::sync::mpsc::channel::<dataflows::Bar>();
    let tx = Arc::new(std::sync::Mutex::new(tx));
    let (shared, held) = (Arc::clone(&log), Arc::clone(&open));
    let cfg = SourceConfig { idle_timeout: Some(std::time::Duration::from_millis(200)), ..Default::default() };
    let run = std::thread::spawn(move || {
        timely::execute(timely::Config::process(3), move |worker| {
            use timely::dataflow::operators::{Inspect, Probe};
            let (index, peers) = (worker.index(), worker.peers());
            let source = MemSource::new(Arc::clone(&shared), index, peers, 100).held_open(Arc::clone(&held));
            let tx = Arc::clone(&tx);
            let probe = worker.dataflow(|scope| {
                let out = dataflows::build_pipeline(scope, source, cfg.clone(), BarsConfig::default());
                out.bars
                    .inspect(move |(_, bar)| {
                        let _ = tx.lock().map(|tx| tx.send(bar.clone()));
                    })
                    .probe()
                    .0
            });
            while !probe.done() {
                worker.step();
            }
        })
        .map(|guards| guards.join().into_iter().all(|r| r.is_ok()))
    });
    // A deadline for failure, not a sleep: the bar comes once the silent workers follow.
    let late_window = T0 + 50 * 60_000;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let bar = rx.recv_timeout(left).expect("BTC's window at 50m never closed while the log was open");
        if bar.symbol == "BTC" && bar.window_start == late_window {
            break;
        }
    }
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(run.join().ok().and_then(|r| r.ok()), Some(true));
}
