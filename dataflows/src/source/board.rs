//! What every source of the cluster knows of event time, exchanged as a timely broadcast.
//!
//! A source whose partitions are all silent (a process whose symbols have stopped trading
//! while others trade on) follows the least event time the speaking sources report instead of
//! holding the cluster's frontier. Reports travel through the dataflow, so workers of other
//! processes see them too. Each source sends a report when what it knows changes; reports
//! carry a sequence number because only the newest one of a source counts.

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
}

/// The newest report of every source.
#[derive(Clone, Debug, Default)]
pub struct Board {
    newest: HashMap<usize, (u64, Option<Time>)>,
}

impl Board {
    /// Takes a report in, unless a newer one of its worker is already known.
    pub fn update(&mut self, report: Report) {
        let entry = self.newest.entry(report.worker).or_insert((report.seq, report.known));
        if entry.0 <= report.seq {
            *entry = (report.seq, report.known);
        }
    }

    /// The least event time known to the sources other than `worker`.
    pub fn others(&self, worker: usize) -> Option<Time> {
        self.newest.iter().filter(|(w, _)| **w != worker).filter_map(|(_, (_, known))| *known).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_report_of_each_other_source_counts() {
        let mut board = Board::default();
        board.update(Report { worker: 0, seq: 1, known: Some(500) });
        board.update(Report { worker: 1, seq: 2, known: Some(300) });
        board.update(Report { worker: 1, seq: 1, known: Some(100) }); // overtaken on the way
        board.update(Report { worker: 2, seq: 1, known: None });
        assert_eq!(board.others(0), Some(300));
        assert_eq!(board.others(1), Some(500));
        board.update(Report { worker: 1, seq: 3, known: None });
        assert_eq!(board.others(0), None, "nobody else knows anything");
    }
}
