//! A seeded synthetic market speaking Finnhub's trade frames: Zipf-like activity across a
//! deterministic symbol universe, random-walk prices, realistic volumes, a simulated clock,
//! and a configurable share of disorder, late trades and malformed records.
//!
//! The universe's trade stream is a pure function of the seed; a subscriber sees the
//! subsequence of its symbols. Every random draw is made for every trade, subscribed or not,
//! so who listens never changes what the market does.

use std::fmt::Write;

/// Real tickers first, so a small universe looks like the market people know.
const EQUITIES: [&str; 40] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AVGO", "JPM", "V", "UNH", "XOM", "MA", "JNJ", "PG", "HD",
    "COST", "ABBV", "MRK", "CVX", "KO", "PEP", "ADBE", "CRM", "NFLX", "AMD", "BAC", "WMT", "TMO", "ORCL", "INTC",
    "CSCO", "QCOM", "TXN", "IBM", "DIS", "NKE", "UBER", "SHOP", "PYPL",
];
const CRYPTO: [(&str, f64); 6] = [
    ("BINANCE:BTCUSDT", 91_000.0),
    ("BINANCE:ETHUSDT", 3_050.0),
    ("BINANCE:SOLUSDT", 142.0),
    ("BINANCE:XRPUSDT", 2.1),
    ("BINANCE:DOGEUSDT", 0.16),
    ("BINANCE:ADAUSDT", 0.45),
];
const CONDITIONS: [&str; 5] = [r#"["1","12"]"#, r#"["12"]"#, r#"["1"]"#, r#"["1","12","37"]"#, r#"["37"]"#];

/// 2025-11-24T14:30:00Z, a US market open: the default start of the simulated clock.
pub const DEFAULT_START_MS: i64 = 1_763_994_600_000;

/// The first `n` symbols of the deterministic universe: every seventh is a `BINANCE:` pair
/// (while pairs last), then real equities, then synthetic four-letter tickers.
pub fn universe(n: usize) -> Vec<String> {
    let (mut eq, mut cr, mut synthetic) = (0, 0, 0usize);
    (0..n)
        .map(|i| {
            if i % 7 == 6 && cr < CRYPTO.len() {
                cr += 1;
                CRYPTO[cr - 1].0.to_owned()
            } else if eq < EQUITIES.len() {
                eq += 1;
                EQUITIES[eq - 1].to_owned()
            } else {
                synthetic += 1;
                let mut k = synthetic;
                let mut name = String::from("X");
                for _ in 0..3 {
                    name.push((b'A' + (k % 26) as u8) as char);
                    k /= 26;
                }
                if k > 0 {
                    write!(name, "{k}").ok();
                }
                name
            }
        })
        .collect()
}

/// How the market behaves.
#[derive(Clone, Debug)]
pub struct MarketConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Size of the symbol universe.
    pub symbols: usize,
    /// Simulated clock start, ms since the epoch.
    pub start_ms: i64,
    /// Universe trades per simulated second (drives event time, not wall time).
    pub market_rate: f64,
    /// Share of records that are anomalies (malformed, mistyped, out-of-range).
    pub anomaly_rate: f64,
    /// Share of trades a little out of order (within the default lateness).
    pub disorder_rate: f64,
    /// Share of trades late by seconds to minutes (a few beyond an hour).
    pub late_rate: f64,
    /// Most trades in one frame.
    pub frame_trades: usize,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            seed: 42,
            symbols: 100,
            start_ms: DEFAULT_START_MS,
            market_rate: 300.0,
            anomaly_rate: 0.001,
            disorder_rate: 0.02,
            late_rate: 0.002,
            frame_trades: 32,
        }
    }
}

struct SymbolState {
    name: String,
    price: f64,
    /// Event time of the symbol's previous trade: price moves scale with the time between trades.
    last_ms: f64,
    crypto: bool,
    /// Decimal places of the price.
    decimals: i32,
}

/// One frame for a subscriber, and how many Kafka records ingest should make of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The websocket text.
    pub text: String,
    /// Trade objects in it (a malformed frame counts as one record).
    pub records: usize,
}

/// The market's state: prices, clock and random stream.
pub struct Market {
    cfg: MarketConfig,
    rng: fastrand::Rng,
    symbols: Vec<SymbolState>,
    cdf: Vec<f64>,
    clock_ms: f64,
}

