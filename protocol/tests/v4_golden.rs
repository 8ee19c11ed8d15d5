//! The Effect v4 wire format against bytes Effect's own codec wrote (effect@4.1.0; the vectors
//! come from `tests/effect-v4/vectors.mjs`, which the test command reruns to catch a drift).
//! Every vector is decoded to its value, and every value encodes to Effect's bytes (except
//! where Effect chose back-references, which a writer may leave out: those decode only).

use serde_json::{json, Value};
use wharf_protocol::v4::eventlog::{self, ExitValue};
use wharf_protocol::v4::{
    auth_payload, verify_auth, Authenticate, BatchEntry, ChangesRequest, Chunked, EncryptedBatch,
    ErrorCode, Exit, FrameBuffer, FromClient, FromServer, HelloResponse, ProtocolError,
    RemoteBatch, Request, RequestId, StreamElement, V4Identity, WriteAck, WriteEntries,
};

const VECTORS: &str = include_str!("vectors/effect-v4.json");

struct Vector {
    schema: String,
    name: String,
    value: Value,
    bytes: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let doc: Value = serde_json::from_str(VECTORS).expect("vectors parse");
    doc["vectors"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| Vector {
            schema: v["schema"]
                .as_str()
                .expect("the vector holds it")
                .to_owned(),
            name: v["name"].as_str().expect("the vector holds it").to_owned(),
            value: v["value"].clone(),
            bytes: hex::decode(v["hex"].as_str().expect("the vector holds it"))
                .expect("the vector holds it"),
        })
        .collect()
}

fn h(b: &[u8]) -> Value {
    Value::String(hex::encode(b))
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex")).expect("hex")
}

fn id16(v: &Value) -> [u8; 16] {
    unhex(v).try_into().expect("16 bytes")
}

/// The body of an envelope frame (after its length).
fn body(frame: &[u8]) -> &[u8] {
    let mut buf = FrameBuffer::new(1 << 24);
    buf.push(frame);
    let body = buf
        .next_frame()
        .expect("the vector holds it")
        .expect("one whole frame");
    let start = frame.len() - body.len();
    &frame[start..]
}

fn request_id(v: &Value) -> RequestId {
    match v {
        Value::String(s) => RequestId::Str(s.clone()),
        Value::Number(n) if n.is_i64() => RequestId::Int(n.as_i64().expect("the vector holds it")),
        Value::Number(n) => {
            let f = n.as_f64().expect("the vector holds it");
            // The vectors' non-integers are short decimals (1.5).
            RequestId::Decimal {
                mantissa: (f * 10.0).round() as i64,
                scale: 1,
            }
        }
        _ => panic!("a request id"),
    }
}

fn from_client_value(v: &Value) -> FromClient {
    match v["_tag"].as_str().expect("the vector holds it") {
        "Ack" => FromClient::Ack(request_id(&v["requestId"])),
        "Interrupt" => FromClient::Interrupt(request_id(&v["requestId"])),
        "Ping" => FromClient::Ping,
        "Eof" => FromClient::Eof,
        "Request" => FromClient::Request(Request {
            id: request_id(&v["id"]),
            tag: v["tag"].as_str().expect("the vector holds it").to_owned(),
            payload: unhex(&v["payload"]).into(),
            headers: v["headers"]
                .as_array()
                .expect("the vector holds it")
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().expect("the vector holds it").to_owned(),
                        p[1].as_str().expect("the vector holds it").to_owned(),
                    )
                })
                .collect(),
            options: wharf_protocol::v4::envelope::RequestOptions {
                span_id: v["spanId"].as_str().map(str::to_owned),
                trace_id: v["traceId"].as_str().map(str::to_owned),
                sampled: v["sampled"].as_bool(),
                is_notification: v["isNotification"].as_bool().unwrap_or(false),
                discard: v["discard"].as_bool().unwrap_or(false),
            },
        }),
        other => panic!("{other}"),
    }
}

