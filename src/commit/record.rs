//! The commit record: `_stockflow/commits/<commit point>.json`, the lake's durable state.

use std::collections::BTreeMap;

use dataflows::Time;
use dataflows::resume::Position;
use serde::{Deserialize, Serialize};

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
    /// `--max-clock-skew`, ms (lakes written before the rule read as the default).
    #[serde(default = "default_skew")]
    pub max_skew_ms: u64,
}

fn default_skew() -> u64 {
    dataflows::time::DEFAULT_MAX_SKEW_MS
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
            diffs.push(format!("--max-clock-skew {}", ms(self.max_skew_ms)));
        }
        (!diffs.is_empty()).then(|| diffs.join(" "))
    }
}

/// One commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Format version.
    pub version: u32,
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

    /// The object name: the commit point zero-padded, so names sort as numbers do.
    pub fn name(&self) -> String {
        format!("{:020}.json", self.commit)
    }

    /// Each partition's position.
    pub fn positions(&self) -> impl Iterator<Item = (i32, Position)> + '_ {
        self.partitions.iter().map(|(p, pos)| (*p, pos.clone()))
    }
}
