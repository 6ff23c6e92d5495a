//! The lake sink: the dataflow's trades, quarantine, gaps and bars into Parquet files staged
//! per publish epoch, each reported to the committer once stored.
//!
//! A row at timely time `t` belongs to its table's epoch (`dataflows::epoch`): the first
//! multiple of the table's publish interval above `t`. Trades, quarantine and gaps keep one open
//! file per (epoch, hour partition), closed when the frontier reaches the epoch; bars are
//! routed by table and hour to one worker, which republishes the hour's file whole
//! (`crate::lake::republish`) in a Hive lake, or writes the rows of each publish to a new file
//! in an Iceberg lake (whose snapshots make appends atomic). The report of a file leaves at time `epoch - 1`, and the sink
//! holds its capability there until the upload has finished, so the committer's frontier
//! passing `T` means every file of every epoch up to `T` is stored and reported.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use dataflows::epoch::{Epochs, Output};
use dataflows::{Bar, Gap, Quarantined, Reason, Time, Trade};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use tokio::runtime::Handle;

use crate::lake::encode::{BarColumns, GapColumns, QuarantineColumns, TradeColumns};
use crate::lake::republish::HourFiles;
use crate::lake::writer::{FileNamer, FileSink, Staged, TableFiles, WriteStats, WriterConfig};
use crate::lake::{Lake, LakeError, Table, TableFormat, hour_of};
use crate::metrics::JobMetrics;

/// Settings of the sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Commit points and each table's publish interval.
    pub epochs: Epochs,
    /// Bar widths, ms, in the order of the pipeline's width indices (each names a table).
    pub bar_widths: Vec<u64>,
    /// Event time after an hour's end during which bar rows of the hour can still come
    /// (widest width + revision horizon + lateness + window): how long its file stays open.
    pub open_after_ms: u64,
    /// File sizing.
    pub writer: WriterConfig,
}

/// How a bar table's rows reach the lake.
enum BarFiles {
    /// Hive: the hour's file republished whole at each publish (a reader sees one version).
    Republished(HourFiles),
    /// Iceberg: each publish appends a file of the rows it adds (snapshots make the append
    /// atomic; a table's files are compacted by the engines, not rewritten here).
    Appended(TableFiles<BarColumns>),
}

impl BarFiles {
    fn push(&mut self, time: Time, bar: Bar, epochs: &Epochs, files: &mut FileSink) -> Result<(), LakeError> {
        match self {
            BarFiles::Republished(hours) => hours.push(time, bar, files),
            BarFiles::Appended(table) => {
                table.push(epochs.epoch(Output::Bars, time), hour_of(bar.window_start), &bar, files)
            }
        }
    }

    fn publish(&mut self, epoch: Time, epochs: &Epochs, files: &mut FileSink) -> Result<(), LakeError> {
        match self {
            BarFiles::Republished(hours) => hours.publish(epoch, epochs, files),
            BarFiles::Appended(table) => table.close_through(epoch, files),
        }
    }
}

/// One worker's open files for all tables.
pub struct LakeWriter {
    trades: TableFiles<TradeColumns>,
    /// One table per bar width, by width index.
    bars: Vec<BarFiles>,
    epochs: Epochs,
    quarantine: TableFiles<QuarantineColumns>,
    gaps: TableFiles<GapColumns>,
    files: FileSink,
    metrics: JobMetrics,
    /// Bar table names, by width index (for their metric labels).
    bar_tables: Vec<String>,
}

