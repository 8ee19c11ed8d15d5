//! One WebSocket connection to a relay: URL and token handling, TLS (rustls, webpki roots plus
//! an optional extra CA file), the `Hello` handshake, chunking out and reassembly in.
//!
//! [`Connection::recv`] is cancel-safe (all partial state lives in the struct), so the sync task
//! can `select!` on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;
use wharf_protocol::{
    ClientMsg, Inbound, JsNumber, ReassemblerLimits, RelayMsg, EXTENSION_SUBPROTOCOL,
};

use crate::error::Error;

/// How the token reaches the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>` (the default).
    #[default]
    Header,
    /// `?token=<token>` in the URL, for proxies that strip headers.
    Query,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `ws://` or `wss://` address of the relay (`/t/{tenant}` is added), or a full tenant URL.
    pub relay: String,
    pub tenant: String,
    pub token: Option<String>,
    pub token_placement: TokenPlacement,
    /// Extra PEM CA certificates to trust for `wss://`, beside the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Bound on TCP + TLS + WebSocket handshake + `Hello`.
    pub connect_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(relay: impl Into<String>, tenant: impl Into<String>) -> Self {
        ConnectOptions {
            relay: relay.into(),
            tenant: tenant.into(),
            token: None,
            token_placement: TokenPlacement::Header,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The tenant's WebSocket URL.
    pub fn url(&self) -> Result<Url, Error> {
        self.url_under(&["t"])
    }

    /// The tenant's Effect v4 URL (`/v4/t/{tenant}`); a tenant URL given whole (`…/t/{tenant}`)
    /// is moved under `/v4`.
    pub fn v4_url(&self) -> Result<Url, Error> {
        let mut url = self.url_under(&["v4", "t"])?;
        let path = url.path().to_owned();
        if !path.contains("/v4/t/") {
            if let Some(i) = path.rfind("/t/") {
                url.set_path(&format!("{}/v4{}", &path[..i], &path[i..]));
            }
        }
        Ok(url)
    }

    fn url_under(&self, prefix: &[&str]) -> Result<Url, Error> {
        let bad = |reason: &str| Error::Url {
            url: self.relay.clone(),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(&self.relay).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "ws" | "wss" => {}
            "http" => url.set_scheme("ws").map_err(|_| bad("cannot use ws"))?,
            "https" => url.set_scheme("wss").map_err(|_| bad("cannot use wss"))?,
            other => return Err(bad(&format!("scheme {other:?}; use ws:// or wss://"))),
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let has_tenant = path
            .rsplit_once('/')
            .is_some_and(|(prefix, _)| prefix.ends_with("/t"));
        if !has_tenant {
            if self.tenant.is_empty() {
                return Err(bad("no tenant given"));
            }
            url.path_segments_mut()
                .map_err(|_| bad("cannot be a base URL"))?
                .pop_if_empty()
                .extend(prefix.iter().copied().chain([self.tenant.as_str()]));
        }
        if let (Some(token), TokenPlacement::Query) = (&self.token, self.token_placement) {
            url.query_pairs_mut().append_pair("token", token);
        }
        Ok(url)
    }

    fn connector(&self, url: &Url) -> Result<Option<Connector>, Error> {
        if url.scheme() != "wss" {
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            let mut added = 0;
            for cert in certs {
                let cert = cert.map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::Tls(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(Connector::Rustls(Arc::new(config))))
    }
}

/// An HTTP answer to the upgrade is the relay's refusal (its body says why, in one line); anything
/// else is a failure to connect. The URL is shown without its query, which may hold the token.
fn refused(url: &Url, e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let reason: String = body.trim().chars().take(200).collect();
            Error::Refused {
                status: response.status().as_u16(),
                reason: if reason.is_empty() {
                    response
                        .status()
                        .canonical_reason()
                        .unwrap_or("no reason given")
                        .to_owned()
                } else {
                    reason
                },
            }
        }
        e => Error::Connect(format!("{}: {e}", redacted(url))),
    }
}

/// `url` without its query string (which may hold `?token=`), for messages and logs.
pub(crate) fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// The WebSocket handshake to `url` (TLS and the token as `opts` say), offering `subprotocol`.
pub(crate) async fn dial(
    opts: &ConnectOptions,
    url: &Url,
    subprotocol: Option<&'static str>,
) -> Result<
    (
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    Error,
> {
    let connector = opts.connector(url)?;
    let mut request = url.as_str().into_client_request().map_err(|e| Error::Url {
        url: redacted(url),
        reason: e.to_string(),
    })?;
    let headers = request.headers_mut();
    if let Some(p) = subprotocol {
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    if let (Some(token), TokenPlacement::Header) = (&opts.token, opts.token_placement) {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::Connect("the token is not a valid header value".into()))?;
        headers.insert("authorization", value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(128 << 20))
        .max_frame_size(Some(128 << 20));
    tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
        .await
        .map_err(|e| refused(url, e))
}

/// An open connection that has received `Hello`.
#[derive(Debug)]
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    inbound: Inbound<RelayMsg>,
    remote_id: Vec<u8>,
    extension: bool,
    started: Instant,
}

impl Connection {
    /// Connects, negotiates `wharf.v1` when the relay offers it, and waits for `Hello`.
    pub async fn open(opts: &ConnectOptions) -> Result<Connection, Error> {
        let url = opts.url()?;
        let handshake = async {
            let (ws, response) = dial(opts, &url, Some(EXTENSION_SUBPROTOCOL)).await?;
            let extension = response
                .headers()
                .get("sec-websocket-protocol")
                .is_some_and(|v| v.as_bytes() == EXTENSION_SUBPROTOCOL.as_bytes());
            let mut conn = Connection {
                ws,
                inbound: Inbound::new(ReassemblerLimits::default()),
                remote_id: Vec::new(),
                extension,
                started: Instant::now(),
            };
            match conn.recv().await? {
                RelayMsg::Hello { remote_id } => {
                    conn.remote_id = remote_id.to_vec();
                    Ok(conn)
                }
                other => Err(Error::Protocol(format!(
                    "expected Hello first, got {}",
                    other.tag()
                ))),
            }
        };
        tokio::time::timeout(opts.connect_timeout, handshake)
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {}", redacted(&url))))?
    }

    /// The relay's identity for its data (stable until its data is wiped).
    pub fn remote_id(&self) -> &[u8] {
        &self.remote_id
    }

    /// Whether the relay speaks the `wharf.v1` extension (`Head`, `CaughtUp`, `Error`).
    pub fn extension(&self) -> bool {
        self.extension
    }

    /// How long this connection has been up.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends one message; one over 512,000 bytes goes as `ChunkedMessage`s, as the Effect
    /// client sends it.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues a message without flushing (call [`Connection::flush`] after a burst).
    pub async fn feed(&mut self, msg: &ClientMsg) -> Result<(), Error> {
        let id = match msg {
            ClientMsg::WriteEntries(w) => w.id,
            _ => JsNumber::from(0u32),
        };
        for frame in wharf_protocol::frames(Bytes::from(msg.encode()), id) {
            self.ws.feed(Message::Binary(frame)).await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        Ok(self.ws.flush().await?)
    }

    /// The next whole message. A relay `Error` or close frame comes back as an `Err`.
    pub async fn recv(&mut self) -> Result<RelayMsg, Error> {
        loop {
            let frame = match self.ws.next().await {
                Some(frame) => frame?,
                None => return Err(Error::Disconnected("the connection ended".into())),
            };
            let bytes = match frame {
                Message::Binary(b) => b,
                Message::Close(c) => {
                    let (code, reason) = c
                        .map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(Error::RelayClosed { code, reason });
                }
                Message::Text(_) => {
                    return Err(Error::Protocol("the relay sent a text frame".into()))
                }
                _ => continue,
            };
            let now = self.started.elapsed().as_millis() as u64;
            let msg = match self.inbound.push(&bytes, now) {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(e) => return Err(Error::Protocol(e.to_string())),
            };
            if let RelayMsg::Error { code, message } = msg {
                return Err(Error::Relay {
                    code: code.to_string(),
                    message,
                });
            }
            return Ok(msg);
        }
    }

    /// Sends a ping and waits for its pong (other messages in between are dropped: use this only
    /// on a connection with nothing else going on).
    pub async fn round_trip(&mut self, id: u32) -> Result<Duration, Error> {
        let start = Instant::now();
        self.send(&ClientMsg::Ping {
            id: JsNumber(f64::from(id)),
        })
        .await?;
        loop {
            if let RelayMsg::Pong { id: got } = self.recv().await? {
                if got.0 == f64::from(id) {
                    return Ok(start.elapsed());
                }
            }
        }
    }

    /// Closes politely (1000 from a client means "done").
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = |relay: &str, token: Option<&str>, placement| {
            let mut o = ConnectOptions::new(relay, "acme");
            o.token = token.map(str::to_owned);
            o.token_placement = placement;
            o.url().map(|u| u.to_string())
        };
        let h = TokenPlacement::Header;
        assert_eq!(
            url("ws://127.0.0.1:8080", None, h).ok().as_deref(),
            Some("ws://127.0.0.1:8080/t/acme")
        );
        assert_eq!(
            url("http://h/", None, h).ok().as_deref(),
            Some("ws://h/t/acme")
        );
        assert_eq!(
            url("https://h/base", None, h).ok().as_deref(),
            Some("wss://h/base/t/acme")
        );
        assert_eq!(
            url("wss://h/t/other", None, h).ok().as_deref(),
            Some("wss://h/t/other")
        );
        assert_eq!(
            url("ws://h", Some("a b&c"), TokenPlacement::Query)
                .ok()
                .as_deref(),
            Some("ws://h/t/acme?token=a+b%26c")
        );
        assert!(url("ftp://h", None, h).is_err());
        assert!(url("not a url", None, h).is_err());
    }
}
