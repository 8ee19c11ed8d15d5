//! Log snapshots: the plaintext a key holder publishes for a log, and its encryption.
//!
//! A snapshot covers every entry of a log up to and including a sequence. Its plaintext keeps,
//! for every `(event, primaryKey)`, the entry with the greatest entry id (the last writer, the
//! rule every Wharf view uses), each with its sequence, so a replica that opens from it and then
//! applies the entries after it holds the same view as one that read the whole history.
//!
//! Encryption: XChaCha20-Poly1305 under a key derived from the log's entry key (HKDF-SHA256,
//! info `wharf/v1/snapshot`), a random 24-byte nonce carried as the snapshot's `iv`, and
//! associated data that binds the log's name and the covered sequence, so the relay can neither
//! move a snapshot to another log nor pass an old one off as newer. Both entry suites' keys are
//! 32 bytes, so Effect-suite logs get snapshots too.
//!
//! Plaintext (msgpack, map16 like the rest of the protocol):
//! `{sequence: num, entries: [{sequence: num, entry: bin(Entry)}…]}`, entries in sequence order.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::ReadKey;
use crate::entry::Entry;
use crate::msgpack::{single_value, write_array, write_bin, write_key, write_map, write_u64, Bin};
use crate::number::JsNumber;

/// Bytes of a snapshot's `iv` (the XChaCha20 nonce).
pub const SNAPSHOT_IV_LEN: usize = 24;
const SNAPSHOT_INFO: &[u8] = b"wharf/v1/snapshot";
const SNAPSHOT_SALT: &[u8] = b"wharf/v1";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("this snapshot does not decrypt with the key for log {0:?} at the sequence it names (wrong key, another log's snapshot, or tampered)")]
    Decrypt(String),
    #[error("a snapshot iv is {SNAPSHOT_IV_LEN} bytes, got {0}")]
    IvLength(usize),
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    #[error(
        "the snapshot says it covers sequence {inside}, but it was stored as covering {outside}"
    )]
    SequenceMismatch { inside: u64, outside: u64 },
    #[error("encryption failed (an input of gigabytes?)")]
    Seal,
}

/// One entry kept by a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Its sequence in the log.
    pub sequence: u64,
    pub entry: Entry,
}

/// The state of a log up to and including `sequence`, compacted by `(event, primaryKey)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotContent {
    pub sequence: u64,
    /// In sequence order.
    pub entries: Vec<SnapshotEntry>,
}

#[derive(Deserialize)]
struct WireContent<'a> {
    sequence: JsNumber,
    #[serde(borrow)]
    entries: Vec<WireEntry<'a>>,
}

#[derive(Deserialize)]
struct WireEntry<'a> {
    sequence: JsNumber,
    #[serde(borrow)]
    entry: Bin<'a>,
}

impl SnapshotContent {
    /// Compacts entries covered by `sequence` (entries beyond it are ignored): for every
    /// `(event, primaryKey)` the entry with the greatest id, in sequence order.
    pub fn compact(sequence: u64, entries: impl IntoIterator<Item = SnapshotEntry>) -> Self {
        let mut latest: HashMap<(String, String), SnapshotEntry> = HashMap::new();
        for e in entries {
            if e.sequence > sequence {
                continue;
            }
            let key = (e.entry.event.clone(), e.entry.primary_key.clone());
            match latest.get(&key) {
                Some(kept) if kept.entry.id >= e.entry.id => {}
                _ => {
                    latest.insert(key, e);
                }
            }
        }
        let mut entries: Vec<SnapshotEntry> = latest.into_values().collect();
        entries.sort_by_key(|e| e.sequence);
        SnapshotContent { sequence, entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self
            .entries
            .iter()
            .map(|e| 96 + e.entry.event.len() + e.entry.primary_key.len() + e.entry.payload.len())
            .sum();
        let mut b = Vec::with_capacity(body + 32);
        write_map(&mut b, 2);
        write_key(&mut b, "sequence");
        write_u64(&mut b, self.sequence);
        write_key(&mut b, "entries");
        write_array(&mut b, self.entries.len());
        for e in &self.entries {
            write_map(&mut b, 2);
            write_key(&mut b, "sequence");
            write_u64(&mut b, e.sequence);
            write_key(&mut b, "entry");
            write_bin(&mut b, &e.entry.encode());
        }
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let bad = |e: String| SnapshotError::Malformed(e);
        single_value(bytes).map_err(|e| bad(e.to_string()))?;
        let w: WireContent<'_> = rmp_serde::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let seq = |n: JsNumber| {
            n.as_u64()
                .ok_or_else(|| bad(format!("{n} is not a sequence number")))
        };
        let sequence = seq(w.sequence)?;
        let mut entries = Vec::with_capacity(w.entries.len());
        for e in w.entries {
            let s = seq(e.sequence)?;
            if s > sequence {
                return Err(bad(format!("entry at {s} beyond the covered {sequence}")));
            }
            let entry = Entry::decode(e.entry.0).map_err(|e| bad(e.to_string()))?;
            entries.push(SnapshotEntry { sequence: s, entry });
        }
        Ok(SnapshotContent { sequence, entries })
    }
}

