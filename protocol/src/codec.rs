//! Frames to messages and back, for either side of a connection.
//!
//! Every peer does the same two things: on receive, decode a frame and, when it is a
//! `ChunkedMessage`, put the parts back together before decoding the whole ([`Inbound`]); on
//! send, split an encoded message that is too large for one frame into `ChunkedMessage` parts
//! ([`frames`]). The relay, the SDK, the viewer's wasm module and the test harness all use these.

use std::marker::PhantomData;

use bytes::Bytes;

use crate::chunk::{split_into_chunks, ChunkError, Reassembler, ReassemblerLimits};
use crate::message::{Chunk, ClientMsg, DecodeError, RelayMsg};
use crate::number::JsNumber;

/// A message type one side receives: [`ClientMsg`] on the relay, [`RelayMsg`] on a client.
pub trait Incoming: Sized {
    fn decode(frame: &Bytes) -> Result<Self, DecodeError>;
    /// The chunk this message carries, or the message itself when it is not a chunk.
    fn into_chunk(self) -> Result<Chunk, Self>;
}

impl Incoming for ClientMsg {
    fn decode(frame: &Bytes) -> Result<Self, DecodeError> {
        ClientMsg::decode(frame)
    }

    fn into_chunk(self) -> Result<Chunk, Self> {
        match self {
            ClientMsg::Chunked(c) => Ok(c),
            other => Err(other),
        }
    }
}

impl Incoming for RelayMsg {
    fn decode(frame: &Bytes) -> Result<Self, DecodeError> {
        RelayMsg::decode(frame)
    }

    fn into_chunk(self) -> Result<Chunk, Self> {
        match self {
            RelayMsg::Chunked(c) => Ok(c),
            other => Err(other),
        }
    }
}

/// Why a received frame cannot be used. Each one means the peer broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// Not a message (bad msgpack, unknown tag, wrong field type…), alone or reassembled.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The chunk breaks the reassembly rules or bounds.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("a chunked message may not contain another")]
    Nested,
}

/// Decodes the frames of one connection and one direction, reassembling chunked messages.
#[derive(Debug)]
pub struct Inbound<M> {
    chunks: Reassembler,
    _msg: PhantomData<fn() -> M>,
}

impl<M: Incoming> Inbound<M> {
    pub fn new(limits: ReassemblerLimits) -> Self {
        Self {
            chunks: Reassembler::new(limits),
            _msg: PhantomData,
        }
    }

    /// The message `frame` completes: `Ok(None)` while a chunked message still misses parts.
    /// `now_ms` is the caller's clock (it ages incomplete messages out).
    pub fn push(&mut self, frame: &Bytes, now_ms: u64) -> Result<Option<M>, InboundError> {
        let chunk = match M::decode(frame)?.into_chunk() {
            Ok(chunk) => chunk,
            Err(msg) => return Ok(Some(msg)),
        };
        let Some(whole) = self.chunks.push(chunk, now_ms)? else {
            return Ok(None);
        };
        match M::decode(&whole)?.into_chunk() {
            Ok(_) => Err(InboundError::Nested),
            Err(msg) => Ok(Some(msg)),
        }
    }

    /// Bytes held by incomplete chunked messages.
    pub fn buffered_bytes(&self) -> usize {
        self.chunks.buffered_bytes()
    }
}

/// The frames that carry one encoded message: the message itself when it fits in one frame,
/// otherwise its `ChunkedMessage` parts under `chunk_id`, as the reference peers send them.
/// (A `ChunkedMessage` is encoded alike in both directions.)
pub fn frames(encoded: Bytes, chunk_id: JsNumber) -> Frames {
    match split_into_chunks(chunk_id, &encoded) {
        None => Frames(FramesInner::One(Some(encoded))),
        Some(chunks) => Frames(FramesInner::Chunks(chunks.into_iter())),
    }
}

/// Iterator returned by [`frames`].
#[derive(Debug)]
pub struct Frames(FramesInner);

#[derive(Debug)]
enum FramesInner {
    One(Option<Bytes>),
    Chunks(std::vec::IntoIter<Chunk>),
}

impl Iterator for Frames {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        match &mut self.0 {
            FramesInner::One(frame) => frame.take(),
            FramesInner::Chunks(chunks) => chunks
                .next()
                .map(|c| Bytes::from(RelayMsg::Chunked(c).encode())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.0 {
            FramesInner::One(frame) => usize::from(frame.is_some()),
            FramesInner::Chunks(chunks) => chunks.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Frames {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::CHUNK_SIZE;
    use crate::message::{EncryptedEntry, WriteEntries};

    fn big_write() -> ClientMsg {
        ClientMsg::WriteEntries(WriteEntries {
            public_key: "log".into(),
            id: JsNumber::from(3u32),
            iv: Bytes::from_static(&[1; 12]),
            entries: (0..3u8)
                .map(|i| EncryptedEntry {
                    entry_id: Bytes::from(vec![i; 16]),
                    encrypted_entry: Bytes::from(vec![i; CHUNK_SIZE / 2]),
                })
                .collect(),
        })
    }

    #[test]
    fn a_chunked_message_round_trips_in_any_order() {
        let msg = big_write();
        let mut parts: Vec<Bytes> =
            frames(Bytes::from(msg.encode()), JsNumber::from(9u32)).collect();
        assert_eq!(parts.len(), 2);
        parts.reverse();
        let mut inbound = Inbound::<ClientMsg>::new(ReassemblerLimits::default());
        assert!(inbound.push(&parts[0], 0).expect("part").is_none());
        assert_eq!(inbound.push(&parts[1], 0).expect("part"), Some(msg));
        assert_eq!(inbound.buffered_bytes(), 0);
    }

    #[test]
    fn a_small_message_is_one_frame_and_passes_through() {
        let ping = ClientMsg::Ping {
            id: JsNumber::from(1u32),
        };
        let encoded = Bytes::from(ping.encode());
        let out: Vec<Bytes> = frames(encoded.clone(), JsNumber::from(0u32)).collect();
        assert_eq!(out, vec![encoded.clone()]);
        let mut inbound = Inbound::<ClientMsg>::new(ReassemblerLimits::default());
        assert_eq!(inbound.push(&encoded, 0).expect("ping"), Some(ping));
    }

    #[test]
    fn refuses_a_chunk_inside_a_chunk_and_bad_frames() {
        let inner = Chunk {
            id: JsNumber::from(1u32),
            index: 0,
            total: 2,
            data: Bytes::from_static(b"x"),
        };
        let inner = Bytes::from(ClientMsg::Chunked(inner).encode());
        let outer = Chunk {
            id: JsNumber::from(2u32),
            index: 0,
            total: 1,
            data: inner,
        };
        let mut inbound = Inbound::<ClientMsg>::new(ReassemblerLimits::default());
        let frame = Bytes::from(ClientMsg::Chunked(outer).encode());
        assert!(matches!(inbound.push(&frame, 0), Err(InboundError::Nested)));
        assert!(matches!(
            inbound.push(&Bytes::from_static(&[0xc1]), 0),
            Err(InboundError::Decode(_))
        ));
    }
}
