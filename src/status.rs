//! `stockflow status`: what a lake holds and how fresh it is, from its commit log and its
//! folders — the last commit and its age, where each partition resumes, files and bytes per
//! recent hour partition, quarantine by reason, and the feed gaps recorded.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::commit::{self, CommitError};
use crate::iceberg::IcebergTables;
use crate::lake::read::{gaps, list_files, reasons, rows};
use crate::lake::{Lake, LakeError, Table};

/// Errors of `stockflow status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Listing or reading the lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The commit log could not be read.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// The lake's state.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    /// The lake location.
    pub lake: String,
    /// Commit records in the log.
    pub commits: u64,
    /// The newest commit, if any.
    pub last_commit: Option<LastCommit>,
    /// Per table, in catalog order.
    pub tables: Vec<TableStatus>,
    /// Quarantined records by reason.
    pub quarantine_by_reason: BTreeMap<String, u64>,
    /// Feed gaps recorded.
    pub gaps: GapStatus,
}

/// What the `gaps` table holds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GapStatus {
    /// Gap rows (one per symbol per interval).
    pub rows: u64,
    /// Of those, the ones that arrived too late to flag any bar.
    pub beyond_horizon: u64,
    /// Symbols with a gap.
    pub symbols: u64,
    /// End of the newest gap, RFC 3339.
    pub newest_end_utc: Option<String>,
}

/// The newest commit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LastCommit {
    /// Commit point (event time, ms): every row before it is in the lake. `null` for the
    /// final commit of a `--drain` run (everything is in).
    pub point: Option<u64>,
    /// The commit point as RFC 3339.
    pub point_utc: Option<String>,
    /// Wall-clock time of the commit.
    pub committed_at: String,
    /// Seconds since the commit.
    pub age_seconds: Option<f64>,
    /// Whether a `--drain` run closed the lake.
    pub is_final: bool,
    /// Per partition: the offset reading resumes from.
    pub resume_offsets: BTreeMap<i32, i64>,
    /// Files the commit moved into the tables.
    pub files: usize,
}

/// One table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TableStatus {
    /// Table name.
    pub name: String,
    /// Committed files.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The newest hour partition, `dt=YYYY-MM-DD/hour=HH`.
    pub newest_partition: Option<String>,
    /// Files and bytes of the most recent hour partitions (newest first, at most 6).
    pub recent_partitions: Vec<PartitionStatus>,
}

/// One hour partition.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PartitionStatus {
    /// `dt=YYYY-MM-DD/hour=HH`.
    pub partition: String,
    /// Files.
    pub files: usize,
    /// Bytes.
    pub bytes: u64,
}