fn snapshot_key(rk: &ReadKey) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit.
    let _ = Hkdf::<Sha256>::new(Some(SNAPSHOT_SALT), rk.key().as_bytes())
        .expand(SNAPSHOT_INFO, key.as_mut_slice());
    key
}

/// `"wharf/v1/snapshot" ‖ u16be(len(log)) ‖ log ‖ u64be(sequence)`.
fn snapshot_aad(log: &str, sequence: u64) -> Vec<u8> {
    let log_len = u16::try_from(log.len()).unwrap_or(u16::MAX);
    let mut aad = Vec::with_capacity(SNAPSHOT_INFO.len() + 2 + log.len() + 8);
    aad.extend_from_slice(SNAPSHOT_INFO);
    aad.extend_from_slice(&log_len.to_be_bytes());
    aad.extend_from_slice(log.as_bytes());
    aad.extend_from_slice(&sequence.to_be_bytes());
    aad
}

impl ReadKey {
    /// Encrypts a snapshot of this key's log. `iv` must be fresh random bytes.
    pub fn seal_snapshot(
        &self,
        iv: &[u8; SNAPSHOT_IV_LEN],
        content: &SnapshotContent,
    ) -> Result<Vec<u8>, SnapshotError> {
        let key = snapshot_key(self);
        let plain = Zeroizing::new(content.encode());
        XChaCha20Poly1305::new(key.as_slice().into())
            .encrypt(
                XNonce::from_slice(iv),
                Payload {
                    msg: &plain,
                    aad: &snapshot_aad(self.log(), content.sequence),
                },
            )
            .map_err(|_| SnapshotError::Seal)
    }

    /// Decrypts a snapshot the relay says covers `sequence` of this key's log.
    pub fn open_snapshot(
        &self,
        sequence: u64,
        iv: &[u8],
        data: &[u8],
    ) -> Result<SnapshotContent, SnapshotError> {
        if iv.len() != SNAPSHOT_IV_LEN {
            return Err(SnapshotError::IvLength(iv.len()));
        }
        let key = snapshot_key(self);
        let plain = XChaCha20Poly1305::new(key.as_slice().into())
            .decrypt(
                XNonce::from_slice(iv),
                Payload {
                    msg: data,
                    aad: &snapshot_aad(self.log(), sequence),
                },
            )
            .map_err(|_| SnapshotError::Decrypt(self.log().to_owned()))?;
        let plain = Zeroizing::new(plain);
        let content = SnapshotContent::decode(&plain)?;
        if content.sequence != sequence {
            return Err(SnapshotError::SequenceMismatch {
                inside: content.sequence,
                outside: sequence,
            });
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::EntryKey;

    fn entry(id: u8, event: &str, key: &str) -> Entry {
        Entry {
            id: [id; 16],
            event: event.into(),
            primary_key: key.into(),
            payload: vec![id],
        }
    }

    #[test]
    fn compaction_keeps_the_last_writer_per_key() {
        let all = [
            (0, entry(1, "set", "a")),
            (1, entry(2, "set", "b")),
            (2, entry(3, "set", "a")),
            (3, entry(9, "del", "a")),
            // An older id arriving later loses, as in every view.
            (4, entry(0, "set", "b")),
            (5, entry(7, "set", "c")),
        ];
        let c = SnapshotContent::compact(
            4,
            all.iter().map(|(s, e)| SnapshotEntry {
                sequence: *s,
                entry: e.clone(),
            }),
        );
        let got: Vec<(u64, u8)> = c
            .entries
            .iter()
            .map(|e| (e.sequence, e.entry.id[0]))
            .collect();
        assert_eq!(got, [(1, 2), (2, 3), (3, 9)]);
        assert_eq!(SnapshotContent::decode(&c.encode()).expect("decode"), c);
    }

    #[test]
    fn a_snapshot_is_bound_to_its_log_and_sequence() {
        let rk = ReadKey::new("log-a", EntryKey::from_bytes([5; 32]));
        let content = SnapshotContent::compact(
            3,
            [SnapshotEntry {
                sequence: 3,
                entry: entry(1, "e", "k"),
            }],
        );
        let iv = [9u8; SNAPSHOT_IV_LEN];
        let sealed = rk.seal_snapshot(&iv, &content).expect("seal");
        assert_eq!(rk.open_snapshot(3, &iv, &sealed).expect("open"), content);
        assert!(matches!(
            rk.open_snapshot(4, &iv, &sealed),
            Err(SnapshotError::Decrypt(_))
        ));
        let other = ReadKey::new("log-b", EntryKey::from_bytes([5; 32]));
        assert!(other.open_snapshot(3, &iv, &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert!(rk.open_snapshot(3, &iv, &tampered).is_err());
        assert!(matches!(
            rk.open_snapshot(3, &iv[..8], &sealed),
            Err(SnapshotError::IvLength(8))
        ));
    }
}
