//! Effect 4.x's event log protocol (`effect/eventlog` over `effect/rpc`, schema-binary): the
//! RPC envelope, the EventLog RPCs' payloads and results, the signed challenge and a v4
//! identity's batch encryption. Sans-io, like the rest of the crate.
//!
//! - `binary` (private): SchemaBinary v2, the layouts these schemas use.
//! - [`envelope`]: [`FromClient`] / [`FromServer`] and [`FrameBuffer`], frames from a stream.
//! - [`eventlog`]: `Hello`, `Authenticate`, `WriteSingle`/`WriteChunked`, `Changes`, their
//!   results, and the batch plaintext.
//! - [`identity`]: the signed challenge, [`V4Identity`] and its AES-256-GCM batches.
//! - [`payload`]: an event payload to and from JSON without its schema (tools, the viewer).
//! - [`stored`]: how a relay keeps v4 logs beside v3 ones (storage keys, batches as rows,
//!   pinned signing keys).
//!
//! The golden vectors in `tests/vectors/effect-v4.json` are written by Effect's own codec
//! (`tests/effect-v4/vectors.mjs` at the repository root); `docs/protocol.md` has the layout.

mod binary;
pub mod envelope;
mod error;
pub mod eventlog;
pub mod identity;
pub mod payload;
pub mod stored;

pub use binary::{field_id, variant_tag, DEFAULT_MODE, ENVELOPE_FINGERPRINT, FINGERPRINT_MODE};
pub use envelope::{FrameBuffer, FromClient, FromServer, Request, RequestId, MAX_ENVELOPE_BYTES};
pub use error::V4Error;
pub use eventlog::{
    Authenticate, BatchEntry, ChangesRequest, Chunked, EncryptedBatch, ErrorCode, Exit,
    HelloResponse, ProtocolError, RemoteBatch, StreamElement, WriteAck, WriteEntries,
};
pub use identity::{auth_payload, verify_auth, V4Identity};