fn from_server_value(v: &Value) -> FromServer {
    match v["_tag"].as_str().expect("the vector holds it") {
        "Exit" => FromServer::Exit {
            request_id: request_id(&v["requestId"]),
            exit: unhex(&v["exit"]).into(),
        },
        "Chunk" => FromServer::Chunk {
            request_id: request_id(&v["requestId"]),
            values: unhex(&v["values"]).into(),
        },
        "Defect" => FromServer::Defect(unhex(&v["defect"]).into()),
        "Pong" => FromServer::Pong,
        other => panic!("{other}"),
    }
}

fn error_value(v: &Value) -> ProtocolError {
    let code = match v["code"].as_str().expect("the vector holds it") {
        "Unauthorized" => ErrorCode::Unauthorized,
        "Forbidden" => ErrorCode::Forbidden,
        "NotFound" => ErrorCode::NotFound,
        "InvalidRequest" => ErrorCode::InvalidRequest,
        _ => ErrorCode::InternalServerError,
    };
    ProtocolError {
        request_tag: v["requestTag"]
            .as_str()
            .expect("the vector holds it")
            .to_owned(),
        public_key: v["publicKey"].as_str().map(str::to_owned),
        store_id: v["storeId"].as_str().map(str::to_owned),
        code,
        message: v["message"]
            .as_str()
            .expect("the vector holds it")
            .to_owned(),
    }
}

fn exit_value<T>(v: &Value, success: impl Fn(&Value) -> T) -> Exit<T> {
    if let Some(s) = v.get("success") {
        Exit::Success(success(s))
    } else if let Some(e) = v.get("failure") {
        Exit::Failure(error_value(e))
    } else if let Some(d) = v.get("die") {
        Exit::Die(d.to_string())
    } else {
        Exit::Interrupt(v["interrupt"].as_f64())
    }
}

fn batch_value(v: &Value) -> EncryptedBatch {
    EncryptedBatch {
        entry_ids: v["entryIds"]
            .as_array()
            .expect("the vector holds it")
            .iter()
            .map(id16)
            .collect(),
        iv: unhex(&v["iv"]).into(),
        encrypted_batch: unhex(&v["encryptedBatch"]).into(),
    }
}

fn chunked_value(v: &Value) -> Chunked {
    Chunked {
        id: v["id"].as_i64().expect("the vector holds it"),
        index: v["part"][0].as_u64().expect("the vector holds it"),
        total: v["part"][1].as_u64().expect("the vector holds it"),
        data: unhex(&v["data"]).into(),
    }
}

fn acks_value(v: &Value) -> Vec<WriteAck> {
    v.as_array()
        .expect("the vector holds it")
        .iter()
        .map(|a| WriteAck {
            entry_id: id16(&a["entryId"]),
            sequence: a["sequence"].as_u64().expect("the vector holds it"),
        })
        .collect()
}

fn hello_value(v: &Value) -> HelloResponse {
    HelloResponse {
        remote_id: id16(&v["remoteId"]),
        challenge: unhex(&v["challenge"]),
        first_sequence: v["firstSequence"].as_u64(),
        compaction: v["compaction"].as_bool().unwrap_or(false),
    }
}

/// Encodes `value` to the vector's bytes, and decodes the bytes back to `value`.
fn both<T: PartialEq + std::fmt::Debug>(
    v: &Vector,
    value: T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> T,
) {
    assert_eq!(
        hex::encode(encode(&value)),
        hex::encode(&v.bytes),
        "{}: {}: Rust writes other bytes than Effect",
        v.schema,
        v.name
    );
    assert_eq!(
        decode(&v.bytes),
        value,
        "{}: {}: reads back",
        v.schema,
        v.name
    );
}

fn exit_both<T: ExitValue + PartialEq + std::fmt::Debug>(v: &Vector, value: Exit<T>) {
    both(
        v,
        value,
        |e| e.encode(),
        |b| Exit::<T>::decode(b).expect("the vector holds it"),
    );
}

