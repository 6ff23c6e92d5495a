//! A scanner for the usual trade shape, in front of the serde paths of [`super::clean`].
//!
//! Nearly every payload is an object with the five known keys, escape-free strings and plain
//! numbers. This reads exactly that shape in one pass over the bytes, with no per-byte
//! visitor calls, and declines (`None`) anything else: an unknown, repeated, missing or
//! escaped key, a string with an escape or a control byte, a number outside the JSON grammar
//! or outside `f64`, a time that is not a non-negative integer, trailing bytes. A declined
//! payload is classified by the serde paths, which name the reason; a scanned one is
//! validated by the same rules, so the verdict never depends on which path read it (the
//! property tests in `tests.rs` compare both with the total classifier).

use crate::trade::Conditions;

/// The fields of a payload the scanner read, before the value rules.
#[derive(Debug)]
pub(super) struct Scanned<'a> {
    pub s: &'a str,
    pub p: f64,
    pub v: f64,
    pub t: i64,
    /// `None` when absent or `null`.
    pub c: Option<Conditions>,
}

/// Reads `bytes` as the usual trade object, or declines.
#[inline]
pub(super) fn trade(bytes: &[u8]) -> Option<Scanned<'_>> {
    let mut r = Reader::new(bytes);
    r.skip_ws();
    r.eat(b'{')?;
    let (mut s, mut p, mut v, mut t, mut c) = (None, None, None, None, None);
    let mut seen = 0u8;
    loop {
        // `"k":`, one known letter: in one comparison when nothing stands between its bytes.
        let key = match r.compact_key() {
            Some(key) => key,
            None => {
                r.skip_ws();
                r.eat(b'"')?;
                let key = r.next()?;
                r.eat(b'"')?;
                r.skip_ws();
                r.eat(b':')?;
                key
            }
        };
        r.skip_ws();
        let bit = match key {
            b's' => {
                s = Some(r.string()?);
                1
            }
            b'p' => {
                p = Some(r.float()?);
                2
            }
            b'v' => {
                v = Some(r.float()?);
                4
            }
            b't' => {
                t = Some(r.time()?);
                8
            }
            b'c' => {
                c = r.conditions()?;
                16
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None; // a repeated key: the total classifier names it
        }
        seen |= bit;
        r.skip_ws();
        match r.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    r.skip_ws();
    if r.at != bytes.len() {
        return None;
    }
    Some(Scanned { s: s?, p: p?, v: v?, t: t?, c })
}

/// A cursor over the payload.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes`.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    #[inline]
    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// The key letter of a `"k":` right here, consumed; `None` (nothing consumed) for any
    /// other bytes, which the byte-by-byte path then reads or declines.
    #[inline]
    fn compact_key(&mut self) -> Option<u8> {
        let [open, key, close, colon] = *self.bytes.get(self.at..)?.first_chunk::<4>()?;
        (open == b'"' && close == b'"' && colon == b':').then(|| {
            self.at += 4;
            key
        })
    }

    /// JSON's four whitespace bytes.
    #[inline]
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The eight bytes from here as a little-endian word (the first byte lowest), padded
    /// with zero bytes past the end of the payload. The zeros are neither digits nor string
    /// bytes, so a scan of the word stops at the end.
    #[inline]
    fn word(&self) -> u64 {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        match rest.first_chunk::<8>() {
            Some(chunk) => u64::from_le_bytes(*chunk),
            None => {
                let mut chunk = [0u8; 8];
                chunk[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(chunk)
            }
        }
    }

    /// A string without escapes or control bytes (which JSON forbids unescaped), as UTF-8.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        // Eight bytes a step to the first quote, backslash or control byte: a symbol is
        // usually one step, and no per-byte branch is left to mispredict at its end.
        loop {
            let stop = string_stops(self.word());
            if stop != 0 {
                self.at += (stop.trailing_zeros() / 8) as usize;
                break;
            }
            self.at += 8;
        }
        if self.peek()? != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        self.at += 1;
        Some(text)
    }

    /// The digits from here: `acc` with them appended (without overflow checks) and how
    /// many there were. The caller knows from the count whether the value is exact (up to
    /// [`EXACT_DIGITS`] always are). Eight digits a step, so a number's length costs no
    /// branch per digit.
    #[inline]
    pub(super) fn digits(&mut self, mut acc: u64) -> (u64, usize) {
        let mut count = 0;
        loop {
            let values = self.word() ^ splat(b'0');
            let n = (digit_stops(values).trailing_zeros() / 8) as usize;
            if n > 0 {
                acc = acc.wrapping_mul(POW10_U64[n]).wrapping_add(eight_digits(values << (8 * (8 - n))));
            }
            self.at += n;
            count += n;
            if n < 8 {
                return (acc, count);
            }
        }
    }

    /// A JSON number as `f64`, rounded as serde_json rounds it (correctly, with its
    /// `float_roundtrip` feature). A number beyond `f64` is an error there, so it is declined.
    #[inline]
    fn float(&mut self) -> Option<f64> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        // Integer part: `0` or a digit string without a leading zero.
        let int_start = self.at;
        let (mut mantissa, int_digits) = self.digits(0);
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        let mut frac = 0;
        if self.peek() == Some(b'.') {
            self.at += 1;
            (mantissa, frac) = self.digits(mantissa);
            if frac == 0 {
                return None;
            }
        }
        let mut plain = int_digits + frac <= EXACT_DIGITS;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits(0).1 == 0 {
                return None;
            }
            plain = false;
        }
        // Clinger's fast path: a mantissa below 2^53 times an exactly representable power of
        // ten is one correctly rounded operation. Prices and volumes are nearly always this.
        if plain && mantissa < 1 << 53 && frac < POW10.len() {
            let magnitude = mantissa as f64 / POW10[frac];
            return Some(if negative { -magnitude } else { magnitude });
        }
        // Anything else through the standard library's correctly rounded parser.
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        text.parse::<f64>().ok().filter(|f| f.is_finite())
    }

    /// A time: a non-negative JSON integer within `i64` (anything else is declined; the
    /// total classifier tells a float or an out-of-range time from a wrong type).
    #[inline]
    fn time(&mut self) -> Option<i64> {
        let start = self.at;
        let (value, n) = self.digits(0);
        if n == 0
            || n > EXACT_DIGITS
            || (n > 1 && self.bytes[start] == b'0')
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        i64::try_from(value).ok()
    }

    /// `null` (`None`) or an array of escape-free strings.
    #[inline]
    fn conditions(&mut self) -> Option<Option<Conditions>> {
        if self.bytes[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        self.eat(b'[')?;
        let mut list = Conditions::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Some(Some(list));
        }
        loop {
            self.skip_ws();
            list.push(self.string()?.into());
            self.skip_ws();
            match self.next()? {
                b',' => continue,
                b']' => return Some(Some(list)),
                _ => return None,
            }
        }
    }
}

