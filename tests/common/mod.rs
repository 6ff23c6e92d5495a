//! Reading a lake back in integration tests: every row of every table, keyed by where it
//! came from in Kafka, with duplicates counted; and scraping a metrics endpoint.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

pub mod moto;

use std::collections::BTreeMap;

use arrow::array::{BooleanArray, Int32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use stockflow::iceberg::IcebergTables;
use stockflow::iceberg::schema::conform;
use stockflow::lake::{Lake, Table, read};

/// The settings of a lake written with the job's defaults and 1m bars (Hive format).
pub fn settings() -> stockflow::commit::Settings {
    stockflow::commit::Settings {
        topic: "trades".into(),
        window_ms: 60_000,
        lateness_ms: 5_000,
        bar_widths_ms: vec![60_000],
        horizon_ms: 3_600_000,
        commit_interval_ms: 60_000,
        epochs: None,
        max_skew_ms: Some(60_000),
        format: Default::default(),
    }
}

/// What a lake holds.
pub struct Landed {
    pub trades: BTreeMap<(i32, i64), bool>,
    pub quarantine: BTreeMap<(i32, i64), String>,
    /// Gap rows by Kafka position: the body and whether it was beyond the horizon.
    pub gaps: BTreeMap<(i32, i64), (dataflows::gap::GapBody, bool)>,
    /// Bar rows of every width table, tagged with the width index.
    pub bars: Vec<(u8, dataflows::Bar)>,
    pub duplicates: usize,
}

fn column<'a, T: 'static>(batch: &'a arrow::record_batch::RecordBatch, name: &str) -> &'a T {
    read::column(batch, name).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads every table of `lake` (bars of `widths`, in that order).
pub async fn read_lake(lake: &Lake, widths: &[u64]) -> Landed {
    read_lake_from(lake, widths, None).await
}

/// Reads every table of `lake`, through the Iceberg catalog of `iceberg` if given.
pub async fn read_lake_from(lake: &Lake, widths: &[u64], iceberg: Option<&IcebergTables>) -> Landed {
    let trades = read::rows(lake, &Table::Trades, iceberg).await.expect("trades");
    let quarantine = read::rows(lake, &Table::Quarantine, iceberg).await.expect("quarantine");
    let gaps = read::rows(lake, &Table::Gaps, iceberg).await.expect("gaps");
    let mut bars = Vec::new();
    for width in widths {
        bars.push(read::rows(lake, &Table::Bars(*width), iceberg).await.expect("bars"));
    }
    landed(trades, quarantine, gaps, bars)
}

/// The rows of each table as read by another engine into `<dir>/<table>.parquet`, their
/// time columns cast to the lake's milliseconds.
pub async fn read_exported(dir: &std::path::Path, widths: &[u64]) -> Landed {
    let folder = Lake::open(&dir.to_string_lossy()).expect("export folder");
    let read = |table: Table| {
        let folder = folder.clone();
        async move {
            let location = folder.path(&format!("{}.parquet", table.name()));
            let batches = read::read_file(&folder, &location).await.expect("exported table");
            let schema = table.schema();
            batches.iter().map(|b| conform(b, &schema).expect("the lake's columns")).collect::<Vec<_>>()
        }
    };
    let mut bars = Vec::new();
    for width in widths {
        bars.push(read(Table::Bars(*width)).await);
    }
    landed(read(Table::Trades).await, read(Table::Quarantine).await, read(Table::Gaps).await, bars)
}

/// Rows of trades, quarantine, gaps and each bar table, keyed.
fn landed(
    trades: Vec<RecordBatch>,
    quarantine: Vec<RecordBatch>,
    gaps: Vec<RecordBatch>,
    bars: Vec<Vec<RecordBatch>>,
) -> Landed {
    let mut landed = Landed {
        trades: BTreeMap::new(),
        quarantine: BTreeMap::new(),
        gaps: BTreeMap::new(),
        bars: Vec::new(),
        duplicates: 0,
    };
    for g in read::gaps(&gaps).expect("gap rows") {
        if landed.gaps.insert((g.partition, g.offset), (g.body, g.beyond_horizon)).is_some() {
            landed.duplicates += 1;
        }
    }
    for batch in trades {
        let (p, o) = (column::<Int32Array>(&batch, "kafka_partition"), column::<Int64Array>(&batch, "kafka_offset"));
        let late = column::<BooleanArray>(&batch, "late");
        for i in 0..batch.num_rows() {
            if landed.trades.insert((p.value(i), o.value(i)), late.value(i)).is_some() {
                landed.duplicates += 1;
            }
        }
    }
    for batch in quarantine {
        let (p, o) = (column::<Int32Array>(&batch, "kafka_partition"), column::<Int64Array>(&batch, "kafka_offset"));
        let r = column::<StringArray>(&batch, "reason");
        for i in 0..batch.num_rows() {
            if landed.quarantine.insert((p.value(i), o.value(i)), r.value(i).to_owned()).is_some() {
                landed.duplicates += 1;
            }
        }
    }
    for (i, batches) in bars.iter().enumerate() {
        let rows = read::bars(batches).expect("bar rows");
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
