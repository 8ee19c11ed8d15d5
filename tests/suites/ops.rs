//! Operations: `/metrics` against what the relay did, the Grafana dashboard against `/metrics`,
//! health and readiness, a separate metrics listener, the viewer's compression, validators
//! and favicon, JSON logs, and `wharf-relay probe`.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use wharf_relay::{Config, Relay};
use wharf_tests::{entries, eventually, get, relay_binary, ChildRelay, Client, TestRelay};

const PK: &str = "ops-log";

/// Metric name → value, for samples without labels or with exactly `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every metric family `/metrics` declares (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn metrics_count_what_the_relay_did() {
    let relay = TestRelay::start().await;
    let mut reader = relay.client("acme").await;
    reader.subscribe(PK, 0).await.expect("subscribe");
    reader.ping_pong().await.expect("subscribed");
    let mut writer = relay.client("acme").await;
    for batch in 0..5u32 {
        writer
            .write_acked(PK, entries(batch, 4, 100))
            .await
            .expect("acked");
    }
    // A resent write stores nothing new.
    writer
        .write_acked(PK, entries(0, 4, 100))
        .await
        .expect("acked");
    let got = reader.collect(PK, 20).await.expect("live entries");
    assert_eq!(got.len(), 20);
    // A bad tenant id is a 400, not a refusal; a Text frame closes its connection (1003).
    let mut rude = relay.client("acme").await;
    rude.send_raw_text("hello").await.expect("send");
    let _ = rude.closed().await;

    let answer = get(relay.addr, "/metrics", &[])
        .await
        .expect("GET /metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = answer.text();
    let value = |name: &str| sample(&text, name, "").unwrap_or_else(|| panic!("{name} in {text}"));
    assert_eq!(value("wharf_writes_total"), 6.0);
    assert_eq!(value("wharf_entries_written_total"), 20.0);
    assert_eq!(value("wharf_written_bytes_total"), 2000.0);
    assert_eq!(value("wharf_entries_sent_total"), 20.0);
    assert_eq!(value("wharf_ack_latency_seconds_count"), 6.0);
    assert!(value("wharf_commit_duration_seconds_count") >= 1.0);
    assert!(value("wharf_commit_batch_writes_sum") == 6.0);
    assert_eq!(value("wharf_connections_total"), 3.0);
    assert_eq!(value("wharf_tenants_active"), 1.0);
    assert_eq!(value("wharf_tenants_hibernated"), 0.0);
    assert!(value("wharf_received_bytes_total") > 2000.0);
    assert!(value("wharf_sent_bytes_total") > 2000.0);
    assert_eq!(
        sample(
            &text,
            "wharf_connections_closed_total",
            "reason=\"protocol\""
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "wharf_durability_info", "mode=\"full\""),
        Some(1.0)
    );
    assert!(
        !text.contains("acme"),
        "no metric carries a tenant (cardinality)"
    );
    // Closed connections leave the gauge.
    drop(writer);
    drop(reader);
    eventually("connections close", || async {
        let text = get(relay.addr, "/metrics", &[]).await.expect("GET").text();
        sample(&text, "wharf_connections_open", "") == Some(0.0)
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_hibernated_tenant_is_counted_as_such() {
    let relay = TestRelay::start_with(|c| c.tenant_idle_timeout = std::time::Duration::ZERO).await;
    let mut c = relay.client("sleepy").await;
    c.write_acked(PK, entries(1, 1, 10)).await.expect("acked");
    drop(c);
    eventually("the tenant hibernates", || async {
        let text = get(relay.addr, "/metrics", &[]).await.expect("GET").text();
        sample(&text, "wharf_tenants_hibernated", "") == Some(1.0)
            && sample(&text, "wharf_tenants_active", "") == Some(0.0)
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_relay_exports() {
    let relay = TestRelay::start().await;
    let exported = families(&get(relay.addr, "/metrics", &[]).await.expect("GET").text());
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/wharf-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("dashboard")).expect("JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("wharf_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| exported.contains(*f))
                    .map_or(name.clone(), str::to_owned);
                queried.insert(family);
            }
        }
    }
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not export"
    );
    assert!(queried.len() >= 15, "the dashboard covers the metrics");
    relay.shutdown().await;
}

#[tokio::test]
async fn healthz_and_readyz_follow_the_data_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let relay = TestRelay::start_config(Config {
        data: data.clone(),
        ..Config::default()
    })
    .await;
    let status =
        |path: &'static str| async move { get(relay.addr, path, &[]).await.expect("GET").status };
    assert_eq!(status("/healthz").await, 200);
    assert_eq!(status("/readyz").await, 200);
    // A data directory that takes no writes (here: a file where it should be) is not ready.
    std::fs::rename(&data, root.path().join("moved")).expect("move");
    std::fs::write(&data, b"not a directory").expect("file");
    let answer = get(relay.addr, "/readyz", &[]).await.expect("GET");
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.text().contains("data directory"),
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert_eq!(status("/healthz").await, 200, "alive all the same");
    std::fs::remove_file(&data).expect("rm");
    std::fs::rename(root.path().join("moved"), &data).expect("move back");
    assert_eq!(status("/readyz").await, 200);
    relay.shutdown().await;
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Arc::new(Relay::new(Config {
        data: dir.path().to_path_buf(),
        ..Config::default()
    }));
    let main = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (addr, metrics_addr) = (
        main.local_addr().expect("addr"),
        metrics.local_addr().expect("addr"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .serve_with(main, Some(metrics), async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    assert_eq!(get(addr, "/metrics", &[]).await.expect("GET").status, 404);
    let answer = get(metrics_addr, "/metrics", &[]).await.expect("GET");
    assert_eq!(answer.status, 200);
    assert!(answer.text().contains("wharf_connections_total 0"));
    assert_eq!(
        get(metrics_addr, "/readyz", &[]).await.expect("GET").status,
        200
    );
    // The WebSocket side is where it was.
    let mut c = Client::connect(&format!("ws://{addr}/t/acme"))
        .await
        .expect("connect");
    assert!(c.ping_pong().await.expect("pong").is_empty());
    drop(c);
    let _ = stop.send(());
    served.await.expect("join").expect("serve");
}

#[tokio::test]
async fn viewer_files_are_compressed_validated_and_the_favicon_exists() {
    let relay = TestRelay::start().await;
    let wasm = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../viewer/pkg/wharf_wasm_bg.wasm"
    ))
    .expect("wasm");
    let path = "/viewer/pkg/wharf_wasm_bg.wasm";
    let plain = get(relay.addr, path, &[]).await.expect("GET");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, wasm);
    assert_eq!(plain.header("content-encoding"), None);
    let gzipped = get(relay.addr, path, &[("accept-encoding", "gzip")])
        .await
        .expect("GET");
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert!(
        gzipped.body.len() < wasm.len() / 2,
        "{} of {} bytes",
        gzipped.body.len(),
        wasm.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gzipped.body[..])
        .read_to_end(&mut unzipped)
        .expect("gunzip");
    assert_eq!(unzipped, wasm);
    let brotli = get(relay.addr, path, &[("accept-encoding", "br")])
        .await
        .expect("GET");
    assert_eq!(brotli.header("content-encoding"), Some("br"));
    assert!(brotli.body.len() < gzipped.body.len() + 1024);
    // A browser revalidating gets 304 while nothing changed.
    let etag = plain.header("etag").expect("an ETag").to_owned();
    assert_eq!(plain.header("cache-control"), Some("no-cache"));
    let again = get(relay.addr, path, &[("if-none-match", &etag)])
        .await
        .expect("GET");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let other = get(relay.addr, "/viewer/app.js", &[("if-none-match", &etag)])
        .await
        .expect("GET");
    assert_eq!(other.status, 200, "another file's tag does not match");
    // The icon browsers ask for on their own.
    let icon = get(relay.addr, "/favicon.ico", &[]).await.expect("GET");
    assert_eq!(icon.status, 200);
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    assert!(icon.text().starts_with("<svg"));
    let index = get(relay.addr, "/viewer/", &[]).await.expect("GET");
    assert!(index.text().contains("favicon.svg"));
    assert_eq!(
        get(relay.addr, "/viewer/favicon.svg", &[])
            .await
            .expect("GET")
            .status,
        200
    );
    assert_eq!(
        get(relay.addr, "/viewer/nope.js", &[])
            .await
            .expect("GET")
            .status,
        404
    );
    // Probes and the WebSocket route are not compressed.
    let health = get(relay.addr, "/healthz", &[("accept-encoding", "gzip")])
        .await
        .expect("GET");
    assert_eq!(health.header("content-encoding"), None);
    relay.shutdown().await;
}

