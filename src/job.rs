//! The dataflow job: Kafka → clean → bars → lake on a timely cluster (threads, processes, hosts).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dataflows::bars::BarsConfig;
use dataflows::source::SourceConfig;
use dataflows::{Time, TimeConfig, build_pipeline};
use timely::{CommunicationConfig, WorkerConfig};
use tokio::runtime::Handle;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::commit::{
    AfterCommit, CommitError, CommitQueue, CommitRecord, CommitterConfig, Recovery, Settings, committer, read_newest,
    recover, staging_dir,
};
use crate::iceberg::{IcebergCatalog, IcebergError, IcebergTables};
use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::lake::writer::WriteStats;
use crate::lake::{Lake, LakeError, LakeOptions, Table, TableFormat};
use crate::metrics::JobMetrics;
use crate::sink::{LakeWriter, SinkConfig, SinkInputs, lake_sink};
use crate::source::discover::{self, TopicPartitions};
use crate::source::{KafkaSource, ReadConfig, SourceError, StopAt};

/// Timely's cluster shape: `-w` threads per process, `-n` processes, this one `-p`, peers in
/// the `-h` host file (one `host:port` a line, in process order).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Worker threads in this process.
    pub workers: usize,
    /// Number of processes.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// Host file for multi-process runs.
    pub hostfile: Option<PathBuf>,
}

impl ClusterConfig {
    /// One process with `workers` threads.
    pub fn local(workers: usize) -> Self {
        ClusterConfig { workers, processes: 1, process: 0, hostfile: None }
    }

    /// The timely configuration, validating the cluster flags.
    pub fn timely(&self) -> Result<timely::Config, JobError> {
        if self.workers == 0 {
            return Err(JobError::Cluster("-w must be at least 1".into()));
        }
        if self.process >= self.processes {
            return Err(JobError::Cluster(format!("-p {} must be below -n {}", self.process, self.processes)));
        }
        let communication = if self.processes == 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            let path =
                self.hostfile.as_ref().ok_or_else(|| JobError::Cluster("-n > 1 needs a host file (-h)".into()))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| JobError::Cluster(format!("cannot read host file {}: {e}", path.display())))?;
            let addresses: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            if addresses.len() < self.processes {
                return Err(JobError::Cluster(format!(
                    "host file {} lists {} hosts, -n needs {}",
                    path.display(),
                    addresses.len(),
                    self.processes
                )));
            }
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: addresses.into_iter().take(self.processes).collect(),
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config { communication, worker: WorkerConfig::default() })
    }
}

/// Everything the job needs.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// The trades topic.
    pub kafka: KafkaConfig,
    /// Lake location.
    pub lake: String,
    /// How to reach an S3 lake.
    pub lake_options: LakeOptions,
    /// Event-time model.
    pub time: TimeConfig,
    /// Bar widths and revision horizon.
    pub bars: BarsConfig,
    /// Idleness, watermark alignment and partition discovery.
    pub read: ReadConfig,
    /// Commit interval, file sizing.
    pub sink: SinkConfig,
    /// Cluster shape.
    pub cluster: ClusterConfig,
    /// Read to the end offsets seen at start, close all windows, and exit.
    pub drain: bool,
    /// The Iceberg catalog, when the tables are Iceberg tables (`sink.writer.format`).
    pub catalog: Option<IcebergCatalog>,
}

/// Why the job stopped.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Bad cluster flags.
    #[error("cluster: {0}")]
    Cluster(String),
    /// Settings that do not fit together.
    #[error("{0}")]
    Config(String),
    /// Kafka metadata or connection failure.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Reading the topic failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Committing or recovering failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The Iceberg catalog or tables could not be opened.
    #[error(transparent)]
    Iceberg(#[from] IcebergError),
    /// Timely could not start or a worker died.
    #[error("dataflow: {0}")]
    Dataflow(String),
    /// Another worker failed first; its error is reported instead.
    #[error("stopped because another worker failed")]
    Aborted,
}

