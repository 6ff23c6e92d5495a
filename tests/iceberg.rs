//! Iceberg tables beyond the commit path: snapshot expiry (`stockflow maintain`), commits
//! racing another writer of the same catalog, an existing table of another shape or of
//! another lake; on the SQLite catalog and on a Glue catalog (moto's, with an S3 lake).

use std::process::Command;

use stockflow::commit::{CommitRecord, Settings};
use stockflow::iceberg::{IcebergCatalog, IcebergError, IcebergTables, SEQ_PROPERTY};
use stockflow::lake::writer::Staged;
use stockflow::lake::{Lake, LakeOptions, Table, TableFormat};

mod common;

use common::moto::{Moto, credentials_in_process, moto_with};

/// A lake with its catalog, and a runtime.
struct Fixture {
    dir: tempfile::TempDir,
    lake: Lake,
    catalog: IcebergCatalog,
    rt: tokio::runtime::Runtime,
    /// The S3 and Glue server of a Glue fixture.
    server: Option<Moto>,
}

impl Fixture {
    /// A local lake and its default SQLite catalog.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let catalog = IcebergCatalog::resolve(None, &dir.path().to_string_lossy()).expect("catalog");
        Fixture { dir, lake, catalog, rt: runtime(), server: None }
    }

    /// An S3 lake in `bucket` and a Glue catalog, both on moto; `None` where moto is not
    /// installed outside CI.
    fn glue(bucket: &str) -> Option<Self> {
        Self::glue_with(bucket, &[])
    }

    /// As [`Fixture::glue`], with `env` for the server (its fault knobs).
    fn glue_with(bucket: &str, env: &[(&str, &str)]) -> Option<Self> {
        let server = moto_with(bucket, env)?;
        credentials_in_process();
        let options = LakeOptions { s3_endpoint: Some(server.endpoint.clone()), layer: None };
        let lake = Lake::open_with(&format!("s3://{bucket}/lake"), &options).expect("lake");
        let catalog = IcebergCatalog::Glue { endpoint: Some(server.endpoint.clone()) };
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Fixture { dir, lake, catalog, rt: runtime(), server: Some(server) })
    }

    fn open(&self) -> IcebergTables {
        self.rt.block_on(IcebergTables::open(&self.lake, &self.catalog, &[Table::Trades])).expect("tables")
    }

    /// Commit record `seq` naming one trades file (in place already: appends do not read it).
    fn record(&self, seq: u64) -> CommitRecord {
        let path = format!("trades/data/dt=2025-11-24/hour=14/{seq:013}-g1-w000-000000.parquet");
        let file = Staged {
            epoch: seq * 60_000,
            staged: String::new(),
            path,
            rows: 10,
            bytes: 100,
            replace: false,
            hour: 489_999,
        };
        let settings = Settings { format: TableFormat::Iceberg, ..common::settings() };
        CommitRecord {
            seq,
            generation: 1,
            ..CommitRecord::template(settings).for_commit(seq * 60_000, Default::default(), vec![file])
        }
    }

    fn snapshots(&self, tables: &IcebergTables) -> Vec<String> {
        let table = self.rt.block_on(tables.catalog().load_table(&tables.ident(&Table::Trades))).expect("table");
        table
            .metadata()
            .snapshots()
            .filter_map(|s| s.summary().additional_properties.get(SEQ_PROPERTY).cloned())
            .collect()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn maintain_expires_old_snapshots_and_keeps_the_rows() {
    let f = Fixture::new();
    let tables = f.open();
    for seq in 1..=5 {
        assert_eq!(f.rt.block_on(tables.append(&f.record(seq))).expect("append"), 1);
    }
    assert_eq!(f.snapshots(&tables).len(), 5);
    let maintain = |older_than: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["maintain", "--lake", &f.dir.path().to_string_lossy(), "--expire-snapshots-older-than", older_than])
            .output()
            .expect("maintain");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Nothing is a week old.
    assert!(maintain("7d").contains("trades: 0 snapshots expired"));
    assert_eq!(f.snapshots(&tables).len(), 5);
    // Everything is older than a millisecond: all but the current snapshot go, with every
    // row kept.
    assert!(maintain("1ms").contains("trades: 4 snapshots expired"));
    assert_eq!(f.snapshots(&tables), vec!["5".to_owned()]);
    let table = f.rt.block_on(tables.catalog().load_table(&tables.ident(&Table::Trades))).expect("table");
    let summary = &table.metadata().current_snapshot().expect("current").summary().additional_properties;
    assert_eq!(summary.get("total-records").map(String::as_str), Some("50"), "every appended file is still there");

    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["maintain", "--lake", &dir.path().to_string_lossy(), "--expire-snapshots-older-than", "7d"])
        .output()
        .expect("maintain");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no iceberg catalog at sqlite:"));
}

