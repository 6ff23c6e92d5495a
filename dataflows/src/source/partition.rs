//! One partition inside the source: its event-time clock, its replay bookkeeping, and whether
//! it is heard from, paused or finished. [`Partition::accept`] turns one record into its
//! verdict and timely time; everything it decides depends on the partition's own log and the
//! source's frontier at the moment (logged as floor raises, so a replay decides the same).

use std::time::Instant;

use crate::Time;
use crate::bars::BarsConfig;
use crate::clean::clean_record;
use crate::epoch::{Epochs, Output};
use crate::gap::{Gap, GapTick, Kind, parse_gap};
use crate::reason::Reason;
use crate::resume::{Crossing, PartitionMark, Resume, Tracker, expiry};
use crate::source::RawRecord;
use crate::time::{PartitionClock, TimeConfig};
use crate::trade::Trade;

/// What the source knows of one partition.
#[derive(Clone, Debug)]
pub struct Partition {
    id: i32,
    clock: PartitionClock,
    tracker: Tracker,
    /// When the partition last delivered a record, or stopped being paused.
    heard: Instant,
    paused: bool,
    ended: bool,
}

/// The verdict on one record and the timely time it leaves at.
#[derive(Clone, Debug, PartialEq)]
pub enum Placed {
    /// A valid trade; `watermark` is the partition's `pw` before it (for its bar ticks).
    Trade {
        /// Timely time.
        time: Time,
        /// The trade, `late` set.
        trade: Trade,
        /// `pw` on arrival.
        watermark: Option<i64>,
        /// Already in the lake (a replay before the resume offset): rebuild bars only.
        committed: bool,
    },
    /// A gap record: a row of the `gaps` table and the interval that flags bars.
    Gap {
        /// Timely time: the partition's frontier (a gap does not move the watermark).
        time: Time,
        /// The table row.
        gap: Gap,
        /// What the bars need, with `pw` on arrival.
        tick: GapTick,
        /// Already in the lake: rebuild bar flags only.
        committed: bool,
    },
    /// A record for the quarantine table.
    Quarantine {
        /// Timely time: the partition's frontier.
        time: Time,
        /// Why.
        reason: Reason,
        /// Already in the lake.
        committed: bool,
    },
}

/// What `accept` needs besides the record: the model and the source's frontier now.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Event-time model.
    pub time: &'a TimeConfig,
    /// Bar widths and horizon (how long a trade can still change a bar).
    pub bars: &'a BarsConfig,
    /// Commit points and each table's publish interval.
    pub epochs: &'a Epochs,
    /// The restart's commit point (0 for a fresh start): output its epochs published is in
    /// the lake.
    pub commit: Time,
    /// The source's frontier: no record leaves below it.
    pub floor: Time,
}

impl Partition {
    /// Partition `id`, read from offset `start` with `clock`; `resume` when the job restarts
    /// from a commit. A partition the commit does not know was created after it: everything
    /// it holds is new, at the commit point or later.
    pub fn new(id: i32, start: i64, clock: PartitionClock, resume: Option<&Resume>, now: Instant) -> Self {
        let (tracker, clock) = match resume {
            Some(r) => match r.partitions.get(&id) {
                Some(position) => Tracker::new(start, Some((position, r.commit)), clock),
                None => {
                    let (tracker, mut clock) = Tracker::new(start, None, clock);
                    clock.raise_floor(r.commit);
                    (tracker, clock)
                }
            },
            None => Tracker::new(start, None, clock),
        };
        Partition { id, clock, tracker, heard: now, paused: false, ended: false }
    }

    /// A partition added to the log while the source runs: nothing of it can leave below the
    /// source's frontier `floor`, and that is logged as a raise at its first offset.
    pub fn added(id: i32, start: i64, cfg: &TimeConfig, floor: Time, now: Instant) -> Self {
        let mut partition = Partition::new(id, start, PartitionClock::new(), None, now);
        partition.tracker.before(start, &mut partition.clock, cfg, floor);
        partition
    }