impl JobConfig {
    /// Checks the rules between settings: bar widths, and commit points on window steps.
    pub fn validate(&self) -> Result<(), JobError> {
        self.bars.validate(&self.time).map_err(|e| JobError::Config(format!("--bars: {e}")))?;
        let (interval, window) = (self.sink.epochs.commit_ms, self.time.window_ms);
        if interval == 0 || interval % window != 0 {
            let ms = |v: u64| humantime::format_duration(Duration::from_millis(v)).to_string();
            return Err(JobError::Config(format!(
                "--commit-interval {} is not a multiple of --window {}: commits follow the event-time frontier, which \
                 moves one window at a time",
                ms(interval),
                ms(window)
            )));
        }
        self.sink.epochs.validate().map_err(|e| JobError::Config(format!("--publish: {e}")))?;
        if (self.sink.writer.format == TableFormat::Iceberg) != self.catalog.is_some() {
            return Err(JobError::Config("--table-format iceberg needs a catalog, and only it has one".into()));
        }
        Ok(())
    }

    /// The settings a lake's commits are tied to.
    pub fn settings(&self) -> Settings {
        Settings {
            topic: self.kafka.topic.clone(),
            window_ms: self.time.window_ms,
            lateness_ms: self.time.lateness_ms,
            bar_widths_ms: self.bars.widths.clone(),
            horizon_ms: self.bars.horizon_ms,
            commit_interval_ms: self.sink.epochs.commit_ms,
            epochs: Some(self.sink.epochs),
            max_skew_ms: Some(self.time.max_skew_ms),
            format: self.sink.writer.format,
        }
    }
}

/// How a running job is told to stop.
#[derive(Clone, Debug, Default)]
pub struct Controls {
    /// End offsets at which the sources stop (end of input: every window closes).
    pub stop: StopAt,
    /// Graceful stop (SIGTERM): read nothing more, commit what is complete, exit.
    pub pause: Arc<AtomicBool>,
    /// Where the job's figures go (served on `--metrics-addr`, shown by the progress line).
    pub metrics: JobMetrics,
}

/// What the job did.
#[derive(Clone, Debug, Default)]
pub struct JobReport {
    /// Files, bytes and rows written by this process's workers.
    pub written: WriteStats,
    /// The commit point the job recovered from (0: a new lake).
    pub recovered: Time,
    /// Commits written by this process.
    pub commits: u64,
    /// The last commit point written, if any.
    pub last_commit: Option<Time>,
    /// Wall time from start to the last commit.
    pub elapsed: Duration,
}

