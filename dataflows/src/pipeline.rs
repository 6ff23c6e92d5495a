//! The whole computation as one function: a record source in; trades, quarantine, gaps and
//! bars out.

use timely::dataflow::operators::Probe;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, StreamVec};

use crate::Time;
use crate::bars::{Bar, BarsConfig, bars};
use crate::gap::Gap;
use crate::resume::Crossing;
use crate::source::{ErrorSlot, RecordSource, SourceConfig, log_source};
use crate::trade::{Quarantined, Trade};

/// The streams a pipeline produces; the lake sink (or a test) consumes them.
pub struct Outputs<'scope, E> {
    /// Every valid trade, on time or late, at the worker that read it.
    pub trades: StreamVec<'scope, Time, Trade>,
    /// Every rejected record.
    pub quarantine: StreamVec<'scope, Time, Quarantined>,
    /// Every gap record, at the worker that read it.
    pub gaps: StreamVec<'scope, Time, Gap>,
    /// Bar rows (every revision) tagged with the index of their width in `BarsConfig::widths`.
    pub bars: StreamVec<'scope, Time, (u8, Bar)>,
    /// Each worker's source positions as its frontier moves (for commit records).
    pub crossings: StreamVec<'scope, Time, Crossing>,
    /// Source failure, if any.
    pub error: ErrorSlot<E>,
}

/// Builds source → clean → bars (flagged by gaps) in `scope`.
pub fn build_pipeline<'scope, S: RecordSource>(
    scope: Scope<'scope, Time>,
    source: S,
    cfg: SourceConfig,
    bars_cfg: BarsConfig,
) -> Outputs<'scope, S::Error> {
    let downstream = ProbeHandle::new();
    let streams = log_source(scope, source, cfg, &bars_cfg, downstream.clone());
    let bars = bars(streams.ticks, streams.gap_ticks, bars_cfg).probe_with(&downstream);
    Outputs {
        trades: streams.trades,
        quarantine: streams.quarantine,
        gaps: streams.gaps,
        bars,
        crossings: streams.crossings,
        error: streams.error,
    }
}
