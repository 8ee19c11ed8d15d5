//! Tokens: the claims Wharf reads, the relay's own Ed25519 key, and verification against it and
//! the trusted issuers. Signing and checking are `jsonwebtoken`'s (RustCrypto backend); this
//! module only chooses keys, pins algorithms and names what went wrong.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, IssuerAlgorithm};

/// Longest token accepted, in bytes (a header line is not a place for megabytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `RequestChanges`: read a log's ciphertext and follow it.
    Read,
    /// `WriteEntries`: append to a log.
    Write,
    /// Everything `read` and `write` allow, and the relay's admin operations.
    Admin,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

/// `aud` as a string or a list of strings (RFC 7519 allows both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims of a Wharf token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// Who holds it (an agent, a task, a person): shown in logs, never trusted for access.
    pub sub: String,
    pub aud: Audience,
    /// The one tenant it opens.
    pub tenant: String,
    pub actions: Vec<Action>,
    /// The publicKeys (logs) it may touch; absent: every log of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<String>>,
    /// Expiry, seconds since the epoch.
    #[serde(deserialize_with = "numeric_date::exp")]
    pub exp: u64,
    /// Issue time, seconds since the epoch (0 when absent: any tenant "not before" revokes it).
    #[serde(default, deserialize_with = "numeric_date::iat")]
    pub iat: u64,
    /// The token's id, what `wharf-relay token revoke` names.
    pub jti: String,
}

/// `exp` and `iat` are NumericDates: JSON numbers, never strings (RFC 7519 §2).
mod numeric_date {
    use serde::{de::Error, Deserialize, Deserializer};

    fn seconds<'de, D: Deserializer<'de>>(d: D, claim: &str) -> Result<u64, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or_else(|| D::Error::custom(format!("{claim} is not a time"))),
            _ => Err(D::Error::custom(format!(
                "{claim} must be a number of seconds since the epoch"
            ))),
        }
    }

    pub fn exp<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        seconds(d, "exp")
    }

    pub fn iat<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        seconds(d, "iat")
    }
}

/// Why a token does not prove anything (every one of these is a 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    #[error("token is signed by an unknown key")]
    UnknownKey,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is from an untrusted issuer")]
    Issuer,
    #[error("token is for another audience")]
    Audience,
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    #[error("token claim {0} is malformed")]
    BadClaim(String),
    #[error("token claims are malformed: {0}")]
    Claims(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::KeyMismatch,
            ErrorKind::MissingRequiredClaim(c) => Self::MissingClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => Self::BadClaim(c.clone()),
            // serde's message names the field and the type it wanted, never the token.
            ErrorKind::Json(e) => Self::Claims(e.to_string()),
            _ => Self::Malformed,
        }
    }
}

/// Problems with keys: the relay's own, or a trusted issuer's.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PKCS#8 Ed25519 private key (PEM)", path.display())]
    NotEd25519 { path: PathBuf },
    #[error(
        "{} is readable by other users (mode {mode:o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("trusted issuer {iss:?}: {reason}")]
    Issuer { iss: String, reason: String },
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The relay's signing key: it mints tokens with it and accepts what it minted.
pub struct RelayKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayKey").field("kid", &self.kid).finish()
    }
}

impl RelayKey {
    /// Reads the key at `path`, creating it (and its directory, mode 0700) with mode 0600 if
    /// it does not exist. Two processes creating it at once end up with the same key.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match std::fs::read(path) {
            Ok(pem) => Self::from_file(path, &pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn from_file(path: &Path, pem: &[u8]) -> Result<Self, KeyError> {
        check_private(path)?;
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotEd25519 {
            path: path.to_owned(),
        })?;
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_pem(text).map_err(|_| KeyError::NotEd25519 {
                path: path.to_owned(),
            })?;
        Self::from_signing_key(&key).ok_or_else(|| KeyError::NotEd25519 {
            path: path.to_owned(),
        })
    }

