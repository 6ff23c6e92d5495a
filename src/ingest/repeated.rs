//! Data frames a connection repeats byte for byte within a time window: Finnhub has been
//! seen sending the same frame more than once. Data frames are those ingest forwards (trade
//! frames, and malformed frames forwarded whole); control frames such as pings repeat by
//! nature. Identical trades inside different frames are genuine (repeated prints happen) and
//! are never matched; only whole frames are.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::finnhub::{Frame, PING};

/// Frames kept at most, however short the window: memory stays bounded on a flood.
const MAX_FRAMES: usize = 65_536;

/// The frames of one connection's recent window, by content hash.
pub struct RepeatedFrames {
    window: Duration,
    /// `(received, hash, frame)`, oldest first. Frames are reference-counted: keeping one
    /// copies nothing.
    recent: VecDeque<(Instant, u64, Utf8Bytes)>,
    /// How many frames of `recent` have each hash.
    hashes: HashMap<u64, u32>,
}

impl RepeatedFrames {
    /// Nothing seen yet.
    pub fn new(window: Duration) -> Self {
        RepeatedFrames { window, recent: VecDeque::new(), hashes: HashMap::new() }
    }

    /// Whether `frame`, received at `now`, is a data frame byte-identical to one received
    /// within the window before it; remembers it either way.
    pub fn check(&mut self, frame: &Utf8Bytes, now: Instant) -> bool {
        while let Some((at, _, _)) = self.recent.front() {
            if now.saturating_duration_since(*at) <= self.window && self.recent.len() < MAX_FRAMES {
                break;
            }
            self.forget_oldest();
        }
        if frame.as_str() == PING {
            return false; // the keep-alive is the same every time
        }
        let mut hasher = DefaultHasher::new();
        frame.as_str().hash(&mut hasher);
        let hash = hasher.finish();
        // Bytes are compared only on a hash match, which is rare unless the frame repeats.
        let repeated = self.hashes.contains_key(&hash)
            && self.recent.iter().any(|(_, h, seen)| *h == hash && seen.as_str() == frame.as_str())
            && matches!(Frame::parse(frame.as_str()), Frame::Trades(_) | Frame::Malformed);
        self.recent.push_back((now, hash, frame.clone()));
        *self.hashes.entry(hash).or_insert(0) += 1;
        repeated
    }

    fn forget_oldest(&mut self) {
        if let Some((_, hash, _)) = self.recent.pop_front() {
            if let Some(n) = self.hashes.get_mut(&hash) {
                *n -= 1;
                if *n == 0 {
                    self.hashes.remove(&hash);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Utf8Bytes {
        Utf8Bytes::from(text.to_owned())
    }

    #[test]
    fn a_frame_repeated_within_the_window_is_found_once_per_repeat() {
        let a = frame(r#"{"data":[{"p":1,"s":"A","t":1,"v":1}],"type":"trade"}"#);
        let b = frame(r#"{"data":[{"p":1,"s":"A","t":1,"v":1},{"p":1,"s":"A","t":1,"v":1}],"type":"trade"}"#);
        let mut repeats = RepeatedFrames::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!repeats.check(&a, t0));
        assert!(repeats.check(&a, t0 + Duration::from_secs(1)));
        assert!(repeats.check(&a, t0 + Duration::from_secs(2)), "each repeat counts");
        // Identical trades in a different frame are genuine.
        assert!(!repeats.check(&b, t0 + Duration::from_secs(2)));
        // Pings and other control frames repeat by nature.
        assert!(!repeats.check(&frame(PING), t0));
        assert!(!repeats.check(&frame(PING), t0 + Duration::from_secs(1)));
        assert!(!repeats.check(&frame(r#"{"type":"news"}"#), t0));
        assert!(!repeats.check(&frame(r#"{"type":"news"}"#), t0));
        let truncated = frame(r#"{"type":"trade","data":[{"s":"A","p":"#);
        assert!(!repeats.check(&truncated, t0 + Duration::from_secs(2)));
        assert!(repeats.check(&truncated, t0 + Duration::from_secs(2)), "forwarded whole, so a repeat too");
        // Past the window, the frame is new again.
        assert!(!repeats.check(&a, t0 + Duration::from_secs(9)));
        assert!(repeats.hashes.values().all(|&n| n > 0));
        assert_eq!(repeats.hashes.values().map(|&n| n as usize).sum::<usize>(), repeats.recent.len());
    }
}