impl LakeWriter {
    /// A writer for `worker` of run `run` into `lake`, uploading through `runtime`.
    pub fn new(
        lake: Lake,
        worker: usize,
        run: &str,
        runtime: Handle,
        cfg: &SinkConfig,
        metrics: JobMetrics,
    ) -> Result<Self, LakeError> {
        let bars = cfg
            .bar_widths
            .iter()
            .map(|w| match cfg.writer.format {
                TableFormat::Hive => Ok(BarFiles::Republished(HourFiles::new(Table::Bars(*w), cfg.open_after_ms))),
                TableFormat::Iceberg => TableFiles::new(Table::Bars(*w), cfg.writer.clone()).map(BarFiles::Appended),
            })
            .collect::<Result<_, _>>()?;
        Ok(LakeWriter {
            metrics,
            bar_tables: cfg.bar_widths.iter().map(|w| Table::Bars(*w).name()).collect(),
            trades: TableFiles::new(Table::Trades, cfg.writer.clone())?,
            bars,
            epochs: cfg.epochs,
            quarantine: TableFiles::new(Table::Quarantine, cfg.writer.clone())?,
            gaps: TableFiles::new(Table::Gaps, cfg.writer.clone())?,
            files: FileSink::new(FileNamer::new(lake, worker, run), runtime, &cfg.writer),
        })
    }

    fn close_through(&mut self, epoch: Time) -> Result<(), LakeError> {
        self.trades.close_through(epoch, &mut self.files)?;
        for bars in &mut self.bars {
            bars.publish(epoch, &self.epochs, &mut self.files)?;
        }
        self.quarantine.close_through(epoch, &mut self.files)?;
        self.gaps.close_through(epoch, &mut self.files)?;
        self.files.reap()
    }

    /// Waits for the uploads still in flight and reports what was written.
    pub fn finish(&mut self) -> Result<WriteStats, LakeError> {
        self.files.finish()?;
        Ok(self.files.stats.clone())
    }
}

/// The worker key of a bar row: its table and hour, mixed so consecutive hours spread.
fn bar_route(width: u8, bar: &Bar) -> u64 {
    let hour = hour_of(bar.window_start) as u64;
    (hour.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) ^ u64::from(width)
}

/// Where the sink reports a failure; the driver stops the worker when it is set.
pub type SinkError = Rc<RefCell<Option<LakeError>>>;

/// The pipeline's streams the sink writes.
pub struct SinkInputs<'scope> {
    /// Valid trades.
    pub trades: StreamVec<'scope, Time, Trade>,
    /// Rejected records.
    pub quarantine: StreamVec<'scope, Time, Quarantined>,
    /// Gap records.
    pub gaps: StreamVec<'scope, Time, Gap>,
    /// Bar rows, tagged with their width index.
    pub bars: StreamVec<'scope, Time, (u8, Bar)>,
}

