//! Protocol messages in both directions, with byte-exact encoders and lenient decoders.
//!
//! Encoders write what msgpackr writes: map16 for every map, fields in the schema's declaration
//! order, `_tag` last, the shortest header for everything else. Decoders accept what Effect's
//! decoders accept: any map header, any key order, unknown keys, every int width up to 32 bits
//! and float32/64 for numbers. They refuse uint64/int64, trailing bytes, str where bin belongs
//! and unknown tags. Bytes fields of a decoded message share the frame's buffer.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

pub use crate::msgpack::WalkError as FrameError;
use crate::msgpack::{
    frame_tag, write_array, write_bin, write_key, write_map, write_number, write_str, write_u64,
    Bin, Str,
};
use crate::number::JsNumber;

/// A message from a client to the relay (Effect's `ProtocolRequest`).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMsg {
    WriteEntries(WriteEntries),
    /// Every entry with `sequence >= start_sequence`, then live entries.
    RequestChanges {
        public_key: String,
        start_sequence: u64,
        /// Extension (`snapshot: true` on the wire, written only when set): start from the
        /// log's newest snapshot when it covers `start_sequence`, then the entries after it.
        snapshot: bool,
    },
    /// Extension: an encrypted snapshot of a log's state covering every entry up to and
    /// including `sequence`. Answered by [`RelayMsg::SnapshotAck`] once durable.
    WriteSnapshot(WriteSnapshot),
    StopChanges {
        public_key: String,
    },
    Chunked(Chunk),
    Ping {
        id: JsNumber,
    },
}

/// A batch of encrypted entries for one log, all sealed under one `iv`.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteEntries {
    pub public_key: String,
    /// Echoed by the [`RelayMsg::Ack`]; counts from 0 per connection in the reference client.
    pub id: JsNumber,
    pub iv: Bytes,
    pub entries: Vec<EncryptedEntry>,
}

/// An encrypted snapshot of one log (extension). The relay stores it as it is and never
/// interprets `iv` or `data`.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteSnapshot {
    pub public_key: String,
    /// Echoed by the [`RelayMsg::SnapshotAck`].
    pub id: JsNumber,
    /// The last sequence the snapshot covers; the log must have reached it.
    pub sequence: u64,
    pub iv: Bytes,
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedEntry {
    pub entry_id: Bytes,
    pub encrypted_entry: Bytes,
}

/// One slice of a larger encoded message (`ChunkedMessage`).
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub id: JsNumber,
    pub index: u32,
    pub total: u32,
    pub data: Bytes,
}

/// A message from the relay to a client (Effect's `ProtocolResponse`, plus the `wharf.v1`
/// extension messages, which are sent only to clients that negotiated the extension).
#[derive(Clone, Debug, PartialEq)]
pub enum RelayMsg {
    Hello {
        remote_id: Bytes,
    },
    /// `sequence_numbers[i]` is the sequence of entry `i` of the acknowledged write.
    Ack {
        id: JsNumber,
        sequence_numbers: Vec<u64>,
    },
    Changes {
        public_key: String,
        entries: Vec<RemoteEntry>,
    },
    Chunked(Chunk),
    Pong {
        id: JsNumber,
    },
    /// Extension: why the relay is about to close the connection.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Extension: every entry of `public_key` below `next_sequence` has been delivered; what
    /// follows is live.
    CaughtUp {
        public_key: String,
        next_sequence: u64,
    },
    /// Extension: sent first for each `RequestChanges`: the log's next sequence when the
    /// subscription started, so a client can say how far behind it is while it catches up.
    Head {
        public_key: String,
        next_sequence: u64,
    },
    /// Extension: the snapshot of `public_key` was stored durably.
    SnapshotAck {
        id: JsNumber,
        sequence: u64,
    },
    /// Extension: the log's newest snapshot, covering every entry up to and including
    /// `sequence`; the entries that follow start after it.
    Snapshot {
        public_key: String,
        sequence: u64,
        iv: Bytes,
        data: Bytes,
    },
    /// Extension: the log's history below `first_sequence` was deleted by a retention policy;
    /// the entries that follow start there.
    HistoryStarts {
        public_key: String,
        first_sequence: u64,
    },
}

/// A stored entry as the relay returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    pub sequence: u64,
    pub iv: Bytes,
    pub entry_id: Bytes,
    pub encrypted_entry: Bytes,
}

