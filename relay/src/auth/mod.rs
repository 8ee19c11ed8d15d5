//! Admission: the one place that decides who may connect and what each connection may do.
//!
//! [`Authenticator::admit`] turns an upgrade request (tenant, headers, query) into a [`Grant`]
//! or a [`Refusal`]; the session then passes every message through [`Grant::authorize`] before
//! acting on it, and closes the connection when [`Grant::ended`] says the token expired or was
//! revoked. No other code checks permissions.

pub mod revocation;
pub mod token;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wharf_protocol::ClientMsg;

use crate::config::{AuthMode, Config, TenantId};
use revocation::{RevocationStore, Revocations};
use token::{Action, Claims, KeyError, RelayKey, Verifier};

/// The `Sec-WebSocket-Protocol` entry that carries a token: `wharf.token.<jwt>` (how a browser,
/// which cannot set headers on a WebSocket, sends one).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "wharf.token.";

/// What an upgrade request carries that admission looks at.
#[derive(Debug)]
pub struct Admission<'a> {
    pub tenant: &'a TenantId,
    pub headers: &'a HeaderMap,
    /// The raw query string, if any (never logged: it may hold a token).
    pub query: Option<&'a str>,
}

/// Why a request or a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials, or ones that do not prove anything (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not allow this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
}

/// Why the relay cannot start its access control.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("revocation list: {0}")]
    Revocations(#[from] revocation::RevocationError),
    #[error(
        "refusing to serve {addr} without access control: anyone who can reach it could read \
         and append to every log. Use --auth token (the default off loopback), listen on \
         127.0.0.1, or pass --insecure-no-auth if something in front of the relay checks access"
    )]
    Exposed { addr: SocketAddr },
}

/// Which mode `config` gives a relay listening on `addr`.
pub fn effective_mode(config: &Config, addr: SocketAddr) -> Result<AuthMode, AuthError> {
    let loopback = addr.ip().is_loopback();
    match config.auth.mode {
        Some(AuthMode::Token) => Ok(AuthMode::Token),
        None if !loopback => Ok(AuthMode::Token),
        None => Ok(AuthMode::None),
        Some(AuthMode::None) if loopback || config.auth.insecure_no_auth => Ok(AuthMode::None),
        Some(AuthMode::None) => Err(AuthError::Exposed { addr }),
    }
}

pub use wharf_token::unix_now;

/// Decides admission for every connection of a relay.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Option<Tokens>,
}

#[derive(Debug)]
struct Tokens {
    verifier: Verifier,
    revocations: watch::Receiver<Arc<Revocations>>,
}

impl Authenticator {
    /// Everyone is admitted to everything.
    pub fn open() -> Self {
        Self { tokens: None }
    }

    /// Every connection needs a token: loads (or creates) the relay's key, the trusted
    /// issuers and the revocation list (from `revocations`, where the store keeps it), which
    /// it follows until `stop`.
    pub async fn tokens(
        config: &Config,
        revocations: RevocationStore,
        stop: CancellationToken,
    ) -> Result<Self, AuthError> {
        let key = RelayKey::load_or_create(&config.key_path())?;
        let verifier = Verifier::new(&key, &config.auth)?;
        let revocations = revocation::watch(revocations, config.auth.revocation_poll, stop).await?;
        tracing::info!(kid = key.kid(), issuer = %config.auth.issuer, "token auth on");
        Ok(Self {
            tokens: Some(Tokens {
                verifier,
                revocations,
            }),
        })
    }

    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    pub fn admit(&self, request: &Admission<'_>) -> Result<Grant, Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(Grant::unrestricted(request.tenant.clone()));
        };
        let token = presented_token(request.headers, request.query).ok_or_else(|| {
            Refusal::Unauthenticated(
                "a token is required: send Authorization: Bearer <token>, a wharf.token.<token> \
                 WebSocket subprotocol, or ?token=<token>"
                    .to_owned(),
            )
        })?;
        let claims = tokens
            .verifier
            .verify(&token)
            .map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        if claims.tenant != request.tenant.as_str() {
            return Err(Refusal::Forbidden(format!(
                "token is for tenant {:?}, not {:?}",
                claims.tenant,
                request.tenant.as_str()
            )));
        }
        if claims.actions.is_empty() {
            return Err(Refusal::Forbidden("token grants no actions".to_owned()));
        }
        let revocations = tokens.revocations.clone();
        if revocations
            .borrow()
            .revokes(&claims.tenant, &claims.jti, claims.iat)
        {
            return Err(Refusal::Unauthenticated("token revoked".to_owned()));
        }
        Ok(Grant::from_claims(
            request.tenant.clone(),
            claims,
            tokens.verifier.leeway(),
            revocations,
        ))
    }
}