#[test]
fn every_vector_of_effect_4_1_0_encodes_and_decodes_byte_for_byte() {
    let all = vectors();
    assert!(all.len() >= 60, "the vectors are all there");
    for v in &all {
        let val = &v.value;
        match v.schema.as_str() {
            "FromClient" => both(
                v,
                from_client_value(val),
                |m| m.encode().to_vec(),
                |b| FromClient::decode(body(b)).expect("the vector holds it"),
            ),
            "FromServer" => both(
                v,
                from_server_value(val),
                |m| m.encode().to_vec(),
                |b| FromServer::decode(body(b)).expect("the vector holds it"),
            ),
            "Defect" => both(
                v,
                val.as_str().expect("the vector holds it").to_owned(),
                |s| eventlog::encode_defect(s),
                |b| {
                    let json = eventlog::decode_defect(b).expect("the vector holds it");
                    serde_json::from_str::<String>(&json).expect("the vector holds it")
                },
            ),
            "HelloPayload" => both(
                v,
                (),
                |_| eventlog::encode_void(),
                |b| eventlog::decode_void(b).expect("the vector holds it"),
            ),
            "HelloExit" => exit_both(v, exit_value(val, hello_value)),
            "Authenticate" => both(
                v,
                Authenticate {
                    public_key: val["publicKey"]
                        .as_str()
                        .expect("the vector holds it")
                        .to_owned(),
                    signing_public_key: unhex(&val["signingPublicKey"]),
                    signature: unhex(&val["signature"]),
                },
                Authenticate::encode,
                |b| Authenticate::decode(b).expect("the vector holds it"),
            ),
            "AuthenticateExit" | "ChangesExit" => exit_both(v, exit_value(val, |_| ())),
            "AuthPayload" => assert_eq!(
                auth_payload(
                    &id16(&val["remoteId"]),
                    &unhex(&val["challenge"]),
                    val["publicKey"].as_str().expect("the vector holds it"),
                    &unhex(&val["signingPublicKey"]),
                ),
                v.bytes,
                "{}",
                v.name
            ),
            "WriteEntries" => both(
                v,
                WriteEntries {
                    public_key: val["publicKey"]
                        .as_str()
                        .expect("the vector holds it")
                        .to_owned(),
                    store_id: val["storeId"]
                        .as_str()
                        .expect("the vector holds it")
                        .to_owned(),
                    batches: val["batches"]
                        .as_array()
                        .expect("the vector holds it")
                        .iter()
                        .map(batch_value)
                        .collect(),
                },
                WriteEntries::encode,
                |b| WriteEntries::decode(b).expect("the vector holds it"),
            ),
            "WriteSinglePayload" => both(
                v,
                unhex(&val["data"]),
                |d| eventlog::encode_write_single(d),
                |b| {
                    eventlog::decode_write_single(b)
                        .expect("the vector holds it")
                        .to_vec()
                },
            ),
            "WriteChunkedPayload" => both(v, chunked_value(val), Chunked::encode_payload, |b| {
                Chunked::decode_payload(b).expect("the vector holds it")
            }),
            "WriteExit" => exit_both(v, exit_value(val, acks_value)),
            "ChangesPayload" => both(
                v,
                ChangesRequest {
                    public_key: val["publicKey"]
                        .as_str()
                        .expect("the vector holds it")
                        .to_owned(),
                    store_id: val["storeId"]
                        .as_str()
                        .expect("the vector holds it")
                        .to_owned(),
                    start_sequence: val["startSequence"].as_u64().expect("the vector holds it"),
                },
                ChangesRequest::encode,
                |b| ChangesRequest::decode(b).expect("the vector holds it"),
            ),
            "RemoteBatches" => both(
                v,
                val.as_array()
                    .expect("the vector holds it")
                    .iter()
                    .map(|b| RemoteBatch {
                        sequence: b["sequence"].as_u64().expect("the vector holds it"),
                        batch: batch_value(b),
                    })
                    .collect::<Vec<_>>(),
                |b| RemoteBatch::encode_all(b),
                |b| RemoteBatch::decode_all(b).expect("the vector holds it"),
            ),
            "ChangesChunk" => both(
                v,
                val.as_array()
                    .expect("the vector holds it")
                    .iter()
                    .map(|e| match e["_tag"].as_str().expect("the vector holds it") {
                        "Single" => StreamElement::Single(unhex(&e["data"]).into()),
                        _ => StreamElement::Chunked(chunked_value(e)),
                    })
                    .collect::<Vec<_>>(),
                |e| StreamElement::encode_all(e),
                |b| StreamElement::decode_all(b).expect("the vector holds it"),
            ),
            "BatchEntries" => {
                let entries: Vec<BatchEntry> = val
                    .as_array()
                    .expect("the vector holds it")
                    .iter()
                    .map(|e| BatchEntry {
                        id: id16(&e["id"]),
                        event: e["event"].as_str().expect("the vector holds it").to_owned(),
                        primary_key: e["primaryKey"]
                            .as_str()
                            .expect("the vector holds it")
                            .to_owned(),
                        payload: unhex(&e["payload"]).into(),
                    })
                    .collect();
                assert_eq!(
                    BatchEntry::decode_all(&v.bytes).expect("the vector holds it"),
                    entries,
                    "{}",
                    v.name
                );
                let ours = BatchEntry::encode_all(&entries);
                assert_eq!(
                    BatchEntry::decode_all(&ours).expect("the vector holds it"),
                    entries,
                    "{}",
                    v.name
                );
                // Effect writes repeats as back-references; without repeats the bytes agree.
                let names: std::collections::HashSet<_> =
                    entries.iter().map(|e| (&e.event, &e.primary_key)).collect();
                if names.len() == entries.len() {
                    assert_eq!(hex::encode(ours), hex::encode(&v.bytes), "{}", v.name);
                }
            }
            "Payload" => {
                let ours = wharf_protocol::v4::payload::encode(val).expect("encodes");
                assert_eq!(hex::encode(ours), hex::encode(&v.bytes), "{}", v.name);
                let read =
                    wharf_protocol::v4::payload::decode(&v.bytes, &["steps"]).expect("decodes");
                assert_eq!(&read, val, "{}", v.name);
            }
            "Identity" => identity(v),
            other => panic!("a vector of unknown schema {other}"),
        }
    }
}

