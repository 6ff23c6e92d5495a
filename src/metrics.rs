//! Prometheus metrics of the job and of ingest, and the `/metrics` endpoint serving them.
//!
//! Every figure is a cheap atomic updated where the work happens (the source per record
//! batch, the sink per row batch, the commit task per commit); the endpoint encodes the
//! registry on each scrape, so a scrape never touches the dataflow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label, e.g. `table="trades"`.
pub type Label = [(&'static str, String); 1];

fn label(key: &'static str, value: impl Into<String>) -> Label {
    [(key, value.into())]
}

/// The job's metrics (one set per process; every worker adds to it).
#[derive(Clone, Debug)]
pub struct JobMetrics {
    /// Kafka records read, replayed ones included.
    pub records: Counter,
    /// Rows written to `trades`.
    pub trades: Counter,
    /// Rows written to `quarantine`, by reason.
    pub quarantined: Family<Label, Counter>,
    /// Late trades written.
    pub late: Counter,
    /// Bar rows written, by table.
    pub bars: Family<Label, Counter>,
    /// Bar rows that revise an earlier version of their bar.
    pub revisions: Counter,
    /// Rows written to `gaps`.
    pub gap_rows: Counter,
    /// Gaps that arrived beyond the revision horizon of every bar they overlap (stored, flag
    /// nothing).
    pub gaps_beyond_horizon: Counter,
    /// Parquet files stored (staged for their commit), by table.
    pub files: Family<Label, Counter>,
    /// Bytes of those files, by table.
    pub bytes: Family<Label, Counter>,
    /// Commits written.
    pub commits: Counter,
    /// Time to write a commit record and move its files.
    pub commit_seconds: Histogram,
    /// The newest commit point, event-time ms.
    pub last_commit: Gauge,
    /// Wall clock minus the dataflow's event-time frontier, seconds.
    pub frontier_lag: Gauge<f64, AtomicU64>,
    /// Records between each partition's position and its high watermark.
    pub consumer_lag: Family<Label, Gauge>,
    /// Partitions each worker reads.
    pub assigned: Family<Label, Gauge>,
    /// Partitions each worker has paused because they run ahead in event time.
    pub paused: Family<Label, Gauge>,
    /// The same, per partition, for the progress line (the family cannot be iterated).
    lags: Arc<std::sync::Mutex<std::collections::BTreeMap<i32, i64>>>,
    /// The frontier, event-time ms (0: not yet known).
    frontier_ms: Arc<AtomicI64>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            records: Counter::default(),
            trades: Counter::default(),
            quarantined: Family::default(),
            late: Counter::default(),
            bars: Family::default(),
            revisions: Counter::default(),
            gap_rows: Counter::default(),
            gaps_beyond_horizon: Counter::default(),
            files: Family::default(),
            bytes: Family::default(),
            commits: Counter::default(),
            // 5 ms .. ~40 s: a local commit takes milliseconds, an S3 one with many moves seconds.
            commit_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            last_commit: Gauge::default(),
            frontier_lag: Gauge::default(),
            consumer_lag: Family::default(),
            assigned: Family::default(),
            paused: Family::default(),
            lags: Arc::default(),
            frontier_ms: Arc::default(),
        }
    }
}