/// The tenant claim of a token that administers every tenant (`--tenant '*'`, with the
/// `admin` action).
pub const ALL_TENANTS: &str = "*";

impl Authenticator {
    /// Admission to the admin API: without access control, everyone; with tokens, a valid,
    /// unrevoked token with the `admin` action, for `tenant` or for every tenant (`*`).
    /// `tenant: None` (listing tenants, revoking) needs the latter.
    pub fn admit_admin(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        tenant: Option<&TenantId>,
    ) -> Result<(), Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let token = presented_token(headers, query).ok_or_else(|| {
            Refusal::Unauthenticated(
                "an admin token is required: send Authorization: Bearer <token>".to_owned(),
            )
        })?;
        let claims = tokens
            .verifier
            .verify(&token)
            .map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        if tokens
            .revocations
            .borrow()
            .revokes(&claims.tenant, &claims.jti, claims.iat)
        {
            return Err(Refusal::Unauthenticated("token revoked".to_owned()));
        }
        if !claims.actions.contains(&Action::Admin) {
            return Err(Refusal::Forbidden(
                "the token does not grant the admin action".to_owned(),
            ));
        }
        let scope_ok =
            claims.tenant == ALL_TENANTS || tenant.is_some_and(|t| t.as_str() == claims.tenant);
        if !scope_ok {
            return Err(Refusal::Forbidden(match tenant {
                Some(t) => format!(
                    "the token administers tenant {:?}, not {:?}",
                    claims.tenant,
                    t.as_str()
                ),
                None => format!(
                    "this needs a token for every tenant (--tenant '*'); this one is for {:?}",
                    claims.tenant
                ),
            }));
        }
        Ok(())
    }
}

/// The token a request presents: `Authorization: Bearer`, then a `wharf.token.` subprotocol,
/// then the `token` query parameter.
fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    if let Some(token) = bearer.filter(|t| !t.is_empty()) {
        return Some(token.to_owned());
    }
    let subprotocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX));
    if let Some(token) = subprotocol.filter(|t| !t.is_empty()) {
        return Some(token.to_owned());
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == "token" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// What a request does to a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAction {
    Read,
    Write,
}

/// What one connection may do, decided once at admission.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tenant: TenantId,
    scope: Option<TokenScope>,
}

#[derive(Debug, Clone)]
struct TokenScope {
    sub: String,
    jti: String,
    iat: u64,
    read: bool,
    write: bool,
    logs: Option<HashSet<String>>,
    /// When the connection must close (`exp` plus the leeway admission allowed).
    ends: SystemTime,
    revocations: watch::Receiver<Arc<Revocations>>,
}

impl Grant {
    /// Everything on `tenant` (a relay without access control).
    pub fn unrestricted(tenant: TenantId) -> Self {
        Self {
            tenant,
            scope: None,
        }
    }

    fn from_claims(
        tenant: TenantId,
        claims: Claims,
        leeway: u64,
        revocations: watch::Receiver<Arc<Revocations>>,
    ) -> Self {
        let has = |a| claims.actions.contains(&a) || claims.actions.contains(&Action::Admin);
        let scope = TokenScope {
            read: has(Action::Read),
            write: has(Action::Write),
            logs: token::log_set(&claims.logs),
            ends: UNIX_EPOCH + Duration::from_secs(claims.exp.saturating_add(leeway)),
            sub: claims.sub,
            jti: claims.jti,
            iat: claims.iat,
            revocations,
        };
        Self {
            tenant,
            scope: Some(scope),
        }
    }

    /// Who holds the token (`sub`), for logs.
    pub fn subject(&self) -> Option<&str> {
        self.scope.as_ref().map(|s| s.sub.as_str())
    }

