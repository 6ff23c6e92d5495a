//! The command line: one binary, the job at the top level and tools as subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use dataflows::TimeConfig;
use dataflows::bars::BarsConfig;
use dataflows::epoch::Epochs;

use crate::demo::DemoConfig;
use crate::iceberg::IcebergCatalog;
use crate::job::{ClusterConfig, JobConfig};
use crate::kafka::{KafkaConfig, parse_property};
use crate::lake::writer::WriterConfig;
use crate::lake::{LakeOptions, TableFormat};
use crate::simulate::Outage;
use crate::sink::SinkConfig;
use crate::source::ReadConfig;

/// Finnhub trades through Kafka and timely dataflow into an exactly-once, Athena-ready
/// Parquet lake.
///
/// Without a subcommand, runs the dataflow job.
#[derive(Debug, Parser)]
#[command(name = "stockflow", version, disable_help_flag = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Print help (`-h` is timely's host file).
    #[arg(long, action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
    /// Validate the flags and configuration, print what would run, and exit without
    /// connecting to anything (for deployment files and CI).
    #[arg(long, global = true)]
    pub check_config: bool,
    /// What to run (default: the job).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The job's flags.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: embedded Kafka, simulator, ingest, job, local lake.
    Demo(DemoArgs),
    /// Serve a seeded synthetic market over Finnhub's websocket protocol.
    Simulate(SimulateArgs),
    /// Forward trades from a Finnhub-compatible websocket into Kafka.
    Ingest(IngestArgs),
    /// Run librdkafka's mock cluster as a broker of its own, for development and tests.
    DevKafka(DevKafkaArgs),
    /// Generate the Glue table inputs and Athena DDL, views and queries from the lake's schema.
    Catalog(CatalogArgs),
    /// Run SQL over a lake with the Athena tables and views (DataFusion).
    Sql(SqlArgs),
    /// Show a lake's last commit, resume offsets, files per recent hour and quarantine reasons.
    Status(StatusArgs),
    /// Draw a candlestick chart with volume of one symbol's bars as SVG.
    Plot(PlotArgs),
    /// Maintain an Iceberg lake's tables: expire old snapshots.
    Maintain(MaintainArgs),
}

/// Where a command that reads a lake finds it.
#[derive(Debug, Args, Clone)]
pub struct LakeArgs {
    /// Lake location: a folder, file:// URL, or s3://bucket/prefix.
    #[arg(long, env = "STOCKFLOW_LAKE", default_value = "./lake")]
    pub lake: String,
    /// Endpoint of an S3-compatible store (path-style requests).
    #[arg(long, env = "STOCKFLOW_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The catalog of an Iceberg lake: sqlite:PATH, glue (AWS Glue Data Catalog) or
    /// glue:URL (another Glue endpoint); default for a local lake:
    /// <lake>/_stockflow/catalog.sqlite.
    #[arg(long, env = "STOCKFLOW_CATALOG", value_parser = IcebergCatalog::parse)]
    pub catalog: Option<IcebergCatalog>,
}

impl LakeArgs {
    /// How to reach an S3 lake.
    pub fn options(&self) -> LakeOptions {
        LakeOptions { s3_endpoint: self.s3_endpoint.clone(), layer: None }
    }
}

/// Flags of `stockflow maintain`.
#[derive(Debug, Args, Clone)]
pub struct MaintainArgs {
    /// The lake and its catalog.
    #[command(flatten)]
    pub lake: LakeArgs,
    /// Expire snapshots older than this (time travel before it is no longer possible).
    #[arg(long, value_parser = parse_duration)]
    pub expire_snapshots_older_than: Duration,
    /// Snapshots each table keeps whatever their age.
    #[arg(long, default_value_t = 1)]
    pub retain_last: usize,
}

/// Flags of `stockflow plot`.
#[derive(Debug, Args, Clone)]
pub struct PlotArgs {
    /// The lake and its catalog.
    #[command(flatten)]
    pub lake: LakeArgs,
    /// The symbol to draw.
    #[arg(long)]
    pub symbol: String,
    /// First bar to draw: RFC 3339 time or YYYY-MM-DD (UTC).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Draw bars starting before this time: RFC 3339 time or YYYY-MM-DD (UTC).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// Bar width (which bars table to read).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub bars: Duration,
    /// Output SVG file.
    #[arg(long)]
    pub out: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 700)]
    pub height: u32,
}

