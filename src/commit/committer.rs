//! The committer: gathers every source's crossings and every sink's staged files on worker 0
//! and queues a commit for the greatest commit point its frontier has passed.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use dataflows::Time;
use dataflows::epoch::Epochs;
use dataflows::resume::{Crossing, PartitionMark, Position};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::{CommitQueue, CommitRecord};
use crate::lake::writer::Staged;

/// What the committer needs to know.
#[derive(Clone, Debug)]
pub struct CommitterConfig {
    /// Commit points and publish intervals.
    pub epochs: Epochs,
    /// Partitions of the topic at start: a commit needs the position of each, and of every
    /// partition added since whose first records lie below the commit point.
    pub partitions: i32,
    /// The recovered commit point; only later points are committed.
    pub after: Time,
    /// Topic and settings written into each record.
    pub template: CommitRecord,
}

/// The committer: gathers every source's crossings and every sink's staged files on worker 0
/// and commits the greatest commit point its frontier has passed. At the end of the input it
/// commits everything when every source reached the end of its log (`--drain`), and otherwise
/// (a graceful stop) the greatest point all sources had passed.
pub fn committer<'scope>(
    crossings: StreamVec<'scope, Time, Crossing>,
    staged: StreamVec<'scope, Time, Staged>,
    cfg: CommitterConfig,
    queue: Option<Rc<CommitQueue>>,
) {
    let to_zero = |_: &Crossing| 0u64;
    let files_to_zero = |_: &Staged| 0u64;
    crossings.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        staged,
        Exchange::new(to_zero),
        Exchange::new(files_to_zero),
        "Committer",
        move |cap, _info| {
            drop(cap); // no output: the committer must not hold the dataflow open
            let mut marks = Marks::new(cfg.partitions);
            let mut files: BTreeMap<Time, Vec<Staged>> = BTreeMap::new();
            let mut last = cfg.after;
            let mut ended = false;
            move |(crossings_in, crossings_frontier), (staged_in, staged_frontier), _output| {
                crossings_in.for_each(|_, data| data.drain(..).for_each(|c| marks.add(c)));
                staged_in.for_each(|_, data| {
                    for f in data.drain(..) {
                        files.entry(f.epoch).or_default().push(f);
                    }
                });
                let Some(queue) = &queue else { return };
                let frontier = [crossings_frontier.frontier(), staged_frontier.frontier()]
                    .iter()
                    .filter_map(|f| f.first().copied())
                    .min();
                let point = match frontier {
                    Some(f) => cfg.epochs.point(f),
                    None if ended => return,
                    None => {
                        ended = true;
                        match marks.end(&cfg.epochs) {
                            Some(point) => point,
                            None => return,
                        }
                    }
                };
                if point <= last {
                    return;
                }
                let Some(positions) = marks.positions(point) else {
                    return; // a source has not reported this point (it started past it)
                };
                let later = match point.checked_add(1) {
                    Some(next) => files.split_off(&next),
                    None => BTreeMap::new(),
                };
                let staged = std::mem::replace(&mut files, later).into_values().flatten();
                let (committed, superseded) = newest_versions(staged);
                marks.forget_through(point);
                last = point;
                queue.send(cfg.template.for_commit(point, positions, committed), superseded);
            }
        },
    );
}

/// Splits a commit's files into those it moves and the older versions of files republished
/// whole more than once since the last commit (only the newest version of a path is moved:
/// moving two versions of one path could leave the older one in place).
fn newest_versions(files: impl Iterator<Item = Staged>) -> (Vec<Staged>, Vec<Staged>) {
    let (mut moved, mut superseded) = (Vec::new(), Vec::new());
    let mut newest: BTreeMap<String, Staged> = BTreeMap::new();
    for file in files {
        if !file.replace {
            moved.push(file);
            continue;
        }
        match newest.get(&file.path) {
            // Files arrive epoch by epoch; of two in one epoch the later was written later.
            Some(kept) if kept.epoch > file.epoch => superseded.push(file),
            _ => {
                if let Some(older) = newest.insert(file.path.clone(), file) {
                    superseded.push(older);
                }
            }
        }
    }
    moved.extend(newest.into_values());
    (moved, superseded)
}

/// Every partition's marks as the sources' frontiers moved, until a commit no longer needs
/// them.
struct Marks {
    /// Partitions of the topic at start: a commit needs the position of each.
    initial: i32,
    /// Per partition, `(from, to, mark)` of each crossing not yet committed past.
    marks: HashMap<i32, Vec<(Time, Option<Time>, PartitionMark)>>,
    /// Where each partition's first crossing started. A partition added while the job runs
    /// has nothing below it (its records are placed at or above the frontier it was found
    /// at), so a commit point at or below it does not need its position.
    first: HashMap<i32, Time>,
}

