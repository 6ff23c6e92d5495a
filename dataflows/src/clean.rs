//! Cleaning: one Kafka payload in, a valid trade or a quarantine reason out.
//!
//! This is the data contract (README.md#data-contract) made executable. It borrows from the payload
//! (strings are only copied when they carry JSON escapes or are longer than a symbol can be
//! inline), checks fields in a fixed order so the first failing rule names the reason, and is
//! total: every byte string classifies, none panics.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::reason::Reason;
use crate::trade::{Conditions, Symbol};

mod scan;

/// Payloads larger than this are quarantined unparsed: a Finnhub trade is ~100 bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Quarantined payloads are stored truncated to this many bytes (at a UTF-8 boundary).
pub const MAX_QUARANTINE_PAYLOAD: usize = 4 * 1024;
/// Longest accepted symbol, in bytes.
pub const MAX_SYMBOL_BYTES: usize = 64;
/// Earliest accepted event time: 2000-01-01T00:00:00Z in ms.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// First rejected event time: 2100-01-01T00:00:00Z in ms.
pub const MAX_TS_MS: i64 = 4_102_444_800_000;

/// The fields of a valid trade payload, before Kafka coordinates are attached.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanTrade {
    /// Ticker symbol.
    pub symbol: Symbol,
    /// Price, finite and > 0.
    pub price: f64,
    /// Volume, finite and >= 0.
    pub volume: f64,
    /// Event time in ms since the epoch, within [`MIN_TS_MS`, `MAX_TS_MS`).
    pub ts: i64,
    /// Conditions, `None` when absent or null.
    pub conditions: Option<Conditions>,
}

/// Classifies one log record: [`clean`] on its payload, then the bad-tick rule. A trade dated
/// more than `max_skew_ms` after the record's log timestamp (Kafka: when ingest received it)
/// is `future_timestamp`. The rule reads the record alone, so a replay or another worker
/// count classifies it the same way. A record without a log timestamp (a pre-0.10 message
/// format) has nothing to be checked against and passes this rule.
pub fn clean_record(payload: Option<&[u8]>, log_ts: Option<i64>, max_skew_ms: u64) -> Result<CleanTrade, Reason> {
    let trade = clean(payload)?;
    match log_ts {
        Some(at) if trade.ts > at.saturating_add(max_skew_ms.min(i64::MAX as u64) as i64) => {
            Err(Reason::FutureTimestamp)
        }
        _ => Ok(trade),
    }
}

/// Classifies one Kafka payload: a clean trade, or the reason it is quarantined.
pub fn clean(payload: Option<&[u8]>) -> Result<CleanTrade, Reason> {
    let bytes = match payload {
        None | Some([]) => return Err(Reason::EmptyPayload),
        Some(b) if b.len() > MAX_PAYLOAD => return Err(Reason::Oversized),
        Some(b) => b,
    };
    // Almost every payload is a plain trade object. The scanner reads exactly that shape in
    // one pass; the typed serde parse takes the rest of the well-typed objects (unknown keys,
    // escapes, exponents). Both only accept payloads whose field types are all right, so their
    // verdict is the total visitor's; anything else (a wrong type, a missing or duplicate
    // field, trailing bytes, a non-object) is classified again by the visitor, which names
    // the reason.
    if let Some(f) = scan::trade(bytes) {
        return validate(f.s, f.p, f.v, Some(f.t), f.c.map(Value::Strings));
    }
    if bytes.first() == Some(&b'{') {
        if let Ok(typed) = serde_json::from_slice::<TypedTrade<'_>>(bytes) {
            return validate(typed.s, typed.p, typed.v, Some(typed.t), typed.c.map(Value::Strings));
        }
    }
    classify_total(bytes)
}

/// The total classifier: any byte string, a verdict and the reason for it.
fn classify_total(bytes: &[u8]) -> Result<CleanTrade, Reason> {
    let raw: RawTrade<'_> = match serde_json::from_slice(bytes) {
        Ok(raw) => raw,
        Err(_) => return Err(Reason::MalformedJson),
    };
    raw.validate()
}

/// A trade payload whose fields all have the right JSON types (the fast path of [`clean`]).
/// A JSON array would also deserialize into a struct, which is why [`clean`] only tries this
/// on payloads that start with `{`.
#[derive(Deserialize)]
struct TypedTrade<'a> {
    /// Borrowed: a symbol with escapes fails here and takes the total path.
    s: &'a str,
    p: f64,
    v: f64,
    t: i64,
    #[serde(default)]
    c: Option<Conditions>,
}

/// Copies a payload for the quarantine table: lossy UTF-8, at most `MAX_QUARANTINE_PAYLOAD` bytes.
pub fn quarantine_payload(payload: Option<&[u8]>) -> String {
    let bytes = payload.unwrap_or_default();
    let cut = &bytes[..bytes.len().min(MAX_QUARANTINE_PAYLOAD)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    // Lossy decoding may grow a cut multi-byte sequence into U+FFFD; keep the bound exact.
    while text.len() > MAX_QUARANTINE_PAYLOAD {
        text.pop();
    }
    text
}

/// One JSON value as seen by the cleaner: just enough to tell types apart without allocating.
#[derive(Debug)]
enum Value<'a> {
    Null,
    Bool,
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An array whose elements were all strings.
    Strings(Conditions),
    /// An array with a non-string element.
    OtherArray,
    Object,
}

