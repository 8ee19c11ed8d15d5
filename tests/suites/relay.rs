//! The relay's behaviour end to end: real relay on 127.0.0.1:0, real WebSockets.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use wharf_protocol::{ClientMsg, RelayMsg, EXTENSION_SUBPROTOCOL};
use wharf_tests::{assert_dense, entries, entry_id, Client, TestRelay, PATIENCE};

const PK: &str = "5f0c2b9e-7d4a-4c1e-9b3f-2a6d8e1c4f70";

#[tokio::test]
async fn hello_carries_a_uuid_that_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = wharf_relay::Config {
        data: dir.path().into(),
        ..Default::default()
    };
    let relay = TestRelay::start_config(config.clone()).await;
    let first = relay.client("acme").await.remote_id;
    let id = uuid::Uuid::from_slice(&first).expect("16 bytes");
    assert_eq!(id.get_version_num(), 4);
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    assert_eq!(
        relay.client("acme").await.remote_id,
        first,
        "same id for every connection"
    );
    assert_ne!(
        relay.client("other").await.remote_id,
        first,
        "each tenant's data has its own id"
    );
    relay.shutdown().await;
    let relay = TestRelay::start_config(config).await;
    assert_eq!(
        relay.client("acme").await.remote_id,
        first,
        "stable across restarts"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn two_writers_and_two_readers_converge() {
    let relay = TestRelay::start().await;
    let mut readers = vec![relay.client("acme").await, relay.client("acme").await];
    for r in &mut readers {
        r.subscribe(PK, 0).await.expect("subscribe");
        r.ping_pong().await.expect("subscription registered");
    }
    let mut writers = [relay.client("acme").await, relay.client("acme").await];
    let writes = writers.iter_mut().enumerate().map(|(w, c)| async move {
        for batch in 0..20u32 {
            let es = entries(w as u32 * 1000 + batch, 5, 64);
            c.write_acked(PK, es).await.expect("acked");
        }
    });
    join_all(writes).await;
    let mut seen = Vec::new();
    for r in &mut readers {
        let got = r.collect(PK, 200).await.expect("collect");
        assert_dense(&got, 0);
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "both readers see one order");
    let ids: HashSet<_> = seen[0].iter().map(|e| e.entry_id.clone()).collect();
    assert_eq!(ids.len(), 200);
}

#[tokio::test]
async fn catch_up_from_zero_and_from_the_middle() {
    let relay = TestRelay::start().await;
    let mut w = relay.client("acme").await;
    let written = entries(1, 2500, 100);
    for chunk in written.chunks(500) {
        w.write_acked(PK, chunk.to_vec()).await.expect("acked");
    }
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    let all = r.collect(PK, 2500).await.expect("from 0");
    assert_dense(&all, 0);
    for (got, want) in all.iter().zip(&written) {
        assert_eq!(got.entry_id, want.entry_id);
        assert_eq!(got.encrypted_entry, want.encrypted_entry);
        assert_eq!(&got.iv[..], &[7; 12], "the stored iv comes back");
    }
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 1234).await.expect("subscribe");
    let tail = r.collect(PK, 2500 - 1234).await.expect("from the middle");
    assert_dense(&tail, 1234);
    // Then live, with no gap at the handover.
    w.write_acked(PK, entries(2, 3, 10)).await.expect("acked");
    let live = r.collect(PK, 3).await.expect("live");
    assert_dense(&live, 2500);
}

#[tokio::test]
async fn backlog_arrives_in_bounded_changes_messages() {
    let relay = TestRelay::start().await;
    let mut w = relay.client("acme").await;
    w.write_acked(PK, entries(1, 5000, 256))
        .await
        .expect("acked");
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    let mut got = 0;
    let mut messages = 0;
    while got < 5000 {
        if let RelayMsg::Changes { entries, .. } = r.recv().await.expect("recv") {
            assert!(entries.len() <= relay.config.changes_max_entries);
            got += entries.len();
            messages += 1;
        }
    }
    assert!(
        messages >= 5,
        "5000 × 256 B must not come as one message ({messages})"
    );
}

