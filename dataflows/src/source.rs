//! The source operator: raw records from a partitioned log in, cleaned trades and quarantined
//! records out, stamped with event time and holding the frontier at the watermark.
//!
//! The log itself is abstract ([`RecordSource`]): Kafka in the application, an in-memory log in
//! tests and benchmarks. Records are cleaned straight from the borrowed payload and leave in
//! batches, one container per timely time, never one message per trade.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, StreamVec};

use crate::Time;
use crate::bars::Tick;
use crate::clean::{clean, quarantine_payload};
use crate::time::{PartitionClock, TimeConfig};
use crate::trade::{Quarantined, Trade};

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
    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<SourcePoll, Self::Error>;

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
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            time: TimeConfig::default(),
            batch: 32 * 1024,
            clocks: HashMap::new(),
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
    /// The bar inputs of on-time trades, at `window_start(t)`.
    pub ticks: StreamVec<'scope, Time, Tick>,
    /// Filled when the source fails; the capability is then held so nothing incomplete is emitted.
    pub error: ErrorSlot<E>,
}

/// Builds the source operator reading `source` into cleaned, event-timed streams.
pub fn log_source<'scope, S: RecordSource>(
    scope: Scope<'scope, Time>,
    mut source: S,
    cfg: SourceConfig,
) -> SourceStreams<'scope, S::Error> {
    let mut builder = OperatorBuilder::new("LogSource".to_owned(), scope);
    let info = builder.operator_info();
    let (trades_out, trades) = builder.new_output();
    let (quarantine_out, quarantine) = builder.new_output();
    let (ticks_out, ticks) = builder.new_output();
    let mut trades_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Trade>>> =
        OutputBuilder::from(trades_out);
    let mut quarantine_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Quarantined>>> =
        OutputBuilder::from(quarantine_out);
    let mut ticks_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Tick>>> =
        OutputBuilder::from(ticks_out);

    let error: ErrorSlot<S::Error> = Rc::new(RefCell::new(None));
    let error_out = Rc::clone(&error);
    let activator = scope.activator_for(Rc::clone(&info.address));
    let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
    source.set_waker(Box::new(move || {
        // The dataflow may already have shut down; nothing to wake then.
        let _ = sync_activator.activate();
    }));

    builder.build(move |caps| {
        let mut caps: Option<[Capability<Time>; 3]> = caps.try_into().ok();
        let time_cfg = cfg.time;
        let mut clocks: HashMap<i32, PartitionClock> = source
            .partitions()
            .into_iter()
            .map(|p| (p, cfg.clocks.get(&p).copied().unwrap_or_default()))
            .collect();
        let mut trade_batches: BTreeMap<Time, Vec<Trade>> = BTreeMap::new();
        let mut quarantine_batches: BTreeMap<Time, Vec<Quarantined>> = BTreeMap::new();
        let mut tick_batches: BTreeMap<Time, Vec<Tick>> = BTreeMap::new();

        if clocks.is_empty() {
            // More workers than partitions: this worker has nothing to read.
            caps = None;
        } else if let Some(caps) = caps.as_mut() {
            let start = clocks
                .values()
                .map(|c| c.frontier(&time_cfg))
                .min()
                .unwrap_or(0);
            caps.iter_mut().for_each(|c| c.downgrade(&start));
        }

        move |_frontiers| {
            let Some([trades_cap, quarantine_cap, ticks_cap]) = caps.as_mut() else {
                return;
            };
            if error_out.borrow().is_some() {
                return;
            }
            let floor = *trades_cap.time();
            let polled = source.poll(cfg.batch, &mut |rec: RawRecord<'_>| {
                let clock = clocks.entry(rec.partition).or_default();
                match clean(rec.payload) {
                    Ok(c) => {
                        let placed = clock.place(&time_cfg, c.ts);
                        let time = placed.time.max(floor);
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
                        if !placed.late {
                            tick_batches
                                .entry(time)
                                .or_default()
                                .push(Tick::from(&trade));
                        }
                        trade_batches.entry(time).or_default().push(trade);
                    }
                    Err(reason) => {
                        let time = clock.frontier(&time_cfg).max(floor);
                        quarantine_batches
                            .entry(time)
                            .or_default()
                            .push(Quarantined {
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

            let mut trades_session = trades_out.activate();
            for (time, mut batch) in std::mem::take(&mut trade_batches) {
                trades_session
                    .session(&trades_cap.delayed(&time))
                    .give_container(&mut batch);
            }
            let mut ticks_session = ticks_out.activate();
            for (time, mut batch) in std::mem::take(&mut tick_batches) {
                ticks_session
                    .session(&ticks_cap.delayed(&time))
                    .give_container(&mut batch);
            }
            let mut quarantine_session = quarantine_out.activate();
            for (time, mut batch) in std::mem::take(&mut quarantine_batches) {
                quarantine_session
                    .session(&quarantine_cap.delayed(&time))
                    .give_container(&mut batch);
            }

            match polled {
                Err(e) => {
                    // Keep the capabilities: windows must not close on a log we failed to read.
                    *error_out.borrow_mut() = Some(e);
                }
                Ok(SourcePoll::Done) => caps = None,
                Ok(poll) => {
                    let low = clocks
                        .values()
                        .map(|c| c.frontier(&time_cfg))
                        .min()
                        .unwrap_or(floor);
                    let low = low.max(floor);
                    for cap in [trades_cap, quarantine_cap, ticks_cap] {
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

    SourceStreams {
        trades,
        quarantine,
        ticks,
        error,
    }
}
