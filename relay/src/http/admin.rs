//! The admin API, `/admin/v1/…` (docs/openapi.yaml): tenants listed and shown, a log or a
//! tenant deleted, tokens revoked, a tenant exported and imported. Every call needs an admin
//! token (the `admin` action, for the tenant concerned or for every tenant, `*`), except on a
//! relay without access control.

use std::path::{Path as FsPath, PathBuf};
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{HttpError, HttpState};
use crate::auth::revocation::RevocationStore;
use crate::auth::{unix_now, Refusal};
use crate::config::TenantId;
use crate::store::admin::{self as store_admin, Imported, LogState};
use crate::store::postgres::admin::TenantRow;
use crate::store::postgres::Backend as PgBackend;
use crate::store::StoreError;

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
struct TenantSummary {
    tenant: String,
    /// `active` (its database is open) or `hibernated`.
    state: &'static str,
    /// The database and its write-ahead log, in bytes.
    size_bytes: u64,
    logs: usize,
    entries: u64,
    connections: usize,
    /// The last change to its files (a commit or a checkpoint), milliseconds since the epoch.
    last_write_unix_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TenantDetail {
    #[serde(flatten)]
    summary: TenantSummary,
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

/// The shared database, when tenants live in Postgres (`None`: SQLite files).
fn postgres(state: &HttpState) -> Result<Option<&PgBackend>, HttpError> {
    state.app.registry.backend().postgres().map_err(internal)
}

/// A tenant's summary as the admin API shows it, from what its store reports.
fn summary(state: &HttpState, tenant: &TenantId, stored: Stored) -> TenantSummary {
    let app = &state.app;
    TenantSummary {
        tenant: tenant.as_str().to_owned(),
        state: if app.registry.is_active(tenant) {
            "active"
        } else {
            "hibernated"
        },
        size_bytes: stored.size_bytes,
        logs: stored.logs,
        entries: stored.entries,
        connections: app.limits.tenant_connections(tenant),
        last_write_unix_ms: stored.last_write_unix_ms,
    }
}

/// What a store reports about a tenant.
struct Stored {
    size_bytes: u64,
    logs: usize,
    entries: u64,
    last_write_unix_ms: Option<u64>,
}

impl From<&TenantRow> for Stored {
    fn from(row: &TenantRow) -> Self {
        Stored {
            size_bytes: row.bytes,
            logs: usize::try_from(row.logs).unwrap_or(usize::MAX),
            entries: row.entries,
            last_write_unix_ms: row.last_write_unix_ms,
        }
    }
}

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

fn tenant_path(state: &HttpState, tenant: &TenantId) -> PathBuf {
    state.app.config.tenant_path(tenant)
}

/// Sizes and modification time of the database and its WAL.
fn files_of(path: &FsPath) -> (u64, Option<u64>) {
    let mut size = 0;
    let mut modified = None;
    for suffix in ["", "-wal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(meta) = std::fs::metadata(&p) {
            size += meta.len();
            let ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            modified = modified.max(ms);
        }
    }
    (size, modified)
}

fn summarize(state: &HttpState, tenant: &TenantId) -> Result<Option<TenantDetail>, HttpError> {
    let path = tenant_path(state, tenant);
    if !path.exists() {
        return Ok(None);
    }
    let (size_bytes, last_write_unix_ms) = files_of(&path);
    let (remote_id, logs) = match store_admin::describe(&path) {
        Ok(described) => described,
        // Created this instant by a first connection: until its schema and remoteId are
        // committed, the tenant is not there yet.
        Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => return Ok(None),
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(_, Some(msg))))
            if msg.starts_with("no such table") =>
        {
            return Ok(None)
        }
        Err(e) => return Err(internal(e)),
    };
    let stored = Stored {
        size_bytes,
        logs: logs.len(),
        entries: logs.iter().map(|l| l.entries).sum(),
        last_write_unix_ms,
    };
    Ok(Some(TenantDetail {
        summary: summary(state, tenant, stored),
        remote_id: remote_id.to_string(),
        log_states: logs,
    }))
}

