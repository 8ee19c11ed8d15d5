//! HTTP routes and the serve loop.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use wharf_protocol::EXTENSION_SUBPROTOCOL;

use crate::auth::{effective_mode, Admission, AuthError, Authenticator, Refusal};
use crate::config::{AuthMode, Config, TenantId};
use crate::counters::Counters;
use crate::registry::Registry;
use crate::session::{self, SessionInit, Shared};

#[derive(Clone, Debug)]
struct AppState {
    shared: Arc<Shared>,
    auth: Arc<Authenticator>,
    sessions: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the listener's address: {0}")]
    Addr(std::io::Error),
    #[error("server failed: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A relay, ready to serve.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    sessions: TaskTracker,
}

impl Relay {
    pub fn new(config: Config) -> Self {
        let config = Arc::new(config);
        Self {
            shared: Arc::new(Shared {
                registry: Registry::new(config.clone()),
                counters: Counters::default(),
                config,
                shutdown: CancellationToken::new(),
                chunk_ids: AtomicU64::new(0),
                conn_ids: AtomicU64::new(1),
            }),
            sessions: TaskTracker::new(),
        }
    }

    /// Tenants whose actor is running (their database is open).
    pub fn active_tenants(&self) -> usize {
        self.shared.registry.active_tenants()
    }

    /// What the relay counted since it started (refusals, throttling, iv reuse).
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Connections being served.
    pub fn connections(&self) -> usize {
        self.sessions.len()
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
        let config = self.shared.config.clone();
        let token = self.shared.shutdown.clone();
        let auth = match effective_mode(&config, addr)? {
            AuthMode::Token => Authenticator::tokens(&config, token.clone()).await?,
            AuthMode::None => Authenticator::open(),
        };
        let app = router(AppState {
            shared: self.shared.clone(),
            auth: Arc::new(auth),
            sessions: self.sessions.clone(),
        });
        info!(%addr, data = %config.data.display(), durability = ?config.durability, "relay listening");
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(token.clone().cancelled_owned())
            .await
            .map_err(ServeError::Io);
        // Whatever ended the server, every connection and actor is wound down.
        token.cancel();
        info!("shutting down: flushing connections");
        self.sessions.close();
        if tokio::time::timeout(config.shutdown_timeout, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        self.shared.registry.shutdown().await;
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

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/t/{tenant}", get(connect))
        .route("/viewer", get(crate::viewer::redirect))
        .route("/viewer/", get(crate::viewer::index))
        .route("/viewer/{*file}", get(crate::viewer::file))
        .with_state(state)
}

async fn connect(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(tenant) = TenantId::parse(&tenant) else {
        return (
            StatusCode::BAD_REQUEST,
            "tenant ids are 1-63 characters of [a-z0-9_-], starting with a letter or digit\n",
        )
            .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if state.shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "relay shutting down\n").into_response();
    }
    let admission = Admission {
        tenant: &tenant,
        headers: &headers,
        query: query.as_deref(),
    };
    let grant = match state.auth.admit(&admission) {
        Ok(grant) => grant,
        Err(refusal) => {
            let counters = &state.shared.counters;
            let status = match refusal {
                Refusal::Unauthenticated(_) => {
                    Counters::bump(&counters.refused_unauthenticated);
                    StatusCode::UNAUTHORIZED
                }
                Refusal::Forbidden(_) => {
                    Counters::bump(&counters.refused_forbidden);
                    StatusCode::FORBIDDEN
                }
            };
            // The reason never quotes the token; the query string is never logged.
            warn!(tenant = tenant.as_str(), status = status.as_u16(), %refusal, "connection refused");
            return (status, format!("{refusal}\n")).into_response();
        }
    };
    let config = &state.shared.config;
    let shared = state.shared.clone();
    let sessions = state.sessions.clone();
    let conn = shared.conn_ids.fetch_add(1, Ordering::Relaxed);
    ws.protocols([EXTENSION_SUBPROTOCOL])
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .on_upgrade(move |socket| {
            let extension = socket
                .protocol()
                .is_some_and(|p| p.as_bytes() == EXTENSION_SUBPROTOCOL.as_bytes());
            let init = SessionInit {
                tenant,
                conn,
                extension,
                grant,
            };
            sessions.track_future(session::run(socket, init, shared))
        })
}
