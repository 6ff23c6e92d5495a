//! The lake on S3: the job writes through object_store's S3 client to an S3-compatible server
//! started on loopback (moto, installed by .ci/run), with credentials from the environment.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use stockflow::cli::Cli;
use stockflow::job;
use stockflow::kafka::KafkaConfig;
use stockflow::lake::{Lake, LakeOptions, StoreLayer};

mod common;
use common::moto::{CREDENTIALS, credentials_in_process, moto};
use common::read_lake;

fn job(brokers: &str, lake: &str, endpoint: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["-w", "2", "--brokers", brokers, "--drain", "--lake", lake, "--s3-endpoint", endpoint])
        .envs(CREDENTIALS)
        .output()
        .expect("run job")
}

/// Rows of `table` under `s3://bucket/prefix`, read back with pyarrow's own S3 client.
fn rows(endpoint: &str, path: &str) -> usize {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.fs as fs, pyarrow.parquet as pq\n\
             s3 = fs.S3FileSystem(endpoint_override=sys.argv[1], access_key='test', secret_key='test', \
             region='us-east-1', scheme='http')\n\
             print(pq.read_table(sys.argv[2], filesystem=s3).num_rows)",
            endpoint.trim_start_matches("http://"),
            path,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "reading {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("row count")
}

#[test]
fn job_lands_every_record_in_an_s3_lake() {
    let Some(s3) = moto("lake") else { return };
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("trades", 3, 1).expect("topic");
    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().expect("producer");
    let t0 = 1_763_994_600_000i64;
    let records = 5_000;
    for i in 0..records {
        let symbol = ["AAPL", "MSFT", "BINANCE:BTCUSDT"][i % 3];
        let payload = if i % 500 == 7 {
            "{\"s\":".to_owned()
        } else {
            format!(r#"{{"s":"{symbol}","p":{}.5,"t":{},"v":{}}}"#, 100 + i % 7, t0 + i as i64 * 37, 1 + i % 9)
        };
        producer.send(BaseRecord::to("trades").key(symbol).payload(&payload)).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let out = job(&mock.bootstrap_servers(), "s3://lake/run1", &s3.endpoint);
    assert!(out.status.success(), "job: {}", String::from_utf8_lossy(&out.stderr));
    let landed = rows(&s3.endpoint, "lake/run1/trades") + rows(&s3.endpoint, "lake/run1/quarantine");
    assert_eq!(landed, records);
    assert!(rows(&s3.endpoint, "lake/run1/bars_1m") > 0);
}

#[test]
fn missing_bucket_is_one_clear_error() {
    let Some(s3) = moto("other") else { return };
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("trades", 1, 1).expect("topic");
    let out = job(&mock.bootstrap_servers(), "s3://no-such-bucket/x", &s3.endpoint);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors, ["error: cannot access lake s3://no-such-bucket/x: the bucket does not exist"], "{stderr}");
}

/// A store that fails a share of requests: before they reach the server, or after it
/// performed them (the answer lost), as a flaky network does.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn ObjectStore>,
    rng: Mutex<fastrand::Rng>,
    rate: f64,
    /// This request fails whatever the dice say, so early runs surely fail mid-way.
    fail_at: Option<usize>,
    calls: AtomicUsize,
    injected: Arc<AtomicUsize>,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

impl Flaky {
    async fn wrap<T>(&self, op: impl std::future::Future<Output = object_store::Result<T>>) -> object_store::Result<T> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = {
            let mut rng = self.rng.lock().expect("rng");
            (rng.f64() < self.rate || self.fail_at == Some(call)).then(|| rng.bool())
        };
        let error = || object_store::Error::Generic { store: "flaky", source: "injected failure".into() };
        match fault {
            None => op.await,
            Some(before) => {
                if !before {
                    let _ = op.await;
                }
                self.injected.fetch_add(1, Ordering::SeqCst);
                Err(error())
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.wrap(self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.wrap(self.inner.get_opts(location, options)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.wrap(self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.wrap(self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.wrap(self.inner.rename_opts(from, to, options)).await
    }
}

/// Sets the test credentials for in-process S3 clients (once, before any client reads them).
#[test]
fn injected_store_failures_lose_and_duplicate_nothing() {
    let Some(s3) = moto("flaky") else { return };
    credentials_in_process();
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("trades", 3, 1).expect("topic");
    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().expect("producer");
    let mut rng = fastrand::Rng::with_seed(3);
    let t0 = 1_763_994_600_000i64;
    let records = 20_000;
    for i in 0..records {
        let symbol = ["AAPL", "MSFT", "BINANCE:BTCUSDT", "TSLA"][i % 4];
        // 12 minutes of event time, with some trades up to two minutes late.
        let late = if rng.u8(..20) == 0 { rng.i64(0..120_000) } else { 0 };
        let payload = if i % 700 == 3 {
            "{\"p\":1}".to_owned()
        } else {
            format!(r#"{{"s":"{symbol}","p":{}.25,"t":{},"v":{}}}"#, 100 + i % 13, t0 + i as i64 * 37 - late, 1 + i % 5)
        };
        producer.send(BaseRecord::to("trades").key(symbol).payload(&payload)).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    let injected = Arc::new(AtomicUsize::new(0));
    let config = |location: &str, attempt: Option<usize>| {
        let counter = Arc::clone(&injected);
        let layer: Option<StoreLayer> = attempt.map(|attempt| {
            let layer: StoreLayer = Arc::new(move |inner| {
                let mut rng = fastrand::Rng::with_seed(attempt as u64);
                let fail_at = (attempt < 5).then(|| rng.usize(3..60));
                Arc::new(Flaky {
                    inner,
                    rng: Mutex::new(rng),
                    rate: 0.02,
                    fail_at,
                    calls: AtomicUsize::new(0),
                    injected: Arc::clone(&counter),
                }) as Arc<dyn ObjectStore>
            });
            layer
        });
        let mut cfg =
            // Every table published at every commit: with hourly files a run that fails
            // anywhere in the hour would have to start the hour again.
            Cli::parse_from(["stockflow", "--drain", "-w", "2", "--publish", "trades=1m,quarantine=1m", "--lake", location])
                .job
                .config()
                .expect("cfg");
        cfg.kafka = kafka.clone();
        cfg.lake_options = LakeOptions { s3_endpoint: Some(s3.endpoint.clone()), layer };
        cfg
    };

    // Every failure stops the job; each restart recovers from the last commit and goes on.
    let mut failures = Vec::new();
    loop {
        let cfg = config("s3://flaky/lake", Some(failures.len()));
        match job::run(cfg, job::Controls::default(), rt.handle().clone()) {
            Ok(_) => break,
            // The final commit was stored but a later step failed: this start finished its
            // moves and then refused to extend the finalised lake, which is complete.
            Err(job::JobError::Commit(stockflow::commit::CommitError::Final)) => break,
            Err(e) => failures.push(e.to_string()),
        }
        assert!(failures.len() < 300, "no progress through injected failures: {:?}", &failures[failures.len() - 8..]);
    }
    job::run(config("s3://flaky/clean", None), job::Controls::default(), rt.handle().clone()).expect("clean run");

    let open = |location: &str| {
        Lake::open_with(location, &LakeOptions { s3_endpoint: Some(s3.endpoint.clone()), layer: None }).expect("lake")
    };
    let got = rt.block_on(read_lake(&open("s3://flaky/lake"), &[60_000]));
    let want = rt.block_on(read_lake(&open("s3://flaky/clean"), &[60_000]));
    eprintln!(
        "s3 faults: {} injected, {} failed runs before the one that finished; {} records, {} bar rows",
        injected.load(Ordering::SeqCst),
        failures.len(),
        got.trades.len() + got.quarantine.len(),
        got.bars.len()
    );
    assert!(failures.len() >= 3, "the failures should have stopped the job: {failures:?}");
    assert_eq!(want.trades.len() + want.quarantine.len(), records);
    assert_eq!(got.duplicates, 0, "duplicated rows");
    assert_eq!(got.trades, want.trades);
    assert_eq!(got.quarantine, want.quarantine);
    let rows = |l: &common::Landed| {
        let mut v: Vec<String> = l.bars.iter().map(|(w, b)| format!("{w} {b:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(rows(&got), rows(&want), "bar rows differ");
}

/// What a reader of an S3 lake may see during a commit: the record is stored, then its files
/// appear (a move is a copy and a delete, 16 at a time). Measures the window from the record
/// to the last of 100 files, and checks every file arrived whole and staging is empty.
#[test]
fn a_commit_of_100_files_appears_within_a_measured_window() {
    use object_store::ObjectStoreExt;
    use stockflow::commit::{self, CommitRecord, log, moves, staging_dir};
    let Some(s3) = moto("window") else { return };
    credentials_in_process();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let options = LakeOptions { s3_endpoint: Some(s3.endpoint.clone()), layer: None };
    let lake = Lake::open_with("s3://window/lake", &options).expect("lake");
    let settings = Cli::parse_from(["stockflow"]).job.config().expect("cfg").settings();
    let claim = rt.block_on(commit::recover(&lake, &settings, None)).expect("claim").last.expect("claim record");
    let body = vec![7u8; 64 * 1024];
    let files: Vec<_> = (0..100)
        .map(|i| {
            let path = format!("trades/dt=2025-11-24/hour=14/60000-g{}-w000-{i:06}.parquet", claim.generation);
            let staged = format!("_stockflow/staging/{}/{path}", staging_dir(claim.generation));
            rt.block_on(lake.store.put(&lake.path(&staged), PutPayload::from(body.clone()))).expect("stage");
            stockflow::lake::writer::Staged {
                epoch: 60_000,
                staged,
                path,
                rows: 1,
                bytes: body.len() as u64,
                replace: false,
                hour: 0,
            }
        })
        .collect();
    let record = CommitRecord {
        seq: claim.seq + 1,
        generation: claim.generation,
        ..claim.for_commit(60_000, claim.partitions.clone(), files.clone())
    };
    let started = std::time::Instant::now();
    rt.block_on(log::append(&lake, &record)).expect("record");
    let stored = started.elapsed();
    rt.block_on(moves::finish(&lake, &record.files)).expect("moves");
    let window = started.elapsed() - stored;
    eprintln!(
        "s3 commit window: record stored in {} ms, then 100 files moved in {} ms ({} at a time)",
        stored.as_millis(),
        window.as_millis(),
        moves::PARALLEL_MOVES
    );
    for file in &files {
        let meta = rt.block_on(lake.store.head(&lake.path(&file.path))).expect("moved");
        assert_eq!(meta.size, file.bytes);
    }
    let left: Vec<_> = rt
        .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(lake.store.list(Some(&lake.path("_stockflow/staging")))))
        .expect("list");
    assert!(left.is_empty(), "staging still holds {} objects", left.len());
}
