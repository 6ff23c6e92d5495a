//! The commit protocol: which output is in the lake, recorded in a numbered commit log
//! appended with create-only puts, and the recovery that makes a restart continue exactly
//! where it stopped.
//!
//! Commit point `T` (a multiple of `--commit-interval`) holds every output row with timely
//! time `< T`. Worker 0's committer appends a record to `_stockflow/commits/` once its input
//! frontier — the sources' positions and the sinks' staged files — has passed `T`, then moves
//! the staged files into their tables. The record is the commit: a crash before it leaves
//! only staging garbage, a crash after it leaves moves that recovery finishes.
//!
//! One writer per lake: a starting run finishes the newest record's moves and appends a
//! claim (a generation of its own); a run it superseded fails its next append and stops
//! before committing anything, and only staging of older generations is cleared.

mod committer;
pub mod log;
pub mod moves;
mod queue;
pub mod record;

use std::collections::HashMap;

use dataflows::resume::Resume;
use dataflows::{PartitionClock, Time};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

pub use committer::{CommitterConfig, committer};
pub use queue::{AfterCommit, CommitQueue};
pub use record::{CommitRecord, Settings};

use crate::lake::{Lake, LakeError, STAGING};

/// Commit-protocol failures.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another run appended to the commit log first: this run no longer owns the lake.
    #[error(
        "another run took over the lake (commit record {seq} belongs to generation {generation}); this run stops \
         without committing"
    )]
    Superseded {
        /// The record this run tried to append.
        seq: u64,
        /// The generation of the run that appended it.
        generation: u64,
    },
    /// A committed file is neither staged nor in its table.
    #[error("committed file {0} is missing from the lake")]
    Missing(String),
    /// A different file already lies where a committed file goes.
    #[error("{0} already exists in the lake and is not the file being committed; it was left as it is")]
    Collision(String),
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
    /// Where the lake stands: this run's claim, repeating the newest commit.
    pub last: Option<CommitRecord>,
    /// Objects removed from staging and leftover temporary files (uncommitted output of
    /// earlier runs).
    pub discarded: usize,
}

impl Recovery {
    /// The records the restart resumes from, if the lake holds any commit.
    fn commit(&self) -> Option<&CommitRecord> {
        self.last.as_ref().filter(|r| !r.is_empty())
    }

    /// The source's restart plan.
    pub fn resume(&self) -> Option<Resume> {
        self.commit().map(|r| Resume { commit: r.commit, partitions: r.positions().collect() })
    }

    /// Where each partition starts reading: its replay offset.
    pub fn starts(&self) -> HashMap<i32, i64> {
        self.commit().iter().flat_map(|r| r.positions().map(|(p, pos)| (p, pos.replay))).collect()
    }

    /// Each partition's clock at its replay offset.
    pub fn clocks(&self) -> HashMap<i32, PartitionClock> {
        self.commit().iter().flat_map(|r| r.positions().map(|(p, pos)| (p, pos.clock))).collect()
    }

    /// The commit point: output before it is in the lake.
    pub fn committed(&self) -> Time {
        self.commit().map_or(0, |r| r.commit)
    }

    /// Whether the lake holds a commit to continue from.
    pub fn has_commit(&self) -> bool {
        self.commit().is_some()
    }

    /// The generation this run writes under (0 before a claim).
    pub fn generation(&self) -> u64 {
        self.last.as_ref().map_or(0, |r| r.generation)
    }
}

/// Refuses a lake written with other `settings` or finalised.
fn check(record: &CommitRecord, settings: &Settings) -> Result<(), CommitError> {
    if let Some(difference) = record.settings.difference(settings) {
        return Err(CommitError::Settings(difference));
    }
    if record.is_final() {
        return Err(CommitError::Final);
    }
    Ok(())
}

