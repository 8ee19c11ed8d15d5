//! The payloads and results of `EventLogRemoteRpcs` (effect/eventlog 4.x), each a default-mode
//! SchemaBinary frame: what a relay reads from a v4 client and what it writes back.

use bytes::Bytes;

use super::binary::{
    default_frame, field_id, natural_region, optional_member, row_value, svarint_bytes, utf8,
    variant_tag, Fields, Reader, RowRun, Writer, KIND_BOOL, KIND_NUMBER, KIND_STRING, VARIANT,
    WIRE_SIZED,
};
use super::error::V4Error;

/// The RPC tags of the EventLog group.
pub mod tag {
    pub const HELLO: &str = "EventLog.Hello";
    pub const AUTHENTICATE: &str = "EventLog.Authenticate";
    pub const WRITE_SINGLE: &str = "EventLog.WriteSingle";
    pub const WRITE_CHUNKED: &str = "EventLog.WriteChunked";
    pub const CHANGES: &str = "EventLog.Changes";
}

/// The size of each part when an encoded message is split (`ChunkedMessage.chunkSize`).
pub const CHUNK_BYTES: usize = 512_000;
/// The bytes of an entry id.
pub const ENTRY_ID_BYTES: usize = 16;

/// Writes a default-mode struct: fields are sorted by id, as Effect writes them.
struct StructWriter {
    fields: Vec<(u32, Vec<u8>)>,
}

impl StructWriter {
    fn new() -> Self {
        Self { fields: Vec::new() }
    }

    fn with(&mut self, name: &str, f: impl FnOnce(&mut Writer, u32)) {
        let id = field_id(name);
        let mut w = Writer::new();
        f(&mut w, id);
        self.fields.push((id, w.buf));
    }

    fn sized(&mut self, name: &str, b: &[u8]) {
        self.with(name, |w, id| w.field_sized(id, b));
    }

    fn int(&mut self, name: &str, v: i64) {
        self.with(name, |w, id| w.field_int(id, v));
    }

    fn optional_string(&mut self, name: &str, v: Option<&str>) {
        if let Some(s) = v {
            self.with(name, |w, id| {
                optional_member(w, id, KIND_STRING, s.as_bytes())
            });
        }
    }

    fn finish(mut self, w: &mut Writer) {
        self.fields.sort_by_key(|(id, _)| *id);
        for (_, b) in self.fields {
            w.bytes(&b);
        }
    }
}

/// `EventLog.Hello`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloResponse {
    /// The remote's stable id (16 bytes): clients keep their cursor per remote id.
    pub remote_id: [u8; 16],
    /// Signed by the client in `Authenticate`: fresh per connection.
    pub challenge: Vec<u8>,
    /// The lowest sequence the remote assigns (absent: 0).
    pub first_sequence: Option<u64>,
    /// The remote serves `EventLogCompactionRpcs`.
    pub compaction: bool,
}

impl HelloResponse {
    fn write(&self, w: &mut Writer) {
        let mut s = StructWriter::new();
        s.sized("remoteId", &self.remote_id);
        s.sized("challenge", &self.challenge);
        if let Some(first) = self.first_sequence {
            s.with("firstSequence", |w, id| {
                optional_member(w, id, KIND_NUMBER, &svarint_bytes(first as i64))
            });
        }
        if self.compaction {
            s.with("compaction", |w, id| {
                optional_member(w, id, KIND_BOOL, &[1])
            });
        }
        s.finish(w);
    }

    fn read(region: &[u8]) -> Result<Self, V4Error> {
        let f = Fields::read(region, "a HelloResponse")?;
        let remote_id = <[u8; 16]>::try_from(f.sized("remoteId")?)
            .map_err(|_| V4Error::Invalid("a remoteId that is not 16 bytes".into()))?;
        let first_sequence = match f.optional("firstSequence")? {
            Some((KIND_NUMBER, body)) => Some(natural_region(body, "firstSequence")?),
            _ => None,
        };
        let compaction = matches!(f.optional("compaction")?, Some((KIND_BOOL, [1])));
        Ok(Self {
            remote_id,
            challenge: f.sized("challenge")?.to_vec(),
            first_sequence,
            compaction,
        })
    }
}

