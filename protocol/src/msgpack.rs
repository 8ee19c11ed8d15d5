//! msgpack primitives: a strict frame walker and writers that produce exactly what msgpackr
//! writes, plus the serde field types that accept exactly what Effect's decoders accept.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::number::JsNumber;

/// Deepest nesting the walker follows. Protocol messages nest three levels (message → entries
/// array → entry map); anything far deeper is an attack on the stack, not a message.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("the frame is empty")]
    Empty,
    #[error("the frame ends inside a value")]
    Truncated,
    #[error("{0} bytes follow the message")]
    TrailingBytes(usize),
    #[error("the reserved marker 0xc1")]
    ReservedMarker,
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the top-level value is not a map")]
    NotAMap,
    #[error("the message has no string `_tag`")]
    MissingTag,
}

/// Checks that `frame` holds exactly one well-formed msgpack map and returns its `_tag`.
///
/// This runs before serde sees the frame: rmp-serde does not report trailing bytes, and doing
/// the structural check once here means serde only ever sees complete values.
pub fn frame_tag(frame: &[u8]) -> Result<&str, WalkError> {
    let first = *frame.first().ok_or(WalkError::Empty)?;
    let (entries, mut pos) = match first {
        0x80..=0x8f => (usize::from(first & 0x0f), 1),
        0xde => (usize::from(read_u16(frame, 1)?), 3),
        0xdf => (read_u32(frame, 1)? as usize, 5),
        _ => return Err(WalkError::NotAMap),
    };
    let mut tag = None;
    for _ in 0..entries {
        let key_start = pos;
        pos = skip(frame, pos, 1)?;
        let value_start = pos;
        pos = skip(frame, pos, 1)?;
        if as_str(&frame[key_start..value_start]) == Some("_tag") {
            // msgpackr builds a JS object: a repeated key keeps the last value.
            tag = as_str(&frame[value_start..pos]);
        }
    }
    if pos != frame.len() {
        return Err(WalkError::TrailingBytes(frame.len() - pos));
    }
    tag.ok_or(WalkError::MissingTag)
}

/// The string held by an encoded msgpack str value, if `value` is exactly one.
/// Checks that `bytes` holds exactly one well-formed msgpack value (of any type).
pub fn single_value(bytes: &[u8]) -> Result<(), WalkError> {
    if bytes.is_empty() {
        return Err(WalkError::Empty);
    }
    let end = skip(bytes, 0, 0)?;
    if end != bytes.len() {
        return Err(WalkError::TrailingBytes(bytes.len() - end));
    }
    Ok(())
}

fn as_str(value: &[u8]) -> Option<&str> {
    let header = match *value.first()? {
        0xa0..=0xbf => 1,
        0xd9 => 2,
        0xda => 3,
        0xdb => 5,
        _ => return None,
    };
    std::str::from_utf8(value.get(header..)?).ok()
}

fn read_u8(b: &[u8], at: usize) -> Result<u8, WalkError> {
    b.get(at).copied().ok_or(WalkError::Truncated)
}

