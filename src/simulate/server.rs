//! The websocket side of the simulator: Finnhub's subscribe protocol, trade and ping frames,
//! optional pacing, injected faults (disconnects, stalls, error frames, repeated frames,
//! outages), and a final close after a fixed number of records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as HttpRequest, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::market::{Frame, Market, MarketConfig};
use crate::finnhub::{self, END_OF_STREAM, PING, Request};

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct SimulateConfig {
    /// The market. One market per server: a client that reconnects continues where its
    /// previous connection stopped, as with a live feed.
    pub market: MarketConfig,
    /// Records per wall-clock second per connection; `None` sends as fast as the socket takes.
    pub rate: Option<f64>,
    /// Records the server sends in all before closing with [`END_OF_STREAM`]; `None`: never.
    pub total: Option<u64>,
    /// Interval between `{"type":"ping"}` frames.
    pub ping_every: Duration,
    /// Faults to inject, for testing clients.
    pub faults: Faults,
    /// When set, every trade frame sent (to any connection) is appended here, so a test can
    /// check what a client made of exactly what it was sent.
    pub sent: Option<Arc<Mutex<Vec<String>>>>,
    /// Play these recorded frames (from `ingest --record`) instead of the market.
    pub replay: Option<Replay>,
}

/// Frames recorded by `ingest --record`, played back in order.
#[derive(Clone, Debug)]
pub struct Replay {
    /// `(receive time ms, frame text)`, in recording order.
    pub frames: Arc<Vec<(i64, String)>>,
    /// Playback speed relative to the recording; `None`: as fast as the socket takes.
    pub speed: Option<f64>,
}

impl Replay {
    /// Reads a capture ([`finnhub::read_capture`]).
    pub fn load(path: &std::path::Path, speed: Option<f64>) -> std::io::Result<Replay> {
        let text = std::fs::read_to_string(path)?;
        let frames =
            finnhub::read_capture(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Replay { frames: Arc::new(frames), speed })
    }
}

/// Faults the simulator can inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close each connection (normally, after flushing) once it has carried this many records.
    pub disconnect_every: Option<u64>,
    /// Stop sending for `stall_for` every this many records of a connection.
    pub stall_every: Option<u64>,
    /// Length of a stall.
    pub stall_for: Duration,
    /// Send an error frame (and close) once a connection has carried this many records.
    pub error_after: Option<u64>,
    /// Send every this many trade frames of a connection twice, byte for byte (Finnhub has
    /// been seen repeating frames); the copies do not count towards `total`.
    pub duplicate_every: Option<u64>,
    /// Feed outages, by the number of records sent (over all connections) they start at.
    pub outages: Vec<Outage>,
}

/// A feed outage: once `at` records have been sent, every connection is closed, the next
/// connection attempt is refused (HTTP 503), and `length` of market time passes unsent, as
/// the trades of a real outage are never received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    /// Records sent before it starts.
    pub at: u64,
    /// Market time lost.
    pub length: Duration,
}

/// The error the simulator sends for `error_after`, worded like Finnhub's.
pub const ERROR_MESSAGE: &str = "Subscribing to too many symbols";

/// Subscriptions of one connection, written by its reader and read by its writer.
struct Subscriptions {
    index: Arc<HashMap<String, usize>>,
    flags: Mutex<Vec<bool>>,
    version: AtomicU64,
    settled: Notify,
}

/// What all connections of a server share.
struct Server {
    cfg: SimulateConfig,
    market: Mutex<Market>,
    index: Arc<HashMap<String, usize>>,
    /// Records sent over all connections.
    sent: AtomicU64,
    /// Next recorded frame to play, when replaying.
    cursor: Mutex<usize>,
    /// Outages still to come, earliest first.
    outages: Mutex<Vec<Outage>>,
    /// Outages so far: a connection opened before the latest one is closed.
    outage_count: AtomicU64,
    /// Connection attempts still to refuse.
    refuse: AtomicU64,
}

impl Server {
    /// The record count the next outage starts at.
    fn next_outage(&self) -> Option<u64> {
        self.outages.lock().ok().and_then(|o| o.first().map(|o| o.at))
    }