impl RemoteEntry {
    /// An upper bound on this entry's size inside an encoded `Changes`.
    pub fn encoded_len_bound(&self) -> usize {
        // map16 header, four keys (41 bytes), a number (≤ 9), three bin headers (≤ 5 each).
        3 + 41 + 9 + 15 + self.iv.len() + self.entry_id.len() + self.encrypted_entry.len()
    }
}

/// The `code` of an extension [`RelayMsg::Error`]. Unknown codes from a newer relay decode as
/// [`ErrorCode::Other`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not a message this relay understands (bad msgpack, unknown tag, …).
    InvalidMessage,
    /// A text frame, or another frame type the protocol does not use.
    UnsupportedData,
    /// A configured limit was exceeded (frame size, batch size, publicKey length, chunks, …).
    LimitExceeded,
    /// The relay failed, for example to write to disk. Nothing was acknowledged.
    Internal,
    /// The relay is shutting down; reconnect later.
    ShuttingDown,
    /// The connection's token is no longer valid (expired or revoked).
    Unauthorized,
    /// The connection's token does not allow this message (action or log out of scope).
    Forbidden,
    /// The write would take the tenant over a quota (stored bytes or logs); nothing stored
    /// was touched.
    QuotaExceeded,
    /// A snapshot was refused: it names a sequence the log has not reached, or it is too large.
    SnapshotRefused,
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnsupportedData => "unsupported_data",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::SnapshotRefused => "snapshot_refused",
            ErrorCode::Other(s) => s,
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "invalid_message" => ErrorCode::InvalidMessage,
            "unsupported_data" => ErrorCode::UnsupportedData,
            "limit_exceeded" => ErrorCode::LimitExceeded,
            "internal" => ErrorCode::Internal,
            "shutting_down" => ErrorCode::ShuttingDown,
            "unauthorized" => ErrorCode::Unauthorized,
            "forbidden" => ErrorCode::Forbidden,
            "quota_exceeded" => ErrorCode::QuotaExceeded,
            "snapshot_refused" => ErrorCode::SnapshotRefused,
            other => ErrorCode::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("unknown message tag {0:?}")]
    UnknownTag(String),
    #[error("invalid {tag}: {reason}")]
    Invalid { tag: &'static str, reason: String },
}