impl JobMetrics {
    /// Adds the metrics to `registry` under `stockflow_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("stockflow");
        r.register("records_consumed", "Kafka records read (replayed ones included)", self.records.clone());
        r.register("trades", "Rows written to the trades table", self.trades.clone());
        r.register("quarantined", "Rows written to the quarantine table, by reason", self.quarantined.clone());
        r.register("late_trades", "Late trades written", self.late.clone());
        r.register("bars", "Bar rows written, by table", self.bars.clone());
        r.register("bar_revisions", "Bar rows revising an earlier version of their bar", self.revisions.clone());
        r.register("gaps", "Rows written to the gaps table", self.gap_rows.clone());
        r.register(
            "gaps_beyond_horizon",
            "Gaps that arrived beyond the revision horizon of every bar they overlap (stored, flag nothing)",
            self.gaps_beyond_horizon.clone(),
        );
        r.register("files_written", "Parquet files stored for commit, by table", self.files.clone());
        r.register("bytes_written", "Bytes of Parquet stored for commit, by table", self.bytes.clone());
        r.register("commits", "Commits written", self.commits.clone());
        r.register(
            "commit_duration_seconds",
            "Time to write a commit record and move its files",
            self.commit_seconds.clone(),
        );
        r.register("last_commit_ms", "The newest commit point (event time, ms)", self.last_commit.clone());
        r.register(
            "frontier_lag_seconds",
            "Wall clock minus the dataflow's event-time frontier",
            self.frontier_lag.clone(),
        );
        r.register("consumer_lag", "Records between a partition's position and its end", self.consumer_lag.clone());
        r.register("partitions_assigned", "Partitions a worker reads", self.assigned.clone());
        r.register(
            "partitions_paused",
            "Partitions a worker has paused because they run ahead in event time",
            self.paused.clone(),
        );
    }

    /// Sets how many partitions `worker` reads and how many of them are paused.
    pub fn partitions(&self, worker: usize, assigned: usize, paused: usize) {
        self.assigned.get_or_create(&label("worker", worker.to_string())).set(assigned as i64);
        self.paused.get_or_create(&label("worker", worker.to_string())).set(paused as i64);
    }

    /// Counts a quarantined row.
    pub fn quarantine(&self, reason: &str, n: u64) {
        self.quarantined.get_or_create(&label("reason", reason)).inc_by(n);
    }

    /// Counts gap rows, `beyond` of them beyond the revision horizon.
    pub fn gaps(&self, rows: u64, beyond: u64) {
        self.gap_rows.inc_by(rows);
        self.gaps_beyond_horizon.inc_by(beyond);
    }

    /// Counts bar rows of `table`.
    pub fn bar_rows(&self, table: &str, n: u64) {
        self.bars.get_or_create(&label("table", table)).inc_by(n);
    }

    /// Counts a file of `table` stored.
    pub fn file(&self, table: &str, bytes: u64) {
        self.files.get_or_create(&label("table", table)).inc();
        self.bytes.get_or_create(&label("table", table)).inc_by(bytes);
    }

    /// Records a commit.
    pub fn commit(&self, point: u64, took: Duration) {
        self.commits.inc();
        self.commit_seconds.observe(took.as_secs_f64());
        if point != u64::MAX {
            self.last_commit.set(point.min(i64::MAX as u64) as i64);
        }
    }

    /// Sets a partition's consumer lag.
    pub fn lag(&self, partition: i32, records: i64) {
        self.consumer_lag.get_or_create(&label("partition", partition.to_string())).set(records);
        self.lags.lock().unwrap_or_else(|e| e.into_inner()).insert(partition, records);
    }

    /// Total consumer lag over the partitions seen.
    pub fn total_lag(&self) -> i64 {
        self.lags.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    /// Sets the event-time frontier (ms); ignores the end-of-input frontier.
    pub fn frontier(&self, event_ms: u64) {
        if event_ms >= i64::MAX as u64 {
            return;
        }
        self.frontier_ms.fetch_max(event_ms as i64, Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_millis();
        self.frontier_lag.set((now - self.frontier_ms.load(Ordering::Relaxed)) as f64 / 1000.0);
    }

    /// The newest event-time frontier seen (ms), if any.
    pub fn frontier_ms(&self) -> Option<i64> {
        Some(self.frontier_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }
}

/// Ingest's metrics.
#[derive(Clone, Debug, Default)]
pub struct IngestMetrics {
    /// Websocket frames received.
    pub frames: Counter,
    /// Trade records handed to the producer.
    pub records: Counter,
    /// Records the broker acknowledged.
    pub delivered: Counter,
    /// Records the producer failed to deliver.
    pub failed: Counter,
    /// Websocket (re)connections after the first.
    pub reconnects: Counter,
    /// Trade frames repeated byte for byte on their connection within the duplicate window.
    pub duplicate_frames: Counter,
    /// Intervals the feed was not received, each written as one gap record per symbol.
    pub gaps: Counter,
    /// Records waiting between the websocket and the producer.
    pub queue_depth: Gauge,
}

impl IngestMetrics {
    /// Adds the metrics to `registry` under `stockflow_ingest_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("stockflow_ingest");
        r.register("frames", "Websocket frames received", self.frames.clone());
        r.register("records", "Trade records handed to the Kafka producer", self.records.clone());
        r.register("delivered", "Records the broker acknowledged", self.delivered.clone());
        r.register("failed", "Records the producer failed to deliver", self.failed.clone());
        r.register("reconnects", "Websocket reconnections", self.reconnects.clone());
        r.register(
            "duplicate_frames",
            "Trade frames repeated byte for byte on their connection within the duplicate window",
            self.duplicate_frames.clone(),
        );
        r.register(
            "gaps",
            "Intervals the feed was not received (one gap record per subscribed symbol each)",
            self.gaps.clone(),
        );
        r.register(
            "queue_depth",
            "Events (mostly frames) waiting in the queue between the socket and the producer",
            self.queue_depth.clone(),
        );
    }
}

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// The `/metrics` endpoint; serves until dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `registry` in the Prometheus text format on `addr` (port 0: any free port).
    pub fn start(addr: SocketAddr, registry: Registry) -> Result<Self, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError { addr, reason: e.to_string() })?;
        let bound =
            server.server_addr().to_ip().ok_or_else(|| MetricsError { addr, reason: "not an IP socket".into() })?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = if request.url() == "/metrics" || request.url().starts_with("/metrics?") {
                        let mut body = String::new();
                        let _ = encode(&mut body, &registry);
                        let content_type = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .expect("a valid header");
                        tiny_http::Response::from_string(body).with_header(content_type)
                    } else {
                        tiny_http::Response::from_string("stockflow: metrics are at /metrics\n").with_status_code(404)
                    };
                    let _ = request.respond(response);
                }
            })
            .map_err(|e| MetricsError { addr, reason: e.to_string() })?;
        tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
        Ok(MetricsServer { server, addr: bound, thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_every_series_with_its_value() {
        let metrics = JobMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.records.inc_by(7);
        metrics.quarantine("bad_price", 2);
        metrics.file("trades", 1000);
        metrics.commit(60_000, Duration::from_millis(12));
        metrics.lag(3, 42);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry).unwrap();
        let body = scrape(server.addr(), "/metrics");
        for line in [
            "stockflow_records_consumed_total 7",
            "stockflow_quarantined_total{reason=\"bad_price\"} 2",
            "stockflow_files_written_total{table=\"trades\"} 1",
            "stockflow_bytes_written_total{table=\"trades\"} 1000",
            "stockflow_commits_total 1",
            "stockflow_commit_duration_seconds_count 1",
            "stockflow_last_commit_ms 60000",
            "stockflow_consumer_lag{partition=\"3\"} 42",
        ] {
            assert!(body.lines().any(|l| l == line), "no `{line}` in\n{body}");
        }
        assert!(scrape(server.addr(), "/").starts_with("HTTP/1.1 404"));
    }

    fn scrape(addr: SocketAddr, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}
