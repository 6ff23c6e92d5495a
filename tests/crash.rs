//! Crash safety: the job as a process on `stockflow dev-kafka`, killed with SIGKILL at random
//! moments while the topic grows (and now and then stopped with SIGTERM), restarted with
//! varying `-w`, then drained, must leave exactly the lake of one clean run: every
//! (partition, offset) once, the same bar rows.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use stockflow::iceberg::{IcebergCatalog, IcebergTables, POINT_PROPERTY};
use stockflow::lake::{Lake, LakeOptions, STAGING, Table};

mod common;
use common::moto::{CREDENTIALS, credentials_in_process, moto};
use common::{Landed, commits, log_records, read_exported, read_lake, read_lake_from};

const PARTITIONS: i32 = 4;
const WIDTHS: [u64; 2] = [60_000, 300_000];
const BASE_MS: i64 = 1_763_997_000_000;

/// The broker as its own process, so killing the job never touches the log.
struct DevKafka {
    child: Child,
    brokers: String,
}

impl DevKafka {
    fn start(dir: &Path) -> Self {
        let port_file = dir.join("brokers");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["dev-kafka", "--partitions", &PARTITIONS.to_string(), "--port-file"])
            .arg(&port_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dev-kafka");
        // The first line of its output is the bootstrap address, printed once it serves.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("brokers line");
        DevKafka { child, brokers: line.trim().to_owned() }
    }
}

impl Drop for DevKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A seeded stream of Finnhub trades per partition: event time moving forward with jitter,
/// late trades (some beyond the lateness, a few beyond the revision horizon), garbage, and
/// gap records as ingest writes them (some reaching back past written bars, a few beyond the
/// horizon).
struct Market {
    rng: fastrand::Rng,
    clock: Vec<i64>,
    /// Largest step of a partition's clock between two of its records, ms.
    step: i64,
}

impl Market {
    fn new(seed: u64) -> Self {
        Market::with_step(seed, 400)
    }

    fn with_step(seed: u64, step: i64) -> Self {
        Market { rng: fastrand::Rng::with_seed(seed), clock: vec![BASE_MS; PARTITIONS as usize], step }
    }

    /// The event time every partition has reached.
    fn reached(&self) -> i64 {
        self.clock.iter().copied().min().unwrap_or(BASE_MS)
    }