/// Reads the status of `lake` (an Iceberg lake's tables through `iceberg`: the files and rows
/// of their current snapshots).
pub async fn status(lake: &Lake, iceberg: Option<&IcebergTables>) -> Result<Status, StatusError> {
    let (commits, newest) = commit::newest_commit(lake).await?;
    let last_commit = newest.map(|r| {
        let committed = DateTime::parse_from_rfc3339(&r.committed_at).ok().map(|t| t.with_timezone(&Utc));
        let point = (!r.is_final()).then_some(r.commit);
        LastCommit {
            point,
            point_utc: point.and_then(|p| utc(p as i64)),
            age_seconds: committed.map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0),
            committed_at: r.committed_at.clone(),
            is_final: r.is_final(),
            resume_offsets: r.partitions.iter().map(|(p, pos)| (*p, pos.resume)).collect(),
            files: r.files.len(),
        }
    });
    let mut widths: Vec<u64> = last_commit_widths(lake).await?;
    widths.sort_unstable();
    let tables = Table::all(&widths);
    let mut out = Vec::new();
    let root = format!("{}/", lake.url());
    for table in &tables {
        let base = lake.table_path(table);
        let live: Option<HashSet<String>> = match iceberg {
            Some(tables) => Some(
                tables
                    .data_files(table)
                    .await
                    .map_err(LakeError::from)?
                    .iter()
                    .filter_map(|f| f.strip_prefix(&root))
                    .map(|rel| lake.path(rel).to_string())
                    .collect(),
            ),
            None => None,
        };
        let mut partitions: BTreeMap<String, PartitionStatus> = BTreeMap::new();
        for file in list_files(lake, table).await? {
            if live.as_ref().is_some_and(|live| !live.contains(file.location.as_ref())) {
                continue; // not in the table's current snapshot
            }
            let rel = file.location.as_ref().strip_prefix(base.as_ref()).unwrap_or_default().trim_start_matches('/');
            let rel = rel.strip_prefix("data/").unwrap_or(rel);
            let partition = rel.rsplit_once('/').map_or(rel, |(dir, _)| dir).to_owned();
            let p = partitions.entry(partition.clone()).or_insert(PartitionStatus { partition, files: 0, bytes: 0 });
            p.files += 1;
            p.bytes += file.size;
        }
        out.push(TableStatus {
            name: table.name(),
            files: partitions.values().map(|p| p.files).sum(),
            bytes: partitions.values().map(|p| p.bytes).sum(),
            newest_partition: partitions.keys().next_back().cloned(),
            recent_partitions: partitions.into_values().rev().take(6).collect(),
        });
    }
    let mut quarantine_by_reason = BTreeMap::new();
    for reason in reasons(&rows(lake, &Table::Quarantine, iceberg).await?)? {
        *quarantine_by_reason.entry(reason).or_default() += 1;
    }
    let gap_rows = gaps(&rows(lake, &Table::Gaps, iceberg).await?)?;
    let gaps = GapStatus {
        rows: gap_rows.len() as u64,
        beyond_horizon: gap_rows.iter().filter(|g| g.beyond_horizon).count() as u64,
        symbols: gap_rows.iter().map(|g| g.body.s.as_str()).collect::<HashSet<_>>().len() as u64,
        newest_end_utc: gap_rows.iter().map(|g| g.body.to).max().and_then(utc),
    };
    Ok(Status { lake: lake.location.clone(), commits, last_commit, tables: out, quarantine_by_reason, gaps })
}

/// Bar widths from the newest commit's settings (the job's `--bars`); `1m` for an empty lake.
async fn last_commit_widths(lake: &Lake) -> Result<Vec<u64>, StatusError> {
    Ok(commit::newest_commit(lake).await?.1.map_or_else(|| vec![60_000], |r| r.settings.bar_widths_ms))
}

/// `ms` since the epoch as RFC 3339.
fn utc(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

/// The status as text for a terminal.
pub fn render(s: &Status) -> String {
    let mut out = format!("lake {}\n", s.lake);
    match &s.last_commit {
        None => out.push_str("no commits yet\n"),
        Some(c) => {
            let point = c.point_utc.clone().unwrap_or_else(|| "final (drained)".into());
            let age = c.age_seconds.map_or_else(String::new, |a| format!(", {a:.0}s ago"));
            out.push_str(&format!(
                "last commit {point} (of {}), committed {}{age}, {} files\n",
                s.commits, c.committed_at, c.files
            ));
            let offsets: Vec<String> = c.resume_offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            out.push_str(&format!("resume offsets {}\n", offsets.join(" ")));
        }
    }
    for t in &s.tables {
        out.push_str(&format!(
            "{:<12} {:>6} files {:>12} bytes  newest {}\n",
            t.name,
            t.files,
            t.bytes,
            t.newest_partition.as_deref().unwrap_or("-")
        ));
        for p in &t.recent_partitions {
            out.push_str(&format!("    {:<28} {:>4} files {:>12} bytes\n", p.partition, p.files, p.bytes));
        }
    }
    let reasons: Vec<String> = s.quarantine_by_reason.iter().map(|(r, n)| format!("{r}={n}")).collect();
    out.push_str(&format!("quarantine {}\n", if reasons.is_empty() { "empty".into() } else { reasons.join(" ") }));
    let g = &s.gaps;
    match &g.newest_end_utc {
        None => out.push_str("gaps none\n"),
        Some(end) => out.push_str(&format!(
            "gaps {} over {} symbols ({} beyond the revision horizon), newest ending {end}\n",
            g.rows, g.symbols, g.beyond_horizon
        )),
    }
    out
}