impl Marks {
    fn new(initial: i32) -> Self {
        Marks { initial, marks: HashMap::new(), first: HashMap::new() }
    }

    fn add(&mut self, crossing: Crossing) {
        for m in crossing.partitions {
            self.first.entry(m.partition).or_insert(crossing.from);
            self.marks.entry(m.partition).or_default().push((crossing.from, crossing.to, m));
        }
    }

    /// Every partition's position at `point`, if every partition that needs one has one.
    fn positions(&self, point: Time) -> Option<BTreeMap<i32, Position>> {
        let positions: BTreeMap<i32, Position> = self
            .marks
            .iter()
            .filter_map(|(p, ms)| {
                let (_, _, mark) = ms.iter().find(|(from, to, _)| dataflows::resume::covers(*from, *to, point))?;
                Some((*p, mark.position(point)))
            })
            .collect();
        let needed = |p: &i32| *p < self.initial || self.first.get(p).is_some_and(|from| *from < point);
        let known = (0..self.initial).chain(self.first.keys().copied());
        known.filter(needed).all(|p| positions.contains_key(&p)).then_some(positions)
    }

    /// The point to commit when the sources have stopped: everything (`Time::MAX`) when
    /// every partition reached the end of its log, else the greatest point all had passed.
    fn end(&self, epochs: &Epochs) -> Option<Time> {
        let ends: Vec<Option<Time>> = self.marks.values().map(|m| m.last().and_then(|(_, to, _)| *to)).collect();
        if ends.len() as i32 >= self.initial && ends.iter().all(Option::is_none) {
            return Some(Time::MAX);
        }
        ends.iter().map(|t| t.unwrap_or(Time::MAX)).min().map(|t| epochs.point(t))
    }

    /// Forgets the marks no commit after `point` can need.
    fn forget_through(&mut self, point: Time) {
        for ms in self.marks.values_mut() {
            ms.retain(|(_, to, _)| to.is_none_or(|to| to > point));
        }
    }
}

#[cfg(test)]
mod tests {
    use dataflows::PartitionClock;

    use super::*;

    fn mark(partition: i32, next: i64) -> PartitionMark {
        PartitionMark { partition, next, clock: PartitionClock::new(), alive: vec![], raises: vec![] }
    }

    fn crossing(from: Time, to: Option<Time>, partitions: &[(i32, i64)]) -> Crossing {
        Crossing { from, to, partitions: partitions.iter().map(|&(p, n)| mark(p, n)).collect() }
    }

    #[test]
    fn a_commit_needs_every_partition_known_at_start() {
        let mut marks = Marks::new(2);
        marks.add(crossing(0, Some(120), &[(0, 5)]));
        assert!(marks.positions(60).is_none(), "partition 1 has not reported 60");
        marks.add(crossing(0, Some(60), &[(1, 7)]));
        let positions = marks.positions(60).expect("both reported");
        assert_eq!((positions[&0].resume, positions[&1].resume), (5, 7));
    }

    #[test]
    fn a_partition_added_later_is_needed_only_past_where_it_was_found() {
        let mut marks = Marks::new(1);
        marks.add(crossing(0, Some(60), &[(0, 5)]));
        marks.add(crossing(60, Some(180), &[(0, 9)]));
        // Partition 1 was found at 120 (its first crossing starts there).
        marks.add(crossing(120, Some(240), &[(1, 3)]));
        let at_120 = marks.positions(120).expect("partition 1 holds nothing below 120");
        assert!(!at_120.contains_key(&1));
        assert!(marks.positions(240).is_none(), "partition 0 has not reported 240");
        marks.add(crossing(180, Some(300), &[(0, 12)]));
        assert_eq!(marks.positions(240).expect("both").get(&1).map(|p| p.resume), Some(3));
    }

    #[test]
    fn the_end_commits_everything_only_when_every_log_ended() {
        let mut marks = Marks::new(2);
        marks.add(crossing(0, None, &[(0, 5)]));
        marks.add(crossing(0, Some(150), &[(1, 7)]));
        let epochs = Epochs::every_commit(60);
        assert_eq!(marks.end(&epochs), Some(120), "a graceful stop commits what all passed");
        marks.add(crossing(150, None, &[(1, 8)]));
        assert_eq!(marks.end(&epochs), Some(Time::MAX));
        marks.forget_through(120);
        assert_eq!(marks.marks[&1].len(), 2, "the crossing ending at 150 still covers later points");
        marks.forget_through(150);
        assert_eq!(marks.marks[&1].len(), 1);
    }
}
