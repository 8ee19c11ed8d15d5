//! The Effect RPC envelope in fingerprint mode: `uvarint(len) ‖ 0x21 ‖ fingerprint ‖ position ‖
//! fields by position`. One envelope per frame; a WebSocket message may carry several frames
//! and a frame may span messages ([`FrameBuffer`]).

use bytes::{Buf, Bytes, BytesMut};

use super::binary::{Reader, Writer, ENVELOPE_FINGERPRINT, FINGERPRINT_MODE};
use super::error::V4Error;

/// The most headers a request may carry.
const MAX_HEADERS: usize = 256;

/// The largest envelope frame Effect's peers accept (its body, in bytes).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

/// A request's id, echoed exactly as it came (Effect ids are `String | Number`; a number is an
/// integer, a short decimal or a float, each kept in its own form).
#[derive(Debug, Clone, PartialEq)]
pub enum RequestId {
    Int(i64),
    /// `mantissa / 10^scale` (scale 1..=8).
    Decimal {
        mantissa: i64,
        scale: u8,
    },
    Float(f64),
    Str(String),
}

impl RequestId {
    /// The id as a JavaScript number would hold it, or the string.
    pub fn as_json(&self) -> serde_json::Value {
        match self {
            Self::Int(v) => (*v).into(),
            Self::Decimal { mantissa, scale } => {
                serde_json::Number::from_f64(*mantissa as f64 / 10f64.powi(i32::from(*scale)))
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Self::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Self::Str(s) => s.clone().into(),
        }
    }

    fn write(&self, w: &mut Writer) {
        w.sized_with(|w| match self {
            Self::Int(v) => {
                w.uvarint(0);
                w.svarint(*v);
            }
            Self::Decimal { mantissa, scale } => {
                w.uvarint(0);
                w.svarint(*mantissa);
                w.buf.push(*scale);
            }
            Self::Float(f) => {
                w.uvarint(0);
                w.bytes(&f.to_le_bytes());
            }
            Self::Str(s) => {
                w.uvarint(1);
                w.bytes(s.as_bytes());
            }
        });
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, V4Error> {
        let mut region = Reader::new(r.sized()?);
        match region.len()? {
            0 => {
                let body = region.rest();
                if body.len() == 8 {
                    let mut f = [0u8; 8];
                    f.copy_from_slice(body);
                    return Ok(Self::Float(f64::from_le_bytes(f)));
                }
                let mut n = Reader::new(body);
                let mantissa = n.svarint()?;
                match n.rest() {
                    [] => Ok(Self::Int(mantissa)),
                    [scale @ 1..=8] => Ok(Self::Decimal {
                        mantissa,
                        scale: *scale,
                    }),
                    _ => Err(V4Error::Invalid("a request id that is not a number".into())),
                }
            }
            1 => Ok(Self::Str(super::binary::utf8(
                region.rest(),
                "a request id",
            )?)),
            other => Err(V4Error::Invalid(format!(
                "a request id of union member {other}, neither number nor string"
            ))),
        }
    }
}

/// Tracing fields of a request. Effect's EventLog client sends none; present-undefined reads as
/// absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    pub span_id: Option<String>,
    pub trace_id: Option<String>,
    pub sampled: Option<bool>,
    pub is_notification: bool,
    pub discard: bool,
}

/// An RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub tag: String,
    /// The payload's default-mode frame.
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
    pub options: RequestOptions,
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq)]
pub enum FromClient {
    Request(Request),
    /// "I have the chunk": the server may send the request's next one.
    Ack(RequestId),
    Interrupt(RequestId),
    Ping,
    Eof,
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum FromServer {
    /// A request's end: the default-mode frame of its `Exit`.
    Exit {
        request_id: RequestId,
        exit: Bytes,
    },
    /// Stream elements: the default-mode frame of a non-empty array of them.
    Chunk {
        request_id: RequestId,
        values: Bytes,
    },
    /// The connection is broken: the default-mode frame of a JSON defect.
    Defect(Bytes),
    Pong,
}

const ACK: u64 = 0;
const EXIT: u64 = 1;
const DEFECT: u64 = 2;
const PING: u64 = 3;
const EOF: u64 = 4;
const CHUNK: u64 = 5;
const PONG: u64 = 6;
const REQUEST: u64 = 7;
const INTERRUPT: u64 = 8;

/// Bits of the request's presence bitmap, in field id order.
const SPAN_ID: u8 = 1;
const SAMPLED: u8 = 2;
const TRACE_ID: u8 = 4;
const IS_NOTIFICATION: u8 = 8;
const DISCARD: u8 = 16;

fn envelope(position: u64, f: impl FnOnce(&mut Writer)) -> Bytes {
    let mut body = Writer::new();
    body.buf.push(FINGERPRINT_MODE);
    body.bytes(&ENVELOPE_FINGERPRINT);
    body.uvarint(position);
    f(&mut body);
    let mut out = Writer::new();
    out.sized(&body.buf);
    out.buf.into()
}

/// Reads the envelope body of one frame (after its length): mode, fingerprint, position.
fn open(body: &[u8]) -> Result<(u64, Reader<'_>), V4Error> {
    let mut r = Reader::new(body);
    let mode = r.byte()?;
    if mode != FINGERPRINT_MODE {
        return Err(V4Error::Invalid(format!(
            "an envelope with mode byte {mode:#04x}, not 0x21 (schema-binary)"
        )));
    }
    if r.take(8)? != ENVELOPE_FINGERPRINT {
        return Err(V4Error::Invalid(
            "an envelope with another layout fingerprint (not effect 4.x's RpcMessage)".into(),
        ));
    }
    let position = r.uvarint()?;
    Ok((position, r))
}

fn write_optional_string(w: &mut Writer, s: &str) {
    w.sized_with(|w| {
        w.uvarint(1);
        w.bytes(s.as_bytes());
    });
}

fn write_optional_bool(w: &mut Writer, b: bool) {
    w.sized_with(|w| {
        w.uvarint(0);
        w.buf.push(u8::from(b));
    });
}

/// `String | undefined` in positional mode: 1 = string, 0 = undefined.
fn read_optional_string(r: &mut Reader<'_>) -> Result<Option<String>, V4Error> {
    let mut region = Reader::new(r.sized()?);
    match region.len()? {
        1 => Ok(Some(super::binary::utf8(region.rest(), "a tracing field")?)),
        _ => Ok(None),
    }
}

/// `Boolean | undefined` in positional mode: 0 = bool, 1 = undefined.
fn read_optional_bool(r: &mut Reader<'_>) -> Result<Option<bool>, V4Error> {
    let mut region = Reader::new(r.sized()?);
    match region.len()? {
        0 => match region.rest() {
            [0] => Ok(Some(false)),
            [1] => Ok(Some(true)),
            _ => Err(V4Error::Invalid("a boolean that is not 0 or 1".into())),
        },
        _ => Ok(None),
    }
}

impl FromClient {
    pub fn encode(&self) -> Bytes {
        match self {
            Self::Ack(id) => envelope(ACK, |w| id.write(w)),
            Self::Interrupt(id) => envelope(INTERRUPT, |w| id.write(w)),
            Self::Ping => envelope(PING, |_| {}),
            Self::Eof => envelope(EOF, |_| {}),
            Self::Request(req) => envelope(REQUEST, |w| {
                let o = &req.options;
                let mut mask = 0u8;
                for (present, bit) in [
                    (o.span_id.is_some(), SPAN_ID),
                    (o.sampled.is_some(), SAMPLED),
                    (o.trace_id.is_some(), TRACE_ID),
                    (o.is_notification, IS_NOTIFICATION),
                    (o.discard, DISCARD),
                ] {
                    if present {
                        mask |= bit;
                    }
                }
                w.buf.push(mask);
                if let Some(s) = &o.span_id {
                    write_optional_string(w, s);
                }
                w.sized(&req.payload);
                req.id.write(w);
                if let Some(b) = o.sampled {
                    write_optional_bool(w, b);
                }
                w.sized(req.tag.as_bytes());
                if let Some(s) = &o.trace_id {
                    write_optional_string(w, s);
                }
                w.sized_with(|w| {
                    w.uvarint(req.headers.len() as u64);
                    for (k, v) in &req.headers {
                        w.sized_with(|w| {
                            w.sized(k.as_bytes());
                            w.sized(v.as_bytes());
                        });
                    }
                });
                if o.is_notification {
                    write_optional_bool(w, true);
                }
                if o.discard {
                    write_optional_bool(w, true);
                }
            }),
        }
    }

