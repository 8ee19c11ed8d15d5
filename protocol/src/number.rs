//! JavaScript numbers on the wire.
//!
//! Effect's schemas type every numeric field as a JS `number` (an f64). msgpackr writes an integral
//! value in `[0, 2^32)` as the smallest unsigned int, in `[-2^31, 0)` as the smallest signed int,
//! and anything else as float64. It reads uint64/int64 as `BigInt`, which the schemas refuse.

use std::fmt;

/// A JavaScript number: what every numeric protocol field holds.
///
/// Ids are echoed back verbatim (a `Ping{id: 1.5}` gets `Pong{id: 1.5}`), so they stay a
/// `JsNumber`; sequence numbers are converted to `u64` at the edge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JsNumber(pub f64);

/// The largest integer a JS number holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl JsNumber {
    /// The value as a non-negative integer, if it is one a JS number holds exactly.
    pub fn as_u64(self) -> Option<u64> {
        let v = self.0;
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= MAX_SAFE_INTEGER as f64 {
            Some(v as u64)
        } else {
            None
        }
    }

    /// A key that is equal exactly when two ids are the same JS number (`-0` and `0` agree).
    pub fn key(self) -> u64 {
        if self.0 == 0.0 {
            0
        } else {
            self.0.to_bits()
        }
    }
}

impl From<u32> for JsNumber {
    fn from(v: u32) -> Self {
        JsNumber(f64::from(v))
    }
}

impl From<u64> for JsNumber {
    /// Values above 2^53 lose precision, as they would in JavaScript.
    fn from(v: u64) -> Self {
        JsNumber(v as f64)
    }
}

impl fmt::Display for JsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_u64() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{}", self.0),
        }
    }
}