impl DecodeError {
    fn invalid(tag: &'static str, reason: impl fmt::Display) -> Self {
        DecodeError::Invalid {
            tag,
            reason: reason.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

impl ClientMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        match self {
            ClientMsg::WriteEntries(w) => {
                let body: usize = w
                    .entries
                    .iter()
                    .map(|e| 40 + e.entry_id.len() + e.encrypted_entry.len())
                    .sum();
                b.reserve(body + w.public_key.len() + 64);
                write_map(&mut b, 5);
                write_key(&mut b, "publicKey");
                write_str(&mut b, &w.public_key);
                write_key(&mut b, "id");
                write_number(&mut b, w.id.0);
                write_key(&mut b, "iv");
                write_bin(&mut b, &w.iv);
                write_key(&mut b, "encryptedEntries");
                write_array(&mut b, w.entries.len());
                for e in &w.entries {
                    write_map(&mut b, 2);
                    write_key(&mut b, "entryId");
                    write_bin(&mut b, &e.entry_id);
                    write_key(&mut b, "encryptedEntry");
                    write_bin(&mut b, &e.encrypted_entry);
                }
                write_tag(&mut b, "WriteEntries");
            }
            ClientMsg::RequestChanges {
                public_key,
                start_sequence,
                snapshot,
            } => {
                write_map(&mut b, if *snapshot { 4 } else { 3 });
                write_key(&mut b, "publicKey");
                write_str(&mut b, public_key);
                write_key(&mut b, "startSequence");
                write_u64(&mut b, *start_sequence);
                if *snapshot {
                    write_key(&mut b, "snapshot");
                    b.push(0xc3);
                }
                write_tag(&mut b, "RequestChanges");
            }
            ClientMsg::WriteSnapshot(w) => {
                b.reserve(w.data.len() + w.public_key.len() + 64);
                write_map(&mut b, 6);
                write_key(&mut b, "publicKey");
                write_str(&mut b, &w.public_key);
                write_key(&mut b, "id");
                write_number(&mut b, w.id.0);
                write_key(&mut b, "sequence");
                write_u64(&mut b, w.sequence);
                write_key(&mut b, "iv");
                write_bin(&mut b, &w.iv);
                write_key(&mut b, "data");
                write_bin(&mut b, &w.data);
                write_tag(&mut b, "WriteSnapshot");
            }
            ClientMsg::StopChanges { public_key } => {
                write_map(&mut b, 2);
                write_key(&mut b, "publicKey");
                write_str(&mut b, public_key);
                write_tag(&mut b, "StopChanges");
            }
            ClientMsg::Chunked(c) => write_chunk(&mut b, c),
            ClientMsg::Ping { id } => {
                write_map(&mut b, 2);
                write_key(&mut b, "id");
                write_number(&mut b, id.0);
                write_tag(&mut b, "Ping");
            }
        }
        b
    }
}

impl RelayMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        match self {
            RelayMsg::Hello { remote_id } => {
                write_map(&mut b, 2);
                write_key(&mut b, "remoteId");
                write_bin(&mut b, remote_id);
                write_tag(&mut b, "Hello");
            }
            RelayMsg::Ack {
                id,
                sequence_numbers,
            } => {
                write_map(&mut b, 3);
                write_key(&mut b, "id");
                write_number(&mut b, id.0);
                write_key(&mut b, "sequenceNumbers");
                write_array(&mut b, sequence_numbers.len());
                for s in sequence_numbers {
                    write_u64(&mut b, *s);
                }
                write_tag(&mut b, "Ack");
            }
            RelayMsg::Changes {
                public_key,
                entries,
            } => encode_changes_into(&mut b, public_key, entries),
            RelayMsg::Chunked(c) => write_chunk(&mut b, c),
            RelayMsg::Pong { id } => {
                write_map(&mut b, 2);
                write_key(&mut b, "id");
                write_number(&mut b, id.0);
                write_tag(&mut b, "Pong");
            }
            RelayMsg::Error { code, message } => {
                write_map(&mut b, 3);
                write_key(&mut b, "code");
                write_str(&mut b, code.as_str());
                write_key(&mut b, "message");
                write_str(&mut b, message);
                write_tag(&mut b, "Error");
            }
            RelayMsg::CaughtUp {
                public_key,
                next_sequence,
            } => write_position(&mut b, public_key, *next_sequence, "CaughtUp"),
            RelayMsg::Head {
                public_key,
                next_sequence,
            } => write_position(&mut b, public_key, *next_sequence, "Head"),
            RelayMsg::SnapshotAck { id, sequence } => {
                write_map(&mut b, 3);
                write_key(&mut b, "id");
                write_number(&mut b, id.0);
                write_key(&mut b, "sequence");
                write_u64(&mut b, *sequence);
                write_tag(&mut b, "SnapshotAck");
            }
            RelayMsg::Snapshot {
                public_key,
                sequence,
                iv,
                data,
            } => {
                b.reserve(data.len() + public_key.len() + 48);
                write_map(&mut b, 5);
                write_key(&mut b, "publicKey");
                write_str(&mut b, public_key);
                write_key(&mut b, "sequence");
                write_u64(&mut b, *sequence);
                write_key(&mut b, "iv");
                write_bin(&mut b, iv);
                write_key(&mut b, "data");
                write_bin(&mut b, data);
                write_tag(&mut b, "Snapshot");
            }
            RelayMsg::HistoryStarts {
                public_key,
                first_sequence,
            } => {
                write_map(&mut b, 3);
                write_key(&mut b, "publicKey");
                write_str(&mut b, public_key);
                write_key(&mut b, "firstSequence");
                write_u64(&mut b, *first_sequence);
                write_tag(&mut b, "HistoryStarts");
            }
        }
        b
    }

    /// The message's `_tag` on the wire.
    pub fn tag(&self) -> &'static str {
        match self {
            RelayMsg::Hello { .. } => "Hello",
            RelayMsg::Ack { .. } => "Ack",
            RelayMsg::Changes { .. } => "Changes",
            RelayMsg::Chunked(_) => "ChunkedMessage",
            RelayMsg::Pong { .. } => "Pong",
            RelayMsg::Error { .. } => "Error",
            RelayMsg::CaughtUp { .. } => "CaughtUp",
            RelayMsg::Head { .. } => "Head",
            RelayMsg::SnapshotAck { .. } => "SnapshotAck",
            RelayMsg::Snapshot { .. } => "Snapshot",
            RelayMsg::HistoryStarts { .. } => "HistoryStarts",
        }
    }

    /// Whether this message exists only in the `wharf.v1` extension (a plain v3 client must
    /// never receive it).
    pub fn is_extension(&self) -> bool {
        matches!(
            self,
            RelayMsg::Error { .. }
                | RelayMsg::CaughtUp { .. }
                | RelayMsg::Head { .. }
                | RelayMsg::SnapshotAck { .. }
                | RelayMsg::Snapshot { .. }
                | RelayMsg::HistoryStarts { .. }
        )
    }
}

