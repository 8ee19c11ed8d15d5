//! The relay's token check on hostile input: `Verifier::verify`, what runs on every upgrade that
//! presents a token, before anything else about the connection is trusted.
//!
//! Input layout: the first byte picks a mode, the rest is its data.
//! - even: the data, as UTF-8 (lossy), is the token, verbatim. It never verifies (the fuzzer
//!   cannot forge an Ed25519 signature); decoding the header and payload must not panic.
//! - odd: the data is the *payload* (claims JSON, any bytes) of a token that is correctly signed
//!   by the relay's own key, with the header `{"alg":"EdDSA","kid":<kid>}`. This reaches the
//!   claims parsing and validation that only signed tokens get to.
//!
//! Properties: never panics; a token that verifies has the relay's issuer and audience, a
//! non-empty tenant and jti, and has not expired (beyond the leeway); verifying is deterministic.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::Signer;
use libfuzzer_sys::fuzz_target;
use wharf_token::{unix_now, AuthConfig, RelayKey, Verifier};

struct Fixture {
    verifier: Verifier,
    signing: ed25519_dalek::SigningKey,
    kid: String,
    config: AuthConfig,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("auth").join("signing-key.pem");
        let key = RelayKey::load_or_create(&path).expect("relay key");
        let pem = std::fs::read_to_string(&path).expect("read key");
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).expect("parse key");
        let config = AuthConfig::default();
        let verifier = Verifier::new(&key, &config).expect("verifier");
        Fixture {
            verifier,
            signing,
            kid: key.kid().to_owned(),
            config,
            _dir: dir,
        }
    })
}

fn signed(f: &Fixture, payload: &[u8]) -> String {
    let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, f.kid);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = f.signing.sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        signed(f, rest)
    };
    let first = f.verifier.verify(&token);
    if let Ok(claims) = &first {
        assert!(mode % 2 == 1, "an unsigned input verified: {token}");
        assert_eq!(claims.iss, f.config.issuer);
        assert!(
            !claims.tenant.is_empty(),
            "empty tenant accepted: {claims:?}"
        );
        assert!(!claims.jti.is_empty(), "empty jti accepted: {claims:?}");
        assert!(
            claims.exp + f.verifier.leeway() >= unix_now(),
            "expired token accepted: {claims:?}"
        );
    }
    let again = f.verifier.verify(&token);
    assert_eq!(
        first
            .as_ref()
            .map(|c| format!("{c:?}"))
            .map_err(|e| e.to_string()),
        again
            .as_ref()
            .map(|c| format!("{c:?}"))
            .map_err(|e| e.to_string()),
        "verify is not deterministic"
    );
});
