//! The commit protocol's hard cases, each run against a local folder and against an S3 server
//! (moto on loopback): two runs on one lake, a final commit interrupted before its moves, a
//! settings mismatch with moves pending, a file already at a move's target, a move
//! interrupted half way, a crash between two Iceberg tables' snapshots, and what a killed
//! process leaves behind.

use std::collections::{BTreeMap, HashMap};

use dataflows::resume::Position;
use dataflows::{PartitionClock, Time};
use object_store::{ObjectStoreExt, PutPayload};
use stockflow::commit::{self, CommitError, CommitRecord, Recovery, Settings, log, moves, staging_dir};
use stockflow::iceberg::{IcebergCatalog, IcebergTables, SEQ_PROPERTY};
use stockflow::lake::writer::Staged;
use stockflow::lake::{Lake, LakeOptions, STAGING, Table, TableFormat};

mod common;
use common::moto::{credentials_in_process, moto};
use common::settings;

/// A fresh lake, local or on S3, and a runtime to drive it.
struct Fixture {
    rt: tokio::runtime::Runtime,
    _dir: Option<tempfile::TempDir>,
    lake: Lake,
}

impl Fixture {
    fn local() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        Fixture { rt, _dir: Some(dir), lake }
    }

    /// A lake under its own prefix of the server's bucket `commit`.
    fn s3(endpoint: &str, prefix: &str) -> Self {
        credentials_in_process();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let options = LakeOptions { s3_endpoint: Some(endpoint.to_owned()), layer: None };
        let lake = Lake::open_with(&format!("s3://commit/{prefix}"), &options).expect("lake");
        Fixture { rt, _dir: None, lake }
    }

    /// A file staged by generation `generation` for epoch `epoch`.
    fn stage(&self, generation: u64, name: &str, epoch: Time) -> Staged {
        let file = Staged {
            epoch,
            staged: format!("{STAGING}/{}/trades/dt=2025-11-24/hour=14/{name}", staging_dir(generation)),
            path: format!("trades/dt=2025-11-24/hour=14/{name}"),
            rows: 1,
            bytes: 3,
            replace: false,
            hour: 0,
        };
        self.put(&file.staged, b"abc");
        file
    }

    fn put(&self, path: &str, body: &'static [u8]) {
        self.rt.block_on(self.lake.store.put(&self.lake.path(path), PutPayload::from_static(body))).expect("put");
    }

    fn exists(&self, path: &str) -> bool {
        self.rt.block_on(self.lake.store.head(&self.lake.path(path))).is_ok()
    }

    fn append(&self, record: &CommitRecord) {
        self.rt.block_on(log::append(&self.lake, record)).expect("append");
    }

    /// A commit of generation `claim`'s run, appended after it, as the commit task does.
    fn commit(&self, claim: &CommitRecord, commit: Time, files: Vec<Staged>) -> Result<CommitRecord, CommitError> {
        let record = CommitRecord { seq: claim.seq + 1, generation: claim.generation, ..record(commit, files) };
        self.rt.block_on(async {
            log::append(&self.lake, &record).await?;
            moves::finish(&self.lake, &record.files).await
        })?;
        Ok(record)
    }

    fn recover(&self, settings: &Settings) -> Result<Recovery, CommitError> {
        self.rt.block_on(commit::recover(&self.lake, settings, None))
    }
}

fn record(commit: Time, files: Vec<Staged>) -> CommitRecord {
    let position = Position { resume: 10, replay: 4, clock: PartitionClock::new(), raises: vec![(5, 60_000)] };
    CommitRecord::template(settings()).for_commit(commit, BTreeMap::from([(0, position)]), files)
}

fn recovery_finishes_the_moves_of_the_newest_commit_and_clears_older_staging(f: &Fixture) {
    let first = f.recover(&settings()).expect("claim a new lake");
    assert!(!first.has_commit() && first.generation() == 1);
    let (a, b) = (f.stage(1, "a.parquet", 60_000), f.stage(1, "b.parquet", 120_000));
    let uncommitted = f.stage(1, "c.parquet", 180_000);
    // A crash between the record and the moves: one file moved, one not.
    let newest = CommitRecord { seq: 2, generation: 1, ..record(120_000, vec![a.clone(), b.clone()]) };
    f.append(&newest);
    f.rt.block_on(f.lake.store.rename(&f.lake.path(&a.staged), &f.lake.path(&a.path))).expect("move a");

    let recovery = f.recover(&settings()).expect("recover");
    assert_eq!(recovery.committed(), 120_000);
    assert_eq!(recovery.generation(), 3, "the claim is the next record");
    assert!(f.exists(&a.path) && f.exists(&b.path), "both files in the table");
    assert!(!f.exists(&uncommitted.staged), "uncommitted output of the older generation is discarded");
    assert!(!f.exists(&uncommitted.path));
    assert_eq!(recovery.starts(), HashMap::from([(0, 4)]));
    let resume = recovery.resume().expect("resume");
    assert_eq!(resume.partitions[&0].raises, vec![(5, 60_000)]);
    let (commits, newest) = f.rt.block_on(commit::newest_commit(&f.lake)).expect("log");
    assert_eq!((commits, newest.map(|r| r.seq)), (2, Some(2)), "claims are not commits");
}

