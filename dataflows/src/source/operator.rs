//! The source operator: polls a [`RecordSource`], places each record with its partition,
//! and moves its frontier, pausing the partitions that run ahead. Records leave in batches,
//! one container per timely time, never one message per trade.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::{Scope, StreamVec};
use timely::progress::Antichain;

use super::align::{Action, Alignment};
use super::board::{Board, Report};
use super::frontier::{PartitionView, next_frontier};
use super::lead::Lead;
use super::partition::{Context, Partition, Partitions, Placed};
use super::{RawRecord, RecordSource, SourceConfig, SourcePoll};
use crate::Time;
use crate::bars::{BarsConfig, Tick};
use crate::clean::quarantine_payload;
use crate::gap::{Gap, GapTick};
use crate::resume::Crossing;
use crate::trade::{Quarantined, Trade};

/// How many batches of records a source may have sent below its frontier that the end of
/// the pipeline has not yet finished (see [`Lead`]). Above one batch, so the pipeline stays
/// full and the source never waits for the rest of its own worker to drain.
const MAX_LEAD_BATCHES: usize = 4;

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
    /// Gap records for the `gaps` table, at the partition's frontier.
    pub gaps: StreamVec<'scope, Time, Gap>,
    /// The bar inputs of every gap record (committed ones too), with the watermark it arrived at.
    pub gap_ticks: StreamVec<'scope, Time, GapTick>,
    /// The source's positions each time its frontier moves, at the time it moved from.
    pub crossings: StreamVec<'scope, Time, Crossing>,
    /// Filled when the source fails; the capability is then held so nothing incomplete is emitted.
    pub error: ErrorSlot<E>,
}

/// One activation's output, by timely time.
#[derive(Default)]
struct Batches {
    trades: BTreeMap<Time, Vec<Trade>>,
    quarantine: BTreeMap<Time, Vec<Quarantined>>,
    ticks: BTreeMap<Time, Vec<Tick>>,
    gaps: BTreeMap<Time, Vec<Gap>>,
    gap_ticks: BTreeMap<Time, Vec<GapTick>>,
}

impl Batches {
    /// `(time, records)` of every batch going down the pipeline: every record is a tick, a
    /// gap tick or a quarantine row (trades and gap rows are subsets of the ticks and gap ticks).
    fn sent(&self) -> Vec<(Time, usize)> {
        fn sizes<D>(batches: &BTreeMap<Time, Vec<D>>) -> impl Iterator<Item = (Time, usize)> + '_ {
            batches.iter().map(|(t, b)| (*t, b.len()))
        }
        sizes(&self.ticks).chain(sizes(&self.quarantine)).chain(sizes(&self.gap_ticks)).collect()
    }

    fn place(&mut self, rec: &RawRecord<'_>, placed: Placed) {
        match placed {
            Placed::Trade { time, trade, watermark, committed } => {
                self.ticks.entry(time).or_default().push(Tick::new(&trade, watermark));
                if !committed {
                    self.trades.entry(time).or_default().push(trade);
                }
            }
            Placed::Gap { time, gap, tick, committed } => {
                self.gap_ticks.entry(time).or_default().push(tick);
                if !committed {
                    self.gaps.entry(time).or_default().push(gap);
                }
            }
            Placed::Quarantine { time, reason, committed: false } => {
                self.quarantine.entry(time).or_default().push(Quarantined {
                    reason,
                    payload: quarantine_payload(rec.payload),
                    partition: rec.partition,
                    offset: rec.offset,
                    kafka_ts: rec.timestamp,
                    time,
                });
            }
            Placed::Quarantine { committed: true, .. } => {}
        }
    }
}

type Out<D> = OutputBuilder<Time, CapacityContainerBuilder<Vec<D>>>;