    fn create(path: &Path) -> Result<Self, KeyError> {
        let create_err = |source| KeyError::Create {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        wharf_store::durable::create_private_dir_all(dir).map_err(create_err)?;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| create_err(std::io::Error::other(e.to_string())))?;
        // Written under a private name, then linked into place: the key appears whole or not
        // at all, and a concurrent creator's key wins over ours (link fails if it exists).
        let tmp = dir.join(format!(
            ".signing-key.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let write = || -> std::io::Result<()> {
            let mut file = private_file(&tmp)?;
            file.write_all(pem.as_bytes())?;
            file.sync_all()
        };
        // Linked durably: a token signed with this key must not outlive the key at a power cut.
        let linked = write().and_then(|()| wharf_store::durable::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the relay's signing key");
                Self::from_signing_key(&key).ok_or_else(|| KeyError::NotEd25519 {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
            Err(e) => Err(create_err(e)),
        }
    }

    fn from_signing_key(key: &ed25519_dalek::SigningKey) -> Option<Self> {
        let der = key.to_pkcs8_der().ok()?;
        let public = key.verifying_key().to_bytes();
        let kid = hex::encode(&Sha256::digest(public)[..8]);
        Some(Self {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            kid,
        })
    }

    /// The `kid` its tokens carry: the first 8 bytes of the SHA-256 of the public key, in hex.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` (EdDSA, with this key's `kid`).
    pub fn mint(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// One key tokens may be signed with.
struct TrustedKey {
    iss: String,
    /// `None`: matches tokens with any `kid` or none.
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the relay's key and the trusted issuers.
pub struct Verifier {
    keys: Vec<TrustedKey>,
    audience: String,
    leeway: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| (&k.iss, &k.kid, k.alg)).collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    pub fn new(own: &RelayKey, config: &AuthConfig) -> Result<Self, KeyError> {
        let mut keys = vec![TrustedKey {
            iss: config.issuer.clone(),
            kid: Some(own.kid.clone()),
            alg: Algorithm::EdDSA,
            key: own.decoding.clone(),
        }];
        for issuer in &config.trusted_issuers {
            let bad = |reason: String| KeyError::Issuer {
                iss: issuer.iss.clone(),
                reason,
            };
            let pem = match (&issuer.public_key, &issuer.public_key_file) {
                (Some(pem), None) => pem.clone().into_bytes(),
                (None, Some(path)) => std::fs::read(path)
                    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?,
                _ => {
                    return Err(bad(
                        "give exactly one of public_key and public_key_file".into()
                    ))
                }
            };
            let (alg, key) = match issuer.alg {
                IssuerAlgorithm::EdDSA => {
                    let key = DecodingKey::from_ed_pem(&pem)
                        .map_err(|e| bad(format!("not an Ed25519 public key (PEM): {e}")))?;
                    // jsonwebtoken slices the first 32 bytes: make sure there are 32.
                    if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                        return Err(bad("not an Ed25519 public key (PEM)".into()));
                    }
                    (Algorithm::EdDSA, key)
                }
                IssuerAlgorithm::ES256 => {
                    let key = DecodingKey::from_ec_pem(&pem)
                        .map_err(|e| bad(format!("not a P-256 public key (PEM): {e}")))?;
                    (Algorithm::ES256, key)
                }
            };
            keys.push(TrustedKey {
                iss: issuer.iss.clone(),
                kid: issuer.kid.clone(),
                alg,
                key,
            });
        }
        Ok(Self {
            keys,
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs(),
        })
    }

    /// Seconds of clock skew tolerated on `exp`.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// The claims of `token` if one of the trusted keys signed it, with that key's pinned
    /// algorithm and issuer, for this relay's audience, and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        // `alg: none` and unknown algorithms fail here: `Algorithm` has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| match alg_name(token) {
            Some(alg) if alg.parse::<Algorithm>().is_err() => TokenError::Algorithm(alg),
            _ => TokenError::Malformed,
        })?;
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| match (&k.kid, &header.kid) {
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::UnknownKey);
        }
        let mut last = TokenError::UnknownKey;
        for key in candidates {
            if key.alg != header.alg {
                last = TokenError::Algorithm(format!("{:?}", header.alg));
                continue;
            }
            let mut validation = Validation::new(key.alg);
            validation.set_issuer(&[&key.iss]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return well_formed(data.claims),
                // Another key (same issuer rotating, or another issuer) may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    last = TokenError::BadSignature;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }
}

/// Claims the JSON shape allows but a token must not carry: an empty tenant, subject or id.
fn well_formed(claims: Claims) -> Result<Claims, TokenError> {
    for (name, value) in [
        ("tenant", &claims.tenant),
        ("sub", &claims.sub),
        ("jti", &claims.jti),
    ] {
        if value.is_empty() {
            return Err(TokenError::BadClaim(name.into()));
        }
    }
    Ok(claims)
}

/// The `alg` a header names, for the error message only.
fn alg_name(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let alg = value.get("alg")?.as_str()?;
    Some(alg.chars().take(16).collect())
}

/// The set of logs a token names, for quick checks.
pub fn log_set(logs: &Option<Vec<String>>) -> Option<HashSet<String>> {
    logs.as_ref().map(|l| l.iter().cloned().collect())
}
