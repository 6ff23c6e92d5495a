//! The websocket side of the simulator: Finnhub's subscribe protocol, trade and ping frames,
//! optional pacing, and a normal close after a fixed number of records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::market::{Market, MarketConfig};

/// How the server behaves towards each connection.
#[derive(Clone, Debug)]
pub struct SimulateConfig {
    /// The market every connection replays from its start.
    pub market: MarketConfig,
    /// Records per wall-clock second per connection; `None` sends as fast as the socket takes.
    pub rate: Option<f64>,
    /// Records sent before the server closes the connection normally; `None` never stops.
    pub total: Option<u64>,
    /// Interval between `{"type":"ping"}` frames.
    pub ping_every: Duration,
}

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    symbol: Option<String>,
}

/// Subscriptions of one connection, written by its reader and read by its writer.
struct Subscriptions {
    index: HashMap<String, usize>,
    flags: Mutex<Vec<bool>>,
    version: AtomicU64,
    settled: Notify,
}

/// Accepts connections on `listener` forever, serving each from a fresh market.
pub async fn serve(listener: TcpListener, cfg: SimulateConfig) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let cfg = cfg.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, cfg).await {
                tracing::info!(%peer, error = %e, "simulator connection ended");
            }
        });
    }
}

async fn connection(stream: TcpStream, cfg: SimulateConfig) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true).ok();
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut tx, mut rx) = ws.split();
    let mut market = Market::new(cfg.market.clone());
    let index: HashMap<String, usize> = market.symbols().enumerate().map(|(i, s)| (s.to_owned(), i)).collect();
    let subs = Arc::new(Subscriptions {
        flags: Mutex::new(vec![false; index.len()]),
        index,
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
    });

    subs.settled.notified().await;
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let (mut sent, mut frames) = (0u64, 0u64);
    let mut seen_version = u64::MAX;
    let mut flags: Vec<bool> = Vec::new();
    while cfg.total.is_none_or(|t| sent < t) && !reader.is_finished() {
        let version = subs.version.load(Ordering::Acquire);
        if version != seen_version {
            seen_version = version;
            flags = subs.flags.lock().map(|f| f.clone()).unwrap_or_default();
        }
        if !flags.iter().any(|&f| f) {
            subs.settled.notified().await;
            continue;
        }
        let budget = cfg.total.map_or(usize::MAX, |t| (t - sent) as usize);
        let Some(frame) = market.next_frame(&flags, budget) else {
            tokio::task::yield_now().await;
            continue;
        };
        if let Some(rate) = cfg.rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate.max(1e-3));
            tokio::time::sleep_until(due.into()).await;
        }
        sent += frame.records as u64;
        frames += 1;
        tx.feed(Message::text(frame.text)).await?;
        if last_ping.elapsed() >= cfg.ping_every {
            last_ping = Instant::now();
            tx.feed(Message::text(r#"{"type":"ping"}"#)).await?;
        }
        // Flush in groups when running flat out; every frame when paced.
        if cfg.rate.is_some() || frames % 64 == 0 {
            tx.flush().await?;
        }
    }
    tx.flush().await?;
    tx.send(Message::Close(None)).await?;
    reader.abort();
    tracing::debug!(sent, frames, "simulator connection done");
    Ok(())
}

fn apply(subs: &Subscriptions, msg: &Message) {
    let Message::Text(text) = msg else { return };
    let Ok(req) = serde_json::from_str::<Request>(text.as_str()) else {
        return;
    };
    let on = match req.kind.as_str() {
        "subscribe" => true,
        "unsubscribe" => false,
        _ => return,
    };
    let Some(symbol) = req.symbol else { return };
    // Finnhub accepts unknown symbols silently; so does the simulator.
    if let Some(&i) = subs.index.get(&symbol) {
        if let Ok(mut flags) = subs.flags.lock() {
            flags[i] = on;
        }
        subs.version.fetch_add(1, Ordering::Release);
    }
}
