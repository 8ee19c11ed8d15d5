//! Round trips: every message, any content, decodes to itself; the decoder never panics.

use bytes::Bytes;
use proptest::prelude::*;
use wharf_protocol::{
    split_into_chunks, Chunk, ClientMsg, EncryptedEntry, ErrorCode, JsNumber, Reassembler,
    ReassemblerLimits, RelayMsg, RemoteEntry, WriteEntries,
};

const MAX_SEQ: u64 = (1 << 53) - 1;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn js_number() -> impl Strategy<Value = JsNumber> {
    prop_oneof![
        any::<u32>().prop_map(JsNumber::from),
        any::<i32>().prop_map(|v| JsNumber(f64::from(v))),
        (0..MAX_SEQ).prop_map(JsNumber::from),
        any::<f64>()
            .prop_filter("NaN never equals itself", |v| !v.is_nan())
            .prop_map(JsNumber),
    ]
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (js_number(), any::<u32>(), any::<u32>(), bytes(300)).prop_map(|(id, index, total, data)| {
        Chunk {
            id,
            index,
            total,
            data,
        }
    })
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    let entry = (bytes(20), bytes(300)).prop_map(|(entry_id, encrypted_entry)| EncryptedEntry {
        entry_id,
        encrypted_entry,
    });
    prop_oneof![
        (
            ".{0,80}",
            js_number(),
            bytes(24),
            prop::collection::vec(entry, 0..20)
        )
            .prop_map(|(public_key, id, iv, entries)| {
                ClientMsg::WriteEntries(WriteEntries {
                    public_key,
                    id,
                    iv,
                    entries,
                })
            }),
        (".{0,300}", 0..MAX_SEQ).prop_map(|(public_key, start_sequence)| {
            ClientMsg::RequestChanges {
                public_key,
                start_sequence,
                snapshot: false,
            }
        }),
        ".{0,40}".prop_map(|public_key| ClientMsg::StopChanges { public_key }),
        chunk().prop_map(ClientMsg::Chunked),
        js_number().prop_map(|id| ClientMsg::Ping { id }),
    ]
}

fn relay_msg() -> impl Strategy<Value = RelayMsg> {
    let entry = (0..MAX_SEQ, bytes(24), bytes(20), bytes(300)).prop_map(
        |(sequence, iv, entry_id, encrypted_entry)| RemoteEntry {
            sequence,
            iv,
            entry_id,
            encrypted_entry,
        },
    );
    prop_oneof![
        bytes(20).prop_map(|remote_id| RelayMsg::Hello { remote_id }),
        (js_number(), prop::collection::vec(0..MAX_SEQ, 0..40)).prop_map(
            |(id, sequence_numbers)| RelayMsg::Ack {
                id,
                sequence_numbers
            }
        ),
        (".{0,80}", prop::collection::vec(entry, 0..20)).prop_map(|(public_key, entries)| {
            RelayMsg::Changes {
                public_key,
                entries,
            }
        }),
        chunk().prop_map(RelayMsg::Chunked),
        js_number().prop_map(|id| RelayMsg::Pong { id }),
        (".{0,20}", ".{0,100}").prop_map(|(code, message)| RelayMsg::Error {
            code: ErrorCode::Other(code),
            message
        }),
        (".{0,80}", 0..MAX_SEQ).prop_map(|(public_key, next_sequence)| RelayMsg::CaughtUp {
            public_key,
            next_sequence
        }),
        (".{0,80}", 0..MAX_SEQ).prop_map(|(public_key, next_sequence)| RelayMsg::Head {
            public_key,
            next_sequence
        }),
    ]
}

/// Codes decode to their named variant, so compare through the string.
fn normalise(msg: RelayMsg) -> RelayMsg {
    match msg {
        RelayMsg::Error { code, message } => RelayMsg::Error {
            code: ErrorCode::Other(code.as_str().to_owned()),
            message,
        },
        other => other,
    }
}

proptest! {
    #[test]
    fn client_messages_round_trip(msg in client_msg()) {
        let decoded = ClientMsg::decode(&Bytes::from(msg.encode())).expect("decode");
        prop_assert_eq!(decoded, msg);
    }

    #[test]
    fn relay_messages_round_trip(msg in relay_msg()) {
        let decoded = RelayMsg::decode(&Bytes::from(msg.encode())).expect("decode");
        prop_assert_eq!(normalise(decoded), normalise(msg));
    }

    #[test]
    fn decoders_never_panic(frame in prop::collection::vec(any::<u8>(), 0..200)) {
        let frame = Bytes::from(frame);
        let _ = ClientMsg::decode(&frame);
        let _ = RelayMsg::decode(&frame);
    }

    #[test]
    fn truncations_of_a_valid_frame_are_refused(msg in client_msg(), cut in any::<prop::sample::Index>()) {
        let frame = Bytes::from(msg.encode());
        let at = cut.index(frame.len());
        prop_assert!(ClientMsg::decode(&frame.slice(..at)).is_err());
    }

    #[test]
    fn split_then_reassemble_in_any_order(len in 512_001usize..1_600_000, seed in any::<u64>()) {
        let msg = Bytes::from((0..len).map(|i| (i as u64 ^ seed) as u8).collect::<Vec<u8>>());
        let mut parts = split_into_chunks(JsNumber::from(9u32), &msg).expect("chunked");
        let n = parts.len();
        parts.rotate_left((seed as usize) % n);
        let mut r = Reassembler::new(ReassemblerLimits::default());
        let mut out = None;
        for p in parts {
            // Each part also goes through the wire format.
            let ClientMsg::Chunked(p) = ClientMsg::decode(&Bytes::from(ClientMsg::Chunked(p).encode())).expect("decode") else {
                unreachable!()
            };
            if let Some(whole) = r.push(p, 0).expect("push") {
                out = Some(whole);
            }
        }
        prop_assert_eq!(out, Some(msg));
    }
}