/// `EventLog.Authenticate`'s payload: a signature over the session's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    pub public_key: String,
    pub signing_public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Authenticate {
    pub const ALGORITHM: &'static str = "Ed25519";

    pub fn encode(&self) -> Vec<u8> {
        Writer::frame(|w| {
            let mut s = StructWriter::new();
            s.sized("publicKey", self.public_key.as_bytes());
            s.sized("signingPublicKey", &self.signing_public_key);
            s.sized("signature", &self.signature);
            s.sized("algorithm", Self::ALGORITHM.as_bytes());
            s.finish(w);
        })
    }

    pub fn decode(frame: &[u8]) -> Result<Self, V4Error> {
        let f = Fields::read(default_frame(frame)?, "an Authenticate")?;
        let algorithm = f.string("algorithm")?;
        if algorithm != Self::ALGORITHM {
            return Err(V4Error::Invalid(format!(
                "algorithm {algorithm:?}: only Ed25519 is known"
            )));
        }
        Ok(Self {
            public_key: f.string("publicKey")?,
            signing_public_key: f.sized("signingPublicKey")?.to_vec(),
            signature: f.sized("signature")?.to_vec(),
        })
    }
}

/// `EventLog.Changes`'s payload: follow one log from a sequence on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesRequest {
    pub public_key: String,
    pub store_id: String,
    pub start_sequence: u64,
}

impl ChangesRequest {
    pub fn encode(&self) -> Vec<u8> {
        Writer::frame(|w| {
            let mut s = StructWriter::new();
            s.sized("publicKey", self.public_key.as_bytes());
            s.sized("storeId", self.store_id.as_bytes());
            s.int("startSequence", self.start_sequence as i64);
            s.finish(w);
        })
    }

    pub fn decode(frame: &[u8]) -> Result<Self, V4Error> {
        let f = Fields::read(default_frame(frame)?, "a Changes request")?;
        Ok(Self {
            public_key: f.string("publicKey")?,
            store_id: f.string("storeId")?,
            start_sequence: f.natural("startSequence")?,
        })
    }
}

/// `EventLog.WriteSingle`'s payload: an encoded [`WriteEntries`].
pub fn encode_write_single(data: &[u8]) -> Vec<u8> {
    Writer::frame(|w| w.field_sized(field_id("data"), data))
}

pub fn decode_write_single(frame: &[u8]) -> Result<Bytes, V4Error> {
    let f = Fields::read(default_frame(frame)?, "a WriteSingle")?;
    Ok(Bytes::copy_from_slice(f.sized("data")?))
}

/// One part of a message too large for one frame (`ChunkedMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    pub id: i64,
    pub index: u64,
    pub total: u64,
    pub data: Bytes,
}

impl Chunked {
    /// Splits `data` into parts of [`CHUNK_BYTES`], as Effect's `ChunkedMessage.split` does.
    pub fn split(id: i64, data: &Bytes) -> Vec<Chunked> {
        let total = data.len().div_ceil(CHUNK_BYTES).max(1);
        (0..total)
            .map(|i| Chunked {
                id,
                index: i as u64,
                total: total as u64,
                data: data.slice(i * CHUNK_BYTES..((i + 1) * CHUNK_BYTES).min(data.len())),
            })
            .collect()
    }

    fn write_fields(&self, s: &mut StructWriter) {
        s.int("id", self.id);
        let mut part = Writer::new();
        part.svarint(self.index as i64);
        part.svarint(self.total as i64);
        s.sized("part", &part.buf);
        s.sized("data", &self.data);
    }

    fn read_fields(f: &Fields<'_>) -> Result<Self, V4Error> {
        let mut part = Reader::new(f.sized("part")?);
        let index = part.natural()?;
        let total = part.natural()?;
        part.end("a chunk's part")?;
        if index >= total {
            return Err(V4Error::Invalid(format!(
                "chunk part {index} of {total}: the index must be below the total"
            )));
        }
        Ok(Self {
            id: f.int("id")?,
            index,
            total,
            data: Bytes::copy_from_slice(f.sized("data")?),
        })
    }

    /// The `WriteChunked` payload (a `ChunkedMessage` outside a union: `_tag` is a field).
    pub fn encode_payload(&self) -> Vec<u8> {
        Writer::frame(|w| {
            let mut s = StructWriter::new();
            self.write_fields(&mut s);
            s.sized("_tag", b"Chunked");
            s.finish(w);
        })
    }

