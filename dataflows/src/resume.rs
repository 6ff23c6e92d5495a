//! Where a restart resumes: the positions sources report as their frontier crosses commit
//! points, the per-partition replay plan derived from them, and the bookkeeping that makes a
//! replay place every record at the timely time it had before.
//!
//! The commit protocol (docs/architecture.md#commit-protocol) needs, per partition and commit point `T`: `resume`, the first
//! offset read after the source's frontier passed `T` (records before it with time `< T` are
//! committed); `replay`, the first offset of a trade whose bars can still change at `T`
//! (window end + horizon `> T`), never after `resume`; and the partition's clock at `replay`.
//! Record times also depend on floor raises (an idle partition overtaken by the frontier), so
//! raises at or after `replay` travel with the position and are applied again on replay.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::Time;
use crate::bars::BarsConfig;
use crate::time::PartitionClock;

/// A floor raise: from `offset` on, the partition's records are at time `floor` or later.
pub type Raise = (i64, Time);

/// A source's report that its frontier moved from `from` to `to` (`None`: the log ended), with
/// the state of each of its partitions at that moment. It covers the commit points in
/// `(from, to]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crossing {
    /// The frontier before the move.
    pub from: Time,
    /// The frontier after the move; `None` when every partition reached its end.
    pub to: Option<Time>,
    /// The source's partitions.
    pub partitions: Vec<PartitionMark>,
}

impl Crossing {
    /// Whether commit point `t` lies in `(from, to]`.
    pub fn covers(&self, t: Time) -> bool {
        covers(self.from, self.to, t)
    }
}

/// Whether commit point `t` lies in a frontier move `(from, to]` (`to = None`: end of log).
pub fn covers(from: Time, to: Option<Time>, t: Time) -> bool {
    from < t && to.is_none_or(|to| t <= to)
}

/// One partition's state when its source's frontier moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMark {
    /// The partition.
    pub partition: i32,
    /// The next offset the source will read: `resume` for every point the move crossed.
    pub next: i64,
    /// The partition's clock before `next`.
    pub clock: PartitionClock,
    /// The first record of each expiry still ahead (the commit point until which a replay
    /// needs it: bars can change or its row is unpublished): `(expiry, offset, clock before it)`.
    pub alive: Vec<(Time, i64, PartitionClock)>,
    /// Floor raises from the earliest `alive` offset on.
    pub raises: Vec<Raise>,
}

impl PartitionMark {
    /// The replay plan for commit point `commit` (which this mark's crossing covers).
    pub fn position(&self, commit: Time) -> Position {
        let first = self.alive.iter().filter(|(expiry, ..)| *expiry > commit).min_by_key(|(_, offset, _)| *offset);
        let (replay, clock) = match first {
            Some(&(_, offset, clock)) if offset < self.next => (offset, clock),
            _ => (self.next, self.clock),
        };
        let raises = self.raises.iter().copied().filter(|(o, _)| *o >= replay && *o < self.next).collect();
        Position { resume: self.next, replay, clock, raises }
    }
}

/// Where one partition restarts after commit point `T`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Records before this offset with time `< T` are committed.
    pub resume: i64,
    /// The offset reading restarts from.
    pub replay: i64,
    /// The partition's clock before `replay`.
    pub clock: PartitionClock,
    /// Floor raises in `[replay, resume)`, applied again on replay.
    pub raises: Vec<Raise>,
}

/// A restart from a commit: what the source replays and what it must not emit again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// The commit point `T`: every output with time `< T` is in the lake.
    pub commit: Time,
    /// Per partition; a partition absent here is new since the commit and starts at `T`.
    pub partitions: HashMap<i32, Position>,
}