#[tokio::test]
async fn duplicates_keep_their_sequence_and_acks_stay_aligned() {
    let relay = TestRelay::start().await;
    let mut c = relay.client("acme").await;
    let e = entries(1, 4, 16);
    assert_eq!(
        c.write_acked(PK, e[..2].to_vec()).await.expect("ack"),
        vec![0, 1]
    );
    // Old and new mixed, and a duplicate inside one batch.
    let mixed = vec![
        e[1].clone(),
        e[2].clone(),
        e[2].clone(),
        e[0].clone(),
        e[3].clone(),
    ];
    assert_eq!(
        c.write_acked(PK, mixed).await.expect("ack"),
        vec![1, 2, 2, 0, 3]
    );
    // Only duplicates: still acked, with the original sequences.
    assert_eq!(
        c.write_acked(PK, e.clone()).await.expect("ack"),
        vec![0, 1, 2, 3]
    );
    // Empty: acked.
    assert_eq!(
        c.write_acked(PK, vec![]).await.expect("ack"),
        Vec::<u64>::new()
    );
    // Dedup is per log: the same ids under another publicKey are new entries there.
    assert_eq!(
        c.write_acked("other-log", e[..2].to_vec())
            .await
            .expect("ack"),
        vec![0, 1]
    );
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    assert_dense(&r.collect(PK, 4).await.expect("collect"), 0);
}

