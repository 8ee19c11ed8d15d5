//! Logs that do not grow forever: snapshots through the relay and the SDK, every retention
//! policy, readers across a truncation, quotas, and webhooks (signing, retry, restart), against
//! a real relay on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use wharf_client::{Client as Sdk, Identity, NewEvent, Status};
use wharf_protocol::{ClientMsg, ErrorCode, JsNumber, RelayMsg, WriteSnapshot};
use wharf_relay::policy::{Retention, TenantSettings, Webhook};
use wharf_relay::Config;
use wharf_tests::{
    entries, eventually, history_starts, http_request, read_to_caught_up, sequences, stored_count,
    Client, TestRelay, PATIENCE,
};

const V1: Option<&str> = Some("wharf.v1");

async fn v1(relay: &TestRelay, tenant: &str) -> Client {
    Client::connect_with_protocol(&relay.url(tenant), V1)
        .await
        .expect("connect")
}

async fn admin(relay: &TestRelay, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).expect("json")
    };
    let answer = http_request(
        relay.addr,
        method,
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("admin request");
    let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, value)
}

async fn retain(relay: &TestRelay, tenant: &str) -> Value {
    let (status, report) = admin(
        relay,
        "POST",
        &format!("/admin/v1/tenants/{tenant}/retention"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report
}

async fn set_retention(relay: &TestRelay, tenant: &str, retention: Value) {
    let (status, body) = admin(
        relay,
        "PUT",
        &format!("/admin/v1/tenants/{tenant}/settings"),
        json!({ "retention": retention }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn write_snapshot(c: &mut Client, log: &str, sequence: u64, data: &[u8]) -> RelayMsg {
    c.send(&ClientMsg::WriteSnapshot(WriteSnapshot {
        public_key: log.into(),
        id: JsNumber::from(77u32),
        sequence,
        iv: Bytes::from_static(&[1; 24]),
        data: Bytes::copy_from_slice(data),
    }))
    .await
    .expect("send");
    loop {
        match c.recv().await {
            Ok(m @ (RelayMsg::SnapshotAck { .. } | RelayMsg::Error { .. })) => return m,
            Ok(_) => continue,
            Err(e) => panic!("no answer to the snapshot: {e}"),
        }
    }
}

#[tokio::test]
async fn a_snapshot_is_stored_refused_beyond_the_log_and_served_before_the_entries_after_it() {
    let relay = TestRelay::start().await;
    let mut c = v1(&relay, "t").await;
    c.write_acked("log", entries(1, 10, 32))
        .await
        .expect("write");

    let refused = write_snapshot(&mut c, "log", 10, b"too far").await;
    assert!(
        matches!(&refused, RelayMsg::Error { code: ErrorCode::SnapshotRefused, message } if message.contains("reached")),
        "{refused:?}"
    );
    assert_eq!(c.closed().await.expect("closed").code, Some(1008));

    let mut c = v1(&relay, "t").await;
    assert_eq!(
        write_snapshot(&mut c, "log", 5, b"state at 5").await,
        RelayMsg::SnapshotAck {
            id: JsNumber::from(77u32),
            sequence: 5
        }
    );
    let msgs = read_to_caught_up(&mut c, "log", 0, true).await;
    assert!(matches!(
        &msgs[0],
        RelayMsg::Head {
            next_sequence: 10,
            ..
        }
    ));
    assert!(
        matches!(&msgs[1], RelayMsg::Snapshot { sequence: 5, data, .. } if &data[..] == b"state at 5"),
        "{:?}",
        msgs[1]
    );
    assert_eq!(sequences(&msgs), (6..10).collect::<Vec<_>>());
    // Without asking, and with history intact, a reader gets every entry and no snapshot.
    let mut c = v1(&relay, "t").await;
    let msgs = read_to_caught_up(&mut c, "log", 0, false).await;
    assert!(!msgs.iter().any(|m| matches!(m, RelayMsg::Snapshot { .. })));
    assert_eq!(sequences(&msgs), (0..10).collect::<Vec<_>>());
    drop(c);

    // A deleted log leaves no snapshot behind for a log of the same name written later.
    let (status, body) = admin(
        &relay,
        "DELETE",
        "/admin/v1/tenants/t/logs/log?force=true",
        Value::Null,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let mut c = v1(&relay, "t").await;
    c.write_acked("log", entries(2, 3, 32))
        .await
        .expect("write");
    let msgs = read_to_caught_up(&mut c, "log", 0, true).await;
    assert!(!msgs.iter().any(|m| matches!(m, RelayMsg::Snapshot { .. })));
    assert_eq!(sequences(&msgs), vec![0, 1, 2]);
    relay.shutdown().await;
}

#[tokio::test]
async fn each_retention_policy_truncates_and_readers_are_told_where_history_starts() {
    let relay = TestRelay::start().await;
    // One tenant per policy (a policy applies to every log of its tenant).
    for log in ["count", "bytes", "age", "snap"] {
        let mut c = v1(&relay, log).await;
        c.write_acked(log, entries(1, 100, 100))
            .await
            .expect("write");
    }
    let mut c = v1(&relay, "snap").await;
    assert_eq!(
        write_snapshot(&mut c, "snap", 59, b"state").await,
        RelayMsg::SnapshotAck {
            id: JsNumber::from(77u32),
            sequence: 59
        }
    );
    drop(c);

    set_retention(&relay, "count", json!({ "max_entries": 30 })).await;
    let report = retain(&relay, "count").await;
    assert!(
        report["truncated"]
            .as_array()
            .expect("list")
            .iter()
            .any(|t| t["public_key"] == "count" && t["first_sequence"] == 70),
        "{report}"
    );
    let mut r = v1(&relay, "count").await;
    let msgs = read_to_caught_up(&mut r, "count", 0, false).await;
    assert_eq!(history_starts(&msgs), Some(70));
    assert_eq!(sequences(&msgs), (70..100).collect::<Vec<_>>());
    // A plain v3 reader gets what remains, with no extension message.
    let mut plain = relay.client("count").await;
    plain.subscribe("count", 0).await.expect("subscribe");
    let got = plain.collect("count", 30).await.expect("collect");
    assert_eq!(got[0].sequence, 70);

    // Bytes: entries of 100 bytes, at most 1,000 per log: the newest 10 stay.
    set_retention(&relay, "bytes", json!({ "max_bytes": 1000 })).await;
    retain(&relay, "bytes").await;
    let mut r = v1(&relay, "bytes").await;
    let msgs = read_to_caught_up(&mut r, "bytes", 0, false).await;
    assert_eq!(history_starts(&msgs), Some(90));
    assert_eq!(sequences(&msgs).len(), 10);

    // After the newest snapshot: a reader from 0 gets the snapshot, then what follows it.
    set_retention(&relay, "snap", json!({ "after_snapshot": true })).await;
    retain(&relay, "snap").await;
    assert_eq!(stored_count(&relay.config.data, "snap", "snap"), 40);
    let mut r = v1(&relay, "snap").await;
    let msgs = read_to_caught_up(&mut r, "snap", 0, false).await;
    assert!(msgs
        .iter()
        .any(|m| matches!(m, RelayMsg::Snapshot { sequence: 59, .. })));
    assert_eq!(history_starts(&msgs), None, "the snapshot covers the gap");
    assert_eq!(sequences(&msgs), (60..100).collect::<Vec<_>>());

    // Age: everything is older than 1 ms; the log continues where it was.
    set_retention(&relay, "age", json!({ "max_age": "1ms" })).await;
    retain(&relay, "age").await;
    assert_eq!(stored_count(&relay.config.data, "age", "age"), 0);
    let mut w = v1(&relay, "age").await;
    assert_eq!(
        w.write_acked("age", entries(2, 1, 10))
            .await
            .expect("write"),
        vec![100],
        "sequences are never reused"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn the_policy_runs_on_its_timer_and_the_file_shrinks() {
    let relay = TestRelay::start_with(|c| {
        c.retention_interval = Duration::from_millis(50);
        c.tenants.insert(
            "timer".into(),
            TenantSettings {
                retention: Retention {
                    max_entries: Some(10),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    })
    .await;
    let mut c = v1(&relay, "timer").await;
    c.write_acked("log", entries(0, 100, 64))
        .await
        .expect("write");
    eventually("the timer applies the configured policy", || async {
        stored_count(&relay.config.data, "timer", "log") == 10
    })
    .await;

    // 2,000 entries of 4 KiB, checkpointed into the file, then all but 10 deleted.
    let mut c = v1(&relay, "big").await;
    for i in 0..8 {
        c.write_acked("log", entries(i, 250, 4096))
            .await
            .expect("write");
    }
    let path = relay.config.data.join("tenants").join("big.sqlite");
    eventually("the WAL is checkpointed into the file", || async {
        std::fs::metadata(&path).map_or(0, |m| m.len()) > 8_000_000
    })
    .await;
    set_retention(&relay, "big", json!({ "max_entries": 10 })).await;
    let report = retain(&relay, "big").await;
    let (before, after) = (
        report["file_bytes_before"].as_u64().expect("before"),
        report["file_bytes_after"].as_u64().expect("after"),
    );
    assert!(
        after < before / 10,
        "2,000 entries of 4 KiB written and 10 kept: the file went from {before} to {after} bytes"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn live_readers_and_readers_that_fell_behind_keep_going_across_a_truncation() {
    let relay = TestRelay::start_with(|c| {
        c.live_tail_bytes = 64 * 1024;
        c.outbound_queue_messages = 1;
        c.changes_max_entries = 10;
    })
    .await;
    let mut writer = v1(&relay, "t").await;
    writer
        .write_acked("log", entries(0, 10, 64))
        .await
        .expect("write");
    // 10 entries, then 40 writes of 50 entries of 8 KiB (enough that a reader that reads
    // nothing fills its socket buffers and falls back to storage), a truncation to the newest
    // 100, then 5 more.
    let end: u64 = 10 + 40 * 50 + 5;
    // A live reader, reading all along.
    let mut live = v1(&relay, "t").await;
    read_to_caught_up(&mut live, "log", 10, false).await;
    let live = tokio::spawn(async move { read_to(&mut live, end).await });
    // A slow one that reads nothing until the end.
    let mut slow = v1(&relay, "t").await;
    slow.send(&ClientMsg::RequestChanges {
        public_key: "log".into(),
        start_sequence: 0,
        snapshot: false,
    })
    .await
    .expect("subscribe");
    for i in 1..=40 {
        writer
            .write_acked("log", entries(i, 50, 8192))
            .await
            .expect("write");
    }
    set_retention(&relay, "t", json!({ "max_entries": 100 })).await;
    retain(&relay, "t").await;
    writer
        .write_acked("log", entries(99, 5, 64))
        .await
        .expect("write");
    // Both reach the end; the slow one is told its history is gone instead of waiting for it.
    live.await.expect("live reader");
    let told = read_to(&mut slow, end).await;
    assert!(
        told.is_some_and(|first| first >= end - 105),
        "the slow reader was not told history was deleted ({told:?})"
    );
    relay.shutdown().await;
}

/// Reads `Changes` until the entry before `end`, checking that sequences only go forward;
/// returns where a `HistoryStarts` said history starts, if one came.
async fn read_to(c: &mut Client, end: u64) -> Option<u64> {
    let (mut next, mut told) = (0u64, None);
    while next < end {
        let msg = tokio::time::timeout(PATIENCE, c.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled at {next} of {end}"))
            .expect("recv");
        match msg {
            RelayMsg::Changes { entries, .. } => {
                for e in entries {
                    assert!(
                        e.sequence >= next,
                        "went backwards: {} after {next}",
                        e.sequence
                    );
                    next = e.sequence + 1;
                }
            }
            RelayMsg::HistoryStarts { first_sequence, .. } => {
                told = Some(first_sequence);
                next = next.max(first_sequence);
            }
            _ => {}
        }
    }
    told
}

#[tokio::test]
async fn quotas_refuse_writes_before_storing_anything() {
    let relay = TestRelay::start_with(|c| {
        c.quota.max_bytes = Some(1_000);
        c.quota.max_logs = Some(2);
    })
    .await;
    let mut c = v1(&relay, "t").await;
    for _ in 0..3 {
        c.write_acked("a", entries(rand::random(), 1, 300))
            .await
            .expect("write");
    }
    c.write("a", entries(9, 1, 300)).await.expect("send");
    let error = loop {
        if let RelayMsg::Error { code, message } = c.recv().await.expect("recv") {
            break (code, message);
        }
    };
    assert_eq!(error.0, ErrorCode::QuotaExceeded, "{}", error.1);
    assert_eq!(c.closed().await.expect("closed").code, Some(1008));
    assert_eq!(
        stored_count(&relay.config.data, "t", "a"),
        3,
        "nothing stored was touched"
    );

    // A plain v3 client gets the documented close.
    let mut plain = relay.client("t").await;
    plain.write("a", entries(10, 1, 300)).await.expect("send");
    let closed = plain.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008));
    assert!(closed.reason.contains("quota"), "{}", closed.reason);

    // Logs: a second log fits, a third does not.
    let mut c = v1(&relay, "t").await;
    c.write_acked("b", entries(11, 1, 10))
        .await
        .expect("second log");
    c.write("c", entries(12, 1, 10)).await.expect("send");
    loop {
        if let RelayMsg::Error { code, .. } = c.recv().await.expect("recv") {
            assert_eq!(code, ErrorCode::QuotaExceeded);
            break;
        }
    }
    relay.shutdown().await;
}

fn identity() -> Identity {
    Identity::generate(&mut rand::rngs::OsRng)
}

async fn sdk(addr: SocketAddr, id: &Identity, journal: &Path, from_snapshot: bool) -> Sdk {
    Sdk::builder(format!("ws://{addr}"), "t")
        .identity(id.clone())
        .journal(journal)
        .configure(|c| {
            c.backoff_base = Duration::from_millis(20);
            c.backoff_max = Duration::from_millis(500);
            c.open_from_snapshot = from_snapshot;
        })
        .open()
        .await
        .expect("open client")
}

async fn live(client: &Sdk) {
    let mut status = client.status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| *s == Status::Live))
        .await
        .expect("live in time")
        .expect("status");
}

async fn view_of(client: &Sdk) -> BTreeMap<(String, String), Value> {
    client
        .view()
        .await
        .expect("view")
        .iter()
        .map(|((e, k), r)| {
            (
                (e.to_owned(), k.to_owned()),
                r.payload_as::<Value>().expect("payload"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_replica_opens_from_a_snapshot_with_the_same_view_as_the_full_history() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = identity();
    let log = id.log().to_owned();
    let writer = sdk(relay.addr, &id, &dir.path().join("w.db"), true).await;
    let events: Vec<NewEvent> = (0..300)
        .map(|i| {
            let event = if i % 7 == 0 { "deleted" } else { "set" };
            NewEvent::new(event, format!("k{}", i % 20), &json!({ "n": i })).expect("event")
        })
        .collect();
    writer.append_many(&log, events).await.expect("append");
    writer.flush().await.expect("flush");
    live(&writer).await;
    let sequence = writer.snapshot(&log).await.expect("snapshot");
    assert_eq!(sequence, 299);

    let full = sdk(relay.addr, &id, &dir.path().join("full.db"), false).await;
    let cloned = sdk(relay.addr, &id, &dir.path().join("clone.db"), true).await;
    live(&full).await;
    live(&cloned).await;
    // Live means the backlog (here, the snapshot) is in the journal.
    assert_eq!(
        full.journal().stats(&log).await.expect("stats").entries,
        300
    );
    let compacted = cloned.journal().stats(&log).await.expect("stats").entries;
    assert!(
        compacted <= 40,
        "{compacted} entries after opening from the snapshot"
    );
    assert_eq!(view_of(&cloned).await, view_of(&full).await);
    assert_eq!(view_of(&cloned).await, view_of(&writer).await);

    // New entries after the snapshot reach the clone, and views stay equal.
    writer
        .append("set", "k1", &json!({ "n": "after" }))
        .await
        .expect("append");
    writer.flush().await.expect("flush");
    let mut stream = cloned.entries_after(0);
    tokio::time::timeout(PATIENCE, async {
        loop {
            let d = stream.next().await.expect("stream");
            if d.entry.primary_key == "k1" && d.payload_json().expect("json")["n"] == "after" {
                break;
            }
        }
    })
    .await
    .expect("the clone follows live");

    // History dropped below the snapshot: a reader that asked for no snapshot still gets it.
    set_retention(&relay, "t", json!({ "after_snapshot": true })).await;
    retain(&relay, "t").await;
    let late = sdk(relay.addr, &id, &dir.path().join("late.db"), false).await;
    live(&late).await;
    writer.flush().await.expect("flush");
    live(&full).await;
    assert!(late.truncations().await.expect("truncations").is_empty());
    eventually("the late replica has the last entry", || async {
        view_of(&late).await == view_of(&full).await
    })
    .await;
    for c in [writer, full, cloned, late] {
        c.close().await.expect("close");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn the_sdk_reports_a_truncation_without_a_snapshot_and_snapshots_automatically() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = identity();
    let log = id.log().to_owned();
    let writer = sdk(relay.addr, &id, &dir.path().join("w.db"), true).await;
    for i in 0..50 {
        writer
            .append("set", &format!("k{i}"), &json!({ "n": i }))
            .await
            .expect("append");
    }
    writer.flush().await.expect("flush");
    set_retention(&relay, "t", json!({ "max_entries": 10 })).await;
    retain(&relay, "t").await;
    let reader = sdk(relay.addr, &id, &dir.path().join("r.db"), true).await;
    live(&reader).await;
    let gaps = reader.truncations().await.expect("truncations");
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].from, gaps[0].to), (0, 40));
    assert_eq!(
        reader.journal().stats(&log).await.expect("stats").entries,
        10
    );
    reader.close().await.expect("close");
    writer.close().await.expect("close");

    // Every 20 entries, a snapshot: a new reader finds one that covers most of the log.
    let auto = Sdk::builder(format!("ws://{}", relay.addr), "t")
        .identity(id.clone())
        .journal(dir.path().join("auto.db"))
        .configure(|c| c.snapshot_every = Some(20))
        .open()
        .await
        .expect("open");
    live(&auto).await;
    for i in 0..45 {
        auto.append("set", &format!("a{i}"), &json!({ "n": i }))
            .await
            .expect("append");
    }
    auto.flush().await.expect("flush");
    eventually("an automatic snapshot is stored", || {
        let log = log.clone();
        let relay = &relay;
        async move {
            let mut c = v1(relay, "t").await;
            let msgs = read_to_caught_up(&mut c, &log, 0, true).await;
            msgs.iter()
                .any(|m| matches!(m, RelayMsg::Snapshot { sequence, .. } if *sequence >= 69))
        }
    })
    .await;
    auto.close().await.expect("close");
    relay.shutdown().await;
}

/// A request a [`Receiver`] got: headers (lower-case names) and body.
type Request = (BTreeMap<String, String>, Vec<u8>);

/// A webhook endpoint on 127.0.0.1: records each request and answers with the next status of
/// its script (200 once the script is used up).
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<std::vec::IntoIter<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let script = Arc::new(Mutex::new(script.into_iter()));
        let script_for_test = script.clone();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (s.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (seen, script) = (seen.clone(), script.clone());
                            async move {
                                use http_body_util::BodyExt;
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or_default().to_owned())
                                    })
                                    .collect();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                seen.lock().expect("lock").push((headers, body));
                                let status = script.lock().expect("lock").next().unwrap_or(200);
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(Bytes::new()))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            seen,
            script: script_for_test,
            task,
        }
    }

    /// Replaces what the endpoint answers from now on.
    fn answer_with(&self, script: Vec<u16>) {
        *self.script.lock().expect("lock") = script.into_iter();
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").clone()
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Checks a request the way a Standard Webhooks receiver does.
fn verify(headers: &BTreeMap<String, String>, body: &[u8]) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(
        format!(
            "{}.{}.",
            headers["webhook-id"], headers["webhook-timestamp"]
        )
        .as_bytes(),
    );
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    headers["webhook-signature"]
        .split(' ')
        .any(|sig| sig == format!("v1,{expected}"))
}

fn with_webhook(c: &mut Config, url: String) {
    c.webhooks.backoff_base = Duration::from_millis(20);
    c.webhooks.backoff_max = Duration::from_millis(100);
    c.tenants.insert(
        "t".into(),
        TenantSettings {
            webhooks: Some(vec![Webhook {
                url,
                secret: SECRET.into(),
            }]),
            ..Default::default()
        },
    );
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_coalesced() {
    let receiver = Receiver::start(vec![500, 503]).await;
    let url = format!("http://{}/hook?x=1", receiver.addr);
    let relay = TestRelay::start_with(|c| with_webhook(c, url)).await;
    let mut c = v1(&relay, "t").await;
    for i in 0..5 {
        c.write_acked("log", entries(i, 4, 16))
            .await
            .expect("write");
    }
    eventually("every entry announced", || async {
        let requests = receiver.requests();
        requests.len() >= 3
            && requests[2..]
                .iter()
                .filter_map(|(_, b)| serde_json::from_slice::<Value>(b).ok())
                .any(|v| v["toSequence"] == 19)
    })
    .await;
    let requests = receiver.requests();
    assert!(
        requests.len() >= 3,
        "two failures, then a delivery: {}",
        requests.len()
    );
    for (headers, body) in &requests {
        assert!(verify(headers, body), "bad signature: {headers:?}");
        let v: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(v["tenant"], "t");
        assert_eq!(v["publicKey"], "log");
    }
    // Coalesced: fewer notifications than writes, and together they cover 0..=19.
    let delivered: Vec<Value> = requests[2..]
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).expect("json"))
        .collect();
    let counted: u64 = delivered
        .iter()
        .map(|v| v["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(counted, 20, "{delivered:?}");
    // A tampered body fails verification (the check above can fail).
    let (h, b) = &requests[0];
    let mut tampered = b.clone();
    tampered[0] ^= 1;
    assert!(!verify(h, &tampered));
    relay.shutdown().await;
    receiver.task.abort();
}

#[tokio::test]
async fn notifications_survive_a_restart_and_are_given_up_after_the_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let down = Receiver::start(vec![500; 1000]).await;
    let url = format!("http://{}/hook", down.addr);
    let mut config = Config {
        data: dir.path().join("relay"),
        ..Config::default()
    };
    with_webhook(&mut config, url.clone());
    config.webhooks.backoff_base = Duration::from_millis(300);
    config.webhooks.backoff_max = Duration::from_millis(300);
    let relay = TestRelay::start_config(config.clone()).await;
    let mut c = v1(&relay, "t").await;
    c.write_acked("log", entries(1, 3, 16))
        .await
        .expect("write");
    eventually("a first attempt failed", || async {
        !down.requests().is_empty()
    })
    .await;
    drop(c);
    relay.shutdown().await;

    // The endpoint is back: after a restart the outbox is delivered without any client
    // connecting.
    down.answer_with(Vec::new());
    let before = down.requests().len();
    let relay = TestRelay::start_config(config.clone()).await;
    eventually("delivered after the restart", || async {
        down.requests()[before..].iter().any(|(_, b)| {
            serde_json::from_slice::<Value>(b)
                .map(|v| v["count"] == 3)
                .unwrap_or(false)
        })
    })
    .await;
    relay.shutdown().await;
    down.task.abort();

    // Always failing, with 2 attempts allowed: given up and counted.
    let never = Receiver::start(vec![500; 1000]).await;
    let mut config = config.clone();
    with_webhook(&mut config, format!("http://{}/hook", never.addr));
    config.webhooks.max_attempts = 2;
    let relay = TestRelay::start_config(config).await;
    let mut c = v1(&relay, "t").await;
    c.write_acked("log", entries(2, 1, 16))
        .await
        .expect("write");
    eventually("given up and counted", || async {
        let metrics = wharf_tests::get(relay.addr, "/metrics", &[])
            .await
            .expect("metrics")
            .text();
        metrics.contains("wharf_webhook_deliveries_total{outcome=\"given_up\"} 1")
    })
    .await;
    assert_eq!(never.requests().len(), 2);
    relay.shutdown().await;
    never.task.abort();
}

/// Webhooks on the Postgres store: a relay that stopped with notifications pending leaves
/// them in the database, and another relay delivers them without any client connecting; with
/// two relays writing one log, every entry is announced exactly once (a row is claimed by one
/// relay at a time), signed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_on_postgres_survive_a_relay_and_are_delivered_once() {
    let pg = wharf_tests::postgres::PgServer::start().expect("a PostgreSQL server");
    let store = pg.database().await.expect("a database");
    let down = Receiver::start(vec![500; 1000]).await;
    let config = |url: String| {
        let mut c = Config::default();
        with_webhook(&mut c, url);
        c.webhooks.backoff_base = Duration::from_millis(300);
        c.webhooks.backoff_max = Duration::from_millis(300);
        c.store = Some(store.clone());
        c.postgres.max_connections = 4;
        c
    };
    let one = TestRelay::start_config(config(format!("http://{}/hook", down.addr))).await;
    let mut c = v1(&one, "t").await;
    c.write_acked("log", entries(1, 3, 16))
        .await
        .expect("write");
    eventually("a first attempt failed", || async {
        !down.requests().is_empty()
    })
    .await;
    drop(c);
    one.shutdown().await;

    // The endpoint is back; a relay that never served the tenant finds the notification in
    // the database and delivers it.
    down.answer_with(Vec::new());
    let before = down.requests().len();
    let two = TestRelay::start_config(config(format!("http://{}/hook", down.addr))).await;
    eventually("delivered by the other relay", || async {
        down.requests()[before..]
            .iter()
            .any(|(_, b)| serde_json::from_slice::<Value>(b).is_ok_and(|v| v["count"] == 3))
    })
    .await;
    two.shutdown().await;
    down.task.abort();

    // Two relays, writers on both, one failure first: every entry announced exactly once.
    let receiver = Receiver::start(vec![500]).await;
    let url = format!("http://{}/hook", receiver.addr);
    let relays = [
        TestRelay::start_config(config(url.clone())).await,
        TestRelay::start_config(config(url)).await,
    ];
    let mut writers = Vec::new();
    for relay in &relays {
        writers.push(v1(relay, "t").await);
    }
    for i in 0..5 {
        for (j, w) in writers.iter_mut().enumerate() {
            w.write_acked("log", entries(10 + i * 2 + j as u32, 4, 16))
                .await
                .expect("write");
        }
    }
    // Sequences 0..=2 were announced above; 3..=42 now.
    let announced = || -> u64 {
        receiver.requests()[1..]
            .iter()
            .map(|(_, b)| {
                serde_json::from_slice::<Value>(b).expect("json")["count"]
                    .as_u64()
                    .expect("count")
            })
            .sum()
    };
    // Once the outbox is empty nothing more can be sent: a delivery needs a claimed row, and
    // a row leaves the outbox only after its delivery.
    let db = sqlx::PgPool::connect(&store).await.expect("connect");
    eventually("every entry announced, the outbox empty", || async {
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_outbox")
            .fetch_one(&db)
            .await
            .expect("count");
        pending == 0 && receiver.requests().len() > 1 && announced() >= 40
    })
    .await;
    db.close().await;
    assert_eq!(announced(), 40, "{} requests", receiver.requests().len());
    let mut covered: Vec<(u64, u64)> = receiver.requests()[1..]
        .iter()
        .map(|(h, b)| {
            assert!(verify(h, b), "bad signature: {h:?}");
            let v: Value = serde_json::from_slice(b).expect("json");
            (
                v["fromSequence"].as_u64().expect("from"),
                v["toSequence"].as_u64().expect("to"),
            )
        })
        .collect();
    covered.sort_unstable();
    assert_eq!(covered.first().map(|c| c.0), Some(3), "{covered:?}");
    assert_eq!(covered.last().map(|c| c.1), Some(42), "{covered:?}");
    for pair in covered.windows(2) {
        assert_eq!(pair[1].0, pair[0].1 + 1, "no overlap, no gap: {covered:?}");
    }
    for relay in relays {
        relay.shutdown().await;
    }
    receiver.task.abort();
}

#[tokio::test]
async fn webhook_urls_to_link_local_addresses_and_repeated_urls_are_refused() {
    let relay = TestRelay::start().await;
    let mut c = v1(&relay, "t").await;
    c.write_acked("log", entries(1, 1, 8)).await.expect("write");
    let (status, body) = admin(
        &relay,
        "PUT",
        "/admin/v1/tenants/t/settings",
        json!({ "webhooks": [{ "url": "http://169.254.169.254/latest", "secret": SECRET }] }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // One endpoint listed twice is refused too (it would be notified twice).
    let hook = json!({ "url": "http://127.0.0.1:9/hook", "secret": SECRET });
    let (status, body) = admin(
        &relay,
        "PUT",
        "/admin/v1/tenants/t/settings",
        json!({ "webhooks": [hook.clone(), hook] }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin(&relay, "GET", "/admin/v1/tenants/t/settings", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(body["effective"]["webhooks"], json!([]));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_open_is_skipped_and_the_history_read_instead() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = identity();
    let log = id.log().to_owned();
    let writer = sdk(relay.addr, &id, &dir.path().join("w.db"), true).await;
    for i in 0..10 {
        writer
            .append("set", &format!("k{}", i % 3), &json!({ "n": i }))
            .await
            .expect("append");
    }
    writer.flush().await.expect("flush");
    // Anyone who may write the log may publish garbage as its snapshot.
    let mut c = v1(&relay, "t").await;
    assert!(matches!(
        write_snapshot(&mut c, &log, 9, b"not a sealed snapshot").await,
        RelayMsg::SnapshotAck { sequence: 9, .. }
    ));
    let reader = sdk(relay.addr, &id, &dir.path().join("r.db"), true).await;
    live(&reader).await;
    assert_eq!(
        reader.journal().stats(&log).await.expect("stats").entries,
        10,
        "the whole history was read instead"
    );
    assert!(reader.truncations().await.expect("truncations").is_empty());
    assert_eq!(view_of(&reader).await, view_of(&writer).await);
    reader.close().await.expect("close");
    writer.close().await.expect("close");
    relay.shutdown().await;
}
