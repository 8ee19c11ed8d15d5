//! `wharf-token`: access tokens as the relay reads and mints them, with no I/O beyond the
//! relay's own key file (so the token check is fuzzed without building the relay).
//!
//! - [`claims`]: the claims, what they allow ([`Action`]), and why a token proves nothing
//!   ([`TokenError`]).
//! - [`key`]: the relay's Ed25519 key ([`RelayKey`]): read, or created owner-only and durably.
//! - [`verify`]: [`Verifier`], a token checked against the relay's key and the trusted issuers,
//!   each with its algorithm pinned. Signing and checking are `jsonwebtoken`'s (RustCrypto
//!   backend); this crate only chooses keys, pins algorithms and names what went wrong.
//! - [`config`]: the `[auth]` section ([`AuthConfig`]).

pub mod claims;
pub mod config;
pub mod key;
pub mod verify;

pub use claims::{log_set, unix_now, Action, Audience, Claims, TokenError, MAX_TOKEN_BYTES};
pub use config::{AuthConfig, AuthMode, IssuerAlgorithm, TrustedIssuer};
pub use key::{KeyError, RelayKey};
pub use verify::Verifier;
