//! The commit protocol: which output is in the lake, recorded with one create-only put per
//! commit point, and the recovery that makes a restart continue exactly where it stopped.
//!
//! Commit point `T` (a multiple of `--commit-interval`) holds every output row with timely
//! time `< T`. Worker 0's committer writes `_stockflow/commits/<T>.json` once its input
//! frontier — the sources' positions and the sinks' staged files — has passed `T`, then moves
//! the staged files into their tables. The record is the commit: a crash before it leaves
//! only staging garbage, a crash after it leaves moves that recovery finishes.

pub mod record;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use dataflows::resume::{Crossing, Resume};
use dataflows::{PartitionClock, Time};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

pub use record::{CommitRecord, Settings};

use crate::lake::writer::Staged;
use crate::lake::{COMMITS, Lake, LakeError, STAGING};

/// Commit-protocol failures.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The create-only put found the record already there.
    #[error("commit {0} already exists in the lake: another job is writing to it")]
    Conflict(String),
    /// A committed file is neither staged nor in its table.
    #[error("committed file {0} is missing from the lake")]
    Missing(String),
    /// The lake was written with other settings.
    #[error("the lake was written with {0}; run with the same settings or use a new lake")]
    Settings(String),
    /// The newest commit closed the lake.
    #[error(
        "the lake was finalised by a --drain run (all windows closed at the end of the log); use a new lake to \
         process more of the topic"
    )]
    Final,
    /// A commit record could not be read.
    #[error("commit record {path}: {reason}")]
    Corrupt {
        /// The record.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

impl From<object_store::Error> for CommitError {
    fn from(e: object_store::Error) -> Self {
        CommitError::Lake(LakeError::Store(e))
    }
}

/// What recovery found.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// The newest commit, if any.
    pub last: Option<CommitRecord>,
    /// Objects removed from staging (uncommitted output of earlier runs).
    pub discarded: usize,
}

impl Recovery {
    /// The source's restart plan.
    pub fn resume(&self) -> Option<Resume> {
        self.last.as_ref().map(|r| Resume { commit: r.commit, partitions: r.positions().collect() })
    }

    /// Where each partition starts reading: its replay offset.
    pub fn starts(&self) -> HashMap<i32, i64> {
        self.last.iter().flat_map(|r| r.positions().map(|(p, pos)| (p, pos.replay))).collect()
    }

    /// Each partition's clock at its replay offset.
    pub fn clocks(&self) -> HashMap<i32, PartitionClock> {
        self.last.iter().flat_map(|r| r.positions().map(|(p, pos)| (p, pos.clock))).collect()
    }

    /// The commit point: output before it is in the lake.
    pub fn committed(&self) -> Time {
        self.last.as_ref().map_or(0, |r| r.commit)
    }
}

/// Reads the newest commit record, checking it against this run's `settings`. Fails if the
/// lake was written with other settings or was finalised.
pub async fn read_newest(lake: &Lake, settings: &Settings) -> Result<Recovery, CommitError> {
    let mut recovery = Recovery::default();
    if let Some(record) = newest(lake).await? {
        if let Some(difference) = record.settings.difference(settings) {
            return Err(CommitError::Settings(difference));
        }
        if record.is_final() {
            return Err(CommitError::Final);
        }
        recovery.last = Some(record);
    }
    Ok(recovery)
}

/// The commit log's newest record and how many records the log holds.
pub async fn newest(lake: &Lake) -> Result<Option<CommitRecord>, CommitError> {
    Ok(log(lake).await?.1)
}

/// The number of commit records and the newest one.
pub async fn log(lake: &Lake) -> Result<(usize, Option<CommitRecord>), CommitError> {
    let records: Vec<object_store::path::Path> = lake
        .store
        .list(Some(&lake.path(COMMITS)))
        .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".json")))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let Some(location) = records.iter().max() else { return Ok((0, None)) };
    let bytes = lake.store.get(location).await?.bytes().await?;
    let record: CommitRecord = serde_json::from_slice(&bytes)
        .map_err(|e| CommitError::Corrupt { path: location.to_string(), reason: e.to_string() })?;
    Ok((records.len(), Some(record)))
}