impl PlotArgs {
    /// What to draw.
    pub fn config(&self) -> crate::plot::PlotConfig {
        crate::plot::PlotConfig {
            symbol: self.symbol.clone(),
            width_ms: millis(self.bars),
            from_ms: self.from,
            to_ms: self.to,
            size: (self.width.max(200), self.height.max(150)),
        }
    }
}

/// Parses an RFC 3339 time or a UTC date (`2025-11-24`) to ms since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| format!("'{s}': expected an RFC 3339 time (2025-11-24T14:00:00Z) or a date (2025-11-24)"))
}

/// Flags of `stockflow status`.
#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// The lake and its catalog.
    #[command(flatten)]
    pub lake: LakeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `stockflow catalog`.
#[derive(Debug, Args, Clone)]
pub struct CatalogArgs {
    /// Glue/Athena database name.
    #[arg(long, default_value = "stockflow")]
    pub database: String,
    /// Where the lake lives in S3.
    #[arg(long, default_value = crate::catalog::EXAMPLE_LOCATION)]
    pub location: String,
    /// Folder to write `glue/` and `athena/` into.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Bar widths the job writes (one table each), as the job's `--bars`.
    #[arg(long, value_delimiter = ',', default_value = "1m", value_parser = parse_duration)]
    pub bars: Vec<Duration>,
    /// First day partition projection covers (YYYY-MM-DD).
    #[arg(long, default_value = "2000-01-01")]
    pub projection_start: String,
    /// The lake's table format: hive (Glue inputs and Athena DDL for each table) or iceberg
    /// (the database, views and queries; the tables are created in their catalog).
    #[arg(long, value_enum, default_value_t = TableFormat::Hive)]
    pub table_format: TableFormat,
    /// Create the Iceberg tables at --location in this catalog now (sqlite:PATH, glue or
    /// glue:URL), as the job does at its first start.
    #[arg(long, value_parser = IcebergCatalog::parse)]
    pub create_in: Option<IcebergCatalog>,
    /// Endpoint of an S3-compatible store (path-style requests), for --create-in.
    #[arg(long, env = "STOCKFLOW_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
}

impl CatalogArgs {
    /// The generator's configuration.
    pub fn config(&self) -> crate::catalog::CatalogConfig {
        crate::catalog::CatalogConfig {
            database: self.database.clone(),
            location: self.location.clone(),
            bar_widths: self.bars.iter().map(|d| millis(*d)).collect(),
            projection_start: self.projection_start.clone(),
            format: self.table_format,
        }
    }
}

/// Output format of `stockflow sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
}

/// Flags of `stockflow sql`.
#[derive(Debug, Args, Clone)]
pub struct SqlArgs {
    /// The query (or use --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub query: Option<String>,
    /// A file holding the query, e.g. athena/queries/daily_ohlcv.sql.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The lake and its catalog.
    #[command(flatten)]
    pub lake: LakeArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
    pub format: SqlFormat,
}

/// Flags of `stockflow dev-kafka`.
#[derive(Debug, Args, Clone)]
pub struct DevKafkaArgs {
    /// Partitions of the topic to create.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Topic to create.
    #[arg(long, default_value = "trades")]
    pub topic: String,
    /// Also write the bootstrap address to this file (written whole, once the broker is up).
    #[arg(long)]
    pub port_file: Option<PathBuf>,
    /// Fill the topic with this many seeded trades of a production shape before serving
    /// (the mock broker keeps ~100k records or 5 MiB a partition: use enough partitions).
    #[arg(long, value_name = "TRADES")]
    pub fill: Option<usize>,
    /// Distinct symbols of `--fill`.
    #[arg(long, default_value_t = 500, requires = "fill")]
    pub fill_symbols: usize,
    /// Key skew of `--fill`: `zipf` (exponent 1.1) or `uniform`.
    #[arg(long, default_value = "zipf", value_parser = ["zipf", "uniform"], requires = "fill")]
    pub fill_keys: String,
    /// Producer compression of `--fill` (none, gzip, lz4, zstd, snappy).
    #[arg(long, default_value = "gzip", requires = "fill")]
    pub fill_compression: String,
    /// Producer batch size of `--fill`: large batches make each fetch one big batch.
    #[arg(long, default_value = "1MB", value_parser = parse_bytes, requires = "fill")]
    pub fill_batch: usize,
    /// Event time `--fill` spans, ending now.
    #[arg(long, default_value = "1h", value_parser = parse_duration, requires = "fill")]
    pub fill_span: Duration,
    /// Seed of `--fill`.
    #[arg(long, default_value_t = 1, requires = "fill")]
    pub fill_seed: u64,
}