    fn record(&mut self) -> (i32, String, Vec<u8>, i64, bool) {
        let rng = &mut self.rng;
        let p = rng.i32(0..PARTITIONS);
        let symbol = format!("S{}", p + PARTITIONS * rng.i32(0..5));
        let clock = &mut self.clock[p as usize];
        *clock += rng.i64(0..self.step);
        if rng.u16(..250) == 0 {
            let to = *clock - rng.i64(0..2_000);
            let from = to - if rng.bool() { rng.i64(1..30_000) } else { rng.i64(60_000..900_000) };
            let body = dataflows::gap::GapBody {
                s: symbol.as_str().into(),
                from,
                to,
                reason: "disconnect".into(),
                host: "h".into(),
            };
            return (p, symbol, body.to_json(), *clock, true);
        }
        let ts = match rng.u8(..100) {
            0..=2 => *clock - rng.i64(0..900_000),
            3..=9 => *clock - rng.i64(0..8_000),
            _ => *clock,
        };
        let price = rng.u32(100..90_000) as f64 / 100.0;
        let payload = match rng.u16(..200) {
            0 => b"{\"s\":".to_vec(),
            1 => format!(r#"{{"s":"{symbol}","p":0,"t":{ts},"v":1}}"#).into_bytes(),
            _ => format!(r#"{{"s":"{symbol}","p":{price},"t":{ts},"v":{},"c":["1"]}}"#, rng.u32(1..500)).into_bytes(),
        };
        (p, symbol, payload, *clock, false)
    }

    fn produce(&mut self, producer: &BaseProducer, n: usize) {
        for _ in 0..n {
            let (p, key, payload, at, gap) = self.record();
            let mut record = BaseRecord::to("trades").partition(p).key(&key).payload(&payload).timestamp(at);
            if gap {
                let kind = Header { key: dataflows::gap::KIND_HEADER, value: Some(dataflows::gap::GAP_KIND) };
                record = record.headers(OwnedHeaders::new().insert(kind));
            }
            producer.send(record).map_err(|(e, _)| e).expect("send");
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    }
}

fn job(brokers: &str, lake: impl AsRef<std::ffi::OsStr>, workers: usize, drain: bool) -> Command {
    let mut cmd = job_with(brokers, lake, workers, drain);
    cmd.args(["--rows-per-file", "3000"]);
    cmd
}

/// The job with default file sizing and publish intervals.
fn job_with(brokers: &str, lake: impl AsRef<std::ffi::OsStr>, workers: usize, drain: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stockflow"));
    cmd.args(["--brokers", brokers, "-w", &workers.to_string(), "--bars", "1m,5m", "--revision-horizon", "10m"])
        .args(["--commit-interval", "1m", "--lake"])
        .arg(lake)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if drain {
        cmd.arg("--drain");
    }
    cmd
}

fn drain(brokers: &str, lake: &Path, workers: usize) {
    drain_with(job(brokers, lake, workers, true), lake);
}

fn drain_with(mut cmd: Command, lake: impl AsRef<std::ffi::OsStr>) {
    let mut child = cmd.spawn().expect("drain");
    let started = Instant::now();
    // A drain that does not finish is a bug (a held frontier); fail instead of hanging.
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            let copy = std::env::temp_dir().join("stockflow-crash-hung-lake");
            let _ = Command::new("cp").arg("-r").arg(lake.as_ref()).arg(&copy).status();
            panic!(
                "drain hung (a local lake is copied to {}): {}",
                copy.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("drain");
    assert!(out.status.success(), "drain failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn staged_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { staged_files(&e.path()) } else { 1 }).sum()
}

fn bar_rows(landed: &Landed) -> Vec<String> {
    let mut rows: Vec<String> = landed.bars.iter().map(|(w, b)| format!("{w} {b:?}")).collect();
    rows.sort();
    rows
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = DevKafka::start(dir.path());
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    let mut market = Market::new(42);
    let mut rng = fastrand::Rng::with_seed(7);
    let crashed = dir.path().join("crashed");
    let (mut kills, mut kills_after_a_commit, mut produced, mut terms) = (0, 0, 0, 0);
    let mut workers_used = std::collections::BTreeSet::new();

    // The topic grows between runs, so every run has new records to read, window, stage and
    // commit when the kill comes: during start-up, recovery, replay, processing or a commit.
    while kills < 20 {
        let chunk = 2_500;
        market.produce(&producer, chunk);
        produced += chunk;
        let workers = 1 + rng.usize(..3);
        workers_used.insert(workers);
        let before = commits(&crashed);
        let mut child = job(&kafka.brokers, &crashed, workers, false).spawn().expect("job");
        let wait_for_a_commit = |child: &mut Child| {
            let waiting = Instant::now();
            while commits(&crashed) == before {
                assert!(child.try_wait().expect("try_wait").is_none(), "job exited before committing");
                assert!(waiting.elapsed() < Duration::from_secs(120), "no commit within 2 minutes");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if produced % 12_500 == 0 {
            // A graceful stop: once this run has committed, SIGTERM must commit what is
            // complete and exit 0.
            wait_for_a_commit(&mut child);
            let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill -TERM");
            assert!(term.success());
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "SIGTERM: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
            terms += 1;
            continue;
        }
        if kills % 4 == 0 {
            // Every fourth kill comes after this run has committed (how soon a run commits
            // depends on the machine's load, so random delays alone may never get there).
            wait_for_a_commit(&mut child);
        }
        let deadline = Instant::now() + Duration::from_millis(rng.u64(30..1_500));
        // A run that fails on its own (rather than by the kill) is a bug: check it is alive.
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
                panic!("job exited by itself ({status}) before the kill: {err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        if commits(&crashed) > before {
            kills_after_a_commit += 1;
        }
    }
    drain(&kafka.brokers, &crashed, 2);

    let clean = dir.path().join("clean");
    drain(&kafka.brokers, &clean, 1);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let got = rt.block_on(read_lake(&Lake::open(&crashed.to_string_lossy()).expect("lake"), &WIDTHS));
    let want = rt.block_on(read_lake(&Lake::open(&clean.to_string_lossy()).expect("lake"), &WIDTHS));
    let records = want.trades.len() + want.quarantine.len() + want.gaps.len();
    let missing = want.trades.keys().filter(|k| !got.trades.contains_key(k)).count()
        + want.quarantine.keys().filter(|k| !got.quarantine.contains_key(k)).count()
        + want.gaps.keys().filter(|k| !got.gaps.contains_key(k)).count();
    let (got_bars, want_bars) = (bar_rows(&got), bar_rows(&want));
    let bar_mismatches =
        got_bars.iter().zip(&want_bars).filter(|(a, b)| a != b).count() + got_bars.len().abs_diff(want_bars.len());
    eprintln!(
        "crash test: {kills} SIGKILLs ({kills_after_a_commit} after the run committed), {terms} SIGTERMs, -w {workers_used:?}, \
         {produced} records produced, {records} landed, {} commits, duplicates {}, missing {missing}, \
         bar rows {} (mismatches {bar_mismatches})",
        commits(&crashed),
        got.duplicates,
        got_bars.len()
    );
    assert_eq!(records, produced, "the clean run lands every record");
    assert_eq!(want.duplicates, 0);
    assert_eq!(got.duplicates, 0, "records landed twice after crashes");
    assert_eq!(missing, 0, "records lost after crashes");
    assert_eq!(got.trades, want.trades, "trades (late flags) differ");
    assert_eq!(got.quarantine, want.quarantine, "quarantine differs");
    assert_eq!(got.gaps, want.gaps, "gaps differ");
    assert_eq!(bar_mismatches, 0, "bar rows differ from the clean run");
    assert!(want.bars.iter().any(|(_, b)| b.revision > 0), "the log revises bars");
    assert!(want.bars.iter().any(|(_, b)| b.gap_ms > 0 && b.revision > 0), "late gaps revise written bars");
    assert!(terms >= 3, "graceful stops: {terms}");
    assert!(kills_after_a_commit >= 5, "too few kills landed after a commit: {kills_after_a_commit}");
    assert_eq!(staged_files(&crashed.join("_stockflow/staging")), 0, "uncommitted files left behind");
    assert_eq!(staged_files(&clean.join("_stockflow/staging")), 0);
}

/// Two runs on one lake (a manual run beside the service): B starts while A runs and claims
/// the lake; A stops with one clear line at its next commit instead of committing files B
/// cleared; after B stops, a drain finishes the lake, which equals a clean run's.
#[test]
fn two_overlapping_runs_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = DevKafka::start(dir.path());
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    let mut market = Market::new(43);
    let lake = dir.path().join("shared");
    // Waits until the log holds `n` records (commits and claims).
    let wait_for_records = |n: usize, child: &mut Child| {
        let waiting = Instant::now();
        while log_records(&lake).len() < n {
            assert!(child.try_wait().expect("try_wait").is_none(), "job exited before committing");
            assert!(waiting.elapsed() < Duration::from_secs(120), "no commit within 2 minutes");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    market.produce(&producer, 5_000);
    let mut a = job(&kafka.brokers, &lake, 2, false).spawn().expect("run A");
    wait_for_records(2, &mut a); // A's claim and a commit
    let mut b = job(&kafka.brokers, &lake, 1, false).spawn().expect("run B");
    // B's claim: a claim of a generation after A's (A may commit meanwhile).
    let a_generation = log_records(&lake)[0].generation;
    let waiting = Instant::now();
    while !log_records(&lake).iter().any(|r| r.claim && r.generation > a_generation) {
        assert!(b.try_wait().expect("try_wait").is_none(), "run B exited before claiming the lake");
        assert!(waiting.elapsed() < Duration::from_secs(120), "run B did not claim the lake within 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // More trades move both runs' frontiers on: A's next commit finds B's claim first.
    let mut produced = 5_000;
    while a.try_wait().expect("try_wait").is_none() {
        assert!(produced < 60_000, "run A kept committing after run B claimed the lake");
        market.produce(&producer, 2_500);
        produced += 2_500;
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = a.wait_with_output().expect("run A");
    let lines: Vec<String> =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("error:")).map(String::from).collect();
    assert_eq!(out.status.code(), Some(1), "run A stops as superseded: {lines:?}");
    assert!(lines.len() == 1 && lines[0].contains("another run took over the lake"), "{lines:?}");

    let waiting = log_records(&lake).len();
    market.produce(&producer, 2_500);
    produced += 2_500;
    wait_for_records(waiting + 1, &mut b); // B goes on committing
    assert!(log_records(&lake).last().is_some_and(|r| r.is_commit()));
    let term = Command::new("kill").args(["-TERM", &b.id().to_string()]).status().expect("kill -TERM");
    assert!(term.success());
    let out = b.wait_with_output().expect("run B");
    assert!(out.status.success(), "run B: {}", String::from_utf8_lossy(&out.stderr));
    drain(&kafka.brokers, &lake, 2);

    let clean = dir.path().join("clean");
    drain(&kafka.brokers, &clean, 1);
    assert_same_lake(&local(&lake), &local(&clean), produced);
}

/// `lake` holds every one of the `produced` records once and the rows of the clean run's
/// `clean`, with nothing left in staging.
fn assert_same_lake(lake: &Lake, clean: &Lake, produced: usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let got = rt.block_on(read_lake(lake, &WIDTHS));
    let want = rt.block_on(read_lake(clean, &WIDTHS));
    assert_same_rows(&got, &want, produced);
    assert_nothing_staged(&rt, lake);
}

/// `got` holds every one of the `produced` records once and the rows of `want`.
fn assert_same_rows(got: &Landed, want: &Landed, produced: usize) {
    assert_eq!(want.trades.len() + want.quarantine.len() + want.gaps.len(), produced);
    assert_eq!(got.duplicates, 0, "records landed twice");
    assert_eq!(got.trades, want.trades, "trades differ from a clean run");
    assert_eq!(got.quarantine, want.quarantine, "quarantine differs from a clean run");
    assert_eq!(got.gaps, want.gaps, "gaps differ from a clean run");
    let (got_bars, want_bars) = (bar_rows(got), bar_rows(want));
    let extra: Vec<&String> = got_bars.iter().filter(|r| want_bars.binary_search(r).is_err()).take(5).collect();
    let missing: Vec<&String> = want_bars.iter().filter(|r| got_bars.binary_search(r).is_err()).take(5).collect();
    assert!(
        got_bars == want_bars,
        "bar rows differ from a clean run: {} vs {} rows; not in the clean run {extra:#?}; missing {missing:#?}",
        got_bars.len(),
        want_bars.len()
    );
}

fn assert_nothing_staged(rt: &tokio::runtime::Runtime, lake: &Lake) {
    let staged = rt
        .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(lake.store.list(Some(&lake.path(STAGING)))))
        .expect("list staging");
    assert!(staged.is_empty(), "uncommitted files left behind: {staged:?}");
}

/// A local lake, for reading back.
fn local(dir: &Path) -> Lake {
    Lake::open(&dir.to_string_lossy()).expect("lake")
}

/// The soak's job: default files, and no wall-clock idleness. A partition that fell silent
/// at the end of an hour's trades would otherwise be declared idle after 30 s, closing its
/// windows before the next hour's trades arrive; the final bars would be the same, but not
/// the revisions on the way, and the soak compares every bar row with a clean run's.
fn soak_job(brokers: &str, lake: &Path, workers: usize, drain: bool) -> Command {
    let mut cmd = job_with(brokers, lake, workers, drain);
    cmd.args(["--idle-timeout", "1h"]);
    cmd
}

/// The files of one table's hour partition: those published with the hour itself (the
/// smallest publish epoch in their names) and those published later, with the rows that
/// came after the hour's publish.
#[derive(Debug, Default)]
struct HourFiles {
    own: usize,
    later: usize,
    /// Rows in the later files; for trades, how many of them are not marked late.
    later_rows: usize,
    later_on_time: usize,
}

/// Files per table and hour partition, `(table, "dt=../hour=..")`, split by publish epoch.
fn files_per_hour(lake: &Path) -> std::collections::BTreeMap<(String, String), HourFiles> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let store = Lake::open(&lake.to_string_lossy()).expect("lake");
    let mut counts = std::collections::BTreeMap::new();
    for table in ["trades", "quarantine", "bars_1m", "bars_5m"] {
        let Ok(days) = std::fs::read_dir(lake.join(table)) else { continue };
        for day in days.flatten() {
            for hour in std::fs::read_dir(day.path()).into_iter().flatten().flatten() {
                // File names begin with their publish epoch (bars: one name per hour).
                let mut files: Vec<(String, String)> = std::fs::read_dir(hour.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|f| f.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.ends_with(".parquet"))
                    .map(|name| (name.split('-').next().unwrap_or_default().to_owned(), name))
                    .collect();
                files.sort();
                let first = files.first().map(|(epoch, _)| epoch.clone()).unwrap_or_default();
                let partition = format!("{}/{}", day.file_name().to_string_lossy(), hour.file_name().to_string_lossy());
                let mut census = HourFiles::default();
                for (epoch, name) in &files {
                    if *epoch == first {
                        census.own += 1;
                        continue;
                    }
                    census.later += 1;
                    let path = format!("{table}/{partition}/{name}");
                    let batches =
                        rt.block_on(stockflow::lake::read::read_file(&store, &store.path(&path))).expect("read");
                    census.later_rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
                    if table == "trades" {
                        let late = stockflow::lake::read::late_count(&batches).expect("late column") as usize;
                        census.later_on_time += batches.iter().map(|b| b.num_rows()).sum::<usize>() - late;
                    }
                }
                counts.insert((table.to_owned(), partition), census);
            }
        }
    }
    counts
}

/// The newest window end in a local lake's `bars_1m` table.
fn newest_bar_end(lake: &Path) -> Option<i64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let lake = Lake::open(&lake.to_string_lossy()).expect("lake");
    let table = stockflow::lake::Table::Bars(60_000);
    let batches = rt.block_on(stockflow::lake::read::read_table(&lake, &table)).ok()?;
    stockflow::lake::read::bars(&batches).ok()?.iter().map(|b| b.window_end).max()
}

/// Six hours of event time through `-w 2`, paced by event time (an hour of trades, then the
/// job runs until it has committed into that hour), with five SIGKILLs along the way: every
/// closed hour holds at most one file per worker per table, plus one more per worker for
/// trades that came after their hour was published; each bar table holds exactly one file
/// per hour; the newest bars are in the lake after every commit; the lake equals a clean run's.
#[test]
fn six_hours_with_five_sigkills_keep_few_files_and_fresh_bars() {
    const HOUR: i64 = 3_600_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = DevKafka::start(dir.path());
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    // About 7,000 trades an hour (a partition's clock steps 2 s on average).
    let mut market = Market::with_step(11, 4_000);
    let mut rng = fastrand::Rng::with_seed(5);
    let lake = dir.path().join("soak");
    let (mut produced, mut kills, mut fresh_checks) = (0, 0, 0);
    for hour in 1..=6 {
        while market.reached() < BASE_MS + hour * HOUR {
            market.produce(&producer, 500);
            produced += 500;
        }
        let mut child = soak_job(&kafka.brokers, &lake, 2, false).spawn().expect("job");
        // Run until a commit lands in the hour just produced (its first minutes closed).
        let target = (BASE_MS + (hour - 1) * HOUR + 2 * 60_000) as u64;
        let waiting = Instant::now();
        loop {
            let newest = log_records(&lake).into_iter().rev().find(|r| r.is_commit() && r.commit >= target);
            // Its moves done: every file it names lies in its table, the size it was staged with.
            let moved = |r: &stockflow::commit::CommitRecord| {
                r.files.iter().all(|f| std::fs::metadata(lake.join(&f.path)).is_ok_and(|m| m.len() == f.bytes))
            };
            if let Some(record) = newest.filter(moved) {
                let point = record.commit;
                // Bars stay fresh: the window that ended a lateness and a minute before the
                // commit point is in the lake.
                let end = newest_bar_end(&lake).expect("bars in the lake");
                assert!(end as u64 + 2 * 60_000 >= point, "bars lag the commit at {point}: newest ends {end}");
                fresh_checks += 1;
                break;
            }
            assert!(child.try_wait().expect("try_wait").is_none(), "job exited before committing");
            assert!(waiting.elapsed() < Duration::from_secs(180), "no commit in hour {hour} within 3 minutes");
            std::thread::sleep(Duration::from_millis(50));
        }
        if hour < 6 {
            // Killed at a random moment after that commit: mid-read, mid-commit or idle.
            std::thread::sleep(Duration::from_millis(rng.u64(0..800)));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            kills += 1;
        } else {
            let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill -TERM");
            assert!(term.success());
            assert!(child.wait().expect("wait").success(), "SIGTERM after the last hour");
        }
    }
    drain_with(soak_job(&kafka.brokers, &lake, 2, true), &lake);
    let clean = dir.path().join("clean");
    drain_with(soak_job(&kafka.brokers, &clean, 1, true), &clean);

    let counts = files_per_hour(&lake);
    eprintln!("soak: {produced} records, {kills} SIGKILLs, {fresh_checks} freshness checks; files per table and hour:");
    for ((table, hour), files) in &counts {
        eprintln!(
            "  {table:<10} {hour}: {} with the hour, {} later ({} rows)",
            files.own, files.later, files.later_rows
        );
    }
    for ((table, hour), files) in &counts {
        if table.starts_with("bars") {
            assert_eq!((files.own, files.later), (1, 0), "{table} {hour}: one file, republished whole");
        } else {
            // At most one file per worker with the hour, and one per worker for what came
            // after it was published; for trades that is only late trades.
            assert!(files.own <= 2 && files.later <= 2, "{table} {hour}: {files:?}");
            assert_eq!(files.later_on_time, 0, "{table} {hour}: on-time trades published after their hour");
        }
    }
    assert_eq!(kills, 5);
    assert_same_lake(&local(&lake), &local(&clean), produced);
}

/// SIGKILLs at random moments after a commit, against an S3 lake (moto on loopback), where a
/// put is an upload and a move a copy and a delete, so a kill leaves other states than in a
/// local folder: the topic grows between runs, worker counts alternate, and after a drain
/// the lake equals a clean run's with nothing left in staging.
#[test]
fn sigkills_on_an_s3_lake_lose_and_duplicate_nothing() {
    let Some(s3) = moto("crash") else { return };
    credentials_in_process();
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = DevKafka::start(dir.path());
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    let mut market = Market::new(9);
    let mut rng = fastrand::Rng::with_seed(13);
    let url = "s3://crash/lake";
    let lake =
        Lake::open_with(url, &LakeOptions { s3_endpoint: Some(s3.endpoint.clone()), layer: None }).expect("lake");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stored = || rt.block_on(stockflow::commit::newest_commit(&lake)).expect("commit log").0;
    let s3_job = |workers: usize, drain: bool| {
        let mut cmd = job(&kafka.brokers, url, workers, drain);
        cmd.args(["--s3-endpoint", &s3.endpoint]).envs(CREDENTIALS);
        cmd
    };
    let produced = runs_killed_after_a_commit(&mut market, &producer, &mut rng, stored, s3_job);
    eprintln!("s3 crashes: 6 SIGKILLs, {produced} records, {} commits before the drain", stored());
    drain_with(s3_job(2, true), url);
    let clean = dir.path().join("clean");
    drain(&kafka.brokers, &clean, 1);
    assert_same_lake(&lake, &local(&clean), produced);
}

/// Six runs, each started after 2,500 more records reached the topic (worker counts
/// alternating) and SIGKILLed at a random moment from right after its first commit (before
/// or between the moves and any Iceberg snapshots) to 0.8 s later; `stored` counts the lake's
/// commits. Returns the records produced.
fn runs_killed_after_a_commit(
    market: &mut Market,
    producer: &BaseProducer,
    rng: &mut fastrand::Rng,
    stored: impl Fn() -> u64,
    job: impl Fn(usize, bool) -> Command,
) -> usize {
    let mut produced = 0;
    for run in 0..6 {
        market.produce(producer, 2_500);
        produced += 2_500;
        let before = stored();
        let mut child = job(1 + run % 2, false).spawn().expect("job");
        let waiting = Instant::now();
        while stored() == before {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
                panic!("job exited ({status}) before committing: {err}");
            }
            assert!(waiting.elapsed() < Duration::from_secs(120), "no commit within 2 minutes");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..800)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    produced
}

/// Runs writing Iceberg tables into `url` (`--table-format iceberg`, in `catalog`), each
/// SIGKILLed at a random moment after it committed, with the topic growing between runs and
/// worker counts alternating; then a drain. Every table's current snapshot equals the Hive
/// lake of a clean run of the same log, no commit point has two snapshots in any table, and
/// pyiceberg reads the same rows through the same catalog.
fn iceberg_sigkills(dir: &Path, url: &str, options: LakeOptions, catalog: &IcebergCatalog, seed: u64) {
    let kafka = DevKafka::start(dir);
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("producer");
    let mut market = Market::new(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let lake = Lake::open_with(url, &options).expect("lake");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stored = || rt.block_on(stockflow::commit::newest_commit(&lake)).expect("commit log").0;
    let iceberg_job = |workers: usize, drain: bool| {
        let mut cmd = job(&kafka.brokers, url, workers, drain);
        cmd.args(["--table-format", "iceberg", "--catalog", &catalog.to_string()]).envs(CREDENTIALS);
        if let Some(endpoint) = &options.s3_endpoint {
            cmd.args(["--s3-endpoint", endpoint]);
        }
        cmd
    };
    let produced = runs_killed_after_a_commit(&mut market, &producer, &mut rng, stored, iceberg_job);
    let commits = stored();
    drain_with(iceberg_job(2, true), url);
    let clean = dir.join("clean");
    drain(&kafka.brokers, &clean, 1);
    let want = rt.block_on(read_lake(&local(&clean), &WIDTHS));

    let tables = rt.block_on(IcebergTables::open(&lake, catalog, &Table::all(&WIDTHS))).expect("the catalog");
    let got = rt.block_on(read_lake_from(&lake, &WIDTHS, Some(&tables)));
    assert_same_rows(&got, &want, produced);
    assert_nothing_staged(&rt, &lake);
    let mut snapshots = 0;
    for table in Table::all(&WIDTHS) {
        let loaded = rt.block_on(tables.catalog().load_table(&tables.ident(&table))).expect("table");
        let points: Vec<&String> = loaded
            .metadata()
            .snapshots()
            .map(|s| s.summary().additional_properties.get(POINT_PROPERTY).expect("a stockflow snapshot"))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = points.iter().copied().collect();
        assert_eq!(distinct.len(), points.len(), "{}: a commit point has two snapshots: {points:?}", table.name());
        snapshots += points.len();
    }
    eprintln!(
        "iceberg crashes on {url}: 6 SIGKILLs, {produced} records, {commits} commits before the drain, {snapshots} \
         snapshots"
    );

    // Another engine reads the same rows through the same catalog.
    let export = dir.join("pyiceberg");
    std::fs::create_dir_all(&export).expect("export folder");
    let mut python = Command::new("python3");
    python
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/read_iceberg.py"))
        .arg(catalog.to_string())
        .arg(lake.url())
        .arg(&export);
    if let Some(endpoint) = &options.s3_endpoint {
        python.arg(endpoint);
    }
    let out = python.output().expect("python3");
    assert!(out.status.success(), "pyiceberg: {}", String::from_utf8_lossy(&out.stderr));
    let read = rt.block_on(read_exported(&export, &WIDTHS));
    assert_same_rows(&read, &want, produced);
}

#[test]
fn sigkills_on_iceberg_tables_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("lake").to_string_lossy().into_owned();
    let catalog = IcebergCatalog::Sqlite(dir.path().join("catalog.sqlite"));
    iceberg_sigkills(dir.path(), &url, LakeOptions::default(), &catalog, 21);
}

#[test]
fn sigkills_on_iceberg_tables_on_s3_with_glue_lose_and_duplicate_nothing() {
    let Some(s3) = moto("iceberg") else { return };
    credentials_in_process();
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LakeOptions { s3_endpoint: Some(s3.endpoint.clone()), layer: None };
    // The tables in Glue (moto serves Glue on the S3 endpoint), as on AWS.
    let catalog = IcebergCatalog::Glue { endpoint: Some(s3.endpoint.clone()) };
    iceberg_sigkills(dir.path(), "s3://iceberg/lake", options, &catalog, 22);
}
