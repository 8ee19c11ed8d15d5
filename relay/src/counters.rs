//! Event counters a running relay keeps (read by tests and, later, exported as metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Monotonic counts since the relay started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Upgrades refused with 401 (no token, or one that proves nothing).
    pub refused_unauthenticated: AtomicU64,
    /// Upgrades refused with 403 (a valid token that does not allow this tenant).
    pub refused_forbidden: AtomicU64,
    /// Connections closed with 1008 after the upgrade: a message the token does not allow, or
    /// the token expired or was revoked.
    pub closed_by_policy: AtomicU64,
    /// Upgrades refused because a connection limit was reached.
    pub refused_by_limit: AtomicU64,
    /// Times a connection was slowed because it exceeded a rate limit.
    pub throttled: AtomicU64,
    /// TLS certificates reloaded (SIGHUP or the files changed).
    pub tls_reloads: AtomicU64,
    /// Reloads that failed (the previous certificate stayed in use).
    pub tls_reload_failures: AtomicU64,
    /// Writes whose 12-byte AES-GCM iv was reused (shared by several entries of the write, or
    /// already stored in the log), per tenant. See SECURITY.md.
    pub iv_reuse: DashMap<String, u64>,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Writes with a reused iv seen for `tenant`.
    pub fn iv_reuse(&self, tenant: &str) -> u64 {
        self.iv_reuse.get(tenant).map_or(0, |n| *n)
    }

    pub(crate) fn bump_iv_reuse(&self, tenant: &str) {
        *self.iv_reuse.entry(tenant.to_owned()).or_insert(0) += 1;
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
