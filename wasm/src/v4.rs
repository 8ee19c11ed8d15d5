//! The viewer's Effect v4 connection (`/v4/t/{tenant}`), as a state machine the page feeds
//! frames to: each granted v4 log is authenticated in turn (Hello, then the challenge signed
//! with the identity's key, one at a time, since a challenge answers once), then followed with
//! `Changes`; every `Chunk` is acked, and whole payloads become rows. Read-only: it sends Hello,
//! Authenticate, Changes, Ack and Ping, never a write.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use wharf_protocol::v4::eventlog::{self, tag};
use wharf_protocol::v4::stored::parse_log_key;
use wharf_protocol::v4::{
    Authenticate, ChangesRequest, Exit, FrameBuffer, FromClient, FromServer, HelloResponse,
    RemoteBatch, Request, RequestId, StreamElement, V4Identity, MAX_ENVELOPE_BYTES,
};

use crate::row::{entry_id, Opened, Row};

/// What the page should do after a frame.
#[derive(Debug, Default, PartialEq)]
pub struct Actions {
    /// Frames to send, in order.
    pub send: Vec<Vec<u8>>,
    /// Rows of a log.
    pub rows: Vec<(String, Vec<Row>)>,
    /// Why a log (or the connection, `None`) cannot be read.
    pub errors: Vec<(Option<String>, String)>,
}

enum Pending {
    Hello(String),
    Authenticate(String),
    Changes(String),
}

/// One v4 connection's state.
pub struct V4Reader {
    identities: HashMap<String, (V4Identity, String)>,
    frames: FrameBuffer,
    next_id: i64,
    pending: HashMap<String, Pending>,
    /// Logs waiting for their turn to authenticate, and where each starts.
    queue: VecDeque<(String, u64)>,
    /// The log being authenticated now.
    busy: Option<(String, u64)>,
    hello: Option<HelloResponse>,
    /// Parts of a chunked payload, per stream.
    parts: HashMap<String, Vec<Option<Bytes>>>,
}