    pub fn decode_payload(frame: &[u8]) -> Result<Self, V4Error> {
        let f = Fields::read(default_frame(frame)?, "a WriteChunked")?;
        if f.string("_tag")? != "Chunked" {
            return Err(V4Error::Invalid(
                "a WriteChunked whose _tag is not Chunked".into(),
            ));
        }
        Self::read_fields(&f)
    }
}

/// One batch of entries as a client encrypted it: one iv, one ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedBatch {
    pub entry_ids: Vec<[u8; ENTRY_ID_BYTES]>,
    pub iv: Bytes,
    pub encrypted_batch: Bytes,
}

fn entry_ids_bytes(ids: &[[u8; ENTRY_ID_BYTES]]) -> Vec<u8> {
    let mut w = Writer::new();
    w.uvarint(ids.len() as u64);
    for id in ids {
        w.sized(id);
    }
    w.buf
}

fn read_entry_ids(b: &[u8]) -> Result<Vec<[u8; ENTRY_ID_BYTES]>, V4Error> {
    let mut r = Reader::new(b);
    let count = r.len()?;
    if count == 0 {
        return Err(V4Error::Invalid("a batch without entry ids".into()));
    }
    if count > r.remaining() / (ENTRY_ID_BYTES + 1) {
        return Err(V4Error::Invalid(format!(
            "{count} entry ids in {} bytes",
            r.remaining()
        )));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = <[u8; ENTRY_ID_BYTES]>::try_from(r.sized()?)
            .map_err(|_| V4Error::Invalid("an entry id that is not 16 bytes".into()))?;
        ids.push(id);
    }
    r.end("the entry ids")?;
    Ok(ids)
}

impl EncryptedBatch {
    fn row(&self, sequence: Option<u64>) -> Vec<(u32, Vec<u8>)> {
        let mut row = Vec::with_capacity(4);
        if let Some(seq) = sequence {
            row.push((field_id("sequence"), svarint_bytes(seq as i64)));
        }
        row.push((field_id("iv"), self.iv.to_vec()));
        row.push((field_id("encryptedBatch"), self.encrypted_batch.to_vec()));
        row.push((field_id("entryIds"), entry_ids_bytes(&self.entry_ids)));
        row.sort_by_key(|(id, _)| *id);
        row
    }

    fn from_row(row: &[(u32, &[u8])]) -> Result<Self, V4Error> {
        Ok(Self {
            entry_ids: read_entry_ids(row_value(row, "entryIds", "a batch")?)?,
            iv: Bytes::copy_from_slice(row_value(row, "iv", "a batch")?),
            encrypted_batch: Bytes::copy_from_slice(row_value(row, "encryptedBatch", "a batch")?),
        })
    }
}

/// What `WriteSingle`'s data (or the joined `WriteChunked` parts) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteEntries {
    pub public_key: String,
    pub store_id: String,
    pub batches: Vec<EncryptedBatch>,
}

impl WriteEntries {
    pub fn encode(&self) -> Vec<u8> {
        Writer::frame(|w| {
            let mut s = StructWriter::new();
            s.sized("publicKey", self.public_key.as_bytes());
            s.sized("storeId", self.store_id.as_bytes());
            let rows: Vec<_> = self.batches.iter().map(|b| b.row(None)).collect();
            s.with("batches", |w, id| {
                w.tag(id, WIRE_SIZED);
                w.sized_with(|w| RowRun::write(w, &rows));
            });
            s.finish(w);
        })
    }

