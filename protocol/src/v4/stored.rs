//! How a relay keeps v4 logs in the same storage as v3 logs, byte-exact.
//!
//! - A v4 log is `(publicKey, storeId)`; its storage key is `v4:` + both, percent-escaped
//!   (`%` and `/` only) and joined by `/`, so it never equals a v3 key (the relay refuses v3
//!   keys that start with `v4:`) and parses back.
//! - A batch of n entries takes n rows, one per sequence, so sequences stay gapless and every
//!   entry id is indexed. The first row holds the batch: `0x01 ‖ uvarint(n) ‖ the n entry ids ‖
//!   encryptedBatch`, with the batch's iv in the iv column; the other rows have no ciphertext.
//!   A reader rebuilds each batch from its first row alone (after retention cut into a batch,
//!   rows without their first are skipped).
//! - The signing keys pinned per identity live in the log `v4:pins`: one row per `publicKey`
//!   (entry id: SHA-256 of it, first 16 bytes), holding `uvarint(len) ‖ publicKey ‖ key`.
//!   First writer wins: the store keeps an entry id once.

use sha2::{Digest, Sha256};

use super::binary::{Reader, Writer};
use super::error::V4Error;
use super::eventlog::{EncryptedBatch, RemoteBatch, ENTRY_ID_BYTES};

/// What every v4 storage key starts with.
pub const LOG_PREFIX: &str = "v4:";
/// The log of pinned signing keys.
pub const PINS_LOG: &str = "v4:pins";
/// The most entries one stored batch may have (Effect's client writes at most 100).
pub const MAX_BATCH_ENTRIES: usize = 256;

const HEAD: u8 = 0x01;

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("%25") => out.push('%'),
            Some("%2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The storage key of the v4 log `(public_key, store_id)`.
pub fn log_key(public_key: &str, store_id: &str) -> String {
    let mut key = String::with_capacity(LOG_PREFIX.len() + public_key.len() + store_id.len() + 1);
    key.push_str(LOG_PREFIX);
    escape(public_key, &mut key);
    key.push('/');
    escape(store_id, &mut key);
    key
}

/// `(publicKey, storeId)` of a v4 log's storage key; `None` for anything else (v3 logs, the
/// pins).
pub fn parse_log_key(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(LOG_PREFIX)?;
    let (public_key, store_id) = rest.split_once('/')?;
    Some((unescape(public_key)?, unescape(store_id)?))
}

/// The rows a batch is stored as: `(entry id, ciphertext)`, the first holding the batch.
pub fn batch_rows(batch: &EncryptedBatch) -> Vec<([u8; ENTRY_ID_BYTES], Vec<u8>)> {
    let mut head = Writer::new();
    head.buf.push(HEAD);
    head.uvarint(batch.entry_ids.len() as u64);
    for id in &batch.entry_ids {
        head.bytes(id);
    }
    head.bytes(&batch.encrypted_batch);
    let mut rows = Vec::with_capacity(batch.entry_ids.len());
    for (i, id) in batch.entry_ids.iter().enumerate() {
        rows.push((*id, if i == 0 { head.buf.clone() } else { Vec::new() }));
    }
    rows
}

/// The batch a first row holds, at `sequence` with `iv`; `None` for the other rows.
pub fn batch_from_row(
    sequence: u64,
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Option<RemoteBatch>, V4Error> {
    let Some((&HEAD, rest)) = ciphertext.split_first() else {
        return if ciphertext.is_empty() {
            Ok(None)
        } else {
            Err(V4Error::Invalid(
                "a stored v4 row of an unknown format".into(),
            ))
        };
    };
    let mut r = Reader::new(rest);
    let n = r.len()?;
    if n == 0 || n > MAX_BATCH_ENTRIES {
        return Err(V4Error::Invalid(format!("a stored batch of {n} entries")));
    }
    let mut entry_ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut id = [0u8; ENTRY_ID_BYTES];
        id.copy_from_slice(r.take(ENTRY_ID_BYTES)?);
        entry_ids.push(id);
    }
    Ok(Some(RemoteBatch {
        sequence,
        batch: EncryptedBatch {
            entry_ids,
            iv: bytes::Bytes::copy_from_slice(iv),
            encrypted_batch: bytes::Bytes::copy_from_slice(r.rest()),
        },
    }))
}

/// The entry id of `public_key`'s row in [`PINS_LOG`].
pub fn pin_id(public_key: &str) -> [u8; ENTRY_ID_BYTES] {
    let digest = Sha256::new()
        .chain_update(b"wharf-v4-pin\0")
        .chain_update(public_key.as_bytes())
        .finalize();
    let mut id = [0u8; ENTRY_ID_BYTES];
    id.copy_from_slice(&digest[..ENTRY_ID_BYTES]);
    id
}

/// The row of a pinned signing key.
pub fn pin_row(public_key: &str, signing_public_key: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.sized(public_key.as_bytes());
    w.bytes(signing_public_key);
    w.buf
}

/// `(publicKey, signing key)` of a pin's row.
pub fn parse_pin_row(row: &[u8]) -> Result<(String, Vec<u8>), V4Error> {
    let mut r = Reader::new(row);
    let public_key = super::binary::utf8(r.sized()?, "a pinned public key")?;
    Ok((public_key, r.rest().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_round_trip_and_never_look_like_another() {
        for (pk, store) in [
            ("9b3bd93c-dd25-4ae5-8182-b4805455de67", "default"),
            ("a/b", "c/d"),
            ("%2F", "%"),
            ("", ""),
        ] {
            let key = log_key(pk, store);
            assert!(key.starts_with(LOG_PREFIX));
            assert_eq!(parse_log_key(&key), Some((pk.to_owned(), store.to_owned())));
        }
        assert_ne!(log_key("a/b", "c"), log_key("a", "b/c"));
        assert_eq!(parse_log_key(PINS_LOG), None);
        assert_eq!(parse_log_key("v4:a%2/b"), None);
        assert_eq!(parse_log_key("some-v3-key"), None);
    }

    #[test]
    fn a_batch_is_rebuilt_from_its_first_row() {
        let batch = EncryptedBatch {
            entry_ids: vec![[1; 16], [2; 16], [3; 16]],
            iv: vec![9; 12].into(),
            encrypted_batch: vec![7; 40].into(),
        };
        let rows = batch_rows(&batch);
        assert_eq!(rows.len(), 3);
        assert!(rows[1].1.is_empty() && rows[2].1.is_empty());
        let got = batch_from_row(5, &batch.iv, &rows[0].1)
            .expect("decodes")
            .expect("a first row");
        assert_eq!(got.sequence, 5);
        assert_eq!(got.batch, batch);
        assert_eq!(got.last_sequence(), 7);
        assert_eq!(
            batch_from_row(6, &batch.iv, &rows[1].1).expect("decodes"),
            None
        );
        assert!(batch_from_row(5, &batch.iv, &[2, 0]).is_err());
    }
}