fn write_position(b: &mut Vec<u8>, public_key: &str, next_sequence: u64, tag: &str) {
    write_map(b, 3);
    write_key(b, "publicKey");
    write_str(b, public_key);
    write_key(b, "nextSequence");
    write_u64(b, next_sequence);
    write_tag(b, tag);
}

/// Encodes a `Changes` without building a [`RelayMsg`] (the relay's hot path).
pub fn encode_changes<'a>(
    public_key: &str,
    entries: impl IntoIterator<Item = &'a RemoteEntry> + Clone,
) -> Vec<u8> {
    let size: usize = entries
        .clone()
        .into_iter()
        .map(RemoteEntry::encoded_len_bound)
        .sum();
    let mut b = Vec::with_capacity(size + public_key.len() + 40);
    encode_changes_into(&mut b, public_key, entries);
    b
}

fn encode_changes_into<'a>(
    b: &mut Vec<u8>,
    public_key: &str,
    entries: impl IntoIterator<Item = &'a RemoteEntry>,
) {
    let entries = entries.into_iter();
    write_map(b, 3);
    write_key(b, "publicKey");
    write_str(b, public_key);
    write_key(b, "entries");
    // The count goes first; patch it after writing (like msgpackr does for maps).
    let count_at = b.len();
    b.extend_from_slice(&[0xdd, 0, 0, 0, 0]);
    let mut count: u32 = 0;
    for e in entries {
        write_map(b, 4);
        write_key(b, "sequence");
        write_u64(b, e.sequence);
        write_key(b, "iv");
        write_bin(b, &e.iv);
        write_key(b, "entryId");
        write_bin(b, &e.entry_id);
        write_key(b, "encryptedEntry");
        write_bin(b, &e.encrypted_entry);
        count += 1;
    }
    // Rewrite the header in its shortest form, as msgpackr would have written it.
    let mut header = Vec::with_capacity(5);
    write_array(&mut header, count as usize);
    b.splice(count_at..count_at + 5, header);
    write_tag(b, "Changes");
}

fn write_chunk(b: &mut Vec<u8>, c: &Chunk) {
    b.reserve(c.data.len() + 48);
    write_map(b, 4);
    write_key(b, "id");
    write_number(b, c.id.0);
    write_key(b, "part");
    write_array(b, 2);
    write_u64(b, u64::from(c.index));
    write_u64(b, u64::from(c.total));
    write_key(b, "data");
    write_bin(b, &c.data);
    write_tag(b, "ChunkedMessage");
}

fn write_tag(b: &mut Vec<u8>, tag: &str) {
    write_key(b, "_tag");
    write_str(b, tag);
}

// ---------------------------------------------------------------------------------------------
// Decoding

#[derive(DeriveDeserialize)]
struct WireWriteEntries<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    id: JsNumber,
    #[serde(borrow)]
    iv: Bin<'a>,
    #[serde(rename = "encryptedEntries", borrow)]
    encrypted_entries: Vec<WireEncryptedEntry<'a>>,
}

#[derive(DeriveDeserialize)]
struct WireEncryptedEntry<'a> {
    #[serde(rename = "entryId", borrow)]
    entry_id: Bin<'a>,
    #[serde(rename = "encryptedEntry", borrow)]
    encrypted_entry: Bin<'a>,
}

#[derive(DeriveDeserialize)]
struct WireRequestChanges<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    #[serde(rename = "startSequence")]
    start_sequence: JsNumber,
    /// Extension; absent from every v3 client's messages.
    #[serde(default)]
    snapshot: Option<bool>,
}

#[derive(DeriveDeserialize)]
struct WireWriteSnapshot<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    id: JsNumber,
    sequence: JsNumber,
    #[serde(borrow)]
    iv: Bin<'a>,
    #[serde(borrow)]
    data: Bin<'a>,
}

#[derive(DeriveDeserialize)]
struct WireSnapshotAck {
    id: JsNumber,
    sequence: JsNumber,
}

#[derive(DeriveDeserialize)]
struct WireSnapshot<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    sequence: JsNumber,
    #[serde(borrow)]
    iv: Bin<'a>,
    #[serde(borrow)]
    data: Bin<'a>,
}

