//! The whole computation as one function: a record source in; trades, quarantine and bars out.

use timely::dataflow::operators::Probe;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, StreamVec};

use crate::Time;
use crate::bars::{Bar, BarsConfig, bars};
use crate::resume::Crossing;
use crate::source::{ErrorSlot, RecordSource, SourceConfig, log_source};
use crate::trade::{Quarantined, Trade};

/// The streams a pipeline produces; the lake sink (or a test) consumes them.
pub struct Outputs<'scope, E> {
    /// Every valid trade, on time or late, at the worker that read it.
    pub trades: StreamVec<'scope, Time, Trade>,
    /// Every rejected record.
    pub quarantine: StreamVec<'scope, Time, Quarantined>,
    /// Bar rows (every revision) tagged with the index of their width in `BarsConfig::widths`.
    pub bars: StreamVec<'scope, Time, (u8, Bar)>,
    /// Each worker's source positions as its frontier moves (for commit records).
    pub crossings: StreamVec<'scope, Time, Crossing>,
    /// Source failure, if any.
    pub error: ErrorSlot<E>,
}

/// Builds source → clean → bars in `scope`.
pub fn build_pipeline<'scope, S: RecordSource>(
    scope: Scope<'scope, Time>,
    source: S,
    cfg: SourceConfig,
    bars_cfg: BarsConfig,
) -> Outputs<'scope, S::Error> {
    let downstream = ProbeHandle::new();
    let streams = log_source(scope, source, cfg, &bars_cfg, downstream.clone());
    let bars = bars(streams.ticks, bars_cfg).probe_with(&downstream);
    Outputs {
        trades: streams.trades,
        quarantine: streams.quarantine,
        bars,
        crossings: streams.crossings,
        error: streams.error,
    }
}
