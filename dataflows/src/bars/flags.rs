//! Gap flags: how much of each bar's window a gap in the symbol's feed covers, as a
//! differential collection joined with the bars.
//!
//! A gap enters the collection of the windows it overlaps (those it may still revise, by the
//! same horizon rule as a late trade) when it arrives, and leaves each at that window's
//! expiry, as the bar does; a `reduce` per window turns the intervals into covered
//! milliseconds (overlapping gaps count once), and a left join attaches that figure to every
//! bar version. Both sides leave the collection at expiry, so the arrangements compact to
//! the live windows as the frontier passes.

use differential_dataflow::AsCollection;
use differential_dataflow::collection::vec::Collection;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use super::partials::expiry;
use super::{BarAcc, BarKey, BarsConfig};
use crate::Time;
use crate::gap::{GapTick, covered_ms};

/// The windows a gap that arrived at `time` may flag: for each width, every window it
/// overlaps whose end is past `pw - horizon` at arrival (`to - horizon` when the partition
/// has no watermark yet) and whose expiry is after `time`.
pub(super) fn windows(cfg: &BarsConfig, gap: &GapTick, time: Time, mut each: impl FnMut(u8, i64)) {
    let pw = gap.watermark.unwrap_or(gap.to);
    for (i, &width) in cfg.widths.iter().enumerate() {
        let w = width as i64;
        // The first window ending after both the gap's start and the horizon's reach.
        let reach = gap.from.max(pw.saturating_sub(cfg.horizon_ms as i64));
        let mut start = reach - reach.rem_euclid(w);
        while start < gap.to {
            if start + w > reach && (time as i64) < expiry(cfg, i as u8, start) {
                each(i as u8, start);
            }
            start += w;
        }
    }
}

/// Gap ticks in; the covered milliseconds of every window a gap overlaps out, keyed like the
/// bars.
pub(super) fn gap_ms<'scope>(
    gaps: StreamVec<'scope, Time, GapTick>,
    cfg: &BarsConfig,
) -> Collection<'scope, Time, (BarKey, u64)> {
    let widths = cfg.widths.clone();
    let cfg = cfg.clone();
    let intervals = gaps.unary(Pipeline, "GapWindows", move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let Some(time) = cap.least().copied() else { return };
                for gap in data.flat_map(|batch| batch.drain(..)) {
                    windows(&cfg, &gap, time, |width, start| {
                        let data = ((width, gap.symbol.clone(), start), (gap.from, gap.to));
                        // In the collection from arrival until the window expires, like its bar.
                        let until = expiry(&cfg, width, start) as Time;
                        output.session(&cap.delayed(&time, 0)).give((data.clone(), time, 1));
                        output.session(&cap.delayed(&until, 0)).give((data, until, -1));
                    });
                }
            });
        }
    });
    intervals.as_collection().reduce(move |key: &BarKey, intervals: &[(&(i64, i64), isize)], out| {
        let start = key.2;
        let end = start.saturating_add(widths[key.0 as usize] as i64);
        let covered = covered_ms(start, end, intervals.iter().filter(|(_, n)| *n > 0).map(|(i, _)| **i));
        if covered > 0 {
            out.push((covered, 1));
        }
    })
}

/// Every bar version with the covered milliseconds of its window (0 when no gap overlaps).
///
/// A left join in one arrangement of each side: every bar enters as uncovered, and the join
/// of a bar with its window's gap figure swaps that version for the covered one. (The join
/// plus an antijoin arranged both sides twice, and cost the job 5–14% end to end with no gap
/// in the input.)
pub(super) fn flag<'scope>(
    bars: Collection<'scope, Time, (BarKey, BarAcc)>,
    gaps: Collection<'scope, Time, (BarKey, u64)>,
) -> Collection<'scope, Time, (BarKey, (BarAcc, u64))> {
    let covered = bars
        .clone()
        .join(gaps)
        .explode(|(key, (acc, ms))| [((key.clone(), (acc.clone(), 0)), -1isize), ((key, (acc, ms)), 1)]);
    bars.map(|(key, acc)| (key, (acc, 0))).concat(covered)
}
