//! `GET /t/{tenant}` (Effect v3) and `GET /v4/t/{tenant}` (Effect v4): admission (token, then
//! connection limits), then the WebSocket upgrade that hands the socket to a session of that
//! protocol. Both take tokens the same ways and count against the same limits.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tracing::warn;
use wharf_protocol::EXTENSION_SUBPROTOCOL;

use super::error::HttpError;
use super::state::HttpState;
use crate::auth::{Admission, Refusal};
use crate::config::TenantId;
use crate::session::{self, SessionInit};

/// Bytes a connection reads from its socket at a time (and holds while idle).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    V3,
    V4,
}

pub(crate) async fn connect(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    upgrade(state, peer, tenant, query, headers, ws, Protocol::V3)
}

pub(crate) async fn connect_v4(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    upgrade(state, peer, tenant, query, headers, ws, Protocol::V4)
}

fn upgrade(
    state: HttpState,
    peer: SocketAddr,
    tenant: String,
    query: Option<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    protocol: Protocol,
) -> Result<Response, HttpError> {
    let tenant = TenantId::parse(&tenant).ok_or_else(|| {
        HttpError::BadRequest(
            "tenant ids are 1-63 characters of [a-z0-9_-], starting with a letter or digit".into(),
        )
    })?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let app = state.app;
    if app.shutdown.is_cancelled() {
        app.metrics.refused_shutting_down.inc();
        return Err(HttpError::Unavailable {
            reason: "relay shutting down".into(),
            retry_after: 5,
        });
    }
    let admission = Admission {
        tenant: &tenant,
        headers: &headers,
        query: query.as_deref(),
    };
    let grant = state.auth.admit(&admission).map_err(|refusal| {
        let counters = &app.metrics;
        let error = match &refusal {
            Refusal::Unauthenticated(_) => {
                counters.refused_unauthenticated.inc();
                HttpError::Unauthorized(refusal.to_string())
            }
            Refusal::Forbidden(_) => {
                counters.refused_forbidden.inc();
                HttpError::Forbidden(refusal.to_string())
            }
        };
        // The reason never quotes the token; the query string is never logged.
        warn!(tenant = tenant.as_str(), status = error.status().as_u16(), %refusal, "connection refused");
        error
    })?;
    let slot = app.limits.admit(&tenant, peer.ip()).map_err(|full| {
        app.metrics.refused_by_limit.inc();
        warn!(tenant = tenant.as_str(), %peer, reason = %full, "connection refused");
        let (reason, retry_after) = (full.to_string(), 5);
        if full.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE {
            HttpError::Unavailable {
                reason,
                retry_after,
            }
        } else {
            HttpError::TooMany {
                reason,
                retry_after,
            }
        }
    })?;
    let config = &app.config;
    let conn = app.conn_ids.fetch_add(1, Ordering::Relaxed);
    app.metrics.connections.inc();
    // On /v4 `wharf.v1` means nothing, but a browser that offers subprotocols (to carry a
    // token) fails the upgrade unless one is chosen: the viewer offers it on both.
    let response = ws
        .protocols([EXTENSION_SUBPROTOCOL])
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        // tungstenite allocates its read buffer up front (128 KiB by default), per connection;
        // a frame larger than this is still read whole (the buffer grows for it).
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames are written as they are sent; the writer task decides when to flush.
        .write_buffer_size(0);
    let sessions = app.sessions.clone();
    Ok(response.on_upgrade(move |socket| {
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
        match protocol {
            Protocol::V3 => sessions
                .track_future(session::run(socket, init, app))
                .boxed(),
            Protocol::V4 => sessions
                .track_future(crate::v4::run(socket, init, app))
                .boxed(),
        }
    }))
}