impl Market {
    /// A market at its start.
    pub fn new(cfg: MarketConfig) -> Self {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let symbols: Vec<SymbolState> = universe(cfg.symbols.max(1))
            .into_iter()
            .map(|name| {
                let crypto = CRYPTO.iter().find(|(n, _)| *n == name).map(|(_, p)| *p);
                let price = crypto.unwrap_or_else(|| 10.0 + rng.f64() * 490.0);
                let decimals = if price < 10.0 { 4 } else { 2 };
                SymbolState {
                    name,
                    price: round(price, decimals),
                    last_ms: cfg.start_ms as f64,
                    crypto: crypto.is_some(),
                    decimals,
                }
            })
            .collect();
        let mut total = 0.0;
        let cdf = (0..symbols.len())
            .map(|rank| {
                total += 1.0 / ((rank + 1) as f64).powf(1.07);
                total
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|c| c / total)
            .collect();
        let clock_ms = cfg.start_ms as f64;
        Market { cfg, rng, symbols, cdf, clock_ms }
    }

    /// Symbol names of the universe, in rank order.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.symbols.iter().map(|s| s.name.as_str())
    }

    /// Lets `length` of market time pass without trades (an outage: nothing was sent).
    pub fn skip(&mut self, length: std::time::Duration) {
        self.clock_ms += length.as_secs_f64() * 1000.0;
    }

