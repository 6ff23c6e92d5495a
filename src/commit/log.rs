//! The commit log: `_stockflow/commits/<seq>.json`, appended with create-only puts.
//!
//! Appending `seq + 1` of the newest record a writer knows can succeed for one writer only.
//! A run takes over a lake by appending a claim (the newest commit repeated under its own
//! generation); a run it superseded then fails its next append and stops, so it can never
//! commit files the new run has already cleared from staging.

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::record::{CommitRecord, record_seq};
use super::{CommitError, Settings};
use crate::lake::{COMMITS, Lake};

/// The commit log of a lake, as listed once.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Sequence numbers of every record, ascending.
    pub seqs: Vec<u64>,
}

impl Log {
    /// Lists the records of `lake`.
    pub async fn list(lake: &Lake) -> Result<Self, CommitError> {
        let mut seqs: Vec<u64> = lake
            .store
            .list(Some(&lake.path(COMMITS)))
            .try_filter_map(|m| futures::future::ready(Ok(m.location.filename().and_then(record_seq))))
            .try_collect()
            .await?;
        seqs.sort_unstable();
        Ok(Log { seqs })
    }

    /// The newest record, if any.
    pub async fn newest(&self, lake: &Lake) -> Result<Option<CommitRecord>, CommitError> {
        match self.seqs.last() {
            Some(&seq) => read(lake, seq).await.map(Some),
            None => Ok(None),
        }
    }

    /// The newest record that is a commit (skipping claims), and how many commits there are.
    pub async fn newest_commit(&self, lake: &Lake) -> Result<(u64, Option<CommitRecord>), CommitError> {
        for &seq in self.seqs.iter().rev() {
            let record = read(lake, seq).await?;
            if record.is_commit() {
                return Ok((self.commits(&record), Some(record)));
            }
        }
        Ok((0, None))
    }

    /// How many commits the log holds up to `record`: its count, or for a record written
    /// before records were counted (every one of them a commit), its place in the log.
    pub fn commits(&self, record: &CommitRecord) -> u64 {
        match record.commits {
            0 => self.seqs.iter().take_while(|&&s| s <= record.seq).count() as u64,
            n => n,
        }
    }
}

/// Reads record `seq`.
pub async fn read(lake: &Lake, seq: u64) -> Result<CommitRecord, CommitError> {
    let name = super::record::record_name(seq);
    let location = lake.path(&format!("{COMMITS}/{name}"));
    let bytes = lake.store.get(&location).await?.bytes().await?;
    let mut record: CommitRecord = serde_json::from_slice(&bytes)
        .map_err(|e| CommitError::Corrupt { path: location.to_string(), reason: e.to_string() })?;
    // Records written before the log was numbered are named by their commit point.
    record.seq = seq;
    Ok(record)
}

/// Appends `record` under its `seq`, create-only. Another record there means another run
/// appended first: [`CommitError::Superseded`], naming that run.
pub async fn append(lake: &Lake, record: &CommitRecord) -> Result<(), CommitError> {
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| CommitError::Corrupt { path: record.name(), reason: e.to_string() })?;
    let location = lake.path(&format!("{COMMITS}/{}", record.name()));
    let options = PutOptions { mode: PutMode::Create, ..Default::default() };
    match lake.store.put_opts(&location, PutPayload::from(body), options).await {
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => {
            let other = read(lake, record.seq).await.map(|r| r.generation).unwrap_or_default();
            return Err(CommitError::Superseded { seq: record.seq, generation: other });
        }
        Err(e) => return Err(e.into()),
    }
    lake.sync_file(&format!("{COMMITS}/{}", record.name()))?;
    Ok(())
}

/// Whether a run newer than `generation` has claimed `lake`: the reason to report when this
/// run fails, since the newer run clears this run's staging and its writes then fail first.
pub async fn superseded(lake: &Lake, generation: u64) -> Option<CommitError> {
    let newest = Log::list(lake).await.ok()?.newest(lake).await.ok()??;
    (newest.generation > generation)
        .then_some(CommitError::Superseded { seq: newest.seq, generation: newest.generation })
}

/// Takes over `lake` from `newest` (its moves finished): appends a claim repeating it (or an
/// empty one) under a new generation. `None` when another run appended first.
pub async fn try_claim(
    lake: &Lake,
    settings: &Settings,
    log: &Log,
    newest: Option<&CommitRecord>,
) -> Result<Option<CommitRecord>, CommitError> {
    let mut claim = match newest {
        Some(record) => {
            let commits = if record.is_commit() { log.commits(record) } else { record.commits };
            CommitRecord { files: Vec::new(), commits, ..record.clone() }
        }
        None => CommitRecord::template(settings.clone()),
    };
    let seq = newest.map_or(1, |r| r.seq + 1);
    (claim.seq, claim.generation, claim.claim) = (seq, seq, true);
    match append(lake, &claim).await {
        Ok(()) => Ok(Some(claim)),
        Err(CommitError::Superseded { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
