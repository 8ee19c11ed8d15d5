//! Bad input closes only the offending connection, with an error code and a reason; every
//! other connection carries on and nothing stored is touched.

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wharf_protocol::{Chunk, ClientMsg, ErrorCode, JsNumber, RelayMsg, EXTENSION_SUBPROTOCOL};
use wharf_tests::{assert_dense, entries, Client, TestRelay};

const PK: &str = "log";

enum Bad {
    Frame(Bytes),
    Text(&'static str),
    Messages(Vec<ClientMsg>),
}

fn ping_with(number: &[u8]) -> Bytes {
    let mut b = vec![0xde, 0, 2, 0xa2, b'i', b'd'];
    b.extend_from_slice(number);
    b.extend_from_slice(&[0xa4, b'_', b't', b'a', b'g', 0xa4, b'P', b'i', b'n', b'g']);
    Bytes::from(b)
}

fn chunk(id: u32, index: u32, total: u32, len: usize) -> ClientMsg {
    ClientMsg::Chunked(Chunk {
        id: JsNumber::from(id),
        index,
        total,
        data: Bytes::from(vec![0; len]),
    })
}

fn cases() -> Vec<(&'static str, Bad, u16)> {
    let ping = ping_with(&[1]);
    vec![
        (
            "undecodable 0xc1",
            Bad::Frame(Bytes::from_static(&[0xc1])),
            1002,
        ),
        ("truncated", Bad::Frame(ping.slice(..ping.len() - 3)), 1002),
        (
            "trailing bytes",
            Bad::Frame(Bytes::from([&ping[..], &[0][..]].concat())),
            1002,
        ),
        ("empty frame", Bad::Frame(Bytes::new()), 1002),
        (
            "unknown tag",
            Bad::Frame(Bytes::from_static(b"\x82\xa2id\x01\xa4_tag\xa4Pang")),
            1002,
        ),
        (
            "a relay-side tag",
            Bad::Frame(Bytes::from_static(b"\x82\xa2id\x01\xa4_tag\xa4Pong")),
            1002,
        ),
        (
            "uint64 number",
            Bad::Frame(ping_with(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 1])),
            1002,
        ),
        (
            "int64 number",
            Bad::Frame(ping_with(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 1])),
            1002,
        ),
        ("text frame", Bad::Text("hello"), 1003),
        (
            "oversize frame",
            Bad::Frame(Bytes::from(vec![0u8; 300 * 1024])),
            1009,
        ),
        (
            "publicKey over the limit",
            Bad::Messages(vec![ClientMsg::RequestChanges {
                public_key: "k".repeat(300),
                start_sequence: 0,
                snapshot: false,
            }]),
            1008,
        ),
        (
            "chunk index beyond total",
            Bad::Messages(vec![chunk(1, 3, 3, 10)]),
            1008,
        ),
        (
            "chunk flood (open ids)",
            Bad::Messages((0..10).map(|i| chunk(i, 0, 2, 10)).collect()),
            1008,
        ),
        (
            "chunk flood (bytes)",
            Bad::Messages((0..40).map(|i| chunk(1, i, 100, 200_000)).collect()),
            1008,
        ),
        (
            "chunked message inside a chunked message",
            Bad::Messages(vec![chunk_of(&ClientMsg::Chunked(Chunk {
                id: JsNumber::from(5u32),
                index: 0,
                total: 2,
                data: Bytes::from_static(b"x"),
            }))]),
            1002,
        ),
        (
            "too many entries in one write",
            Bad::Messages(vec![ClientMsg::WriteEntries(
                wharf_protocol::WriteEntries {
                    public_key: PK.into(),
                    id: JsNumber::from(0u32),
                    iv: Bytes::from_static(&[0; 12]),
                    entries: entries(1, 101, 1),
                },
            )]),
            1008,
        ),
    ]
}

/// A message wrapped as a one-part ChunkedMessage.
fn chunk_of(msg: &ClientMsg) -> ClientMsg {
    ClientMsg::Chunked(Chunk {
        id: JsNumber::from(77u32),
        index: 0,
        total: 1,
        data: Bytes::from(msg.encode()),
    })
}

