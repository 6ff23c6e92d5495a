//! Watermark alignment: a partition whose event time runs far ahead of its source's frontier
//! is paused, so the partitions behind it are fetched instead, and resumed once the frontier
//! has caught up with it (as Flink's watermark alignment does for splits).
//!
//! Without it, a source reading many partitions buffers whatever the broker hands it: a
//! partition whose batches span an hour of event time fills the pipeline with output for
//! windows that cannot close while another partition is still minutes behind. The partition
//! holding the frontier is never paused (its frontier is the source's), so the source always
//! has something to read while any of its partitions has records.

use crate::Time;

/// The pause rule, with hysteresis: paused beyond `max_drift` ahead of the frontier, resumed
/// within half of it, so each resumed partition reads a good stretch before pausing again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alignment {
    /// How far ahead (event-time ms) a partition may run before it is paused.
    pub max_drift: Time,
}

/// What to do with one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop fetching it.
    Pause,
    /// Fetch it again.
    Resume,
}

impl Alignment {
    /// Whether a partition at `frontier`, currently `paused` or not, changes state now that
    /// the source's frontier is `low`.
    pub fn decide(&self, low: Time, frontier: Time, paused: bool) -> Option<Action> {
        let lead = frontier.saturating_sub(low);
        if !paused && lead > self.max_drift {
            Some(Action::Pause)
        } else if paused && lead <= self.max_drift / 2 {
            Some(Action::Resume)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Time = 60_000;

    #[test]
    fn pauses_beyond_the_drift_and_resumes_within_half_of_it() {
        let align = Alignment { max_drift: 10 * M };
        assert_eq!(align.decide(100 * M, 110 * M, false), None, "at the bound it keeps reading");
        assert_eq!(align.decide(100 * M, 111 * M, false), Some(Action::Pause));
        assert_eq!(align.decide(100 * M, 111 * M, true), None, "stays paused while far ahead");
        assert_eq!(align.decide(100 * M, 106 * M, true), None, "hysteresis: not yet");
        assert_eq!(align.decide(101 * M, 106 * M, true), Some(Action::Resume));
    }

    #[test]
    fn the_partition_at_the_frontier_is_never_paused() {
        let align = Alignment { max_drift: 0 };
        for low in [0, M, 1_000 * M] {
            assert_eq!(align.decide(low, low, false), None);
            assert_eq!(align.decide(low, low, true), Some(Action::Resume));
            assert_eq!(align.decide(low, low.saturating_sub(M), true), Some(Action::Resume), "behind");
        }
    }
}
