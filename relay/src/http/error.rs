//! [`HttpError`], the one error type handlers return: each kind of failure maps to one
//! status code, and the reason goes to the client as plain text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A request the relay will not serve, and why; the reason goes to the client as plain text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A connection limit: the client may retry after `retry_after` seconds.
    #[error("{reason}")]
    TooMany { reason: String, retry_after: u32 },
    #[error("{reason}")]
    Unavailable { reason: String, retry_after: u32 },
    #[error("{0}")]
    Internal(String),
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::Conflict(_) => StatusCode::CONFLICT,
            HttpError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            HttpError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            HttpError::TooMany { retry_after, .. } | HttpError::Unavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if let Some(seconds) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<wharf_store::StoreError> for HttpError {
    /// What went wrong with the storage, as the status the admin API documents for it
    /// (docs/openapi.json): a missing tenant or log is 404, a conflicting change 409, and
    /// anything else (a full disk, storage that cannot answer now, a corrupt database) 500,
    /// whose text says which.
    fn from(e: wharf_store::StoreError) -> Self {
        use wharf_store::StoreError as E;
        match e {
            E::NotFound(_) => HttpError::NotFound(e.to_string()),
            E::Conflict(_) => HttpError::Conflict(e.to_string()),
            E::Full(_)
            | E::Unavailable(_)
            | E::TimedOut(_)
            | E::Contended(_)
            | E::Corrupt(_)
            | E::Incompatible(_)
            | E::Config(_)
            | E::Lost
            | E::Failed(_) => HttpError::Internal(e.to_string()),
        }
    }
}
