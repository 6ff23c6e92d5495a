//! Idleness across processes: a two-process cluster (`-n 2 -w 1`) on loopback where only the
//! partition of process 0 receives trades. Process 1's worker is silent the whole time; it
//! follows the cluster's event time through the sources' broadcast, so commits keep coming
//! while trades arrive; a drain afterwards finishes the lake, which equals the reference.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataflows::TimeConfig;
use dataflows::bars::BarsConfig;
use dataflows::memlog::MemLog;
use dataflows::reference::{diff_bars, expected};
use rdkafka::mocking::MockCluster;
use stockflow::kafka::KafkaConfig;
use stockflow::lake::Lake;
use stockflow::simulate::topic::{Keys, TopicShape, generate, produce};

mod common;
use common::{commits, read_lake};

fn job(kafka: &KafkaConfig, lake: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stockflow"));
    cmd.args(["--brokers", &kafka.brokers, "--topic", &kafka.topic, "--lake"])
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn wait_ok(mut child: Child, what: &str) {
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
    }
    assert!(status.success(), "{what} failed: {err}");
}

#[test]
fn a_silent_process_follows_the_cluster_and_commits_keep_coming() {
    // All trades in partition 0 (read by process 0); partition 1 (process 1) stays empty.
    let shape = TopicShape { records: 9_000, partitions: 1, keys: Keys::Uniform, symbols: 30, ..Default::default() };
    let mut log = generate(&shape);
    log.partitions.push(Vec::new());
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic: "trades".into(), properties: vec![] };
    mock.create_topic(&kafka.topic, 2, 1).expect("topic");

    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port())
        .collect();
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).expect("hosts");
    let hosts = hosts.to_string_lossy().into_owned();
    let logs: Vec<std::path::PathBuf> = (0..2).map(|p| dir.path().join(format!("process-{p}.log"))).collect();
    let procs: Vec<Child> = (0..2)
        .map(|p| {
            let log = std::fs::File::create(&logs[p]).expect("log file");
            let p = p.to_string();
            job(&kafka, &lake, &["-w", "1", "-n", "2", "-p", &p, "-h", &hosts, "--idle-timeout", "1s"])
                .stderr(log)
                .spawn()
                .expect("spawn")
        })
        .collect();
    let logs_of = || logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect::<Vec<_>>().join("\n");

    // Trades arrive in three rounds of twenty minutes of event time; each round is committed
    // while process 1 hears nothing at all.
    let third = log.partitions[0].len() / 3;
    for round in 0..3 {
        let part =
            MemLog { partitions: vec![log.partitions[0][round * third..(round + 1) * third].to_vec(), Vec::new()] };
        let before = commits(&lake);
        produce(&kafka, &shape, &part).expect("produce");
        let deadline = Instant::now() + Duration::from_secs(120);
        while commits(&lake) <= before {
            if Instant::now() > deadline {
                for child in &procs {
                    let _ = Command::new("kill").args(["-KILL", &child.id().to_string()]).status();
                }
                panic!("no commit after round {round}: the silent process holds the frontier\n{}", logs_of());
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
    for child in &procs {
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
    for (i, child) in procs.into_iter().enumerate() {
        wait_ok(child, &format!("process {i}"));
    }

    // A drain finishes what the live run left open; the whole lake equals the reference.
    log.partitions[0].truncate(3 * third);
    wait_ok(job(&kafka, &lake, &["-w", "1", "--drain"]).spawn().expect("drain"), "drain");
    let bars = BarsConfig::default();
    let want = expected(&log, TimeConfig::default(), &bars);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let landed = rt.block_on(read_lake(&Lake::open(&lake.to_string_lossy()).expect("lake"), &bars.widths));
    assert_eq!(landed.duplicates, 0, "records landed twice");
    assert_eq!(landed.trades, want.trades);
    diff_bars(&landed.bars, &want.bars).unwrap_or_else(|d| panic!("bars differ from the reference:\n{d}"));
    drop(mock);
}
