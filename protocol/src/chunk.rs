//! `ChunkedMessage`: splitting large messages and putting them back together.
//!
//! Both Effect peers chunk a `WriteEntries` or `Changes` whose encoding exceeds
//! [`CHUNK_SIZE`] bytes into `ceil(len / CHUNK_SIZE)` slices sent in order. The reference
//! reassembler trusts everything it is given (wire spec §9 B2); ours is bounded in open
//! messages, parts, bytes and age, refuses `index >= total`, and ignores a repeated part.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::message::Chunk;
use crate::number::JsNumber;

/// The slice size both reference peers use (`constChunkSize`).
pub const CHUNK_SIZE: usize = 512_000;

/// Splits an encoded message into chunks exactly as the reference does, or returns `None` when
/// it fits in one frame (`len <= CHUNK_SIZE`).
pub fn split_into_chunks(id: JsNumber, encoded: &Bytes) -> Option<Vec<Chunk>> {
    if encoded.len() <= CHUNK_SIZE {
        return None;
    }
    let total = encoded.len().div_ceil(CHUNK_SIZE);
    let total_u32 = u32::try_from(total).ok()?;
    Some(
        (0..total)
            .map(|i| Chunk {
                id,
                index: i as u32,
                total: total_u32,
                data: encoded.slice(i * CHUNK_SIZE..encoded.len().min((i + 1) * CHUNK_SIZE)),
            })
            .collect(),
    )
}

/// Bounds for one connection's [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblerLimits {
    /// Messages being reassembled at once.
    pub max_open: usize,
    /// Largest `total` accepted for one message.
    pub max_parts: u32,
    /// Bytes buffered across all open messages (also the largest reassembled message).
    pub max_bytes: usize,
    /// An incomplete message older than this (in the caller's clock, milliseconds) is dropped.
    pub max_age_ms: u64,
}

impl Default for ReassemblerLimits {
    fn default() -> Self {
        Self {
            max_open: 4,
            max_parts: 256,
            max_bytes: 64 * 1024 * 1024,
            max_age_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk index {index} is not below its total {total}")]
    IndexOutOfRange { index: u32, total: u32 },
    #[error("a chunked message of {total} parts exceeds the limit of {max}")]
    TooManyParts { total: u32, max: u32 },
    #[error("chunk says {got} parts, but earlier chunks of the same id said {expected}")]
    TotalMismatch { expected: u32, got: u32 },
    #[error("more than {max} chunked messages are open at once")]
    TooManyOpen { max: usize },
    #[error("chunked messages would buffer more than {max} bytes")]
    TooLarge { max: usize },
}

#[derive(Debug)]
struct Partial {
    parts: Vec<Option<Bytes>>,
    received: u32,
    bytes: usize,
    started_ms: u64,
}

/// Reassembles the chunked messages of one connection and one direction.
///
/// Sans-io: the caller passes the current time; nothing here reads a clock.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblerLimits,
    open: HashMap<u64, Partial>,
    buffered: usize,
}

impl Reassembler {
    pub fn new(limits: ReassemblerLimits) -> Self {
        Self {
            limits,
            open: HashMap::new(),
            buffered: 0,
        }
    }

    /// Bytes held by incomplete messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    pub fn open_messages(&self) -> usize {
        self.open.len()
    }