/// Kafka connection flags shared by the job and ingest.
#[derive(Debug, Args, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STOCKFLOW_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Topic holding the trades.
    #[arg(long, env = "STOCKFLOW_TOPIC", default_value = "trades")]
    pub topic: String,
    /// Extra librdkafka property, as kcat takes it (repeatable): `-X security.protocol=SSL`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

/// Flags of the dataflow job.
#[derive(Debug, Args, Clone)]
pub struct JobArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", env = "STOCKFLOW_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes in the timely cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process in the cluster.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Host file: one `host:port` a line, in process order.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Lake location: a folder, file:// URL, or s3://bucket/prefix.
    #[arg(long, env = "STOCKFLOW_LAKE", default_value = "./lake")]
    pub lake: String,
    /// Endpoint of an S3-compatible store (path-style requests).
    #[arg(long, env = "STOCKFLOW_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// How the tables are laid out: hive (Parquet in dt=/hour= folders) or iceberg (snapshot
    /// commits in a catalog). A lake keeps the format it was created with.
    #[arg(long, value_enum, default_value_t = TableFormat::Hive)]
    pub table_format: TableFormat,
    /// The Iceberg catalog: sqlite:PATH, glue (AWS Glue Data Catalog, region and credentials
    /// from the environment) or glue:URL (another Glue endpoint); default for a local lake:
    /// <lake>/_stockflow/catalog.sqlite.
    #[arg(long, env = "STOCKFLOW_CATALOG", value_parser = IcebergCatalog::parse)]
    pub catalog: Option<IcebergCatalog>,
    /// Bar window width.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub window: Duration,
    /// Allowed lateness before trades count as late.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lateness: Duration,
    /// Bar widths, comma separated (each a multiple of --window; each its own table bars_<w>).
    #[arg(long, value_delimiter = ',', default_value = "1m", value_parser = parse_duration)]
    pub bars: Vec<Duration>,
    /// How long after its window ended a late trade may still revise a bar.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub revision_horizon: Duration,
    /// Silence after which a partition stops holding the watermark back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How far a trade's time may lie after its Kafka timestamp; later ones are bad ticks,
    /// quarantined as future_timestamp so they never move the watermark.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Watermark alignment: how far a partition's event time may run ahead of its worker's
    /// slowest partition before it is paused (resumed within half of it).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_drift: Duration,
    /// How often the topic is checked for partitions added while the job runs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub partition_discovery: Duration,
    /// Event-time interval at which files are closed and committed.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub commit_interval: Duration,
    /// How often each table's files are published, as TABLE=INTERVAL pairs, each a multiple of
    /// --commit-interval (e.g. trades=1h,quarantine=1h,bars=1m). A table's file stays open
    /// until its interval ends, so each closed interval has one file per worker. Default:
    /// trades and quarantine hourly, bars at every commit. Gaps are published with quarantine.
    #[arg(long, value_parser = parse_publish)]
    pub publish: Option<Publish>,
    /// Rows per Parquet file before it is rolled.
    #[arg(long, default_value_t = 2_000_000)]
    pub rows_per_file: usize,
    /// Size of a Parquet file before it is rolled (e.g. 256MiB, 64MB).
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    pub bytes_per_file: usize,
    /// Read up to the end offsets seen at start, write everything, and exit.
    #[arg(long)]
    pub drain: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9100; off by default).
    #[arg(long, env = "STOCKFLOW_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl JobArgs {
    /// The job's configuration, with cross-flag rules checked.
    pub fn config(&self) -> Result<JobConfig, String> {
        let time = TimeConfig {
            window_ms: millis(self.window),
            lateness_ms: millis(self.lateness),
            max_skew_ms: millis(self.max_clock_skew),
        };
        let bars = BarsConfig {
            widths: self.bars.iter().map(|d| millis(*d)).collect(),
            horizon_ms: millis(self.revision_horizon),
        };
        let cfg = JobConfig {
            kafka: self.kafka.config(),
            lake: self.lake.clone(),
            lake_options: LakeOptions { s3_endpoint: self.s3_endpoint.clone(), layer: None },
            time,
            sink: SinkConfig {
                epochs: self.publish.clone().unwrap_or_default().epochs(millis(self.commit_interval)),
                bar_widths: bars.widths.clone(),
                open_after_ms: bars.widths.iter().max().copied().unwrap_or(0)
                    + bars.horizon_ms
                    + time.lateness_ms
                    + time.window_ms,
                writer: WriterConfig {
                    rows_per_file: self.rows_per_file.max(1),
                    bytes_per_file: self.bytes_per_file.max(1),
                    format: self.table_format,
                    ..Default::default()
                },
            },
            bars,
            read: ReadConfig {
                idle_timeout: Some(self.idle_timeout),
                max_drift: Some(self.max_drift),
                discovery: Some(self.partition_discovery),
            },
            cluster: ClusterConfig {
                workers: self.workers,
                processes: self.processes,
                process: self.process,
                hostfile: self.hostfile.clone(),
            },
            drain: self.drain,
            catalog: match self.table_format {
                TableFormat::Hive if self.catalog.is_some() => {
                    return Err("--catalog is for --table-format iceberg".into());
                }
                TableFormat::Hive => None,
                TableFormat::Iceberg => Some(IcebergCatalog::resolve(self.catalog.clone(), &self.lake)?),
            },
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

impl KafkaArgs {
    /// The connection settings.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig { brokers: self.brokers.clone(), topic: self.topic.clone(), properties: self.properties.clone() }
    }
}

/// `--publish`: the intervals named; the others keep their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publish {
    trades: Option<Duration>,
    quarantine: Option<Duration>,
    bars: Option<Duration>,
}

