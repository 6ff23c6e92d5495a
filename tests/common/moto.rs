//! An S3- and Glue-compatible server for tests: moto on loopback (installed by .ci/run), with
//! a bucket and the test credentials, and Glue's optimistic-concurrency check on UpdateTable
//! (tests/moto_server.py).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// The credentials moto accepts, as the S3 client reads them from the environment.
pub const CREDENTIALS: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")];

/// A running moto server, stopped when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto's server (S3 and Glue) on a free port and creates `bucket`; `None` where moto is not
/// installed outside CI (CI installs it and must run this test).
pub fn moto(bucket: &str) -> Option<Moto> {
    moto_with(bucket, &[])
}

/// As [`moto`], with `env` in the server's environment (tests/moto_server.py's fault knobs).
pub fn moto_with(bucket: &str, env: &[(&str, &str)]) -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto_server.py"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(env.iter().copied())
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

/// Sets the test credentials in this process, once, for in-process S3 lakes.
pub fn credentials_in_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: every test of this binary sets the same values, under `Once`, before it opens
    // an S3 lake; nothing else reads or writes these variables concurrently.
    ONCE.call_once(|| unsafe {
        for (k, v) in CREDENTIALS {
            std::env::set_var(k, v);
        }
    });
}
