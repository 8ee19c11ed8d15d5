//! The context every part of a running relay shares: its settings, its tenants, its limits,
//! its metrics, its sessions and the shutdown signal. One [`App`] per relay, behind an
//! `Arc`; the HTTP handlers, the sessions and the tenant registry all read it from here.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct App {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    /// Cancelled when the relay starts to shut down: sessions flush and close, new upgrades
    /// are refused.
    pub shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Chunk ids for relay → client `ChunkedMessage`s; one counter for all connections (as
    /// the reference relay does), so cached live frames can be shared between connections.
    pub chunk_ids: AtomicU64,
    pub conn_ids: AtomicU64,
}

impl App {
    pub fn new(config: Config) -> Self {
        // The metric set is fixed; registering it fails only if it names one metric twice,
        // which the unit tests would catch.
        let metrics = Arc::new(Metrics::new(&config).expect("a valid metric set"));
        let config = Arc::new(config);
        Self {
            registry: Registry::new(config.clone(), metrics.clone()),
            metrics,
            limits: Arc::new(Limits::new(config.limits.clone())),
            config,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            chunk_ids: AtomicU64::new(0),
            conn_ids: AtomicU64::new(1),
        }
    }
}
