//! TLS for `wss://` and `https://`: rustls (ring), a certificate that can be replaced while the
//! relay runs (SIGHUP, or the files changing, as ACME clients do), and the HTTP/1.1 ALPN the
//! relay speaks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("{path} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)")]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the private key {key} does not belong to the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup: {0}")]
    Setup(String),
    #[error("TLS needs both a certificate and a key (--tls-cert and --tls-key)")]
    Half,
}

/// Whether `config` turns TLS on; checks that the certificate and key load and match.
pub fn check(config: &TlsConfig) -> Result<bool, TlsError> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => load(cert, key).map(|_| true),
        (None, None) => Ok(false),
        _ => Err(TlsError::Half),
    }
}

/// The certificate the relay presents, replaceable while it runs.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of (cert, key) when last loaded, to notice a renewal.
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl CertStore {
    /// Loads the PEM certificate chain and private key (PKCS#8, PKCS#1 or SEC1).
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let stamp = stamps(cert_path, key_path);
        let key = load(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(stamp),
        })
    }

    /// Loads the files again and, only if they make a valid pair, presents them to new
    /// connections. On any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        // Noted before loading: a pair that fails is tried again when a file changes again
        // (an ACME client writing the second file), not on every poll.
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) =
            stamps(&self.cert_path, &self.key_path);
        let key = load(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// Whether either file changed since the last load.
    fn changed(&self) -> bool {
        let now = stamps(&self.cert_path, &self.key_path);
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) != now
    }

    /// The rustls acceptor: TLS 1.2 and 1.3, no client certificates, ALPN `http/1.1`.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads on SIGHUP and whenever the files' modification times change (checked every
    /// `poll`), until `stop`. Failures are logged; the old certificate keeps serving. Each
    /// attempt is reported to `reloaded` (whether it took).
    pub async fn watch(
        self: Arc<Self>,
        poll: Duration,
        stop: CancellationToken,
        reloaded: impl Fn(bool) + Send + 'static,
    ) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; certificate reload by file change only");
                None
            }
        };
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup => "SIGHUP",
                _ = tokio::time::sleep(poll) => {
                    if !self.changed() {
                        continue;
                    }
                    "the files changed"
                }
            };
            match self.reload() {
                Ok(()) => {
                    info!(cert = %self.cert_path.display(), "reloaded the TLS certificate ({why})");
                    reloaded(true);
                }
                Err(e) => {
                    warn!(error = %e, "TLS certificate reload failed ({why}); still serving the previous one");
                    reloaded(false);
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert_path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert_path.to_owned(),
        });
    }
    let key_err = |reason: String| TlsError::Key {
        path: key_path.to_owned(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // Some key types cannot tell; a key rustls can check and that differs is refused.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
    }
}
