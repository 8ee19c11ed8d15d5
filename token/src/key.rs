//! The relay's own Ed25519 signing key: read from its file, or created there (owner-only,
//! durably), and the tokens it mints.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::claims::Claims;

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
    pub(crate) decoding: DecodingKey,
    pub(crate) kid: String,
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
        wharf_durable::create_private_dir_all(dir).map_err(create_err)?;
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
        let linked = write().and_then(|()| wharf_durable::hard_link(&tmp, path));
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
