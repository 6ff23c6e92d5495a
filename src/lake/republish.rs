//! Bar tables as one file per hour, republished whole: fresh at every commit without a
//! file per commit.
//!
//! Bars are routed by table and hour to one worker, which keeps every row of each hour that
//! can still change. When a publish epoch closes with new rows for an hour, the whole hour
//! is encoded again and staged as a new version of the hour's file, which the commit moves
//! over the previous one (an atomic rename locally, a single-object copy on S3): a reader sees
//! the previous version or the new one. A restart continues an hour from its committed
//! version, so no operator state is snapshotted and the replay need not reach back to the
//! hour's first trade.

use std::collections::BTreeMap;

use dataflows::epoch::{Epochs, Output};
use dataflows::{Bar, Time};

use super::encode::BarColumns;
use super::writer::FileSink;
use super::{HOUR_MS, LakeError, Table, hour_of, read};

/// One hour's rows on its worker.
#[derive(Default)]
struct HourFile {
    /// Rows in the versions staged so far.
    staged: Vec<Bar>,
    /// Rows not yet in a staged version, with their timely times.
    pending: Vec<(Time, Bar)>,
}

/// A bar table's open hours on the worker that owns them.
pub struct HourFiles {
    table: Table,
    hours: BTreeMap<i64, HourFile>,
    /// Event time after an hour's end during which rows of the hour can still arrive (the
    /// widest window, the revision horizon, lateness): after that the hour is forgotten.
    open_after_ms: u64,
}

impl HourFiles {
    /// The hours of `table`; `open_after_ms` as above.
    pub fn new(table: Table, open_after_ms: u64) -> Self {
        HourFiles { table, hours: BTreeMap::new(), open_after_ms }
    }

    /// Adds a bar row at timely time `time`.
    pub fn push(&mut self, time: Time, bar: Bar, out: &FileSink) -> Result<(), LakeError> {
        let hour = hour_of(bar.window_start);
        if !self.hours.contains_key(&hour) {
            // An hour first seen continues its committed version: after a restart, or (should
            // a row come after the hour was forgotten) from what the lake holds.
            let staged = read::bars(&out.committed_version(&self.table, hour)?)?;
            self.hours.insert(hour, HourFile { staged, pending: Vec::new() });
        }
        if let Some(file) = self.hours.get_mut(&hour) {
            file.pending.push((time, bar));
        }
        Ok(())
    }

    /// Once the frontier reached `frontier`: stages new versions of every hour with rows
    /// below the last bar epoch at or before it, and forgets hours that can get no more rows.
    ///
    /// One version per bar epoch with rows, each holding every row before that epoch: a
    /// commit publishes the newest version at or below its point, which must hold exactly
    /// the rows the point publishes (a restart re-emits the others), even when the frontier
    /// passed several epochs at once.
    pub fn publish(&mut self, frontier: Time, epochs: &Epochs, out: &mut FileSink) -> Result<(), LakeError> {
        let below = epochs.published_below(Output::Bars, frontier);
        for (&hour, file) in &mut self.hours {
            if !file.pending.iter().any(|(t, _)| *t < below) {
                continue;
            }
            let mut due: Vec<(Time, Bar)> = Vec::new();
            for (time, bar) in std::mem::take(&mut file.pending) {
                if time < below {
                    due.push((epochs.epoch(Output::Bars, time), bar))
                } else {
                    file.pending.push((time, bar))
                }
            }
            due.sort_by_key(|(epoch, _)| *epoch);
            let mut rows = due.into_iter().peekable();
            while let Some((epoch, bar)) = rows.next() {
                file.staged.push(bar);
                if rows.peek().is_none_or(|(next, _)| *next != epoch) {
                    out.store_version::<BarColumns>(&self.table, hour, epoch, &file.staged)?;
                }
            }
        }
        let open_after = self.open_after_ms;
        self.hours.retain(|&hour, file| {
            let last_row = ((hour + 1) * HOUR_MS).max(0) as u64 + open_after;
            !file.pending.is_empty() || below <= last_row
        });
        Ok(())
    }
}