impl Value<'_> {
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// The payload object: each known key at most once, unknown keys skipped.
// Lives on the stack for one parse; boxing the large variant would allocate per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum RawTrade<'a> {
    NotObject,
    Duplicate,
    Fields {
        s: Option<Value<'a>>,
        p: Option<Value<'a>>,
        v: Option<Value<'a>>,
        t: Option<Value<'a>>,
        c: Option<Value<'a>>,
    },
}

impl RawTrade<'_> {
    fn validate(self) -> Result<CleanTrade, Reason> {
        let (s, p, v, t, c) = match self {
            RawTrade::NotObject => return Err(Reason::NotObject),
            RawTrade::Duplicate => return Err(Reason::DuplicateField),
            RawTrade::Fields { s, p, v, t, c } => (s, p, v, t, c),
        };
        let (Some(s), Some(p), Some(v), Some(t)) = (s, p, v, t) else {
            return Err(Reason::MissingField);
        };
        let symbol = match s {
            Value::Str(s) => s,
            _ => return Err(Reason::BadType),
        };
        let price = p.as_f64().ok_or(Reason::BadType)?;
        let volume = v.as_f64().ok_or(Reason::BadType)?;
        let ts = match t {
            Value::Int(i) => Some(i),
            Value::UInt(u) => i64::try_from(u).ok(),
            // A float time is not integer milliseconds (often seconds with a fraction).
            Value::Float(_) => None,
            _ => return Err(Reason::BadType),
        };
        validate(&symbol, price, volume, ts, c)
    }
}

/// A symbol is non-empty, at most [`MAX_SYMBOL_BYTES`] long, without control characters.
pub(crate) fn valid_symbol(symbol: &str) -> bool {
    // Printable ASCII is the usual case and needs no decoding; anything else (a byte that
    // could start or continue a C1 control's UTF-8 encoding, or DEL) is decoded and asked.
    let printable = |b: &u8| (0x20..0x7f).contains(b);
    !symbol.is_empty()
        && symbol.len() <= MAX_SYMBOL_BYTES
        && (symbol.as_bytes().iter().all(printable) || !symbol.chars().any(char::is_control))
}

/// The value rules, in the order that names the reason, once every field has the right type.
/// `ts` is `None` for a time that is not an integer of milliseconds.
fn validate(
    symbol: &str,
    price: f64,
    volume: f64,
    ts: Option<i64>,
    c: Option<Value<'_>>,
) -> Result<CleanTrade, Reason> {
    if !valid_symbol(symbol) {
        return Err(Reason::BadSymbol);
    }
    if !(price.is_finite() && price > 0.0) {
        return Err(Reason::BadPrice);
    }
    if !(volume.is_finite() && volume >= 0.0) {
        return Err(Reason::BadVolume);
    }
    let ts = match ts {
        Some(ts) if (MIN_TS_MS..MAX_TS_MS).contains(&ts) => ts,
        _ => return Err(Reason::BadTimestamp),
    };
    let conditions = match c {
        None | Some(Value::Null) => None,
        Some(Value::Strings(list)) => Some(list),
        Some(_) => return Err(Reason::BadConditions),
    };
    Ok(CleanTrade { symbol: Symbol::from(symbol), price, volume, ts, conditions })
}

impl<'de> Deserialize<'de> for RawTrade<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawTradeVisitor)
    }
}

struct RawTradeVisitor;

/// Non-object JSON documents are valid JSON but not trades; the visitor still has to consume
/// them so that trailing garbage is detected by serde_json as malformed.
macro_rules! not_object {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> { Ok(RawTrade::NotObject) })*
    };
}

impl<'de> Visitor<'de> for RawTradeVisitor {
    type Value = RawTrade<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON document")
    }

    not_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
        visit_str: &str, visit_borrowed_str: &'de str);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawTrade::NotObject)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawTrade::NotObject)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut s, mut p, mut v, mut t, mut c) = (None, None, None, None, None);
        let mut duplicate = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "s" => &mut s,
                "p" => &mut p,
                "v" => &mut v,
                "t" => &mut t,
                "c" => &mut c,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<Value<'de>>()?;
            duplicate |= slot.replace(value).is_some();
        }
        Ok(if duplicate { RawTrade::Duplicate } else { RawTrade::Fields { s, p, v, t, c } })
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Value::Bool)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Value::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut list = Conditions::new();
        while let Some(item) = seq.next_element::<Value<'de>>()? {
            match item {
                Value::Str(s) => list.push(s.as_ref().into()),
                _ => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Value::OtherArray);
                }
            }
        }
        Ok(Value::Strings(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object)
    }
}

#[cfg(test)]
mod tests;
