//! The `stockflow` binary: parses flags, sets up logging and the IO runtime, dispatches, and
//! turns any failure into one line on stderr and a non-zero exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::error::ErrorKind;
use std::io::Write;

use stockflow::cli::{Cli, Command, DevKafkaArgs, IngestArgs, JobArgs, SimulateArgs, SqlArgs, SqlFormat, StatusArgs};
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
    match cli.command {
        None => run_job(cli.job),
        Some(Command::Demo(args)) => {
            let rt = runtime()?;
            let summary = demo::run(&args, &rt)?;
            demo::print(&summary, &args.lake);
            Ok(())
        }
        Some(Command::Simulate(args)) => simulate(args),
        Some(Command::Ingest(args)) => run_ingest(args),
        Some(Command::DevKafka(args)) => dev_kafka(args),
        Some(Command::Catalog(args)) => {
            let written = stockflow::catalog::write(&args.config(), &args.out)?;
            println!("stockflow catalog: {} files under {}", written.len(), args.out.display());
            Ok(())
        }
        Some(Command::Sql(args)) => sql(args),
        Some(Command::Status(args)) => status(args),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    if !args.lake.contains("://") && !std::path::Path::new(&args.lake).is_dir() {
        anyhow::bail!("no lake at {}", args.lake);
    }
    let options = stockflow::lake::LakeOptions { s3_endpoint: args.s3_endpoint.clone(), layer: None };
    let lake = stockflow::lake::Lake::open_with(&args.lake, &options)?;
    let status = runtime()?.block_on(async {
        lake.check_access().await?;
        anyhow::Ok(stockflow::status::status(&lake).await?)
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
    let options = stockflow::lake::LakeOptions { s3_endpoint: args.s3_endpoint.clone(), layer: None };
    let batches = runtime()?.block_on(async {
        let engine = stockflow::sql::SqlEngine::open(&args.lake, &options).await?;
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
    let report = job::run(cfg, controls, rt.handle().clone())?;
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
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "simulator listening");
        stockflow::simulate::serve(listener, cfg).await.context("simulator")
    })
}

fn dev_kafka(args: DevKafkaArgs) -> anyhow::Result<()> {
    let mock = rdkafka::mocking::MockCluster::new(1).context("starting the mock cluster")?;
    mock.create_topic(&args.topic, args.partitions, 1).with_context(|| format!("creating topic {}", args.topic))?;
    let brokers = mock.bootstrap_servers();
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}

fn run_ingest(args: IngestArgs) -> anyhow::Result<()> {
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
    let token = std::env::var("FINNHUB_TOKEN").ok().filter(|t| !t.trim().is_empty());
    if token.is_none() && args.url.contains("finnhub.io") {
        anyhow::bail!("FINNHUB_TOKEN is not set: Finnhub's websocket needs an API token");
    }
    let cfg = ingest::IngestConfig {
        token,
        stale_after: args.stale_after,
        backoff_max: args.backoff_max,
        record: args.record.clone(),
        stats_every: args.stats_every,
        ..ingest::IngestConfig::new(args.url, symbols, args.kafka.config())
    };
    let rt = runtime()?;
    let stats = rt.block_on(ingest::run(cfg))?;
    println!(
        "stockflow ingest done: {} frames, {} records, {} delivered, {} pings, {} reconnects",
        stats.frames, stats.records, stats.delivered, stats.pings, stats.reconnects
    );
    Ok(())
}
