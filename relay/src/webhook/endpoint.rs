//! One endpoint: its URL and secret checked ([`Endpoint::parse`]), the link-local and metadata
//! guard (resolved at every delivery, the request sent to the vetted address itself), and one
//! delivery attempt ([`Endpoint::post`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use url::Url;

use super::settings::{Webhook, WebhooksConfig};
use super::sign::sign;

const SECRET_PREFIX: &str = "whsec_";

/// A parsed, checked endpoint.
#[derive(Clone)]
pub struct Endpoint {
    /// As configured: the outbox names endpoints by this string.
    configured: String,
    url: Url,
    key: Vec<u8>,
    allow_link_local: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("origin", &self.origin())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl Endpoint {
    /// Checks a configured endpoint: an `http` or `https` URL with a host, not a literal
    /// link-local address, and a `whsec_` secret of at least 16 bytes.
    pub fn parse(hook: &Webhook, config: &WebhooksConfig) -> Result<Endpoint, String> {
        // Errors name the origin only: a path or query may hold a capability.
        let shown = origin_of(&hook.url);
        let url = Url::parse(&hook.url).map_err(|e| format!("webhook URL {shown}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "webhook URL {shown}: only http and https are allowed"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("webhook URL {shown} has no host"))?;
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if !config.allow_link_local && forbidden(ip) {
                return Err(format!(
                    "webhook URL {shown}: {ip} is a link-local or metadata address \
                     (allow with webhooks.allow_link_local)"
                ));
            }
        }
        let encoded = hook
            .secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("webhook secret for {shown} must start with {SECRET_PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| format!("webhook secret for {shown} is not base64: {e}"))?;
        if key.len() < 16 {
            return Err(format!(
                "webhook secret for {shown} is {} bytes; use at least 16 (24 to 64 recommended)",
                key.len()
            ));
        }
        Ok(Endpoint {
            configured: hook.url.clone(),
            url,
            key,
            allow_link_local: config.allow_link_local,
        })
    }

    /// The URL as configured (what the outbox names the endpoint by).
    pub fn configured(&self) -> &str {
        &self.configured
    }

    /// Scheme, host and port only, for logs (paths and queries may hold capabilities).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    /// `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        sign(&self.key, id, timestamp, body)
    }

    /// Resolves the host and keeps only addresses it may reach.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, DeliveryError> {
        let host = self
            .url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let port = self.url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| DeliveryError::Resolve {
                host: host.clone(),
                source,
            })?
            .collect();
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.allow_link_local || !forbidden(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(DeliveryError::Refused(format!(
                "{host} resolves only to link-local or metadata addresses ({addrs:?})"
            )));
        }
        Ok(allowed)
    }

    /// Posts `body` once; `Ok` on any 2xx answer.
    pub async fn post(
        &self,
        id: &str,
        timestamp: i64,
        body: Bytes,
        timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(), DeliveryError> {
        tokio::time::timeout(timeout, self.post_inner(id, timestamp, body, tls))
            .await
            .map_err(|_| DeliveryError::Timeout(timeout))?
    }

    async fn post_inner(
        &self,
        id: &str,
        timestamp: i64,
        body: Bytes,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(), DeliveryError> {
        let addrs = self.resolve().await?;
        let tcp = tokio::net::TcpStream::connect(&addrs[..])
            .await
            .map_err(|e| DeliveryError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let host = self.url.host_str().unwrap_or_default().to_owned();
        let authority = match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let path = match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_owned(),
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "wharf-relay")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", self.sign(id, timestamp, &body))
            .body(Full::new(body))
            .map_err(|e| DeliveryError::Connect(e.to_string()))?;
        let status = if self.url.scheme() == "https" {
            let name =
                rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| DeliveryError::Connect(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| DeliveryError::Connect(format!("TLS: {e}")))?;
            send(TokioIo::new(stream), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    }
}

async fn send<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<u16, DeliveryError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| DeliveryError::Connect(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| DeliveryError::Connect(e.to_string()));
    let status = match response {
        // The body is not read: the status is the answer, and the connection is dropped.
        Ok(r) => r.status().as_u16(),
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    };
    driver.abort();
    Ok(status)
}

/// `scheme://host:port` of a URL, for logs and errors; a placeholder when it does not parse.
pub fn origin_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) if u.has_host() => u.origin().ascii_serialization(),
        _ => "(not a URL)".to_owned(),
    }
}

/// Link-local (169.254.0.0/16, where AWS, GCP and Azure serve metadata; fe80::/10), and the
/// metadata addresses outside it (AWS's fd00:ec2::254, Alibaba's 100.100.100.200).
fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an
            // IPv4 address a gateway may route to.
            let compatible = s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1);
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            let v4 = if compatible || nat64 {
                Some(embedded(s[6], s[7]))
            } else if s[0] == 0x2002 {
                Some(embedded(s[1], s[2]))
            } else {
                None
            };
            if v4.is_some_and(|v4| forbidden(IpAddr::V4(v4))) {
                return true;
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.segments() == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254]
        }
    }
}

/// The client TLS configuration for `https` endpoints: the webpki roots.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification.
    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        let hook = Webhook {
            url: "http://127.0.0.1/hook".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        };
        let endpoint = Endpoint::parse(&hook, &WebhooksConfig::default()).expect("parse");
        assert_eq!(
            endpoint.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused() {
        let config = WebhooksConfig::default();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/x",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::a9fe:a9fe]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::1]/",
            "ftp://127.0.0.1/",
        ] {
            let hook = Webhook {
                url: url.into(),
                secret: secret.clone(),
            };
            assert!(Endpoint::parse(&hook, &config).is_err(), "{url} accepted");
        }
        let allowed = WebhooksConfig {
            allow_link_local: true,
            ..WebhooksConfig::default()
        };
        let hook = Webhook {
            url: "http://169.254.169.254/".into(),
            secret: secret.clone(),
        };
        assert!(Endpoint::parse(&hook, &allowed).is_ok());
        let short = Webhook {
            url: "http://127.0.0.1/".into(),
            secret: "whsec_c2hvcnQ=".into(),
        };
        assert!(Endpoint::parse(&short, &config).is_err());
    }
}