/// The positions of every partition for commit point `commit`, from the crossings of all
/// sources (partitions without a crossing that covers `commit` are absent).
pub fn positions_at<'a>(crossings: impl IntoIterator<Item = &'a Crossing>, commit: Time) -> HashMap<i32, Position> {
    crossings
        .into_iter()
        .filter(|c| c.covers(commit))
        .flat_map(|c| c.partitions.iter().map(|m| (m.partition, m.position(commit))))
        .collect()
}

/// The last timely time at which a trade at `ts` can still change a bar: the end of its
/// widest window plus the revision horizon.
pub fn expiry(bars: &BarsConfig, ts: i64) -> Time {
    let end = bars.widths.iter().map(|&w| ts - ts.rem_euclid(w as i64) + w as i64).max().unwrap_or(ts);
    (end + bars.horizon_ms as i64).max(0) as Time
}

/// A partition's bookkeeping in the source: where it stands, the first trade of every bar
/// expiry still ahead, and its floor raises.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    next: i64,
    alive: BTreeMap<Time, (i64, PartitionClock)>,
    last_expiry: Option<Time>,
    raises: Vec<Raise>,
    /// While replaying after a restart: the resume offset and the raises still to apply.
    replaying: Option<(i64, VecDeque<Raise>)>,
}

impl Tracker {
    /// A partition read from `next` on; `position` when restarting from commit `commit`.
    /// Returns the tracker and the clock to start with.
    pub fn new(next: i64, restart: Option<(&Position, Time)>, clock: PartitionClock) -> (Self, PartitionClock) {
        let mut tracker = Tracker { next, ..Default::default() };
        let mut clock = clock;
        if let Some((position, commit)) = restart {
            clock = position.clock;
            tracker.replaying = Some((position.resume, position.raises.iter().copied().collect()));
            tracker.leave_replay_at(next, &mut clock, commit);
        }
        (tracker, clock)
    }

    /// Whether the partition is still replaying records read before the restart.
    pub fn replaying(&self) -> bool {
        self.replaying.is_some()
    }

    /// Whether a record with time `time` read now was committed before the restart, its
    /// table having published every row below `published_below` by then.
    #[inline]
    pub fn committed(&self, time: Time, published_below: Time) -> bool {
        self.replaying.is_some() && time < published_below
    }

    /// Before the record at `offset`: applies the floor raises due, replayed or live (the
    /// worker's frontier `cap` passed this partition's own).
    #[inline]
    pub fn before(&mut self, offset: i64, clock: &mut PartitionClock, cfg: &crate::TimeConfig, cap: Time) {
        match &mut self.replaying {
            Some((_, due)) => {
                while let Some(&(at, floor)) = due.front().filter(|(at, _)| *at <= offset) {
                    due.pop_front();
                    clock.raise_floor(floor);
                    self.raises.push((at, floor));
                }
            }
            None if clock.frontier(cfg) < cap => {
                clock.raise_floor(cap);
                self.raises.push((offset, cap));
            }
            None => {}
        }
    }

    /// Notes a record at `offset` that a replay needs until commit point `expiry` (its bars
    /// can change or its row is unpublished until then), read with clock `before`.
    #[inline]
    pub fn record(&mut self, offset: i64, expiry: Time, before: PartitionClock) {
        if self.last_expiry != Some(expiry) {
            self.last_expiry = Some(expiry);
            self.alive.entry(expiry).or_insert((offset, before));
        }
    }

    /// After the record at `offset`.
    #[inline]
    pub fn after(&mut self, offset: i64, clock: &mut PartitionClock, commit: Time) {
        self.next = offset + 1;
        if self.replaying.is_some() {
            self.leave_replay_at(self.next, clock, commit);
        }
    }

    /// Once replay reaches `resume`, everything read is new: at time `commit` or later, as
    /// it was in the run that committed.
    fn leave_replay_at(&mut self, next: i64, clock: &mut PartitionClock, commit: Time) {
        if let Some((resume, _)) = &self.replaying {
            if next >= *resume {
                let resume = *resume;
                self.replaying = None;
                clock.raise_floor(commit);
                self.raises.push((resume, commit));
            }
        }
    }

