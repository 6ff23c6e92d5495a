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
    let mut r = Reader { bytes, at: 0 };
    r.skip_ws();
    r.eat(b'{')?;
    let (mut s, mut p, mut v, mut t, mut c) = (None, None, None, None, None);
    let mut seen = 0u8;
    loop {
        r.skip_ws();
        // `"k"`: one known letter, no escapes.
        r.eat(b'"')?;
        let key = r.next()?;
        r.eat(b'"')?;
        r.skip_ws();
        r.eat(b':')?;
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
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
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

    /// JSON's four whitespace bytes.
    #[inline]
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string without escapes or control bytes (which JSON forbids unescaped), as UTF-8.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let len = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        self.at += len + 1;
        Some(text)
    }

    /// Digits from here, accumulated into `acc` while they fit (`None` once they do not);
    /// returns how many there were.
    #[inline]
    fn digits(&mut self, acc: &mut Option<u64>) -> usize {
        let start = self.at;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            *acc = acc.and_then(|a| a.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            self.at += 1;
        }
        self.at - start
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
        let mut mantissa = Some(0u64);
        let int_start = self.at;
        let int_digits = self.digits(&mut mantissa);
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        let mut scale = 0i32;
        let mut plain = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            let frac = self.digits(&mut mantissa);
            if frac == 0 {
                return None;
            }
            scale = -(frac as i32);
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            let mut exp = Some(0u64);
            if self.digits(&mut exp) == 0 {
                return None;
            }
            plain = false;
        }
        // Clinger's fast path: a mantissa below 2^53 times an exactly representable power of
        // ten is one correctly rounded operation. Prices and volumes are nearly always this.
        if let (true, Some(m)) = (plain, mantissa) {
            if m < 1 << 53 && scale >= -22 {
                let magnitude = m as f64 / POW10[(-scale) as usize];
                return Some(if negative { -magnitude } else { magnitude });
            }
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
        let mut value = Some(0u64);
        let n = self.digits(&mut value);
        if n == 0 || (n > 1 && self.bytes[start] == b'0') || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        i64::try_from(value?).ok()
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

/// The powers of ten `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];