    pub fn decode(frame: &[u8]) -> Result<Self, V4Error> {
        let f = Fields::read(default_frame(frame)?, "a WriteEntries")?;
        let mut r = Reader::new(f.sized("batches")?);
        let run = RowRun::read(&mut r, &[])?;
        r.end("the batches")?;
        Ok(Self {
            public_key: f.string("publicKey")?,
            store_id: f.string("storeId")?,
            batches: run
                .rows
                .iter()
                .map(|row| EncryptedBatch::from_row(row))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A stored batch as `Changes` sends it: its first sequence, then the batch byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBatch {
    pub sequence: u64,
    pub batch: EncryptedBatch,
}

impl RemoteBatch {
    /// The sequence of its last entry.
    pub fn last_sequence(&self) -> u64 {
        self.sequence + self.batch.entry_ids.len().saturating_sub(1) as u64
    }

    /// A non-empty array of batches, as one `Changes` element carries them.
    pub fn encode_all(batches: &[RemoteBatch]) -> Vec<u8> {
        Writer::frame(|w| {
            let rows: Vec<_> = batches
                .iter()
                .map(|b| b.batch.row(Some(b.sequence)))
                .collect();
            RowRun::write(w, &rows);
        })
    }

    pub fn decode_all(frame: &[u8]) -> Result<Vec<RemoteBatch>, V4Error> {
        let mut r = Reader::new(default_frame(frame)?);
        let run = RowRun::read(&mut r, &[])?;
        r.end("the batches")?;
        if run.rows.is_empty() {
            return Err(V4Error::Invalid("an empty array of batches".into()));
        }
        run.rows
            .iter()
            .map(|row| {
                Ok(RemoteBatch {
                    sequence: natural_region(row_value(row, "sequence", "a batch")?, "sequence")?,
                    batch: EncryptedBatch::from_row(row)?,
                })
            })
            .collect()
    }
}

/// One element of the `Changes` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamElement {
    /// A whole encoded array of batches.
    Single(Bytes),
    /// One part of one too large for a single element.
    Chunked(Chunked),
}

impl StreamElement {
    /// The `values` of a `Chunk` envelope: a non-empty array of elements.
    pub fn encode_all(elements: &[StreamElement]) -> Vec<u8> {
        Writer::frame(|w| {
            w.uvarint(elements.len() as u64);
            for e in elements {
                w.sized_with(|w| match e {
                    Self::Single(data) => {
                        w.variant(variant_tag("Single"));
                        w.field_sized(field_id("data"), data);
                    }
                    Self::Chunked(c) => {
                        w.variant(variant_tag("Chunked"));
                        let mut s = StructWriter::new();
                        c.write_fields(&mut s);
                        s.finish(w);
                    }
                });
            }
        })
    }

    pub fn decode_all(frame: &[u8]) -> Result<Vec<StreamElement>, V4Error> {
        let mut r = Reader::new(default_frame(frame)?);
        let count = r.len()?;
        // Each element is at least a length and a variant (6 bytes).
        if count == 0 || count > r.remaining() / 6 {
            return Err(V4Error::Invalid(format!(
                "{count} stream elements in {} bytes",
                r.remaining()
            )));
        }
        let mut out = Vec::new();
        for _ in 0..count {
            let mut e = Reader::new(r.sized()?);
            if e.byte()? != VARIANT {
                return Err(V4Error::Invalid(
                    "a stream element that is not a variant".into(),
                ));
            }
            let mut tag = [0u8; 4];
            tag.copy_from_slice(e.take(4)?);
            let tag = u32::from_le_bytes(tag);
            let f = Fields::read(e.rest(), "a stream element")?;
            if tag == variant_tag("Single") {
                out.push(Self::Single(Bytes::copy_from_slice(f.sized("data")?)));
            } else if tag == variant_tag("Chunked") {
                out.push(Self::Chunked(Chunked::read_fields(&f)?));
            } else {
                return Err(V4Error::Invalid(format!(
                    "a stream element of unknown variant {tag:#010x}"
                )));
            }
        }
        r.end("the stream elements")?;
        Ok(out)
    }
}

/// Where a written entry is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAck {
    pub entry_id: [u8; ENTRY_ID_BYTES],
    pub sequence: u64,
}

/// The codes of `EventLogProtocolError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidRequest,
    InternalServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::InvalidRequest => "InvalidRequest",
            Self::InternalServerError => "InternalServerError",
        }
    }

    fn parse(s: &str) -> Result<Self, V4Error> {
        Ok(match s {
            "Unauthorized" => Self::Unauthorized,
            "Forbidden" => Self::Forbidden,
            "NotFound" => Self::NotFound,
            "InvalidRequest" => Self::InvalidRequest,
            "InternalServerError" => Self::InternalServerError,
            other => return Err(V4Error::Invalid(format!("unknown error code {other:?}"))),
        })
    }
}