impl Publish {
    /// The commit and publish intervals for commit interval `commit_ms`: trades and
    /// quarantine hourly (the first multiple of the commit interval from an hour on), bars
    /// at every commit.
    pub fn epochs(&self, commit_ms: u64) -> Epochs {
        let hourly = 3_600_000u64.div_ceil(commit_ms.max(1)) * commit_ms.max(1);
        Epochs {
            commit_ms,
            trades_ms: self.trades.map_or(hourly, millis),
            quarantine_ms: self.quarantine.map_or(hourly, millis),
            bars_ms: self.bars.map_or(commit_ms, millis),
        }
    }
}

/// Parses `trades=1h,quarantine=1h,bars=1m` (any subset).
pub fn parse_publish(s: &str) -> Result<Publish, String> {
    let mut publish = Publish::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (table, interval) =
            part.split_once('=').ok_or_else(|| format!("'{part}': expected TABLE=INTERVAL, e.g. trades=1h"))?;
        let interval = parse_duration(interval.trim())?;
        let slot = match table.trim() {
            "trades" => &mut publish.trades,
            "quarantine" => &mut publish.quarantine,
            "bars" => &mut publish.bars,
            other => return Err(format!("'{other}' is not a table (trades, quarantine, bars)")),
        };
        *slot = Some(interval);
    }
    Ok(publish)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Flags of `stockflow demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Records the simulator sends.
    #[arg(long, default_value_t = 1_000_000)]
    pub trades: u64,
    /// Worker threads of the job.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    /// Lake folder (cleared first if it holds a previous demo lake).
    #[arg(long, default_value = "./lake")]
    pub lake: PathBuf,
    /// Seed of the simulated market.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Size of the symbol universe.
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Partitions of the embedded topic (default: enough to hold the whole run).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Table format of the demo lake: hive or iceberg.
    #[arg(long, value_enum, default_value_t = TableFormat::Hive)]
    pub table_format: TableFormat,
    /// The Iceberg catalog of the demo lake: sqlite:PATH, glue or glue:URL (default: a SQLite
    /// catalog in the lake). The demo replaces its tables there.
    #[arg(long, value_parser = IcebergCatalog::parse, requires = "table_format")]
    pub catalog: Option<IcebergCatalog>,
    /// Feed outages of the simulated market, `AT:LENGTH` as `simulate --outage` (default: one
    /// of 3 minutes at half the run; `--outage none` for none): the gaps table and the bars'
    /// gap_ms show them.
    #[arg(long, value_parser = parse_demo_outage)]
    pub outage: Vec<Option<Outage>>,
}

impl DemoArgs {
    /// What the demo runs.
    pub fn config(&self) -> DemoConfig {
        let outages = if self.outage.is_empty() {
            DemoConfig::default_outages(self.trades)
        } else {
            self.outage.iter().flatten().copied().collect()
        };
        DemoConfig {
            trades: self.trades,
            workers: self.workers,
            lake: self.lake.clone(),
            seed: self.seed,
            symbols: self.symbols,
            partitions: self.partitions,
            table_format: self.table_format,
            catalog: self.catalog.clone(),
            outages,
        }
    }
}

fn parse_demo_outage(s: &str) -> Result<Option<Outage>, String> {
    if s == "none" { Ok(None) } else { parse_outage(s).map(Some) }
}

/// Flags of `stockflow simulate`.
#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    /// Seed of the market.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Size of the symbol universe.
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Records per second per connection (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Records per connection before the server closes it (default: unlimited).
    #[arg(long)]
    pub trades: Option<u64>,
    /// Simulated clock start (RFC 3339).
    #[arg(long)]
    pub start: Option<String>,
    /// Universe trades per simulated second.
    #[arg(long, default_value_t = 300.0)]
    pub market_rate: f64,
    /// Share of anomalous records.
    #[arg(long, default_value_t = 0.001)]
    pub anomaly_rate: f64,
    /// Print the symbol universe, one a line, and exit.
    #[arg(long)]
    pub list_symbols: bool,
    /// Play a capture recorded by `ingest --record` instead of the synthetic market.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Replay speed relative to the recording (0: as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Fault: close each connection after this many records (clients must reconnect).
    #[arg(long)]
    pub disconnect_every: Option<u64>,
    /// Fault: stop sending for --stall-for every this many records of a connection.
    #[arg(long)]
    pub stall_every: Option<u64>,
    /// Length of a stall.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub stall_for: Duration,
    /// Fault: send an error frame and close after this many records of a connection.
    #[arg(long)]
    pub error_after: Option<u64>,
    /// Fault: send every this many trade frames of a connection twice, byte for byte.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub duplicate_every: Option<u64>,
    /// Fault: a feed outage `AT:LENGTH` (e.g. `5000:20s`, repeatable): once AT records have
    /// been sent, every connection is closed, the next reconnect is refused (HTTP 503), and
    /// LENGTH of market time passes unsent, as trades during a real outage are never received.
    #[arg(long, value_parser = parse_outage)]
    pub outage: Vec<Outage>,
}

/// `AT:LENGTH` of `simulate --outage`.
pub fn parse_outage(s: &str) -> Result<Outage, String> {
    let (at, length) = s.split_once(':').ok_or_else(|| format!("{s}: expected AT:LENGTH, e.g. 5000:20s"))?;
    let at = at.trim().parse::<u64>().map_err(|e| format!("{s}: AT: {e}"))?;
    let length = parse_duration(length.trim())?;
    if length.is_zero() {
        return Err(format!("{s}: LENGTH must be positive"));
    }
    Ok(Outage { at, length })
}

/// Flags of `stockflow ingest`.
#[derive(Debug, Args, Clone)]
pub struct IngestArgs {
    /// Websocket URL of Finnhub or a compatible server (`stockflow simulate` listens on
    /// ws://127.0.0.1:8765). The token comes from FINNHUB_TOKEN.
    #[arg(long, env = "STOCKFLOW_FEED_URL", default_value = "wss://ws.finnhub.io")]
    pub url: String,
    /// Feed to read instead when FINNHUB_TOKEN is not set, e.g. a `stockflow simulate`
    /// server (without it, Finnhub without a token is an error).
    #[arg(long, env = "STOCKFLOW_FALLBACK_URL")]
    pub fallback_url: Option<String>,
    /// Symbols to subscribe to, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// File of symbols, one a line (`#` starts a comment).
    #[arg(long)]
    pub symbols_file: Option<PathBuf>,
    /// Replace a connection that has sent no frame (trades or pings) for this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// Longest wait between reconnection attempts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Append every received frame, with its receive time, to this file (JSON lines).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// A trade frame byte-identical to one received on the same connection within this
    /// window counts as a duplicate frame (metric and progress log).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duplicate_window: Duration,
    /// Do not forward duplicate frames to Kafka (identical trades inside different frames are
    /// always forwarded: repeated prints are genuine).
    #[arg(long)]
    pub drop_duplicate_frames: bool,
    /// Name of this ingest in its gap records (default: the machine's host name).
    #[arg(long)]
    pub ingest_host: Option<String>,
    /// Interval of the `ingest progress` log event (frames, records, delivered, failures,
    /// reconnects, queue depth).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stats_every: Duration,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9101; off by default).
    #[arg(long, env = "STOCKFLOW_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl IngestArgs {
    /// The feed to read and the token to read it with: Finnhub needs a token, and without
    /// one the fallback feed (if any) is read instead.
    pub fn feed(&self, token: Option<String>) -> Result<(String, Option<String>), String> {
        match (token, &self.fallback_url) {
            (Some(token), _) => Ok((self.url.clone(), Some(token))),
            (None, Some(fallback)) => Ok((fallback.clone(), None)),
            (None, None) if self.url.contains("finnhub.io") => {
                Err("FINNHUB_TOKEN is not set: Finnhub's websocket needs an API token".into())
            }
            (None, None) => Ok((self.url.clone(), None)),
        }
    }
}

