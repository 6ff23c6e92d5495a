//! The `stockflow` binary: parses flags, sets up logging and the IO runtime, dispatches, and
//! turns any failure into one line on stderr and a non-zero exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::error::ErrorKind;
use std::io::Write;

use stockflow::cli::{
    CatalogArgs, Cli, Command, DevKafkaArgs, IngestArgs, JobArgs, MaintainArgs, PlotArgs, SimulateArgs, SqlArgs,
    SqlFormat, StatusArgs,
};
use stockflow::iceberg::{IcebergCatalog, IcebergTables};
use stockflow::lake::TableFormat;
use stockflow::metrics::{IngestMetrics, MetricsServer};
use stockflow::simulate::{Faults, MarketConfig, Replay, SimulateConfig, universe};
use stockflow::{demo, ingest, job};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line names the problem; the usage dump is noise here.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see stockflow --help)");
            return ExitCode::from(2);
        }
    };
    init_logging();
    // One TLS crypto provider for the process (websocket and S3 clients alike).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,stockflow=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the IO runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.check_config {
        println!("stockflow: configuration ok: {}", check_config(&cli)?);
        return Ok(());
    }
    match cli.command {
        None => run_job(cli.job),
        Some(Command::Demo(args)) => {
            let rt = runtime()?;
            let summary = demo::run(&args.config(), &rt)?;
            demo::print(&summary, &args.lake);
            Ok(())
        }
        Some(Command::Simulate(args)) => simulate(args),
        Some(Command::Ingest(args)) => run_ingest(args),
        Some(Command::DevKafka(args)) => dev_kafka(args),
        Some(Command::Catalog(args)) => catalog(args),
        Some(Command::Sql(args)) => sql(args),
        Some(Command::Status(args)) => status(args),
        Some(Command::Plot(args)) => plot(args),
        Some(Command::Maintain(args)) => maintain(args),
    }
}

/// Validates everything a command needs that can be checked without connecting, and says
/// what would run.
fn check_config(cli: &Cli) -> anyhow::Result<String> {
    let metrics = |addr: Option<std::net::SocketAddr>| addr.map_or(String::new(), |a| format!(", metrics on {a}"));
    Ok(match &cli.command {
        None => {
            let args = &cli.job;
            let cfg = args.config().map_err(anyhow::Error::msg)?;
            cfg.cluster.timely()?;
            cfg.kafka.check()?;
            stockflow::lake::Lake::check_location(&cfg.lake, &cfg.lake_options)?;
            format!(
                "job -w {} -n {} -p {}, brokers {}, topic {}, lake {}{}{}{}",
                args.workers,
                args.processes,
                args.process,
                cfg.kafka.brokers,
                cfg.kafka.topic,
                cfg.lake,
                cfg.catalog.as_ref().map_or(String::new(), |c| format!(", iceberg tables in {c}")),
                if cfg.drain { ", drain" } else { "" },
                metrics(args.metrics_addr)
            )
        }
        Some(Command::Ingest(args)) => {
            let symbols = ingest_symbols(args)?;
            let (url, _) = args.feed(finnhub_token()).map_err(anyhow::Error::msg)?;
            args.kafka.config().check()?;
            format!(
                "ingest {} symbols from {url} to {} topic {}{}",
                symbols.len(),
                args.kafka.brokers,
                args.kafka.topic,
                metrics(args.metrics_addr)
            )
        }
        Some(Command::Simulate(args)) => {
            simulate_config(args)?;
            format!("simulate {} symbols on {}", args.symbols, args.listen)
        }
        Some(Command::DevKafka(args)) => format!("dev-kafka topic {} ({} partitions)", args.topic, args.partitions),
        Some(Command::Demo(args)) => {
            format!("demo {} trades -w {} into {}", args.trades, args.workers, args.lake.display())
        }
        Some(Command::Catalog(args)) => format!("catalog into {}", args.out.display()),
        Some(Command::Sql(args)) => format!("sql on {}", args.lake.lake),
        Some(Command::Status(args)) => format!("status of {}", args.lake.lake),
        Some(Command::Plot(args)) => format!("plot {} from {} to {}", args.symbol, args.lake.lake, args.out.display()),
        Some(Command::Maintain(args)) => {
            let catalog =
                IcebergCatalog::resolve(args.lake.catalog.clone(), &args.lake.lake).map_err(anyhow::Error::msg)?;
            format!("maintain the iceberg tables of {} in {catalog}", args.lake.lake)
        }
    })
}