/// Another writer of the catalog (an engine's compaction, `stockflow maintain`) commits to a
/// table while stockflow appends: the catalog's conflict check fails the stale commit, which
/// is retried on the new metadata, so no append is lost and none is doubled.
#[test]
fn appends_racing_another_writer_are_retried_and_none_is_lost() {
    racing_appends(&Fixture::new());
}

/// The same race on Glue: its UpdateTable refuses a stale VersionId, the append is retried.
#[test]
fn appends_racing_another_writer_on_glue_are_retried_and_none_is_lost() {
    let Some(f) = Fixture::glue("race") else { return };
    racing_appends(&f);
}

/// Glue refuses commits as stale (ConcurrentModificationException, injected by the server
/// as if another writer had just committed): each append is retried on fresh metadata and
/// lands exactly once.
#[test]
fn glue_commit_conflicts_are_retried_and_land_once() {
    let Some(f) = Fixture::glue_with("conflicts", &[("MOTO_GLUE_CONFLICTS", "3")]) else { return };
    let tables = f.open();
    for seq in 1..=4 {
        assert_eq!(f.rt.block_on(tables.append(&f.record(seq))).expect("append despite conflicts"), 1);
        assert_eq!(f.rt.block_on(tables.append(&f.record(seq))).expect("again"), 0, "appended once");
    }
    let mut seqs = f.snapshots(&tables);
    seqs.sort();
    assert_eq!(seqs, ["1", "2", "3", "4"], "one snapshot per append");
}

fn racing_appends(f: &Fixture) {
    let (ours, theirs) = (f.open(), f.open());
    for seq in 1..=20 {
        let record = f.record(seq);
        let (appended, expired) =
            f.rt.block_on(async { tokio::join!(ours.append(&record), theirs.expire_snapshots(i64::MAX, 3)) });
        assert_eq!(appended.expect("append despite the other writer"), 1);
        expired.expect("the other writer's commit");
    }
    let seqs = f.snapshots(&ours);
    assert!(seqs.len() <= 3 + 1, "expiry kept its last snapshots: {seqs:?}");
    let table = f.rt.block_on(ours.catalog().load_table(&ours.ident(&Table::Trades))).expect("table");
    let summary = &table.metadata().current_snapshot().expect("current").summary().additional_properties;
    assert_eq!(summary.get(SEQ_PROPERTY).map(String::as_str), Some("20"));
    assert_eq!(summary.get("total-records").map(String::as_str), Some("200"));
}

#[test]
fn an_existing_table_of_another_shape_is_refused() {
    another_shape_is_refused(&Fixture::new());
}

#[test]
fn an_existing_glue_table_of_another_shape_is_refused() {
    let Some(f) = Fixture::glue("shape") else { return };
    another_shape_is_refused(&f);
}

fn another_shape_is_refused(f: &Fixture) {
    // A table named trades holding bar columns.
    let tables = f.rt.block_on(IcebergTables::open(&f.lake, &f.catalog, &[])).expect("catalog");
    let schema = stockflow::iceberg::schema::iceberg_schema(&Table::Bars(60_000)).expect("schema");
    let creation = iceberg::TableCreation::builder()
        .name("trades".into())
        .location(format!("{}/trades", f.lake.url()))
        .schema(schema)
        .build();
    let namespace = iceberg::NamespaceIdent::new("stockflow".into());
    f.rt.block_on(tables.catalog().create_table(&namespace, creation)).expect("create");
    let err = f.rt.block_on(IcebergTables::open(&f.lake, &f.catalog, &[Table::Trades])).expect_err("refused");
    assert!(matches!(err, IcebergError::Incompatible { .. }), "{err}");
    assert!(err.to_string().starts_with("iceberg table trades has an incompatible schema"), "{err}");
}

