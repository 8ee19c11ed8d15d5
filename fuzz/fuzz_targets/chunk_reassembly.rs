//! The receive pipeline, `wharf_protocol::Inbound` (decode, then `ChunkedMessage` reassembly,
//! then decode of the whole), driven by a sequence of frames, with small `ReassemblerLimits`.
//! Runs the same sequence through both directions (`Inbound<ClientMsg>`, `Inbound<RelayMsg>`).
//!
//! Properties:
//! - `push` never panics;
//! - the bytes held (`buffered_bytes`) never exceed `max_bytes`, the open messages never exceed
//!   `max_open`, and everything is freed once `max_age_ms` has passed;
//! - `Inbound` agrees with a bare `Reassembler` fed the same chunks (same result, same bytes);
//! - a message split into parts, pushed in any order (with a repeated part), comes back exactly
//!   as `decode` reads it whole — or as `Nested` / `Decode` when the whole is a chunk / garbage —
//!   unless the limits refuse a part.
//!
//! Input layout (what `fuzz/make-seeds` writes; a missing byte reads as 0):
//!
//! ```text
//! header   max_open = 1 + b0 % 4, max_parts = 1 + b1 % 8,
//!          max_bytes = 1 + u16le(b2 b3) % 2048, max_age_ms = 4 * b4
//! then ops, each `op` byte: kind = op & 3, and the clock first advances by op >> 2 ms
//!   0 RAW    len:u16le, frame[len]                      push arbitrary bytes as a frame
//!   1 CHUNK  id:u8, index:u8, total:u8, len:u8, data[len]  push a well-formed ChunkedMessage
//!            (id: see `chunk_id`; total 0xff means u32::MAX)
//!   2 SPLIT  parts:u8, flags:u8, len:u16le, inner[len], order[parts]
//!            split `inner` into 1 + parts % 8 ChunkedMessage parts under a fresh id, push them
//!            in the order chosen by `order`; flags & 1: repeat the first part (other data)
//!   3 WAIT   t:u8                                        advance the clock by 16 * t ms
//! ```
#![no_main]

use std::collections::HashSet;
use std::fmt::Debug;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_protocol::codec::Incoming;
use wharf_protocol::{
    Chunk, ClientMsg, Inbound, InboundError, JsNumber, Reassembler, ReassemblerLimits, RelayMsg,
};

fuzz_target!(|data: &[u8]| {
    run::<ClientMsg>(data);
    run::<RelayMsg>(data);
});

trait Msg: Incoming + Clone + Debug {
    fn enc(&self) -> Vec<u8>;
}

impl Msg for ClientMsg {
    fn enc(&self) -> Vec<u8> {
        self.encode()
    }
}

impl Msg for RelayMsg {
    fn enc(&self) -> Vec<u8> {
        self.encode()
    }
}

/// Reads the input; a missing byte is 0 and a missing slice is short.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// A chunk id: a few small integers (so parts of different chunks collide), and the numbers
/// whose keys are special (`-0` is `0`, NaN, fractions, negatives, beyond 2^32 and 2^53, ∞).
fn chunk_id(b: u8) -> JsNumber {
    JsNumber(match b {
        0xf0 => -0.0,
        0xf1 => f64::NAN,
        0xf2 => 1.5,
        0xf3 => -1.0,
        0xf4 => 4_294_967_296.0,
        0xf5 => 9_007_199_254_740_993.0,
        0xf6 => f64::INFINITY,
        0xf7 => f64::NEG_INFINITY,
        0xf8 => f64::from_bits(0x7ff8_0000_0000_0001), // another NaN: a different key
        _ => f64::from(b % 8),
    })
}

fn chunk_frame(id: JsNumber, index: u32, total: u32, data: &[u8]) -> Bytes {
    Bytes::from(
        ClientMsg::Chunked(Chunk {
            id,
            index,
            total,
            data: Bytes::copy_from_slice(data),
        })
        .encode(),
    )
}

/// One direction's `Inbound`, checked against a bare `Reassembler` fed the same chunks.
struct Harness<M> {
    limits: ReassemblerLimits,
    inbound: Inbound<M>,
    mirror: Reassembler,
    /// Keys of every chunk id pushed so far, so that SPLIT can pick one never seen.
    seen: HashSet<u64>,
    now: u64,
}

impl<M: Msg> Harness<M> {
    fn push(&mut self, frame: &Bytes) -> Result<Option<M>, InboundError> {
        let got = self.inbound.push(frame, self.now);

        // What it should have been, step by step.
        match M::decode(frame).map(Incoming::into_chunk) {
            Err(_) => assert!(matches!(got, Err(InboundError::Decode(_))), "{got:?}"),
            Ok(Err(msg)) => match &got {
                Ok(Some(m)) => assert_eq!(m.enc(), msg.enc()),
                other => panic!("a single-frame message gave {other:?}"),
            },
            Ok(Ok(chunk)) => {
                self.seen.insert(chunk.id.key());
                match self.mirror.push(chunk, self.now) {
                    Err(e) => match &got {
                        Err(InboundError::Chunk(g)) => assert_eq!(*g, e),
                        other => panic!("the reassembler said {e:?}, Inbound {other:?}"),
                    },
                    Ok(None) => assert!(matches!(got, Ok(None)), "{got:?}"),
                    Ok(Some(whole)) => match (M::decode(&whole).map(Incoming::into_chunk), &got) {
                        (Err(_), Err(InboundError::Decode(_))) => {}
                        (Ok(Ok(_)), Err(InboundError::Nested)) => {}
                        (Ok(Err(msg)), Ok(Some(m))) => assert_eq!(m.enc(), msg.enc()),
                        (want, got) => panic!("reassembled {whole:02x?}: {want:?} but {got:?}"),
                    },
                }
            }
        }

        let buffered = self.inbound.buffered_bytes();
        assert_eq!(buffered, self.mirror.buffered_bytes());
        assert!(
            buffered <= self.limits.max_bytes,
            "{buffered} bytes buffered, limit {}",
            self.limits.max_bytes
        );
        assert!(self.mirror.open_messages() <= self.limits.max_open);
        got
    }

