//! The time model on a hand-written log, with every verdict spelled out: out-of-order trades,
//! ties on timestamp, a trade exactly on a window boundary, late within the lateness, late
//! beyond it (a revision), beyond the horizon, a bar made only of late trades, a zero-volume
//! trade, a second partition, and an idle partition that must not hold windows back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataflows::bars::BarsConfig;
use dataflows::memlog::{MemLog, MemRecord, MemSource, run_memlog};
use dataflows::reference::{diff_bars, expected};
use dataflows::source::SourceConfig;
use dataflows::{Bar, TimeConfig, build_pipeline};
use timely::dataflow::operators::{Inspect, Probe};

/// 2025-11-24T14:30:00Z.
const T0: i64 = 1_763_994_600_000;
const M: i64 = 60_000;

fn trade(s: &str, p: f64, t: i64, v: f64) -> MemRecord {
    MemRecord {
        kind: None,
        timestamp: Some(t),
        payload: Some(format!(r#"{{"s":"{s}","p":{p},"t":{t},"v":{v}}}"#).into_bytes()),
    }
}

fn log() -> MemLog {
    MemLog {
        partitions: vec![
            vec![
                trade("AAA", 10.0, T0 + 1_000, 1.0),      // o0 first trade
                trade("AAA", 11.0, T0 + 30_000, 2.0),     // o1
                trade("AAA", 9.0, T0 + 20_000, 1.0),      // o2 out of order, on time
                trade("AAA", 12.0, T0 + 30_000, 3.0),     // o3 same t as o1: later offset closes later
                trade("AAA", 13.0, T0 + M, 1.0),          // o4 exactly on the 1m boundary: next window
                trade("AAA", 8.0, T0 + 59_999, 4.0),      // o5 after its window ended, within lateness
                trade("AAA", 14.0, T0 + 70_000, 0.0),     // o6 zero volume; window 0 now closed
                trade("AAA", 7.0, T0 + 50_000, 5.0),      // o7 late: revises window 0
                trade("AAA", 20.0, T0 + 15 * M, 1.0),     // o8 jump: pw = T0+14m55s
                trade("AAA", 6.0, T0 + 1_000, 1.0),       // o9 late beyond the 1m horizon, not the 5m one
                trade("AAA", 15.0, T0 + 10 * M + 1, 2.0), // o10 late: a 1m bar made of late trades only
                MemRecord {
                    kind: None,
                    timestamp: Some(T0),
                    payload: Some(br#"{"s":"AAA","p":-1,"t":1,"v":1}"#.to_vec()),
                },
            ],
            vec![trade("BBB", 5.0, T0 + 5_000, 1.0)],
        ],
    }
}

fn bars_cfg() -> BarsConfig {
    BarsConfig { widths: vec![M as u64, 5 * M as u64], horizon_ms: 10 * M as u64 }
}

/// A bar from its OHLC, `(volume, notional, trade count)` and revision.
fn bar(s: &str, start: i64, width: i64, ohlc: [f64; 4], sums: (f64, f64, u64), revision: u32) -> Bar {
    let (volume, notional, count) = sums;
    Bar {
        symbol: s.into(),
        window_start: start,
        window_end: start + width,
        open: ohlc[0],
        high: ohlc[1],
        low: ohlc[2],
        close: ohlc[3],
        volume,
        vwap: (volume > 0.0).then(|| notional / volume),
        trade_count: count,
        revision,
        gap_ms: 0,
    }
}

fn expected_rows() -> Vec<(u8, Bar)> {
    let (m, m5) = (M, 5 * M);
    let rows = vec![
        // 1m, window 0: o0 o1 o2 o3 o5 at revision 0; o7 revises it; o9 is beyond the horizon.
        (0, bar("AAA", T0, m, [10.0, 12.0, 8.0, 8.0], (11.0, 109.0, 5), 0)),
        (0, bar("AAA", T0, m, [10.0, 12.0, 7.0, 8.0], (16.0, 144.0, 6), 1)),
        (0, bar("AAA", T0 + m, m, [13.0, 14.0, 13.0, 14.0], (1.0, 13.0, 2), 0)),
        (0, bar("AAA", T0 + 10 * m, m, [15.0; 4], (2.0, 30.0, 1), 0)),
        (0, bar("AAA", T0 + 15 * m, m, [20.0; 4], (1.0, 20.0, 1), 0)),
        (0, bar("BBB", T0, m, [5.0; 4], (1.0, 5.0, 1), 0)),
        // 5m: o7 is on time for the wide window; o9 is within its horizon and revises it.
        (1, bar("AAA", T0, m5, [10.0, 14.0, 7.0, 14.0], (17.0, 157.0, 8), 0)),
        (1, bar("AAA", T0, m5, [10.0, 14.0, 6.0, 14.0], (18.0, 163.0, 9), 1)),
        (1, bar("AAA", T0 + 10 * m, m5, [15.0; 4], (2.0, 30.0, 1), 0)),
        (1, bar("AAA", T0 + 15 * m, m5, [20.0; 4], (1.0, 20.0, 1), 0)),
        (1, bar("BBB", T0, m5, [5.0; 4], (1.0, 5.0, 1), 0)),
    ];
    sorted(rows)
}

fn sorted(mut rows: Vec<(u8, Bar)>) -> Vec<(u8, Bar)> {
    rows.sort_by(|a, b| {
        (a.0, &a.1.symbol, a.1.window_start, a.1.revision).cmp(&(b.0, &b.1.symbol, b.1.window_start, b.1.revision))
    });
    rows
}

fn check_rows(got: Vec<(u8, Bar)>) {
    let got = sorted(got);
    let want = expected_rows();
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.0 == w.0 && g.1.revision == w.1.revision && dataflows::reference::same_bar(&g.1, &w.1));
    assert!(same, "bar rows differ\n got:\n{}\n want:\n{}", show(&got), show(&want));
}

fn show(rows: &[(u8, Bar)]) -> String {
    rows.iter().map(|r| format!("  {r:?}\n")).collect()
}

fn run(workers: usize, chunk: usize) -> dataflows::memlog::Collected {
    let cfg = SourceConfig { time: TimeConfig::default(), ..Default::default() };
    run_memlog(Arc::new(log()), workers, chunk, cfg, bars_cfg())
}

#[test]
fn every_verdict_of_the_hand_written_log() {
    for (workers, chunk) in [(1, 1), (1, 100), (2, 1), (3, 3)] {
        let got = run(workers, chunk);
        let late: BTreeMap<(i32, i64), bool> = got.trades.iter().map(|t| ((t.partition, t.offset), t.late)).collect();
        let want_late: BTreeMap<(i32, i64), bool> = [
            ((0, 0), false),
            ((0, 1), false),
            ((0, 2), false),
            ((0, 3), false),
            ((0, 4), false),
            ((0, 5), false),
            ((0, 6), false),
            ((0, 7), true),
            ((0, 8), false),
            ((0, 9), true),
            ((0, 10), true),
            ((1, 0), false),
        ]
        .into();
        assert_eq!(late, want_late, "late flags with {workers} workers, chunk {chunk}");
        assert_eq!(got.quarantine.len(), 1);
        assert_eq!((got.quarantine[0].offset, got.quarantine[0].reason.as_str()), (11, "bad_price"));
        check_rows(got.bars);

        // Rows leave at times fixed by the log: revision 0 at the window's last instant (or,
        // for a bar of late trades only, at the change), later revisions at the change that
        // made them.
        let mut times = got.bar_times.clone();
        times.sort();
        let want_times: Vec<(u64, u8, String, i64, u32)> = {
            let t = |ms: i64| ms as u64;
            let mut v = vec![
                (t(T0 + M - 1), 0, "AAA".to_owned(), T0, 0),
                (t(T0 + M), 0, "AAA".to_owned(), T0, 1), // o7 arrived at floor(pw) = T0 + 1m
                (t(T0 + M - 1), 0, "BBB".to_owned(), T0, 0),
                (t(T0 + 2 * M - 1), 0, "AAA".to_owned(), T0 + M, 0),
                (t(T0 + 14 * M), 0, "AAA".to_owned(), T0 + 10 * M, 0), // late only: at o10's time
                (t(T0 + 16 * M - 1), 0, "AAA".to_owned(), T0 + 15 * M, 0),
                (t(T0 + 5 * M - 1), 1, "AAA".to_owned(), T0, 0),
                (t(T0 + 14 * M), 1, "AAA".to_owned(), T0, 1), // o9 at floor(pw) = T0 + 14m
                (t(T0 + 5 * M - 1), 1, "BBB".to_owned(), T0, 0),
                (t(T0 + 15 * M - 1), 1, "AAA".to_owned(), T0 + 10 * M, 0),
                (t(T0 + 20 * M - 1), 1, "AAA".to_owned(), T0 + 15 * M, 0),
            ];
            v.sort();
            v
        };
        assert_eq!(times, want_times, "row times with {workers} workers, chunk {chunk}");
    }
}

#[test]
fn the_reference_agrees_with_the_hand_written_verdicts() {
    let want = expected(&log(), TimeConfig::default(), &bars_cfg());
    let rows = expected_rows();
    diff_bars(&rows, &want.bars).unwrap_or_else(|d| panic!("{d}"));
}

#[test]
fn idle_partition_stops_holding_back_the_frontier() {
    // Partition 1 never speaks and never ends. Without the idle timeout no window could close
    // while it is open; with it, AAA's window 0 is written while the source is still running.
    let log = Arc::new(MemLog { partitions: vec![log().partitions[0][..7].to_vec(), Vec::new()] });
    let open = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::channel::<Bar>();
    let tx = Arc::new(Mutex::new(tx));
    let (log2, open2) = (Arc::clone(&log), Arc::clone(&open));
    let cfg = SourceConfig { idle_timeout: Some(Duration::ZERO), ..Default::default() };
    let run = std::thread::spawn(move || {
        timely::execute(timely::Config::process(2), move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let source = MemSource::new(Arc::clone(&log2), index, peers, 100).held_open(Arc::clone(&open2));
            let tx = Arc::clone(&tx);
            let probe = worker.dataflow(|scope| {
                let out = build_pipeline(scope, source, cfg.clone(), BarsConfig::default());
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
    // A deadline for failure, not a sleep: the bar arrives as soon as the dataflow is scheduled.
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("no bar while a partition was idle");
    assert_eq!((first.symbol.as_str(), first.window_start, first.revision), ("AAA", T0, 0));
    assert_eq!(first.trade_count, 5);
    open.store(false, Ordering::SeqCst);
    assert_eq!(run.join().ok().and_then(|r| r.ok()), Some(true));
}

/// A gap learned after its bars were written revises them with the overlap; one learned
/// before a window closes is in its first version; overlapping gaps count once; a gap beyond
/// the horizon is stored and flags nothing; a foreign kind is quarantined.
#[test]
fn gaps_flag_the_bars_they_overlap_with_dense_revisions() {
    use dataflows::gap::{GAP_KIND, GapBody};
    let gap = |from: i64, to: i64, at: i64| MemRecord {
        kind: Some(GAP_KIND.to_vec()),
        timestamp: Some(at),
        payload: Some(
            GapBody { s: "AAA".into(), from: T0 + from, to: T0 + to, reason: "disconnect".into(), host: "h".into() }
                .to_json(),
        ),
    };
    let records = vec![
        trade("AAA", 10.0, T0 + 1_000, 1.0),
        trade("AAA", 11.0, T0 + 30_000, 1.0),
        trade("AAA", 12.0, T0 + 61_000, 1.0),
        trade("AAA", 13.0, T0 + 125_000, 1.0),
        // pw = 120s: windows [0,1m) and [1m,2m) are written, [0,5m) is not.
        gap(30_000, 70_000, T0 + 125_500),
        // Inside the first gap: it changes nothing, so no revision.
        gap(40_000, 50_000, T0 + 125_600),
        trade("AAA", 14.0, T0 + 200_000, 1.0),
        // Beyond the 10-minute horizon once the watermark is past 15m.
        trade("AAA", 15.0, T0 + 16 * M, 1.0),
        gap(10_000, 20_000, T0 + 16 * M + 1),
        MemRecord { kind: Some(b"gap/9".to_vec()), ..gap(0, 1, T0 + 16 * M + 2) },
    ];
    let log = MemLog { partitions: vec![records] };
    for workers in [1, 3] {
        let cfg = SourceConfig { time: TimeConfig::default(), ..Default::default() };
        let got = run_memlog(Arc::new(log.clone()), workers, 1, cfg, bars_cfg());
        let flags: BTreeMap<(u8, i64, u32), u64> =
            got.bars.iter().map(|(w, b)| ((*w, b.window_start - T0, b.revision), b.gap_ms)).collect();
        let want: BTreeMap<(u8, i64, u32), u64> = [
            ((0, 0, 0), 0),
            ((0, 0, 1), 30_000),
            ((0, M, 0), 0),
            ((0, M, 1), 10_000),
            ((0, 2 * M, 0), 0),
            ((0, 3 * M, 0), 0),
            ((0, 16 * M, 0), 0),
            ((1, 0, 0), 40_000),
            ((1, 15 * M, 0), 0),
        ]
        .into();
        assert_eq!(flags, want, "-w {workers}: (width, window, revision) -> gap_ms");
        assert_eq!(got.gaps.len(), 3, "-w {workers}: every gap record is a row");
        let beyond: Vec<bool> = got.gaps.iter().map(|g| g.beyond_horizon).collect();
        assert_eq!(beyond.iter().filter(|b| **b).count(), 1, "-w {workers}: {beyond:?}");
        assert_eq!(got.quarantine.len(), 1, "-w {workers}");
        assert_eq!(got.quarantine[0].reason, dataflows::Reason::UnknownKind);
        let want = expected(&log, TimeConfig::default(), &bars_cfg());
        diff_bars(&got.bars, &want.bars).unwrap_or_else(|d| panic!("-w {workers}: reference differs:\n{d}"));
    }
}
