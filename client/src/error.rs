use wharf_protocol::{CryptoError, DecodeError};

/// Everything the SDK can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("journal: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("the journal stopped after a failed write: {0}")]
    JournalFailed(String),
    #[error("the journal is corrupt or from a newer version: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
    #[error("invalid relay URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The relay answered the upgrade with an HTTP error: 401 (no or bad token), 403 (the token
    /// does not allow this tenant), 429/503 (a connection limit), 400 (a bad tenant id).
    #[error("the relay refused the connection (HTTP {status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("the relay closed the connection ({code}): {reason}")]
    RelayClosed { code: u16, reason: String },
    #[error("the relay refused: {code}: {message}")]
    Relay { code: String, message: String },
    #[error("the relay sent something this client cannot read: {0}")]
    Protocol(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Snapshot(#[from] wharf_protocol::SnapshotError),
    #[error("payload: {0}")]
    Payload(String),
    #[error("no log {0:?} in this client")]
    UnknownLog(String),
    #[error("log {0:?} is read-only here (a read key, not an identity)")]
    ReadOnly(String),
    #[error("the client is closed")]
    Closed,
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// Whether reconnecting can help: the network or the relay went away or is restarting.
    /// `false` when the relay refused this client (bad input, a limit) or something failed here.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect(_) | Error::Disconnected(_) | Error::Timeout(_) => true,
            Error::RelayClosed { code, .. } => !matches!(code, 1002 | 1003 | 1008 | 1009),
            // Limits and a relay shutting down pass; a missing or refused token does not.
            Error::Refused { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Error::Relay { code, .. } => matches!(code.as_str(), "shutting_down" | "internal"),
            _ => false,
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::Disconnected(e.to_string())
    }
}
