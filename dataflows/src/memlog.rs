//! An in-memory partitioned log: the [`RecordSource`] of tests and benchmarks, so the whole
//! dataflow runs without a broker.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::source::{RawRecord, RecordSource, SourcePoll};

/// One record of an in-memory log.
#[derive(Clone, Debug, PartialEq)]
pub struct MemRecord {
    /// Value of the `stockflow-kind` header (`None` on trades; see [`crate::gap`]).
    pub kind: Option<Vec<u8>>,
    /// Log timestamp (as Kafka's), ms since the epoch.
    pub timestamp: Option<i64>,
    /// Value bytes.
    pub payload: Option<Vec<u8>>,
}

/// A partitioned log; partition `p`'s record at index `o` has offset `o`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemLog {
    /// Records per partition.
    pub partitions: Vec<Vec<MemRecord>>,
}

impl MemLog {
    /// Total number of records.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }

    /// Whether the log holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A worker's reader of a shared [`MemLog`]: partitions `p % peers == index`, read in chunks
/// of `chunk` records per partition in turn, so partitions interleave as they would from a broker.
pub struct MemSource {
    log: Arc<MemLog>,
    cursors: Vec<(usize, usize)>,
    chunk: usize,
    /// While set, an exhausted log reports `Idle` rather than `Done`, like a live topic.
    open: Option<Arc<AtomicBool>>,
    /// Partitions the operator paused; they deliver nothing until resumed.
    paused: std::collections::BTreeSet<usize>,
    /// Partitions not yet announced, and how many records to deliver before announcing them
    /// (a topic that grows while the job runs).
    hidden: (Vec<(usize, usize)>, usize),
    delivered: usize,
}

impl MemSource {
    /// The reader for worker `index` of `peers`.
    pub fn new(log: Arc<MemLog>, index: usize, peers: usize, chunk: usize) -> Self {
        let cursors = (0..log.partitions.len()).filter(|p| p % peers == index).map(|p| (p, 0)).collect();
        MemSource {
            log,
            cursors,
            chunk: chunk.max(1),
            open: None,
            paused: Default::default(),
            hidden: (Vec::new(), 0),
            delivered: 0,
        }
    }

    /// Starts partition `p` at `start[p]` instead of offset 0.
    pub fn starting_at(mut self, start: &std::collections::HashMap<i32, i64>) -> Self {
        for (p, next) in self.cursors.iter_mut() {
            if let Some(&o) = start.get(&(*p as i32)) {
                *next = (o.max(0) as usize).min(self.log.partitions[*p].len());
            }
        }
        self
    }

    /// Hides `partitions` (those this reader owns) until `after` records were delivered, then
    /// announces them through [`RecordSource::added`], as partitions added to a live topic.
    pub fn revealing(mut self, partitions: &[usize], after: usize) -> Self {
        let (hidden, kept) = self.cursors.into_iter().partition(|(p, _)| partitions.contains(p));
        self.cursors = kept;
        self.hidden = (hidden, after);
        self
    }

    /// Keeps the source open (idle once the log is read) until `open` is cleared.
    pub fn held_open(mut self, open: Arc<AtomicBool>) -> Self {
        self.open = Some(open);
        self
    }
}

impl RecordSource for MemSource {
    type Error = Infallible;

    fn partitions(&self) -> Vec<i32> {
        self.cursors.iter().map(|&(p, _)| p as i32).collect()
    }

    fn start_offset(&self, p: i32) -> i64 {
        self.cursors.iter().find(|(q, _)| *q as i32 == p).map_or(0, |(_, next)| *next as i64)
    }

