//! The source operator: raw records from a partitioned log in, cleaned trades and quarantined
//! records out, stamped with event time and holding the frontier at the watermark.
//!
//! The log itself is abstract ([`RecordSource`]): Kafka in the application, an in-memory log in
//! tests and benchmarks. Records are cleaned straight from the borrowed payload and leave in
//! batches, one container per timely time, never one message per trade.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, StreamVec};

use crate::Time;
use crate::bars::{BarsConfig, Tick};
use crate::clean::{clean, quarantine_payload};
use crate::resume::{Crossing, Resume, Tracker, expiry};
use crate::time::{PartitionClock, TimeConfig};
use crate::trade::{Quarantined, Trade};

/// How many batches of records a source may have sent that the end of the pipeline has not
/// yet passed. Timely has no backpressure of its own: without a bound, a worker that reads
/// faster than its peers process their share fills the exchange channels without limit. A
/// bound above one batch keeps the pipeline full, so the source never waits for the rest of
/// its own worker to drain.
const MAX_LEAD_BATCHES: usize = 4;

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

    /// The partitions this worker reads.
    fn partitions(&self) -> Vec<i32>;

    /// Delivers up to `max` records, in offset order within each partition, to `each`.
    fn poll(&mut self, max: usize, each: &mut dyn FnMut(RawRecord<'_>)) -> Result<SourcePoll, Self::Error>;

    /// The offset the first record of partition `p` will have (where reading starts).
    fn start_offset(&self, p: i32) -> i64;

    /// Installs a callback the source calls when records arrive after it reported `Idle`.
    fn set_waker(&mut self, _waker: Box<dyn Fn() + Send + Sync>) {}
}

/// Settings of the source operator.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Event-time model.
    pub time: TimeConfig,
    /// Most records handled per activation, so other operators get scheduled.
    pub batch: usize,
    /// Watermark of each partition at the first record it will deliver (empty: from scratch).
    pub clocks: HashMap<i32, PartitionClock>,
    /// A partition without records for this long stops holding the frontier back (`None`:
    /// never; right for a finite log). Wall-clock idleness only decides *when* windows close,
    /// never which trades are late or what a final bar holds.
    pub idle_timeout: Option<Duration>,
    /// Where the sources of one process share their watermarks, so a worker whose partitions
    /// are all idle can follow the others instead of holding every window open.
    pub board: Option<Arc<WatermarkBoard>>,
    /// A restart from a commit: `clocks` then hold each partition's clock at its replay
    /// offset, which is where the record source must start.
    pub resume: Option<Resume>,
    /// Once set, the source reads nothing more and releases its frontier without marking
    /// the end of the log (a graceful stop: what is complete gets committed, nothing more).
    pub pause: Option<Arc<AtomicBool>>,
}

/// The watermarks of the workers of one process, for workers whose partitions are all idle.
#[derive(Debug, Default)]
pub struct WatermarkBoard {
    lows: Mutex<HashMap<usize, Option<Time>>>,
}

impl WatermarkBoard {
    /// Records what worker `worker` knows of event time (`None`: it has seen no trades).
    pub fn publish(&self, worker: usize, low: Option<Time>) {
        if let Ok(mut lows) = self.lows.lock() {
            lows.insert(worker, low);
        }
    }

    /// The least watermark among the other workers that have seen trades, if any.
    pub fn others_low(&self, worker: usize) -> Option<Time> {
        let lows = self.lows.lock().ok()?;
        lows.iter().filter(|(w, _)| **w != worker).filter_map(|(_, low)| *low).min()
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            time: TimeConfig::default(),
            batch: 32 * 1024,
            clocks: HashMap::new(),
            idle_timeout: None,
            board: None,
            resume: None,
            pause: None,
        }
    }
}

/// The first error a source reported, for the driver to surface after stopping the worker.
pub type ErrorSlot<E> = Rc<RefCell<Option<E>>>;

/// The streams a source produces.
pub struct SourceStreams<'scope, E> {
    /// Valid trades, with `late` set, at `max(window_start(t), floor_W(pw))`.
    pub trades: StreamVec<'scope, Time, Trade>,
    /// Records that failed cleaning, at `floor_W(pw)` of their partition.
    pub quarantine: StreamVec<'scope, Time, Quarantined>,
    /// The bar inputs of every valid trade, with the watermark it arrived at.
    pub ticks: StreamVec<'scope, Time, Tick>,
    /// The source's positions each time its frontier moves, at the time it moved from.
    pub crossings: StreamVec<'scope, Time, Crossing>,
    /// Filled when the source fails; the capability is then held so nothing incomplete is emitted.
    pub error: ErrorSlot<E>,
}

