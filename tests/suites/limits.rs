//! Limits that protect the relay, against a real relay on port 0: connection limits refuse the
//! upgrade with a status and a reason and free their place when a connection ends; a client
//! over a write or byte rate is slowed (its frames wait unread), never closed, and nobody else
//! waits with it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use wharf_protocol::RelayMsg;
use wharf_tests::{entries, Client, TestRelay, PATIENCE};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

async fn admitted(relay: &TestRelay, tenant: &str, from: &str) -> Client {
    Client::connect_from(&relay.url(tenant), ip(from))
        .await
        .expect("connect")
        .unwrap_or_else(|(status, body)| panic!("refused with {status}: {body}"))
}

async fn refused(relay: &TestRelay, tenant: &str, from: &str) -> (u16, String) {
    match Client::connect_from(&relay.url(tenant), ip(from))
        .await
        .expect("connect")
    {
        Ok(_) => panic!("admitted to {tenant} from {from}, over a limit"),
        Err(refusal) => refusal,
    }
}

#[tokio::test]
async fn connection_limits_refuse_the_upgrade_and_free_their_place_on_close() {
    let relay = TestRelay::start_with(|c| {
        c.limits.max_connections = 4;
        c.limits.max_connections_per_tenant = 2;
        c.limits.max_connections_per_ip = 3;
    })
    .await;
    let a1 = admitted(&relay, "a", "127.0.0.1").await;
    let _a2 = admitted(&relay, "a", "127.0.0.1").await;
    let (status, body) = refused(&relay, "a", "127.0.0.2").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("tenant") && body.contains('2'), "{body}");

    let _b1 = admitted(&relay, "b", "127.0.0.1").await;
    let (status, body) = refused(&relay, "b", "127.0.0.1").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("address") && body.contains('3'), "{body}");
    let _b2 = admitted(&relay, "b", "127.0.0.2").await;

    let (status, body) = refused(&relay, "c", "127.0.0.3").await;
    assert_eq!(status, 503, "the relay is full: {body}");
    assert!(body.contains("maximum of 4"), "{body}");
    assert_eq!(relay.relay.connections(), 4);

    // A connection that ends gives its place back.
    drop(a1);
    wharf_tests::eventually("the place is freed", || async {
        relay.relay.connections() == 3
    })
    .await;
    let mut a3 = admitted(&relay, "a", "127.0.0.3").await;
    a3.write_acked("log", entries(1, 1, 16))
        .await
        .expect("the new connection works");
    assert_eq!(
        relay.relay.metrics().refused_by_limit.get(),
        3,
        "every refusal is counted"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_over_its_write_rate_is_slowed_not_closed() {
    let relay = TestRelay::start_with(|c| {
        c.limits.writes_per_second_per_connection = 20;
        c.limits.writes_per_second_per_tenant = 0;
    })
    .await;
    let mut c = relay.client("acme").await;
    let started = Instant::now();
    // 60 writes pipelined: a bucket of 20, then 20 per second, so the last 40 take 2 s.
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(c.write("log", entries(i, 1, 16)).await.expect("write"));
    }
    let mut acked = Vec::new();
    while acked.len() < ids.len() {
        match c.recv().await.expect("the connection stays open") {
            RelayMsg::Ack {
                id,
                sequence_numbers,
            } => {
                assert_eq!(id, ids[acked.len()], "Acks in order");
                acked.extend(sequence_numbers);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(
        acked,
        (0..60).collect::<Vec<u64>>(),
        "every write acked once"
    );
    // A lower bound only: the rate limiter guarantees it, however fast the machine.
    assert!(
        elapsed >= Duration::from_millis(1_500),
        "40 writes over the bucket at 20/s took only {elapsed:?}"
    );
    assert!(relay.relay.metrics().throttled.get() >= 1);
    // Still open and served.
    c.ping_pong().await.expect("pong after the throttling");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_tenant_over_its_byte_rate_is_slowed_and_other_tenants_are_not() {
    let relay = TestRelay::start_with(|c| {
        c.limits.bytes_per_second_per_tenant = 10_000;
        c.limits.bytes_per_second_per_connection = 0;
    })
    .await;
    // 60 kB against 10 kB/s: after this write the tenant owes about five seconds.
    let mut heavy = relay.client("heavy").await;
    heavy
        .write_acked("log", entries(1, 1, 60_000))
        .await
        .expect("the write over the rate is let through");
    // Its next write waits unread until the debt is paid.
    let waiting = tokio::spawn(async move {
        heavy
            .write_acked("log", entries(2, 1, 16))
            .await
            .expect("acked once the debt is paid");
        heavy
    });
    // Another tenant is not slowed at all.
    let mut light = relay.client("light").await;
    for i in 0..5 {
        light
            .write_acked("log", entries(10 + i, 1, 1_000))
            .await
            .expect("acked");
    }
    assert!(
        !waiting.is_finished(),
        "the heavy tenant's second write should still be waiting"
    );
    assert!(relay.relay.metrics().throttled.get() >= 1);
    // Slowed, not closed: the write is acked when the debt is paid.
    let mut heavy = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("acked in time")
        .expect("task");
    heavy.ping_pong().await.expect("still open");
    relay.shutdown().await;
}
