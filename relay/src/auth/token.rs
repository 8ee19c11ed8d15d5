//! Tokens: the claims Wharf reads, the relay's own Ed25519 key, and verification against it and
//! the trusted issuers, from `wharf-token` (a crate of their own, so the check is fuzzed
//! without building the relay).

pub use wharf_token::{
    log_set, Action, Audience, Claims, KeyError, RelayKey, TokenError, Verifier, MAX_TOKEN_BYTES,
};