/// `EventLogProtocolError`: how an RPC of the group fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub request_tag: String,
    pub public_key: Option<String>,
    pub store_id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    fn write(&self, w: &mut Writer) {
        w.variant(variant_tag("EventLogProtocolError"));
        let mut s = StructWriter::new();
        s.sized("requestTag", self.request_tag.as_bytes());
        s.optional_string("publicKey", self.public_key.as_deref());
        s.optional_string("storeId", self.store_id.as_deref());
        s.sized("code", self.code.as_str().as_bytes());
        s.sized("message", self.message.as_bytes());
        s.finish(w);
    }

    fn read(region: &[u8]) -> Result<Self, V4Error> {
        let mut r = Reader::new(region);
        if r.byte()? != VARIANT {
            return Err(V4Error::Invalid("a failure that is not a variant".into()));
        }
        let mut tag = [0u8; 4];
        tag.copy_from_slice(r.take(4)?);
        if u32::from_le_bytes(tag) != variant_tag("EventLogProtocolError") {
            return Err(V4Error::Invalid(
                "a failure that is not an EventLogProtocolError".into(),
            ));
        }
        let f = Fields::read(r.rest(), "an EventLogProtocolError")?;
        Ok(Self {
            request_tag: f.string("requestTag")?,
            public_key: f.optional_string("publicKey")?,
            store_id: f.optional_string("storeId")?,
            code: ErrorCode::parse(&f.string("code")?)?,
            message: f.string("message")?,
        })
    }
}

/// A success value of one of the group's RPCs.
pub trait ExitValue: Sized {
    /// Appends the value's body (it fills the rest of the exit).
    fn write(&self, out: &mut Vec<u8>);
    fn read(region: &[u8]) -> Result<Self, V4Error>;
}

impl ExitValue for () {
    fn write(&self, _: &mut Vec<u8>) {}
    fn read(region: &[u8]) -> Result<Self, V4Error> {
        if region.is_empty() {
            Ok(())
        } else {
            Err(V4Error::Invalid("a void result with bytes".into()))
        }
    }
}

impl ExitValue for HelloResponse {
    fn write(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new();
        HelloResponse::write(self, &mut w);
        out.extend_from_slice(&w.buf);
    }
    fn read(region: &[u8]) -> Result<Self, V4Error> {
        HelloResponse::read(region)
    }
}

impl ExitValue for Vec<WriteAck> {
    fn write(&self, out: &mut Vec<u8>) {
        let rows: Vec<_> = self
            .iter()
            .map(|a| {
                vec![
                    (field_id("sequence"), svarint_bytes(a.sequence as i64)),
                    (field_id("entryId"), a.entry_id.to_vec()),
                ]
            })
            .collect();
        let mut w = Writer::new();
        RowRun::write(&mut w, &rows);
        out.extend_from_slice(&w.buf);
    }
    fn read(region: &[u8]) -> Result<Self, V4Error> {
        let mut r = Reader::new(region);
        let run = RowRun::read(&mut r, &[])?;
        r.end("the acks")?;
        run.rows
            .iter()
            .map(|row| {
                Ok(WriteAck {
                    entry_id: <[u8; ENTRY_ID_BYTES]>::try_from(row_value(
                        row, "entryId", "an ack",
                    )?)
                    .map_err(|_| V4Error::Invalid("an entry id that is not 16 bytes".into()))?,
                    sequence: natural_region(row_value(row, "sequence", "an ack")?, "sequence")?,
                })
            })
            .collect()
    }
}

/// How an RPC ended (`Exit<A, EventLogProtocolError>`).
#[derive(Debug, Clone, PartialEq)]
pub enum Exit<T> {
    Success(T),
    Failure(ProtocolError),
    /// A defect: its JSON (a string is `"\"...\""`).
    Die(String),
    /// Interrupted (by the fiber with this id, if known).
    Interrupt(Option<f64>),
}

impl<T: ExitValue> Exit<T> {
    pub fn encode(&self) -> Vec<u8> {
        Writer::frame(|w| match self {
            Self::Success(v) => {
                w.buf.push(0);
                v.write(&mut w.buf);
            }
            Self::Failure(e) => {
                w.buf.extend_from_slice(&[1, 1]);
                w.sized_with(|w| {
                    w.buf.push(0);
                    e.write(w);
                });
            }
            Self::Die(json) => {
                w.buf.extend_from_slice(&[1, 1]);
                w.sized_with(|w| {
                    w.buf.push(1);
                    w.bytes(json.as_bytes());
                });
            }
            Self::Interrupt(fiber) => {
                w.buf.extend_from_slice(&[1, 1]);
                w.sized_with(|w| match fiber {
                    None => w.buf.push(2),
                    Some(id) => {
                        w.buf.push(3);
                        w.bytes(&id.to_le_bytes());
                    }
                });
            }
        })
    }

