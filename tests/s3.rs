//! The lake on S3: the job writes through object_store's S3 client to an S3-compatible server
//! started on loopback (moto, installed by .ci/run), with credentials from the environment.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const CREDENTIALS: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")];

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto's S3 server on a free port and creates `bucket`; `None` where moto is not
/// installed outside CI (CI installs it and must run this test).
fn moto(bucket: &str) -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(std::env::var_os("CI").is_none(), "moto is required in CI");
        return None;
    };
    // Werkzeug announces the address on stderr once it is accepting connections.
    let stderr = child.stderr.take().expect("stderr");
    let mut ready = false;
    for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("Running on") {
            ready = true;
            break;
        }
    }
    if !ready {
        let _ = child.kill();
        assert!(std::env::var_os("CI").is_none(), "moto is required in CI (pip install -r tests/requirements.txt)");
        eprintln!("skipping: moto not installed");
        return None;
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let made = Command::new("python3")
        .args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
            &endpoint,
            bucket,
        ])
        .status()
        .expect("python3");
    assert!(made.success(), "creating the bucket");
    Some(Moto { child, endpoint })
}

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
