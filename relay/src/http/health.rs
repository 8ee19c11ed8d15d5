//! Probes for supervisors and load balancers, and the metrics endpoint.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::HttpError;
use super::state::HttpState;
use crate::app::App;

/// `GET /healthz`: the process is up and serving HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the relay accepts traffic: it is not draining, its data directory takes
/// writes (a probe file of its own is created, synced and removed: relays may share the
/// directory), and, with the Postgres store, the database answers.
pub(crate) async fn readyz(State(state): State<HttpState>) -> Result<&'static str, HttpError> {
    if state.app.shutdown.is_cancelled() {
        return Err(HttpError::Unavailable {
            reason: "not ready: draining (shutting down)".into(),
            retry_after: 5,
        });
    }
    let dir = state.app.config.data.clone();
    let probe = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        // The directory is made (durably) at start; one that has gone since is not ready.
        let path = dir.join(format!(".readyz-probe-{}", std::process::id()));
        let file = std::fs::File::create(&path)?;
        file.sync_all()?;
        std::fs::remove_file(&path)
    })
    .await;
    if let Ok(Ok(())) = probe {
        if let Err(e) = state.app.registry.backend().ping().await {
            return Err(HttpError::Unavailable {
                reason: format!("not ready: {e}"),
                retry_after: 5,
            });
        }
    }
    match probe {
        Ok(Ok(())) => Ok("ready\n"),
        Ok(Err(e)) => Err(HttpError::Unavailable {
            reason: format!("not ready: the data directory does not take writes: {e}"),
            retry_after: 5,
        }),
        Err(e) => Err(HttpError::Internal(format!("readiness probe failed: {e}"))),
    }
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub(crate) async fn metrics(State(state): State<HttpState>) -> Response {
    render_metrics(&state.app).await
}

pub(crate) async fn render_metrics(app: &App) -> Response {
    let m = &app.metrics;
    m.connections_open
        .set(i64::try_from(app.limits.connections()).unwrap_or(i64::MAX));
    let active = app.registry.active_tenants();
    m.tenants_active
        .set(i64::try_from(active).unwrap_or(i64::MAX));
    let stored = app.registry.backend().tenant_count().await.unwrap_or(0);
    m.tenants_hibernated
        .set(i64::try_from(stored.saturating_sub(active)).unwrap_or(i64::MAX));
    let mut response = m.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
