//! Effect v4 for the suites: identities and encrypted batches, and the SDK's v4 connection
//! (the RPC envelope over a real WebSocket, in wharf-protocol's v4 codec, whose bytes the golden
//! vectors hold to effect@4.1.0's).

use rand::RngCore;
use wharf_client::v4::{encrypt_events, V4Event};
use wharf_protocol::v4::{EncryptedBatch, V4Identity};

/// A fresh v4 identity (random publicKey and secret).
pub fn identity() -> V4Identity {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    V4Identity::new(uuid::Uuid::new_v4().to_string(), secret)
}

/// A batch of `n` entries (at most 100) of `size` bytes each, encrypted for `store` as the
/// SDK encrypts (random payloads, UUIDv7 ids, a random iv).
pub fn batch(id: &V4Identity, store: &str, n: usize, size: usize) -> EncryptedBatch {
    let mut rng = rand::thread_rng();
    let events: Vec<V4Event> = (0..n)
        .map(|i| {
            let mut payload = vec![0u8; size];
            rng.fill_bytes(&mut payload);
            V4Event {
                event: "Noted".into(),
                primary_key: format!("k{i}"),
                payload: payload.into(),
            }
        })
        .collect();
    let mut batches = encrypt_events(id, store, &events, &mut rng).expect("encrypts");
    assert_eq!(
        batches.len(),
        1,
        "{n} entries of {size} bytes make one batch"
    );
    batches.remove(0)
}

/// The SDK's v4 connection, which the suites drive the relay with.
pub use wharf_client::V4Connection as V4Client;