    /// A chunk id no frame has used yet.
    fn fresh_id(&mut self) -> JsNumber {
        let mut n = 1_000_000_000u32;
        while self.seen.contains(&JsNumber::from(n).key()) {
            n += 1;
        }
        let id = JsNumber::from(n);
        self.seen.insert(id.key());
        id
    }

    /// SPLIT: `inner` in `n` parts under a fresh id, pushed in the order `order` picks.
    fn split(&mut self, inner: &[u8], n: usize, repeat_first: bool, order: &[u8]) {
        let id = self.fresh_id();
        let total = n as u32;
        let mut indexes: Vec<usize> = (0..n).collect();
        for (i, &r) in order.iter().enumerate().take(n.saturating_sub(1)) {
            let j = i + usize::from(r) % (n - i);
            indexes.swap(i, j);
        }
        let part = |i: usize| &inner[i * inner.len() / n..(i + 1) * inner.len() / n];

        let mut sent = 0;
        for (k, &i) in indexes.iter().enumerate() {
            let got = self.push(&chunk_frame(id, i as u32, total, part(i)));
            sent += 1;
            let last = k + 1 == n;
            if !last {
                match got {
                    Ok(None) => {}
                    Err(InboundError::Chunk(_)) => return, // a limit refused it: fine
                    other => panic!("part {k} of {n} gave {other:?}"),
                }
                if repeat_first && k == 0 {
                    // A part already received is ignored, whatever it holds.
                    let other: Vec<u8> = part(i).iter().map(|b| !b).collect();
                    match self.push(&chunk_frame(id, i as u32, total, &other)) {
                        Ok(None) | Err(InboundError::Chunk(_)) => {}
                        other => panic!("a repeated part gave {other:?}"),
                    }
                }
                continue;
            }
            let whole = Bytes::copy_from_slice(inner);
            match (M::decode(&whole).map(Incoming::into_chunk), got) {
                (_, Err(InboundError::Chunk(_))) => {}
                (Err(_), Err(InboundError::Decode(_))) => {}
                (Ok(Ok(_)), Err(InboundError::Nested)) => {}
                (Ok(Err(msg)), Ok(Some(m))) => assert_eq!(m.enc(), msg.enc()),
                (want, got) => panic!("{inner:02x?} in {n} parts: {want:?} but {got:?}"),
            }
        }
        assert_eq!(sent, n);
    }
}

fn run<M: Msg>(data: &[u8]) {
    let mut input = Input(data);
    let limits = ReassemblerLimits {
        max_open: 1 + usize::from(input.u8() % 4),
        max_parts: 1 + u32::from(input.u8() % 8),
        max_bytes: 1 + usize::from(input.u16() % 2048),
        max_age_ms: 4 * u64::from(input.u8()),
    };
    let mut h = Harness::<M> {
        limits,
        inbound: Inbound::new(limits),
        mirror: Reassembler::new(limits),
        seen: HashSet::new(),
        now: 0,
    };

    while !input.is_empty() {
        let op = input.u8();
        h.now += u64::from(op >> 2);
        match op & 3 {
            0 => {
                let len = usize::from(input.u16());
                let frame = Bytes::copy_from_slice(input.bytes(len));
                let _ = h.push(&frame);
            }
            1 => {
                let id = chunk_id(input.u8());
                let index = u32::from(input.u8());
                let total = match input.u8() {
                    0xff => u32::MAX,
                    t => u32::from(t),
                };
                let len = usize::from(input.u8());
                let frame = chunk_frame(id, index, total, input.bytes(len));
                let _ = h.push(&frame);
            }
            2 => {
                let n = 1 + usize::from(input.u8() % 8);
                let flags = input.u8();
                let len = usize::from(input.u16());
                let inner = input.bytes(len);
                let order = input.bytes(n);
                h.split(inner, n, flags & 1 != 0, order);
            }
            _ => h.now += 16 * u64::from(input.u8()),
        }
    }

    // Once every open message is older than max_age_ms, nothing is held any more. Any chunk
    // frame makes Inbound expire first (this one is then refused: index >= total).
    h.now += limits.max_age_ms + 1;
    let refused = h.push(&chunk_frame(JsNumber(0.0), 1, 1, b""));
    assert!(
        matches!(refused, Err(InboundError::Chunk(_))),
        "{refused:?}"
    );
    assert_eq!(h.inbound.buffered_bytes(), 0);
    assert_eq!(h.mirror.open_messages(), 0);
}
