//! Finnhub's trade websocket protocol as stockflow speaks it, for ingest and the simulator
//! alike: the frames a server sends, the requests a client sends, the close that ends a
//! simulated stream, and the capture format of `ingest --record`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Close reason of a stream that ends for good: the simulator's final close after its last
/// record, the one close a client does not reconnect after. (Finnhub never ends a stream.)
pub const END_OF_STREAM: &str = "end of stream";

/// The keep-alive frame.
pub const PING: &str = r#"{"type":"ping"}"#;

/// What a server frame is.
#[derive(Debug)]
pub enum Frame<'a> {
    /// `{"type":"trade","data":[…]}`: the trade objects, exactly as received.
    Trades(Vec<&'a RawValue>),
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"error","msg":…}`: the server refuses the session.
    Error(Cow<'a, str>),
    /// JSON of another type (news, subscription acknowledgements): nothing to forward.
    Other,
    /// Not a JSON object: forwarded whole, so the job quarantines it with a reason.
    Malformed,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    msg: Option<Cow<'a, str>>,
}

impl<'a> Frame<'a> {
    /// Classifies a text frame, borrowing the trade objects from it.
    pub fn parse(text: &'a str) -> Frame<'a> {
        match serde_json::from_str::<Envelope<'a>>(text) {
            Err(_) => Frame::Malformed,
            Ok(frame) => match frame.kind.as_deref() {
                Some("trade") => Frame::Trades(frame.data.unwrap_or_default()),
                Some("ping") => Frame::Ping,
                Some("error") => Frame::Error(frame.msg.unwrap_or(Cow::Borrowed("(no message)"))),
                _ => Frame::Other,
            },
        }
    }

    /// How many Kafka records ingest makes of the frame: its trades, one for a malformed
    /// frame, none for control frames.
    pub fn records(&self) -> usize {
        match self {
            Frame::Trades(data) => data.len(),
            Frame::Malformed => 1,
            Frame::Ping | Frame::Error(_) | Frame::Other => 0,
        }
    }
}

/// What ingest reads of a trade object besides forwarding it: its symbol and event time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TradeHead<'a> {
    /// `s`: the Kafka key, so one symbol's trades stay in order on one partition; `None`
    /// when the object has no string `s` (the job quarantines it).
    pub symbol: Option<Cow<'a, str>>,
    /// `t`, when it is an integer: the feed's event time, which places gaps.
    pub t: Option<i64>,
}

/// Reads a trade object's [`TradeHead`]; fields of the wrong type read as absent.
pub fn trade_head<'a>(trade: &'a RawValue) -> TradeHead<'a> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        s: Option<&'a RawValue>,
        #[serde(borrow)]
        t: Option<&'a RawValue>,
    }
    let Ok(head) = serde_json::from_str::<Head<'a>>(trade.get()) else { return TradeHead::default() };
    TradeHead {
        // Borrowed unless the symbol carries escapes.
        symbol: head.s.and_then(|s| {
            let raw = s.get();
            serde_json::from_str::<&'a str>(raw)
                .map(Cow::Borrowed)
                .or_else(|_| serde_json::from_str::<String>(raw).map(Cow::Owned))
                .ok()
        }),
        t: head.t.and_then(|t| serde_json::from_str::<i64>(t.get()).ok()),
    }
}

/// The error frame a server sends before closing.
pub fn error_frame(msg: &str) -> String {
    serde_json::json!({"type": "error", "msg": msg}).to_string()
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Start sending the symbol's trades.
    Subscribe(String),
    /// Stop sending them.
    Unsubscribe(String),
}

impl Request {
    /// The request as sent.
    pub fn to_text(&self) -> String {
        let (kind, symbol) = match self {
            Request::Subscribe(s) => ("subscribe", s),
            Request::Unsubscribe(s) => ("unsubscribe", s),
        };
        serde_json::json!({"type": kind, "symbol": symbol}).to_string()
    }

    /// Parses a request; anything else (Finnhub ignores it) is `None`.
    pub fn parse(text: &str) -> Option<Request> {
        #[derive(Deserialize)]
        struct View {
            #[serde(rename = "type")]
            kind: String,
            symbol: Option<String>,
        }
        let view = serde_json::from_str::<View>(text).ok()?;
        match (view.kind.as_str(), view.symbol) {
            ("subscribe", Some(s)) => Some(Request::Subscribe(s)),
            ("unsubscribe", Some(s)) => Some(Request::Unsubscribe(s)),
            _ => None,
        }
    }
}

/// One line of a capture (`ingest --record`, `simulate --replay`): a received frame and its
/// receive time in ms since the epoch, `{"t":1763997374633,"frame":"…"}`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Captured<'a> {
    /// Receive time, ms since the epoch.
    pub t: i64,
    /// The frame's text.
    #[serde(borrow)]
    pub frame: Cow<'a, str>,
}

/// Reads a capture: one [`Captured`] line each, blank lines skipped; an unreadable line is
/// an error naming it.
pub fn read_capture(text: &str) -> Result<Vec<(i64, String)>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Captured<'_>>(l)
                .map(|c| (c.t, c.frame.into_owned()))
                .map_err(|e| format!("line {}: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified_as_ingest_forwards_them() {
        let trades = r#"{"data":[{"p":1.5,"s":"AAPL","t":1,"v":2},{"p":2,"t":2,"v":1}],"type":"trade"}"#;
        let Frame::Trades(data) = Frame::parse(trades) else { panic!("a trade frame") };
        assert_eq!(data.len(), 2);
        let head = trade_head(data[0]);
        assert_eq!((head.symbol.as_deref(), head.t), (Some("AAPL"), Some(1)));
        assert_eq!(trade_head(data[1]).symbol, None, "no symbol, no key");
        assert_eq!(Frame::parse(trades).records(), 2);
        assert!(matches!(Frame::parse(PING), Frame::Ping));
        assert!(matches!(Frame::parse(&error_frame("no")), Frame::Error(msg) if msg == "no"));
        assert_eq!(Frame::parse(r#"{"type":"news"}"#).records(), 0);
        for malformed in ["not json", "[1,2]", r#"{"type":"trade","data":5}"#] {
            assert!(matches!(Frame::parse(malformed), Frame::Malformed), "{malformed}");
            assert_eq!(Frame::parse(malformed).records(), 1);
        }
    }

    #[test]
    fn requests_and_captures_round_trip() {
        for request in [Request::Subscribe("AAPL".into()), Request::Unsubscribe("BINANCE:BTCUSDT".into())] {
            assert_eq!(Request::parse(&request.to_text()), Some(request));
        }
        assert_eq!(Request::parse(r#"{"type":"subscribe"}"#), None);
        let line = serde_json::to_string(&Captured { t: 7, frame: Cow::Borrowed(PING) }).expect("json");
        assert_eq!(read_capture(&format!("{line}\n\n{line}\n")), Ok(vec![(7, PING.to_owned()); 2]));
        assert!(read_capture("{}\n").expect_err("no fields").starts_with("line 1:"));
    }
}
