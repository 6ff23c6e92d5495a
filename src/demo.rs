//! `stockflow demo`: the whole pipeline in one process on the embedded defaults: librdkafka's
//! mock cluster as the broker, the simulator as Finnhub, ingest, the job and a local lake;
//! then a check that every record landed exactly once, and a summary.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dataflows::bars::BarsConfig;
use dataflows::{Bar, TimeConfig};
use rdkafka::mocking::MockCluster;
use tokio::runtime::Runtime;

use crate::iceberg::{IcebergCatalog, IcebergTables};
use crate::ingest::{self, IngestConfig};
use crate::job::{self, ClusterConfig, JobConfig};
use crate::kafka::KafkaConfig;
use crate::lake::writer::WriterConfig;
use crate::lake::{Lake, Table, TableFormat, read};
use crate::simulate::{Faults, MarketConfig, Outage, SimulateConfig, universe};
use crate::sink::SinkConfig;
use crate::source::StopAt;

/// Records per partition the demo aims for: the mock broker keeps only ~100k per partition.
const RECORDS_PER_PARTITION: u64 = 50_000;

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Records the simulator sends.
    pub trades: u64,
    /// Worker threads of the job.
    pub workers: usize,
    /// Lake folder (cleared first if it holds a previous demo lake).
    pub lake: PathBuf,
    /// Seed of the simulated market.
    pub seed: u64,
    /// Size of the symbol universe.
    pub symbols: usize,
    /// Partitions of the embedded topic (`None`: enough to hold the whole run).
    pub partitions: Option<i32>,
    /// Table format of the lake.
    pub table_format: TableFormat,
    /// The Iceberg catalog named for the demo's tables (`None`: one in the lake).
    pub catalog: Option<IcebergCatalog>,
    /// Feed outages of the simulated market.
    pub outages: Vec<Outage>,
}

impl DemoConfig {
    /// The default outage: 3 minutes of market time at half the run, so the lake shows a
    /// gap and the bars it flags.
    pub fn default_outages(trades: u64) -> Vec<Outage> {
        vec![Outage { at: trades / 2, length: Duration::from_secs(180) }]
    }
}

/// What the demo found in its lake.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    /// Records ingest delivered to Kafka.
    pub produced: u64,
    /// Rows in `trades`.
    pub trades: u64,
    /// Rows in `quarantine`, by reason.
    pub quarantined: BTreeMap<String, u64>,
    /// Rows in `gaps`.
    pub gaps: u64,
    /// Bars (latest revisions) a gap overlaps.
    pub flagged_bars: u64,
    /// Late trades.
    pub late: u64,
    /// Bars in `bars_1m` (latest revisions).
    pub bars: u64,
    /// Rows in `bars_1m` that revise a bar after a late trade.
    pub revisions: u64,
    /// Distinct symbols with bars.
    pub bar_symbols: usize,
    /// Parquet files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Commits written (the last one final).
    pub commits: u64,
    /// Wall time from start to verified lake.
    pub elapsed: Duration,
    /// Records per second end to end.
    pub rate: f64,
    /// A few bars of the most active symbol.
    pub sample: Vec<Bar>,
}

/// Refuses to clear a folder that is neither empty nor a previous stockflow lake; runs
/// `before_clearing` on a previous lake, then clears it.
fn prepare_lake(dir: &Path, before_clearing: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        let foreign = entries.any(|e| {
            e.map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !(name == "_stockflow" || Table::from_name(&name).is_some())
            })
            .unwrap_or(true)
        });
        if foreign {
            bail!(
                "{} holds files that are not a stockflow lake; pass --lake with an empty or new folder",
                dir.display()
            );
        }
        before_clearing()?;
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Ok(())
}

