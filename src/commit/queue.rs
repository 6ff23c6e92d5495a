//! The commit task: commits written one after another on the IO runtime, off the worker
//! thread. A commit's moves finish before the next record is written, so recovery only ever
//! has the newest record's moves to finish.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use dataflows::Time;
use object_store::ObjectStoreExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{CommitError, CommitRecord, log, moves};
use crate::iceberg::IcebergTables;
use crate::lake::writer::Staged;
use crate::lake::{Lake, LakeError};

/// Writes one commit: makes its staged files durable, appends the record (the commit), moves
/// the files into their tables, and (Iceberg) appends one snapshot per table.
async fn commit(lake: &Lake, record: &CommitRecord, tables: Option<&IcebergTables>) -> Result<(), CommitError> {
    let (durable, staged) = (lake.clone(), record.files.iter().map(|f| f.staged.clone()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || staged.iter().try_for_each(|s| durable.sync_file(s)))
        .await
        .map_err(|e| LakeError::Task(e.to_string()))??;
    log::append(lake, record).await?;
    moves::finish(lake, &record.files).await?;
    if let Some(tables) = tables {
        tables.append(record).await?;
    }
    Ok(())
}

/// A commit to write, and the staged files it makes obsolete.
type Queued = (CommitRecord, Vec<Staged>);

/// Deletes staged files no commit will name.
async fn discard(lake: &Lake, files: &[Staged]) -> Result<(), CommitError> {
    for file in files {
        match lake.store.delete(&lake.path(&file.staged)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Called after each commit (the job commits the Kafka offsets there, for lag monitoring).
pub type AfterCommit = Box<dyn Fn(&CommitRecord, std::time::Duration) + Send>;

/// The commit task and what it has done.
pub struct CommitQueue {
    tx: RefCell<Option<mpsc::UnboundedSender<Queued>>>,
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
    /// Starts the commit task for `lake` (and its Iceberg `tables`), appending after the run's
    /// claim `claim`.
    pub fn start(
        lake: Lake,
        tables: Option<Arc<IcebergTables>>,
        claim: &CommitRecord,
        runtime: Handle,
        after: Option<AfterCommit>,
    ) -> Self {
        let (generation, mut seq, mut commits) = (claim.generation, claim.seq, claim.commits);
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        let state = Arc::new(Mutex::new(QueueState::default()));
        let shared = Arc::clone(&state);
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::clone(&stopped);
        let task = runtime.spawn(async move {
            while let Some((mut record, superseded)) = rx.recv().await {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                (seq, commits) = (seq + 1, commits + 1);
                (record.seq, record.generation, record.commits) = (seq, generation, commits);
                let started = std::time::Instant::now();
                let mut result = commit(&lake, &record, tables.as_deref()).await;
                if result.is_ok() {
                    result = discard(&lake, &superseded).await;
                }
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

    /// Queues a commit (numbered by the task, in order), and staged files it makes obsolete
    /// (older versions of a file it republishes), deleted once it is stored.
    pub fn send(&self, record: CommitRecord, superseded: Vec<Staged>) {
        if let Some(tx) = self.tx.borrow().as_ref() {
            let _ = tx.send((record, superseded));
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
