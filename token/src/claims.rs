//! The claims Wharf reads, what they allow, and why a token proves nothing.

use std::collections::HashSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes (a header line is not a place for megabytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `RequestChanges`: read a log's ciphertext and follow it.
    Read,
    /// `WriteEntries`: append to a log.
    Write,
    /// Everything `read` and `write` allow, and the relay's admin operations.
    Admin,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

/// `aud` as a string or a list of strings (RFC 7519 allows both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims of a Wharf token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// Who holds it (an agent, a task, a person): shown in logs, never trusted for access.
    pub sub: String,
    pub aud: Audience,
    /// The one tenant it opens.
    pub tenant: String,
    pub actions: Vec<Action>,
    /// The publicKeys (logs) it may touch; absent: every log of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<String>>,
    /// Expiry, seconds since the epoch.
    #[serde(deserialize_with = "numeric_date::exp")]
    pub exp: u64,
    /// Issue time, seconds since the epoch (0 when absent: any tenant "not before" revokes it).
    #[serde(default, deserialize_with = "numeric_date::iat")]
    pub iat: u64,
    /// The token's id, what `wharf-relay token revoke` names.
    pub jti: String,
}

/// `exp` and `iat` are NumericDates: JSON numbers, never strings (RFC 7519 §2).
mod numeric_date {
    use serde::{de::Error, Deserialize, Deserializer};

    fn seconds<'de, D: Deserializer<'de>>(d: D, claim: &str) -> Result<u64, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or_else(|| D::Error::custom(format!("{claim} is not a time"))),
            _ => Err(D::Error::custom(format!(
                "{claim} must be a number of seconds since the epoch"
            ))),
        }
    }

    pub fn exp<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        seconds(d, "exp")
    }

    pub fn iat<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        seconds(d, "iat")
    }
}

/// Why a token does not prove anything (every one of these is a 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    #[error("token is signed by an unknown key")]
    UnknownKey,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is from an untrusted issuer")]
    Issuer,
    #[error("token is for another audience")]
    Audience,
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    #[error("token claim {0} is malformed")]
    BadClaim(String),
    #[error("token claims are malformed: {0}")]
    Claims(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::KeyMismatch,
            ErrorKind::MissingRequiredClaim(c) => Self::MissingClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => Self::BadClaim(c.clone()),
            // serde's message names the field and the type it wanted, never the token.
            ErrorKind::Json(e) => Self::Claims(e.to_string()),
            _ => Self::Malformed,
        }
    }
}

/// The set of logs a token names, for quick checks.
pub fn log_set(logs: &Option<Vec<String>>) -> Option<HashSet<String>> {
    logs.as_ref().map(|l| l.iter().cloned().collect())
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