    /// The partition's number.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// The least timely time the partition can still produce.
    #[inline]
    pub fn frontier(&self, cfg: &TimeConfig) -> Time {
        self.clock.frontier(cfg)
    }

    /// Whether it has seen a valid trade (has a watermark).
    pub fn has_watermark(&self, cfg: &TimeConfig) -> bool {
        self.clock.watermark(cfg).is_some()
    }

    /// Places one record of this partition.
    #[inline]
    pub fn accept(&mut self, rec: &RawRecord<'_>, cx: &Context<'_>) -> Placed {
        let before = self.clock;
        self.tracker.before(rec.offset, &mut self.clock, cx.time, cx.floor);
        let verdict = Kind::of(rec.kind).and_then(|kind| match kind {
            Kind::Trade => clean_record(rec.payload, rec.timestamp, cx.time.max_skew_ms).map(Record::Trade),
            Kind::Gap => parse_gap(rec.payload, rec.timestamp, cx.time.max_skew_ms).map(Record::Gap),
        });
        let placed = match verdict {
            Ok(Record::Gap(body)) => {
                let time = self.clock.frontier(cx.time).max(cx.floor);
                let watermark = self.clock.watermark(cx.time);
                let tick = GapTick { symbol: body.s.clone(), from: body.from, to: body.to, watermark };
                // A replay needs the gap while a bar it may flag can change, and until its row
                // is published.
                let needed = expiry(cx.bars, body.to - 1).max(cx.epochs.epoch(Output::Gaps, time));
                self.tracker.record(rec.offset, needed, before);
                let beyond_horizon = !crate::bars::gap_may_flag(cx.bars, &tick, time);
                let gap =
                    Gap { body, partition: rec.partition, offset: rec.offset, kafka_ts: rec.timestamp, beyond_horizon };
                let committed = self.tracker.committed(time, cx.epochs.published_below(Output::Gaps, cx.commit));
                Placed::Gap { time, gap, tick, committed }
            }
            Ok(Record::Trade(c)) => {
                let watermark = self.clock.watermark(cx.time);
                let placement = self.clock.place(cx.time, c.ts);
                // Never below the frontier (a guard; raises keep records above it).
                let time = placement.time.max(cx.floor);
                // A replay needs the trade until its bars can no longer change and its row
                // is published.
                let needed = expiry(cx.bars, c.ts).max(cx.epochs.epoch(Output::Trades, time));
                self.tracker.record(rec.offset, needed, before);
                let trade = Trade {
                    symbol: c.symbol,
                    price: c.price,
                    volume: c.volume,
                    ts: c.ts,
                    conditions: c.conditions,
                    partition: rec.partition,
                    offset: rec.offset,
                    ingest_ts: rec.timestamp,
                    late: placement.late,
                };
                let committed = self.tracker.committed(time, cx.epochs.published_below(Output::Trades, cx.commit));
                Placed::Trade { time, trade, watermark, committed }
            }
            Err(reason) => {
                let time = self.clock.frontier(cx.time).max(cx.floor);
                self.tracker.record(rec.offset, cx.epochs.epoch(Output::Quarantine, time), before);
                let below = cx.epochs.published_below(Output::Quarantine, cx.commit);
                Placed::Quarantine { time, reason, committed: self.tracker.committed(time, below) }
            }
        };
        self.tracker.after(rec.offset, &mut self.clock, cx.commit);
        placed
    }

    /// Notes that the partition delivered records at `now`.
    #[inline]
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// Whether the partition counts as idle at `now`: silent for `timeout`, not paused (a
    /// paused partition is silent by the source's choice), and not replaying committed
    /// records (those are there to read, and the partition must not be overtaken).
    pub fn idle(&self, now: Instant, timeout: Option<std::time::Duration>) -> bool {
        !self.paused
            && !self.tracker.replaying()
            && timeout.is_some_and(|t| now.saturating_duration_since(self.heard) >= t)
    }

    /// Whether the source paused it.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Marks it paused or reading; a partition that starts reading again counts as heard.
    pub fn set_paused(&mut self, paused: bool, now: Instant) {
        if self.paused && !paused {
            self.heard = now;
        }
        self.paused = paused;
    }