/// Runs the demo on `runtime` and verifies the lake.
pub fn run(args: &DemoConfig, runtime: &Runtime) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let bar_widths = BarsConfig::default().widths;
    let catalog = match args.table_format {
        TableFormat::Hive => None,
        TableFormat::Iceberg => Some(
            IcebergCatalog::resolve(args.catalog.clone(), &args.lake.to_string_lossy()).map_err(anyhow::Error::msg)?,
        ),
    };
    prepare_lake(&args.lake, || match (&catalog, &args.catalog) {
        // A shared catalog keeps the previous demo's tables, whose files go with the lake.
        (Some(catalog), Some(_)) => {
            let lake = Lake::open(&args.lake.to_string_lossy())?;
            runtime.block_on(async {
                IcebergTables::connect(&lake, catalog).await?.drop_tables(&Table::all(&bar_widths)).await
            })?;
            Ok(())
        }
        _ => Ok(()),
    })?;
    let partitions = args.partitions.unwrap_or_else(|| args.trades.div_ceil(RECORDS_PER_PARTITION).clamp(4, 64) as i32);

    let mock = MockCluster::new(1).context("starting the embedded Kafka (librdkafka mock cluster)")?;
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, partitions, 1).context("creating the embedded topic")?;

    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("binding the simulator")?;
    let url = format!("ws://{}", listener.local_addr()?);
    let market = MarketConfig { seed: args.seed, symbols: args.symbols, ..Default::default() };
    let sim = SimulateConfig {
        market,
        rate: None,
        total: Some(args.trades),
        ping_every: Duration::from_secs(5),
        faults: Faults { outages: args.outages.clone(), ..Default::default() },
        sent: None,
        replay: None,
    };
    let server = runtime.spawn(crate::simulate::serve(listener, sim));

    let window = TimeConfig::default();
    let job_cfg = JobConfig {
        kafka: kafka.clone(),
        lake: args.lake.to_string_lossy().into_owned(),
        lake_options: Default::default(),
        time: window,
        bars: BarsConfig::default(),
        read: Default::default(),
        sink: SinkConfig {
            // The simulated clock runs far ahead of wall time: commit hourly so files are large.
            epochs: dataflows::epoch::Epochs::every_commit(3_600_000),
            bar_widths: bar_widths.clone(),
            open_after_ms: 3 * 3_600_000,
            writer: WriterConfig { format: args.table_format, ..Default::default() },
        },
        cluster: ClusterConfig::local(args.workers),
        drain: false,
        catalog: catalog.clone(),
    };
    let stop: StopAt = Arc::default();
    let job_stop = Arc::clone(&stop);
    let handle = runtime.handle().clone();
    let controls = job::Controls { stop: job_stop, ..Default::default() };
    let progress = crate::progress::Progress::start(controls.metrics.clone(), Some(args.trades));
    let job = std::thread::spawn(move || job::run(job_cfg, controls, handle));

    let ingest_cfg = IngestConfig::new(url, universe(args.symbols), kafka.clone());
    let ingested = runtime.block_on(ingest::run(ingest_cfg));
    server.abort();
    let ingested = match ingested {
        Ok(stats) => stats,
        Err(e) => {
            // Let the job stop at whatever reached Kafka, then report the ingest failure.
            let _ = stop.set(kafka.end_offsets(partitions).unwrap_or_default());
            let _ = job.join();
            return Err(e).context("ingest");
        }
    };
    let watermarks = kafka.watermarks(partitions)?;
    let _ = stop.set(crate::kafka::ends(&watermarks));
    let report = job.join().map_err(|_| anyhow::anyhow!("the job thread panicked"));
    progress.finish();
    let report = report??;

    let lake = Lake::open(&args.lake.to_string_lossy())?;
    let iceberg = match &catalog {
        Some(catalog) => Some(runtime.block_on(IcebergTables::open(&lake, catalog, &Table::all(&bar_widths)))?),
        None => None,
    };
    let mut summary =
        runtime.block_on(verify(&lake, iceberg.as_ref(), &watermarks, ingested.delivered, window.window_ms))?;
    summary.files = report.written.files;
    summary.bytes = report.written.bytes;
    summary.commits = report.commits;
    summary.elapsed = started.elapsed();
    summary.rate = summary.produced as f64 / summary.elapsed.as_secs_f64();
    drop(mock);
    Ok(summary)
}

