//! Effect v4 for the suites: identities and encrypted batches, and the SDK's v4 connection
//! (the RPC envelope over a real WebSocket, in wharf-protocol's v4 codec, whose bytes the golden
//! vectors hold to effect@4.1.0's).

use rand::RngCore;
use wharf_protocol::v4::{BatchEntry, EncryptedBatch, V4Identity};

/// A fresh v4 identity (random publicKey and secret).
pub fn identity() -> V4Identity {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    V4Identity::new(uuid::Uuid::new_v4().to_string(), secret)
}

/// A batch of `n` entries of `size` bytes each, encrypted for `store` (random ids and iv).
pub fn batch(id: &V4Identity, store: &str, n: usize, size: usize) -> EncryptedBatch {
    let mut rng = rand::thread_rng();
    let entries: Vec<BatchEntry> = (0..n)
        .map(|i| {
            let mut entry_id = [0u8; 16];
            rng.fill_bytes(&mut entry_id);
            let mut payload = vec![0u8; size];
            rng.fill_bytes(&mut payload);
            BatchEntry {
                id: entry_id,
                event: "Noted".into(),
                primary_key: format!("k{i}"),
                payload: payload.into(),
            }
        })
        .collect();
    let ids: Vec<[u8; 16]> = entries.iter().map(|e| e.id).collect();
    let mut iv = [0u8; 12];
    rng.fill_bytes(&mut iv);
    let plaintext = BatchEntry::encode_all(&entries);
    EncryptedBatch {
        entry_ids: ids.clone(),
        iv: iv.to_vec().into(),
        encrypted_batch: id
            .encrypt_batch(store, &ids, &iv, &plaintext)
            .expect("encrypts")
            .into(),
    }
}

/// The SDK's v4 connection, which the suites drive the relay with.
pub use wharf_client::V4Connection as V4Client;