fn read_u16(b: &[u8], at: usize) -> Result<u16, WalkError> {
    let s = b.get(at..at + 2).ok_or(WalkError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, WalkError> {
    let s = b.get(at..at + 4).ok_or(WalkError::Truncated)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Returns the position just past the value that starts at `pos`.
fn skip(b: &[u8], pos: usize, depth: usize) -> Result<usize, WalkError> {
    if depth > MAX_DEPTH {
        return Err(WalkError::TooDeep);
    }
    let marker = read_u8(b, pos)?;
    let p = pos + 1;
    // (bytes of payload after the header, number of nested values)
    let (header, payload, children): (usize, usize, usize) = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0, 0),
        0x80..=0x8f => (0, 0, 2 * usize::from(marker & 0x0f)),
        0x90..=0x9f => (0, 0, usize::from(marker & 0x0f)),
        0xa0..=0xbf => (0, usize::from(marker & 0x1f), 0),
        0xc1 => return Err(WalkError::ReservedMarker),
        0xc4 | 0xd9 => (1, usize::from(read_u8(b, p)?), 0),
        0xc5 | 0xda => (2, usize::from(read_u16(b, p)?), 0),
        0xc6 | 0xdb => (4, read_u32(b, p)? as usize, 0),
        0xc7 => (2, usize::from(read_u8(b, p)?), 0),
        0xc8 => (3, usize::from(read_u16(b, p)?), 0),
        0xc9 => (5, read_u32(b, p)? as usize, 0),
        0xca => (0, 4, 0),
        0xcb => (0, 8, 0),
        0xcc | 0xd0 => (0, 1, 0),
        0xcd | 0xd1 => (0, 2, 0),
        0xce | 0xd2 => (0, 4, 0),
        0xcf | 0xd3 => (0, 8, 0),
        0xd4 => (0, 2, 0),
        0xd5 => (0, 3, 0),
        0xd6 => (0, 5, 0),
        0xd7 => (0, 9, 0),
        0xd8 => (0, 17, 0),
        0xdc => (2, 0, usize::from(read_u16(b, p)?)),
        0xdd => (4, 0, read_u32(b, p)? as usize),
        0xde => (2, 0, 2 * usize::from(read_u16(b, p)?)),
        0xdf => (4, 0, 2 * read_u32(b, p)? as usize),
    };
    let mut end = p
        .checked_add(header)
        .and_then(|e| e.checked_add(payload))
        .ok_or(WalkError::Truncated)?;
    if end > b.len() {
        return Err(WalkError::Truncated);
    }
    // Every value takes at least one byte: a count larger than what is left is a lie, and
    // refusing it here keeps a tiny frame from making us loop four billion times.
    if children > b.len() - end {
        return Err(WalkError::Truncated);
    }
    for _ in 0..children {
        end = skip(b, end, depth + 1)?;
    }
    Ok(end)
}

// ---------------------------------------------------------------------------------------------
// Writers: exactly msgpackr's choices (map16 for every map, the shortest header elsewhere).

pub fn write_map(buf: &mut Vec<u8>, len: u16) {
    buf.push(0xde);
    buf.extend_from_slice(&len.to_be_bytes());
}

pub fn write_array(buf: &mut Vec<u8>, len: usize) {
    if len < 16 {
        buf.push(0x90 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(0xdc);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(0xdd);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        buf.push(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        buf.push(0xd9);
        buf.push(len);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(0xda);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(0xdb);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
    }
    buf.extend_from_slice(s.as_bytes());
}

pub fn write_bin(buf: &mut Vec<u8>, b: &[u8]) {
    let len = b.len();
    if let Ok(len) = u8::try_from(len) {
        buf.push(0xc4);
        buf.push(len);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(0xc5);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(0xc6);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
    }
    buf.extend_from_slice(b);
}

/// A key-value pair whose key is a str: the shape of every protocol field.
pub fn write_key(buf: &mut Vec<u8>, key: &str) {
    write_str(buf, key);
}

/// A JS number the way msgpackr writes it: uint32 range → smallest uint, int32 range → smallest
/// int, anything else (fractions, NaN, ±∞, beyond 32 bits) → float64. Never uint64/int64.
pub fn write_number(buf: &mut Vec<u8>, v: f64) {
    if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
        write_uint32(buf, v as u32);
    } else if v.fract() == 0.0 && (f64::from(i32::MIN)..0.0).contains(&v) {
        let n = v as i32;
        if n >= -32 {
            buf.push(n as i8 as u8);
        } else if let Ok(n) = i8::try_from(n) {
            buf.push(0xd0);
            buf.push(n as u8);
        } else if let Ok(n) = i16::try_from(n) {
            buf.push(0xd1);
            buf.extend_from_slice(&n.to_be_bytes());
        } else {
            buf.push(0xd2);
            buf.extend_from_slice(&n.to_be_bytes());
        }
    } else {
        buf.push(0xcb);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

/// A sequence number: uint up to 2^32−1, float64 beyond (exact up to 2^53).
pub fn write_u64(buf: &mut Vec<u8>, v: u64) {
    match u32::try_from(v) {
        Ok(v) => write_uint32(buf, v),
        Err(_) => {
            buf.push(0xcb);
            buf.extend_from_slice(&(v as f64).to_be_bytes());
        }
    }
}

fn write_uint32(buf: &mut Vec<u8>, v: u32) {
    if v < 128 {
        buf.push(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        buf.push(0xcc);
        buf.push(v);
    } else if let Ok(v) = u16::try_from(v) {
        buf.push(0xcd);
        buf.extend_from_slice(&v.to_be_bytes());
    } else {
        buf.push(0xce);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Field types for serde: what Effect's `Schema` accepts for each kind of field, no more.

/// A `Schema.String` field: a msgpack str and nothing else (serde's `&str` would take bin too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str<'a>(pub &'a str);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a msgpack str")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `Uint8Array` field: msgpack bin of any length (str, arrays and ext are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bin<'a>(pub &'a [u8]);

impl<'de: 'a, 'a> Deserialize<'de> for Bin<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bin<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("msgpack bin")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Bin(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `Schema.Number` field: any int family up to 32 bits, float32 or float64. uint64 and int64
/// are refused, as msgpackr turns them into a `BigInt` that the schema rejects.
impl<'de> Deserialize<'de> for JsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = JsNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number (int up to 32 bits, float32 or float64)")
            }
            fn visit_u8<E: de::Error>(self, v: u8) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_u16<E: de::Error>(self, v: u16) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_u32<E: de::Error>(self, v: u32) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_i8<E: de::Error>(self, v: i8) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_i16<E: de::Error>(self, v: i16) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_i32<E: de::Error>(self, v: i32) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<JsNumber, E> {
                Ok(JsNumber(f64::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsNumber, E> {
                Ok(JsNumber(v))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsNumber, E> {
                Err(E::custom(
                    "uint64 is not a JS number (msgpackr reads it as a BigInt)",
                ))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsNumber, E> {
                Err(E::custom(
                    "int64 is not a JS number (msgpackr reads it as a BigInt)",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number_hex(v: f64) -> String {
        let mut b = Vec::new();
        write_number(&mut b, v);
        hex::encode(b)
    }

    #[test]
    fn numbers_match_msgpackr() {
        // The table in the wire spec, §2.1.
        let cases: &[(f64, &str)] = &[
            (0.0, "00"),
            (127.0, "7f"),
            (128.0, "cc80"),
            (256.0, "cd0100"),
            (65535.0, "cdffff"),
            (70000.0, "ce00011170"),
            (4294967295.0, "ceffffffff"),
            (4294967296.0, "cb41f0000000000000"),
            (9007199254740991.0, "cb433fffffffffffff"),
            (-1.0, "ff"),
            (-32.0, "e0"),
            (-33.0, "d0df"),
            (-128.0, "d080"),
            (-129.0, "d1ff7f"),
            (-32769.0, "d2ffff7fff"),
            (-2147483648.0, "d280000000"),
            (-2147483649.0, "cbc1e0000000200000"),
            (1.5, "cb3ff8000000000000"),
            (f64::NAN, "cb7ff8000000000000"),
            (-0.0, "00"),
        ];
        for (v, want) in cases {
            assert_eq!(number_hex(*v), *want, "{v}");
        }
    }

    #[test]
    fn walker_finds_tag_and_rejects_garbage() {
        let ping = hex::decode("de0002a2696401a45f746167a450696e67").expect("hex");
        assert_eq!(frame_tag(&ping), Ok("Ping"));
        let mut trailing = ping.clone();
        trailing.push(0);
        assert_eq!(frame_tag(&trailing), Err(WalkError::TrailingBytes(1)));
        assert_eq!(
            frame_tag(&ping[..ping.len() - 1]),
            Err(WalkError::Truncated)
        );
        assert_eq!(frame_tag(&[]), Err(WalkError::Empty));
        assert_eq!(frame_tag(&[0xc1]), Err(WalkError::NotAMap));
        assert_eq!(
            frame_tag(&[0x81, 0xc1, 0x00]),
            Err(WalkError::ReservedMarker)
        );
        // A map that claims 2^32-1 entries in five bytes.
        assert_eq!(
            frame_tag(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(WalkError::Truncated)
        );
        // An array nested far too deep.
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 100));
        deep.push(0x00);
        assert_eq!(frame_tag(&deep), Err(WalkError::TooDeep));
        assert_eq!(frame_tag(&[0x80]), Err(WalkError::MissingTag));
    }
}
