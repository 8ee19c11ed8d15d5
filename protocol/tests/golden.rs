//! Our encoder against the bytes the real Effect v3 encoders produce
//! (`tests/vectors/effect-v3-golden.json`, a copy of the spec's golden file), and our decoder against what they accept.

use bytes::Bytes;
use serde_json::Value;
use wharf_protocol::{
    Chunk, ClientMsg, EncryptedEntry, ErrorCode, JsNumber, RelayMsg, RemoteEntry, WriteEntries,
    WriteSnapshot,
};

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/effect-v3-golden.json"
    );
    let text = std::fs::read_to_string(path).expect("protocol/tests/vectors/effect-v3-golden.json");
    serde_json::from_str(&text).expect("golden json")
}

fn input(g: &Value, name: &str) -> Bytes {
    Bytes::from(hex::decode(g["inputs"][name].as_str().expect(name)).expect("hex"))
}

fn golden_hex(g: &Value, name: &str) -> String {
    g["messages"][name]["hex"].as_str().expect(name).to_owned()
}

fn public_key(g: &Value) -> String {
    g["inputs"]["publicKey"]
        .as_str()
        .expect("publicKey")
        .to_owned()
}

fn relay_messages(g: &Value) -> Vec<(&'static str, RelayMsg)> {
    let entries = |g: &Value| {
        vec![
            RemoteEntry {
                sequence: 0,
                iv: input(g, "iv"),
                entry_id: input(g, "entryId"),
                encrypted_entry: input(g, "encryptedEntry1"),
            },
            RemoteEntry {
                sequence: 1,
                iv: input(g, "iv"),
                entry_id: input(g, "entryId2"),
                encrypted_entry: input(g, "encryptedEntry2"),
            },
        ]
    };
    vec![
        (
            "Hello",
            RelayMsg::Hello {
                remote_id: input(g, "remoteId"),
            },
        ),
        (
            "Ack",
            RelayMsg::Ack {
                id: JsNumber::from(0u32),
                sequence_numbers: vec![0, 1],
            },
        ),
        (
            "Ack_big",
            RelayMsg::Ack {
                id: JsNumber::from(300u32),
                sequence_numbers: vec![127, 128, 70000, 4294967295, 4294967296],
            },
        ),
        (
            "Ack_empty",
            RelayMsg::Ack {
                id: JsNumber::from(7u32),
                sequence_numbers: vec![],
            },
        ),
        (
            "Changes",
            RelayMsg::Changes {
                public_key: public_key(g),
                entries: entries(g),
            },
        ),
        (
            "Pong",
            RelayMsg::Pong {
                id: JsNumber::from(1u32),
            },
        ),
        (
            "ChunkedMessage_response",
            RelayMsg::Chunked(Chunk {
                id: JsNumber::from(0u32),
                index: 1,
                total: 3,
                data: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
            }),
        ),
    ]
}

fn client_messages(g: &Value) -> Vec<(&'static str, ClientMsg)> {
    vec![
        (
            "WriteEntries",
            ClientMsg::WriteEntries(WriteEntries {
                public_key: public_key(g),
                id: JsNumber::from(0u32),
                iv: input(g, "iv"),
                entries: vec![
                    EncryptedEntry {
                        entry_id: input(g, "entryId"),
                        encrypted_entry: input(g, "encryptedEntry1"),
                    },
                    EncryptedEntry {
                        entry_id: input(g, "entryId2"),
                        encrypted_entry: input(g, "encryptedEntry2"),
                    },
                ],
            }),
        ),
        (
            "RequestChanges",
            ClientMsg::RequestChanges {
                public_key: public_key(g),
                start_sequence: 0,
                snapshot: false,
            },
        ),
        (
            "RequestChanges_42",
            ClientMsg::RequestChanges {
                public_key: public_key(g),
                start_sequence: 42,
                snapshot: false,
            },
        ),
        (
            "StopChanges",
            ClientMsg::StopChanges {
                public_key: public_key(g),
            },
        ),
        (
            "Ping",
            ClientMsg::Ping {
                id: JsNumber::from(1u32),
            },
        ),
        (
            "Ping_200",
            ClientMsg::Ping {
                id: JsNumber::from(200u32),
            },
        ),
        (
            "ChunkedMessage_request",
            ClientMsg::Chunked(Chunk {
                id: JsNumber::from(5u32),
                index: 0,
                total: 2,
                data: Bytes::from_static(&[1, 2, 3, 4, 5]),
            }),
        ),
    ]
}