/// Starts the metrics endpoint if an address was given; it serves until dropped.
fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    register: impl FnOnce(&mut prometheus_client::registry::Registry),
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = addr else { return Ok(None) };
    let mut registry = prometheus_client::registry::Registry::default();
    register(&mut registry);
    Ok(Some(MetricsServer::start(addr, registry)?))
}

fn plot(args: PlotArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    let (lake, catalog) = (&args.lake, args.lake.catalog.clone());
    let candles = runtime()?.block_on(stockflow::plot::load(&lake.lake, &lake.options(), catalog, &cfg))?;
    stockflow::plot::render(&candles, &cfg, &args.out)?;
    let rising = candles.iter().filter(|c| c.rising()).count();
    println!(
        "stockflow plot: {} bars of {} ({} rising, {} falling or flat) to {}",
        candles.len(),
        cfg.symbol,
        rising,
        candles.len() - rising,
        args.out.display()
    );
    Ok(())
}

fn catalog(args: CatalogArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    let files = stockflow::catalog::generate(&cfg)?;
    if let Some(catalog) = &args.create_in {
        anyhow::ensure!(cfg.format == TableFormat::Iceberg, "--create-in is for --table-format iceberg");
        let options = stockflow::lake::LakeOptions { s3_endpoint: args.s3_endpoint.clone(), layer: None };
        let lake = stockflow::lake::Lake::open_with(&cfg.location, &options)?;
        runtime()?.block_on(IcebergTables::open(&lake, catalog, &cfg.tables()))?;
        println!("stockflow catalog: {} iceberg tables at {} in {catalog}", cfg.tables().len(), cfg.location);
    }
    let written = stockflow::catalog::write(&files, &args.out)?;
    println!("stockflow catalog: {} files under {}", written.len(), args.out.display());
    Ok(())
}

fn maintain(args: MaintainArgs) -> anyhow::Result<()> {
    let catalog = IcebergCatalog::resolve(args.lake.catalog.clone(), &args.lake.lake).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(catalog.exists(), "no iceberg catalog at {catalog}");
    let lake = stockflow::lake::Lake::open_with(&args.lake.lake, &args.lake.options())?;
    let cutoff = chrono::Utc::now().timestamp_millis()
        - i64::try_from(args.expire_snapshots_older_than.as_millis()).unwrap_or(i64::MAX);
    let expired = runtime()?.block_on(async {
        let tables = IcebergTables::connect(&lake, &catalog).await?;
        tables.expire_snapshots(cutoff, args.retain_last).await
    })?;
    for (table, n) in expired {
        println!("{table}: {n} snapshots expired");
    }
    Ok(())
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let location = &args.lake.lake;
    if !location.contains("://") && !std::path::Path::new(location).is_dir() {
        anyhow::bail!("no lake at {location}");
    }
    let lake = stockflow::lake::Lake::open_with(location, &args.lake.options())?;
    let status = runtime()?.block_on(async {
        lake.check_access().await?;
        let iceberg = stockflow::iceberg::tables_of(&lake, args.lake.catalog.clone()).await?;
        anyhow::Ok(stockflow::status::status(&lake, iceberg.as_ref()).await?)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", stockflow::status::render(&status));
    }
    Ok(())
}

fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let query = match (&args.query, &args.file) {
        (Some(q), _) => q.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        (None, None) => anyhow::bail!("give a query or --file"),
    };
    let batches = runtime()?.block_on(async {
        let engine =
            stockflow::sql::SqlEngine::open(&args.lake.lake, &args.lake.options(), args.lake.catalog.clone()).await?;
        engine.query(&query).await
    })?;
    let mut out = std::io::stdout().lock();
    match args.format {
        SqlFormat::Table => {
            let table = arrow::util::pretty::pretty_format_batches(&batches).context("formatting the result")?;
            writeln!(out, "{table}")?;
        }
        SqlFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            for batch in &batches {
                writer.write(batch).context("writing CSV")?;
            }
        }
    }
    Ok(())
}