/// Attaches the lake sink to a pipeline's outputs. Bar rows before `committed` (a restart's
/// commit point) are already in the lake and are dropped. Returns the failure slot and the
/// stream of staged files.
pub fn lake_sink<'scope>(
    inputs: SinkInputs<'scope>,
    writer: Rc<RefCell<LakeWriter>>,
    cfg: &SinkConfig,
    committed: Time,
) -> (SinkError, StreamVec<'scope, Time, Staged>) {
    let SinkInputs { trades, quarantine, gaps, bars } = inputs;
    let scope = trades.scope();
    let mut builder = OperatorBuilder::new("LakeSink".to_owned(), scope);
    let info = builder.operator_info();
    let mut trades_in = builder.new_input(trades, Pipeline);
    let mut quarantine_in = builder.new_input(quarantine, Pipeline);
    let mut gaps_in = builder.new_input(gaps, Pipeline);
    // One worker per bar table and hour writes that hour's file.
    let mut bars_in = builder.new_input(bars, Exchange::new(|(width, bar): &(u8, Bar)| bar_route(*width, bar)));
    let (staged_out, staged) = builder.new_output();
    let mut staged_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Staged>>> = OutputBuilder::from(staged_out);
    let error: SinkError = Rc::new(RefCell::new(None));
    let error_out = Rc::clone(&error);
    let epochs = cfg.epochs;
    // Bar rows the restart's commit published are in the lake already.
    let bars_published = epochs.published_below(Output::Bars, committed);
    let activator = scope.worker().sync_activator_for(info.address.to_vec());
    writer.borrow_mut().files.set_waker(Arc::new(move || {
        let _ = activator.activate();
    }));

    builder.build(move |caps| {
        let mut cap = caps.into_iter().next();
        move |frontiers| {
            let mut guard = writer.borrow_mut();
            let w = &mut *guard;
            let mut result: Result<(), LakeError> = Ok(());
            trades_in.for_each_stamp(|stamp, data| {
                let epoch = epochs.epoch(Output::Trades, stamp.least().copied().unwrap_or(0));
                let (mut rows, mut late) = (0, 0);
                for t in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() {
                        rows += 1;
                        late += u64::from(t.late);
                        result = w.trades.push(epoch, hour_of(t.ts), &t, &mut w.files);
                    }
                }
                w.metrics.trades.inc_by(rows);
                w.metrics.late.inc_by(late);
            });
            // Labelled counters are looked up once per activation, not once per row.
            let mut reasons = [0u64; Reason::ALL.len()];
            quarantine_in.for_each_stamp(|stamp, data| {
                let epoch = epochs.epoch(Output::Quarantine, stamp.least().copied().unwrap_or(0));
                for q in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() {
                        // Partitioned by Kafka timestamp; by the record's event-time stamp
                        // when the broker gave none.
                        let at = q.kafka_ts.unwrap_or(q.time as i64);
                        reasons[q.reason as usize] += 1;
                        result = w.quarantine.push(epoch, hour_of(at), &q, &mut w.files);
                    }
                }
            });
            for (reason, n) in Reason::ALL.iter().zip(reasons).filter(|(_, n)| *n > 0) {
                w.metrics.quarantine(reason.as_str(), n);
            }
            gaps_in.for_each_stamp(|stamp, data| {
                let epoch = epochs.epoch(Output::Gaps, stamp.least().copied().unwrap_or(0));
                let (mut rows, mut beyond) = (0, 0);
                for g in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() {
                        rows += 1;
                        beyond += u64::from(g.beyond_horizon);
                        result = w.gaps.push(epoch, hour_of(g.body.from), &g, &mut w.files);
                    }
                }
                w.metrics.gaps(rows, beyond);
            });
            let mut bar_rows = vec![0u64; w.bars.len()];
            let mut revisions = 0;
            bars_in.for_each_stamp(|stamp, data| {
                let time = stamp.least().copied().unwrap_or(0);
                for (width, b) in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() && time >= bars_published {
                        revisions += u64::from(b.revision > 0);
                        result = match w.bars.get_mut(width as usize) {
                            Some(table) => {
                                bar_rows[width as usize] += 1;
                                table.push(time, b, &epochs, &mut w.files)
                            }
                            None => Err(LakeError::Task(format!("bar width index {width} has no table"))),
                        };
                    }
                }
            });

            for (table, n) in w.bar_tables.iter().zip(bar_rows).filter(|(_, n)| *n > 0) {
                w.metrics.bar_rows(table, n);
            }
            w.metrics.revisions.inc_by(revisions);

            // Epochs at or below the frontier are complete: close their files.
            let frontier = frontiers.iter().filter_map(|f| f.frontier().first().copied()).min();
            if let Some(f) = frontier {
                w.metrics.frontier(f);
            }
            if result.is_ok() {
                result = w.close_through(frontier.unwrap_or(Time::MAX));
            }
            if let Err(e) = result {
                error_out.borrow_mut().get_or_insert(e);
                return; // keep the capability: nothing after a failure may look committed
            }
            if let Some(c) = cap.as_mut() {
                let mut session = staged_out.activate();
                for file in w.files.take_staged() {
                    let table = file.path.split('/').next().unwrap_or_default();
                    w.metrics.file(table, file.bytes);
                    session.session(&c.delayed(&(file.epoch - 1))).give(file);
                }
            }
            // Hold reports back at the frontier and at every epoch still uploading.
            let hold = match (frontier, w.files.pending_epoch()) {
                (Some(f), Some(e)) => Some(f.min(e - 1)),
                (Some(f), None) => Some(f),
                (None, Some(e)) => Some(e - 1),
                (None, None) => None,
            };
            match hold {
                Some(t) => {
                    if let Some(c) = cap.as_mut() {
                        c.downgrade(&t.max(*c.time()));
                    }
                }
                None => cap = None,
            }
        }
    });
    (error, staged)
}