#[test]
fn every_golden_vector_is_covered() {
    let g = golden();
    let mut ours: Vec<&str> = relay_messages(&g).iter().map(|(n, _)| *n).collect();
    ours.extend(client_messages(&g).iter().map(|(n, _)| *n));
    ours.sort_unstable();
    let mut theirs: Vec<&str> = g["messages"]
        .as_object()
        .expect("messages")
        .keys()
        .map(String::as_str)
        .collect();
    theirs.sort_unstable();
    assert_eq!(ours, theirs);
}

#[test]
fn relay_messages_encode_to_golden_bytes_and_decode_back() {
    let g = golden();
    for (name, msg) in relay_messages(&g) {
        assert_eq!(hex::encode(msg.encode()), golden_hex(&g, name), "{name}");
        let frame = Bytes::from(hex::decode(golden_hex(&g, name)).expect("hex"));
        assert_eq!(RelayMsg::decode(&frame).expect(name), msg, "{name}");
        assert!(
            ClientMsg::decode(&frame).is_err() || name.starts_with("Chunked"),
            "{name} is relay-only"
        );
    }
}

#[test]
fn client_messages_encode_to_golden_bytes_and_decode_back() {
    let g = golden();
    for (name, msg) in client_messages(&g) {
        assert_eq!(hex::encode(msg.encode()), golden_hex(&g, name), "{name}");
        let frame = Bytes::from(hex::decode(golden_hex(&g, name)).expect("hex"));
        assert_eq!(ClientMsg::decode(&frame).expect(name), msg, "{name}");
        assert!(
            RelayMsg::decode(&frame).is_err() || name.starts_with("Chunked"),
            "{name} is client-only"
        );
    }
}

// ---- Leniency and strictness, mirroring the wire spec §2.2 -----------------------------------

/// A tiny msgpack builder for hand-made frames.
fn map(entries: &[(&str, Vec<u8>)], header: &str) -> Bytes {
    let mut b = match header {
        "fixmap" => vec![0x80 | entries.len() as u8],
        "map16" => vec![0xde, 0, entries.len() as u8],
        _ => vec![0xdf, 0, 0, 0, entries.len() as u8],
    };
    for (k, v) in entries {
        b.push(0xa0 | k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(v);
    }
    Bytes::from(b)
}

fn s(v: &str) -> Vec<u8> {
    let mut b = vec![0xa0 | v.len() as u8];
    b.extend_from_slice(v.as_bytes());
    b
}

#[test]
fn decoder_accepts_any_map_header_key_order_and_extra_keys() {
    for header in ["fixmap", "map16", "map32"] {
        let frame = map(
            &[
                ("_tag", s("Ping")),
                ("extra", vec![0xc0]),
                ("id", vec![0x05]),
            ],
            header,
        );
        assert_eq!(
            ClientMsg::decode(&frame).expect(header),
            ClientMsg::Ping {
                id: JsNumber::from(5u32)
            }
        );
    }
}

#[test]
fn decoder_accepts_every_number_width_but_64_bit_ints() {
    let ok: &[(&[u8], f64)] = &[
        (&[0x05], 5.0),
        (&[0xcc, 0xc8], 200.0),
        (&[0xcd, 0x01, 0x00], 256.0),
        (&[0xce, 0x00, 0x01, 0x11, 0x70], 70000.0),
        (&[0xd0, 0xdf], -33.0),
        (&[0xd1, 0xff, 0x7f], -129.0),
        (&[0xd2, 0xff, 0xff, 0x7f, 0xff], -32769.0),
        (&[0xca, 0x3f, 0xc0, 0x00, 0x00], 1.5),
        (&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], 1.5),
        (&[0xff], -1.0),
    ];
    for (bytes, want) in ok {
        let frame = map(&[("id", bytes.to_vec()), ("_tag", s("Ping"))], "map16");
        assert_eq!(
            ClientMsg::decode(&frame).expect("number"),
            ClientMsg::Ping {
                id: JsNumber(*want)
            }
        );
    }
    for bad in [
        vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 1],
        vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 1],
    ] {
        let frame = map(&[("id", bad), ("_tag", s("Ping"))], "map16");
        assert!(
            ClientMsg::decode(&frame).is_err(),
            "64-bit ints are BigInts to msgpackr"
        );
    }
}

