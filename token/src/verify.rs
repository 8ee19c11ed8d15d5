//! Verification: a token's signature against the relay's key and the trusted issuers, each
//! with its algorithm pinned, then its claims.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::claims::{Claims, TokenError, MAX_TOKEN_BYTES};
use crate::config::{AuthConfig, IssuerAlgorithm};
use crate::key::{KeyError, RelayKey};

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