    /// Decodes one envelope frame's body (what follows its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, V4Error> {
        let (position, mut r) = open(body)?;
        let msg = match position {
            ACK => Self::Ack(RequestId::read(&mut r)?),
            INTERRUPT => Self::Interrupt(RequestId::read(&mut r)?),
            PING => Self::Ping,
            EOF => Self::Eof,
            REQUEST => {
                let mask = r.byte()?;
                let mut options = RequestOptions::default();
                if mask & SPAN_ID != 0 {
                    options.span_id = read_optional_string(&mut r)?;
                }
                let payload = Bytes::copy_from_slice(r.sized()?);
                let id = RequestId::read(&mut r)?;
                if mask & SAMPLED != 0 {
                    options.sampled = read_optional_bool(&mut r)?;
                }
                let tag = super::binary::utf8(r.sized()?, "a request tag")?;
                if mask & TRACE_ID != 0 {
                    options.trace_id = read_optional_string(&mut r)?;
                }
                let mut headers_region = Reader::new(r.sized()?);
                let count = headers_region.len()?;
                if count > headers_region.remaining() / 3 || count > MAX_HEADERS {
                    return Err(V4Error::Invalid(format!(
                        "{count} headers in {} bytes (at most {MAX_HEADERS})",
                        headers_region.remaining()
                    )));
                }
                let mut headers = Vec::new();
                for _ in 0..count {
                    let mut pair = Reader::new(headers_region.sized()?);
                    let k = super::binary::utf8(pair.sized()?, "a header name")?;
                    let v = super::binary::utf8(pair.sized()?, "a header value")?;
                    pair.end("a header")?;
                    headers.push((k, v));
                }
                headers_region.end("the headers")?;
                if mask & IS_NOTIFICATION != 0 {
                    options.is_notification = read_optional_bool(&mut r)?.unwrap_or(false);
                }
                if mask & DISCARD != 0 {
                    options.discard = read_optional_bool(&mut r)?.unwrap_or(false);
                }
                Self::Request(Request {
                    id,
                    tag,
                    payload,
                    headers,
                    options,
                })
            }
            EXIT | DEFECT | CHUNK | PONG => {
                return Err(V4Error::Invalid(format!(
                    "a server's message (envelope position {position}) sent by a client"
                )))
            }
            other => {
                return Err(V4Error::Invalid(format!(
                    "unknown envelope position {other}"
                )))
            }
        };
        r.end("an envelope")?;
        Ok(msg)
    }
}