#[tokio::test]
async fn pipelined_writes_are_acked_in_order() {
    let relay = TestRelay::start().await;
    let mut c = relay.client("acme").await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(c.write(PK, entries(i, 2, 8)).await.expect("write"));
    }
    for (i, id) in ids.into_iter().enumerate() {
        match c.recv().await.expect("ack") {
            RelayMsg::Ack {
                id: got,
                sequence_numbers,
            } => {
                assert_eq!(got, id);
                assert_eq!(sequence_numbers, vec![2 * i as u64, 2 * i as u64 + 1]);
            }
            other => panic!("expected Ack, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_chunked_write_over_1_5_mb_and_a_chunked_catch_up() {
    let relay = TestRelay::start().await;
    let mut w = relay.client("acme").await;
    let big = entries(1, 1, 1_600_000);
    let small = entries(2, 3, 100);
    let mut batch = small.clone();
    batch.insert(1, big[0].clone());
    assert_eq!(
        w.write_acked(PK, batch.clone()).await.expect("ack"),
        vec![0, 1, 2, 3]
    );
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    let got = r.collect(PK, 4).await.expect("collect");
    assert_dense(&got, 0);
    assert_eq!(
        got[1].encrypted_entry, big[0].encrypted_entry,
        "1.6 MB entry arrives intact"
    );
    // Live delivery of a big entry is chunked too.
    let big2 = entries(3, 1, 700_000);
    w.write_acked(PK, big2.clone()).await.expect("ack");
    let live = r.collect(PK, 1).await.expect("live");
    assert_eq!(live[0].encrypted_entry, big2[0].encrypted_entry);
}

#[tokio::test]
async fn tenants_and_public_keys_are_isolated() {
    let relay = TestRelay::start().await;
    let mut a = relay.client("tenant-a").await;
    let mut b = relay.client("tenant-b").await;
    a.subscribe(PK, 0).await.expect("subscribe");
    a.subscribe("log-2", 0).await.expect("subscribe");
    b.subscribe(PK, 0).await.expect("subscribe");
    a.ping_pong().await.expect("pong");
    b.ping_pong().await.expect("pong");
    let mut w = relay.client("tenant-a").await;
    assert_eq!(
        w.write_acked(PK, entries(1, 2, 8)).await.expect("ack"),
        vec![0, 1]
    );
    assert_eq!(
        w.write_acked("log-2", entries(1, 1, 8)).await.expect("ack"),
        vec![0]
    );
    let mut wb = relay.client("tenant-b").await;
    assert_eq!(
        wb.write_acked(PK, entries(9, 1, 8)).await.expect("ack"),
        vec![0],
        "own sequence space"
    );
    let mut per_key = std::collections::HashMap::<String, usize>::new();
    while per_key.values().sum::<usize>() < 3 {
        if let RelayMsg::Changes {
            public_key,
            entries,
        } = a.recv().await.expect("recv")
        {
            *per_key.entry(public_key).or_default() += entries.len();
        }
    }
    assert_eq!(per_key[PK], 2);
    assert_eq!(per_key["log-2"], 1);
    let got = b.collect(PK, 1).await.expect("b");
    assert_eq!(
        got[0].entry_id,
        entry_id(9, 0),
        "tenant b sees only its own entry"
    );
    // A log nobody subscribed to is never sent, and nothing else is pending for b.
    assert!(b.ping_pong().await.expect("pong").is_empty());
}

#[tokio::test]
async fn the_writer_gets_an_ack_not_an_echo() {
    let relay = TestRelay::start().await;
    let mut c = relay.client("acme").await;
    c.subscribe(PK, 0).await.expect("subscribe");
    c.ping_pong().await.expect("pong");
    c.write_acked(PK, entries(1, 3, 8)).await.expect("ack");
    let mut other = relay.client("acme").await;
    other.write_acked(PK, entries(2, 1, 8)).await.expect("ack");
    let got = c.collect(PK, 1).await.expect("the other writer's entry");
    assert_eq!(got[0].sequence, 3);
}

#[tokio::test]
async fn stop_changes_ends_a_subscription() {
    let relay = TestRelay::start().await;
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    r.send(&ClientMsg::StopChanges {
        public_key: PK.into(),
    })
    .await
    .expect("stop");
    r.ping_pong().await.expect("pong");
    let mut w = relay.client("acme").await;
    w.write_acked(PK, entries(1, 1, 8)).await.expect("ack");
    // A round trip after the write: had anything been sent, it would precede the Pong.
    let mut w2 = relay.client("acme").await;
    w2.write_acked(PK, entries(2, 1, 8)).await.expect("ack");
    assert!(r.ping_pong().await.expect("pong").is_empty());
}

#[tokio::test]
async fn concurrent_first_connections_share_one_actor() {
    let relay = TestRelay::start().await;
    let url = relay.url("brand-new");
    let clients = join_all((0..16).map(|_| {
        let url = url.clone();
        async move { Client::connect(&url).await.expect("connect") }
    }))
    .await;
    let ids: HashSet<Bytes> = clients.iter().map(|c| c.remote_id.clone()).collect();
    assert_eq!(ids.len(), 1, "one database, one remoteId");
    assert_eq!(relay.relay.active_tenants(), 1);
    let acks = join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| async move {
                c.write_acked(PK, entries(i as u32, 10, 8))
                    .await
                    .expect("ack")
            }),
    )
    .await;
    let mut all: Vec<u64> = acks.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..160).collect::<Vec<u64>>(),
        "dense, no sequence given twice"
    );
}

#[tokio::test]
async fn an_idle_tenant_is_closed_and_reopened_transparently() {
    let relay = TestRelay::start_with(|c| c.tenant_idle_timeout = Duration::from_millis(200)).await;
    let mut c = relay.client("sleepy").await;
    let remote_id = c.remote_id.clone();
    c.write_acked(PK, entries(1, 3, 8)).await.expect("ack");
    // Connected: never evicted, however long it is quiet.
    assert_eq!(relay.relay.active_tenants(), 1);
    drop(c);
    wait_until(|| relay.relay.active_tenants() == 0).await;
    let mut c = relay.client("sleepy").await;
    assert_eq!(c.remote_id, remote_id);
    assert_eq!(
        c.write_acked(PK, entries(2, 1, 8)).await.expect("ack"),
        vec![3],
        "state reloaded"
    );
    c.subscribe(PK, 0).await.expect("subscribe");
    assert_dense(&c.collect(PK, 4).await.expect("collect"), 0);
}

