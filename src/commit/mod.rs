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
//! An Iceberg lake then appends the record's files to its tables, one snapshot per table
//! (`crate::iceberg`); recovery makes the snapshots a crash left out.
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

use crate::iceberg::{IcebergError, IcebergTables};
use crate::lake::{Lake, LakeError, STAGING, TableFormat};

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
    /// Appending a commit to the Iceberg tables failed.
    #[error(transparent)]
    Iceberg(#[from] IcebergError),
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
/// (whatever it is: final, or written with other settings, it is committed) and its Iceberg
/// snapshots (`tables`, for an Iceberg lake), refuses a finalised lake or other settings,
/// appends this run's claim, and deletes what older generations left uncommitted in staging
/// and any temporary files.
pub async fn recover(
    lake: &Lake,
    settings: &Settings,
    tables: Option<&IcebergTables>,
) -> Result<Recovery, CommitError> {
    let claim = loop {
        let log = log::Log::list(lake).await?;
        let newest = log.newest(lake).await?;
        if let Some(tables) = tables {
            tables.check_history(newest.as_ref().map(|r| r.seq)).await?;
        }
        if let Some(record) = &newest {
            moves::finish(lake, &record.files).await?;
            // Only the newest record can lack snapshots: a run appends a commit's snapshots
            // before it writes the next record, and recovery before it claims.
            if let Some(tables) = tables.filter(|_| record.settings.format == TableFormat::Iceberg) {
                let made = tables.append(record).await?;
                if made > 0 {
                    tracing::info!(seq = record.seq, tables = made, "appended the newest commit's iceberg snapshots");
                }
            }
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
