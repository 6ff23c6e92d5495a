//! Where a source's frontier goes next: a pure function of its partitions' frontiers, which
//! of them are still speaking, and what the other sources of the cluster report.
//!
//! The frontier is the least frontier of the partitions still speaking: a partition silent
//! for the idle timeout, or read to the end of a drain, holds nothing back. When none is
//! speaking the source has nothing to wait for: it moves to its own most advanced partition,
//! or further to where the speaking sources of the cluster stand, so one silent worker never
//! holds every window open. It never moves back.

use crate::Time;

/// What the rule needs to know of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionView {
    /// The least time the partition can still produce.
    pub frontier: Time,
    /// Whether it still holds the frontier: neither idle nor ended.
    pub speaking: bool,
    /// Whether it has seen a valid trade (its frontier says something about event time).
    pub has_watermark: bool,
}

/// The outcome of [`next_frontier`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    /// The source's new frontier.
    pub low: Time,
    /// What the source tells the cluster about event time: where it stands when one of its
    /// partitions is speaking, else its most advanced partition that has seen trades, else
    /// nothing.
    pub known: Option<Time>,
    /// Whether one of its partitions is speaking.
    pub speaking: bool,
}

/// The next frontier of a source now at `floor`, given its partitions and `others`, the
/// least event time known to the rest of the cluster (`None`: nobody knows any).
pub fn next_frontier(floor: Time, partitions: impl IntoIterator<Item = PartitionView>, others: Option<Time>) -> Next {
    let (mut speaking, mut own, mut seen) = (None::<Time>, None::<Time>, None::<Time>);
    for p in partitions {
        if p.speaking {
            speaking = Some(speaking.map_or(p.frontier, |s| s.min(p.frontier)));
        }
        own = Some(own.map_or(p.frontier, |o| o.max(p.frontier)));
        if p.has_watermark {
            seen = Some(seen.map_or(p.frontier, |s| s.max(p.frontier)));
        }
    }
    match speaking {
        Some(low) => {
            let low = low.max(floor);
            Next { low, known: Some(low), speaking: true }
        }
        None => {
            let own = own.unwrap_or(floor);
            let low = others.map_or(own, |o| o.max(own)).max(floor);
            Next { low, known: seen, speaking: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(frontier: Time, speaking: bool) -> PartitionView {
        PartitionView { frontier, speaking, has_watermark: true }
    }

    #[test]
    fn the_least_speaking_partition_holds_the_frontier() {
        let next = next_frontier(10, [view(30, true), view(20, true), view(5, false)], Some(100));
        assert_eq!(next, Next { low: 20, known: Some(20), speaking: true });
    }

    #[test]
    fn the_frontier_never_moves_back() {
        let next = next_frontier(50, [view(30, true)], None);
        assert_eq!(next.low, 50);
    }

    #[test]
    fn a_silent_source_follows_its_most_advanced_partition_or_the_cluster() {
        let silent = [view(30, false), view(40, false)];
        assert_eq!(next_frontier(10, silent, None), Next { low: 40, known: Some(40), speaking: false });
        assert_eq!(next_frontier(10, silent, Some(90)).low, 90, "the cluster is further on");
        assert_eq!(next_frontier(10, silent, Some(35)).low, 40, "its own partitions are further on");
    }

    #[test]
    fn a_source_that_never_saw_a_trade_tells_the_cluster_nothing() {
        let fresh = PartitionView { frontier: 0, speaking: false, has_watermark: false };
        assert_eq!(next_frontier(0, [fresh], Some(70)), Next { low: 70, known: None, speaking: false });
        assert_eq!(next_frontier(0, [], None), Next { low: 0, known: None, speaking: false });
    }
}