/// Two runs on one lake: A stages a file; B starts, claims the lake and clears A's staging;
/// A's commit then fails as superseded instead of committing a deleted file, and a later
/// start finds a consistent lake.
fn a_superseded_run_stops_before_committing_and_loses_nothing(f: &Fixture) {
    let a = f.recover(&settings()).expect("run A");
    let committed = f.stage(a.generation(), "a1.parquet", 60_000);
    let a1 = f.commit(a.last.as_ref().expect("claim"), 60_000, vec![committed.clone()]).expect("A commits");
    let pending = f.stage(a.generation(), "a2.parquet", 120_000);

    let b = f.recover(&settings()).expect("run B");
    assert_eq!(b.committed(), 60_000);
    assert!(b.generation() > a.generation());
    assert!(!f.exists(&pending.staged), "B clears A's uncommitted staging");

    let err = f.commit(&a1, 120_000, vec![pending.clone()]).expect_err("A is superseded");
    assert!(matches!(err, CommitError::Superseded { generation, .. } if generation == b.generation()), "{err}");
    assert!(err.to_string().starts_with("another run took over the lake"), "{err}");
    assert!(!f.exists(&pending.path), "nothing of A's stopped commit reached the table");

    let c = f.recover(&settings()).expect("a later start");
    assert_eq!(c.committed(), 60_000);
    assert!(f.exists(&committed.path));
}

fn a_final_commit_interrupted_before_its_moves_is_finished_then_refused(f: &Fixture) {
    let a = f.recover(&settings()).expect("claim");
    let file = f.stage(a.generation(), "last.parquet", Time::MAX);
    f.append(&CommitRecord { seq: 2, generation: a.generation(), ..record(Time::MAX, vec![file.clone()]) });
    assert!(matches!(f.recover(&settings()), Err(CommitError::Final)));
    assert!(f.exists(&file.path) && !f.exists(&file.staged), "the final commit's files are in the table");
}

fn other_settings_are_refused_after_the_pending_moves(f: &Fixture) {
    let a = f.recover(&settings()).expect("claim");
    let file = f.stage(a.generation(), "a.parquet", 60_000);
    f.append(&CommitRecord { seq: 2, generation: a.generation(), ..record(60_000, vec![file.clone()]) });
    let other = Settings { lateness_ms: 10_000, bar_widths_ms: vec![60_000, 300_000], ..settings() };
    let err = f.recover(&other).expect_err("other settings");
    assert_eq!(
        err.to_string(),
        "the lake was written with --lateness 5s --bars 1m; run with the same settings or use a new lake"
    );
    assert!(f.exists(&file.path), "the pending commit was finished first");
}

fn a_lake_written_before_the_bad_tick_rule_is_refused(f: &Fixture) {
    let old = Settings { max_skew_ms: None, ..settings() };
    f.append(&CommitRecord { seq: 1, ..CommitRecord::template(old).for_commit(60_000, BTreeMap::new(), vec![]) });
    let err = f.recover(&settings()).expect_err("the rule would reclassify replayed records");
    assert!(err.to_string().contains("no --max-clock-skew (before bad ticks were quarantined)"), "{err}");
}

fn a_move_never_overwrites_a_file_in_a_table(f: &Fixture) {
    let a = f.recover(&settings()).expect("claim");
    let file = f.stage(a.generation(), "a.parquet", 60_000);
    f.put(&file.path, b"someone else's file");
    let err = f.commit(a.last.as_ref().expect("claim"), 60_000, vec![file.clone()]).expect_err("collision");
    assert!(matches!(&err, CommitError::Collision(path) if *path == file.path), "{err}");
    let kept = f.rt.block_on(async { f.lake.store.get(&f.lake.path(&file.path)).await?.bytes().await }).expect("get");
    assert_eq!(&kept[..], b"someone else's file");
}

fn a_move_interrupted_after_copying_is_finished_on_recovery(f: &Fixture) {
    let a = f.recover(&settings()).expect("claim");
    let file = f.stage(a.generation(), "a.parquet", 60_000);
    f.append(&CommitRecord { seq: 2, generation: a.generation(), ..record(60_000, vec![file.clone()]) });
    // A move copies (S3) or links (local) the file into its table, then removes the staged
    // copy; a crash in between leaves both.
    f.rt.block_on(f.lake.store.copy(&f.lake.path(&file.staged), &f.lake.path(&file.path))).expect("copy");
    f.recover(&settings()).expect("recover");
    assert!(f.exists(&file.path) && !f.exists(&file.staged));
}