#[tokio::test]
async fn extension_clients_get_head_and_caught_up_markers() {
    let relay = TestRelay::start().await;
    let mut w = relay.client("acme").await;
    w.write_acked(PK, entries(1, 10, 8)).await.expect("ack");
    let mut e = Client::connect_with_protocol(&relay.url("acme"), Some(EXTENSION_SUBPROTOCOL))
        .await
        .expect("connect");
    e.subscribe(PK, 4).await.expect("subscribe");
    assert_eq!(
        e.recv().await.expect("head"),
        RelayMsg::Head {
            public_key: PK.into(),
            next_sequence: 10
        },
        "the head comes first"
    );
    let got = e.collect(PK, 6).await.expect("backlog");
    assert_dense(&got, 4);
    assert_eq!(
        e.recv().await.expect("marker"),
        RelayMsg::CaughtUp {
            public_key: PK.into(),
            next_sequence: 10
        }
    );
    // A plain client never sees it.
    let mut plain = relay.client("acme").await;
    plain.subscribe(PK, 0).await.expect("subscribe");
    plain.collect(PK, 10).await.expect("backlog");
    assert!(plain.ping_pong().await.expect("pong").is_empty());
}

#[tokio::test]
async fn pong_overtakes_a_large_catch_up() {
    let relay = TestRelay::start().await;
    let mut w = relay.client("acme").await;
    for i in 0..20 {
        w.write_acked(PK, entries(i, 1000, 1000))
            .await
            .expect("ack");
    }
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    let before = r.ping_pong().await.expect("pong");
    let delivered: usize = before
        .iter()
        .map(|m| match m {
            RelayMsg::Changes { entries, .. } => entries.len(),
            _ => 0,
        })
        .sum();
    assert!(
        delivered < 20_000,
        "the Pong waited for the whole 20 MB backlog"
    );
    let rest = r.collect(PK, 20_000 - delivered).await.expect("rest");
    assert_eq!(rest.last().map(|e| e.sequence), Some(19_999));
}

#[tokio::test]
async fn graceful_shutdown_acks_in_flight_writes_and_closes_with_1001() {
    let relay = TestRelay::start().await;
    let mut c = relay.client("acme").await;
    let ids: Vec<_> = {
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(c.write(PK, entries(i, 50, 64)).await.expect("write"));
        }
        ids
    };
    let addr = relay.addr;
    let stopping = tokio::spawn(relay.shutdown());
    let mut acked = 0;
    let closed = loop {
        match c.recv().await {
            Ok(RelayMsg::Ack { id, .. }) => {
                assert_eq!(id, ids[acked]);
                acked += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e.to_string(),
        }
    };
    assert_eq!(
        acked, 20,
        "every write sent before shutdown is acked ({closed})"
    );
    assert!(
        closed.contains("Away"),
        "closed with 1001 going away: {closed}"
    );
    let dir = stopping.await.expect("shutdown").expect("dir");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    // Everything acked is on disk.
    let config = wharf_relay::Config {
        data: dir.path().into(),
        ..Default::default()
    };
    let relay = TestRelay::start_config(config).await;
    let mut r = relay.client("acme").await;
    r.subscribe(PK, 0).await.expect("subscribe");
    assert_dense(&r.collect(PK, 1000).await.expect("all"), 0);
}