/// Reads the lake back and checks that every record of the topic is in `trades`,
/// `quarantine` or `gaps` exactly once.
pub async fn verify(
    lake: &Lake,
    iceberg: Option<&IcebergTables>,
    watermarks: &HashMap<i32, (i64, i64)>,
    produced: u64,
    window_ms: u64,
) -> anyhow::Result<DemoSummary> {
    let trades = read::rows(lake, &Table::Trades, iceberg).await?;
    let quarantine = read::rows(lake, &Table::Quarantine, iceberg).await?;
    let gaps = read::rows(lake, &Table::Gaps, iceberg).await?;
    let rows = read::bars(&read::rows(lake, &Table::Bars(window_ms), iceberg).await?)?;
    let revisions = rows.iter().filter(|b| b.revision > 0).count() as u64;
    let bars = read::latest(rows)?;

    let mut seen: HashMap<i32, Vec<u8>> =
        watermarks.iter().map(|(p, (lo, hi))| (*p, vec![0u8; (hi - lo).max(0) as usize])).collect();
    let mut outside = 0u64;
    let records = [&trades, &quarantine, &gaps].into_iter().map(|t| read::positions(t));
    for (p, o) in records.collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
        match (seen.get_mut(&p), watermarks.get(&p)) {
            (Some(marks), Some((lo, _))) if o >= *lo && ((o - lo) as usize) < marks.len() => {
                let m = &mut marks[(o - lo) as usize];
                *m = m.saturating_add(1);
            }
            _ => outside += 1,
        }
    }
    let missing: usize = seen.values().map(|m| m.iter().filter(|&&c| c == 0).count()).sum();
    let duplicated: usize = seen.values().map(|m| m.iter().filter(|&&c| c > 1).count()).sum();
    let in_topic: i64 = watermarks.values().map(|(lo, hi)| hi - lo).sum();
    if missing > 0 || duplicated > 0 || outside > 0 || in_topic as u64 != produced {
        bail!(
            "lake does not match the topic: {missing} records missing, {duplicated} duplicated, {outside} unknown; \
             topic holds {in_topic}, ingest delivered {produced}"
        );
    }

    let mut quarantined = BTreeMap::new();
    for reason in read::reasons(&quarantine)? {
        *quarantined.entry(reason).or_insert(0) += 1;
    }
    let mut volume_by_symbol: HashMap<&str, f64> = HashMap::new();
    for b in &bars {
        *volume_by_symbol.entry(b.symbol.as_str()).or_default() += b.volume;
    }
    let top = volume_by_symbol.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(s, _)| s.to_string());
    let mut sample: Vec<Bar> = bars.iter().filter(|b| Some(b.symbol.as_str()) == top.as_deref()).cloned().collect();
    // The symbol's five busiest minutes, in time order.
    sample.sort_by_key(|b| std::cmp::Reverse(b.trade_count));
    sample.truncate(5);
    sample.sort_by_key(|b| b.window_start);

    Ok(DemoSummary {
        produced,
        trades: trades.iter().map(|b| b.num_rows() as u64).sum(),
        quarantined,
        late: read::late_count(&trades)?,
        gaps: gaps.iter().map(|b| b.num_rows() as u64).sum(),
        flagged_bars: bars.iter().filter(|b| b.gap_ms > 0).count() as u64,
        bars: bars.len() as u64,
        revisions,
        bar_symbols: volume_by_symbol.len(),
        sample,
        ..Default::default()
    })
}

/// Prints the summary for people.
pub fn print(summary: &DemoSummary, lake: &Path) {
    let quarantined: u64 = summary.quarantined.values().sum();
    println!(
        "stockflow demo: {} records produced, {} trades + {} quarantined + {} gap records landed exactly once \
         ({} late); {} bars ({} revisions) over {} symbols, {} of them overlapping a feed gap; {} files, {:.1} MiB \
         in {} commits; {:.0} records/s; {:.1}s",
        summary.produced,
        summary.trades,
        quarantined,
        summary.gaps,
        summary.late,
        summary.bars,
        summary.revisions,
        summary.bar_symbols,
        summary.flagged_bars,
        summary.files,
        summary.bytes as f64 / (1024.0 * 1024.0),
        summary.commits,
        summary.rate,
        summary.elapsed.as_secs_f64()
    );
    if !summary.quarantined.is_empty() {
        let reasons: Vec<String> = summary.quarantined.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!("quarantine by reason: {}", reasons.join(", "));
    }
    println!("lake: {}", lake.display());
    if !summary.sample.is_empty() {
        println!(
            "\n{:<16} {:<24} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>6}",
            "symbol", "window_start (UTC)", "open", "high", "low", "close", "volume", "vwap", "trades"
        );
        for b in &summary.sample {
            let start = chrono::DateTime::from_timestamp_millis(b.window_start).unwrap_or_default();
            println!(
                "{:<16} {:<24} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.2} {:>10} {:>6}",
                b.symbol,
                start.format("%Y-%m-%d %H:%M"),
                b.open,
                b.high,
                b.low,
                b.close,
                b.volume,
                b.vwap.map_or("null".into(), |v| format!("{v:.2}")),
                b.trade_count
            );
        }
    }
}
