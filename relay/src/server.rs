//! The relay's lifecycle: [`Relay::new`] builds its [`App`], [`Relay::serve`] runs it on a
//! bound listener until the shutdown future resolves, then winds everything down.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::app::App;
use crate::auth::{effective_mode, AuthError, Authenticator};
use crate::config::{AuthMode, Config};
use crate::counters::Counters;
use crate::http::{self, HttpState};
use crate::tls::{CertStore, TlsError};

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

    /// What the relay counted since it started (refusals, throttling, iv reuse, TLS reloads).
    pub fn counters(&self) -> &Counters {
        &self.app.counters
    }

    /// WebSocket connections being served.
    pub fn connections(&self) -> usize {
        self.app.limits.connections()
    }

    /// Serves on an already-bound listener until `shutdown` resolves, then stops accepting,
    /// lets every connection flush its Acks and close with 1001, commits what the tenant
    /// actors hold, and closes their databases.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Addr)?;
        let app = self.app.clone();
        let config = app.config.clone();
        for warning in config.warnings() {
            warn!("{warning}");
        }
        let token = app.shutdown.clone();
        let auth = match effective_mode(&config, addr)? {
            AuthMode::Token => Authenticator::tokens(&config, token.clone()).await?,
            AuthMode::None => Authenticator::open(),
        };
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let certs = Arc::new(CertStore::open(cert, key)?);
                let acceptor = certs.acceptor()?;
                let app = app.clone();
                tokio::spawn(
                    certs.watch(config.tls.reload_poll, token.clone(), move |ok| {
                        let counters = &app.counters;
                        Counters::bump(if ok {
                            &counters.tls_reloads
                        } else {
                            &counters.tls_reload_failures
                        });
                    }),
                );
                Some(acceptor)
            }
            (None, None) => None,
            _ => return Err(TlsError::Half.into()),
        };
        let router = http::router(HttpState {
            app: app.clone(),
            auth: Arc::new(auth),
        });
        info!(%addr, tls = tls.is_some(), data = %config.data.display(), durability = ?config.durability, "relay listening");
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        let result = http::accept_loop(listener, router, tls, config.clone(), token.clone()).await;
        // Whatever ended the server, every connection and actor is wound down.
        token.cancel();
        info!("shutting down: flushing connections");
        app.sessions.close();
        if tokio::time::timeout(config.shutdown_timeout, app.sessions.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close in time");
        }
        app.registry.shutdown().await;
        info!("relay stopped");
        result
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
