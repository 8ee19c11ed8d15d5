//! The plaintext of one log entry: Effect's `EventJournal.Entry`, encoded exactly as Effect
//! encodes it, so one decoder serves Effect-written and Wharf-written entries.

use serde::Deserialize;

use crate::msgpack::{single_value, write_bin, write_key, write_map, write_str, Bin, Str};

/// One event in a log, before encryption.
///
/// `id` is a UUIDv7 (`EventJournal.makeEntryId`): its first 48 bits are the writer's clock in
/// milliseconds, which is also the only timestamp an entry has. `payload` is the msgpack of
/// the event's payload, opaque at this layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: [u8; 16],
    pub event: String,
    pub primary_key: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error("entry id is {0} bytes; it must be 16")]
    IdLength(usize),
}

#[derive(Deserialize)]
struct WireEntry<'a> {
    #[serde(borrow)]
    id: Bin<'a>,
    #[serde(borrow)]
    event: Str<'a>,
    #[serde(rename = "primaryKey", borrow)]
    primary_key: Str<'a>,
    #[serde(borrow)]
    payload: Bin<'a>,
}

impl Entry {
    /// The msgpack Effect writes: map16 {id: bin, event: str, primaryKey: str, payload: bin}.
    pub fn encode(&self) -> Vec<u8> {
        let mut b =
            Vec::with_capacity(64 + self.event.len() + self.primary_key.len() + self.payload.len());
        write_map(&mut b, 4);
        write_key(&mut b, "id");
        write_bin(&mut b, &self.id);
        write_key(&mut b, "event");
        write_str(&mut b, &self.event);
        write_key(&mut b, "primaryKey");
        write_str(&mut b, &self.primary_key);
        write_key(&mut b, "payload");
        write_bin(&mut b, &self.payload);
        b
    }

    /// Reads an entry in any map encoding and key order, as Effect's decoder does.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        single_value(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let w: WireEntry<'_> =
            rmp_serde::from_slice(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let id: [u8; 16] =
            w.id.0
                .try_into()
                .map_err(|_| EntryError::IdLength(w.id.0.len()))?;
        Ok(Entry {
            id,
            event: w.event.0.to_owned(),
            primary_key: w.primary_key.0.to_owned(),
            payload: w.payload.0.to_vec(),
        })
    }

    /// Milliseconds since the Unix epoch, from the UUIDv7 `id`.
    pub fn timestamp_ms(&self) -> u64 {
        timestamp_ms(&self.id)
    }
}

/// The writer's clock in milliseconds, read from a UUIDv7 entry id (0 for a shorter id).
pub fn timestamp_ms(entry_id: &[u8]) -> u64 {
    match entry_id.get(..6) {
        Some(ms) => ms.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)),
        None => 0,
    }
}