/// `tenant` described from the Postgres database.
async fn summarize_postgres(
    state: &HttpState,
    pg: &PgBackend,
    tenant: &TenantId,
) -> Result<Option<TenantDetail>, HttpError> {
    let Some((row, remote_id, logs)) = pg.describe(tenant).await.map_err(internal)? else {
        return Ok(None);
    };
    Ok(Some(TenantDetail {
        summary: summary(state, tenant, Stored::from(&row)),
        remote_id: remote_id.to_string(),
        log_states: logs,
    }))
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
    if let Some(pg) = postgres(&state)? {
        let rows = pg.tenants().await.map_err(internal)?;
        let tenants: Vec<TenantSummary> = rows
            .iter()
            .filter_map(|row| {
                let tenant = TenantId::parse(&row.tenant)?;
                Some(summary(&state, &tenant, Stored::from(row)))
            })
            .collect();
        return Ok(Json(serde_json::json!({ "tenants": tenants })));
    }
    let st = state.clone();
    let tenants = blocking(move || {
        let dir = st.app.config.data.join("tenants");
        let mut names: Vec<TenantId> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let path = e.path();
                    (path.extension()? == "sqlite")
                        .then(|| TenantId::parse(path.file_stem()?.to_str()?))?
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(internal(e)),
        };
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut out = Vec::with_capacity(names.len());
        for tenant in names {
            // A tenant deleted meanwhile is simply not listed.
            if let Some(detail) = summarize(&st, &tenant)? {
                out.push(detail.summary);
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(serde_json::json!({ "tenants": tenants })))
}

/// `GET /admin/v1/tenants/{tenant}`
async fn show_tenant(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<TenantDetail>, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let detail = match postgres(&state)? {
        Some(pg) => summarize_postgres(&state, pg, &tenant).await?,
        None => {
            let st = state.clone();
            let t = tenant.clone();
            blocking(move || summarize(&st, &t)).await?
        }
    };
    detail
        .map(Json)
        .ok_or_else(|| HttpError::NotFound(format!("no tenant {:?}", tenant.as_str())))
}

/// The tenant's database file, or 404 when the tenant does not exist.
fn existing_tenant(state: &HttpState, tenant: &TenantId) -> Result<std::path::PathBuf, HttpError> {
    let path = tenant_path(state, tenant);
    // With the Postgres store a tenant exists once any relay opened it; settings may be
    // stored ahead of that.
    if !state.app.config.uses_postgres() && !path.exists() {
        return Err(HttpError::NotFound(format!(
            "no tenant {:?}",
            tenant.as_str()
        )));
    }
    Ok(path)
}

/// Runs `f` with the tenant's actor (opening the tenant if it is closed).
async fn with_actor<T, F, Fut>(state: &HttpState, tenant: &TenantId, f: F) -> Result<T, HttpError>
where
    F: FnOnce(crate::tenant::TenantHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::tenant::TenantError>>,
{
    existing_tenant(state, tenant)?;
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

/// The ciphertext and snapshot bytes `tenant` holds in the Postgres database.
async fn stored_bytes(pg: &PgBackend, tenant: &TenantId) -> Result<u64, HttpError> {
    pg.describe(tenant)
        .await
        .map_err(internal)?
        .map(|(row, _, _)| row.bytes)
        .ok_or_else(|| HttpError::NotFound(format!("no tenant {:?}", tenant.as_str())))
}

/// `POST /admin/v1/tenants/{tenant}/retention`: applies the tenant's retention policy now, to
/// the end, and reports what it deleted and the database file's size before and after.
async fn run_retention(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    // What the tenant occupies: its database file on SQLite; on Postgres, the ciphertext and
    // snapshots it holds (the database returns the space to itself through autovacuum).
    let (before, report, after) = match postgres(&state)? {
        Some(pg) => {
            let before = stored_bytes(pg, &tenant).await?;
            let report = with_actor(&state, &tenant, |h| async move { h.retain().await }).await?;
            (before, report, stored_bytes(pg, &tenant).await?)
        }
        None => {
            let path = existing_tenant(&state, &tenant)?;
            let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let before = size(&path);
            let report = with_actor(&state, &tenant, |h| async move { h.retain().await }).await?;
            (before, report, size(&path))
        }
    };
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
    if let Some(pg) = postgres(&state)? {
        let hold = take(&state, &tenant, force).await?;
        let existed = pg.delete_tenant(&tenant).await.map_err(internal)?;
        drop(hold);
        if !existed {
            return Err(HttpError::NotFound(format!(
                "no tenant {:?}",
                tenant.as_str()
            )));
        }
        state.app.metrics.forget_tenant(tenant.as_str());
        info!(
            tenant = tenant.as_str(),
            force, "tenant deleted by an administrator"
        );
        return Ok(StatusCode::NO_CONTENT);
    }
    let path = existing_tenant(&state, &tenant)?;
    let hold = take(&state, &tenant, force).await?;
    blocking(move || {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(internal(e)),
            }
        }
        wharf_sqlite::durable::sync_name(&path).map_err(internal)
    })
    .await?;
    state.app.metrics.forget_tenant(tenant.as_str());
    drop(hold);
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
    let existed = match postgres(&state)? {
        Some(pg) => {
            let hold = take(&state, &tenant, force).await?;
            let existed = pg
                .delete_log(&tenant, &public_key)
                .await
                .map_err(internal)?;
            drop(hold);
            existed
        }
        None => {
            let path = existing_tenant(&state, &tenant)?;
            let hold = take(&state, &tenant, force).await?;
            let pk = public_key.clone();
            let existed =
                blocking(move || store_admin::delete_log(&path, &pk).map_err(internal)).await?;
            drop(hold);
            existed
        }
    };
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
    let store = RevocationStore::open(&state.app.config.store_config(), postgres(&state)?)
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

/// `GET /admin/v1/tenants/{tenant}/export`: NDJSON, streamed from one read transaction.
async fn export_tenant(
    State(state): State<HttpState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let tenant = tenant_id(&tenant)?;
    admit(&state, &headers, query.as_deref(), Some(&tenant))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
    // The client sees a cut stream when an export fails (the body ends with an error): no end
    // line, so an import refuses it.
    let failed = |name: &str, e: &str| {
        warn!(tenant = %name, error = %e, "export failed");
        Err(std::io::Error::other(e.to_owned()))
    };
    if let Some(pg) = postgres(&state)? {
        if pg.describe(&tenant).await.map_err(internal)?.is_none() {
            return Err(HttpError::NotFound(format!(
                "no tenant {:?}",
                tenant.as_str()
            )));
        }
        let (pg, name) = (pg.clone(), tenant.clone());
        tokio::spawn(async move {
            let why = match pg.export(&name, &tx).await {
                Ok(Some(_)) => return,
                Ok(None) => "the tenant was deleted".to_owned(),
                Err(e) => e.to_string(),
            };
            let _ = tx.send(failed(name.as_str(), &why)).await;
        });
    } else {
        let path = existing_tenant(&state, &tenant)?;
        let name = tenant.as_str().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            if let Err(e) = store_admin::export(&path, &name, &mut out) {
                let _ = tx.blocking_send(failed(&name, &e.to_string()));
            }
        });
    }
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

const CHUNK: usize = 256 * 1024;

/// A `Write` that sends 256 KiB chunks to the response body.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
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
    if let Some(pg) = postgres(&state)? {
        let hold = match take(&state, &tenant, replace).await {
            Ok(hold) => hold,
            Err(refused) => return Err(drain(body, refused).await),
        };
        let mut input = tokio_util::io::StreamReader::new(
            body.into_data_stream()
                .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))),
        );
        let result = pg
            .import(&tenant, &mut input, replace, crate::policy::now_ms())
            .await;
        drop(hold);
        let imported = match result {
            Ok(imported) => imported,
            Err(e) => {
                // Read the rest of the upload, so the client gets to read the answer.
                let _ = tokio::io::copy(&mut input, &mut tokio::io::sink()).await;
                return Err(import_failed(&tenant, e));
            }
        };
        state.app.metrics.forget_tenant(tenant.as_str());
        info!(
            tenant = tenant.as_str(),
            entries = imported.entries,
            replace,
            "tenant imported by an administrator"
        );
        return Ok((StatusCode::CREATED, Json(imported)));
    }
    let path = tenant_path(&state, &tenant);
    let exists = path.exists();
    if exists && !replace {
        let refused = HttpError::Conflict(format!(
            "tenant {:?} already has data; add ?replace=true to replace it",
            tenant.as_str()
        ));
        return Err(drain(body, refused).await);
    }
    let hold = match take(&state, &tenant, replace).await {
        Ok(hold) => hold,
        Err(refused) => return Err(drain(body, refused).await),
    };
    // The body arrives on this task; the import reads it on a blocking thread.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
    let target = path.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::new(ChannelReader {
            rx,
            chunk: axum::body::Bytes::new(),
        });
        let staged = target.with_extension("replacing");
        let imported = store_admin::import(&staged, &mut input)?;
        replace_files(&staged, &target)?;
        Ok::<_, store_admin::ImportError>(imported)
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        let failed = chunk.is_err();
        if failed || tx.send(chunk).await.is_err() {
            // The import gave up (its reason is below). Read the rest of the upload, so the
            // client gets to read the answer instead of a reset connection.
            while stream.next().await.is_some() {}
            break;
        }
    }
    drop(tx);
    let imported = worker
        .await
        .map_err(internal)?
        .map_err(|e| import_failed(&tenant, e))?;
    drop(hold);
    info!(
        tenant = tenant.as_str(),
        entries = imported.entries,
        replace,
        "tenant imported by an administrator"
    );
    Ok((StatusCode::CREATED, Json(imported)))
}

fn import_failed(tenant: &TenantId, e: store_admin::ImportError) -> HttpError {
    warn!(tenant = tenant.as_str(), error = %e, "import failed; nothing changed");
    match e {
        store_admin::ImportError::Invalid { .. } => HttpError::BadRequest(e.to_string()),
        store_admin::ImportError::Exists(why) => HttpError::Conflict(why),
        other => HttpError::Internal(other.to_string()),
    }
}

/// Reads the rest of an upload before refusing it: a client still sending would otherwise see
/// a reset connection (a broken pipe) instead of the answer.
async fn drain(body: Body, refused: HttpError) -> HttpError {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
    refused
}

/// Moves an imported database into place, removing the old one's WAL and shared memory.
fn replace_files(staged: &FsPath, target: &FsPath) -> Result<(), store_admin::ImportError> {
    for suffix in ["-wal", "-shm"] {
        let mut p = target.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    wharf_sqlite::durable::rename(staged, target)?;
    Ok(())
}

/// A `Read` over body chunks handed over from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>,
    chunk: axum::body::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
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