fn identity(v: &Vector) {
    let val = &v.value;
    let id = V4Identity::new(
        val["publicKey"]
            .as_str()
            .expect("the vector holds it")
            .to_owned(),
        unhex(&val["secret"])
            .try_into()
            .expect("the vector holds it"),
    );
    assert_eq!(h(&id.signing_public_key()), val["signingPublicKey"]);
    let remote = id16(&val["remoteId"]);
    let challenge = unhex(&val["challenge"]);
    let signature = id.sign_challenge(&remote, &challenge);
    assert_eq!(h(&signature), val["signature"], "Ed25519 is deterministic");
    verify_auth(
        &remote,
        &challenge,
        &id.public_key,
        &id.signing_public_key(),
        &signature,
    )
    .expect("verifies");
    // Another challenge, public key or remote id does not verify.
    let mut other = challenge.clone();
    other[0] ^= 1;
    assert!(verify_auth(
        &remote,
        &other,
        &id.public_key,
        &id.signing_public_key(),
        &signature
    )
    .is_err());
    assert!(verify_auth(
        &remote,
        &challenge,
        "someone-else",
        &id.signing_public_key(),
        &signature
    )
    .is_err());

    let store = val["storeId"].as_str().expect("the vector holds it");
    let ids: Vec<[u8; 16]> = val["entryIds"]
        .as_array()
        .expect("the vector holds it")
        .iter()
        .map(id16)
        .collect();
    let iv: [u8; 12] = unhex(&val["iv"]).try_into().expect("the vector holds it");
    let plaintext = unhex(&val["plaintext"]);
    assert_eq!(
        hex::encode(
            id.encrypt_batch(store, &ids, &iv, &plaintext)
                .expect("the vector holds it")
        ),
        hex::encode(&v.bytes)
    );
    assert_eq!(
        id.decrypt_batch(store, &ids, &iv, &v.bytes)
            .expect("the vector holds it"),
        plaintext
    );
    // The store id and the entry ids are authenticated.
    assert!(id.decrypt_batch("other", &ids, &iv, &v.bytes).is_err());
    assert!(id.decrypt_batch(store, &ids[..2], &iv, &v.bytes).is_err());
}