    /// Whether this connection may act on `msg`.
    pub fn authorize(&self, msg: &ClientMsg) -> Result<(), Refusal> {
        let Some(scope) = &self.scope else {
            return Ok(());
        };
        let (action, allowed, log) = match msg {
            // Effect v3 clients send an empty write when they connect: it touches nothing.
            ClientMsg::WriteEntries(w) if w.entries.is_empty() => return Ok(()),
            ClientMsg::WriteEntries(w) => (Action::Write, scope.write, &w.public_key),
            // Publishing a snapshot is a write: it lets retention drop the history it covers.
            ClientMsg::WriteSnapshot(w) => (Action::Write, scope.write, &w.public_key),
            ClientMsg::RequestChanges { public_key, .. } => (Action::Read, scope.read, public_key),
            ClientMsg::StopChanges { .. } | ClientMsg::Chunked(_) | ClientMsg::Ping { .. } => {
                return Ok(())
            }
        };
        if !allowed {
            return Err(Refusal::Forbidden(format!("token does not allow {action}")));
        }
        if scope.logs.as_ref().is_some_and(|logs| !logs.contains(log)) {
            return Err(Refusal::Forbidden(format!(
                "token does not cover log {:?}",
                truncated(log)
            )));
        }
        Ok(())
    }

    /// Whether this connection may `action` the Effect v4 log `(public_key, store_id)`: a
    /// token's `logs` names it as `publicKey` (every store) or `publicKey/storeId`.
    pub fn authorize_log(
        &self,
        action: LogAction,
        public_key: &str,
        store_id: &str,
    ) -> Result<(), Refusal> {
        let Some(scope) = &self.scope else {
            return Ok(());
        };
        let (name, allowed) = match action {
            LogAction::Read => (Action::Read, scope.read),
            LogAction::Write => (Action::Write, scope.write),
        };
        if !allowed {
            return Err(Refusal::Forbidden(format!("token does not allow {name}")));
        }
        if let Some(logs) = &scope.logs {
            if !logs.contains(public_key) && !logs.contains(&format!("{public_key}/{store_id}")) {
                return Err(Refusal::Forbidden(format!(
                    "token does not cover log {:?}",
                    truncated(&format!("{public_key}/{store_id}"))
                )));
            }
        }
        Ok(())
    }

    /// Whether this connection's token covers any log of the v4 identity `public_key` (an
    /// identity it may authenticate, and so pin a signing key for).
    pub fn covers_identity(&self, public_key: &str) -> Result<(), Refusal> {
        let Some(logs) = self.scope.as_ref().and_then(|s| s.logs.as_ref()) else {
            return Ok(());
        };
        let prefix = format!("{public_key}/");
        if logs
            .iter()
            .any(|l| l == public_key || l.starts_with(&prefix))
        {
            return Ok(());
        }
        Err(Refusal::Forbidden(format!(
            "token does not cover identity {:?}",
            truncated(public_key)
        )))
    }

    /// Resolves when the connection must end: its token expired or was revoked. Never
    /// resolves for a relay without access control.
    pub async fn ended(&mut self) -> Refusal {
        let Some(scope) = &mut self.scope else {
            return std::future::pending().await;
        };
        let left = scope
            .ends
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let expired = tokio::time::sleep(left);
        tokio::pin!(expired);
        loop {
            tokio::select! {
                () = &mut expired => return Refusal::Unauthenticated("token expired".to_owned()),
                changed = scope.revocations.changed() => {
                    if changed.is_err() {
                        // The relay stopped following revocations: it is shutting down.
                        return std::future::pending().await;
                    }
                    let revoked = scope
                        .revocations
                        .borrow_and_update()
                        .revokes(self.tenant.as_str(), &scope.jti, scope.iat);
                    if revoked {
                        return Refusal::Unauthenticated("token revoked".to_owned());
                    }
                }
            }
        }
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h, Some("token=q")), Some("q".into()));
        assert_eq!(
            presented_token(&h, Some("a=1&token=q%2Bx")),
            Some("q+x".into())
        );
        assert_eq!(presented_token(&h, Some("token=")), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("wharf.v1, wharf.token.s"),
        );
        assert_eq!(presented_token(&h, Some("token=q")), Some("s".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(presented_token(&h, Some("token=q")), Some("b".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert_eq!(presented_token(&h, None), Some("s".into()));
    }

    #[test]
    fn modes_by_address() {
        let mut c = Config::default();
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert_eq!(effective_mode(&c, lo).ok(), Some(AuthMode::None));
        assert_eq!(effective_mode(&c, any).ok(), Some(AuthMode::Token));
        c.auth.mode = Some(AuthMode::None);
        assert!(effective_mode(&c, any).is_err());
        c.auth.insecure_no_auth = true;
        assert_eq!(effective_mode(&c, any).ok(), Some(AuthMode::None));
        c.auth.mode = Some(AuthMode::Token);
        assert_eq!(effective_mode(&c, lo).ok(), Some(AuthMode::Token));
    }
}