    /// The next frame holding up to `max_records` records for subscribers of `subscribed`
    /// (indexed like [`Market::symbols`]); `None` if the universe produced nothing for them
    /// within a bounded number of draws (keeps a rare subscription from spinning forever).
    pub fn next_frame(&mut self, subscribed: &[bool], max_records: usize) -> Option<Frame> {
        let want = self.rng.usize(1..=self.cfg.frame_trades.max(1)).min(max_records.max(1));
        let mut text = String::with_capacity(want * 96 + 32);
        text.push_str(r#"{"type":"trade","data":["#);
        let mut records = 0;
        for _ in 0..want * 64 {
            if records == want {
                break;
            }
            let draw = self.draw();
            if !subscribed.get(draw.symbol).copied().unwrap_or(false) {
                continue;
            }
            if draw.anomaly == Some(Anomaly::MalformedFrame) {
                if records > 0 {
                    continue; // a malformed frame stands alone
                }
                let name = &self.symbols[draw.symbol].name;
                return Some(Frame { text: format!(r#"{{"type":"trade","data":[{{"s":"{name}","p":"#), records: 1 });
            }
            if records > 0 {
                text.push(',');
            }
            self.write_trade(&mut text, &draw);
            records += 1;
        }
        text.push_str("]}");
        (records > 0).then_some(Frame { text, records })
    }

    /// Draws the next universe trade (always the same number of draws).
    fn draw(&mut self) -> Draw {
        let rng = &mut self.rng;
        let u = rng.f64();
        let symbol = self.cdf.partition_point(|&c| c < u).min(self.symbols.len() - 1);
        // Exponential inter-arrival at the market rate.
        self.clock_ms += -(1.0 - rng.f64()).ln() * 1000.0 / self.cfg.market_rate.max(1e-6);
        let mut ts = self.clock_ms as i64;
        let (jitter, late_by) = (rng.f64(), rng.f64());
        if jitter < self.cfg.disorder_rate {
            ts -= 1 + (late_by * 3_000.0) as i64;
        } else if jitter < self.cfg.disorder_rate + self.cfg.late_rate {
            // Mostly seconds-to-minutes late; one in twenty beyond an hour.
            ts -= if late_by < 0.05 {
                3_600_000 + (late_by * 20.0 * 7_200_000.0) as i64
            } else {
                5_000 + (late_by * 600_000.0) as i64
            };
        }
        // About 0.2% per minute: a sum of uniforms (roughly normal, sd 0.5) scaled by sqrt(dt).
        let noise = rng.f64() + rng.f64() + rng.f64() - 1.5;
        let state = &mut self.symbols[symbol];
        let dt_s = ((self.clock_ms - state.last_ms) / 1000.0).max(0.0);
        state.last_ms = self.clock_ms;
        let step = noise * 0.0005 * dt_s.sqrt();
        state.price = round((state.price * (1.0 + step)).max(10f64.powi(-state.decimals)), state.decimals);
        let (v1, v2) = (rng.f64(), rng.f64());
        let volume = if v1 < 0.005 {
            0.0
        } else if state.crypto {
            round(0.00001 + v2 * v2 * 2.0, 5)
        } else if v1 < 0.7 {
            (1.0 + v2 * 99.0).floor()
        } else if v1 < 0.95 {
            100.0 * (1.0 + v2 * 4.0).floor()
        } else {
            (1000.0 + v2 * 4000.0).floor()
        };
        let conditions = rng.usize(..CONDITIONS.len() * 10);
        let anomaly = (rng.f64() < self.cfg.anomaly_rate).then(|| Anomaly::ALL[rng.usize(..Anomaly::ALL.len())]);
        Draw { symbol, ts, price: state.price, volume, conditions, anomaly }
    }

    fn write_trade(&self, out: &mut String, d: &Draw) {
        let state = &self.symbols[d.symbol];
        let (s, p, t, v) = (&state.name, d.price, d.ts, d.volume);
        let c = if state.crypto { "null" } else { CONDITIONS.get(d.conditions).copied().unwrap_or("null") };
        // `write!` to a String cannot fail.
        let _ = match d.anomaly {
            None | Some(Anomaly::MalformedFrame) => {
                write!(out, r#"{{"c":{c},"p":{p},"s":"{s}","t":{t},"v":{v}}}"#)
            }
            Some(Anomaly::MissingField) => write!(out, r#"{{"c":{c},"p":{p},"s":"{s}","t":{t}}}"#),
            Some(Anomaly::PriceAsString) => {
                write!(out, r#"{{"c":{c},"p":"{p}","s":"{s}","t":{t},"v":{v}}}"#)
            }
            Some(Anomaly::BadPrice) => {
                write!(out, r#"{{"c":{c},"p":-{p},"s":"{s}","t":{t},"v":{v}}}"#)
            }
            Some(Anomaly::BadVolume) => write!(out, r#"{{"c":{c},"p":{p},"s":"{s}","t":{t},"v":-{}}}"#, v + 1.0),
            Some(Anomaly::SecondsTimestamp) => {
                write!(out, r#"{{"c":{c},"p":{p},"s":"{s}","t":{},"v":{v}}}"#, t / 1000)
            }
            Some(Anomaly::EmptySymbol) => {
                write!(out, r#"{{"c":{c},"p":{p},"s":"","t":{t},"v":{v}}}"#)
            }
            Some(Anomaly::NotObject) => write!(out, "{p}"),
        };
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anomaly {
    MalformedFrame,
    MissingField,
    PriceAsString,
    BadPrice,
    BadVolume,
    SecondsTimestamp,
    EmptySymbol,
    NotObject,
}

impl Anomaly {
    const ALL: [Anomaly; 8] = [
        Anomaly::MalformedFrame,
        Anomaly::MissingField,
        Anomaly::PriceAsString,
        Anomaly::BadPrice,
        Anomaly::BadVolume,
        Anomaly::SecondsTimestamp,
        Anomaly::EmptySymbol,
        Anomaly::NotObject,
    ];
}

struct Draw {
    symbol: usize,
    ts: i64,
    price: f64,
    volume: f64,
    conditions: usize,
    anomaly: Option<Anomaly>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(cfg: MarketConfig, subscribed: &[bool], n: usize) -> Vec<Frame> {
        let mut m = Market::new(cfg);
        (0..n).filter_map(|_| m.next_frame(subscribed, 1000)).collect()
    }

    #[test]
    fn universe_is_deterministic_and_mixes_crypto() {
        let u = universe(120);
        assert_eq!(u, universe(120));
        assert_eq!(u.len(), 120);
        assert_eq!(u[0], "AAPL");
        assert_eq!(u[6], "BINANCE:BTCUSDT");
        let unique: std::collections::HashSet<_> = u.iter().collect();
        assert_eq!(unique.len(), 120);
        assert!(u.iter().all(|s| !s.is_empty() && s.len() <= 64));
    }

    #[test]
    fn same_seed_and_subscriptions_give_the_same_frames() {
        let subs = vec![true; 50];
        let cfg = MarketConfig { symbols: 50, ..Default::default() };
        assert_eq!(frames(cfg.clone(), &subs, 500), frames(cfg.clone(), &subs, 500));
        let other = MarketConfig { seed: 7, ..cfg.clone() };
        assert_ne!(frames(cfg, &subs, 50), frames(other, &subs, 50));
    }

    #[test]
    fn a_subscriber_sees_only_its_symbols() {
        let cfg = MarketConfig { symbols: 20, anomaly_rate: 0.0, ..Default::default() };
        let mut subs = vec![false; 20];
        subs[3] = true;
        for f in frames(cfg, &subs, 100) {
            let v: serde_json::Value = serde_json::from_str(&f.text).unwrap();
            for t in v["data"].as_array().unwrap() {
                assert_eq!(t["s"], universe(20)[3]);
            }
        }
    }

    #[test]
    fn frames_are_finnhub_shaped_and_mostly_clean() {
        let cfg = MarketConfig { symbols: 30, anomaly_rate: 0.01, ..Default::default() };
        let (mut clean, mut bad, mut records) = (0, 0, 0);
        for f in frames(cfg, &[true; 30], 3000) {
            records += f.records;
            match serde_json::from_str::<serde_json::Value>(&f.text) {
                Ok(v) => {
                    assert_eq!(v["type"], "trade");
                    let data = v["data"].as_array().unwrap();
                    assert_eq!(data.len(), f.records);
                    for t in data {
                        let bytes = serde_json::to_vec(t).unwrap();
                        match dataflows::clean(Some(&bytes)) {
                            Ok(_) => clean += 1,
                            Err(_) => bad += 1,
                        }
                    }
                }
                Err(_) => {
                    assert_eq!(f.records, 1);
                    bad += 1;
                }
            }
        }
        assert_eq!(clean + bad, records);
        assert!(bad > 0 && (bad as f64) < 0.03 * records as f64, "{bad} anomalies in {records}");
    }
}
