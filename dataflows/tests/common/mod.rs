//! Seeded logs shared by the dataflow tests.

use dataflows::gap::{GAP_KIND, GapBody};
use dataflows::memlog::{MemLog, MemRecord};

const BASE: i64 = 1_763_997_000_000;

/// A random log: symbols pinned to partitions, event times that wander forwards with jitter,
/// late stragglers, trades on window boundaries, zero volumes, some garbage, and gap records
/// (recent and old, overlapping, with a foreign kind or a broken body now and then).
pub fn random_log(seed: u64, partitions: usize, records: usize) -> MemLog {
    let mut rng = fastrand::Rng::with_seed(seed);
    let symbols: Vec<String> = (0..12).map(|i| format!("S{i}")).collect();
    let mut log = MemLog { partitions: vec![Vec::new(); partitions] };
    let mut clock = vec![BASE + rng.i64(0..60_000); partitions];
    for _ in 0..records {
        let s = rng.usize(..symbols.len());
        let p = s % partitions;
        clock[p] += rng.i64(0..1_500);
        if rng.u8(..100) < 2 {
            let to = clock[p] - rng.i64(0..5_000);
            let from = to - rng.i64(1..400_000);
            let body =
                GapBody { s: symbols[s].as_str().into(), from, to, reason: "disconnect".into(), host: "h".into() };
            let (kind, payload) = match rng.u8(..10) {
                0 => (b"gap/0".to_vec(), body.to_json()),
                1 => (GAP_KIND.to_vec(), format!(r#"{{"s":"{}","from":{to},"to":{from}}}"#, symbols[s]).into_bytes()),
                _ => (GAP_KIND.to_vec(), body.to_json()),
            };
            log.partitions[p].push(MemRecord { kind: Some(kind), timestamp: Some(clock[p]), payload: Some(payload) });
            continue;
        }
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
        log.partitions[p].push(MemRecord { kind: None, timestamp: Some(clock[p]), payload: Some(payload) });
    }
    log
}
