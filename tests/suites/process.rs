//! The relay as a real process: crash durability under SIGKILL, a stalled subscriber against
//! a memory bound, and SIGTERM.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::StreamExt;
use wharf_protocol::{ClientMsg, RelayMsg};
use wharf_tests::{
    assert_dense, entries, stored_count, write_until_failure, AckedIds, ChildRelay, Client,
};

const PK: &str = "crash-log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_entry_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = ChildRelay::start(dir.path(), &[]).await.expect("start");
    // entry id → acked sequence
    let acked: AckedIds = Default::default();
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let url = relay.url("acme");
        let acked = acked.clone();
        writers.push(tokio::spawn(write_until_failure(
            url,
            PK,
            w * 1_000_000,
            acked,
        )));
    }
    // Kill once enough is acked, while writes are still flowing.
    loop {
        if acked.lock().expect("lock").len() >= 3_000 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    relay.child.start_kill().expect("SIGKILL");
    relay.child.wait().await.expect("wait");
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();

    let relay = ChildRelay::start(dir.path(), &[]).await.expect("restart");
    let mut r = Client::connect(&relay.url("acme")).await.expect("connect");
    r.subscribe(PK, 0).await.expect("subscribe");
    let count = stored_count(dir.path(), "acme", PK);
    let stored = r.collect(PK, count).await.expect("the whole log");
    assert_dense(&stored, 0);
    let by_id: HashMap<&Bytes, u64> = stored.iter().map(|e| (&e.entry_id, e.sequence)).collect();
    assert_eq!(by_id.len(), stored.len(), "no entry stored twice");
    for (id, seq) in &acked {
        assert_eq!(by_id.get(id), Some(seq), "acked entry lost or moved");
    }
    eprintln!(
        "acked before SIGKILL: {}, stored after restart: {}",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_blocks_nobody_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = ChildRelay::start(dir.path(), &[]).await.expect("start");
    let url = relay.url("acme");
    // The stalled one subscribes, then stops reading.
    let mut stalled = Client::connect(&url).await.expect("connect");
    stalled.subscribe(PK, 0).await.expect("subscribe");
    stalled.ping_pong().await.expect("pong");
    let mut follower = Client::connect(&url).await.expect("connect");
    follower.subscribe(PK, 0).await.expect("subscribe");
    follower.ping_pong().await.expect("pong");
    let mut writer = Client::connect(&url).await.expect("connect");
    let rss_before = relay.rss_kib().expect("rss");

    const BATCHES: u32 = 120;
    const PER_BATCH: usize = 1_000;
    let mut peak = rss_before;
    let mut received = 0;
    for b in 0..BATCHES {
        writer
            .write_acked(PK, entries(b, PER_BATCH, 1_000))
            .await
            .expect("ack");
        // The follower keeps up while the stalled one holds 120 MB of unread entries.
        received += follower
            .collect(PK, PER_BATCH)
            .await
            .expect("follower")
            .len();
        peak = peak.max(relay.rss_kib().expect("rss"));
    }
    assert_eq!(received, BATCHES as usize * PER_BATCH);
    let growth_mib = (peak - rss_before) / 1024;
    eprintln!(
        "relay RSS before {} MiB, peak {} MiB",
        rss_before / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < 64,
        "relay memory grew by {growth_mib} MiB for one stalled reader of 120 MB"
    );

    // Once it reads again, it gets everything, in order, exactly once.
    let total = BATCHES as usize * PER_BATCH;
    let mut got = Vec::with_capacity(total);
    while got.len() < total {
        if let RelayMsg::Changes { entries, .. } = stalled.recv().await.expect("recv") {
            got.extend(entries);
        }
    }
    assert_dense(&got, 0);
    assert_eq!(got.len(), total);
}

#[tokio::test]
async fn sighup_is_harmless_and_sigterm_closes_with_1001_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = ChildRelay::start(dir.path(), &[]).await.expect("start");
    let mut c = Client::connect(&relay.url("acme")).await.expect("connect");
    c.write_acked(PK, entries(1, 10, 10)).await.expect("ack");
    let pid = relay.child.id().expect("pid");
    // SIGHUP (a service manager's reload) reloads TLS when there is some; here it is ignored.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    c.ping_pong().await.expect("still serving after SIGHUP");
    c.write_acked(PK, entries(2, 1, 10)).await.expect("ack");
    c.send(&ClientMsg::Ping { id: 1u32.into() })
        .await
        .expect("ping");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut close = None;
    while let Some(frame) = c.ws.next().await {
        if let Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) = frame {
            close = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(1001));
    let exit = relay.child.wait().await.expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
}

