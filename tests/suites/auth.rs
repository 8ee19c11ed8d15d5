//! Access control end to end: a real relay requiring tokens on 127.0.0.1:0, real WebSockets.
//! Every token rule, refused before the upgrade (401/403) or closed after it (1008).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use wharf_protocol::{ClientMsg, ErrorCode, RelayMsg, EXTENSION_SUBPROTOCOL};
use wharf_relay::auth::revocation::RevocationStore;
use wharf_relay::auth::token::{Action, Claims, RelayKey};
use wharf_relay::auth::unix_now;
use wharf_relay::config::{IssuerAlgorithm, TrustedIssuer};
use wharf_tests::{claims, entries, Client, TestRelay};

const PK: &str = "5f0c2b9e-7d4a-4c1e-9b3f-2a6d8e1c4f70";
const OTHER_PK: &str = "0d9e6c1a-3b2f-4e8d-a7c5-9f1b2e4d6a80";

const RW: &[Action] = &[Action::Read, Action::Write];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with arbitrary JSON claims, signed with the relay's own key and `kid`.
fn mint_json(relay: &TestRelay, claims: &serde_json::Value) -> String {
    let path = relay.config.key_path();
    let kid = RelayKey::load_or_create(&path)
        .expect("key")
        .kid()
        .to_owned();
    let pem = std::fs::read(&path).expect("pem");
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_pem(&pem).expect("key"),
    )
    .expect("encode")
}

async fn refused(relay: &TestRelay, tenant: &str, token: Option<&str>) -> (u16, String) {
    let url = match token {
        Some(t) => relay.url_with_token(tenant, t),
        None => relay.url(tenant),
    };
    Client::refused(&url, []).await.expect("an HTTP refusal")
}

