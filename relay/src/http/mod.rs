//! HTTP, by concern: the accept loop and router here; WebSocket upgrades in [`ws`], health
//! probes and metrics in [`health`], the admin API in [`admin`], the browser viewer in
//! [`viewer`]. Handlers answer errors with
//! [`HttpError`], which maps each kind of failure to one status code.

mod admin;
mod error;
mod health;
mod state;
mod viewer;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Config;
pub(crate) use state::HttpState;

/// The relay's routes. `/metrics` is among them unless it has a listener of its own.
pub(crate) fn router(state: HttpState, with_metrics: bool) -> Router {
    // The viewer's files are compressed for browsers that ask (the wasm module shrinks from
    // ~380 KB to about a third); WebSocket upgrades and probes are left alone.
    let viewer = Router::new()
        .route("/viewer", get(viewer::redirect))
        .route("/viewer/", get(viewer::index))
        .route("/viewer/{*file}", get(viewer::file))
        .route("/favicon.ico", get(viewer::favicon))
        .layer(tower_http::compression::CompressionLayer::new());
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/t/{tenant}", get(ws::connect))
        .route("/v4/t/{tenant}", get(ws::connect_v4))
        .merge(admin::routes(state.clone()))
        .merge(viewer);
    let router = if with_metrics {
        router.route("/metrics", get(health::metrics))
    } else {
        router
    };
    router.with_state(state)
}

/// The routes of a separate metrics listener (`metrics_listen`): `/metrics`, the probes and
/// the admin API (a private address, plain HTTP, for operators and scrapers).
pub(crate) fn metrics_router(state: HttpState) -> Router {
    Router::new()
        .merge(admin::routes(state.clone()))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// Accepts connections until `stop`, each served on its own task: the TLS handshake (when on,
/// bounded by `tls.handshake_timeout`), then HTTP/1.1 with upgrades, the request head bounded by
/// `header_read_timeout`. On `stop` it stops accepting and lets each HTTP connection finish its
/// current request (upgraded sockets are sessions by then, wound down by the caller).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    config: Arc<Config>,
    stop: CancellationToken,
) {
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