/// Runs a binary to completion with a bound; (exit code, stdout, stderr).
async fn run(
    bin: std::path::PathBuf,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .env_remove("WHARF_TOKEN")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("finished in time")
        .expect("ran");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wharf-relay serve` on `data` with more flags, run to its end: (exit code, stdout, stderr).
async fn serve_with(data: &std::path::Path, flags: &[&str]) -> (i32, String, String) {
    let data = data.to_str().expect("utf-8");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data", data];
    args.extend(flags);
    run(wharf_tests::relay_binary(), &args, &[]).await
}

/// The `jti` claim of a JWT (read without checking it: the relay does that).
fn jti(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    let claims: serde_json::Value = serde_json::from_slice(&json).expect("json");
    claims["jti"].as_str().expect("jti").to_owned()
}

/// The token CLI against a running relay: issue, use it from the `wharf` CLI (WHARF_TOKEN) and
/// a socket, revoke it (the open socket is closed, the CLI is refused at once), list-revoked;
/// and nothing the relay logs, even at debug level, quotes a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_and_revoked_while_the_relay_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (relay, log) =
        ChildRelay::start_capturing(&data, &[("WHARF_AUTH", "token"), ("WHARF_LOG", "debug")])
            .await
            .expect("start");
    let data_arg = data.to_str().expect("utf-8 path");
    let issue = |tenant: &'static str, actions: &'static str| {
        let data_arg = data_arg.to_owned();
        async move {
            let (code, out, err) = run(
                wharf_tests::relay_binary(),
                &[
                    "token",
                    "issue",
                    "--data",
                    &data_arg,
                    "--tenant",
                    tenant,
                    "--actions",
                    actions,
                    "--ttl",
                    "10m",
                ],
                &[],
            )
            .await;
            assert_eq!(code, 0, "token issue: {err}");
            assert_eq!(out.lines().count(), 1, "the token alone on stdout: {out:?}");
            out.trim().to_owned()
        }
    };
    let token = issue("acme", "read,write").await;
    let other = issue("other", "read,write").await;

    let id = dir.path().join("agent.id");
    let id_arg = id.to_str().expect("utf-8");
    let (code, _, err) = run(wharf_tests::wharf_binary(), &["keygen", "-o", id_arg], &[]).await;
    assert_eq!(code, 0, "keygen: {err}");
    let relay_url = format!("ws://{}", relay.addr);
    let push = |journal: &'static str, token: Option<String>| {
        let (relay_url, id_arg, dir) =
            (relay_url.clone(), id_arg.to_owned(), dir.path().to_owned());
        async move {
            let journal = dir.join(journal);
            let args = [
                "push",
                "-i",
                &id_arg,
                "--journal",
                journal.to_str().expect("utf-8"),
                "--relay",
                &relay_url,
                "--tenant",
                "acme",
                "--event",
                "Noted",
                "--key",
                "k",
                "--payload",
                "{}",
                "--timeout",
                "50s",
            ];
            let env: Vec<(&str, &str)> =
                token.iter().map(|t| ("WHARF_TOKEN", t.as_str())).collect();
            run(wharf_tests::wharf_binary(), &args, &env).await
        }
    };
    let (code, _, err) = push("a.db", Some(token.clone())).await;
    assert_eq!(code, 0, "push with WHARF_TOKEN: {err}");
    // Refusals end the command with the relay's reason, not after its timeout.
    let (code, _, err) = push("b.db", None).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("HTTP 401") && err.contains("a token is required"),
        "{err}"
    );
    assert!(err.contains("safe in"), "says where the entries are: {err}");
    let (code, _, err) = push("c.db", Some(other.clone())).await;
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 403"), "{err}");

    // Revoke the token a live connection holds: the relay closes it, and it no longer admits.
    let mut live = Client::connect(&format!("{}?token={token}", relay.url("acme")))
        .await
        .expect("connect");
    live.subscribe("some-log", 0).await.expect("subscribe");
    let (code, out, err) = run(
        wharf_tests::relay_binary(),
        &["token", "revoke", "--data", data_arg, &jti(&token)],
        &[],
    )
    .await;
    assert_eq!(code, 0, "revoke: {out}{err}");
    let closed = live.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("revoked"), "{closed:?}");
    let (code, _, err) = push("d.db", Some(token.clone())).await;
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 401") && err.contains("revoked"), "{err}");
    let (code, out, err) = run(
        wharf_tests::relay_binary(),
        &["token", "list-revoked", "--data", data_arg],
        &[],
    )
    .await;
    assert_eq!(code, 0, "list-revoked: {err}");
    assert!(out.contains(&jti(&token)), "{out}");

    drop(relay);
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        log.contains("connection refused"),
        "refusals are logged:\n{log}"
    );
    for t in [&token, &other] {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(
            !log.contains(signature),
            "a token reached the relay's log:\n{log}"
        );
    }
    assert!(
        !log.contains("token=ey"),
        "a query string reached the relay's log:\n{log}"
    );
}

/// `wharf-relay serve --tls-cert --tls-key`: it announces https/wss, serves the pair, and on
/// SIGHUP presents the renewed files (file polling is set to an hour, so only the signal can
/// have done it). A half pair or a broken pair is refused before the relay announces anything.
#[tokio::test]
async fn the_binary_serves_tls_and_reloads_it_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = wharf_tests::TestCa::new(dir.path());
    let first = ca.leaf(dir.path(), "relay");
    let (cert, key) = (
        first.cert_path.to_str().expect("utf-8"),
        first.key_path.to_str().expect("utf-8"),
    );
    let data = dir.path().join("data");
    let relay = ChildRelay::start_with_args(
        &data,
        &["--tls-cert", cert, "--tls-key", key],
        &[("WHARF_TLS__RELOAD_POLL", "1h")],
    )
    .await
    .expect("start");
    assert_eq!(
        ca.served_certificate(relay.addr).await.expect("cert"),
        first.der
    );
    let response = wharf_tests::http_get(
        ca.connect(relay.addr).await.expect("tls"),
        "localhost",
        "/healthz",
    )
    .await
    .expect("GET");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let renewed = ca.leaf(dir.path(), "relay");
    let pid = relay.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    wharf_tests::eventually("SIGHUP reloads the certificate", || async {
        ca.served_certificate(relay.addr).await.ok().as_deref() == Some(&renewed.der[..])
    })
    .await;

    let (code, _, err) = serve_with(&data, &["--tls-cert", cert]).await;
    assert_eq!(
        code, 2,
        "a certificate without a key is a usage error: {err}"
    );
    assert!(err.contains("--tls-key"), "{err}");
    let other = ca.leaf(dir.path(), "other");
    let other_key = other.key_path.to_str().expect("utf-8");
    let (code, out, err) = serve_with(&data, &["--tls-cert", cert, "--tls-key", other_key]).await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "nothing announced: {out}");
    assert!(err.contains("does not belong"), "{err}");
}