async fn send_bad(c: &mut Client, bad: &Bad) {
    match bad {
        Bad::Frame(f) => c.send_raw(f.clone()).await.expect("send"),
        Bad::Text(t) => c.ws.send(Message::text(*t)).await.expect("send"),
        Bad::Messages(ms) => {
            for m in ms {
                // The relay may close before the last one; that is the point.
                if c.send(m).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn tight(config: &mut wharf_relay::Config) {
    config.max_frame_bytes = 256 * 1024;
    config.max_message_bytes = 2 * 1024 * 1024;
    config.max_open_chunked = 4;
    config.max_entries_per_write = 100;
}

#[tokio::test]
async fn each_bad_input_closes_only_its_own_connection() {
    let relay = TestRelay::start_with(tight).await;
    let mut bystander = relay.client("acme").await;
    bystander.subscribe(PK, 0).await.expect("subscribe");
    let mut other_tenant = relay.client("other").await;
    let mut written = 0u64;
    for (i, (name, bad, code)) in cases().into_iter().enumerate() {
        let mut victim = relay.client("acme").await;
        send_bad(&mut victim, &bad).await;
        let closed = victim
            .closed()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(closed.code, Some(code), "{name}: {closed:?}");
        assert!(
            !closed.reason.is_empty(),
            "{name}: the close carries a reason"
        );
        // Everyone else carries on: writes, acks, live delivery, other tenants.
        let seqs = bystander
            .write_acked(PK, entries(i as u32, 1, 16))
            .await
            .unwrap_or_else(|e| panic!("after {name}: {e}"));
        assert_eq!(seqs, vec![written]);
        written += 1;
        other_tenant
            .ping_pong()
            .await
            .unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
    let mut reader = relay.client("acme").await;
    reader.subscribe(PK, 0).await.expect("subscribe");
    let stored = reader
        .collect(PK, written as usize)
        .await
        .expect("stored entries intact");
    assert_dense(&stored, 0);
    assert!(
        reader.ping_pong().await.expect("pong").is_empty(),
        "nothing else was stored"
    );
}

#[tokio::test]
async fn extension_clients_are_told_why() {
    let relay = TestRelay::start_with(tight).await;
    let mut c = Client::connect_with_protocol(&relay.url("acme"), Some(EXTENSION_SUBPROTOCOL))
        .await
        .expect("connect");
    c.send_raw(Bytes::from_static(&[0xc1])).await.expect("send");
    match c.recv().await.expect("error message") {
        RelayMsg::Error { code, message } => {
            assert_eq!(code, ErrorCode::InvalidMessage);
            assert!(message.contains("malformed"), "{message}");
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(c.closed().await.expect("close").code, Some(1002));
}

#[tokio::test]
async fn plain_clients_never_get_extension_messages() {
    let relay = TestRelay::start_with(tight).await;
    let mut c = relay.client("acme").await;
    c.send_raw(Bytes::from_static(&[0xc1])).await.expect("send");
    // The next frame is the close itself, not an Error message.
    let frame = futures_util::StreamExt::next(&mut c.ws)
        .await
        .expect("frame")
        .expect("ok");
    assert!(matches!(frame, Message::Close(Some(_))), "{frame:?}");
}

#[tokio::test]
async fn a_repeated_chunk_is_ignored_not_fatal() {
    let relay = TestRelay::start().await;
    let mut c = relay.client("acme").await;
    let write = ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: PK.into(),
        id: JsNumber::from(0u32),
        iv: Bytes::from_static(&[1; 12]),
        entries: entries(1, 2, 400_000),
    });
    let encoded = Bytes::from(write.encode());
    let parts = wharf_protocol::split_into_chunks(JsNumber::from(0u32), &encoded).expect("chunked");
    // Out of order, with the first part twice.
    for i in [1, 0, 0] {
        c.send(&ClientMsg::Chunked(parts[i].clone()))
            .await
            .expect("send");
    }
    match c.recv().await.expect("ack") {
        RelayMsg::Ack {
            sequence_numbers, ..
        } => assert_eq!(sequence_numbers, vec![0, 1]),
        other => panic!("expected Ack, got {other:?}"),
    }
}