/// Builds the source operator reading `source` into cleaned, event-timed streams.
///
/// `downstream` observes the end of the pipeline: the source reads nothing new while
/// [`MAX_LEAD_BATCHES`] batches or more that it sent below its own frontier are at times the
/// pipeline has not finished.
///
/// Records already committed before a restart (`cfg.resume`) rebuild bar state through
/// `ticks` but are not emitted again as trades or quarantine.
pub fn log_source<'scope, S: RecordSource>(
    scope: Scope<'scope, Time>,
    mut source: S,
    cfg: SourceConfig,
    bars: &BarsConfig,
    downstream: ProbeHandle<Time>,
) -> SourceStreams<'scope, S::Error> {
    let mut builder = OperatorBuilder::new("LogSource".to_owned(), scope);
    let info = builder.operator_info();
    let worker = scope.index();
    let (trades_out, trades) = builder.new_output();
    let (quarantine_out, quarantine) = builder.new_output();
    let (ticks_out, ticks) = builder.new_output();
    let mut trades_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Trade>>> = OutputBuilder::from(trades_out);
    let mut quarantine_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Quarantined>>> =
        OutputBuilder::from(quarantine_out);
    let mut ticks_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Tick>>> = OutputBuilder::from(ticks_out);
    let (crossings_out, crossings) = builder.new_output();
    let mut crossings_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Crossing>>> =
        OutputBuilder::from(crossings_out);
    let bars = bars.clone();

    let error: ErrorSlot<S::Error> = Rc::new(RefCell::new(None));
    let error_out = Rc::clone(&error);
    let activator = scope.activator_for(Rc::clone(&info.address));
    let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
    source.set_waker(Box::new(move || {
        // The dataflow may already have shut down; nothing to wake then.
        let _ = sync_activator.activate();
    }));

    builder.build(move |caps| {
        let mut caps: Option<[Capability<Time>; 4]> = caps.try_into().ok();
        let time_cfg = cfg.time;
        let commit = cfg.resume.as_ref().map_or(0, |r| r.commit);
        let mut clocks: HashMap<i32, PartitionClock> = HashMap::new();
        let mut trackers: HashMap<i32, Tracker> = HashMap::new();
        for p in source.partitions() {
            let clock = cfg.clocks.get(&p).copied().unwrap_or_default();
            let restart = cfg.resume.as_ref().map(|r| (r.partitions.get(&p), r.commit));
            let (tracker, mut clock) = match restart {
                Some((Some(position), commit)) => Tracker::new(source.start_offset(p), Some((position, commit)), clock),
                _ => Tracker::new(source.start_offset(p), None, clock),
            };
            if let Some((None, commit)) = restart {
                // A partition created after the commit: all of it is new.
                clock.raise_floor(commit);
            }
            clocks.insert(p, clock);
            trackers.insert(p, tracker);
        }
        let mut trade_batches: BTreeMap<Time, Vec<Trade>> = BTreeMap::new();
        let mut quarantine_batches: BTreeMap<Time, Vec<Quarantined>> = BTreeMap::new();
        let mut tick_batches: BTreeMap<Time, Vec<Tick>> = BTreeMap::new();
        let started = Instant::now();
        let mut last_record: HashMap<i32, Instant> = clocks.keys().map(|p| (*p, started)).collect();
        let mut delivered: Vec<i32> = Vec::new();
        // Records sent downstream, by the newest time of the activation that sent them, until
        // the end of the pipeline has passed that time.
        let mut lead: VecDeque<(Time, usize)> = VecDeque::new();

        if clocks.is_empty() {
            // More workers than partitions: this worker has nothing to read.
            caps = None;
        } else if let Some(caps) = caps.as_mut() {
            let start = clocks.values().map(|c| c.frontier(&time_cfg)).min().unwrap_or(0);
            caps.iter_mut().for_each(|c| c.downgrade(&start));
        }

        move |_frontiers| {
            if cfg.pause.as_ref().is_some_and(|p| p.load(Ordering::SeqCst)) {
                caps = None;
            }
            let Some([trades_cap, quarantine_cap, ticks_cap, crossings_cap]) = caps.as_mut() else {
                return;
            };
            if error_out.borrow().is_some() {
                return;
            }
            let floor = *trades_cap.time();
            while lead.front().is_some_and(|(time, _)| !downstream.less_equal(time)) {
                lead.pop_front();
            }
            // Only records below the floor count: the pipeline cannot finish the source's own
            // current time before the source moves on, so waiting for those would never end.
            let behind: usize = lead.iter().filter(|(time, _)| *time < floor).map(|(_, n)| n).sum();
            if behind >= MAX_LEAD_BATCHES * cfg.batch.max(1) {
                // Far ahead: let the rest of the dataflow (here and at peers) catch up.
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            let mut read = 0;
            let polled = source.poll(cfg.batch, &mut |rec: RawRecord<'_>| {
                read += 1;
                if delivered.last() != Some(&rec.partition) {
                    delivered.push(rec.partition);
                }
                let clock = clocks.entry(rec.partition).or_default();
                let tracker = trackers.entry(rec.partition).or_default();
                let before = *clock;
                tracker.before(rec.offset, clock, &time_cfg, floor);
                match clean(rec.payload) {
                    Ok(c) => {
                        let watermark = clock.watermark(&time_cfg);
                        let placed = clock.place(&time_cfg, c.ts);
                        tracker.trade(rec.offset, expiry(&bars, c.ts), before);
                        // Never below the capability (a guard; raises keep records above it).
                        let time = placed.time.max(floor);
                        let committed = tracker.committed(time, commit);
                        tracker.after(rec.offset, clock, commit);
                        let trade = Trade {
                            symbol: c.symbol,
                            price: c.price,
                            volume: c.volume,
                            ts: c.ts,
                            conditions: c.conditions,
                            partition: rec.partition,
                            offset: rec.offset,
                            ingest_ts: rec.timestamp,
                            late: placed.late,
                        };
                        tick_batches.entry(time).or_default().push(Tick::new(&trade, watermark));
                        if !committed {
                            trade_batches.entry(time).or_default().push(trade);
                        }
                    }
                    Err(reason) => {
                        let time = clock.frontier(&time_cfg).max(floor);
                        let committed = tracker.committed(time, commit);
                        tracker.after(rec.offset, clock, commit);
                        if committed {
                            return;
                        }
                        quarantine_batches.entry(time).or_default().push(Quarantined {
                            reason,
                            payload: quarantine_payload(rec.payload),
                            partition: rec.partition,
                            offset: rec.offset,
                            kafka_ts: rec.timestamp,
                            time,
                        });
                    }
                }
            });

            // Every record sent lies in a tick or a quarantine batch (trades are a subset of ticks).
            let newest = [tick_batches.keys().next_back(), quarantine_batches.keys().next_back()];
            if let Some(&newest) = newest.into_iter().flatten().max() {
                // One entry per time, so a time that lasts many activations costs one entry.
                match lead.back_mut() {
                    Some((time, n)) if *time == newest => *n += read,
                    _ => lead.push_back((newest, read)),
                }
            }
            let mut trades_session = trades_out.activate();
            for (time, mut batch) in std::mem::take(&mut trade_batches) {
                trades_session.session(&trades_cap.delayed(&time)).give_container(&mut batch);
            }
            let mut ticks_session = ticks_out.activate();
            for (time, mut batch) in std::mem::take(&mut tick_batches) {
                ticks_session.session(&ticks_cap.delayed(&time)).give_container(&mut batch);
            }
            let mut quarantine_session = quarantine_out.activate();
            for (time, mut batch) in std::mem::take(&mut quarantine_batches) {
                quarantine_session.session(&quarantine_cap.delayed(&time)).give_container(&mut batch);
            }

            match polled {
                Err(e) => {
                    // Keep the capabilities: windows must not close on a log we failed to read.
                    *error_out.borrow_mut() = Some(e);
                }
                Ok(SourcePoll::Done) => {
                    let partitions = trackers.iter_mut().map(|(p, t)| t.mark(*p, clocks[p], None)).collect();
                    let crossing = Crossing { from: floor, to: None, partitions };
                    crossings_out.activate().session(&*crossings_cap).give(crossing);
                    caps = None;
                }
                Ok(poll) => {
                    let now = Instant::now();
                    for p in delivered.drain(..) {
                        last_record.insert(p, now);
                    }
                    // A partition replaying committed records is never idle: its records are
                    // there to read, and it must not be overtaken.
                    let idle = |p: &i32| {
                        cfg.idle_timeout.is_some_and(|t| last_record.get(p).is_some_and(|at| now - *at >= t))
                            && !trackers.get(p).is_some_and(Tracker::replaying)
                    };
                    let frontier = |c: &PartitionClock| c.frontier(&time_cfg);
                    // The least watermark of the partitions still speaking. When all of this
                    // worker's partitions are silent it follows the other workers of the
                    // process that still hear trades, or else its own most advanced partition.
                    let active = clocks.iter().filter(|(p, _)| !idle(p)).map(|(_, c)| frontier(c)).min();
                    let low = match active {
                        Some(low) => low,
                        None => {
                            let own = clocks.values().map(frontier).max().unwrap_or(floor);
                            cfg.board.as_ref().and_then(|b| b.others_low(worker)).map_or(own, |o| o.max(own))
                        }
                    }
                    .max(floor);
                    if let Some(board) = &cfg.board {
                        // What this worker knows of event time: its active partitions, or, when
                        // all are idle, the most advanced partition that has seen trades.
                        let known = active.or_else(|| {
                            clocks.values().filter_map(|c| c.watermark(&time_cfg).map(|_| frontier(c))).max()
                        });
                        board.publish(worker, known);
                    }
                    if low > floor {
                        let partitions = trackers.iter_mut().map(|(p, t)| t.mark(*p, clocks[p], Some(low))).collect();
                        let crossing = Crossing { from: floor, to: Some(low), partitions };
                        crossings_out.activate().session(&*crossings_cap).give(crossing);
                    }
                    for cap in [trades_cap, quarantine_cap, ticks_cap, crossings_cap] {
                        cap.downgrade(&low);
                    }
                    match poll {
                        SourcePoll::Busy => activator.activate(),
                        // The waker covers new records; the timer covers sources without one.
                        _ => activator.activate_after(Duration::from_millis(50)),
                    }
                }
            }
        }
    });

    SourceStreams { trades, quarantine, ticks, crossings, error }
}