impl FromServer {
    pub fn encode(&self) -> Bytes {
        match self {
            Self::Exit { request_id, exit } => envelope(EXIT, |w| {
                request_id.write(w);
                w.sized(exit);
            }),
            Self::Chunk { request_id, values } => envelope(CHUNK, |w| {
                w.sized(values);
                request_id.write(w);
            }),
            Self::Defect(defect) => envelope(DEFECT, |w| w.sized(defect)),
            Self::Pong => envelope(PONG, |_| {}),
        }
    }

    /// Decodes one envelope frame's body (what follows its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, V4Error> {
        let (position, mut r) = open(body)?;
        let msg = match position {
            EXIT => {
                let request_id = RequestId::read(&mut r)?;
                Self::Exit {
                    request_id,
                    exit: Bytes::copy_from_slice(r.sized()?),
                }
            }
            CHUNK => {
                let values = Bytes::copy_from_slice(r.sized()?);
                Self::Chunk {
                    request_id: RequestId::read(&mut r)?,
                    values,
                }
            }
            DEFECT => Self::Defect(Bytes::copy_from_slice(r.sized()?)),
            PONG => Self::Pong,
            other => {
                return Err(V4Error::Invalid(format!(
                    "envelope position {other} is not a server's message"
                )))
            }
        };
        r.end("an envelope")?;
        Ok(msg)
    }
}

/// Splits a byte stream into envelope frames: several frames in one WebSocket message, or one
/// frame over several, both decode. Refuses a frame over `max` bytes before buffering it.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    max: usize,
}

impl FrameBuffer {
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame's body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, V4Error> {
        let mut r = Reader::new(&self.buf);
        let len = match r.uvarint() {
            Ok(len) => len,
            // An incomplete length prefix: wait for more, unless it can no longer be a varint.
            Err(V4Error::Truncated(_)) if self.buf.len() < 10 => return Ok(None),
            Err(e) => return Err(e),
        };
        if len == 0 {
            return Err(V4Error::Invalid("an empty envelope frame".into()));
        }
        if len > self.max as u64 {
            return Err(V4Error::TooLarge {
                size: len,
                max: self.max,
            });
        }
        let header = self.buf.len() - r.remaining();
        let len = len as usize;
        if r.remaining() < len {
            return Ok(None);
        }
        self.buf.advance(header);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}