fn run_job(args: JobArgs) -> anyhow::Result<()> {
    let cfg = args.config().map_err(anyhow::Error::msg)?;
    let rt = runtime()?;
    let controls = job::Controls::default();
    let metrics = controls.metrics.clone();
    let _server = serve_metrics(args.metrics_addr, |r| metrics.register(r))?;
    let progress = cfg.drain.then(|| stockflow::progress::Progress::start(metrics.clone(), None));
    let pause = Arc::clone(&controls.pause);
    rt.spawn(async move {
        // The first SIGTERM/SIGINT stops reading and commits what is complete; a second one
        // exits at once (the next start recovers from the last commit either way).
        if shutdown_signal().await.is_ok() {
            tracing::info!("stopping: committing what is complete (signal again to exit now)");
            pause.store(true, std::sync::atomic::Ordering::SeqCst);
            if shutdown_signal().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let report = job::run(cfg, controls, rt.handle().clone());
    if let Some(p) = progress {
        p.finish();
    }
    let report = report?;
    let rows: Vec<String> = report.written.rows.iter().map(|(t, n)| format!("{t}={n}")).collect();
    let last = match report.last_commit {
        Some(u64::MAX) => "final".to_owned(),
        Some(t) => t.to_string(),
        None => "none".to_owned(),
    };
    println!(
        "stockflow job done: {} files, {} bytes, rows {}; {} commits (last {last}, recovered from {}) in {:.1}s",
        report.written.files,
        report.written.bytes,
        rows.join(" "),
        report.commits,
        report.recovered,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    if args.list_symbols {
        for s in universe(args.symbols) {
            println!("{s}");
        }
        return Ok(());
    }
    let cfg = simulate_config(&args)?;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "simulator listening");
        stockflow::simulate::serve(listener, cfg).await.context("simulator")
    })
}

fn simulate_config(args: &SimulateArgs) -> anyhow::Result<SimulateConfig> {
    let start_ms = match &args.start {
        Some(s) => {
            chrono::DateTime::parse_from_rfc3339(s).with_context(|| format!("--start '{s}'"))?.timestamp_millis()
        }
        None => stockflow::simulate::market::DEFAULT_START_MS,
    };
    let market = MarketConfig {
        seed: args.seed,
        symbols: args.symbols,
        start_ms,
        market_rate: args.market_rate,
        anomaly_rate: args.anomaly_rate,
        ..Default::default()
    };
    let cfg = SimulateConfig {
        market,
        rate: (args.rate > 0.0).then_some(args.rate),
        total: args.trades,
        ping_every: Duration::from_secs(10),
        faults: Faults {
            disconnect_every: args.disconnect_every,
            stall_every: args.stall_every,
            stall_for: args.stall_for,
            error_after: args.error_after,
            duplicate_every: args.duplicate_every,
            outages: args.outage.clone(),
        },
        sent: None,
        replay: match &args.replay {
            Some(path) => Some(
                Replay::load(path, (args.speed > 0.0).then_some(args.speed))
                    .with_context(|| format!("reading capture {}", path.display()))?,
            ),
            None => None,
        },
    };
    Ok(cfg)
}

fn dev_kafka(args: DevKafkaArgs) -> anyhow::Result<()> {
    let mock = rdkafka::mocking::MockCluster::new(1).context("starting the mock cluster")?;
    mock.create_topic(&args.topic, args.partitions, 1).with_context(|| format!("creating topic {}", args.topic))?;
    let brokers = mock.bootstrap_servers();
    if let Some(records) = args.fill {
        let shape = fill_shape(&args, records);
        let kafka =
            stockflow::kafka::KafkaConfig { brokers: brokers.clone(), topic: args.topic.clone(), properties: vec![] };
        let log = stockflow::simulate::topic::generate(&shape);
        stockflow::simulate::topic::produce(&kafka, &shape, &log).context("filling the topic")?;
        tracing::info!(records, partitions = args.partitions, "topic filled");
    }
    if let Some(path) = &args.port_file {
        // Write then rename, so a reader never sees a partial address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{brokers}\n")).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{brokers}");
    std::io::stdout().flush().ok();
    tracing::info!(%brokers, topic = %args.topic, partitions = args.partitions, "dev kafka up; Ctrl-C or SIGTERM stops it");
    runtime()?.block_on(shutdown_signal())?;
    drop(mock);
    Ok(())
}

/// The production-shaped topic `dev-kafka --fill` writes: its span ends now.
fn fill_shape(args: &DevKafkaArgs, records: usize) -> stockflow::simulate::topic::TopicShape {
    use stockflow::simulate::topic::{Keys, TopicShape};
    let span_ms = args.fill_span.as_millis() as i64;
    TopicShape {
        seed: args.fill_seed,
        records,
        partitions: args.partitions,
        symbols: args.fill_symbols,
        keys: if args.fill_keys == "uniform" { Keys::Uniform } else { Keys::Zipf(1.1) },
        start_ms: chrono::Utc::now().timestamp_millis() - span_ms,
        span_ms,
        compression: args.fill_compression.clone(),
        batch_bytes: args.fill_batch,
        ..Default::default()
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}

fn finnhub_token() -> Option<String> {
    std::env::var("FINNHUB_TOKEN").ok().filter(|t| !t.trim().is_empty())
}

fn ingest_symbols(args: &IngestArgs) -> anyhow::Result<Vec<String>> {
    let mut symbols = args.symbols.clone();
    if let Some(path) = &args.symbols_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        symbols.extend(
            text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(String::from),
        );
    }
    if symbols.is_empty() {
        anyhow::bail!("no symbols: pass --symbols A,B or --symbols-file F");
    }
    Ok(symbols)
}

fn run_ingest(args: IngestArgs) -> anyhow::Result<()> {
    let symbols = ingest_symbols(&args)?;
    let (url, token) = args.feed(finnhub_token()).map_err(anyhow::Error::msg)?;
    if url != args.url {
        tracing::info!(%url, "FINNHUB_TOKEN is not set: reading the fallback feed");
    }
    let metrics = IngestMetrics::default();
    let _server = serve_metrics(args.metrics_addr, |r| metrics.register(r))?;
    let cfg = ingest::IngestConfig {
        token,
        stale_after: args.stale_after,
        backoff_max: args.backoff_max,
        record: args.record.clone(),
        stats_every: args.stats_every,
        duplicate_window: args.duplicate_window,
        drop_duplicate_frames: args.drop_duplicate_frames,
        host: args.ingest_host.clone().unwrap_or_else(ingest::host_name),
        metrics,
        ..ingest::IngestConfig::new(url, symbols, args.kafka.config())
    };
    let rt = runtime()?;
    let stats = rt.block_on(ingest::run(cfg))?;
    println!(
        "stockflow ingest done: {} frames, {} records, {} delivered, {} pings, {} reconnects, {} duplicate frames, \
         {} gaps",
        stats.frames, stats.records, stats.delivered, stats.pings, stats.reconnects, stats.duplicate_frames, stats.gaps
    );
    Ok(())
}