/// Runs the job until the source is done (`--drain` or `stop`) or paused, and everything
/// complete is committed.
pub fn run(cfg: JobConfig, controls: Controls, runtime: Handle) -> Result<JobReport, JobError> {
    let started = Instant::now();
    cfg.validate()?;
    let timely_config = cfg.cluster.timely()?;
    let lake = Lake::open_with(&cfg.lake, &cfg.lake_options)?;
    runtime.block_on(lake.check_access())?;
    let partitions = cfg.kafka.partition_count()?;
    let watermarks = cfg.kafka.watermarks(partitions)?;
    let stop = controls.stop.clone();
    if cfg.drain {
        // Ignore a stop already set by the caller: it holds the same kind of end offsets.
        let _ = stop.set(crate::kafka::ends(&watermarks));
    }
    // Process 0 recovers: finishes the newest commit's moves, claims the lake, clears older
    // generations' staging. The others read that claim once the cluster has connected, which
    // process 0 does only after recovering; no worker writes before then.
    let first = match cfg.cluster.process {
        0 => {
            let tables = match &cfg.catalog {
                Some(catalog) => {
                    let names = Table::all(&cfg.bars.widths);
                    Some(Arc::new(runtime.block_on(IcebergTables::open(&lake, catalog, &names))?))
                }
                None => None,
            };
            let recovery = runtime.block_on(recover(&lake, &cfg.settings(), tables.as_deref()))?;
            Some(Arc::new(Start::new(&cfg, &runtime, recovery, &watermarks)?.with_tables(tables)))
        }
        _ => None,
    };
    if let Some(start) = &first {
        tracing::info!(
            partitions,
            lake = %cfg.lake,
            topic = %cfg.kafka.topic,
            recovered = start.recovery.committed(),
            generation = start.recovery.generation(),
            "job starting"
        );
    }
    let started_here: Arc<OnceLock<Result<Arc<Start>, String>>> = Arc::new(OnceLock::new());
    if let Some(start) = first {
        let _ = started_here.set(Ok(start));
    }
    let starts = Arc::clone(&started_here);

    let abort = Arc::new(AtomicBool::new(false));
    let pause = Arc::clone(&controls.pause);
    let metrics = controls.metrics.clone();
    let (lake_handle, handle) = (lake.clone(), runtime.clone());
    let guards = timely::execute(timely_config, move |worker| {
        let start = starts.get_or_init(|| {
            let recovery = runtime.block_on(read_newest(&lake, &cfg.settings())).map_err(|e| e.to_string())?;
            Start::new(&cfg, &runtime, recovery, &watermarks).map(Arc::new).map_err(|e| e.to_string())
        });
        let result = match start {
            Ok(start) => {
                let shared = Shared {
                    lake: &lake,
                    stop: &stop,
                    runtime: &runtime,
                    abort: &abort,
                    start,
                    pause: &pause,
                    metrics: &metrics,
                };
                run_worker(worker, &cfg, partitions, shared)
            }
            Err(e) => Err(JobError::Dataflow(e.clone())),
        };
        if result.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        result
    })
    .map_err(JobError::Dataflow)?;

    let recovered = started_here.get().and_then(|s| s.as_ref().ok()).map_or(0, |s| s.recovery.committed());
    let mut report = JobReport { recovered, ..Default::default() };
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(done)) => {
                report.written.merge(&done.written);
                report.commits += done.commits;
                report.last_commit = report.last_commit.max(done.last_commit);
            }
            Ok(Err(JobError::Aborted)) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(panic) => {
                first_error.get_or_insert(JobError::Dataflow(panic));
            }
        }
    }
    if let Some(e) = first_error {
        // A run that lost the lake says so, whatever failed first.
        let ours = started_here.get().and_then(|s| s.as_ref().ok()).map(|s| s.recovery.generation());
        if let Some(generation) = ours.filter(|_| !matches!(e, JobError::Commit(CommitError::Superseded { .. }))) {
            if let Some(lost) = handle.block_on(crate::commit::log::superseded(&lake_handle, generation)) {
                return Err(lost.into());
            }
        }
        return Err(e);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Where each partition starts reading: a restart's replay offset, or the first offset the
/// broker holds. Records a restart needs that retention deleted, or a partition the lake never
/// read that no longer starts at offset 0, are a clear error instead of a silent skip.
fn start_offsets(
    recovery: &Recovery,
    watermarks: &HashMap<i32, (i64, i64)>,
) -> Result<std::collections::BTreeMap<i32, i64>, KafkaSetupError> {
    let replays = recovery.starts();
    if let Some(&partition) = replays.keys().find(|p| !watermarks.contains_key(p)) {
        // Partitions are never removed: metadata this stale must not start a run.
        return Err(KafkaSetupError::Vanished { partition, count: watermarks.len() });
    }
    let mut starts = std::collections::BTreeMap::new();
    for (&partition, &(low, _)) in watermarks {
        let start = match replays.get(&partition) {
            Some(&replay) if replay < low => return Err(KafkaSetupError::Retention { partition, replay, low }),
            Some(&replay) => replay,
            None if recovery.has_commit() && low > 0 => return Err(KafkaSetupError::Unread { partition, low }),
            None => low,
        };
        starts.insert(partition, start);
    }
    Ok(starts)
}

/// Where a process starts: the lake's newest record (process 0's claim) and the partitions
/// to read from where, with discovery running for as long as the process does.
struct Start {
    recovery: Recovery,
    known: Arc<TopicPartitions>,
    /// The Iceberg tables, on the process that commits.
    tables: Option<Arc<IcebergTables>>,
    _discovery: Option<discover::Discovery>,
}

impl Start {
    fn new(
        cfg: &JobConfig,
        runtime: &Handle,
        recovery: Recovery,
        watermarks: &HashMap<i32, (i64, i64)>,
    ) -> Result<Self, JobError> {
        let known = TopicPartitions::new(start_offsets(&recovery, watermarks)?);
        // A drain reads to the end offsets it saw at start: partitions added later were empty then.
        let _discovery = match cfg.read.discovery {
            Some(every) if !cfg.drain => Some(discover::spawn(runtime, cfg.kafka.clone(), Arc::clone(&known), every)),
            _ => None,
        };
        Ok(Start { recovery, known, tables: None, _discovery })
    }

    fn with_tables(self, tables: Option<Arc<IcebergTables>>) -> Self {
        Start { tables, ..self }
    }
}

/// What the workers of one process share.
struct Shared<'a> {
    lake: &'a Lake,
    stop: &'a StopAt,
    runtime: &'a Handle,
    abort: &'a AtomicBool,
    start: &'a Start,
    pause: &'a Arc<AtomicBool>,
    metrics: &'a JobMetrics,
}