    fn poll(&mut self, max: usize, each: &mut dyn FnMut(RawRecord<'_>)) -> Result<SourcePoll, Infallible> {
        let mut budget = max;
        for (p, next) in self.cursors.iter_mut() {
            if self.paused.contains(p) {
                continue;
            }
            let records = &self.log.partitions[*p];
            let take = self.chunk.min(budget).min(records.len() - *next);
            for (i, rec) in records[*next..*next + take].iter().enumerate() {
                each(RawRecord {
                    partition: *p as i32,
                    offset: (*next + i) as i64,
                    timestamp: rec.timestamp,
                    payload: rec.payload.as_deref(),
                    kind: rec.kind.as_deref(),
                });
            }
            *next += take;
            budget -= take;
            self.delivered += take;
        }
        let done =
            self.hidden.0.is_empty() && self.cursors.iter().all(|&(p, next)| next == self.log.partitions[p].len());
        let readable =
            self.cursors.iter().any(|&(p, next)| next < self.log.partitions[p].len() && !self.paused.contains(&p));
        let held = self.open.as_ref().is_some_and(|o| o.load(Ordering::SeqCst));
        Ok(match (done, held) {
            (false, _) if readable => SourcePoll::Busy,
            (false, _) | (true, true) => SourcePoll::Idle,
            (true, false) => SourcePoll::Done,
        })
    }

    fn pause(&mut self, p: i32) {
        self.paused.insert(p as usize);
    }

    fn resume(&mut self, p: i32) {
        self.paused.remove(&(p as usize));
    }

    fn added(&mut self) -> Vec<(i32, i64)> {
        let exhausted = self.cursors.iter().all(|&(p, next)| next == self.log.partitions[p].len());
        if self.hidden.0.is_empty() || (self.delivered < self.hidden.1 && !exhausted) {
            return Vec::new();
        }
        let revealed = std::mem::take(&mut self.hidden.0);
        let added = revealed.iter().map(|&(p, next)| (p as i32, next as i64)).collect();
        self.cursors.extend(revealed);
        added
    }

    fn ended(&self, p: i32) -> bool {
        let held = self.open.as_ref().is_some_and(|o| o.load(Ordering::SeqCst));
        !held && self.cursors.iter().any(|&(q, next)| q as i32 == p && next == self.log.partitions[q].len())
    }
}

/// Everything a pipeline run produced, gathered from all workers.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// Valid trades.
    pub trades: Vec<crate::Trade>,
    /// Quarantined records.
    pub quarantine: Vec<crate::Quarantined>,
    /// Gap records.
    pub gaps: Vec<crate::Gap>,
    /// Bar rows (every revision), tagged with their width index.
    pub bars: Vec<(u8, crate::Bar)>,
    /// The timely time each bar row left at: `(time, width, symbol, window_start, revision)`.
    pub bar_times: Vec<(crate::Time, u8, String, i64, u32)>,
    /// The timely time each trade, quarantined or gap record left at: `(time, partition, offset)`.
    pub record_times: Vec<(crate::Time, i32, i64)>,
    /// Every source's crossings.
    pub crossings: Vec<crate::resume::Crossing>,
}

/// Runs the pipeline over `log` on `workers` threads and gathers its outputs; the way tests
/// and benchmarks run the dataflow without a broker. With `cfg.resume` set, each partition
/// is read from its replay offset.
pub fn run_memlog(
    log: Arc<MemLog>,
    workers: usize,
    chunk: usize,
    cfg: crate::source::SourceConfig,
    bars: crate::bars::BarsConfig,
) -> Collected {
    let start: std::collections::HashMap<i32, i64> =
        cfg.resume.iter().flat_map(|r| r.partitions.iter().map(|(p, pos)| (*p, pos.replay))).collect();
    run_sources(workers, cfg, bars, move |index, peers| {
        MemSource::new(Arc::clone(&log), index, peers, chunk).starting_at(&start)
    })
}

/// Runs the pipeline on `workers` threads, each reading the source `source(index, peers)`
/// makes, and gathers its outputs.
pub fn run_sources(
    workers: usize,
    cfg: crate::source::SourceConfig,
    bars: crate::bars::BarsConfig,
    source: impl Fn(usize, usize) -> MemSource + Send + Sync + 'static,
) -> Collected {
    use std::sync::Mutex;
    use timely::dataflow::operators::{Inspect, Probe};

    let out = Arc::new(Mutex::new(Collected::default()));
    let shared = Arc::clone(&out);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let source = source(index, peers);
        let (t, q, b, x) = (Arc::clone(&shared), Arc::clone(&shared), Arc::clone(&shared), Arc::clone(&shared));
        let g = Arc::clone(&shared);
        let probe =
            worker.dataflow(|scope| {
                let out = crate::build_pipeline(scope, source, cfg.clone(), bars.clone());
                out.trades.inspect_core(move |c| {
                    if let Ok((stamp, batch)) = c {
                        let time = stamp.least().copied().unwrap_or_default();
                        let mut out = t.lock().unwrap_or_else(|e| e.into_inner());
                        out.trades.extend_from_slice(batch);
                        out.record_times.extend(batch.iter().map(|r| (time, r.partition, r.offset)));
                    }
                });
                out.quarantine.inspect_core(move |c| {
                    if let Ok((stamp, batch)) = c {
                        let time = stamp.least().copied().unwrap_or_default();
                        let mut out = q.lock().unwrap_or_else(|e| e.into_inner());
                        out.quarantine.extend_from_slice(batch);
                        out.record_times.extend(batch.iter().map(|r| (time, r.partition, r.offset)));
                    }
                });
                out.gaps.inspect_core(move |c| {
                    if let Ok((stamp, batch)) = c {
                        let time = stamp.least().copied().unwrap_or_default();
                        let mut out = g.lock().unwrap_or_else(|e| e.into_inner());
                        out.gaps.extend_from_slice(batch);
                        out.record_times.extend(batch.iter().map(|r| (time, r.partition, r.offset)));
                    }
                });
                out.crossings.inspect_core(move |c| {
                    if let Ok((_, batch)) = c {
                        x.lock().unwrap_or_else(|e| e.into_inner()).crossings.extend_from_slice(batch);
                    }
                });
                let (probe, _) =
                    out.bars
                        .inspect_core(move |c| {
                            if let Ok((stamp, batch)) = c {
                                let time = stamp.least().copied().unwrap_or_default();
                                let mut out = b.lock().unwrap_or_else(|e| e.into_inner());
                                out.bars.extend_from_slice(batch);
                                out.bar_times.extend(batch.iter().map(|(w, bar)| {
                                    (time, *w, bar.symbol.to_string(), bar.window_start, bar.revision)
                                }));
                            }
                        })
                        .probe();
                probe
            });
        while !probe.done() {
            worker.step();
        }
    });
    if let Ok(guards) = guards {
        // A panicking worker is a bug in the dataflow; surface it in the caller (a test).
        for result in guards.join() {
            if let Err(e) = result {
                panic!("worker failed: {e}");
            }
        }
    }
    let guard = out.lock().unwrap_or_else(|e| e.into_inner());
    guard.clone()
}