/// Reads the newest record (the claim of the cluster's first process), checking it against
/// this run's `settings`; the way the other processes of a cluster learn where to resume.
pub async fn read_newest(lake: &Lake, settings: &Settings) -> Result<Recovery, CommitError> {
    let last = log::Log::list(lake).await?.newest(lake).await?;
    if let Some(record) = &last {
        check(record, settings)?;
    }
    Ok(Recovery { last, discarded: 0 })
}

/// The number of commits in the log and the newest one (claims are not commits).
pub async fn newest_commit(lake: &Lake) -> Result<(u64, Option<CommitRecord>), CommitError> {
    log::Log::list(lake).await?.newest_commit(lake).await
}

/// Brings the lake to its newest record and takes it over: finishes that record's moves
/// (whatever it is: final, or written with other settings, it is committed), refuses a
/// finalised lake or other settings, appends this run's claim, and deletes what older
/// generations left uncommitted in staging and any temporary files.
pub async fn recover(lake: &Lake, settings: &Settings) -> Result<Recovery, CommitError> {
    let claim = loop {
        let log = log::Log::list(lake).await?;
        let newest = log.newest(lake).await?;
        if let Some(record) = &newest {
            moves::finish(lake, &record.files).await?;
            check(record, settings)?;
            tracing::info!(commit = record.commit, files = record.files.len(), "recovered from the newest commit");
        }
        // `None`: another run appended meanwhile; take over from what it wrote.
        if let Some(claim) = log::try_claim(lake, settings, &log, newest.as_ref()).await? {
            break claim;
        }
    };
    let mut discarded = 0;
    let own = format!("{STAGING}/{}/", staging_dir(claim.generation));
    let staged: Vec<_> = lake.store.list(Some(&lake.path(STAGING))).try_collect().await?;
    for meta in staged.iter().filter(|m| !m.location.as_ref().contains(&own)) {
        match lake.store.delete(&meta.location).await {
            Ok(()) => discarded += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    discarded += lake.remove_temporary_files()?;
    if discarded > 0 {
        tracing::info!(objects = discarded, "deleted uncommitted staged and temporary files");
    }
    tracing::info!(generation = claim.generation, "claimed the lake");
    Ok(Recovery { last: Some(claim), discarded })
}

/// The staging folder of a generation's files, under `_stockflow/staging/`.
pub fn staging_dir(generation: u64) -> String {
    format!("g{generation}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dataflows::resume::Position;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::lake::writer::Staged;

    fn settings() -> Settings {
        Settings {
            topic: "trades".into(),
            window_ms: 60_000,
            lateness_ms: 5_000,
            bar_widths_ms: vec![60_000],
            horizon_ms: 3_600_000,
            commit_interval_ms: 60_000,
            epochs: None,
            max_skew_ms: Some(60_000),
        }
    }

    struct Fixture {
        rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
        lake: Lake,
    }

    fn fixture() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        Fixture { rt, _dir: dir, lake }
    }

    impl Fixture {
        /// A file staged by generation `generation` for epoch `epoch`.
        fn stage(&self, generation: u64, name: &str, epoch: Time) -> Staged {
            let file = Staged {
                epoch,
                staged: format!("{STAGING}/{}/trades/dt=2025-11-24/hour=14/{name}", staging_dir(generation)),
                path: format!("trades/dt=2025-11-24/hour=14/{name}"),
                rows: 1,
                bytes: 3,
                replace: false,
            };
            self.put(&file.staged, b"abc");
            file
        }

        fn put(&self, path: &str, body: &'static [u8]) {
            self.rt.block_on(self.lake.store.put(&self.lake.path(path), PutPayload::from_static(body))).expect("put");
        }

        fn exists(&self, path: &str) -> bool {
            self.rt.block_on(self.lake.store.head(&self.lake.path(path))).is_ok()
        }

        /// A commit of generation `claim`'s run, appended after it, as the commit task does.
        fn commit(&self, claim: &CommitRecord, commit: Time, files: Vec<Staged>) -> Result<CommitRecord, CommitError> {
            let record = CommitRecord { seq: claim.seq + 1, generation: claim.generation, ..record(commit, files) };
            self.rt.block_on(async {
                log::append(&self.lake, &record).await?;
                moves::finish(&self.lake, &record.files).await
            })?;
            Ok(record)
        }

        fn recover(&self, settings: &Settings) -> Result<Recovery, CommitError> {
            self.rt.block_on(recover(&self.lake, settings))
        }
    }

    fn record(commit: Time, files: Vec<Staged>) -> CommitRecord {
        let position = Position { resume: 10, replay: 4, clock: PartitionClock::new(), raises: vec![(5, 60_000)] };
        CommitRecord::template(settings()).for_commit(commit, BTreeMap::from([(0, position)]), files)
    }

    #[test]
    fn recovery_finishes_the_moves_of_the_newest_commit_and_clears_older_staging() {
        let f = fixture();
        let first = f.recover(&settings()).expect("claim a new lake");
        assert!(!first.has_commit() && first.generation() == 1);
        let (a, b) = (f.stage(1, "a.parquet", 60_000), f.stage(1, "b.parquet", 120_000));
        let uncommitted = f.stage(1, "c.parquet", 180_000);
        // A crash between the record and the moves: one file moved, one not.
        let newest = CommitRecord { seq: 2, generation: 1, ..record(120_000, vec![a.clone(), b.clone()]) };
        f.rt.block_on(log::append(&f.lake, &newest)).expect("append");
        f.rt.block_on(f.lake.store.rename(&f.lake.path(&a.staged), &f.lake.path(&a.path))).expect("move a");

        let recovery = f.recover(&settings()).expect("recover");
        assert_eq!(recovery.committed(), 120_000);
        assert_eq!(recovery.generation(), 3, "the claim is the next record");
        assert!(f.exists(&a.path) && f.exists(&b.path), "both files in the table");
        assert!(!f.exists(&uncommitted.staged), "uncommitted output of the older generation is discarded");
        assert!(!f.exists(&uncommitted.path));
        assert_eq!(recovery.starts(), HashMap::from([(0, 4)]));
        let resume = recovery.resume().expect("resume");
        assert_eq!(resume.partitions[&0].raises, vec![(5, 60_000)]);
        let (commits, newest) = f.rt.block_on(newest_commit(&f.lake)).expect("log");
        assert_eq!((commits, newest.map(|r| r.seq)), (2, Some(2)), "claims are not commits");
    }

    /// Two runs on one lake: A stages a file; B starts, claims the lake and clears A's
    /// staging; A's commit then fails as superseded instead of committing a deleted file,
    /// and a later start finds a consistent lake.
    #[test]
    fn a_superseded_run_stops_before_committing_and_loses_nothing() {
        let f = fixture();
        let a = f.recover(&settings()).expect("run A");
        let committed = f.stage(a.generation(), "a1.parquet", 60_000);
        let a1 = f.commit(a.last.as_ref().expect("claim"), 60_000, vec![committed.clone()]).expect("A commits");
        let pending = f.stage(a.generation(), "a2.parquet", 120_000);

        let b = f.recover(&settings()).expect("run B");
        assert_eq!(b.committed(), 60_000);
        assert!(b.generation() > a.generation());
        assert!(!f.exists(&pending.staged), "B clears A's uncommitted staging");

        let err = f.commit(&a1, 120_000, vec![pending.clone()]).expect_err("A is superseded");
        assert!(matches!(err, CommitError::Superseded { generation, .. } if generation == b.generation()), "{err}");
        assert!(err.to_string().starts_with("another run took over the lake"), "{err}");
        assert!(!f.exists(&pending.path), "nothing of A's stopped commit reached the table");

        let c = f.recover(&settings()).expect("a later start");
        assert_eq!(c.committed(), 60_000);
        assert!(f.exists(&committed.path));
    }

    #[test]
    fn a_final_commit_interrupted_before_its_moves_is_finished_then_refused() {
        let f = fixture();
        let a = f.recover(&settings()).expect("claim");
        let file = f.stage(a.generation(), "last.parquet", Time::MAX);
        let fin = CommitRecord { seq: 2, generation: a.generation(), ..record(Time::MAX, vec![file.clone()]) };
        f.rt.block_on(log::append(&f.lake, &fin)).expect("the final record, then a crash");
        assert!(matches!(f.recover(&settings()), Err(CommitError::Final)));
        assert!(f.exists(&file.path) && !f.exists(&file.staged), "the final commit's files are in the table");
    }

    #[test]
    fn other_settings_are_refused_after_the_pending_moves() {
        let f = fixture();
        let a = f.recover(&settings()).expect("claim");
        let file = f.stage(a.generation(), "a.parquet", 60_000);
        let pending = CommitRecord { seq: 2, generation: a.generation(), ..record(60_000, vec![file.clone()]) };
        f.rt.block_on(log::append(&f.lake, &pending)).expect("a record, then a crash");
        let other = Settings { lateness_ms: 10_000, bar_widths_ms: vec![60_000, 300_000], ..settings() };
        let err = f.recover(&other).expect_err("other settings");
        assert_eq!(
            err.to_string(),
            "the lake was written with --lateness 5s --bars 1m; run with the same settings or use a new lake"
        );
        assert!(f.exists(&file.path), "the pending commit was finished first");
    }

    #[test]
    fn a_lake_written_before_the_bad_tick_rule_is_refused() {
        let f = fixture();
        let old = Settings { max_skew_ms: None, ..settings() };
        let record = CommitRecord { seq: 1, ..CommitRecord::template(old).for_commit(60_000, BTreeMap::new(), vec![]) };
        f.rt.block_on(log::append(&f.lake, &record)).expect("an old lake's commit");
        let err = f.recover(&settings()).expect_err("the rule would reclassify replayed records");
        assert!(err.to_string().contains("no --max-clock-skew (before bad ticks were quarantined)"), "{err}");
    }

    #[test]
    fn a_move_never_overwrites_a_file_in_a_table() {
        let f = fixture();
        let a = f.recover(&settings()).expect("claim");
        let file = f.stage(a.generation(), "a.parquet", 60_000);
        f.put(&file.path, b"someone else's file");
        let err = f.commit(a.last.as_ref().expect("claim"), 60_000, vec![file.clone()]).expect_err("collision");
        assert!(matches!(&err, CommitError::Collision(path) if *path == file.path), "{err}");
        let kept =
            f.rt.block_on(async { f.lake.store.get(&f.lake.path(&file.path)).await?.bytes().await }).expect("get");
        assert_eq!(&kept[..], b"someone else's file");
    }

    #[test]
    fn a_move_interrupted_after_linking_is_finished_on_recovery() {
        let f = fixture();
        let a = f.recover(&settings()).expect("claim");
        let file = f.stage(a.generation(), "a.parquet", 60_000);
        let pending = CommitRecord { seq: 2, generation: a.generation(), ..record(60_000, vec![file.clone()]) };
        f.rt.block_on(log::append(&f.lake, &pending)).expect("append");
        // A local move links the file into its table, then removes the staged copy; a crash
        // in between leaves both.
        f.rt.block_on(f.lake.store.copy(&f.lake.path(&file.staged), &f.lake.path(&file.path))).expect("link");
        f.recover(&settings()).expect("recover");
        assert!(f.exists(&file.path) && !f.exists(&file.staged));
    }

    #[test]
    fn leftover_temporary_files_are_removed() {
        let f = fixture();
        f.put("trades/dt=2025-11-24/hour=14/x.parquet", b"abc");
        let root = f.lake.local.clone().expect("a local lake");
        std::fs::write(root.join("trades/dt=2025-11-24/hour=14/y.parquet#3"), b"half").expect("temp file");
        let recovery = f.recover(&settings()).expect("recover");
        assert_eq!(recovery.discarded, 1);
        assert!(!root.join("trades/dt=2025-11-24/hour=14/y.parquet#3").exists());
        assert!(f.exists("trades/dt=2025-11-24/hour=14/x.parquet"));
    }
}