/// Brings the lake to its newest commit: finishes that commit's moves and deletes every other
/// staged object (output of runs that stopped before committing it).
pub async fn recover(lake: &Lake, settings: &Settings) -> Result<Recovery, CommitError> {
    let mut recovery = read_newest(lake, settings).await?;
    if let Some(record) = &recovery.last {
        move_files(lake, &record.files).await?;
        tracing::info!(commit = record.commit, files = record.files.len(), "recovered from the newest commit");
    }
    let staged: Vec<_> = lake.store.list(Some(&lake.path(STAGING))).try_collect().await?;
    for meta in &staged {
        match lake.store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    recovery.discarded = staged.len();
    if recovery.discarded > 0 {
        tracing::info!(objects = recovery.discarded, "deleted uncommitted staged files");
    }
    Ok(recovery)
}

/// Moves committed files from staging into their tables; a file already moved is skipped.
async fn move_files(lake: &Lake, files: &[Staged]) -> Result<(), CommitError> {
    for file in files {
        let (from, to) = (lake.path(&file.staged), lake.path(&file.path));
        match lake.store.rename(&from, &to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => {
                // Moved before a crash: it must be in its table now.
                match lake.store.head(&to).await {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => return Err(CommitError::Missing(file.path.clone())),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes one commit: the record with a create-only put, then the moves.
async fn commit(lake: &Lake, record: &CommitRecord) -> Result<(), CommitError> {
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| CommitError::Corrupt { path: record.name(), reason: e.to_string() })?;
    let location = lake.path(&format!("{COMMITS}/{}", record.name()));
    let options = PutOptions { mode: PutMode::Create, ..Default::default() };
    match lake.store.put_opts(&location, PutPayload::from(body), options).await {
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => return Err(CommitError::Conflict(record.name())),
        Err(e) => return Err(e.into()),
    }
    move_files(lake, &record.files).await
}

/// Called after each commit (the job commits the Kafka offsets there, for lag monitoring).
pub type AfterCommit = Box<dyn Fn(&CommitRecord, std::time::Duration) + Send>;

/// Commits run one after another on the IO runtime, off the worker thread: a commit's moves
/// finish before the next record is written, so recovery only ever has the newest to finish.
pub struct CommitQueue {
    tx: RefCell<Option<mpsc::UnboundedSender<CommitRecord>>>,
    task: RefCell<Option<tokio::task::JoinHandle<()>>>,
    runtime: Handle,
    state: Arc<Mutex<QueueState>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

/// What the commit task has done.
#[derive(Debug, Default)]
struct QueueState {
    commits: u64,
    last: Option<Time>,
    error: Option<CommitError>,
}

impl CommitQueue {
    /// Starts the commit task for `lake`.
    pub fn start(lake: Lake, runtime: Handle, after: Option<AfterCommit>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<CommitRecord>();
        let state = Arc::new(Mutex::new(QueueState::default()));
        let shared = Arc::clone(&state);
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::clone(&stopped);
        let task = runtime.spawn(async move {
            while let Some(record) = rx.recv().await {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let started = std::time::Instant::now();
                let result = commit(&lake, &record).await;
                let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(()) => {
                        let took = started.elapsed();
                        tracing::debug!(
                            commit = record.commit,
                            files = record.files.len(),
                            ms = took.as_millis() as u64,
                            "committed"
                        );
                        state.commits += 1;
                        state.last = Some(record.commit);
                        drop(state);
                        if let Some(after) = &after {
                            after(&record, took);
                        }
                    }
                    Err(e) => {
                        state.error = Some(e);
                        return; // nothing after a failed commit may be committed
                    }
                }
            }
        });
        CommitQueue { tx: RefCell::new(Some(tx)), task: RefCell::new(Some(task)), runtime, state, stopped }
    }

    fn send(&self, record: CommitRecord) {
        if let Some(tx) = self.tx.borrow().as_ref() {
            let _ = tx.send(record);
        }
    }

    /// The first failure, if any (taken).
    pub fn take_error(&self) -> Option<CommitError> {
        let error = self.state.lock().unwrap_or_else(|e| e.into_inner()).error.take();
        // A task that ended while the queue is open died (a panic): nothing would commit again.
        let died = self.tx.borrow().is_some() && self.task.borrow().as_ref().is_some_and(|t| t.is_finished());
        error.or_else(|| died.then(|| LakeError::Task("the commit task stopped".into()).into()))
    }

    /// Stops committing: queued commits are dropped, a commit in flight finishes (its record
    /// and moves may be in the store already, so it must not outlive the job), as after a
    /// crash the next start recovers.
    pub fn abort(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.tx.borrow_mut().take();
        if let Some(task) = self.task.borrow_mut().take() {
            let _ = self.runtime.block_on(task);
        }
    }

    /// Waits for the queued commits; returns how many were written and the last point.
    pub fn finish(&self) -> Result<(u64, Option<Time>), CommitError> {
        self.tx.borrow_mut().take();
        if let Some(task) = self.task.borrow_mut().take() {
            self.runtime.block_on(task).map_err(|e| LakeError::Task(e.to_string()))?;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.error.take() {
            Some(e) => Err(e),
            None => Ok((state.commits, state.last)),
        }
    }
}

/// What the committer needs to know.
#[derive(Clone, Debug)]
pub struct CommitterConfig {
    /// Event-time interval between commit points.
    pub interval_ms: u64,
    /// Partitions of the topic at start: a commit needs the position of each, and of every
    /// partition added since whose first records lie below the commit point.
    pub partitions: i32,
    /// The recovered commit point; only later points are committed.
    pub after: Time,
    /// Topic and settings written into each record.
    pub template: CommitRecord,
}

/// The committer: gathers every source's crossings and every sink's staged files on worker 0
/// and commits the greatest commit point its frontier has passed. At the end of the input it
/// commits everything when every source reached the end of its log (`--drain`), and otherwise
/// (a graceful stop) the greatest point all sources had passed.
pub fn committer<'scope>(
    crossings: StreamVec<'scope, Time, Crossing>,
    staged: StreamVec<'scope, Time, Staged>,
    cfg: CommitterConfig,
    queue: Option<Rc<CommitQueue>>,
) {
    let to_zero = |_: &Crossing| 0u64;
    let files_to_zero = |_: &Staged| 0u64;
    crossings.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        staged,
        Exchange::new(to_zero),
        Exchange::new(files_to_zero),
        "Committer",
        move |cap, _info| {
            drop(cap); // no output: the committer must not hold the dataflow open
            let mut marks: HashMap<i32, Vec<(Time, Option<Time>, dataflows::resume::PartitionMark)>> = HashMap::new();
            // Where each partition's first crossing started: a partition added while the job
            // runs has nothing below it (its records are placed at or above the frontier it
            // was found at), so a commit point at or below it does not need its position.
            let mut first: HashMap<i32, Time> = HashMap::new();
            let mut files: BTreeMap<Time, Vec<Staged>> = BTreeMap::new();
            let mut last = cfg.after;
            let mut ended = false;
            move |(crossings_in, crossings_frontier), (staged_in, staged_frontier), _output| {
                crossings_in.for_each(|_, data| {
                    for c in data.drain(..) {
                        for m in c.partitions {
                            first.entry(m.partition).or_insert(c.from);
                            marks.entry(m.partition).or_default().push((c.from, c.to, m));
                        }
                    }
                });
                staged_in.for_each(|_, data| {
                    for f in data.drain(..) {
                        files.entry(f.epoch).or_default().push(f);
                    }
                });
                let Some(queue) = &queue else { return };
                let frontier = [crossings_frontier.frontier(), staged_frontier.frontier()]
                    .iter()
                    .filter_map(|f| f.first().copied())
                    .min();
                let point = match frontier {
                    Some(f) => f - f % cfg.interval_ms.max(1),
                    None if ended => return,
                    None => {
                        ended = true;
                        // Every partition's last crossing: the end of its log, or where a
                        // graceful stop left it.
                        let ends: Vec<Option<Time>> =
                            marks.values().map(|m| m.last().and_then(|(_, to, _)| *to)).collect();
                        if ends.len() as i32 >= cfg.partitions && ends.iter().all(Option::is_none) {
                            Time::MAX
                        } else {
                            match ends.iter().map(|t| t.unwrap_or(Time::MAX)).min() {
                                Some(t) => t - t % cfg.interval_ms.max(1),
                                None => return,
                            }
                        }
                    }
                };
                if point <= last {
                    return;
                }
                let positions: BTreeMap<i32, _> = marks
                    .iter()
                    .filter_map(|(p, ms)| {
                        ms.iter()
                            .find(|(from, to, _)| dataflows::resume::covers(*from, *to, point))
                            .map(|(_, _, m)| (*p, m.position(point)))
                    })
                    .collect();
                let needed = |p: &i32| *p < cfg.partitions || first.get(p).is_some_and(|from| *from < point);
                let known = (0..cfg.partitions).chain(first.keys().copied());
                if !known.filter(needed).all(|p| positions.contains_key(&p)) {
                    return; // a source has not reported this point (it started past it)
                }
                let later = match point.checked_add(1) {
                    Some(next) => files.split_off(&next),
                    None => BTreeMap::new(),
                };
                let committed: Vec<Staged> = std::mem::replace(&mut files, later).into_values().flatten().collect();
                for ms in marks.values_mut() {
                    ms.retain(|(_, to, _)| to.is_none_or(|to| to > point));
                }
                last = point;
                queue.send(cfg.template.for_commit(point, positions, committed));
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use dataflows::resume::Position;
    use object_store::ObjectStoreExt;

    use super::*;

    fn settings() -> Settings {
        Settings {
            topic: "trades".into(),
            window_ms: 60_000,
            lateness_ms: 5_000,
            bar_widths_ms: vec![60_000],
            horizon_ms: 3_600_000,
            commit_interval_ms: 60_000,
            max_skew_ms: 60_000,
        }
    }

    fn staged(lake: &Lake, rt: &tokio::runtime::Runtime, name: &str, epoch: Time) -> Staged {
        let file = Staged {
            epoch,
            staged: format!("{STAGING}/run/trades/dt=2025-11-24/hour=14/{name}"),
            path: format!("trades/dt=2025-11-24/hour=14/{name}"),
            rows: 1,
            bytes: 3,
        };
        rt.block_on(lake.store.put(&lake.path(&file.staged), PutPayload::from_static(b"abc"))).expect("stage");
        file
    }

    fn record(commit: Time, files: Vec<Staged>) -> CommitRecord {
        let position = Position { resume: 10, replay: 4, clock: PartitionClock::new(), raises: vec![(5, 60_000)] };
        CommitRecord::template(settings()).for_commit(commit, BTreeMap::from([(0, position)]), files)
    }

    fn exists(lake: &Lake, rt: &tokio::runtime::Runtime, path: &str) -> bool {
        rt.block_on(lake.store.head(&lake.path(path))).is_ok()
    }

    #[test]
    fn recovery_finishes_the_moves_of_the_newest_commit_and_clears_staging() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let (a, b) = (staged(&lake, &rt, "a.parquet", 60_000), staged(&lake, &rt, "b.parquet", 120_000));
        let uncommitted = staged(&lake, &rt, "c.parquet", 180_000);
        // A crash between the record and the moves: one file moved, one not.
        let newest = record(120_000, vec![a.clone(), b.clone()]);
        let body = serde_json::to_vec(&newest).expect("json");
        rt.block_on(lake.store.put(&lake.path(&format!("{COMMITS}/{}", newest.name())), body.into())).expect("put");
        rt.block_on(lake.store.rename(&lake.path(&a.staged), &lake.path(&a.path))).expect("move a");

        let recovery = rt.block_on(recover(&lake, &settings())).expect("recover");
        assert_eq!(recovery.committed(), 120_000);
        assert_eq!(recovery.last.as_ref(), Some(&newest), "the record round-trips");
        assert!(exists(&lake, &rt, &a.path) && exists(&lake, &rt, &b.path), "both files in the table");
        assert!(!exists(&lake, &rt, &uncommitted.staged), "uncommitted output is discarded");
        assert!(!exists(&lake, &rt, &uncommitted.path));
        assert_eq!(recovery.starts(), HashMap::from([(0, 4)]));
        let resume = recovery.resume().expect("resume");
        assert_eq!(resume.partitions[&0].raises, vec![(5, 60_000)]);
    }

    #[test]
    fn a_second_writer_of_a_commit_fails_instead_of_overwriting() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let first = record(60_000, vec![staged(&lake, &rt, "a.parquet", 60_000)]);
        rt.block_on(commit(&lake, &first)).expect("first commit");
        let second = record(60_000, vec![staged(&lake, &rt, "b.parquet", 60_000)]);
        let err = rt.block_on(commit(&lake, &second)).expect_err("second commit");
        assert!(matches!(err, CommitError::Conflict(_)), "{err}");
        assert!(exists(&lake, &rt, "trades/dt=2025-11-24/hour=14/a.parquet"));
        assert!(!exists(&lake, &rt, "trades/dt=2025-11-24/hour=14/b.parquet"), "the loser moved nothing");
    }

    #[test]
    fn other_settings_and_finalised_lakes_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        rt.block_on(commit(&lake, &record(60_000, vec![]))).expect("commit");
        let other = Settings { lateness_ms: 10_000, bar_widths_ms: vec![60_000, 300_000], ..settings() };
        let err = rt.block_on(recover(&lake, &other)).expect_err("other settings");
        assert_eq!(
            err.to_string(),
            "the lake was written with --lateness 5s --bars 1m; run with the same settings or use a new lake"
        );
        rt.block_on(commit(&lake, &record(Time::MAX, vec![]))).expect("final commit");
        assert!(matches!(rt.block_on(recover(&lake, &settings())), Err(CommitError::Final)));
    }
}
