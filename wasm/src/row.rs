//! A row of the viewer's table: one entry, opened or locked.

/// One entry as the viewer shows it: decrypted, or locked with what is visible without a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub sequence: u64,
    /// The writer's clock (ms since the epoch), from the UUIDv7 entry id.
    pub time_ms: u64,
    pub entry_id: String,
    /// Bytes stored on the relay.
    pub size: usize,
    pub suite: &'static str,
    pub content: Result<Opened, String>,
    /// `Some(s)`: the entry was kept by a snapshot covering every entry up to and including `s`
    /// (its `size` is then the plaintext's); `None`: an entry from `Changes`.
    pub snapshot: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub event: String,
    pub primary_key: String,
    /// The payload rendered as JSON text.
    pub payload: String,
}

/// A v3 entry id is 16 bytes, shown as a UUID; anything else is shown as hex.
pub(crate) fn entry_id(id: &[u8]) -> String {
    uuid::Uuid::from_slice(id)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| hex::encode(id))
}