#[tokio::test]
async fn every_bad_token_is_refused_before_the_upgrade() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let good = claims("acme", RW);

    let (status, body) = refused(&relay, "acme", None).await;
    assert_eq!(status, 401);
    assert!(body.contains("a token is required"), "{body}");

    assert_eq!(
        refused(&relay, "acme", Some("abc")).await,
        (401, "malformed token\n".into())
    );

    // Another key's signature over the same header and claims.
    let stranger_dir = tempfile::tempdir().expect("tempdir");
    let stranger = RelayKey::load_or_create(&stranger_dir.path().join("k.pem")).expect("key");
    let theirs = stranger.mint(&good).expect("mint");
    let ours = relay.mint(&good);
    let forged = format!(
        "{}.{}",
        ours.rsplit_once('.').expect("jwt").0,
        theirs.rsplit_once('.').expect("jwt").1
    );
    assert_eq!(
        refused(&relay, "acme", Some(&forged)).await,
        (401, "bad token signature\n".into())
    );
    // A key the relay does not know (its own kid).
    assert_eq!(
        refused(&relay, "acme", Some(&theirs)).await,
        (401, "token is signed by an unknown key\n".into())
    );

    let wrong_tenant = relay.mint(&claims("globex", RW));
    let (status, body) = refused(&relay, "acme", Some(&wrong_tenant)).await;
    assert_eq!(status, 403);
    assert!(body.contains("tenant \"globex\""), "{body}");

    let wrong_aud = relay.mint(&Claims {
        aud: wharf_relay::auth::token::Audience::One("elsewhere".into()),
        ..good.clone()
    });
    assert_eq!(
        refused(&relay, "acme", Some(&wrong_aud)).await,
        (401, "token is for another audience\n".into())
    );

    let wrong_iss = relay.mint(&Claims {
        iss: "someone-else".into(),
        ..good.clone()
    });
    assert_eq!(
        refused(&relay, "acme", Some(&wrong_iss)).await,
        (401, "token is from an untrusted issuer\n".into())
    );

    let expired = relay.mint(&Claims {
        exp: unix_now() - 10,
        ..good.clone()
    });
    assert_eq!(
        refused(&relay, "acme", Some(&expired)).await,
        (401, "token expired\n".into())
    );

    let no_actions = relay.mint(&Claims {
        actions: vec![],
        ..good.clone()
    });
    assert_eq!(refused(&relay, "acme", Some(&no_actions)).await.0, 403);

    // `exp` as a string is not a time.
    let mut value = serde_json::to_value(&good).expect("json");
    value["exp"] = json!((unix_now() + 3600).to_string());
    let string_exp = mint_json(&relay, &value);
    let (status, body) = refused(&relay, "acme", Some(&string_exp)).await;
    assert_eq!(status, 401);
    assert!(
        body.starts_with("token claims are malformed: exp must be a number of seconds"),
        "{body}"
    );

    // Required claims.
    for claim in ["exp", "iss", "aud", "sub"] {
        let mut value = serde_json::to_value(&good).expect("json");
        value.as_object_mut().expect("object").remove(claim);
        let token = mint_json(&relay, &value);
        let (status, body) = refused(&relay, "acme", Some(&token)).await;
        assert_eq!(status, 401, "{claim}");
        assert!(body.contains(claim), "{claim}: {body}");
    }

    // `alg: none`, unsigned.
    let payload = b64(&serde_json::to_vec(&good).expect("json"));
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(
        refused(&relay, "acme", Some(&none)).await,
        (401, "token algorithm none is not accepted\n".into())
    );

    // Algorithm confusion: HS256 keyed with something public, under the relay's kid.
    let kid = RelayKey::load_or_create(&relay.config.key_path())
        .expect("key")
        .kid()
        .to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid);
    let hs = jsonwebtoken::encode(
        &header,
        &good,
        &EncodingKey::from_secret(b"public").expect("key"),
    )
    .expect("encode");
    let (status, body) = refused(&relay, "acme", Some(&hs)).await;
    assert_eq!(status, 401);
    assert!(body.contains("algorithm"), "{body}");

    let counters = relay.relay.metrics();
    assert_eq!(counters.refused_forbidden.get(), 2);
    assert!(counters.refused_unauthenticated.get() >= 12);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_token_rides_in_a_header_a_subprotocol_or_the_query() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let token = relay.mint(&claims("acme", RW));

    let mut c = Client::connect(&relay.url_with_token("acme", &token))
        .await
        .expect("query");
    c.write_acked(PK, entries(1, 2, 8)).await.expect("write");

    let bearer = format!("Bearer {token}");
    let mut c = Client::connect_with_headers(&relay.url("acme"), [("authorization", &*bearer)])
        .await
        .expect("bearer");
    c.subscribe(PK, 0).await.expect("subscribe");
    assert_eq!(c.collect(PK, 2).await.expect("collect").len(), 2);

    // How a browser sends it: a subprotocol beside wharf.v1, which is what the relay selects.
    let offered = format!("{EXTENSION_SUBPROTOCOL}, wharf.token.{token}");
    let c =
        Client::connect_with_headers(&relay.url("acme"), [("sec-websocket-protocol", &*offered)])
            .await
            .expect("subprotocol");
    assert_eq!(c.protocol.as_deref(), Some(EXTENSION_SUBPROTOCOL));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_read_only_token_cannot_write() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let writer = relay.mint(&claims("acme", &[Action::Write]));
    let mut w = Client::connect(&relay.url_with_token("acme", &writer))
        .await
        .expect("writer");
    w.write_acked(PK, entries(1, 3, 8)).await.expect("write");
    // Write-only: reading is refused.
    w.subscribe(PK, 0).await.expect("send");
    let closed = w.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008));
    assert!(closed.reason.contains("does not allow read"), "{closed:?}");

    let reader = relay.mint(&claims("acme", &[Action::Read]));
    let offered = format!("{EXTENSION_SUBPROTOCOL}, wharf.token.{reader}");
    let mut r =
        Client::connect_with_headers(&relay.url("acme"), [("sec-websocket-protocol", &*offered)])
            .await
            .expect("reader");
    r.subscribe(PK, 0).await.expect("subscribe");
    // Effect v3 clients send an empty write on connect: harmless, allowed.
    r.send(&ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: PK.into(),
        id: 0u32.into(),
        iv: vec![0; 12].into(),
        entries: vec![],
    }))
    .await
    .expect("empty write");
    r.write(PK, entries(2, 1, 8)).await.expect("send");
    let mut error = None;
    let closed = loop {
        match r.recv().await {
            Ok(RelayMsg::Error { code, message }) => error = Some((code, message)),
            Ok(_) => continue,
            Err(_) => break r.closed().await.ok(),
        }
    };
    let (code, message) = error.expect("an Error before the close on wharf.v1");
    assert_eq!(code, ErrorCode::Forbidden);
    assert_eq!(message, "token does not allow write");
    if let Some(closed) = closed {
        assert_eq!(closed.code, Some(1008));
    }

    // admin implies read and write.
    let admin = relay.mint(&claims("acme", &[Action::Admin]));
    let mut a = Client::connect(&relay.url_with_token("acme", &admin))
        .await
        .expect("admin");
    a.write_acked(PK, entries(3, 1, 8)).await.expect("write");
    a.subscribe(PK, 0).await.expect("subscribe");
    assert_eq!(a.collect(PK, 4).await.expect("collect").len(), 4);
    assert_eq!(relay.relay.metrics().closed_by_policy.get(), 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_token_reaches_only_the_logs_it_names() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let token = relay.mint(&Claims {
        logs: Some(vec![PK.into()]),
        ..claims("acme", RW)
    });
    let mut c = Client::connect(&relay.url_with_token("acme", &token))
        .await
        .expect("connect");
    c.write_acked(PK, entries(1, 1, 8)).await.expect("in scope");
    c.write(OTHER_PK, entries(1, 1, 8)).await.expect("send");
    let closed = c.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008));
    assert!(closed.reason.contains("does not cover log"), "{closed:?}");

    let mut c = Client::connect(&relay.url_with_token("acme", &token))
        .await
        .expect("connect");
    c.subscribe(OTHER_PK, 0).await.expect("send");
    assert_eq!(c.closed().await.expect("closed").code, Some(1008));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let token = relay.mint(&Claims {
        exp: unix_now() + 2,
        ..claims("acme", RW)
    });
    let mut c = Client::connect(&relay.url_with_token("acme", &token))
        .await
        .expect("connect");
    c.write_acked(PK, entries(1, 1, 8)).await.expect("write");
    let closed = c.closed().await.expect("closed at expiry");
    assert_eq!(closed.code, Some(1008));
    assert_eq!(closed.reason, "token expired");
    relay.shutdown().await;
}