/// A case: a name, and the test run on a fresh lake.
type Case = (&'static str, fn(&Fixture));

/// Every case.
/// Iceberg: a crash after the record, with one table's snapshot made and another's not.
/// Recovery appends the missing one, and neither it nor a second recovery appends any table
/// twice.
fn a_crash_between_two_tables_snapshots_is_finished_once(f: &Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = IcebergCatalog::Sqlite(dir.path().join("catalog.sqlite"));
    let settings = Settings { format: TableFormat::Iceberg, ..settings() };
    let open = || {
        f.rt.block_on(IcebergTables::open(&f.lake, &catalog, &Table::all(&settings.bar_widths_ms))).expect("catalog")
    };
    let tables = open();
    let claim = f.rt.block_on(commit::recover(&f.lake, &settings, Some(&tables))).expect("claim").last.expect("claim");
    let trades = f.stage(claim.generation, "a.parquet", 60_000);
    let quarantine = Staged {
        staged: trades.staged.replace("/trades/", "/quarantine/"),
        path: trades.path.replace("trades/", "quarantine/"),
        ..trades.clone()
    };
    f.put(&quarantine.staged, b"abc");
    let record = CommitRecord {
        seq: claim.seq + 1,
        generation: claim.generation,
        settings: settings.clone(),
        ..record(60_000, vec![trades.clone(), quarantine])
    };
    f.append(&record);
    f.rt.block_on(moves::finish(&f.lake, &record.files)).expect("moves");
    let first = CommitRecord { files: vec![trades], ..record.clone() };
    assert_eq!(f.rt.block_on(tables.append(&first)).expect("trades' snapshot"), 1);
    // The crash.
    drop(tables);
    let snapshots = |table: Table| {
        let tables = open();
        let loaded = f.rt.block_on(tables.catalog().load_table(&tables.ident(&table))).expect("table");
        let seqs: Vec<String> = loaded
            .metadata()
            .snapshots()
            .filter_map(|s| s.summary().additional_properties.get(SEQ_PROPERTY).cloned())
            .collect();
        seqs
    };
    for _ in 0..2 {
        f.rt.block_on(commit::recover(&f.lake, &settings, Some(&open()))).expect("recover");
        assert_eq!(snapshots(Table::Trades), vec![record.seq.to_string()], "trades appended once");
        assert_eq!(snapshots(Table::Quarantine), vec![record.seq.to_string()], "quarantine appended by recovery");
        assert!(snapshots(Table::Bars(60_000)).is_empty(), "a table the commit has no file for");
    }
}

const CASES: [Case; 8] = [
    ("recovery", recovery_finishes_the_moves_of_the_newest_commit_and_clears_older_staging),
    ("superseded", a_superseded_run_stops_before_committing_and_loses_nothing),
    ("final", a_final_commit_interrupted_before_its_moves_is_finished_then_refused),
    ("settings", other_settings_are_refused_after_the_pending_moves),
    ("bad-tick-rule", a_lake_written_before_the_bad_tick_rule_is_refused),
    ("collision", a_move_never_overwrites_a_file_in_a_table),
    ("half-move", a_move_interrupted_after_copying_is_finished_on_recovery),
    ("iceberg-between-tables", a_crash_between_two_tables_snapshots_is_finished_once),
];

#[test]
fn every_case_on_a_local_lake() {
    for (name, case) in CASES {
        eprintln!("local: {name}");
        case(&Fixture::local());
    }
}

#[test]
fn every_case_on_an_s3_lake() {
    let Some(s3) = moto("commit") else { return };
    for (name, case) in CASES {
        eprintln!("s3: {name}");
        case(&Fixture::s3(&s3.endpoint, name));
    }
}

/// A local put writes a temporary file beside its target and renames it; a SIGKILL in
/// between leaves the temporary file, which recovery removes. (On S3 an interrupted upload
/// leaves an incomplete multipart upload instead, which the bucket's lifecycle rule aborts.)
#[test]
fn leftover_temporary_files_are_removed() {
    let f = Fixture::local();
    f.put("trades/dt=2025-11-24/hour=14/x.parquet", b"abc");
    let root = f.lake.local.clone().expect("a local lake");
    std::fs::write(root.join("trades/dt=2025-11-24/hour=14/y.parquet#3"), b"half").expect("temp file");
    let recovery = f.recover(&settings()).expect("recover");
    assert_eq!(recovery.discarded, 1);
    assert!(!root.join("trades/dt=2025-11-24/hour=14/y.parquet#3").exists());
    assert!(f.exists("trades/dt=2025-11-24/hour=14/x.parquet"));
}