#[test]
fn decoder_refuses_what_effect_refuses() {
    let g = golden();
    let ping = Bytes::from(hex::decode(golden_hex(&g, "Ping")).expect("hex"));
    let cases: Vec<(&str, Bytes)> = vec![
        ("empty frame", Bytes::new()),
        ("0xc1", Bytes::from_static(&[0xc1])),
        ("truncated", ping.slice(..ping.len() - 2)),
        ("trailing bytes", Bytes::from([&ping[..], &[0x00]].concat())),
        ("two values", Bytes::from([&ping[..], &ping[..]].concat())),
        ("missing key", map(&[("_tag", s("Ping"))], "map16")),
        (
            "nil value",
            map(&[("id", vec![0xc0]), ("_tag", s("Ping"))], "map16"),
        ),
        (
            "str for number",
            map(&[("id", s("1")), ("_tag", s("Ping"))], "map16"),
        ),
        (
            "unknown tag",
            map(&[("id", vec![1]), ("_tag", s("Pang"))], "map16"),
        ),
        (
            "relay tag",
            map(&[("id", vec![1]), ("_tag", s("Pong"))], "map16"),
        ),
        (
            "tag as bin",
            map(
                &[
                    ("id", vec![1]),
                    ("_tag", vec![0xc4, 4, b'P', b'i', b'n', b'g']),
                ],
                "map16",
            ),
        ),
        ("not a map", Bytes::from_static(&[0x92, 0x01, 0x02])),
        (
            "str for bytes",
            map(
                &[
                    ("id", vec![1]),
                    ("part", vec![0x92, 0, 1]),
                    ("data", s("ab")),
                    ("_tag", s("ChunkedMessage")),
                ],
                "map16",
            ),
        ),
        (
            "array for bytes",
            map(
                &[
                    ("id", vec![1]),
                    ("part", vec![0x92, 0, 1]),
                    ("data", vec![0x91, 1]),
                    ("_tag", s("ChunkedMessage")),
                ],
                "map16",
            ),
        ),
        (
            "ext for bytes",
            map(
                &[
                    ("id", vec![1]),
                    ("part", vec![0x92, 0, 1]),
                    ("data", vec![0xd6, 0xff, 0, 0, 0, 1]),
                    ("_tag", s("ChunkedMessage")),
                ],
                "map16",
            ),
        ),
        (
            "part of three",
            map(
                &[
                    ("id", vec![1]),
                    ("part", vec![0x93, 0, 1, 2]),
                    ("data", vec![0xc4, 0]),
                    ("_tag", s("ChunkedMessage")),
                ],
                "map16",
            ),
        ),
        (
            "part of one",
            map(
                &[
                    ("id", vec![1]),
                    ("part", vec![0x91, 0]),
                    ("data", vec![0xc4, 0]),
                    ("_tag", s("ChunkedMessage")),
                ],
                "map16",
            ),
        ),
    ];
    for (what, frame) in cases {
        assert!(ClientMsg::decode(&frame).is_err(), "{what} must be refused");
    }
}

