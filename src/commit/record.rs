//! The commit record: `_stockflow/commits/<seq>.json`, the lake's durable state. Records are
//! numbered in the order they were written; the newest one is where the lake stands.

use std::collections::BTreeMap;

use dataflows::Time;
use dataflows::epoch::Epochs;
use dataflows::resume::Position;
use serde::{Deserialize, Serialize};

use crate::lake::TableFormat;
use crate::lake::writer::Staged;

/// Settings that decide what the output is; a restart with other values would write rows
/// that do not fit the ones already committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The trades topic.
    pub topic: String,
    /// `--window`, ms.
    pub window_ms: u64,
    /// `--lateness`, ms.
    pub lateness_ms: u64,
    /// `--bars`, ms.
    pub bar_widths_ms: Vec<u64>,
    /// `--revision-horizon`, ms.
    pub horizon_ms: u64,
    /// `--commit-interval`, ms.
    pub commit_interval_ms: u64,
    /// `--max-clock-skew`, ms; `None` in lakes written before bad ticks were quarantined,
    /// which a run with the rule refuses (it would classify replayed records differently).
    #[serde(default)]
    pub max_skew_ms: Option<u64>,
    /// `--publish`; `None` in lakes written before tables had publish intervals, which
    /// published every table at every commit.
    #[serde(default)]
    pub epochs: Option<Epochs>,
    /// `--table-format`; Hive in lakes written before there was a choice.
    #[serde(default)]
    pub format: TableFormat,
}

impl Settings {
    /// How `self` (the lake's) differs from `other` (this run's), as flags, if it does.
    pub fn difference(&self, other: &Settings) -> Option<String> {
        let ms = |v: u64| humantime::format_duration(std::time::Duration::from_millis(v)).to_string();
        let mut diffs = Vec::new();
        if self.topic != other.topic {
            diffs.push(format!("--topic {}", self.topic));
        }
        if self.window_ms != other.window_ms {
            diffs.push(format!("--window {}", ms(self.window_ms)));
        }
        if self.lateness_ms != other.lateness_ms {
            diffs.push(format!("--lateness {}", ms(self.lateness_ms)));
        }
        if self.bar_widths_ms != other.bar_widths_ms {
            let widths: Vec<String> = self.bar_widths_ms.iter().map(|w| ms(*w)).collect();
            diffs.push(format!("--bars {}", widths.join(",")));
        }
        if self.horizon_ms != other.horizon_ms {
            diffs.push(format!("--revision-horizon {}", ms(self.horizon_ms)));
        }
        if self.commit_interval_ms != other.commit_interval_ms {
            diffs.push(format!("--commit-interval {}", ms(self.commit_interval_ms)));
        }
        if self.max_skew_ms != other.max_skew_ms {
            diffs.push(match self.max_skew_ms {
                Some(skew) => format!("--max-clock-skew {}", ms(skew)),
                None => "no --max-clock-skew (before bad ticks were quarantined)".to_owned(),
            });
        }
        let (mine, theirs) = (self.publish(), other.publish());
        if mine != theirs {
            let ms = |v: u64| humantime::format_duration(std::time::Duration::from_millis(v)).to_string();
            diffs.push(format!(
                "--publish trades={},quarantine={},bars={}",
                ms(mine.trades_ms),
                ms(mine.quarantine_ms),
                ms(mine.bars_ms)
            ));
        }
        if self.format != other.format {
            diffs.push(format!("--table-format {}", self.format.as_str()));
        }
        (!diffs.is_empty()).then(|| diffs.join(" "))
    }

    /// The commit and publish intervals the lake is written with.
    pub fn publish(&self) -> Epochs {
        self.epochs.unwrap_or_else(|| Epochs::every_commit(self.commit_interval_ms))
    }
}

/// One commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Format version.
    pub version: u32,
    /// Position in the commit log (the record's name). Each writer appends `seq + 1` of the
    /// newest record it knows with a create-only put, so two writers can never both append.
    #[serde(default)]
    pub seq: u64,
    /// The run that wrote it: the `seq` of the record with which that run claimed the lake.
    #[serde(default)]
    pub generation: u64,
    /// A claim: a run taking over the lake repeats the newest commit under its own
    /// generation, so a run it superseded can append nothing more.
    #[serde(default)]
    pub claim: bool,
    /// How many commits (not claims) the log holds up to and including this record, so a
    /// reader counts them without reading every record.
    #[serde(default)]
    pub commits: u64,
    /// The commit point `T`: every output row with time `< T` is committed. `u64::MAX` marks
    /// the final commit of a `--drain` run.
    pub commit: Time,
    /// Wall-clock time of the commit, RFC 3339 (for freshness and lag monitoring).
    pub committed_at: String,
    /// What the output depends on.
    pub settings: Settings,
    /// Per partition: resume and replay offsets, the clock at replay.
    pub partitions: BTreeMap<i32, Position>,
    /// Files this commit moves into the tables.
    pub files: Vec<Staged>,
}

impl CommitRecord {
    /// The record format written by this version.
    pub const VERSION: u32 = 1;

    /// An empty record for `settings`, the template of every commit.
    pub fn template(settings: Settings) -> Self {
        CommitRecord {
            version: Self::VERSION,
            seq: 0,
            generation: 0,
            claim: false,
            commits: 0,
            commit: 0,
            committed_at: String::new(),
            settings,
            partitions: BTreeMap::new(),
            files: Vec::new(),
        }
    }

    /// This template filled for commit point `commit`.
    pub fn for_commit(&self, commit: Time, partitions: BTreeMap<i32, Position>, files: Vec<Staged>) -> Self {
        CommitRecord {
            commit,
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            partitions,
            files,
            ..self.clone()
        }
    }

    /// Whether this commit closed the lake at the end of the log.
    pub fn is_final(&self) -> bool {
        self.commit == Time::MAX
    }

    /// The object name: the sequence number zero-padded, so names sort as numbers do.
    pub fn name(&self) -> String {
        record_name(self.seq)
    }

    /// Whether it records a commit (rather than a run's claim of the lake).
    pub fn is_commit(&self) -> bool {
        !self.claim
    }

    /// Whether it holds anything to resume from: a claim of a lake with no commit does not.
    pub fn is_empty(&self) -> bool {
        self.commit == 0 && self.partitions.is_empty()
    }

    /// Each partition's position.
    pub fn positions(&self) -> impl Iterator<Item = (i32, Position)> + '_ {
        self.partitions.iter().map(|(p, pos)| (*p, pos.clone()))
    }
}

/// The name of the record with sequence number `seq`.
pub fn record_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

/// The sequence number a record name stands for (`None` for other objects).
pub fn record_seq(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}
