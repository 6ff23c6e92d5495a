//! Why a record went to quarantine: the reasons of the data contract, named as the lake's
//! `reason` column stores them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a record went to quarantine. The `as_str` names are the lake's `reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// The payload is absent or empty (e.g. a tombstone).
    EmptyPayload,
    /// The payload exceeds [`MAX_PAYLOAD`](crate::clean::MAX_PAYLOAD).
    Oversized,
    /// The payload is not valid JSON (or not valid UTF-8).
    MalformedJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// A key appears twice in the object.
    DuplicateField,
    /// One of `s`, `p`, `v`, `t` is missing.
    MissingField,
    /// A field has the wrong JSON type (e.g. a price as a string).
    BadType,
    /// `s` is empty, longer than [`MAX_SYMBOL_BYTES`](crate::clean::MAX_SYMBOL_BYTES), or contains control characters.
    BadSymbol,
    /// `p` is not > 0.
    BadPrice,
    /// `v` is negative.
    BadVolume,
    /// `t` is not an integer in [2000-01-01, 2100-01-01) in milliseconds.
    BadTimestamp,
    /// `c` is neither absent, null, nor an array of strings.
    BadConditions,
    /// `t` is later than the record's log timestamp plus the allowed clock skew: a bad tick
    /// that would otherwise move the partition's watermark far ahead.
    FutureTimestamp,
    /// A record marked as a gap record whose body is not a valid gap (see [`crate::gap`]).
    BadGap,
    /// A record whose `stockflow-kind` header names a kind this version does not know (a
    /// newer or foreign producer).
    UnknownKind,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 15] = [
        Reason::EmptyPayload,
        Reason::Oversized,
        Reason::MalformedJson,
        Reason::NotObject,
        Reason::DuplicateField,
        Reason::MissingField,
        Reason::BadType,
        Reason::BadSymbol,
        Reason::BadPrice,
        Reason::BadVolume,
        Reason::BadTimestamp,
        Reason::BadConditions,
        Reason::FutureTimestamp,
        Reason::BadGap,
        Reason::UnknownKind,
    ];

    /// The machine-readable name stored in the quarantine table.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyPayload => "empty_payload",
            Reason::Oversized => "oversized",
            Reason::MalformedJson => "malformed_json",
            Reason::NotObject => "not_object",
            Reason::DuplicateField => "duplicate_field",
            Reason::MissingField => "missing_field",
            Reason::BadType => "bad_type",
            Reason::BadSymbol => "bad_symbol",
            Reason::BadPrice => "bad_price",
            Reason::BadVolume => "bad_volume",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::BadConditions => "bad_conditions",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::BadGap => "bad_gap",
            Reason::UnknownKind => "unknown_kind",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