#[test]
fn decoded_bytes_share_the_frame() {
    let g = golden();
    let frame = Bytes::from(hex::decode(golden_hex(&g, "WriteEntries")).expect("hex"));
    let ClientMsg::WriteEntries(w) = ClientMsg::decode(&frame).expect("decode") else {
        panic!("not a WriteEntries");
    };
    let inside = |b: &Bytes| {
        let start = frame.as_ptr() as usize;
        let p = b.as_ptr() as usize;
        p >= start && p + b.len() <= start + frame.len()
    };
    assert!(inside(&w.iv) && w.entries.iter().all(|e| inside(&e.encrypted_entry)));
}

#[test]
fn start_sequence_is_read_like_the_reference() {
    for (bytes, want) in [
        (vec![0x2a], 42u64),
        (vec![0xff], 0),
        (vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], 2),
    ] {
        let frame = map(
            &[
                ("publicKey", s("pk")),
                ("startSequence", bytes),
                ("_tag", s("RequestChanges")),
            ],
            "fixmap",
        );
        assert_eq!(
            ClientMsg::decode(&frame).expect("decode"),
            ClientMsg::RequestChanges {
                public_key: "pk".into(),
                start_sequence: want,
                snapshot: false,
            }
        );
    }
}

#[test]
fn extension_messages_round_trip() {
    for msg in [
        RelayMsg::Error {
            code: wharf_protocol::ErrorCode::LimitExceeded,
            message: "too big".into(),
        },
        RelayMsg::Error {
            code: wharf_protocol::ErrorCode::Other("future_code".into()),
            message: String::new(),
        },
        RelayMsg::CaughtUp {
            public_key: "pk".into(),
            next_sequence: 5_000_000_000,
        },
        RelayMsg::Head {
            public_key: "pk".into(),
            next_sequence: 7,
        },
    ] {
        assert!(msg.is_extension());
        assert_eq!(
            RelayMsg::decode(&Bytes::from(msg.encode())).expect("decode"),
            msg
        );
    }
}

// ---- wharf.v1 snapshot and retention messages: exact bytes (docs/protocol.md) ----------------

/// The 24-byte iv of the snapshot vectors: 0x00, 0x01, …, 0x17.
fn snapshot_iv() -> Bytes {
    Bytes::from((0u8..24).collect::<Vec<u8>>())
}

/// Hex with the spaces and line breaks used for readability removed.
fn unspace(hex: &str) -> String {
    hex.split_whitespace().collect()
}

/// Each vector was written by hand from the encoding rules (map16 `de 00 NN`, keys as fixstr,
/// fields in schema order, `_tag` last, shortest number and bin headers).
fn extension_client_vectors() -> Vec<(&'static str, ClientMsg, &'static str)> {
    vec![
        (
            "WriteSnapshot",
            ClientMsg::WriteSnapshot(WriteSnapshot {
                public_key: "log-a".into(),
                id: JsNumber::from(7u32),
                sequence: 41,
                iv: snapshot_iv(),
                data: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
            }),
            "de0006 a9 7075626c69634b6579 a5 6c6f672d61 a2 6964 07 a8 73657175656e6365 29
             a2 6976 c418 000102030405060708090a0b0c0d0e0f1011121314151617
             a4 64617461 c404 deadbeef a4 5f746167 ad 5772697465536e617073686f74",
        ),
        (
            "RequestChanges_snapshot",
            ClientMsg::RequestChanges {
                public_key: "log-a".into(),
                start_sequence: 0,
                snapshot: true,
            },
            "de0004 a9 7075626c69634b6579 a5 6c6f672d61 ad 737461727453657175656e6365 00
             a8 736e617073686f74 c3 a4 5f746167 ae 526571756573744368616e676573",
        ),
        (
            "RequestChanges_plain",
            ClientMsg::RequestChanges {
                public_key: "log-a".into(),
                start_sequence: 0,
                snapshot: false,
            },
            "de0003 a9 7075626c69634b6579 a5 6c6f672d61 ad 737461727453657175656e6365 00
             a4 5f746167 ae 526571756573744368616e676573",
        ),
    ]
}