#[tokio::test]
async fn healthz_and_bad_tenant_ids() {
    let relay = TestRelay::start().await;
    let status = |path: &str| {
        let addr = relay.addr;
        let path = path.to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.expect("write");
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await.expect("read");
            String::from_utf8_lossy(&buf[9..12]).into_owned()
        }
    };
    assert_eq!(status("/healthz").await, "200");
    assert_eq!(status("/t/acme").await, "101");
    for bad in [
        "/t/UPPER",
        "/t/-dash",
        "/t/a.b",
        "/t/%2e%2e",
        &format!("/t/{}", "a".repeat(64)),
    ] {
        assert_eq!(status(bad).await, "400", "{bad}");
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WriteEntries with the given iv, acked (skipping other messages).
async fn write_with_iv(
    c: &mut Client,
    id: u32,
    iv: &[u8],
    es: Vec<wharf_protocol::EncryptedEntry>,
) -> Vec<u64> {
    c.send(&ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: PK.into(),
        id: id.into(),
        iv: Bytes::copy_from_slice(iv),
        entries: es,
    }))
    .await
    .expect("send");
    loop {
        if let RelayMsg::Ack {
            id: got,
            sequence_numbers,
        } = c.recv().await.expect("ack")
        {
            if got == id.into() {
                return sequence_numbers;
            }
        }
    }
}

#[tokio::test]
async fn reused_gcm_ivs_are_counted_per_tenant() {
    let relay = TestRelay::start().await;
    let counters = relay.relay.metrics();
    let mut c = relay.client("acme").await;
    // Three entries under one 12-byte iv: AES-GCM nonce reuse, as Effect v3 batches do.
    assert_eq!(
        write_with_iv(&mut c, 1, &[1; 12], entries(1, 3, 8)).await,
        vec![0, 1, 2]
    );
    assert_eq!(counters.iv_reuse("acme"), 1);
    // A fresh iv for one entry is fine; the same iv again, in a later write, is not.
    write_with_iv(&mut c, 2, &[2; 12], entries(2, 1, 8)).await;
    assert_eq!(counters.iv_reuse("acme"), 1);
    write_with_iv(&mut c, 3, &[2; 12], entries(3, 1, 8)).await;
    assert_eq!(counters.iv_reuse("acme"), 2);
    // The same iv in another log is that log's business (another key), not reuse.
    c.send(&ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: "another-log".into(),
        id: 4u32.into(),
        iv: Bytes::from_static(&[2; 12]),
        entries: entries(4, 1, 8),
    }))
    .await
    .expect("send");
    // 24-byte ivs (XChaCha20-Poly1305, the native suite) carry per-entry nonces: never counted.
    write_with_iv(&mut c, 5, &[3; 24], entries(5, 4, 8)).await;
    write_with_iv(&mut c, 6, &[3; 24], entries(6, 1, 8)).await;
    assert_eq!(counters.iv_reuse("acme"), 2);
    assert_eq!(counters.iv_reuse("other"), 0);
}

#[tokio::test]
async fn strict_iv_refuses_reused_gcm_ivs_and_stores_nothing() {
    let relay = TestRelay::start_with(|c| c.strict_iv = true).await;
    let mut c = relay.client("acme").await;
    c.send(&ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: PK.into(),
        id: 1u32.into(),
        iv: Bytes::from_static(&[1; 12]),
        entries: entries(1, 2, 8),
    }))
    .await
    .expect("send");
    let closed = c.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008));
    assert!(
        closed.reason.contains("2 entries share one AES-GCM iv"),
        "{closed:?}"
    );
    // Nothing of the refused write was stored: the next entry is the log's first.
    let mut c = relay.client("acme").await;
    assert_eq!(
        write_with_iv(&mut c, 1, &[2; 12], entries(2, 1, 8)).await,
        vec![0]
    );
    c.send(&ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: PK.into(),
        id: 2u32.into(),
        iv: Bytes::from_static(&[2; 12]),
        entries: entries(3, 1, 8),
    }))
    .await
    .expect("send");
    let closed = c.closed().await.expect("closed");
    assert!(
        closed.reason.contains("already used in this log"),
        "{closed:?}"
    );
    assert_eq!(relay.relay.metrics().iv_reuse("acme"), 2);
}
