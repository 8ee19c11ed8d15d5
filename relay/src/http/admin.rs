//! The admin API, `/admin/v1/…` (docs/openapi.json): tenants listed and shown, a log or a
//! tenant deleted, tokens revoked, a tenant exported and imported, settings and retention.
//! Every call needs an admin token (the `admin` action, for the tenant concerned or for every
//! tenant, `*`), except on a relay without access control. What is stored is the store's
//! business: each handler asks `wharf_store::Backend` one question, whichever backend it is.

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use wharf_store::{ImportError, Imported, LogState, TenantSummary};

use super::error::HttpError;
use super::state::HttpState;
use crate::auth::{unix_now, Refusal};
use crate::config::TenantId;

pub(crate) fn routes(state: HttpState) -> Router<HttpState> {
    Router::new()
        .route("/admin/v1/tenants", get(list_tenants))
        .route(
            "/admin/v1/tenants/{tenant}",
            get(show_tenant).delete(delete_tenant),
        )
        .route(
            "/admin/v1/tenants/{tenant}/logs/{public_key}",
            delete(delete_log),
        )
        .route("/admin/v1/tenants/{tenant}/export", get(export_tenant))
        .route("/admin/v1/tenants/{tenant}/import", post(import_tenant))
        .route(
            "/admin/v1/tenants/{tenant}/settings",
            get(get_settings).put(put_settings).delete(delete_settings),
        )
        .route("/admin/v1/tenants/{tenant}/retention", post(run_retention))
        .route("/admin/v1/revocations", post(revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            loopback_unless_tokens,
        ))
}

/// Without access control, the admin API answers loopback clients only: a relay exposed with
/// `--insecure-no-auth` must not let the network delete its tenants.
async fn loopback_unless_tokens(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !peer_allowed(state.auth.requires_tokens(), peer.ip()) {
        return HttpError::Forbidden(
            "this relay has no access control; its admin API answers loopback clients only".into(),
        )
        .into_response();
    }
    next.run(request).await
}

/// One tenant, as listed.
#[derive(Debug, Serialize)]
struct Listed {
    tenant: String,
    /// `active` (its database is open) or `hibernated`.
    state: &'static str,
    /// What it occupies: its database and write-ahead log (SQLite), or the ciphertext and
    /// snapshots it holds (Postgres), in bytes.
    size_bytes: u64,
    logs: usize,
    entries: u64,
    connections: usize,
    /// Its last write, milliseconds since the epoch.
    last_write_unix_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    summary: Listed,
    remote_id: String,
    log_states: Vec<LogState>,
}

#[derive(Debug, Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
struct ImportOptions {
    #[serde(default)]
    replace: bool,
}

fn refused(refusal: Refusal) -> HttpError {
    match refusal {
        Refusal::Unauthenticated(r) => HttpError::Unauthorized(r),
        Refusal::Forbidden(r) => HttpError::Forbidden(r),
    }
}

fn admit(
    state: &HttpState,
    headers: &HeaderMap,
    query: Option<&str>,
    tenant: Option<&TenantId>,
) -> Result<(), HttpError> {
    state
        .auth
        .admit_admin(headers, query, tenant)
        .map_err(refused)
}

fn tenant_id(raw: &str) -> Result<TenantId, HttpError> {
    TenantId::parse(raw).ok_or_else(|| {
        HttpError::BadRequest(format!(
            "invalid tenant {raw:?}: tenant ids are 1-63 characters of [a-z0-9_-], starting \
             with a letter or digit"
        ))
    })
}

fn internal(e: impl std::fmt::Display) -> HttpError {
    HttpError::Internal(e.to_string())
}

/// A tenant's summary as the admin API shows it: what the store reports, and what this relay
/// knows of it (its actor, its connections).
fn listed(state: &HttpState, stored: TenantSummary) -> Listed {
    let app = &state.app;
    let active = TenantId::parse(&stored.tenant).is_some_and(|t| app.registry.is_active(&t));
    let connections =
        TenantId::parse(&stored.tenant).map_or(0, |t| app.limits.tenant_connections(&t));
    Listed {
        tenant: stored.tenant,
        state: if active { "active" } else { "hibernated" },
        size_bytes: stored.size_bytes,
        logs: stored.logs,
        entries: stored.entries,
        connections,
        last_write_unix_ms: stored.last_write_unix_ms,
    }
}

