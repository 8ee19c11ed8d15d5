//! The relay's lifecycle: [`Relay::new`] builds its [`App`], [`Relay::serve`] runs it on a
//! bound listener until the shutdown future resolves, then winds everything down.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::app::App;
use crate::auth::{effective_mode, AuthError, Authenticator};
use crate::config::{AuthMode, Config};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::tls::{CertStore, TlsError};
use wharf_store::Ring;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the listener's address: {0}")]
    Addr(std::io::Error),
    #[error("server failed: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot create the data directory {}: {source}", path.display())]
    Data {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the store is not usable: {0}")]
    Store(#[from] wharf_store::StoreError),
}

/// A relay, ready to serve.
#[derive(Debug)]
pub struct Relay {
    app: Arc<App>,
}

impl Relay {
    pub fn new(config: Config) -> Self {
        Self {
            app: Arc::new(App::new(config)),
        }
    }

    /// Tenants whose actor is running (their database is open).
    pub fn active_tenants(&self) -> usize {
        self.app.registry.active_tenants()
    }

    /// What the relay measured since it started (what `GET /metrics` exports).
    pub fn metrics(&self) -> &Metrics {
        &self.app.metrics
    }

    /// WebSocket connections being served.
    pub fn connections(&self) -> usize {
        self.app.limits.connections()
    }

    /// Serves on an already-bound listener until `shutdown` resolves, then stops accepting,
    /// lets every connection flush its Acks and close with 1001, commits what the tenant
    /// actors hold, and closes their databases. `/metrics` is served on the same listener.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        self.serve_with(listener, None, shutdown).await
    }

    /// [`Relay::serve`], with `/metrics` (and the probes) on `metrics` instead, when given:
    /// plain HTTP, for a scraper on a private network.
    pub async fn serve_with(
        &self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Addr)?;
        let app = self.app.clone();
        let config = app.config.clone();
        for warning in config.warnings() {
            warn!("{warning}");
        }
        let token = app.shutdown.clone();
        // The data directory is durable by name (even when it exists: a relay that died
        // between its mkdir and the sync left it so), and the Postgres schema is brought up to
        // date (the database proven reachable), before anything is served.
        let data = config.data.clone();
        tokio::task::spawn_blocking(move || wharf_durable::create_dir_all(&data))
            .await
            .map_err(std::io::Error::other)
            .and_then(|made| made)
            .map_err(|source| ServeError::Data {
                path: config.data.clone(),
                source,
            })?;
        let backend = app.registry.backend().clone();
        backend.prepare().await?;
        // What other relays sharing the store change reaches this relay's tenants.
        let (registry, counters) = (app.registry.clone(), app.metrics.clone());
        backend
            .follow_others(token.clone(), move |ring| match ring {
                Ring::Log {
                    tenant,
                    public_key,
                    next,
                } => {
                    counters.doorbells.inc();
                    registry.doorbell(&tenant, public_key, next);
                }
                Ring::Settings { tenant } => registry.settings_changed(&tenant),
                Ring::Evict { tenant } => registry.changed_elsewhere(&tenant),
                Ring::Resync { lost } => {
                    if lost {
                        counters.listen_reconnects.inc();
                    }
                    registry.resync();
                }
            })
            .await?;
        let auth = match effective_mode(&config, addr)? {
            AuthMode::Token => {
                let revocations = backend.revocations().await.map_err(AuthError::from)?;
                Authenticator::tokens(&config, revocations, token.clone()).await?
            }
            AuthMode::None => Authenticator::open(),
        };
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let certs = Arc::new(CertStore::open(cert, key)?);
                let acceptor = certs.acceptor()?;
                let app = app.clone();
                tokio::spawn(
                    certs.watch(config.tls.reload_poll, token.clone(), move |ok| {
                        let metrics = &app.metrics;
                        if ok {
                            metrics.tls_reloads.inc();
                        } else {
                            metrics.tls_reload_failures.inc();
                        }
                    }),
                );
                Some(acceptor)
            }
            (None, None) => None,
            _ => return Err(TlsError::Half.into()),
        };
        let state = HttpState {
            app: app.clone(),
            auth: Arc::new(auth),
        };
        let router = http::router(state.clone(), metrics.is_none());
        let metrics_server = match metrics {
            Some(listener) => {
                let addr = listener.local_addr().map_err(ServeError::Addr)?;
                info!(%addr, "metrics listening");
                let router = http::metrics_router(state);
                let (config, stop) = (config.clone(), token.clone());
                Some(tokio::spawn(http::accept_loop(
                    listener, router, None, config, stop,
                )))
            }
            None => None,
        };
        info!(%addr, tls = tls.is_some(), data = %config.data.display(), store = %backend.location(), durability = ?config.durability, "relay listening");
        tokio::spawn(deliver_pending_webhooks(app.clone(), token.clone()));
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        http::accept_loop(listener, router, tls, config.clone(), token.clone()).await;
        // Whatever ended the server, every connection and actor is wound down.
        token.cancel();
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        info!("shutting down: flushing connections");
        app.sessions.close();
        if tokio::time::timeout(config.shutdown_timeout, app.sessions.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close in time");
        }
        app.registry.shutdown().await;
        match backend.release().await {
            Ok(0) => {}
            Ok(n) => info!(
                notifications = n,
                "webhook notifications left to the other relays"
            ),
            Err(e) => {
                warn!(error = %e, "cannot release webhook claims; they run out on their own")
            }
        }
        info!("relay stopped");
        Ok(())
    }
}

/// How often a relay looks for tenants with webhook notifications pending that it does not
/// have open (left by a relay that stopped, restarted or died).
const OUTBOX_SWEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// At start, then every [`OUTBOX_SWEEP`], opens every tenant the store says has webhook
/// notifications pending, so they are delivered without waiting for a client (with a shared
/// store, by whichever relay claims each first). Each tenant closes again once idle and
/// delivered.
async fn deliver_pending_webhooks(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    loop {
        match app.registry.backend().pending_webhooks().await {
            Ok(tenants) => {
                for tenant in tenants {
                    if app.registry.is_active(&tenant) {
                        continue;
                    }
                    if let Err(e) = app.registry.attach(&tenant).await {
                        warn!(tenant = tenant.as_str(), error = %e, "cannot open tenant to deliver its webhooks");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot look for pending webhook notifications"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(OUTBOX_SWEEP) => {}
        }
    }
}

/// [`Relay::new`] then [`Relay::serve`].
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Relay::new(config).serve(listener, shutdown).await
}