#[test]
fn frames_split_and_joined_anyhow_decode() {
    let ping = FromClient::Ping.encode();
    let ack = FromClient::Ack(RequestId::Int(9)).encode();
    let mut stream = ping.to_vec();
    stream.extend_from_slice(&ack);
    // Byte by byte, and all at once.
    for step in [1, stream.len()] {
        let mut buf = FrameBuffer::new(1024);
        let mut got = Vec::new();
        for piece in stream.chunks(step) {
            buf.push(piece);
            while let Some(frame) = buf.next_frame().expect("the vector holds it") {
                got.push(FromClient::decode(&frame).expect("the vector holds it"));
            }
        }
        assert_eq!(
            got,
            vec![FromClient::Ping, FromClient::Ack(RequestId::Int(9))]
        );
        assert_eq!(buf.pending(), 0);
    }
}

#[test]
fn bad_bytes_get_errors_not_panics() {
    // A frame over the limit is refused from its length alone.
    let mut buf = FrameBuffer::new(16);
    buf.push(&[0x80, 0x01]);
    assert!(buf.next_frame().is_err());
    // An empty frame.
    let mut buf = FrameBuffer::new(16);
    buf.push(&[0x00]);
    assert!(buf.next_frame().is_err());
    // Another mode, another fingerprint, an unknown position, a server's message.
    assert!(FromClient::decode(&[0x20, 3]).is_err());
    assert!(FromClient::decode(&[0x21, 0, 0, 0, 0, 0, 0, 0, 0, 3]).is_err());
    let mut unknown = FromClient::Ping.encode()[1..].to_vec();
    *unknown.last_mut().expect("the vector holds it") = 9;
    assert!(FromClient::decode(&unknown).is_err());
    assert!(FromClient::decode(&FromServer::Pong.encode()[1..]).is_err());
    // Trailing bytes after a Ping.
    let mut trailing = FromClient::Ping.encode()[1..].to_vec();
    trailing.push(0);
    assert!(FromClient::decode(&trailing).is_err());
    // Wrong field types: a Changes payload whose startSequence is a string.
    let wrong = json!({"publicKey": "p"});
    assert!(ChangesRequest::decode(wrong.to_string().as_bytes()).is_err());
    let mut payload = ChangesRequest {
        public_key: "p".into(),
        store_id: "s".into(),
        start_sequence: 3,
    }
    .encode();
    payload.truncate(payload.len() - 1);
    assert!(ChangesRequest::decode(&payload).is_err());
    // A chunk part whose index is not below its total.
    let part = Chunked {
        id: 1,
        index: 2,
        total: 2,
        data: bytes::Bytes::new(),
    }
    .encode_payload();
    assert!(Chunked::decode_payload(&part).is_err());
    // Entry ids of the wrong size, and a batch without entries.
    let mut we = WriteEntries {
        public_key: "p".into(),
        store_id: "s".into(),
        batches: vec![EncryptedBatch {
            entry_ids: vec![],
            iv: vec![0; 12].into(),
            encrypted_batch: vec![1].into(),
        }],
    };
    assert!(WriteEntries::decode(&we.encode()).is_err());
    we.batches[0].entry_ids = vec![[7; 16]];
    assert_eq!(
        WriteEntries::decode(&we.encode()).expect("the vector holds it"),
        we
    );
}