/// Sends one activation's batches of an output, each at its time.
fn give<D: Clone + 'static>(out: &mut Out<D>, cap: &Capability<Time>, batches: BTreeMap<Time, Vec<D>>) {
    let mut session = out.activate();
    for (time, mut batch) in batches {
        session.session(&cap.delayed(&time)).give_container(&mut batch);
    }
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
    // Reports of every source come back to every source one tick later; the input is not
    // connected to the outputs, so no output ever waits on it.
    let (board_loop, reports) = scope.feedback::<Vec<Report>>(1);
    let mut builder = OperatorBuilder::new("LogSource".to_owned(), scope);
    let info = builder.operator_info();
    let worker = scope.index();
    let (trades_out, trades) = builder.new_output();
    let (quarantine_out, quarantine) = builder.new_output();
    let (ticks_out, ticks) = builder.new_output();
    let (gaps_out, gaps) = builder.new_output();
    let (gap_ticks_out, gap_ticks) = builder.new_output();
    let (crossings_out, crossings) = builder.new_output();
    let (reports_out, reports_sent) = builder.new_output();
    let mut reports_in = builder.new_input_connection(reports, Pipeline, Vec::<(usize, Antichain<Time>)>::new());
    let mut trades_out: Out<Trade> = OutputBuilder::from(trades_out);
    let mut quarantine_out: Out<Quarantined> = OutputBuilder::from(quarantine_out);
    let mut ticks_out: Out<Tick> = OutputBuilder::from(ticks_out);
    let mut gaps_out: Out<Gap> = OutputBuilder::from(gaps_out);
    let mut gap_ticks_out: Out<GapTick> = OutputBuilder::from(gap_ticks_out);
    let mut crossings_out: Out<Crossing> = OutputBuilder::from(crossings_out);
    let mut reports_out: Out<Report> = OutputBuilder::from(reports_out);
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
        let mut caps: Option<[Capability<Time>; 7]> = caps.try_into().ok();
        let time_cfg = cfg.time;
        let commit = cfg.resume.as_ref().map_or(0, |r| r.commit);
        let align = cfg.max_drift_ms.map(|max_drift| Alignment { max_drift });
        let started = Instant::now();
        let mut parts = Partitions::default();
        for p in source.partitions() {
            let clock = cfg.clocks.get(&p).copied().unwrap_or_default();
            parts.insert(Partition::new(p, source.start_offset(p), clock, cfg.resume.as_ref(), started));
        }
        let mut lead = Lead::default();
        let mut board = Board::default();
        let (mut published, mut seq): (Option<(Option<Time>, bool)>, u64) = (None, 0);
        let mut delivered: Vec<i32> = Vec::new();

        // A source with no partitions yet (more workers than partitions) keeps its
        // capabilities: partitions added to the log later are its to read. Until then it
        // follows the cluster, and ends when its source reports the end of the log.
        if let Some(caps) = caps.as_mut() {
            let start = parts.iter().map(|p| p.frontier(&time_cfg)).min().unwrap_or(0);
            caps.iter_mut().for_each(|c| c.downgrade(&start));
        }

        move |_frontiers| {
            reports_in.for_each(|_, data| data.drain(..).for_each(|r| board.update(r)));
            if cfg.pause.as_ref().is_some_and(|p| p.load(Ordering::SeqCst)) {
                caps = None;
            }
            let Some([trades_cap, quarantine_cap, ticks_cap, gaps_cap, gap_ticks_cap, crossings_cap, reports_cap]) =
                caps.as_mut()
            else {
                return;
            };
            if error_out.borrow().is_some() {
                return;
            }
            let floor = *trades_cap.time();
            let now = Instant::now();
            // Nothing of a partition found now can leave below the frontier, nor (during a
            // restart's replay) below the commit point: a commit that did not list it never
            // saw any of its records.
            for (p, start) in source.added() {
                if !parts.contains(p) {
                    parts.insert(Partition::added(p, start, &time_cfg, floor.max(commit), now));
                }
            }
            lead.settle(downstream.with_frontier(|f| f.iter().next().copied()));
            if lead.behind(floor) >= MAX_LEAD_BATCHES * cfg.batch.max(1) {
                // Far ahead: let the rest of the dataflow (here and at peers) catch up.
                activator.activate_after(Duration::from_millis(1));
                return;
            }

            let cx = Context { time: &time_cfg, bars: &bars, epochs: &cfg.epochs, commit, floor };
            let mut out = Batches::default();
            let polled = source.poll(cfg.batch, &mut |rec: RawRecord<'_>| {
                if delivered.last() != Some(&rec.partition) {
                    delivered.push(rec.partition);
                }
                if !parts.contains(rec.partition) {
                    // A source that delivers a partition it did not announce: read it as new.
                    parts.insert(Partition::added(rec.partition, rec.offset, &time_cfg, floor.max(commit), now));
                }
                if let Some(part) = parts.get_mut(rec.partition) {
                    let placed = part.accept(&rec, &cx);
                    out.place(&rec, placed);
                }
            });

            for (time, n) in out.sent() {
                lead.sent(time, n);
            }
            give(&mut trades_out, trades_cap, out.trades);
            give(&mut ticks_out, ticks_cap, out.ticks);
            give(&mut quarantine_out, quarantine_cap, out.quarantine);
            give(&mut gaps_out, gaps_cap, out.gaps);
            give(&mut gap_ticks_out, gap_ticks_cap, out.gap_ticks);

            let poll = match polled {
                Err(e) => {
                    // Keep the capabilities: windows must not close on a log we failed to read.
                    *error_out.borrow_mut() = Some(e);
                    return;
                }
                Ok(SourcePoll::Done) => {
                    crossings_out.activate().session(&*crossings_cap).give(parts.crossing(floor, None));
                    caps = None;
                    return;
                }
                Ok(poll) => poll,
            };

            let now = Instant::now();
            for p in delivered.drain(..) {
                if let Some(part) = parts.get_mut(p) {
                    part.heard(now);
                }
            }
            for part in parts.iter_mut().filter(|p| !p.ended()) {
                if source.ended(part.id()) {
                    part.set_ended();
                }
            }
            let views = parts.iter().map(|p| PartitionView {
                frontier: p.frontier(&time_cfg),
                speaking: !p.ended() && !p.idle(now, cfg.idle_timeout),
                has_watermark: p.has_watermark(&time_cfg),
            });
            let next = next_frontier(floor, views, board.others(worker));
            if published != Some((next.known, next.speaking)) {
                published = Some((next.known, next.speaking));
                seq += 1;
                let report = Report { worker, seq, known: next.known, speaking: next.speaking };
                reports_out.activate().session(&*reports_cap).give(report);
            }
            if next.low > floor {
                crossings_out.activate().session(&*crossings_cap).give(parts.crossing(floor, Some(next.low)));
            }
            for cap in [trades_cap, quarantine_cap, ticks_cap, gaps_cap, gap_ticks_cap, crossings_cap, reports_cap] {
                cap.downgrade(&next.low);
            }
            let mut resumed = false;
            if let Some(align) = align {
                for part in parts.iter_mut().filter(|p| !p.ended()) {
                    match align.decide(next.low, part.frontier(&time_cfg), part.paused()) {
                        Some(Action::Pause) => {
                            source.pause(part.id());
                            part.set_paused(true, now);
                        }
                        Some(Action::Resume) => {
                            source.resume(part.id());
                            part.set_paused(false, now);
                            resumed = true;
                        }
                        None => {}
                    }
                }
            }
            match poll {
                // A resumed partition has records waiting that no waker will announce.
                _ if resumed => activator.activate(),
                SourcePoll::Busy => activator.activate(),
                // The waker covers new records; the timer covers idleness and sources without one.
                _ => activator.activate_after(Duration::from_millis(50)),
            }
        }
    });
    reports_sent.broadcast().connect_loop(board_loop);

    SourceStreams { trades, quarantine, ticks, gaps, gap_ticks, crossings, error }
}