    /// Whether it has been read to its end for this run.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Marks it read to its end.
    pub fn set_ended(&mut self) {
        self.ended = true;
    }

    /// Its state for a frontier move to `to` (`None`: end of log).
    pub fn mark(&mut self, to: Option<Time>) -> PartitionMark {
        self.tracker.mark(self.id, self.clock, to)
    }
}

/// A record that passed its kind's rules.
enum Record {
    Trade(crate::clean::CleanTrade),
    Gap(crate::gap::GapBody),
}

/// The partitions of one source, indexed by number (partitions are small dense integers).
#[derive(Clone, Debug, Default)]
pub struct Partitions {
    slots: Vec<Option<Partition>>,
    len: usize,
}

impl Partitions {
    /// Adds (or replaces) a partition.
    pub fn insert(&mut self, partition: Partition) {
        let i = partition.id.max(0) as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].replace(partition).is_none() {
            self.len += 1;
        }
    }

    /// Partition `p`, if the source reads it.
    #[inline]
    pub fn get_mut(&mut self, p: i32) -> Option<&mut Partition> {
        self.slots.get_mut(usize::try_from(p).ok()?)?.as_mut()
    }

    /// Whether the source reads partition `p`.
    pub fn contains(&self, p: i32) -> bool {
        usize::try_from(p).ok().and_then(|i| self.slots.get(i)).is_some_and(Option::is_some)
    }

    /// How many partitions the source reads.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the source reads none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every partition, by number.
    pub fn iter(&self) -> impl Iterator<Item = &Partition> {
        self.slots.iter().flatten()
    }

    /// Every partition, by number, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Partition> {
        self.slots.iter_mut().flatten()
    }

    /// The source's report that its frontier moves from `from` to `to`.
    pub fn crossing(&mut self, from: Time, to: Option<Time>) -> Crossing {
        Crossing { from, to, partitions: self.iter_mut().map(|p| p.mark(to)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::Position;

    const T0: i64 = 1_763_994_600_000;

    fn record(offset: i64, t: i64, kafka: Option<i64>) -> (Vec<u8>, i64, Option<i64>) {
        (format!(r#"{{"s":"AAPL","p":10.5,"t":{t},"v":3}}"#).into_bytes(), offset, kafka)
    }

    fn accept(p: &mut Partition, r: &(Vec<u8>, i64, Option<i64>), floor: Time, commit: Time) -> Placed {
        let (time, bars, epochs) = (TimeConfig::default(), BarsConfig::default(), Epochs::default());
        let rec = RawRecord { partition: p.id(), offset: r.1, timestamp: r.2, payload: Some(&r.0), kind: None };
        p.accept(&rec, &Context { time: &time, bars: &bars, epochs: &epochs, commit, floor })
    }

    fn time_of(placed: &Placed) -> Time {
        match placed {
            Placed::Trade { time, .. } | Placed::Gap { time, .. } | Placed::Quarantine { time, .. } => *time,
        }
    }

    #[test]
    fn a_trade_leaves_at_its_window_and_moves_the_watermark() {
        let mut p = Partition::new(0, 0, PartitionClock::new(), None, Instant::now());
        let placed = accept(&mut p, &record(0, T0 + 30_000, Some(T0 + 30_050)), 0, 0);
        let Placed::Trade { time, trade, watermark, committed } = placed else { panic!("{placed:?}") };
        assert_eq!((time, watermark, committed, trade.late), (T0 as Time, None, false, false));
        assert_eq!(p.frontier(&TimeConfig::default()), T0 as Time, "pw = t - 5s lies in the same window");
    }

    #[test]
    fn a_bad_tick_is_quarantined_and_leaves_the_watermark_alone() {
        let mut p = Partition::new(0, 0, PartitionClock::new(), None, Instant::now());
        accept(&mut p, &record(0, T0, Some(T0)), 0, 0);
        let frontier = p.frontier(&TimeConfig::default());
        let bad = accept(&mut p, &record(1, 4_070_908_800_000, Some(T0 + 10)), 0, 0);
        assert!(matches!(bad, Placed::Quarantine { reason: Reason::FutureTimestamp, .. }), "{bad:?}");
        assert_eq!(p.frontier(&TimeConfig::default()), frontier);
        // Within the skew it is a trade; without a log timestamp there is nothing to check.
        let ahead = accept(&mut p, &record(2, T0 + 59_000, Some(T0)), 0, 0);
        assert!(matches!(ahead, Placed::Trade { .. }), "{ahead:?}");
        let unstamped = accept(&mut p, &record(3, T0 + 30 * 60_000, None), 0, 0);
        assert!(matches!(unstamped, Placed::Trade { .. }), "{unstamped:?}");
    }

    #[test]
    fn nothing_leaves_below_the_floor_and_an_added_partition_starts_at_it() {
        let floor = (T0 + 10 * 60_000) as Time;
        let mut p = Partition::added(3, 0, &TimeConfig::default(), floor, Instant::now());
        assert_eq!(p.frontier(&TimeConfig::default()), floor);
        let placed = accept(&mut p, &record(0, T0, Some(T0)), floor, 0);
        assert_eq!(time_of(&placed), floor);
        // The raise is logged from the first offset, so a replay places the record alike.
        let mark = p.mark(None);
        assert_eq!(mark.raises.first(), Some(&(0, floor)));
    }

    #[test]
    fn a_partition_unknown_to_the_commit_starts_at_the_commit_point() {
        let commit = (T0 + 60_000) as Time;
        let resume = Resume { commit, partitions: Default::default() };
        let mut p = Partition::new(5, 0, PartitionClock::new(), Some(&resume), Instant::now());
        let placed = accept(&mut p, &record(0, T0, Some(T0)), 0, commit);
        assert!(matches!(placed, Placed::Trade { committed: false, .. }), "new records are never committed");
        assert_eq!(time_of(&placed), commit);
        let position = Position { resume: 2, replay: 0, clock: PartitionClock::new(), raises: vec![] };
        let resume = Resume { commit, partitions: [(5, position)].into() };
        let mut p = Partition::new(5, 0, PartitionClock::new(), Some(&resume), Instant::now());
        let placed = accept(&mut p, &record(0, T0, Some(T0)), 0, commit);
        assert!(matches!(placed, Placed::Trade { committed: true, .. }), "before resume, below the commit");
    }

    #[test]
    fn paused_and_replaying_partitions_are_never_idle() {
        let start = Instant::now();
        let timeout = Some(std::time::Duration::ZERO);
        let mut p = Partition::new(0, 0, PartitionClock::new(), None, start);
        assert!(p.idle(start, timeout));
        assert!(!p.idle(start, None), "no timeout, never idle");
        p.set_paused(true, start);
        assert!(!p.idle(start, timeout));
        let commit = (T0 + 60_000) as Time;
        let position = Position { resume: 5, replay: 0, clock: PartitionClock::new(), raises: vec![] };
        let resume = Resume { commit, partitions: [(0, position)].into() };
        let replaying = Partition::new(0, 0, PartitionClock::new(), Some(&resume), start);
        assert!(!replaying.idle(start, timeout));
    }

    #[test]
    fn partitions_are_found_by_number() {
        let now = Instant::now();
        let mut all = Partitions::default();
        for id in [7, 2, 40] {
            all.insert(Partition::new(id, 0, PartitionClock::new(), None, now));
        }
        all.insert(Partition::new(2, 5, PartitionClock::new(), None, now));
        assert_eq!(all.len(), 3);
        assert!(all.contains(40) && !all.contains(3) && !all.contains(-1));
        assert_eq!(all.iter().map(Partition::id).collect::<Vec<_>>(), vec![2, 7, 40]);
        assert!(all.get_mut(-4).is_none());
        let crossing = all.crossing(0, Some(60_000));
        assert_eq!(
            crossing.partitions.iter().map(|m| (m.partition, m.next)).collect::<Vec<_>>(),
            vec![(2, 5), (7, 0), (40, 0)]
        );
    }
}
