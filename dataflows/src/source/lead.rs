//! The source's lead: records it sent at times the end of the pipeline has not finished.
//!
//! Timely has no backpressure of its own: without a bound, a worker that reads faster than its
//! peers process their share fills the exchange channels without limit. Only records below
//! the source's own frontier count: the pipeline cannot finish the source's current time (or
//! any later one) before the source moves on, so a wait that counted those would wait on the
//! source itself. Records below the frontier need nothing more from it, and every wait here
//! ends once the rest of the dataflow (here and at peers) has done work already possible.
//!
//! Records are counted by the time they were sent at and retired by time, whatever order
//! they were sent in. (Counting each activation under its newest time and retiring them in
//! sending order wedged the job: one activation that read a cold partition's hour-long batch
//! stood at the head of the queue, at a time only the source's own progress could finish,
//! and every later, finished batch behind it kept counting as unfinished.)

use std::collections::BTreeMap;

use crate::Time;

/// Records sent, by timely time.
#[derive(Debug, Default)]
pub struct Lead {
    sent: BTreeMap<Time, usize>,
}

impl Lead {
    /// Notes `records` sent at `time`.
    pub fn sent(&mut self, time: Time, records: usize) {
        *self.sent.entry(time).or_default() += records;
    }

    /// Forgets every time the pipeline has finished: those below `frontier`, the frontier at
    /// its end (`None`: it has finished everything).
    pub fn settle(&mut self, frontier: Option<Time>) {
        match frontier {
            Some(f) => self.sent = self.sent.split_off(&f),
            None => self.sent.clear(),
        }
    }

    /// Records sent below `floor` that the pipeline has not finished.
    pub fn behind(&self, floor: Time) -> usize {
        self.sent.range(..floor).map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unfinished_records_below_the_frontier_count() {
        let mut lead = Lead::default();
        lead.sent(10, 5);
        lead.sent(10, 5);
        lead.sent(20, 7);
        lead.sent(30, 1);
        assert_eq!(lead.behind(25), 17);
        assert_eq!(lead.behind(10), 0, "records at the frontier wait on the source itself");
        lead.settle(Some(15));
        assert_eq!(lead.behind(25), 7);
        lead.settle(None);
        assert_eq!(lead.behind(Time::MAX), 0);
    }

    #[test]
    fn a_batch_far_ahead_does_not_keep_finished_ones_counted() {
        let mut lead = Lead::default();
        lead.sent(1_000, 64); // a cold partition's batch, far ahead of the frontier
        for t in 1..=10 {
            lead.sent(t, 64); // the hot partitions, behind it
        }
        lead.settle(Some(11)); // the pipeline finished everything below 11
        assert_eq!(lead.behind(500), 0, "finished records no longer count");
        assert_eq!(lead.behind(Time::MAX), 64);
    }
}