    /// Starts every outage due by `sent` records: market time passes unsent, connections
    /// close, the next attempt is refused.
    fn start_outages(&self, sent: u64) {
        let Ok(mut outages) = self.outages.lock() else { return };
        while outages.first().is_some_and(|o| o.at <= sent) {
            let outage = outages.remove(0);
            if let Ok(mut market) = self.market.lock() {
                market.skip(outage.length);
            }
            self.refuse.fetch_add(1, Ordering::AcqRel);
            self.outage_count.fetch_add(1, Ordering::AcqRel);
            tracing::info!(at = outage.at, length_ms = outage.length.as_millis() as u64, "simulated outage");
        }
    }

    /// Whether to refuse a connection attempt now (and count it refused).
    fn refusing(&self) -> bool {
        self.refuse.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

/// Accepts connections on `listener` forever, all served from one market.
pub async fn serve(listener: TcpListener, cfg: SimulateConfig) -> std::io::Result<()> {
    let market = Market::new(cfg.market.clone());
    let index = Arc::new(market.symbols().enumerate().map(|(i, s)| (s.to_owned(), i)).collect());
    let mut outages = cfg.faults.outages.clone();
    outages.sort_by_key(|o| o.at);
    let server = Arc::new(Server {
        cfg,
        market: Mutex::new(market),
        index,
        sent: AtomicU64::new(0),
        cursor: Mutex::new(0),
        outages: Mutex::new(outages),
        outage_count: AtomicU64::new(0),
        refuse: AtomicU64::new(0),
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &server).await {
                tracing::info!(%peer, error = %e, "simulator connection ended");
            }
        });
    }
}

/// Why a connection's send loop stopped.
enum Ending {
    Complete,
    Disconnect,
    Error,
    ClientGone,
}

