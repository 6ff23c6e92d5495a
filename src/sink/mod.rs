//! The lake sink: the dataflow's trades, quarantine and bars into Parquet files, closed at
//! event-time commit points as the frontier (the watermark) passes them.

use std::cell::RefCell;
use std::rc::Rc;

use dataflows::{Bar, Quarantined, Time, Trade};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use tokio::runtime::Handle;

use crate::lake::encode::{BarColumns, QuarantineColumns, TradeColumns};
use crate::lake::writer::{FileNamer, FileSink, TableFiles, WriteStats, WriterConfig};
use crate::lake::{Lake, LakeError, Table, hour_of};

/// Settings of the sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Event-time interval between commit points, ms: open files are closed whenever the
    /// frontier passes a multiple of it.
    pub commit_interval_ms: u64,
    /// Bar widths, ms, in the order of the pipeline's width indices (each names a table).
    pub bar_widths: Vec<u64>,
    /// File sizing.
    pub writer: WriterConfig,
}

/// One worker's open files for all tables.
pub struct LakeWriter {
    trades: TableFiles<TradeColumns>,
    /// One table per bar width, by width index.
    bars: Vec<TableFiles<BarColumns>>,
    quarantine: TableFiles<QuarantineColumns>,
    files: FileSink,
}

impl LakeWriter {
    /// A writer for `worker` into `lake`, uploading through `runtime`.
    pub fn new(lake: Lake, worker: usize, runtime: Handle, cfg: &SinkConfig) -> Self {
        LakeWriter {
            trades: TableFiles::new(Table::Trades, cfg.writer.clone()),
            bars: cfg.bar_widths.iter().map(|w| TableFiles::new(Table::Bars(*w), cfg.writer.clone())).collect(),
            quarantine: TableFiles::new(Table::Quarantine, cfg.writer.clone()),
            files: FileSink::new(FileNamer::new(lake, worker), runtime, &cfg.writer),
        }
    }

    fn close_all(&mut self, commit: u64) -> Result<(), LakeError> {
        self.files.commit = commit;
        self.trades.close_all(&mut self.files)?;
        for bars in &mut self.bars {
            bars.close_all(&mut self.files)?;
        }
        self.quarantine.close_all(&mut self.files)?;
        self.files.reap()
    }

    /// Waits for the uploads still in flight and reports what was written.
    pub fn finish(&mut self) -> Result<WriteStats, LakeError> {
        self.files.finish()?;
        Ok(self.files.stats.clone())
    }
}

/// Where the sink reports a failure; the driver stops the worker when it is set.
pub type SinkError = Rc<RefCell<Option<LakeError>>>;

/// Attaches the lake sink to a pipeline's outputs.
pub fn lake_sink<'scope>(
    trades: StreamVec<'scope, Time, Trade>,
    quarantine: StreamVec<'scope, Time, Quarantined>,
    bars: StreamVec<'scope, Time, (u8, Bar)>,
    writer: Rc<RefCell<LakeWriter>>,
    cfg: &SinkConfig,
) -> SinkError {
    let mut builder = OperatorBuilder::new("LakeSink".to_owned(), trades.scope());
    let mut trades_in = builder.new_input(trades, Pipeline);
    let mut quarantine_in = builder.new_input(quarantine, Pipeline);
    let mut bars_in = builder.new_input(bars, Pipeline);
    let error: SinkError = Rc::new(RefCell::new(None));
    let error_out = Rc::clone(&error);
    let interval = cfg.commit_interval_ms.max(1);

    builder.build(move |_caps| {
        let mut last_commit: Time = 0;
        let mut max_time: Time = 0;
        let mut closed = false;
        move |frontiers| {
            let mut guard = writer.borrow_mut();
            let w = &mut *guard;
            let mut result: Result<(), LakeError> = Ok(());
            trades_in.for_each_stamp(|cap, data| {
                max_time = max_time.max(cap.least().copied().unwrap_or(0));
                for t in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() {
                        result = w.trades.push(hour_of(t.ts), &t, &mut w.files);
                    }
                }
            });
            quarantine_in.for_each_stamp(|cap, data| {
                max_time = max_time.max(cap.least().copied().unwrap_or(0));
                for q in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() {
                        // Partitioned by Kafka timestamp; by the record's event-time stamp
                        // when the broker gave none.
                        let at = q.kafka_ts.unwrap_or(q.time as i64);
                        result = w.quarantine.push(hour_of(at), &q, &mut w.files);
                    }
                }
            });
            bars_in.for_each_stamp(|cap, data| {
                max_time = max_time.max(cap.least().copied().unwrap_or(0));
                for b in data.flat_map(|b| b.drain(..)) {
                    if result.is_ok() {
                        let (width, b) = b;
                        result = match w.bars.get_mut(width as usize) {
                            Some(table) => table.push(hour_of(b.window_start), &b, &mut w.files),
                            None => Err(LakeError::Task(format!("bar width index {width} has no table"))),
                        };
                    }
                }
            });

            let frontier = frontiers.iter().filter_map(|f| f.frontier().first().copied()).min();
            if result.is_ok() {
                result = match frontier {
                    Some(f) => {
                        let point = f - f % interval;
                        if point > last_commit {
                            last_commit = point;
                            w.close_all(point)
                        } else {
                            w.files.reap()
                        }
                    }
                    None if !closed => {
                        closed = true;
                        // End of input: everything is complete; name the files after the
                        // commit point just past the last record.
                        w.close_all((max_time / interval + 1) * interval)
                    }
                    None => Ok(()),
                };
            }
            if let Err(e) = result {
                error_out.borrow_mut().get_or_insert(e);
            }
        }
    });
    error
}
