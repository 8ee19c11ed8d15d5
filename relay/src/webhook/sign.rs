//! Standard Webhooks: the signature of a message, its stable id, and the notification's body.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wharf_store::OutboxRow;

/// The Standard Webhooks signature of a message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The body of a notification.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification<'a> {
    pub tenant: &'a str,
    pub public_key: &'a str,
    pub from_sequence: u64,
    pub to_sequence: u64,
    pub count: u64,
}

/// A stable id for a notification (the same across retries of the same content): receivers
/// deduplicate with it.
pub fn message_id(tenant: &str, row: &OutboxRow) -> String {
    use sha2::Digest;
    let mut h = Sha256::new();
    for part in [tenant, row.endpoint.as_str(), row.public_key.as_str()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(row.from_seq.to_be_bytes());
    h.update(row.to_seq.to_be_bytes());
    format!("msg_{}", hex::encode(&h.finalize()[..12]))
}