    /// The partition's mark for a frontier move to `to` (`None`: end of log); forgets what
    /// no later commit point can need.
    pub fn mark(&mut self, partition: i32, clock: PartitionClock, to: Option<Time>) -> PartitionMark {
        let mark = PartitionMark {
            partition,
            next: self.next,
            clock,
            alive: self.alive.iter().map(|(e, (o, c))| (*e, *o, *c)).collect(),
            raises: self.raises.clone(),
        };
        if let Some(to) = to {
            self.alive = self.alive.split_off(&(to + 1));
            let keep = self.alive.values().map(|(o, _)| *o).min().unwrap_or(self.next).min(self.next);
            self.raises.retain(|(o, _)| *o >= keep);
        }
        mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TimeConfig;

    const MIN: i64 = 60_000;

    /// Reads `ts` at `offset` the way the source does; returns the record's time.
    fn read(t: &mut Tracker, clock: &mut PartitionClock, offset: i64, ts: i64, cap: Time, commit: Time) -> Time {
        let cfg = TimeConfig::default();
        let bars = BarsConfig { widths: vec![60_000], horizon_ms: 60_000 };
        let before = *clock;
        t.before(offset, clock, &cfg, cap);
        let time = clock.place(&cfg, ts).time;
        t.record(offset, expiry(&bars, ts), before);
        t.after(offset, clock, commit);
        time
    }

    #[test]
    fn a_replay_applies_the_logged_raises_and_places_records_as_before() {
        // The original run: offset 3 arrives while the worker's frontier (cap) has moved to
        // 50m, past this partition's own (an idle partition overtaken), so it is raised.
        let (mut t, mut clock) = Tracker::new(0, None, PartitionClock::new());
        let cap = |o: i64| if o >= 3 { (50 * MIN) as Time } else { 0 };
        let ts = [10 * MIN, 10 * MIN + 30_000, 11 * MIN, 49 * MIN + 30_000, 51 * MIN];
        let original: Vec<Time> = (0..5).map(|o| read(&mut t, &mut clock, o, ts[o as usize], cap(o), 0)).collect();
        assert_eq!(original[3], (50 * MIN) as Time, "raised to the worker's frontier");

        // Commit at 50m30s after offset 4: the 49m window (1m horizon) is still alive.
        let commit = (50 * MIN + 30_000) as Time;
        let mark = t.mark(0, clock, Some((51 * MIN) as Time));
        let position = mark.position(commit);
        assert_eq!((position.resume, position.replay), (5, 3));
        assert_eq!(position.raises, vec![(3, (50 * MIN) as Time)]);
        // A replay from offset 3 with no live frontier to speak of gets the same times.
        let (mut r, mut replayed) = Tracker::new(3, Some((&position, commit)), PartitionClock::new());
        assert!(r.replaying());
        for o in 3..5 {
            let time = read(&mut r, &mut replayed, o, ts[o as usize], 0, commit);
            assert_eq!(time, original[o as usize], "offset {o}");
        }
        assert!(!r.replaying(), "past resume the records are new");
        // Everything read after resume is at the commit point or later.
        assert!(read(&mut r, &mut replayed, 5, 20 * MIN, 0, commit) >= commit);
    }

    #[test]
    fn committed_records_are_those_before_resume_below_the_commit_point() {
        let position = Position { resume: 3, replay: 1, clock: PartitionClock::new(), raises: vec![] };
        let (t, _) = Tracker::new(1, Some((&position, 1_000)), PartitionClock::new());
        assert!(t.committed(999, 1_000));
        assert!(!t.committed(1_000, 1_000));
        let (t, clock) = Tracker::new(3, Some((&position, 1_000)), PartitionClock::new());
        assert!(!t.committed(0, 1_000), "nothing from resume on is committed");
        assert_eq!(clock.frontier(&crate::TimeConfig::default()), 1_000);
    }
}