#[derive(DeriveDeserialize)]
struct WireHistoryStarts<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    #[serde(rename = "firstSequence")]
    first_sequence: JsNumber,
}

#[derive(DeriveDeserialize)]
struct WirePublicKey<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
}

#[derive(DeriveDeserialize)]
struct WireId {
    id: JsNumber,
}

#[derive(DeriveDeserialize)]
struct WireChunk<'a> {
    id: JsNumber,
    part: Part,
    #[serde(borrow)]
    data: Bin<'a>,
}

#[derive(DeriveDeserialize)]
struct WireHello<'a> {
    #[serde(rename = "remoteId", borrow)]
    remote_id: Bin<'a>,
}

#[derive(DeriveDeserialize)]
struct WireAck {
    id: JsNumber,
    #[serde(rename = "sequenceNumbers")]
    sequence_numbers: Vec<JsNumber>,
}

#[derive(DeriveDeserialize)]
struct WireChanges<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    #[serde(borrow)]
    entries: Vec<WireRemoteEntry<'a>>,
}

#[derive(DeriveDeserialize)]
struct WireRemoteEntry<'a> {
    sequence: JsNumber,
    #[serde(borrow)]
    iv: Bin<'a>,
    #[serde(rename = "entryId", borrow)]
    entry_id: Bin<'a>,
    #[serde(rename = "encryptedEntry", borrow)]
    encrypted_entry: Bin<'a>,
}

#[derive(DeriveDeserialize)]
struct WireError<'a> {
    #[serde(borrow)]
    code: Str<'a>,
    #[serde(borrow)]
    message: Str<'a>,
}

#[derive(DeriveDeserialize)]
struct WirePosition<'a> {
    #[serde(rename = "publicKey", borrow)]
    public_key: Str<'a>,
    #[serde(rename = "nextSequence")]
    next_sequence: JsNumber,
}

/// `part: [index, total]`: an array of exactly two numbers.
struct Part(JsNumber, JsNumber);

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array [index, total]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Part, A::Error> {
                let index = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let total = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Part(index, total))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse<'a, T: Deserialize<'a>>(tag: &'static str, frame: &'a [u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(frame).map_err(|e| DecodeError::invalid(tag, e))
}

/// A `Uint8Array` field as a view into the frame.
fn share(frame: &Bytes, bin: Bin<'_>) -> Bytes {
    frame.slice_ref(bin.0)
}

fn sequence(tag: &'static str, n: JsNumber) -> Result<u64, DecodeError> {
    n.as_u64()
        .ok_or_else(|| DecodeError::invalid(tag, format!("{n} is not a sequence number")))
}

fn chunk_from_wire(frame: &Bytes) -> Result<Chunk, DecodeError> {
    const TAG: &str = "ChunkedMessage";
    let w: WireChunk<'_> = parse(TAG, frame)?;
    let part = |n: JsNumber| {
        n.as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| DecodeError::invalid(TAG, format!("part number {n} is not a u32")))
    };
    Ok(Chunk {
        id: w.id,
        index: part(w.part.0)?,
        total: part(w.part.1)?,
        data: share(frame, w.data),
    })
}

impl ClientMsg {
    /// Decodes one frame. Bytes fields of the result are views into `frame`.
    pub fn decode(frame: &Bytes) -> Result<Self, DecodeError> {
        let tag = frame_tag(frame)?;
        Ok(match tag {
            "WriteEntries" => {
                let w: WireWriteEntries<'_> = parse("WriteEntries", frame)?;
                ClientMsg::WriteEntries(WriteEntries {
                    public_key: w.public_key.0.to_owned(),
                    id: w.id,
                    iv: share(frame, w.iv),
                    entries: w
                        .encrypted_entries
                        .into_iter()
                        .map(|e| EncryptedEntry {
                            entry_id: share(frame, e.entry_id),
                            encrypted_entry: share(frame, e.encrypted_entry),
                        })
                        .collect(),
                })
            }
            "RequestChanges" => {
                let w: WireRequestChanges<'_> = parse("RequestChanges", frame)?;
                ClientMsg::RequestChanges {
                    public_key: w.public_key.0.to_owned(),
                    start_sequence: start_sequence(w.start_sequence),
                    snapshot: w.snapshot.unwrap_or(false),
                }
            }
            "WriteSnapshot" => {
                const TAG: &str = "WriteSnapshot";
                let w: WireWriteSnapshot<'_> = parse(TAG, frame)?;
                ClientMsg::WriteSnapshot(WriteSnapshot {
                    public_key: w.public_key.0.to_owned(),
                    id: w.id,
                    sequence: sequence(TAG, w.sequence)?,
                    iv: share(frame, w.iv),
                    data: share(frame, w.data),
                })
            }
            "StopChanges" => {
                let w: WirePublicKey<'_> = parse("StopChanges", frame)?;
                ClientMsg::StopChanges {
                    public_key: w.public_key.0.to_owned(),
                }
            }
            "ChunkedMessage" => ClientMsg::Chunked(chunk_from_wire(frame)?),
            "Ping" => {
                let w: WireId = parse("Ping", frame)?;
                ClientMsg::Ping { id: w.id }
            }
            other => return Err(DecodeError::UnknownTag(other.to_owned())),
        })
    }
}