#[tokio::test]
async fn revocation_reaches_open_connections() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let doomed = claims("acme", RW);
    let kept = claims("acme", RW);
    let mut a = Client::connect(&relay.url_with_token("acme", &relay.mint(&doomed)))
        .await
        .expect("a");
    let mut b = Client::connect(&relay.url_with_token("acme", &relay.mint(&kept)))
        .await
        .expect("b");
    // The same store `wharf-relay token revoke` writes, from another connection.
    let store = RevocationStore::open_file(&relay.config.revocations_path())
        .await
        .expect("store");
    assert!(store.revoke(&doomed.jti, unix_now()).await.expect("revoke"));
    let closed = a.closed().await.expect("closed after revocation");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (Some(1008), "token revoked")
    );
    b.write_acked(PK, entries(1, 1, 8))
        .await
        .expect("the other token still works");
    assert_eq!(
        refused(&relay, "acme", Some(&relay.mint(&doomed))).await,
        (401, "token revoked\n".into())
    );

    // Tenant-wide: every token issued before now.
    store
        .revoke_tenant("acme", unix_now() + 1)
        .await
        .expect("revoke tenant");
    let closed = b.closed().await.expect("closed after tenant revocation");
    assert_eq!(closed.reason, "token revoked");
    store.close().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_trusted_issuer_mints_without_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let public = dir.path().join("orchestrator.pub.pem");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let relay = TestRelay::start_with_tokens(|c| {
        c.auth.trusted_issuers = vec![TrustedIssuer {
            iss: "orchestrator".into(),
            kid: Some("2026-12".into()),
            alg: IssuerAlgorithm::ES256,
            public_key: None,
            public_key_file: Some(public.clone()),
        }];
    })
    .await;
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("key");
    let mint = |kid: &str, iss: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let c = Claims {
            iss: iss.into(),
            ..claims("acme", RW)
        };
        jsonwebtoken::encode(&header, &c, &signing).expect("encode")
    };
    let mut c = Client::connect(&relay.url_with_token("acme", &mint("2026-12", "orchestrator")))
        .await
        .expect("trusted issuer");
    c.write_acked(PK, entries(1, 1, 8)).await.expect("write");
    assert_eq!(
        refused(&relay, "acme", Some(&mint("2027-01", "orchestrator"))).await,
        (401, "token is signed by an unknown key\n".into())
    );
    assert_eq!(
        refused(&relay, "acme", Some(&mint("2026-12", "impostor"))).await,
        (401, "token is from an untrusted issuer\n".into())
    );
    relay.shutdown().await;
}
