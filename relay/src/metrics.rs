//! What a running relay measures, in Prometheus form (`GET /metrics`).
//!
//! One [`Metrics`] per relay, with its own registry (several relays in one process, as in the
//! tests, never mix their figures). Names follow Prometheus conventions: `wharf_` prefix,
//! `_total` for counters, base units (`_seconds`, `_bytes`). No metric carries a tenant label;
//! per-tenant figures come from the admin API.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::{Config, Durability};
use crate::live::{CommitConsumer, Committed};

/// Latency buckets, in seconds: 100 µs to 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every figure the relay keeps. Counters are monotonic since start.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// WebSocket sessions accepted.
    pub connections: IntCounter,
    /// WebSocket sessions being served (set when scraped).
    pub connections_open: IntGauge,
    /// Tenants with an open database, and tenants on disk without one (set when scraped).
    pub tenants_active: IntGauge,
    pub tenants_hibernated: IntGauge,
    /// Acked writes, the entries they stored (duplicates excluded) and their ciphertext bytes.
    pub writes: IntCounter,
    pub entries_written: IntCounter,
    pub written_bytes: IntCounter,
    /// Entries sent to subscribers (catch-up and live), and every byte read from or written to
    /// WebSocket connections.
    pub entries_sent: IntCounter,
    pub sent_bytes: IntCounter,
    pub received_bytes: IntCounter,
    /// From a write's arrival to its Ack being queued for the socket.
    pub ack_latency: Histogram,
    /// One group commit on its storage thread, `fsync` included; and the writes it carried.
    pub commit_duration: Histogram,
    pub commit_writes: Histogram,
    /// Group commits that failed (every write in them was refused with 1011).
    pub commit_failures: IntCounter,
    /// Subscribers that fell out of the live tail and read storage instead, and how many
    /// entries behind they were when they did.
    pub subscriber_fallbacks: IntCounter,
    pub subscriber_lag: Histogram,
    /// Upgrades refused with 401 (no token, or one that proves nothing).
    pub refused_unauthenticated: IntCounter,
    /// Upgrades refused with 403 (a valid token that does not allow this tenant).
    pub refused_forbidden: IntCounter,
    /// Upgrades refused because a connection limit was reached.
    pub refused_by_limit: IntCounter,
    /// Upgrades refused because the relay is shutting down.
    pub refused_shutting_down: IntCounter,
    /// Connections closed with 1008 after the upgrade: a message the token does not allow, or
    /// the token expired or was revoked.
    pub closed_by_policy: IntCounter,
    /// Connections the relay closed for sending what the protocol does not allow (1002,
    /// 1003), for exceeding a size limit (1009), or because storage failed (1011).
    pub closed_protocol: IntCounter,
    pub closed_too_big: IntCounter,
    pub closed_internal: IntCounter,
    /// Times a connection was slowed because it exceeded a rate limit.
    pub throttled: IntCounter,
    /// Writes whose 12-byte AES-GCM iv was reused (SECURITY.md).
    pub iv_reuse_total: IntCounter,
    /// TLS certificates reloaded (SIGHUP or the files changed), and reloads that failed (the
    /// previous certificate stayed in use).
    pub tls_reloads: IntCounter,
    pub tls_reload_failures: IntCounter,
    /// Writes and snapshots refused because the tenant is at a quota.
    pub quota_refusals: IntCounter,
    /// Snapshots stored.
    pub snapshots_written: IntCounter,
    /// Entries deleted by retention policies.
    pub retention_deleted: IntCounter,
    /// Postgres store: doorbells (other relays' commits) heard on the LISTEN connection, and
    /// times that connection was lost (each followed by a resync of every open tenant).
    pub doorbells: IntCounter,
    pub listen_reconnects: IntCounter,
    /// Webhook delivery attempts, by outcome (`delivered`, `failed`, `given_up`).
    pub webhook_deliveries: IntCounterVec,
    /// One webhook delivery attempt, answer included.
    pub webhook_latency: Histogram,
    /// The same iv-reuse count per tenant, for the admin API (never a metric label).
    iv_reuse: DashMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(config: &Config) -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("wharf".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, MetricsError> {
                let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let vec = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, MetricsError> {
            let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let refusals = vec(
            "refusals_total",
            "WebSocket upgrades refused, by reason.",
            "reason",
        )?;
        let closes = vec(
            "connections_closed_total",
            "Connections the relay closed because of what the client did or a failure, by reason.",
            "reason",
        )?;
        let tls = vec(
            "tls_reloads_total",
            "TLS certificate reloads, by result.",
            "result",
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "durability_info",
                "The durability mode tenant databases commit with (1 for the mode in force).",
            ),
            &["mode"],
        )?;
        registry.register(Box::new(info.clone()))?;
        info.with_label_values(&[match config.durability {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }])
        .set(1);
        gauge(
            "storage_threads",
            "Threads that run every tenant's SQLite work.",
        )?
        .set(i64::try_from(config.storage_threads).unwrap_or(i64::MAX));
        Ok(Self {
            connections: counter("connections_total", "WebSocket connections accepted.")?,
            connections_open: gauge("connections_open", "WebSocket connections being served.")?,
            tenants_active: gauge("tenants_active", "Tenants whose database is open.")?,
            tenants_hibernated: gauge(
                "tenants_hibernated",
                "Tenants stored on disk whose database is closed.",
            )?,
            writes: counter("writes_total", "Writes acknowledged.")?,
            entries_written: counter(
                "entries_written_total",
                "Entries stored (resent duplicates excluded).",
            )?,
            written_bytes: counter("written_bytes_total", "Ciphertext bytes stored.")?,
            entries_sent: counter(
                "entries_sent_total",
                "Entries sent to subscribers, from storage and live.",
            )?,
            sent_bytes: counter("sent_bytes_total", "Bytes sent on WebSocket connections.")?,
            received_bytes: counter(
                "received_bytes_total",
                "Bytes received on WebSocket connections.",
            )?,
            ack_latency: histogram(
                "ack_latency_seconds",
                "From a write's arrival to its Ack (the write is durable by then).",
                LATENCY_BUCKETS.to_vec(),
            )?,
            commit_duration: histogram(
                "commit_duration_seconds",
                "One group commit on its storage thread, fsync included.",
                LATENCY_BUCKETS.to_vec(),
            )?,
            commit_writes: histogram(
                "commit_batch_writes",
                "Writes per group commit.",
                prometheus::exponential_buckets(1.0, 2.0, 12)?,
            )?,
            commit_failures: counter(
                "commit_failures_total",
                "Group commits that failed; their writes were refused.",
            )?,
            subscriber_fallbacks: counter(
                "subscriber_storage_fallbacks_total",
                "Times a subscriber fell out of the live tail and read storage instead.",
            )?,
            subscriber_lag: histogram(
                "subscriber_lag_entries",
                "How far behind the live tail a subscriber was when it fell back to storage.",
                prometheus::exponential_buckets(1.0, 10.0, 8)?,
            )?,
            refused_unauthenticated: refusals.with_label_values(&["unauthenticated"]),
            refused_forbidden: refusals.with_label_values(&["forbidden"]),
            refused_by_limit: refusals.with_label_values(&["connection_limit"]),
            refused_shutting_down: refusals.with_label_values(&["shutting_down"]),
            closed_by_policy: closes.with_label_values(&["policy"]),
            closed_protocol: closes.with_label_values(&["protocol"]),
            closed_too_big: closes.with_label_values(&["too_big"]),
            closed_internal: closes.with_label_values(&["internal"]),
            throttled: counter(
                "throttled_total",
                "Times a connection was slowed for exceeding a rate limit.",
            )?,
            iv_reuse_total: counter(
                "iv_reuse_total",
                "Writes whose 12-byte AES-GCM iv was reused (see SECURITY.md).",
            )?,
            quota_refusals: counter(
                "quota_refusals_total",
                "Writes and snapshots refused because the tenant is at a quota.",
            )?,
            snapshots_written: counter("snapshots_written_total", "Log snapshots stored.")?,
            retention_deleted: counter(
                "retention_deleted_entries_total",
                "Entries deleted by retention policies.",
            )?,
            doorbells: counter(
                "doorbells_total",
                "Postgres store: commit notifications heard from the shared database.",
            )?,
            listen_reconnects: counter(
                "listen_reconnects_total",
                "Postgres store: times the LISTEN connection was lost and made again.",
            )?,
            webhook_deliveries: vec(
                "webhook_deliveries_total",
                "Webhook delivery attempts, by outcome (delivered, failed, given_up).",
                "outcome",
            )?,
            webhook_latency: histogram(
                "webhook_delivery_seconds",
                "One webhook delivery attempt, the endpoint's answer included.",
                vec![0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            tls_reloads: tls.with_label_values(&["ok"]),
            tls_reload_failures: tls.with_label_values(&["failed"]),
            iv_reuse: DashMap::new(),
            registry,
        })
    }

    /// Writes with a reused iv seen for `tenant`.
    pub fn iv_reuse(&self, tenant: &str) -> u64 {
        self.iv_reuse.get(tenant).map_or(0, |n| *n)
    }

    pub(crate) fn bump_iv_reuse(&self, tenant: &str) {
        self.iv_reuse_total.inc();
        *self.iv_reuse.entry(tenant.to_owned()).or_insert(0) += 1;
    }

    /// Forgets a deleted tenant's per-tenant figures.
    pub(crate) fn forget_tenant(&self, tenant: &str) {
        self.iv_reuse.remove(tenant);
    }

    pub(crate) fn observe_ack(&self, latency: Duration) {
        self.ack_latency.observe(latency.as_secs_f64());
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String fails only on a metric that cannot be represented, which
        // the fixed set above never produces.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The metrics' consumer of a tenant's [`Committed`] events.
#[derive(Debug, Clone)]
pub(crate) struct CommitMetrics(pub Arc<Metrics>);

impl CommitConsumer for CommitMetrics {
    fn committed(&mut self, event: &Committed<'_>) {
        let m = &self.0;
        m.writes.inc_by(event.writes as u64);
        m.entries_written.inc_by(event.entries as u64);
        m.written_bytes.inc_by(event.bytes as u64);
        m.commit_duration.observe(event.duration.as_secs_f64());
        m.commit_writes.observe(event.writes as f64);
    }

    fn failed(&mut self) {
        self.0.commit_failures.inc();
    }
}
