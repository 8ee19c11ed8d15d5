//! TLS served by the relay itself (rustls): `https://` and `wss://` from a PEM pair signed by a
//! private CA, a renewed certificate picked up without a restart, a broken renewal that leaves
//! the working certificate in place, configurations that cannot work refused at start, and
//! handshakes or request heads that never finish cut off. The SDK over `wss://` is in the
//! client suite; the binary's flags and SIGHUP in the process suite.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use wharf_relay::server::ServeError;
use wharf_relay::tls::TlsError;
use wharf_relay::{Config, Relay};
use wharf_tests::{
    closed_by_peer, eventually, http_get, replace_file, TestCa, TestRelay, PATIENCE,
};

#[tokio::test]
async fn https_is_served_from_a_pem_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let leaf = ca.leaf(dir.path(), "relay");
    let relay = TestRelay::start_with(|c| {
        c.tls.cert = Some(leaf.cert_path.clone());
        c.tls.key = Some(leaf.key_path.clone());
    })
    .await;
    let tls = ca.connect(relay.addr).await.expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN: the relay speaks HTTP/1.1 only"
    );
    let response = http_get(tls, "localhost", "/healthz").await.expect("GET");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
    assert_eq!(
        ca.served_certificate(relay.addr).await.expect("cert"),
        leaf.der
    );

    // Plain HTTP on the TLS port is not answered; the relay goes on serving.
    let mut plain = TcpStream::connect(relay.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    closed_by_peer(plain).await.expect("plain HTTP cut off");
    assert!(ca.connect(relay.addr).await.is_ok());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let first = ca.leaf(dir.path(), "relay");
    let relay = TestRelay::start_with(|c| {
        c.tls.cert = Some(first.cert_path.clone());
        c.tls.key = Some(first.key_path.clone());
        c.tls.reload_poll = Duration::from_millis(20);
    })
    .await;
    assert_eq!(
        ca.served_certificate(relay.addr).await.expect("cert"),
        first.der
    );

    // The files are replaced, as an ACME client renews them: new handshakes get the new one.
    let renewed = ca.leaf(dir.path(), "relay");
    assert_ne!(renewed.der, first.der);
    eventually("the renewed certificate is served", || async {
        ca.served_certificate(relay.addr).await.ok().as_deref() == Some(&renewed.der[..])
    })
    .await;
    let counters = relay.relay.metrics();
    assert!(counters.tls_reloads.get() >= 1);

    // A broken renewal is refused and the working certificate stays.
    replace_file(
        &renewed.cert_path,
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    eventually("the broken renewal is noticed", || async {
        counters.tls_reload_failures.get() >= 1
    })
    .await;
    assert_eq!(
        ca.served_certificate(relay.addr).await.expect("cert"),
        renewed.der,
        "the previous certificate keeps serving"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn stalled_handshakes_and_request_heads_are_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let leaf = ca.leaf(dir.path(), "relay");
    let tls = TestRelay::start_with(|c| {
        c.tls.cert = Some(leaf.cert_path.clone());
        c.tls.key = Some(leaf.key_path.clone());
        c.tls.handshake_timeout = Duration::from_millis(200);
    })
    .await;
    // A client that connects and never says hello.
    let silent = TcpStream::connect(tls.addr).await.expect("connect");
    closed_by_peer(silent)
        .await
        .expect("a silent TLS client is dropped");

    let plain = TestRelay::start_with(|c| c.header_read_timeout = Duration::from_millis(200)).await;
    // Slowloris: a request head that never ends.
    let mut slow = TcpStream::connect(plain.addr).await.expect("connect");
    slow.write_all(b"GET /t/acme HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    closed_by_peer(slow)
        .await
        .expect("an unfinished request head is dropped");
    // A connection that never sends anything is dropped too.
    let idle = TcpStream::connect(plain.addr).await.expect("connect");
    closed_by_peer(idle)
        .await
        .expect("an idle connection is dropped");
    // Both relays serve everyone else.
    let healthy = TcpStream::connect(plain.addr).await.expect("connect");
    let response = http_get(healthy, "x", "/healthz").await.expect("GET");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(ca.connect(tls.addr).await.is_ok());
    tls.shutdown().await;
    plain.shutdown().await;
}

/// Serves `config` until it fails; it must fail at once.
async fn serve_error(config: Config) -> ServeError {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let result = tokio::time::timeout(
        PATIENCE,
        Relay::new(config).serve(listener, std::future::pending()),
    )
    .await
    .expect("the relay refuses to start at once");
    result.expect_err("the relay must not start")
}

#[tokio::test]
async fn tls_settings_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let a = ca.leaf(dir.path(), "a");
    let b = ca.leaf(dir.path(), "b");
    let config = |cert: Option<&std::path::Path>, key: Option<&std::path::Path>| {
        let mut c = Config {
            data: dir.path().join("data"),
            ..Config::default()
        };
        c.tls.cert = cert.map(Into::into);
        c.tls.key = key.map(Into::into);
        c
    };

    let e = serve_error(config(Some(&a.cert_path), Some(&b.key_path))).await;
    assert!(
        matches!(e, ServeError::Tls(TlsError::Mismatch { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("does not belong"), "{e}");

    let e = serve_error(config(Some(&a.cert_path), None)).await;
    assert!(matches!(e, ServeError::Tls(TlsError::Half)), "{e}");

    let missing = dir.path().join("missing.pem");
    let e = serve_error(config(Some(&missing), Some(&a.key_path))).await;
    assert!(e.to_string().contains("missing.pem"), "{e}");

    // A key file given as the certificate holds no certificate.
    let e = serve_error(config(Some(&a.key_path), Some(&a.key_path))).await;
    assert!(matches!(e, ServeError::Tls(TlsError::NoCert { .. })), "{e}");
}
