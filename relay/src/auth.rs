//! Admission: the one place that decides who may connect and what each connection may do.
//!
//! [`Authenticator::admit`] turns an upgrade request (tenant, headers, query) into a [`Grant`]
//! or a [`Refusal`]; the session then passes every message through [`Grant::authorize`] before
//! acting on it. No other code checks permissions.

use axum::http::HeaderMap;
use wharf_protocol::ClientMsg;

use crate::config::TenantId;

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

/// What one connection may do, decided once at admission.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tenant: TenantId,
}

impl Grant {
    /// Everything on `tenant` (a relay without access control).
    pub fn unrestricted(tenant: TenantId) -> Self {
        Self { tenant }
    }

    /// Whether this connection may act on `msg`.
    pub fn authorize(&self, _msg: &ClientMsg) -> Result<(), Refusal> {
        Ok(())
    }
}

/// Decides admission for every connection of a relay.
#[derive(Debug, Default)]
pub struct Authenticator {}

impl Authenticator {
    pub fn new() -> Self {
        Self {}
    }

    pub fn admit(&self, request: &Admission<'_>) -> Result<Grant, Refusal> {
        Ok(Grant::unrestricted(request.tenant.clone()))
    }
}
