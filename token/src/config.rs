//! The `[auth]` section of the relay's configuration: who may connect, and which issuers'
//! tokens are trusted.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether connections need a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every connection presents a valid token (loopback included).
    Token,
    /// Anyone who can reach the relay may read and append (refused on non-loopback
    /// addresses unless `insecure_no_auth` is set).
    None,
}

/// The `[auth]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `token` or `none`. Unset: `none` while listening on a loopback address, `token` on any
    /// other. Env: `WHARF_AUTH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
    /// Allow `mode = "none"` on a non-loopback address.
    pub insecure_no_auth: bool,
    /// `iss` of the tokens the relay mints, and the one they must carry.
    pub issuer: String,
    /// `aud` every token must carry.
    pub audience: String,
    /// Clock skew tolerated on `exp`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The relay's Ed25519 signing key (PKCS#8 PEM). Default: `{data}/auth/signing-key.pem`,
    /// created on first use with mode 0600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How often the revocation list is re-read (revocations reach open connections within this).
    #[serde(with = "humantime_serde")]
    pub revocation_poll: Duration,
    /// Other issuers whose tokens are accepted (an orchestrator minting per-task tokens).
    pub trusted_issuers: Vec<TrustedIssuer>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: None,
            insecure_no_auth: false,
            issuer: "wharf-relay".to_owned(),
            audience: "wharf".to_owned(),
            leeway: Duration::from_secs(30),
            key_file: None,
            revocation_poll: Duration::from_millis(250),
            trusted_issuers: Vec::new(),
        }
    }
}

/// The algorithms a trusted issuer may sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IssuerAlgorithm {
    EdDSA,
    ES256,
}

/// One `[[auth.trusted_issuers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The `iss` its tokens carry.
    pub iss: String,
    /// The `kid` its tokens carry in their header; several entries with one `iss` and distinct
    /// `kid`s let an issuer rotate keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub alg: IssuerAlgorithm,
    /// SPKI PEM public key, inline…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// …or in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}