/// What one worker did.
struct WorkerReport {
    written: WriteStats,
    commits: u64,
    last_commit: Option<Time>,
}

/// After each commit: counts it, and commits the Kafka offsets of its resume positions for
/// lag monitoring only (where the job restarts is decided by the commit records, never by
/// these).
fn after_commit(cfg: &KafkaConfig, metrics: JobMetrics) -> AfterCommit {
    let consumer: Option<BaseConsumer> = cfg
        .client_config()
        .set("group.id", "stockflow")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| tracing::warn!(error = %e, "no consumer for offset commits; lag monitoring is off"))
        .ok();
    let topic = cfg.topic.clone();
    Box::new(move |record: &CommitRecord, took: Duration| {
        metrics.commit(record.commit, took);
        let Some(consumer) = &consumer else { return };
        let mut tpl = TopicPartitionList::new();
        for (p, pos) in &record.partitions {
            let _ = tpl.add_partition_offset(&topic, *p, Offset::Offset(pos.resume));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing Kafka offsets failed (lag monitoring only)");
        }
    })
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    cfg: &JobConfig,
    partitions: i32,
    shared: Shared<'_>,
) -> Result<WorkerReport, JobError> {
    let Shared { lake, stop, runtime, abort, start, pause, metrics } = shared;
    let recovery = &start.recovery;
    let (index, peers) = (worker.index(), worker.peers());
    let shape = (index, peers, cfg.cluster.workers);
    let source = KafkaSource::new(&cfg.kafka, &start.known, shape, Arc::clone(stop), metrics.clone())?;
    let run = staging_dir(recovery.generation());
    let writer =
        Rc::new(RefCell::new(LakeWriter::new(lake.clone(), index, &run, runtime.clone(), &cfg.sink, metrics.clone())?));
    let claim = recovery.last.clone().unwrap_or_else(|| CommitRecord::template(cfg.settings()));
    let queue = (index == 0).then(|| {
        let after = after_commit(&cfg.kafka, metrics.clone());
        Rc::new(CommitQueue::start(lake.clone(), start.tables.clone(), &claim, runtime.clone(), Some(after)))
    });
    let committed = recovery.committed();
    let (source_error, sink_error) = worker.dataflow(|scope| {
        let source_cfg = SourceConfig {
            time: cfg.time,
            idle_timeout: cfg.read.idle_timeout,
            max_drift_ms: cfg.read.max_drift.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            clocks: recovery.clocks(),
            resume: recovery.resume(),
            pause: Some(Arc::clone(pause)),
            epochs: cfg.sink.epochs,
            batch: dataflows::source::read_batch(cfg.cluster.workers),
        };
        let out = build_pipeline(scope, source, source_cfg, cfg.bars.clone());
        let inputs = SinkInputs { trades: out.trades, quarantine: out.quarantine, gaps: out.gaps, bars: out.bars };
        let (sink_error, staged) = lake_sink(inputs, Rc::clone(&writer), &cfg.sink, committed);
        let committer_cfg = CommitterConfig {
            epochs: cfg.sink.epochs,
            partitions,
            after: committed,
            template: CommitRecord::template(cfg.settings()),
        };
        committer(out.crossings, staged, committer_cfg, queue.clone());
        (out.error, sink_error)
    });
    // Drive the dataflow until it completes; wake-ups come from Kafka's callback, timers and
    // peers, and the park timeout bounds how long an abort by another worker goes unnoticed.
    let mut failed: Option<JobError> = None;
    while failed.is_none() && worker.step_or_park(Some(Duration::from_millis(100))) {
        failed = source_error
            .borrow_mut()
            .take()
            .map(JobError::from)
            .or_else(|| sink_error.borrow_mut().take().map(JobError::from))
            .or_else(|| queue.as_ref().and_then(|q| q.take_error()).map(JobError::from))
            .or_else(|| abort.load(Ordering::SeqCst).then_some(JobError::Aborted));
    }
    if let Some(e) = failed.or_else(|| sink_error.borrow_mut().take().map(JobError::from)) {
        // Stop like a crash: no further commit, and no dataflow left for timely to wait on.
        if let Some(queue) = &queue {
            queue.abort();
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
        return Err(e);
    }
    let written = writer.borrow_mut().finish()?;
    let (commits, last_commit) = match &queue {
        Some(queue) => queue.finish()?,
        None => (0, None),
    };
    Ok(WorkerReport { written, commits, last_commit })
}
