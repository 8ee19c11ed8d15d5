//! The Wharf wire format: the Effect-TS v3 `EventLogRemote` protocol plus the negotiated
//! `wharf.v1` extension. Sans-io: bytes in, messages out; no sockets, no clock, no runtime.
//!
//! Module map:
//! - [`message`]: [`ClientMsg`] (client → relay) and [`RelayMsg`] (relay → client), with
//!   byte-exact encoders and lenient decoders (`encode`/`decode` on each enum).
//! - [`codec`]: frames to messages and back for either side: [`Inbound`] decodes and
//!   reassembles, [`frames`] chunks what is too large for one frame.
//! - [`chunk`]: splitting a large encoded message into `ChunkedMessage` frames exactly like the
//!   reference client, and a bounded [`Reassembler`] for the other direction.
//! - [`entry`]: [`Entry`], the plaintext of one event, encoded exactly as Effect encodes it.
//! - [`crypto`]: identities (native and Effect), the two entry suites, and key grants.
//! - [`snapshot`]: the plaintext of a log snapshot (entries compacted by event and primary key)
//!   and its encryption under the log's key.
//! - [`payload`]: an event payload (msgpack) to and from JSON, for tools and the viewer.
//! - [`number`]: [`JsNumber`], a JavaScript number as msgpackr writes and reads it.
//! - [`v4`]: Effect 4.x's protocol (RPC envelope, SchemaBinary, signed challenges), served
//!   beside v3.
//! - `msgpack` (private): the frame walker and the primitive writers.
//!
//! What real clients need from us is written down in `shared/protocol/effect-v3-wire.md`; the
//! extension is documented in `docs/protocol.md` at the repository root.

pub mod chunk;
pub mod codec;
pub mod crypto;
pub mod entry;
pub mod message;
mod msgpack;
pub mod number;
pub mod payload;
pub mod snapshot;
pub mod v4;

pub use chunk::{split_into_chunks, ChunkError, Reassembler, ReassemblerLimits, CHUNK_SIZE};
pub use codec::{frames, Frames, Inbound, InboundError, Incoming};
pub use crypto::{
    CryptoError, EffectIdentity, EntryKey, Grant, GrantKeyPair, Identity, NativeIdentity, ReadKey,
    Suite,
};
pub use entry::{Entry, EntryError};
pub use message::{
    Chunk, ClientMsg, DecodeError, EncryptedEntry, ErrorCode, RelayMsg, RemoteEntry, WriteEntries,
    WriteSnapshot,
};
pub use number::JsNumber;
pub use snapshot::{SnapshotContent, SnapshotEntry, SnapshotError};

/// The WebSocket subprotocol a client offers to opt in to the Wharf extension messages
/// ([`RelayMsg::Error`], [`RelayMsg::CaughtUp`]). A plain v3 client offers none and never
/// receives them.
pub const EXTENSION_SUBPROTOCOL: &str = "wharf.v1";