/// `startSequence` as the reference relay reads it (`journal.slice(start)`): the schema takes
/// any number, so a value that is not a non-negative integer is read leniently rather than
/// refused — fractions round up, anything negative or NaN means "from the start".
fn start_sequence(n: JsNumber) -> u64 {
    let v = n.0;
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= crate::number::MAX_SAFE_INTEGER as f64 {
        crate::number::MAX_SAFE_INTEGER
    } else {
        v.ceil() as u64
    }
}

impl RelayMsg {
    /// Decodes one frame, extension messages included. Bytes fields are views into `frame`.
    pub fn decode(frame: &Bytes) -> Result<Self, DecodeError> {
        let tag = frame_tag(frame)?;
        Ok(match tag {
            "Hello" => {
                let w: WireHello<'_> = parse("Hello", frame)?;
                RelayMsg::Hello {
                    remote_id: share(frame, w.remote_id),
                }
            }
            "Ack" => {
                let w: WireAck = parse("Ack", frame)?;
                RelayMsg::Ack {
                    id: w.id,
                    sequence_numbers: w
                        .sequence_numbers
                        .into_iter()
                        .map(|n| sequence("Ack", n))
                        .collect::<Result<_, _>>()?,
                }
            }
            "Changes" => {
                let w: WireChanges<'_> = parse("Changes", frame)?;
                RelayMsg::Changes {
                    public_key: w.public_key.0.to_owned(),
                    entries: w
                        .entries
                        .into_iter()
                        .map(|e| {
                            Ok(RemoteEntry {
                                sequence: sequence("Changes", e.sequence)?,
                                iv: share(frame, e.iv),
                                entry_id: share(frame, e.entry_id),
                                encrypted_entry: share(frame, e.encrypted_entry),
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?,
                }
            }
            "ChunkedMessage" => RelayMsg::Chunked(chunk_from_wire(frame)?),
            "Pong" => {
                let w: WireId = parse("Pong", frame)?;
                RelayMsg::Pong { id: w.id }
            }
            "Error" => {
                let w: WireError<'_> = parse("Error", frame)?;
                RelayMsg::Error {
                    code: ErrorCode::parse(w.code.0),
                    message: w.message.0.to_owned(),
                }
            }
            "CaughtUp" => {
                let w: WirePosition<'_> = parse("CaughtUp", frame)?;
                RelayMsg::CaughtUp {
                    public_key: w.public_key.0.to_owned(),
                    next_sequence: sequence("CaughtUp", w.next_sequence)?,
                }
            }
            "Head" => {
                let w: WirePosition<'_> = parse("Head", frame)?;
                RelayMsg::Head {
                    public_key: w.public_key.0.to_owned(),
                    next_sequence: sequence("Head", w.next_sequence)?,
                }
            }
            "SnapshotAck" => {
                let w: WireSnapshotAck = parse("SnapshotAck", frame)?;
                RelayMsg::SnapshotAck {
                    id: w.id,
                    sequence: sequence("SnapshotAck", w.sequence)?,
                }
            }
            "Snapshot" => {
                let w: WireSnapshot<'_> = parse("Snapshot", frame)?;
                RelayMsg::Snapshot {
                    public_key: w.public_key.0.to_owned(),
                    sequence: sequence("Snapshot", w.sequence)?,
                    iv: share(frame, w.iv),
                    data: share(frame, w.data),
                }
            }
            "HistoryStarts" => {
                let w: WireHistoryStarts<'_> = parse("HistoryStarts", frame)?;
                RelayMsg::HistoryStarts {
                    public_key: w.public_key.0.to_owned(),
                    first_sequence: sequence("HistoryStarts", w.first_sequence)?,
                }
            }
            other => return Err(DecodeError::UnknownTag(other.to_owned())),
        })
    }
}
