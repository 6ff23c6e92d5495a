//! Reading a lake back in integration tests: every row of every table, keyed by where it
//! came from in Kafka, with duplicates counted; and scraping a metrics endpoint.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

pub mod moto;

use std::collections::BTreeMap;

use arrow::array::{BooleanArray, Int32Array, Int64Array, StringArray};
use stockflow::lake::{Lake, Table, read};

/// What a lake holds.
pub struct Landed {
    pub trades: BTreeMap<(i32, i64), bool>,
    pub quarantine: BTreeMap<(i32, i64), String>,
    /// Bar rows of every width table, tagged with the width index.
    pub bars: Vec<(u8, dataflows::Bar)>,
    pub duplicates: usize,
}

fn column<'a, T: 'static>(batch: &'a arrow::record_batch::RecordBatch, name: &str) -> &'a T {
    read::column(batch, name).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads every table of `lake` (bars of `widths`, in that order).
pub async fn read_lake(lake: &Lake, widths: &[u64]) -> Landed {
    let mut landed = Landed { trades: BTreeMap::new(), quarantine: BTreeMap::new(), bars: Vec::new(), duplicates: 0 };
    for batch in read::read_table(lake, &Table::Trades).await.expect("trades") {
        let (p, o) = (column::<Int32Array>(&batch, "kafka_partition"), column::<Int64Array>(&batch, "kafka_offset"));
        let late = column::<BooleanArray>(&batch, "late");
        for i in 0..batch.num_rows() {
            if landed.trades.insert((p.value(i), o.value(i)), late.value(i)).is_some() {
                landed.duplicates += 1;
            }
        }
    }
    for batch in read::read_table(lake, &Table::Quarantine).await.expect("quarantine") {
        let (p, o) = (column::<Int32Array>(&batch, "kafka_partition"), column::<Int64Array>(&batch, "kafka_offset"));
        let r = column::<StringArray>(&batch, "reason");
        for i in 0..batch.num_rows() {
            if landed.quarantine.insert((p.value(i), o.value(i)), r.value(i).to_owned()).is_some() {
                landed.duplicates += 1;
            }
        }
    }
    for (i, width) in widths.iter().enumerate() {
        let rows = read::bars(&read::read_table(lake, &Table::Bars(*width)).await.expect("bars")).expect("bar rows");
        landed.bars.extend(rows.into_iter().map(|b| (i as u8, b)));
    }
    landed
}

/// One scrape of a Prometheus text endpoint: every sample as `name{labels}` → value.
pub fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l}"));
            (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value in {l}")))
        })
        .collect()
}

/// The records of a local lake's commit log (commits and claims), in log order.
pub fn log_records(lake: &std::path::Path) -> Vec<stockflow::commit::CommitRecord> {
    let mut records: Vec<stockflow::commit::CommitRecord> = std::fs::read_dir(lake.join("_stockflow/commits"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                // A record being written can be empty for a moment: it is not there yet.
                .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
                .collect()
        })
        .unwrap_or_default();
    records.sort_by_key(|r| r.seq);
    records
}

/// How many commits (not claims) a local lake's log holds.
pub fn commits(lake: &std::path::Path) -> usize {
    log_records(lake).iter().filter(|r| r.is_commit()).count()
}
