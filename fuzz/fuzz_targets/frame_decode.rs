//! Arbitrary bytes as one frame, in both directions: `ClientMsg::decode` (what the relay runs on
//! every frame a client sends) and `RelayMsg::decode` (what the SDK and the viewer run).
//!
//! Properties:
//! - decoding never panics, whatever the bytes;
//! - a decoded message re-encodes to a frame that decodes again (the encoders only write what the
//!   decoders accept), to the same message, and re-encoding that gives the same bytes (the
//!   encoding of a decoded message is a fixed point);
//! - the bytes fields of a decoded message are views into the frame (no copies).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_protocol::{ClientMsg, RelayMsg};

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);

    if let Ok(msg) = ClientMsg::decode(&frame) {
        client_bytes_are_views(&msg, &frame);
        let once = msg.encode();
        let again = match ClientMsg::decode(&Bytes::from(once.clone())) {
            Ok(m) => m,
            Err(e) => panic!("re-encoded ClientMsg does not decode: {e}\n{msg:?}\n{once:02x?}"),
        };
        same_message(&msg, &again);
        assert_eq!(
            again.encode(),
            once,
            "ClientMsg re-encoding is not stable: {msg:?}"
        );
    }

    if let Ok(msg) = RelayMsg::decode(&frame) {
        relay_bytes_are_views(&msg, &frame);
        let once = msg.encode();
        let again = match RelayMsg::decode(&Bytes::from(once.clone())) {
            Ok(m) => m,
            Err(e) => panic!("re-encoded RelayMsg does not decode: {e}\n{msg:?}\n{once:02x?}"),
        };
        same_message(&msg, &again);
        assert_eq!(
            again.encode(),
            once,
            "RelayMsg re-encoding is not stable: {msg:?}"
        );
        assert_eq!(msg.tag(), again.tag());
    }
});

/// `a == b`, except that a message holding a NaN id is not equal even to itself (`JsNumber` is an
/// f64); for those, the byte comparison of the re-encodings is the check.
#[allow(clippy::eq_op)]
fn same_message<M: PartialEq + std::fmt::Debug>(a: &M, b: &M) {
    if a == a {
        assert_eq!(
            a, b,
            "the re-encoded message decodes to a different message"
        );
    }
}

fn is_view(field: &Bytes, frame: &Bytes) -> bool {
    let f = frame.as_ptr() as usize;
    let p = field.as_ptr() as usize;
    field.is_empty() || (p >= f && p + field.len() <= f + frame.len())
}

fn client_bytes_are_views(msg: &ClientMsg, frame: &Bytes) {
    match msg {
        ClientMsg::WriteEntries(w) => {
            assert!(is_view(&w.iv, frame));
            for e in &w.entries {
                assert!(is_view(&e.entry_id, frame));
                assert!(is_view(&e.encrypted_entry, frame));
            }
        }
        ClientMsg::Chunked(c) => assert!(is_view(&c.data, frame)),
        _ => {}
    }
}

fn relay_bytes_are_views(msg: &RelayMsg, frame: &Bytes) {
    match msg {
        RelayMsg::Hello { remote_id } => assert!(is_view(remote_id, frame)),
        RelayMsg::Changes { entries, .. } => {
            for e in entries {
                assert!(is_view(&e.iv, frame));
                assert!(is_view(&e.entry_id, frame));
                assert!(is_view(&e.encrypted_entry, frame));
            }
        }
        RelayMsg::Chunked(c) => assert!(is_view(&c.data, frame)),
        _ => {}
    }
}