    /// Drops incomplete messages that started more than `max_age_ms` before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let max_age = self.limits.max_age_ms;
        let mut freed = 0;
        self.open.retain(|_, p| {
            let keep = now_ms.saturating_sub(p.started_ms) <= max_age;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.buffered -= freed;
    }

    /// Adds one chunk. Returns the whole message once its last part arrives. A part already
    /// received is ignored. An error means the peer broke the rules: drop the connection.
    pub fn push(&mut self, chunk: Chunk, now_ms: u64) -> Result<Option<Bytes>, ChunkError> {
        self.expire(now_ms);
        let Chunk {
            id,
            index,
            total,
            data,
        } = chunk;
        if index >= total {
            return Err(ChunkError::IndexOutOfRange { index, total });
        }
        if total > self.limits.max_parts {
            return Err(ChunkError::TooManyParts {
                total,
                max: self.limits.max_parts,
            });
        }
        if self.buffered + data.len() > self.limits.max_bytes {
            return Err(ChunkError::TooLarge {
                max: self.limits.max_bytes,
            });
        }
        let key = id.key();
        if !self.open.contains_key(&key) && self.open.len() >= self.limits.max_open {
            return Err(ChunkError::TooManyOpen {
                max: self.limits.max_open,
            });
        }
        let partial = self.open.entry(key).or_insert_with(|| Partial {
            parts: vec![None; total as usize],
            received: 0,
            bytes: 0,
            started_ms: now_ms,
        });
        let expected = partial.parts.len() as u32;
        if expected != total {
            return Err(ChunkError::TotalMismatch {
                expected,
                got: total,
            });
        }
        let slot = &mut partial.parts[index as usize];
        if slot.is_some() {
            return Ok(None);
        }
        partial.bytes += data.len();
        partial.received += 1;
        self.buffered += data.len();
        *slot = Some(data);
        if partial.received < total {
            return Ok(None);
        }
        let done = self.open.remove(&key).unwrap_or_else(|| unreachable!());
        self.buffered -= done.bytes;
        let mut whole = BytesMut::with_capacity(done.bytes);
        for part in done.parts.into_iter().flatten() {
            whole.extend_from_slice(&part);
        }
        Ok(Some(whole.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: u32, index: u32, total: u32, data: &[u8]) -> Chunk {
        Chunk {
            id: JsNumber::from(id),
            index,
            total,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn split_matches_reference_sizes() {
        let msg = Bytes::from(vec![7u8; CHUNK_SIZE * 2 + 10]);
        let parts = split_into_chunks(JsNumber::from(3u32), &msg).expect("chunked");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].data.len(), CHUNK_SIZE);
        assert_eq!(parts[2].data.len(), 10);
        assert!(parts.iter().all(|p| p.total == 3));
        assert!(
            split_into_chunks(JsNumber::from(0u32), &Bytes::from(vec![0; CHUNK_SIZE])).is_none()
        );
    }

    #[test]
    fn reassembles_in_any_order_and_ignores_duplicates() {
        let mut r = Reassembler::new(ReassemblerLimits::default());
        assert_eq!(r.push(chunk(1, 2, 3, b"c"), 0), Ok(None));
        assert_eq!(r.push(chunk(1, 0, 3, b"a"), 0), Ok(None));
        assert_eq!(
            r.push(chunk(1, 0, 3, b"X"), 0),
            Ok(None),
            "a repeated part is ignored"
        );
        assert_eq!(
            r.push(chunk(1, 1, 3, b"b"), 0),
            Ok(Some(Bytes::from_static(b"abc")))
        );
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.open_messages(), 0);
    }

    #[test]
    fn refuses_what_breaks_the_rules() {
        let limits = ReassemblerLimits {
            max_open: 2,
            max_parts: 4,
            max_bytes: 10,
            max_age_ms: 100,
        };
        let mut r = Reassembler::new(limits);
        assert_eq!(
            r.push(chunk(1, 3, 3, b"x"), 0),
            Err(ChunkError::IndexOutOfRange { index: 3, total: 3 })
        );
        assert_eq!(
            r.push(chunk(1, 0, 0, b"x"), 0),
            Err(ChunkError::IndexOutOfRange { index: 0, total: 0 })
        );
        assert_eq!(
            r.push(chunk(1, 0, 5, b"x"), 0),
            Err(ChunkError::TooManyParts { total: 5, max: 4 })
        );
        assert_eq!(r.push(chunk(1, 0, 2, b"x"), 0), Ok(None));
        assert_eq!(
            r.push(chunk(1, 1, 3, b"x"), 0),
            Err(ChunkError::TotalMismatch {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(r.push(chunk(2, 0, 2, b"x"), 0), Ok(None));
        assert_eq!(
            r.push(chunk(3, 0, 2, b"x"), 0),
            Err(ChunkError::TooManyOpen { max: 2 })
        );
        assert_eq!(
            r.push(chunk(2, 1, 2, b"0123456789"), 0),
            Err(ChunkError::TooLarge { max: 10 })
        );
        // Age: both open messages expire, which frees their bytes and slots.
        assert_eq!(r.push(chunk(3, 0, 2, b"y"), 101), Ok(None));
        assert_eq!(r.open_messages(), 1);
        assert_eq!(r.buffered_bytes(), 1);
    }
}
