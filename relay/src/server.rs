//! HTTP routes and the serve loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wharf_protocol::EXTENSION_SUBPROTOCOL;

use crate::auth::{effective_mode, Admission, AuthError, Authenticator, Refusal};
use crate::config::{AuthMode, Config, TenantId};
use crate::counters::Counters;
use crate::limits::Limits;
use crate::registry::Registry;
use crate::session::{self, SessionInit, Shared};
use crate::tls::{CertStore, TlsError};

/// Bytes a connection reads from its socket at a time (and holds while idle).
const READ_BUFFER_BYTES: usize = 8 * 1024;

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
    #[error(transparent)]
    Tls(#[from] TlsError),
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
                limits: Arc::new(Limits::new(config.limits.clone())),
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

    /// What the relay counted since it started (refusals, throttling, iv reuse, TLS reloads).
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// WebSocket connections being served.
    pub fn connections(&self) -> usize {
        self.shared.limits.connections()
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
        for warning in config.warnings() {
            warn!("{warning}");
        }
        let token = self.shared.shutdown.clone();
        let auth = match effective_mode(&config, addr)? {
            AuthMode::Token => Authenticator::tokens(&config, token.clone()).await?,
            AuthMode::None => Authenticator::open(),
        };
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let certs = Arc::new(CertStore::open(cert, key)?);
                let acceptor = certs.acceptor()?;
                let shared = self.shared.clone();
                tokio::spawn(
                    certs.watch(config.tls.reload_poll, token.clone(), move |ok| {
                        let counters = &shared.counters;
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
        let app = router(AppState {
            shared: self.shared.clone(),
            auth: Arc::new(auth),
            sessions: self.sessions.clone(),
        });
        info!(%addr, tls = tls.is_some(), data = %config.data.display(), durability = ?config.durability, "relay listening");
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        let result = accept_loop(listener, app, tls, config.clone(), token.clone()).await;
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

/// Accepts connections until `stop`, each served on its own task: the TLS handshake (when on,
/// bounded by `tls.handshake_timeout`), then HTTP/1.1 with upgrades, the request head bounded by
/// `header_read_timeout`. On `stop` it stops accepting and lets each HTTP connection finish its
/// current request (upgraded sockets are sessions by then, wound down by the caller).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    config: Arc<Config>,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, config, stop) = (app.clone(), tls.clone(), config.clone(), stop.clone());
        connections.spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(tcp, peer, app, &config, stop).await;
            };
            let handshake =
                tokio::time::timeout(config.tls.handshake_timeout, acceptor.accept(tcp));
            tokio::select! {
                _ = stop.cancelled() => {}
                done = handshake => match done {
                    Ok(Ok(stream)) => serve_connection(stream, peer, app, &config, stop).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    connections.close();
    // Each finishes the response it is writing; one that stalls is not waited for forever.
    if tokio::time::timeout(config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        warn!("some HTTP connections did not finish in time");
    }
    Ok(())
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    config: &Config,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, request).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            return;
        }
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
    let slot = match state.shared.limits.admit(&tenant, peer.ip()) {
        Ok(slot) => slot,
        Err(full) => {
            Counters::bump(&state.shared.counters.refused_by_limit);
            warn!(tenant = tenant.as_str(), %peer, reason = %full, "connection refused");
            let status = full.status();
            return (status, [(header::RETRY_AFTER, "5")], format!("{full}\n")).into_response();
        }
    };
    let config = &state.shared.config;
    let shared = state.shared.clone();
    let sessions = state.sessions.clone();
    let conn = shared.conn_ids.fetch_add(1, Ordering::Relaxed);
    ws.protocols([EXTENSION_SUBPROTOCOL])
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        // tungstenite allocates its read buffer up front (128 KiB by default), per connection;
        // a frame larger than this is still read whole (the buffer grows for it).
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames are written as they are sent; the writer task decides when to flush.
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let extension = socket
                .protocol()
                .is_some_and(|p| p.as_bytes() == EXTENSION_SUBPROTOCOL.as_bytes());
            let init = SessionInit {
                tenant,
                conn,
                extension,
                grant,
                slot,
            };
            sessions.track_future(session::run(socket, init, shared))
        })
}
