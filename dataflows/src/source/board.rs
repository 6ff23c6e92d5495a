//! What every source of the cluster knows of event time, exchanged as a timely broadcast.
//!
//! A source whose partitions are all silent (a process whose symbols have stopped trading
//! while others trade on) follows the least event time the speaking sources report instead of
//! holding the cluster's frontier. Silent sources' reports are stale by nature (a partition's
//! clock moves only with its records), so they count only when no source speaks; otherwise
//! two silent sources would hold each other back. Reports travel through the dataflow, so
//! workers of other processes see them too. Each source sends a report when what it knows
//! changes; reports carry a sequence number because only the newest one of a source counts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Time;

/// One source's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporting worker.
    pub worker: usize,
    /// Increases with every report of that worker.
    pub seq: u64,
    /// What it knows of event time (see [`crate::source::frontier::Next::known`]).
    pub known: Option<Time>,
    /// Whether one of its partitions is speaking (its `known` is where it stands).
    pub speaking: bool,
}

/// The newest report of every source.
#[derive(Clone, Debug, Default)]
pub struct Board {
    newest: HashMap<usize, Report>,
}

impl Board {
    /// Takes a report in, unless a newer one of its worker is already known.
    pub fn update(&mut self, report: Report) {
        let entry = self.newest.entry(report.worker).or_insert(report);
        if entry.seq <= report.seq {
            *entry = report;
        }
    }

    /// What the sources other than `worker` know of event time: the least that a speaking
    /// one reports, or, when none speaks, the most that any silent one has seen.
    pub fn others(&self, worker: usize) -> Option<Time> {
        let others = || self.newest.values().filter(|r| r.worker != worker);
        let speaking = others().filter(|r| r.speaking).filter_map(|r| r.known).min();
        speaking.or_else(|| others().filter_map(|r| r.known).max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(worker: usize, seq: u64, known: Option<Time>, speaking: bool) -> Report {
        Report { worker, seq, known, speaking }
    }

    #[test]
    fn the_newest_report_of_each_other_source_counts() {
        let mut board = Board::default();
        board.update(report(0, 1, Some(500), true));
        board.update(report(1, 2, Some(300), true));
        board.update(report(1, 1, Some(100), true)); // overtaken on the way
        board.update(report(2, 1, None, false));
        assert_eq!(board.others(0), Some(300));
        assert_eq!(board.others(1), Some(500));
        board.update(report(1, 3, None, false));
        assert_eq!(board.others(0), None, "nobody else knows anything");
    }

    #[test]
    fn silent_sources_never_hold_back_a_speaking_one() {
        // Two silent sources stopped at 300 (their partitions' clocks stand still), one speaks
        // at 900: each silent source follows the speaking one, not the other silent one.
        let mut board = Board::default();
        board.update(report(0, 1, Some(900), true));
        board.update(report(1, 1, Some(300), false));
        board.update(report(2, 1, Some(300), false));
        assert_eq!(board.others(1), Some(900));
        assert_eq!(board.others(2), Some(900));
        // When nobody speaks, nothing needs holding: follow the most advanced.
        board.update(report(0, 2, Some(950), false));
        assert_eq!(board.others(1), Some(950));
    }
}