    /// A defect whose JSON is this string.
    pub fn die(message: &str) -> Self {
        Self::Die(serde_json::Value::String(message.to_owned()).to_string())
    }

    pub fn decode(frame: &[u8]) -> Result<Self, V4Error> {
        let mut r = Reader::new(default_frame(frame)?);
        match r.byte()? {
            0 => Ok(Self::Success(T::read(r.rest())?)),
            1 => {
                let count = r.len()?;
                let mut found: Option<Self> = None;
                for _ in 0..count.min(r.remaining()) {
                    let mut reason = Reader::new(r.sized()?);
                    let exit = match reason.byte()? {
                        0 => Self::Failure(ProtocolError::read(reason.rest())?),
                        1 => Self::Die(utf8(reason.rest(), "a defect")?),
                        2 => Self::Interrupt(None),
                        3 => {
                            let mut f = [0u8; 8];
                            f.copy_from_slice(reason.take(8)?);
                            Self::Interrupt(Some(f64::from_le_bytes(f)))
                        }
                        _ => continue,
                    };
                    // A typed failure says most, then a defect, then an interrupt.
                    let rank = |e: &Self| match e {
                        Self::Failure(_) => 0,
                        Self::Die(_) => 1,
                        _ => 2,
                    };
                    if found.as_ref().is_none_or(|f| rank(&exit) < rank(f)) {
                        found = Some(exit);
                    }
                }
                r.end("an exit")?;
                found.ok_or_else(|| V4Error::Invalid("a failure without a reason".into()))
            }
            other => Err(V4Error::Invalid(format!("an exit of kind {other}"))),
        }
    }
}

/// A defect's frame (`Schema.Defect()`): the JSON of a message string.
pub fn encode_defect(message: &str) -> Vec<u8> {
    Writer::frame(|w| {
        w.bytes(
            serde_json::Value::String(message.to_owned())
                .to_string()
                .as_bytes(),
        )
    })
}

pub fn decode_defect(frame: &[u8]) -> Result<String, V4Error> {
    utf8(default_frame(frame)?, "a defect")
}

/// The payload of an RPC without one (`Hello`).
pub fn encode_void() -> Vec<u8> {
    Writer::frame(|_| {})
}

pub fn decode_void(frame: &[u8]) -> Result<(), V4Error> {
    <()>::read(default_frame(frame)?)
}

/// One event inside a batch's plaintext (`EntryFields`): what a v4 client encrypts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub id: [u8; ENTRY_ID_BYTES],
    pub event: String,
    pub primary_key: String,
    pub payload: Bytes,
}

impl BatchEntry {
    /// A batch's plaintext: a non-empty array of entries.
    pub fn encode_all(entries: &[BatchEntry]) -> Vec<u8> {
        Writer::frame(|w| {
            let rows: Vec<_> = entries
                .iter()
                .map(|e| {
                    let mut row = vec![
                        (field_id("payload"), e.payload.to_vec()),
                        (field_id("id"), e.id.to_vec()),
                        (field_id("primaryKey"), e.primary_key.as_bytes().to_vec()),
                        (field_id("event"), e.event.as_bytes().to_vec()),
                    ];
                    row.sort_by_key(|(id, _)| *id);
                    row
                })
                .collect();
            RowRun::write(w, &rows);
        })
    }

    pub fn decode_all(frame: &[u8]) -> Result<Vec<BatchEntry>, V4Error> {
        let mut r = Reader::new(default_frame(frame)?);
        // Effect writes repeated event names and primary keys as back-references.
        let run = RowRun::read(&mut r, &[field_id("event"), field_id("primaryKey")])?;
        r.end("the entries")?;
        if run.rows.is_empty() {
            return Err(V4Error::Invalid("a batch without entries".into()));
        }
        run.rows
            .iter()
            .map(|row| {
                Ok(BatchEntry {
                    id: <[u8; ENTRY_ID_BYTES]>::try_from(row_value(row, "id", "an entry")?)
                        .map_err(|_| V4Error::Invalid("an entry id that is not 16 bytes".into()))?,
                    event: utf8(row_value(row, "event", "an entry")?, "an event name")?,
                    primary_key: utf8(row_value(row, "primaryKey", "an entry")?, "a primary key")?,
                    payload: Bytes::copy_from_slice(row_value(row, "payload", "an entry")?),
                })
            })
            .collect()
    }
}
