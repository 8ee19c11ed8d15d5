//! What the storage needs to know, in its own terms: the relay builds a [`StoreConfig`] from
//! its configuration (the relay's config file keeps the keys; this crate never reads it).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How hard a commit waits for the disk before the relay acknowledges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: every acknowledged entry survives a crash or a power loss.
    Full,
    /// `synchronous=NORMAL`: survives a relay crash, but a power loss may lose the last
    /// acknowledged commits. Faster on slow disks.
    Normal,
}

/// The `[postgres]` section: bounds on what one relay may hold of the shared database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connections this relay keeps to the database (its LISTEN connection is one more).
    pub max_connections: u32,
    /// How long a request waits for a free connection before it fails.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// `lock_timeout`: how long a commit waits for a log's row lock held by another relay.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// `statement_timeout`: the longest any one statement may run.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// `idle_in_transaction_session_timeout`: a transaction left open this long (a relay that
    /// hangs mid-commit) is ended by the server, and its locks released.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    /// How often each open tenant with subscribers checks its logs for entries committed by
    /// other relays, whatever the notifications said (lost notifications cost this much
    /// latency, never entries).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Where and how tenants are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// The relay's data directory: `tenants/{tenant}.sqlite` with the SQLite store, and, with
    /// either, `auth/revocations.sqlite` when the list is kept in files.
    pub data: PathBuf,
    /// `None`: one SQLite file per tenant under `data`; a `postgres://` URL: one shared
    /// database.
    pub url: Option<String>,
    pub postgres: PostgresConfig,
    pub durability: Durability,
    /// OS threads that run every tenant's SQLite work.
    pub storage_threads: usize,
}

impl StoreConfig {
    /// A tenant's database file (SQLite store).
    pub fn tenant_path(&self, tenant: &TenantId) -> PathBuf {
        self.data
            .join("tenants")
            .join(format!("{}.sqlite", tenant.as_str()))
    }

    /// The revocation list, when it is kept in the data directory.
    pub fn revocations_path(&self) -> PathBuf {
        self.data.join("auth").join("revocations.sqlite")
    }
}

/// A tenant name: `[a-z0-9][a-z0-9_-]{0,62}`. Safe as a file name: the SQLite store names a
/// tenant's database after it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok_first = b
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_rest = b[1.min(b.len())..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        (ok_first && ok_rest && b.len() <= 63).then(|| TenantId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A store's URL with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("(redacted)"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "acme", "0", "a-b_c", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a.b",
            "a/b",
            "..",
            "é",
            &"a".repeat(64),
        ] {
            assert!(TenantId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://wharf:s3cret@db:5432/wharf"),
            "postgres://wharf:(redacted)@db:5432/wharf"
        );
        assert_eq!(redact_url("postgres://db/wharf"), "postgres://db/wharf");
    }
}