/// Parses `500ms`, `5s`, `1m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d.is_zero() {
        return Err(format!("'{s}' must be positive"));
    }
    Ok(d)
}

/// Parses a size such as `256MiB`, `64MB`, `1GiB` or a plain byte count.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: usize = number.parse().map_err(|_| format!("'{s}': expected a size such as 256MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => return Err(format!("'{s}': unknown unit '{other}' (use B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("'{s}' must be positive")),
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{s}' is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn job_flags_parse_like_timely() {
        let cli =
            Cli::try_parse_from(["stockflow", "-w", "4", "-n", "2", "-p", "1", "-h", "hosts.txt", "--drain"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!((cli.job.workers, cli.job.processes, cli.job.process), (4, 2, 1));
        assert_eq!(cli.job.hostfile.as_deref(), Some(std::path::Path::new("hosts.txt")));
        assert!(cli.job.drain);
    }

    #[test]
    fn kafka_properties_and_durations_parse() {
        let cli =
            Cli::try_parse_from(["stockflow", "-X", "security.protocol=SSL", "--window", "5m", "--lateness", "500ms"])
                .unwrap();
        assert_eq!(cli.job.kafka.properties, [("security.protocol".to_owned(), "SSL".to_owned())]);
        assert_eq!(cli.job.window, Duration::from_secs(300));
        assert_eq!(cli.job.lateness, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["stockflow", "-X", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["stockflow", "--window", "0s"]).is_err());
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("64MB"), Ok(64_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err() && parse_bytes("12 parsecs").is_err() && parse_bytes("MiB").is_err());
    }

    #[test]
    fn bar_widths_must_be_multiples_of_the_window() {
        let cli = Cli::try_parse_from(["stockflow", "--bars", "1m,5m,1h", "--revision-horizon", "2h"]).unwrap();
        let cfg = cli.job.config().unwrap();
        assert_eq!(cfg.bars.widths, [60_000, 300_000, 3_600_000]);
        assert_eq!(cfg.sink.bar_widths, cfg.bars.widths);
        assert_eq!(cfg.bars.horizon_ms, 7_200_000);
        let cli = Cli::try_parse_from(["stockflow", "--bars", "90s"]).unwrap();
        assert!(cli.job.config().unwrap_err().contains("not a multiple"));
        let cli = Cli::try_parse_from(["stockflow", "--bars", "1m,1m"]).unwrap();
        assert!(cli.job.config().unwrap_err().contains("twice"));
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from(["stockflow", "demo", "--trades", "5000", "--lake", "/tmp/x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo(DemoArgs { trades: 5000, .. }))));
        let cli = Cli::try_parse_from(["stockflow", "ingest", "--symbols", "AAPL,MSFT"]).unwrap();
        match cli.command {
            Some(Command::Ingest(a)) => assert_eq!(a.symbols, ["AAPL", "MSFT"]),
            other => panic!("{other:?}"),
        }
    }
}