// The handshake callback's error type is tungstenite's own HTTP response.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, server: &Server) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let cfg = &server.cfg;
    stream.set_nodelay(true).ok();
    let refuse = server.refusing();
    let ws = tokio_tungstenite::accept_hdr_async(stream, |_: &HttpRequest, response: Response| {
        if refuse {
            let mut refused = ErrorResponse::new(Some("feed outage".into()));
            *refused.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refused);
        }
        Ok(response)
    })
    .await?;
    let outages_seen = server.outage_count.load(Ordering::Acquire);
    let (mut tx, mut rx) = ws.split();
    let subs = Arc::new(Subscriptions {
        flags: Mutex::new(vec![false; server.index.len()]),
        index: Arc::clone(&server.index),
        version: AtomicU64::new(0),
        settled: Notify::new(),
    });

    let reader_subs = Arc::clone(&subs);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            apply(&reader_subs, &msg);
            // Apply every request already received before letting the writer start, so a
            // client that subscribes to many symbols at once sees all of them from the start.
            while let Some(Some(Ok(msg))) = rx.next().now_or_never() {
                apply(&reader_subs, &msg);
            }
            reader_subs.settled.notify_one();
        }
        // Wake a writer waiting for subscriptions: the client is gone.
        reader_subs.settled.notify_one();
    });

    subs.settled.notified().await;
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let (mut sent, mut frames) = (0u64, 0u64);
    let mut next_stall = cfg.faults.stall_every;
    let mut replay_start: Option<i64> = None;
    let mut seen_version = u64::MAX;
    let mut flags: Vec<bool> = Vec::new();
    let ending = loop {
        if reader.is_finished() {
            break Ending::ClientGone;
        }
        let total_sent = server.sent.load(Ordering::Acquire);
        if cfg.total.is_some_and(|t| total_sent >= t) {
            break Ending::Complete;
        }
        if cfg.faults.disconnect_every.is_some_and(|n| sent >= n) {
            break Ending::Disconnect;
        }
        server.start_outages(total_sent);
        if server.outage_count.load(Ordering::Acquire) != outages_seen {
            break Ending::Disconnect;
        }
        if cfg.faults.error_after.is_some_and(|n| sent >= n) {
            break Ending::Error;
        }
        if next_stall.is_some_and(|n| sent >= n) {
            tx.flush().await?;
            tokio::time::sleep(cfg.faults.stall_for).await;
            next_stall = next_stall.zip(cfg.faults.stall_every).map(|(n, every)| n + every.max(1));
            continue;
        }
        let version = subs.version.load(Ordering::Acquire);
        if version != seen_version {
            seen_version = version;
            flags = subs.flags.lock().map(|f| f.clone()).unwrap_or_default();
        }
        if !flags.iter().any(|&f| f) {
            subs.settled.notified().await;
            continue;
        }
        let budget = cfg.total.map_or(usize::MAX, |t| (t - total_sent) as usize);
        let budget = cfg.faults.disconnect_every.map_or(budget, |n| budget.min((n - sent) as usize));
        let budget = server.next_outage().map_or(budget, |at| budget.min(at.saturating_sub(total_sent) as usize));
        let frame = match &cfg.replay {
            Some(replay) => {
                let Ok(mut cursor) = server.cursor.lock() else { break Ending::Error };
                let Some((t, text)) = replay.frames.get(*cursor) else { break Ending::Complete };
                *cursor += 1;
                Some((Some(*t), Frame { records: finnhub::Frame::parse(text).records(), text: text.clone() }))
            }
            None => match server.market.lock() {
                Ok(mut market) => market.next_frame(&flags, budget).map(|f| (None, f)),
                Err(_) => break Ending::Error,
            },
        };
        let Some((recorded_at, frame)) = frame else {
            tokio::task::yield_now().await;
            continue;
        };
        match (recorded_at, cfg.replay.as_ref().and_then(|r| r.speed), cfg.rate) {
            (Some(t), Some(speed), _) => {
                // Keep the recording's spacing, scaled by the speed.
                let first = *replay_start.get_or_insert(t);
                let due = started + Duration::from_secs_f64((t - first).max(0) as f64 / 1000.0 / speed.max(1e-6));
                tokio::time::sleep_until(due.into()).await;
            }
            (None, _, Some(rate)) => {
                let due = started + Duration::from_secs_f64(sent as f64 / rate.max(1e-3));
                tokio::time::sleep_until(due.into()).await;
            }
            _ => {}
        }
        sent += frame.records as u64;
        server.sent.fetch_add(frame.records as u64, Ordering::AcqRel);
        frames += 1;
        let copies = if cfg.faults.duplicate_every.is_some_and(|n| frames % n.max(1) == 0) { 2 } else { 1 };
        for _ in 0..copies {
            if let Some(log) = &cfg.sent {
                if let Ok(mut log) = log.lock() {
                    log.push(frame.text.clone());
                }
            }
            tx.feed(Message::text(frame.text.clone())).await?;
        }
        if last_ping.elapsed() >= cfg.ping_every {
            last_ping = Instant::now();
            tx.feed(Message::text(PING)).await?;
        }
        // Flush in groups when running flat out; every frame when paced.
        if cfg.rate.is_some() || frames % 64 == 0 {
            tx.flush().await?;
        }
    };
    tx.flush().await?;
    let close = |reason: &str| Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: reason.into() }));
    match ending {
        Ending::Complete => tx.send(close(END_OF_STREAM)).await?,
        Ending::Disconnect => tx.send(close("reconnect")).await?,
        Ending::Error => {
            tx.send(Message::text(finnhub::error_frame(ERROR_MESSAGE))).await?;
            tx.send(close("error")).await?;
        }
        Ending::ClientGone => {}
    }
    reader.abort();
    tracing::debug!(sent, frames, "simulator connection done");
    Ok(())
}

fn apply(subs: &Subscriptions, msg: &Message) {
    let Message::Text(text) = msg else { return };
    let (symbol, on) = match Request::parse(text.as_str()) {
        Some(Request::Subscribe(symbol)) => (symbol, true),
        Some(Request::Unsubscribe(symbol)) => (symbol, false),
        None => return,
    };
    // Finnhub accepts unknown symbols silently; so does the simulator.
    if let Some(&i) = subs.index.get(&symbol) {
        if let Ok(mut flags) = subs.flags.lock() {
            flags[i] = on;
        }
        subs.version.fetch_add(1, Ordering::Release);
    }
}