impl std::fmt::Debug for V4Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4Reader")
            .field("logs", &self.identities.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for V4Reader {
    fn default() -> Self {
        Self {
            identities: HashMap::new(),
            frames: FrameBuffer::new(MAX_ENVELOPE_BYTES),
            next_id: 0,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            busy: None,
            hello: None,
            parts: HashMap::new(),
        }
    }
}

fn key(id: &RequestId) -> String {
    id.as_json().to_string()
}

impl V4Reader {
    /// Adds a v4 log (`v4:publicKey/storeId`) and the identity's root secret; `false` if the
    /// name is not a v4 log's.
    pub fn add(&mut self, log: &str, secret: [u8; 32]) -> bool {
        let Some((public_key, store)) = parse_log_key(log) else {
            return false;
        };
        self.identities
            .insert(log.to_owned(), (V4Identity::new(public_key, secret), store));
        true
    }

    pub fn has(&self, log: &str) -> bool {
        self.identities.contains_key(log)
    }

    /// A new connection: nothing pending, nothing half-read.
    pub fn reset(&mut self) {
        let identities = std::mem::take(&mut self.identities);
        *self = Self {
            identities,
            ..Self::default()
        };
    }

    fn request(&mut self, tag: &str, payload: Vec<u8>, pending: Pending) -> Vec<u8> {
        self.next_id += 1;
        let id = RequestId::Int(self.next_id);
        self.pending.insert(key(&id), pending);
        FromClient::Request(Request {
            id,
            tag: tag.into(),
            payload: payload.into(),
            headers: Vec::new(),
            options: Default::default(),
        })
        .encode()
        .to_vec()
    }

    /// Follows `log` from `from`: the frames to send (a Hello, unless another log is being
    /// authenticated, in which case it waits its turn).
    pub fn follow(&mut self, log: &str, from: u64) -> Vec<Vec<u8>> {
        if !self.identities.contains_key(log) {
            return Vec::new();
        }
        // A log followed again (another position): its running stream stops first.
        let mut out = self.stop(log);
        self.queue.retain(|(l, _)| l != log);
        self.queue.push_back((log.to_owned(), from));
        out.extend(self.next_turn());
        out
    }

    /// Stops following `log`: an `Interrupt` of its stream, if one runs.
    pub fn stop(&mut self, log: &str) -> Vec<Vec<u8>> {
        let running: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Changes(l) if l == log))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in running {
            self.pending.remove(&k);
            let prefix = format!("{k}/");
            self.parts.retain(|p, _| !p.starts_with(&prefix));
            if let Ok(serde_json::Value::Number(n)) = serde_json::from_str::<serde_json::Value>(&k)
            {
                if let Some(id) = n.as_i64() {
                    out.push(FromClient::Interrupt(RequestId::Int(id)).encode().to_vec());
                }
            }
        }
        out
    }

    fn next_turn(&mut self) -> Vec<Vec<u8>> {
        if self.busy.is_some() {
            return Vec::new();
        }
        let Some((log, from)) = self.queue.pop_front() else {
            return Vec::new();
        };
        self.busy = Some((log.clone(), from));
        vec![self.request(tag::HELLO, eventlog::encode_void(), Pending::Hello(log))]
    }

    pub fn ping() -> Vec<u8> {
        FromClient::Ping.encode().to_vec()
    }

    /// Reads a WebSocket message from the relay.
    pub fn handle(&mut self, message: &[u8]) -> Actions {
        let mut out = Actions::default();
        self.frames.push(message);
        loop {
            match self.frames.next_frame() {
                Ok(Some(body)) => match FromServer::decode(&body) {
                    Ok(msg) => self.on_message(msg, &mut out),
                    Err(e) => {
                        out.errors
                            .push((None, format!("unreadable v4 message: {e}")));
                        return out;
                    }
                },
                Ok(None) => return out,
                Err(e) => {
                    out.errors.push((None, format!("unreadable v4 frame: {e}")));
                    return out;
                }
            }
        }
    }

    fn on_message(&mut self, msg: FromServer, out: &mut Actions) {
        match msg {
            FromServer::Pong => {}
            FromServer::Defect(d) => out.errors.push((
                None,
                eventlog::decode_defect(&d).unwrap_or_else(|e| e.to_string()),
            )),
            FromServer::Exit { request_id, exit } => match self.pending.remove(&key(&request_id)) {
                Some(Pending::Hello(log)) => match Exit::<HelloResponse>::decode(&exit) {
                    Ok(Exit::Success(hello)) => {
                        if let Some((identity, _)) = self.identities.get(&log) {
                            let signature =
                                identity.sign_challenge(&hello.remote_id, &hello.challenge);
                            let payload = Authenticate {
                                public_key: identity.public_key.clone(),
                                signing_public_key: identity.signing_public_key().to_vec(),
                                signature: signature.to_vec(),
                            }
                            .encode();
                            self.hello = Some(hello);
                            let frame = self.request(
                                tag::AUTHENTICATE,
                                payload,
                                Pending::Authenticate(log),
                            );
                            out.send.push(frame);
                        }
                    }
                    other => self.failed(log, format!("Hello failed: {other:?}"), out),
                },
                Some(Pending::Authenticate(log)) => match Exit::<()>::decode(&exit) {
                    Ok(Exit::Success(())) => {
                        let from = self
                            .busy
                            .take()
                            .filter(|(l, _)| *l == log)
                            .map_or(0, |(_, f)| f);
                        if let Some((identity, store)) = self.identities.get(&log) {
                            let payload = ChangesRequest {
                                public_key: identity.public_key.clone(),
                                store_id: store.clone(),
                                start_sequence: from,
                            }
                            .encode();
                            let frame = self.request(tag::CHANGES, payload, Pending::Changes(log));
                            out.send.push(frame);
                        }
                        out.send.extend(self.next_turn());
                    }
                    Ok(Exit::Failure(e)) => {
                        self.failed(log, format!("{}: {}", e.code.as_str(), e.message), out)
                    }
                    other => self.failed(log, format!("Authenticate failed: {other:?}"), out),
                },
                Some(Pending::Changes(log)) => {
                    let prefix = format!("{}/", key(&request_id));
                    self.parts.retain(|k, _| !k.starts_with(&prefix));
                    let why = match Exit::<()>::decode(&exit) {
                        Ok(Exit::Failure(e)) => format!("{}: {}", e.code.as_str(), e.message),
                        other => format!("the stream ended: {other:?}"),
                    };
                    out.errors.push((Some(log), why));
                }
                None => {}
            },
            FromServer::Chunk { request_id, values } => {
                let k = key(&request_id);
                let Some(Pending::Changes(log)) = self.pending.get(&k) else {
                    return;
                };
                let log = log.clone();
                // Every Chunk is acked: the relay sends the next one then.
                out.send.push(FromClient::Ack(request_id).encode().to_vec());
                let elements = match StreamElement::decode_all(&values) {
                    Ok(e) => e,
                    Err(e) => return out.errors.push((Some(log), e.to_string())),
                };
                for element in elements {
                    let payload = match element {
                        StreamElement::Single(data) => Some(data.to_vec()),
                        StreamElement::Chunked(c) => {
                            // Parts of one payload, by stream and chunk id; a part that does
                            // not fit its payload's count restarts it.
                            let part_key = format!("{k}/{}", c.id);
                            let total = c.total.min(4096) as usize;
                            let parts = self
                                .parts
                                .entry(part_key.clone())
                                .or_insert_with(|| vec![None; total]);
                            if parts.len() != total {
                                *parts = vec![None; total];
                            }
                            if let Some(slot) = parts.get_mut(c.index as usize) {
                                *slot = Some(c.data);
                            }
                            if parts.iter().all(Option::is_some) {
                                let joined = parts
                                    .iter()
                                    .flatten()
                                    .flat_map(|p| p.iter().copied())
                                    .collect();
                                self.parts.remove(&part_key);
                                Some(joined)
                            } else {
                                None
                            }
                        }
                    };
                    if let Some(payload) = payload {
                        match RemoteBatch::decode_all(&payload) {
                            Ok(batches) => {
                                let rows = self.rows(&log, &batches);
                                out.rows.push((log.clone(), rows));
                            }
                            Err(e) => out.errors.push((Some(log.clone()), e.to_string())),
                        }
                    }
                }
            }
        }
    }

    fn failed(&mut self, log: String, why: String, out: &mut Actions) {
        if self.busy.as_ref().is_some_and(|(l, _)| *l == log) {
            self.busy = None;
        }
        out.errors.push((Some(log), why));
        out.send.extend(self.next_turn());
    }

    fn rows(&self, log: &str, batches: &[RemoteBatch]) -> Vec<Row> {
        let Some((identity, store)) = self.identities.get(log) else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for b in batches {
            let size = b.batch.encrypted_batch.len();
            let opened = identity
                .decrypt_batch(
                    store,
                    &b.batch.entry_ids,
                    &b.batch.iv,
                    &b.batch.encrypted_batch,
                )
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    wharf_protocol::v4::BatchEntry::decode_all(&p).map_err(|e| e.to_string())
                });
            for (i, id) in b.batch.entry_ids.iter().enumerate() {
                let content = match &opened {
                    Ok(entries) => entries
                        .get(i)
                        .map(|e| Opened {
                            event: e.event.clone(),
                            primary_key: e.primary_key.clone(),
                            payload: wharf_protocol::v4::payload::decode(&e.payload, &[])
                                .map(|v| v.to_string())
                                .unwrap_or_else(|err| {
                                    serde_json::json!({ "$error": err.to_string() }).to_string()
                                }),
                        })
                        .ok_or_else(|| "the batch holds fewer entries than ids".to_owned()),
                    Err(e) => Err(e.clone()),
                };
                rows.push(Row {
                    sequence: b.sequence + i as u64,
                    time_ms: wharf_protocol::entry::timestamp_ms(id),
                    entry_id: entry_id(id),
                    // The batch's bytes are shown on its first entry.
                    size: if i == 0 { size } else { 0 },
                    suite: "effect-v4",
                    content,
                    snapshot: None,
                });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::v4::stored::log_key;
    use wharf_protocol::v4::{BatchEntry, EncryptedBatch};

    fn exit<T: eventlog::ExitValue>(id: i64, exit: Exit<T>) -> Vec<u8> {
        FromServer::Exit {
            request_id: RequestId::Int(id),
            exit: exit.encode().into(),
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn authenticates_each_log_in_turn_then_follows_it() {
        let secret = [3u8; 32];
        let (alice, bob) = (log_key("alice", "default"), log_key("bob", "s"));
        let mut r = V4Reader::default();
        assert!(r.add(&alice, secret) && r.add(&bob, [4; 32]));
        assert!(!r.add("a-v3-log", secret));
        assert_eq!(r.follow(&alice, 0).len(), 1, "a Hello");
        assert!(r.follow(&bob, 5).is_empty(), "bob waits for alice's turn");
        let hello = HelloResponse {
            remote_id: [1; 16],
            challenge: vec![2; 32],
            first_sequence: None,
            compaction: false,
        };
        let a = r.handle(&exit(1, Exit::Success(hello.clone())));
        let mut frames = FrameBuffer::new(1 << 20);
        frames.push(&a.send[0]);
        let body = frames.next_frame().expect("a frame").expect("whole");
        let FromClient::Request(auth) = FromClient::decode(&body).expect("request") else {
            panic!("an Authenticate")
        };
        assert_eq!(auth.tag, tag::AUTHENTICATE);
        let sent = Authenticate::decode(&auth.payload).expect("payload");
        let identity = V4Identity::new("alice".into(), secret);
        wharf_protocol::v4::verify_auth(
            &hello.remote_id,
            &hello.challenge,
            "alice",
            &sent.signing_public_key,
            &sent.signature,
        )
        .expect("signed with alice's key");
        // Alice in: her Changes, and bob's Hello.
        let a = r.handle(&exit(2, Exit::Success(())));
        assert_eq!(a.send.len(), 2);

        // A chunk of alice's log: acked, decrypted.
        let entry = BatchEntry {
            id: [
                0x01, 0x8b, 0xcf, 0xe5, 0x68, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 7,
            ],
            event: "NoteAdded".into(),
            primary_key: "n1".into(),
            payload: wharf_protocol::v4::payload::encode(&serde_json::json!({"text": "hi"}))
                .expect("payload")
                .into(),
        };
        let iv = [9u8; 12];
        let ciphertext = identity
            .encrypt_batch(
                "default",
                &[entry.id],
                &iv,
                &BatchEntry::encode_all(std::slice::from_ref(&entry)),
            )
            .expect("encrypts");
        let batch = RemoteBatch {
            sequence: 7,
            batch: EncryptedBatch {
                entry_ids: vec![entry.id],
                iv: iv.to_vec().into(),
                encrypted_batch: ciphertext.into(),
            },
        };
        let chunk = FromServer::Chunk {
            request_id: RequestId::Int(3),
            values: StreamElement::encode_all(&[StreamElement::Single(
                RemoteBatch::encode_all(&[batch]).into(),
            )])
            .into(),
        }
        .encode();
        let a = r.handle(&chunk);
        assert_eq!(
            a.send,
            vec![FromClient::Ack(RequestId::Int(3)).encode().to_vec()]
        );
        let (log, rows) = &a.rows[0];
        assert_eq!(log, &alice);
        assert_eq!(rows[0].sequence, 7);
        let opened = rows[0].content.as_ref().expect("opened");
        assert_eq!(opened.payload, r#"{"text":"hi"}"#);
    }
}