/// One in every byte of a word.
const LANES: u64 = u64::from_ne_bytes([1; 8]);
/// `byte` in every byte of a word.
const fn splat(byte: u8) -> u64 {
    LANES * byte as u64
}

/// The high bit of every byte of a word.
const HIGH: u64 = LANES << 7;

/// The high bit set in the first byte of `word` that ends a plain string (a quote, a
/// backslash or a control byte), and possibly in later bytes; zero when none does. Bytes
/// at and above 0x80 are string bytes (UTF-8 is checked once the string ends).
#[inline]
fn string_stops(word: u64) -> u64 {
    // `x - 0x01.. & !x & 0x80..` flags the zero bytes of `x` exactly up to the first one
    // (a borrow only travels upwards from a flagged byte), which is all a scan needs.
    let zero = |x: u64| x.wrapping_sub(LANES) & !x & HIGH;
    let control = word.wrapping_sub(splat(0x20)) & !word & HIGH;
    zero(word ^ splat(b'"')) | zero(word ^ splat(b'\\')) | control
}

/// The high bit set in the first byte of `values` (a word XORed with `'0'` in every byte)
/// that was not a digit, and possibly in later bytes; zero when all eight were digits.
#[inline]
fn digit_stops(values: u64) -> u64 {
    // A digit became 0..=9: adding 0x76 leaves its high bit clear. Anything else sets it,
    // either by the sum or (from 0x80 up) by itself; a carry out of such a byte only reaches
    // later bytes.
    (values.wrapping_add(splat(0x76)) | values) & HIGH
}

/// The value of eight decimal digit values, the first in the lowest byte (zeros in front
/// are leading zeros): three multiplications combine pairs, quads, then halves.
#[inline]
fn eight_digits(values: u64) -> u64 {
    let pairs = (values.wrapping_mul(10 << 8 | 1) >> 8) & 0x00FF_00FF_00FF_00FF;
    let quads = (pairs.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_FFFF_0000_FFFF;
    quads.wrapping_mul(10_000 << 32 | 1) >> 32
}

/// 10^n for the digit counts of one step.
const POW10_U64: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// Decimal digits a `u64` always holds: 10^19 - 1 < 2^64.
const EXACT_DIGITS: usize = 19;

/// The powers of ten `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];
