//! The source: raw records from a partitioned log in, cleaned trades and quarantined records
//! out, stamped with event time and holding the frontier at the watermark.
//!
//! The log itself is abstract ([`RecordSource`]): Kafka in the application, an in-memory log
//! in tests and benchmarks. The operator ([`log_source`]) only wires named parts together:
//!
//! - [`partition`]: one partition's clock and replay bookkeeping; `accept` places a record;
//! - [`frontier`]: the pure rule for where the source's frontier goes next (idle partitions,
//!   ended partitions, and what the rest of the cluster reports);
//! - [`align`]: watermark alignment, which pauses partitions running ahead of the frontier;
//! - [`lead`]: the bound on records sent that the pipeline has not yet finished;
//! - [`board`]: what every source tells the others through a timely broadcast, so a worker
//!   whose partitions are all silent follows the cluster instead of holding it back.

pub mod align;
pub mod board;
pub mod frontier;
pub mod lead;
mod operator;
pub mod partition;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use operator::{ErrorSlot, SourceStreams, log_source};

use crate::epoch::Epochs;
use crate::resume::Resume;
use crate::time::{PartitionClock, TimeConfig};

/// One record of the log, borrowed from the client's buffer for the duration of a callback.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// Partition the record belongs to.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Log timestamp (Kafka: ingest receive time), ms since the epoch.
    pub timestamp: Option<i64>,
    /// The value bytes.
    pub payload: Option<&'a [u8]>,
    /// The value of its `stockflow-kind` header (`None`: a trade; see [`crate::gap`]).
    pub kind: Option<&'a [u8]>,
}

/// What a poll of the source found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were delivered (or more are immediately available): poll again soon.
    Busy,
    /// Nothing available now; the source calls its waker when that changes.
    Idle,
    /// Every partition has reached its end: no more records will come.
    Done,
}

/// A worker's share of a partitioned, offset-ordered log.
pub trait RecordSource: 'static {
    /// Failure to read the log; the job stops without emitting anything further.
    type Error: std::error::Error + 'static;

    /// The partitions this worker reads from the start.
    fn partitions(&self) -> Vec<i32>;

    /// Delivers up to `max` records, in offset order within each partition, to `each`.
    fn poll(&mut self, max: usize, each: &mut dyn FnMut(RawRecord<'_>)) -> Result<SourcePoll, Self::Error>;

    /// The offset the first record of partition `p` will have (where reading starts).
    fn start_offset(&self, p: i32) -> i64;

    /// Installs a callback the source calls when records arrive after it reported `Idle`.
    fn set_waker(&mut self, _waker: Box<dyn Fn() + Send + Sync>) {}

    /// Stops fetching partition `p` until [`RecordSource::resume`]. Advisory: records of `p`
    /// the source already holds may still be delivered, and are handled like any other.
    fn pause(&mut self, _p: i32) {}

    /// Fetches partition `p` again, from the record after the last one delivered.
    fn resume(&mut self, _p: i32) {}

    /// Partitions this worker started reading since the last call (added to the log while
    /// the job runs), each with the offset its first record will have.
    fn added(&mut self) -> Vec<(i32, i64)> {
        Vec::new()
    }

    /// Whether partition `p` has been read to the end this run will read (a drain's stop
    /// offset): it will deliver nothing more and must not hold the frontier back.
    fn ended(&self, _p: i32) -> bool {
        false
    }
}

/// Settings of the source operator.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Event-time model.
    pub time: TimeConfig,
    /// Commit points and publish intervals: what a restart emits again and replays for.
    pub epochs: Epochs,
    /// Most records handled per activation, so other operators get scheduled.
    pub batch: usize,
    /// Watermark of each partition at the first record it will deliver (empty: from scratch).
    pub clocks: HashMap<i32, PartitionClock>,
    /// A partition without records for this long stops holding the frontier back (`None`:
    /// never; right for a finite log). Wall-clock idleness only decides *when* windows close,
    /// never which trades are late or what a final bar holds.
    pub idle_timeout: Option<Duration>,
    /// Watermark alignment: a partition whose frontier runs more than this far (event-time
    /// ms) ahead of the source's is paused until the others catch up (`None`: never paused).
    pub max_drift_ms: Option<u64>,
    /// A restart from a commit: `clocks` then hold each partition's clock at its replay
    /// offset, which is where the record source must start.
    pub resume: Option<Resume>,
    /// Once set, the source reads nothing more and releases its frontier without marking
    /// the end of the log (a graceful stop: what is complete gets committed, nothing more).
    pub pause: Option<Arc<AtomicBool>>,
}

/// Five minutes of event time: a few commit intervals of open output at most, and each pause
/// lets a partition read minutes of its log before the next one.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 300_000;

/// Records a worker reads per activation when it has the process to itself.
pub const READ_BATCH: usize = 32 * 1024;
/// Records all the workers of a process read per activation together, once there are more
/// than four: each worker has up to five activations' records in its pipeline (the lead it
/// may run ahead of the pipeline's end, plus the one it is reading), ~230 bytes each as a
/// trade and its tick, so a batch per worker that never shrank made that term grow with
/// `-w` (heaptrack, 16 workers: the source's batches were 103 of the 362 MB heap peak).
pub const READ_BATCH_PER_PROCESS: usize = 4 * READ_BATCH;
/// The fewest records per activation, so a batch still amortises its scheduling.
pub const MIN_READ_BATCH: usize = 4 * 1024;

/// The records per activation of each of `local` workers sharing a process: [`READ_BATCH`]
/// up to four workers, then an even share of [`READ_BATCH_PER_PROCESS`], at least
/// [`MIN_READ_BATCH`].
pub fn read_batch(local: usize) -> usize {
    (READ_BATCH_PER_PROCESS / local.max(1)).clamp(MIN_READ_BATCH, READ_BATCH)
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            time: TimeConfig::default(),
            epochs: Epochs::default(),
            batch: READ_BATCH,
            clocks: HashMap::new(),
            idle_timeout: None,
            max_drift_ms: Some(DEFAULT_MAX_DRIFT_MS),
            resume: None,
            pause: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_batch_of_a_process_is_bounded_whatever_its_worker_count() {
        for local in 1..=4 {
            assert_eq!(read_batch(local), READ_BATCH);
        }
        assert_eq!(read_batch(0), READ_BATCH);
        assert_eq!(read_batch(8), READ_BATCH / 2);
        assert_eq!(read_batch(16), READ_BATCH / 4);
        assert_eq!(read_batch(1024), MIN_READ_BATCH);
        for local in 4..=32 {
            assert!(read_batch(local) * local <= READ_BATCH_PER_PROCESS);
        }
    }
}