#[tokio::test]
async fn json_logs_carry_the_connection_span() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, log) = ChildRelay::start_capturing(
        dir.path(),
        &[
            ("WHARF_LOG_FORMAT", "json"),
            ("WHARF_LOG", "wharf_relay=debug"),
        ],
    )
    .await
    .expect("start");
    let mut c = Client::connect(&relay.url("acme")).await.expect("connect");
    c.write_acked(PK, entries(1, 1, 10)).await.expect("acked");
    drop(c);
    eventually("the connection's end is logged", || async {
        log.lock().expect("lock").contains("disconnected")
    })
    .await;
    let text = log.lock().expect("lock").clone();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let connected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "connected")
        .expect("a 'connected' line");
    assert_eq!(connected["span"]["tenant"], "acme");
    assert_eq!(connected["span"]["name"], "conn");
    assert!(connected["timestamp"].is_string());
    assert_eq!(connected["level"], "DEBUG");
}

#[tokio::test]
async fn probe_exits_by_the_status_it_gets() {
    let relay = TestRelay::start().await;
    // tokio's Command: the relay runs on this test's runtime, which must not block.
    let probe = |args: Vec<String>| async move {
        tokio::process::Command::new(relay_binary())
            .arg("probe")
            .args(args)
            .output()
            .await
            .expect("run probe")
    };
    let url = |path: &str| vec![format!("http://{}{path}", relay.addr)];
    let ok = probe(url("/healthz")).await;
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("200"));
    let missing = probe(url("/nope")).await;
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let nobody = probe(vec![
        "--timeout".into(),
        "2s".into(),
        "http://127.0.0.1:1/healthz".into(),
    ])
    .await;
    assert_eq!(nobody.status.code(), Some(1));
    relay.shutdown().await;
}
