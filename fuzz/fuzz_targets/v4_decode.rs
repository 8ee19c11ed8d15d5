//! Arbitrary bytes through every Effect v4 decoder the relay runs on what a client sends: the
//! envelope stream (`FrameBuffer`, then `FromClient::decode`), and each RPC payload
//! (`Authenticate`, `ChangesRequest`, `WriteSingle`, `WriteChunked`, `WriteEntries`), plus what
//! the SDK and the viewer read (`FromServer`, exits, stream elements, batches, batch entries).
//!
//! Properties:
//! - decoding never panics and never allocates past the input (the limits are checked first);
//! - what decodes re-encodes to bytes that decode to the same value (the encoders only write
//!   what the decoders accept), and re-encoding that value gives the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::v4::eventlog::{decode_write_single, encode_write_single};
use wharf_protocol::v4::{
    Authenticate, BatchEntry, ChangesRequest, Chunked, Exit, FrameBuffer, FromClient,
    FromServer, HelloResponse, RemoteBatch, StreamElement, WriteAck, WriteEntries,
};

macro_rules! fixed_point {
    ($decode:expr, $encode:expr, $data:expr) => {
        if let Ok(value) = $decode($data) {
            let once = $encode(&value);
            let again = match $decode(&once[..]) {
                Ok(v) => v,
                Err(e) => panic!("re-encoded value does not decode: {e}\n{value:?}"),
            };
            assert_eq!(again, value);
            assert_eq!($encode(&again), once, "re-encoding is not stable");
        }
    };
}

fuzz_target!(|data: &[u8]| {
    // The stream of envelopes, as a WebSocket message brings it.
    let mut frames = FrameBuffer::new(64 * 1024);
    frames.push(data);
    while let Ok(Some(body)) = frames.next_frame() {
        fixed_point!(
            |b: &[u8]| FromClient::decode(b),
            |m: &FromClient| m.encode()[..].to_vec().split_off(prefix(&m.encode())),
            &body[..]
        );
        fixed_point!(
            |b: &[u8]| FromServer::decode(b),
            |m: &FromServer| m.encode()[..].to_vec().split_off(prefix(&m.encode())),
            &body[..]
        );
    }
    fixed_point!(Authenticate::decode, Authenticate::encode, data);
    fixed_point!(ChangesRequest::decode, ChangesRequest::encode, data);
    fixed_point!(
        |b: &[u8]| decode_write_single(b).map(|d| d.to_vec()),
        |d: &Vec<u8>| encode_write_single(d),
        data
    );
    fixed_point!(Chunked::decode_payload, Chunked::encode_payload, data);
    fixed_point!(WriteEntries::decode, WriteEntries::encode, data);
    fixed_point!(RemoteBatch::decode_all, |b: &Vec<RemoteBatch>| RemoteBatch::encode_all(b), data);
    fixed_point!(StreamElement::decode_all, |e: &Vec<StreamElement>| StreamElement::encode_all(e), data);
    fixed_point!(Exit::<HelloResponse>::decode, Exit::encode, data);
    fixed_point!(Exit::<Vec<WriteAck>>::decode, Exit::encode, data);
    fixed_point!(Exit::<()>::decode, Exit::encode, data);
    // A payload read without its schema, and a stored row read back: never a panic.
    let _ = wharf_protocol::v4::payload::decode(data, &["name"]);
    let _ = wharf_protocol::v4::stored::batch_from_row(0, &[], data);
    // Batch entries may come with back-references, which the encoder never writes: decoding
    // is checked, and what the encoder writes decodes to the same entries.
    if let Ok(entries) = BatchEntry::decode_all(data) {
        let ours = BatchEntry::encode_all(&entries);
        assert_eq!(BatchEntry::decode_all(&ours).expect("re-encoded entries decode"), entries);
    }
});

/// The length of an envelope's length prefix.
fn prefix(frame: &[u8]) -> usize {
    frame.iter().position(|b| b & 0x80 == 0).map_or(0, |i| i + 1)
}