fn extension_relay_vectors() -> Vec<(&'static str, RelayMsg, &'static str)> {
    vec![
        (
            "SnapshotAck",
            RelayMsg::SnapshotAck {
                id: JsNumber::from(7u32),
                sequence: 41,
            },
            "de0003 a2 6964 07 a8 73657175656e6365 29 a4 5f746167 ab 536e617073686f7441636b",
        ),
        (
            "Snapshot",
            RelayMsg::Snapshot {
                public_key: "log-a".into(),
                sequence: 41,
                iv: snapshot_iv(),
                data: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
            },
            "de0005 a9 7075626c69634b6579 a5 6c6f672d61 a8 73657175656e6365 29
             a2 6976 c418 000102030405060708090a0b0c0d0e0f1011121314151617
             a4 64617461 c404 deadbeef a4 5f746167 a8 536e617073686f74",
        ),
        (
            "HistoryStarts",
            RelayMsg::HistoryStarts {
                public_key: "log-a".into(),
                first_sequence: 70000,
            },
            "de0003 a9 7075626c69634b6579 a5 6c6f672d61 ad 666972737453657175656e6365
             ce00011170 a4 5f746167 ad 486973746f7279537461727473",
        ),
    ]
}

#[test]
fn snapshot_and_retention_messages_encode_to_exact_bytes_and_decode_back() {
    for (name, msg, hex) in extension_client_vectors() {
        let want = unspace(hex);
        assert_eq!(hex::encode(msg.encode()), want, "{name}");
        let frame = Bytes::from(hex::decode(&want).expect("hex"));
        assert_eq!(ClientMsg::decode(&frame).expect(name), msg, "{name}");
        assert!(RelayMsg::decode(&frame).is_err(), "{name} is client-only");
    }
    for (name, msg, hex) in extension_relay_vectors() {
        let want = unspace(hex);
        assert_eq!(hex::encode(msg.encode()), want, "{name}");
        let frame = Bytes::from(hex::decode(&want).expect("hex"));
        assert_eq!(RelayMsg::decode(&frame).expect(name), msg, "{name}");
        assert!(msg.is_extension(), "{name} is a wharf.v1 message");
        assert!(ClientMsg::decode(&frame).is_err(), "{name} is relay-only");
    }
}

#[test]
fn request_changes_without_snapshot_is_the_v3_message() {
    let g = golden();
    for (name, start) in [("RequestChanges", 0), ("RequestChanges_42", 42)] {
        let msg = ClientMsg::RequestChanges {
            public_key: public_key(&g),
            start_sequence: start,
            snapshot: false,
        };
        let bytes = msg.encode();
        assert_eq!(hex::encode(&bytes), golden_hex(&g, name), "{name}");
        assert_eq!(&bytes[..3], &[0xde, 0x00, 0x03], "{name}: a 3-key map");
    }
    // `snapshot: false` written explicitly (or any absent/false value) reads as no snapshot.
    let frame = map(
        &[
            ("publicKey", s("pk")),
            ("startSequence", vec![0x05]),
            ("snapshot", vec![0xc2]),
            ("_tag", s("RequestChanges")),
        ],
        "map16",
    );
    assert_eq!(
        ClientMsg::decode(&frame).expect("decode"),
        ClientMsg::RequestChanges {
            public_key: "pk".into(),
            start_sequence: 5,
            snapshot: false,
        }
    );
}

#[test]
fn new_error_codes_round_trip() {
    for (code, wire) in [
        (ErrorCode::QuotaExceeded, "quota_exceeded"),
        (ErrorCode::SnapshotRefused, "snapshot_refused"),
    ] {
        assert_eq!(code.as_str(), wire);
        let msg = RelayMsg::Error {
            code,
            message: "why".into(),
        };
        assert_eq!(
            RelayMsg::decode(&Bytes::from(msg.encode())).expect("decode"),
            msg
        );
    }
}