/// Tables that do not belong to the lake: stored elsewhere, or holding commits the lake does
/// not have (it was deleted and started again while the catalog kept its tables). Appending
/// would skip the lake's own commits as done; the run is refused with one line instead.
#[test]
fn tables_of_another_lake_or_history_are_refused() {
    let Some(f) = Fixture::glue("foreign") else { return };
    let tables = f.open();
    assert_eq!(f.rt.block_on(tables.append(&f.record(3))).expect("append"), 1);
    // The lake's log has no commit 3.
    let err = f.rt.block_on(tables.check_history(Some(2))).expect_err("a table ahead of the lake");
    assert!(matches!(err, IcebergError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("holds commit 3 and the lake's newest commit is 2"), "{err}");
    assert!(f.rt.block_on(tables.check_history(Some(3))).is_ok());

    // The same catalog opened for a lake elsewhere.
    let options = LakeOptions { s3_endpoint: f.server.as_ref().map(|s| s.endpoint.clone()), layer: None };
    let elsewhere = Lake::open_with("s3://foreign/other", &options).expect("lake");
    let err = f.rt.block_on(IcebergTables::open(&elsewhere, &f.catalog, &[Table::Trades])).expect_err("foreign");
    // Its metadata is outside this lake, which the lake's storage does not read.
    assert!(err.to_string().contains("trades/metadata/"), "{err}");
    assert!(err.to_string().contains("is outside the lake s3://foreign/other"), "{err}");
}

/// `stockflow catalog --table-format iceberg --create-in glue:…` creates the tables the job
/// writes (UTC timestamps, hourly partitions) ahead of its first run, and writes the
/// database, views and queries but no Hive DDL.
#[test]
fn the_catalog_command_creates_the_tables_in_glue() {
    let Some(f) = Fixture::glue("created") else { return };
    let endpoint = f.server.as_ref().map(|s| s.endpoint.clone()).expect("server");
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["catalog", "--table-format", "iceberg", "--location", "s3://created/lake", "--bars", "1m,5m"])
        .args(["--create-in", &format!("glue:{endpoint}"), "--s3-endpoint", &endpoint])
        .args(["--out", &f.dir.path().to_string_lossy()])
        .envs(common::moto::CREDENTIALS)
        .output()
        .expect("catalog");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 iceberg tables at s3://created/lake in glue:"));
    assert!(f.dir.path().join("glue/database.json").is_file());
    assert!(f.dir.path().join("athena/views/bars_1m_latest.sql").is_file());
    assert!(!f.dir.path().join("athena/ddl").exists(), "no Hive DDL for Iceberg tables");

    let tables = f.rt.block_on(IcebergTables::connect(&f.lake, &f.catalog)).expect("catalog");
    let mut names: Vec<String> =
        f.rt.block_on(tables.catalog().list_tables(&iceberg::NamespaceIdent::new("stockflow".into())))
            .expect("tables")
            .into_iter()
            .map(|t| t.name().to_owned())
            .collect();
    names.sort();
    assert_eq!(names, ["bars_1m", "bars_5m", "gaps", "quarantine", "trades"]);
    let trades = f.rt.block_on(tables.catalog().load_table(&tables.ident(&Table::Trades))).expect("trades");
    let ts = trades.metadata().current_schema().field_by_name("trade_ts").expect("trade_ts");
    assert_eq!(ts.field_type.to_string(), "timestamptz");
    let spec = trades.metadata().default_partition_spec();
    assert_eq!(spec.fields()[0].transform, iceberg::spec::Transform::Hour);
    // The job takes the tables as they are.
    f.rt.block_on(IcebergTables::open(&f.lake, &f.catalog, &Table::all(&[60_000, 300_000]))).expect("compatible");
}