fn no_tenant(tenant: &TenantId) -> HttpError {
    HttpError::NotFound(format!("no tenant {:?}", tenant.as_str()))
}

/// Whether a client at `ip` may use the admin API (its token is checked next, if any).
fn peer_allowed(requires_tokens: bool, ip: std::net::IpAddr) -> bool {
    requires_tokens || ip.to_canonical().is_loopback()
}

/// `GET /admin/v1/tenants`
async fn list_tenants(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    admit(&state, &headers, query.as_deref(), None)?;
    let stored = state.app.registry.backend().tenants().await?;
    let tenants: Vec<Listed> = stored.into_iter().map(|t| listed(&state, t)).collect();
    Ok(Json(serde_json::json!({ "tenants": tenants })))
}

/// `GET /admin/v1/tenants/{tenant}`
async fn show_tenant(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Shown>, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let detail = state
        .app
        .registry
        .backend()
        .describe(&tenant)
        .await?
        .ok_or_else(|| no_tenant(&tenant))?;
    Ok(Json(Shown {
        summary: listed(&state, detail.summary),
        remote_id: detail.remote_id.to_string(),
        log_states: detail.logs,
    }))
}

/// Runs `f` with the tenant's actor (opening the tenant if it is closed).
async fn with_actor<T, F, Fut>(state: &HttpState, tenant: &TenantId, f: F) -> Result<T, HttpError>
where
    F: FnOnce(crate::tenant::TenantHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::tenant::TenantError>>,
{
    if !state.app.registry.backend().may_configure(tenant).await? {
        return Err(no_tenant(tenant));
    }
    let (handle, attached) = state
        .app
        .registry
        .attach(tenant)
        .await
        .map_err(|e| HttpError::Conflict(e.to_string()))?;
    let r = f(handle).await;
    drop(attached);
    r.map_err(|e| match e {
        crate::tenant::TenantError::Settings(why) => HttpError::BadRequest(why),
        crate::tenant::TenantError::Held | crate::tenant::TenantError::Closed => {
            HttpError::Conflict(e.to_string())
        }
        other => HttpError::Internal(other.to_string()),
    })
}

/// Settings as the admin API shows them: webhook secrets are never sent back.
fn settings_json(view: &crate::tenant::SettingsView) -> serde_json::Value {
    let redact = |hooks: &[crate::policy::Webhook]| {
        hooks
            .iter()
            .map(|h| serde_json::json!({ "url": h.url, "secret": "whsec_…" }))
            .collect::<Vec<_>>()
    };
    let stored = view.stored.as_ref().map(|s| {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let (Some(hooks), Some(obj)) = (&s.webhooks, v.as_object_mut()) {
            obj.insert("webhooks".into(), serde_json::Value::from(redact(hooks)));
        }
        v
    });
    let e = &view.effective;
    serde_json::json!({
        "stored": stored,
        "effective": {
            "retention": {
                "max_entries": e.retention.max_entries,
                "max_bytes": e.retention.max_bytes,
                "max_age_ms": e.retention.max_age_ms,
                "after_snapshot": e.retention.after_snapshot,
            },
            "quota": { "max_bytes": e.quota.max_bytes, "max_logs": e.quota.max_logs },
            "webhooks": redact(&e.webhooks),
        }
    })
}

/// `GET /admin/v1/tenants/{tenant}/settings`
async fn get_settings(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    settings(&state, &tenant, query.as_deref(), &headers, None).await
}

/// `PUT /admin/v1/tenants/{tenant}/settings`: replaces what an administrator stored for the
/// tenant (retention, quota, webhooks), on top of the config file's layers.
async fn put_settings(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let settings: crate::policy::TenantSettings = serde_json::from_slice(&body)
        .map_err(|e| HttpError::BadRequest(format!("invalid settings: {e}")))?;
    settings
        .validate(&state.app.config.webhooks)
        .map_err(HttpError::BadRequest)?;
    self::settings(
        &state,
        &tenant,
        query.as_deref(),
        &headers,
        Some(Some(settings)),
    )
    .await
}

/// `DELETE /admin/v1/tenants/{tenant}/settings`: back to the config file's settings.
async fn delete_settings(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    settings(&state, &tenant, query.as_deref(), &headers, Some(None)).await
}

/// The three settings operations: admission, then the tenant's actor reads the settings or
/// replaces the stored ones (`set`), and the answer is what is now in force.
async fn settings(
    state: &HttpState,
    tenant: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    set: Option<Option<crate::policy::TenantSettings>>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let tenant = tenant_id(tenant)?;
    admit(state, headers, query, Some(&tenant))?;
    let changed = set.is_some();
    let view = with_actor(state, &tenant, |h| async move { h.settings(set).await }).await?;
    if changed {
        info!(
            tenant = tenant.as_str(),
            "tenant settings changed by an administrator"
        );
    }
    Ok(Json(settings_json(&view)))
}

/// `POST /admin/v1/tenants/{tenant}/retention`: applies the tenant's retention policy now, to
/// the end, and reports what it deleted and what the tenant occupies before and after (its
/// database file on SQLite; on Postgres, the ciphertext and snapshots it holds: the database
/// gives the space back to itself through autovacuum).
async fn run_retention(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let backend = state.app.registry.backend();
    if !backend.may_configure(&tenant).await? {
        return Err(no_tenant(&tenant));
    }
    let before = backend.footprint(&tenant).await?;
    let report = with_actor(&state, &tenant, |h| async move { h.retain().await }).await?;
    let after = backend.footprint(&tenant).await?;
    Ok(Json(serde_json::json!({
        "entries_deleted": report.entries_deleted,
        "bytes_deleted": report.bytes_deleted,
        "truncated": report
            .truncated
            .iter()
            .map(|(log, first)| serde_json::json!({ "public_key": log, "first_sequence": first }))
            .collect::<Vec<_>>(),
        "file_bytes_before": before,
        "file_bytes_after": after,
    })))
}

/// Holds `tenant`, refuses if it has connections (unless `force`), then closes its sessions
/// and stops its actor.
async fn take(
    state: &HttpState,
    tenant: &TenantId,
    force: bool,
) -> Result<crate::registry::Hold, HttpError> {
    let app = &state.app;
    let hold = app
        .registry
        .hold(tenant)
        .map_err(|e| HttpError::Conflict(e.to_string()))?;
    let connections = app.limits.tenant_connections(tenant);
    if connections > 0 && !force {
        return Err(HttpError::Conflict(format!(
            "tenant {:?} has {connections} open connections; add ?force=true to close them",
            tenant.as_str()
        )));
    }
    app.registry.evict(&hold).await;
    Ok(hold)
}

/// `DELETE /admin/v1/tenants/{tenant}[?force=true]`
async fn delete_tenant(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    Query(Force { force }): Query<Force>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<StatusCode, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let backend = state.app.registry.backend();
    if !backend.has_data(&tenant).await? {
        return Err(no_tenant(&tenant));
    }
    let hold = take(&state, &tenant, force).await?;
    let existed = backend.delete_tenant(&tenant).await?;
    drop(hold);
    if !existed {
        return Err(no_tenant(&tenant));
    }
    state.app.metrics.forget_tenant(tenant.as_str());
    info!(
        tenant = tenant.as_str(),
        force, "tenant deleted by an administrator"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/v1/tenants/{tenant}/logs/{public_key}[?force=true]`
async fn delete_log(
    State(state): State<HttpState>,
    Path((tenant, public_key)): Path<(String, String)>,
    Query(Force { force }): Query<Force>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<StatusCode, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let backend = state.app.registry.backend();
    if !backend.has_data(&tenant).await? {
        return Err(no_tenant(&tenant));
    }
    let hold = take(&state, &tenant, force).await?;
    let existed = backend.delete_log(&tenant, &public_key).await?;
    drop(hold);
    if !existed {
        return Err(HttpError::NotFound(format!(
            "tenant {:?} has no log {public_key:?}",
            tenant.as_str()
        )));
    }
    info!(tenant = tenant.as_str(), %public_key, force, "log deleted by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    /// Revoke one token by its `jti`…
    jti: Option<String>,
    /// …or every token of a tenant issued until now.
    tenant: Option<String>,
}

/// `POST /admin/v1/revocations` with `{"jti": …}` or `{"tenant": …}`.
async fn revoke(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let request: RevokeRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::BadRequest(format!("expected {{\"jti\": …}} or {{\"tenant\": …}}: {e}"))
    })?;
    let tenant = match &request.tenant {
        Some(t) => Some(tenant_id(t)?),
        None => None,
    };
    // Revoking a tenant's tokens needs admin over that tenant; one token by jti, over all.
    admit(&state, &headers, query.as_deref(), tenant.as_ref())?;
    let store = state
        .app
        .registry
        .backend()
        .revocations()
        .await
        .map_err(internal)?;
    let now = unix_now();
    let result = match (request.jti, tenant) {
        (Some(jti), None) => store
            .revoke(&jti, now)
            .await
            .map(|new| serde_json::json!({ "jti": jti, "newly_revoked": new })),
        (None, Some(tenant)) => store
            .revoke_tenant(tenant.as_str(), now + 1)
            .await
            .map(|()| serde_json::json!({ "tenant": tenant.as_str(), "not_before": now + 1 })),
        _ => {
            store.close().await;
            return Err(HttpError::BadRequest(
                "give exactly one of jti and tenant".into(),
            ));
        }
    };
    store.close().await;
    let result = result.map_err(internal)?;
    info!(%result, "revoked by an administrator");
    Ok(Json(result))
}

/// `GET /admin/v1/tenants/{tenant}/export`: NDJSON, streamed from one consistent snapshot.
/// A failure part way cuts the stream (the body ends with an error): no end line, so an
/// import refuses it.
async fn export_tenant(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let rx = state.app.registry.backend().export(&tenant).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.wharf.ndjson\"",
        tenant.as_str()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `POST /admin/v1/tenants/{tenant}/import[?replace=true]` with an export as the body.
async fn import_tenant(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    Query(ImportOptions { replace }): Query<ImportOptions>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Imported>), HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let backend = state.app.registry.backend();
    let mut input = tokio_util::io::StreamReader::new(
        body.into_data_stream()
            .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    let exists = match backend.has_data(&tenant).await {
        Ok(exists) => exists,
        Err(e) => return Err(drain(&mut input, e.into()).await),
    };
    if exists && !replace {
        let refused = HttpError::Conflict(format!(
            "tenant {:?} already has data; add ?replace=true to replace it",
            tenant.as_str()
        ));
        return Err(drain(&mut input, refused).await);
    }
    let hold = match take(&state, &tenant, replace).await {
        Ok(hold) => hold,
        Err(refused) => return Err(drain(&mut input, refused).await),
    };
    let result = backend
        .import(&tenant, &mut input, replace, crate::policy::now_ms())
        .await;
    drop(hold);
    let imported = match result {
        Ok(imported) => imported,
        Err(e) => return Err(drain(&mut input, import_failed(&tenant, e)).await),
    };
    state.app.metrics.forget_tenant(tenant.as_str());
    info!(
        tenant = tenant.as_str(),
        entries = imported.entries,
        replace,
        "tenant imported by an administrator"
    );
    Ok((StatusCode::CREATED, Json(imported)))
}

fn import_failed(tenant: &TenantId, e: ImportError) -> HttpError {
    warn!(tenant = tenant.as_str(), error = %e, "import failed; nothing changed");
    match e {
        ImportError::Invalid { .. } => HttpError::BadRequest(e.to_string()),
        ImportError::Exists(why) => HttpError::Conflict(why),
        ImportError::Io(_) => HttpError::Internal(e.to_string()),
        ImportError::Store(e) => e.into(),
    }
}

/// Reads the rest of an upload before answering: a client still sending would otherwise see
/// a reset connection (a broken pipe) instead of the answer.
async fn drain(input: &mut (impl tokio::io::AsyncRead + Unpin), refused: HttpError) -> HttpError {
    let _ = tokio::io::copy(input, &mut tokio::io::sink()).await;
    refused
}

#[cfg(test)]
mod tests {
    use super::peer_allowed;

    #[test]
    fn without_tokens_only_loopback_clients_administer() {
        let ip = |s: &str| s.parse().expect("ip");
        for local in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(peer_allowed(false, ip(local)), "{local}");
        }
        for remote in ["10.0.0.5", "192.168.1.2", "2001:db8::1", "::ffff:10.0.0.5"] {
            assert!(!peer_allowed(false, ip(remote)), "{remote}");
            assert!(peer_allowed(true, ip(remote)), "tokens decide for {remote}");
        }
    }
}
