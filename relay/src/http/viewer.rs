//! The browser viewer, built into the relay binary so `/viewer` works from a fresh clone with
//! the one run command. The files are `viewer/` at the repository root; `viewer/pkg/` is the
//! wasm-bindgen output of `wasm/`, committed, and `scripts/test` checks it matches the sources.
//! The relay serves these bytes and nothing else: it never sees a key or a plaintext.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::error::HttpError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../viewer/", $name)),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("pkg/wharf_wasm.js", "text/javascript; charset=utf-8"),
    asset!("pkg/wharf_wasm_bg.wasm", "application/wasm"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// A strong validator per asset (a hash of its bytes), so a browser revalidating with
/// `If-None-Match` gets `304 Not Modified` instead of the file again.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let hash = Sha256::digest(a.bytes);
            let tag = format!("\"{}\"", hex::encode(&hash[..16]));
            HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
        })
        .collect()
});

/// `GET /viewer` → `/viewer/` (relative asset URLs resolve under it).
pub async fn redirect() -> Redirect {
    Redirect::permanent("/viewer/")
}

pub async fn index(request: HeaderMap) -> Result<Response, HttpError> {
    serve("index.html", &request)
}

pub async fn file(Path(name): Path<String>, request: HeaderMap) -> Result<Response, HttpError> {
    serve(&name, &request)
}

/// `GET /favicon.ico`, which browsers ask for on their own: the viewer's icon.
pub async fn favicon(request: HeaderMap) -> Result<Response, HttpError> {
    serve("favicon.svg", &request)
}

fn serve(name: &str, request: &HeaderMap) -> Result<Response, HttpError> {
    let (i, asset) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, a)| a.name == name)
        .ok_or_else(|| HttpError::NotFound("no such viewer file".into()))?;
    let etag = ETAGS[i].clone();
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Revalidate every time (a relay upgrade must not leave old viewer code in browsers); the
    // ETag makes that a 304 while nothing changed.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self' ws: wss:; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}
