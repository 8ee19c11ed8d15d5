//! `wharf-wasm`: what the browser viewer needs from `wharf-protocol`, as wasm-bindgen bindings.
//! Read-only by construction: it decodes relay frames, encodes only the messages a reader sends
//! (`RequestChanges`, `StopChanges`, `Ping`; for Effect v4 logs `Hello`, `Authenticate`,
//! `Changes`, `Ack`, `Ping`), and decrypts entries and snapshots; it cannot build a
//! `WriteEntries`, a `WriteSnapshot` or a v4 write.
//!
//! The logic lives in plain Rust ([`Reader`], [`Row`]), tested natively; the `#[wasm_bindgen]`
//! layer only converts to JavaScript values.

mod row;
mod v4;

use std::collections::HashMap;

use bytes::Bytes;
use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use row::entry_id;
pub use row::{Opened, Row};
use wharf_protocol::{
    payload, ClientMsg, Entry, Grant, GrantKeyPair, Inbound, JsNumber, ReadKey, ReassemblerLimits,
    RelayMsg, RemoteEntry, SnapshotEntry,
};

/// The cipher of snapshots (whatever the log's entry suite).
const SNAPSHOT_SUITE: &str = "xchacha20poly1305";

/// A relay message, reduced to what the viewer acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Hello {
        remote_id: String,
    },
    Rows {
        log: String,
        rows: Vec<Row>,
    },
    Head {
        log: String,
        next_sequence: u64,
    },
    /// The log's newest snapshot, covering every entry up to and including `sequence`; the
    /// entries that follow start after it. `rows`: the entries it kept (each with
    /// `snapshot: Some(sequence)`), in sequence order, or why it did not open.
    Snapshot {
        log: String,
        sequence: u64,
        /// Bytes of the encrypted snapshot.
        size: usize,
        rows: Result<Vec<Row>, String>,
    },
    /// The relay deleted the log's history below `first_sequence` (retention); the entries
    /// that follow start there.
    HistoryStarts {
        log: String,
        first_sequence: u64,
    },
    CaughtUp {
        log: String,
        next_sequence: u64,
    },
    Pong {
        id: f64,
    },
    Error {
        code: String,
        message: String,
    },
    /// A part of a chunked message; nothing to show yet.
    Partial,
    /// A message a reader does not expect (an Ack); ignored.
    Other(&'static str),
}

/// Decodes frames (reassembling chunks) and decrypts entries with the keys it holds.
#[derive(Debug)]
pub struct Reader {
    keys: HashMap<String, ReadKey>,
    inbound: Inbound<RelayMsg>,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            keys: HashMap::new(),
            inbound: Inbound::new(ReassemblerLimits::default()),
        }
    }
}

impl Reader {
    pub fn add_key(&mut self, key: ReadKey) -> String {
        let log = key.log().to_owned();
        self.keys.insert(log.clone(), key);
        log
    }

    pub fn handle(&mut self, frame: &[u8], now_ms: u64) -> Result<Event, String> {
        let frame = Bytes::copy_from_slice(frame);
        let Some(msg) = self
            .inbound
            .push(&frame, now_ms)
            .map_err(|e| e.to_string())?
        else {
            return Ok(Event::Partial);
        };
        Ok(match msg {
            RelayMsg::Hello { remote_id } => Event::Hello {
                remote_id: hex::encode(&remote_id),
            },
            RelayMsg::Changes {
                public_key,
                entries,
            } => {
                let key = self.keys.get(&public_key);
                let rows = entries.iter().map(|e| row(key, e)).collect();
                Event::Rows {
                    log: public_key,
                    rows,
                }
            }
            RelayMsg::Head {
                public_key,
                next_sequence,
            } => Event::Head {
                log: public_key,
                next_sequence,
            },
            RelayMsg::CaughtUp {
                public_key,
                next_sequence,
            } => Event::CaughtUp {
                log: public_key,
                next_sequence,
            },
            RelayMsg::Snapshot {
                public_key,
                sequence,
                iv,
                data,
            } => {
                let rows = match self.keys.get(&public_key) {
                    None => Err("no key for this log".to_owned()),
                    Some(k) => k
                        .open_snapshot(sequence, &iv, &data)
                        .map(|c| {
                            let covers = c.sequence;
                            c.entries
                                .into_iter()
                                .map(|e| snapshot_row(covers, e))
                                .collect()
                        })
                        .map_err(|err| err.to_string()),
                };
                Event::Snapshot {
                    log: public_key,
                    sequence,
                    size: data.len(),
                    rows,
                }
            }
            RelayMsg::HistoryStarts {
                public_key,
                first_sequence,
            } => Event::HistoryStarts {
                log: public_key,
                first_sequence,
            },
            RelayMsg::Pong { id } => Event::Pong { id: id.0 },
            RelayMsg::Error { code, message } => Event::Error {
                code: code.to_string(),
                message,
            },
            RelayMsg::Ack { .. } => Event::Other("Ack"),
            RelayMsg::SnapshotAck { .. } => Event::Other("SnapshotAck"),
            // `Inbound` returns whole messages only.
            RelayMsg::Chunked(_) => Event::Other("ChunkedMessage"),
        })
    }
}

fn row(key: Option<&ReadKey>, e: &RemoteEntry) -> Row {
    let suite = match e.iv.len() {
        8 => "xchacha20poly1305",
        12 => "aes-256-gcm",
        _ => "unknown",
    };
    let content = match key {
        None => Err("no key for this log".to_owned()),
        Some(k) => k
            .open(&e.iv, &e.entry_id, &e.encrypted_entry)
            .map_err(|err| err.to_string())
            .map(opened),
    };
    Row {
        sequence: e.sequence,
        time_ms: wharf_protocol::entry::timestamp_ms(&e.entry_id),
        entry_id: entry_id(&e.entry_id),
        size: e.encrypted_entry.len(),
        suite,
        content,
        snapshot: None,
    }
}

/// An entry kept by a snapshot covering up to `covers`.
fn snapshot_row(covers: u64, e: SnapshotEntry) -> Row {
    Row {
        sequence: e.sequence,
        time_ms: wharf_protocol::entry::timestamp_ms(&e.entry.id),
        entry_id: entry_id(&e.entry.id),
        size: e.entry.encode().len(),
        suite: SNAPSHOT_SUITE,
        content: Ok(opened(e.entry)),
        snapshot: Some(covers),
    }
}

fn opened(entry: Entry) -> Opened {
    Opened {
        payload: payload::to_json(&entry.payload)
            .map(|v| v.to_string())
            .unwrap_or_else(|err| serde_json::json!({ "$error": err.to_string() }).to_string()),
        event: entry.event,
        primary_key: entry.primary_key,
    }
}

// ---------------------------------------------------------------------------------------------
// JavaScript bindings

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) -> Result<(), JsError> {
    Reflect::set(obj, &JsValue::from_str(key), &value.into())
        .map(|_| ())
        .map_err(|_| JsError::new("cannot build the result object"))
}

fn row_to_js(r: &Row) -> Result<Object, JsError> {
    let o = Object::new();
    set(&o, "kind", "entry")?;
    set(&o, "snapshot", r.snapshot.is_some())?;
    if let Some(covers) = r.snapshot {
        set(&o, "snapshotSequence", covers as f64)?;
    }
    set(&o, "sequence", r.sequence as f64)?;
    set(&o, "time", r.time_ms as f64)?;
    set(&o, "id", r.entry_id.as_str())?;
    set(&o, "size", r.size as f64)?;
    set(&o, "suite", r.suite)?;
    match &r.content {
        Ok(c) => {
            set(&o, "locked", false)?;
            set(&o, "event", c.event.as_str())?;
            set(&o, "primaryKey", c.primary_key.as_str())?;
            set(&o, "payload", c.payload.as_str())?;
        }
        Err(why) => {
            set(&o, "locked", true)?;
            set(&o, "error", why.as_str())?;
        }
    }
    Ok(o)
}

/// The viewer's protocol state: keys by log name and chunk reassembly, and the Effect v4
/// connection's state for v4 logs.
#[wasm_bindgen(js_name = Reader)]
#[derive(Debug, Default)]
pub struct JsReader {
    inner: Reader,
    v4: v4::V4Reader,
}

fn bytes_array(frames: Vec<Vec<u8>>) -> Array {
    let arr = Array::new_with_length(frames.len() as u32);
    for (i, f) in frames.iter().enumerate() {
        arr.set(i as u32, Uint8Array::from(f.as_slice()).into());
    }
    arr
}

#[wasm_bindgen(js_class = Reader)]
impl JsReader {
    #[wasm_bindgen(constructor)]
    pub fn new() -> JsReader {
        JsReader::default()
    }

    /// Opens a grant with `keys` and remembers the log's read key; returns the log name.
    #[wasm_bindgen(js_name = addGrant)]
    pub fn add_grant(&mut self, keys: &GrantKeys, grant: &str) -> Result<String, JsError> {
        let grant = Grant::parse(grant).map_err(|e| JsError::new(&e.to_string()))?;
        let key = keys
            .inner
            .open(&grant)
            .map_err(|e| JsError::new(&e.to_string()))?;
        // A v4 grant names its log `v4:publicKey/storeId` and carries the identity's secret.
        self.v4.add(key.log(), *key.key().as_bytes());
        Ok(self.inner.add_key(key))
    }

    /// Whether `log` is an Effect v4 log (read over `/v4/t/{tenant}` with the `v4*` methods).
    #[wasm_bindgen(js_name = isV4)]
    pub fn is_v4(&self, log: &str) -> bool {
        self.v4.has(log)
    }

    /// A new v4 connection: forget what the last one had pending.
    #[wasm_bindgen(js_name = v4Reset)]
    pub fn v4_reset(&mut self) {
        self.v4.reset();
    }

    /// Follows a v4 log from `from`: the frames to send now (Hello, unless another log is
    /// authenticating, in which case it comes after).
    #[wasm_bindgen(js_name = v4Follow)]
    pub fn v4_follow(&mut self, log: &str, from: f64) -> Array {
        bytes_array(self.v4.follow(log, from.max(0.0) as u64))
    }

    /// Stops following a v4 log: the frames to send (an `Interrupt` of its stream).
    #[wasm_bindgen(js_name = v4Stop)]
    pub fn v4_stop(&mut self, log: &str) -> Array {
        bytes_array(self.v4.stop(log))
    }

    /// `Ping` on the v4 connection.
    #[wasm_bindgen(js_name = v4Ping)]
    pub fn v4_ping(&self) -> Uint8Array {
        Uint8Array::from(v4::V4Reader::ping().as_slice())
    }

    /// Reads a message of the v4 connection. Returns `{send: [frames to send], rows: [{log,
    /// rows}], errors: [{log (null: the connection), message}]}`; rows as `handle` gives them.
    #[wasm_bindgen(js_name = v4Handle)]
    pub fn v4_handle(&mut self, message: &[u8]) -> Result<Object, JsError> {
        let actions = self.v4.handle(message);
        let o = Object::new();
        set(&o, "send", bytes_array(actions.send))?;
        let rows = Array::new();
        for (log, rs) in &actions.rows {
            let entry = Object::new();
            set(&entry, "log", log.as_str())?;
            let arr = Array::new_with_length(rs.len() as u32);
            for (i, r) in rs.iter().enumerate() {
                arr.set(i as u32, row_to_js(r)?.into());
            }
            set(&entry, "rows", arr)?;
            rows.push(&entry);
        }
        set(&o, "rows", rows)?;
        let errors = Array::new();
        for (log, message) in &actions.errors {
            let e = Object::new();
            set(
                &e,
                "log",
                log.as_deref().map_or(JsValue::NULL, JsValue::from_str),
            )?;
            set(&e, "message", message.as_str())?;
            errors.push(&e);
        }
        set(&o, "errors", errors)?;
        Ok(o)
    }

    /// Decodes one binary frame. Returns `{type, ...}`: `Hello{remoteId}`,
    /// `Rows{log, rows:[{kind: "entry", snapshot: false, sequence, time, id, size, suite, locked, event?, primaryKey?, payload?, error?}]}`,
    /// `Snapshot{log, sequence, size, count, locked, error?, rows}`, `HistoryStarts{log,
    /// firstSequence, rows}`, `Head{log, nextSequence}`, `CaughtUp{log, nextSequence}`,
    /// `Pong{id}`, `Error{code, message}`, `Partial`, or `Other{what}`.
    ///
    /// A `Snapshot`'s `rows` start with the snapshot itself, `{kind: "snapshot", snapshot: true,
    /// sequence, snapshotSequence, records, size, suite, locked, error?}` (`sequence`: the last
    /// entry it covers; `locked` with `error` when it does not open), followed by the entries it
    /// kept as entry rows with `snapshot: true, snapshotSequence`. `HistoryStarts`'s `rows` hold
    /// one marker, `{kind: "history", snapshot: false, sequence: firstSequence, locked: false}`:
    /// the relay deleted the history before it.
    pub fn handle(&mut self, frame: &[u8], now_ms: f64) -> Result<Object, JsError> {
        let event = self
            .inner
            .handle(frame, now_ms.max(0.0) as u64)
            .map_err(|e| JsError::new(&e))?;
        let o = Object::new();
        match event {
            Event::Hello { remote_id } => {
                set(&o, "type", "Hello")?;
                set(&o, "remoteId", remote_id)?;
            }
            Event::Rows { log, rows } => {
                set(&o, "type", "Rows")?;
                set(&o, "log", log)?;
                let arr = Array::new_with_length(rows.len() as u32);
                for (i, r) in rows.iter().enumerate() {
                    arr.set(i as u32, row_to_js(r)?.into());
                }
                set(&o, "rows", arr)?;
            }
            Event::Snapshot {
                log,
                sequence,
                size,
                rows,
            } => {
                set(&o, "type", "Snapshot")?;
                set(&o, "log", log)?;
                set(&o, "sequence", sequence as f64)?;
                set(&o, "size", size as f64)?;
                let head = Object::new();
                set(&head, "kind", "snapshot")?;
                set(&head, "snapshot", true)?;
                set(&head, "sequence", sequence as f64)?;
                set(&head, "snapshotSequence", sequence as f64)?;
                set(&head, "size", size as f64)?;
                set(&head, "suite", SNAPSHOT_SUITE)?;
                let entries = rows.as_deref().unwrap_or_default();
                set(&head, "records", entries.len() as f64)?;
                set(&o, "count", entries.len() as f64)?;
                set(&head, "locked", rows.is_err())?;
                set(&o, "locked", rows.is_err())?;
                if let Err(why) = &rows {
                    set(&head, "error", why.as_str())?;
                    set(&o, "error", why.as_str())?;
                }
                let arr = Array::new_with_length(entries.len() as u32 + 1);
                arr.set(0, head.into());
                for (i, r) in entries.iter().enumerate() {
                    arr.set(i as u32 + 1, row_to_js(r)?.into());
                }
                set(&o, "rows", arr)?;
            }
            Event::HistoryStarts {
                log,
                first_sequence,
            } => {
                set(&o, "type", "HistoryStarts")?;
                set(&o, "log", log)?;
                set(&o, "firstSequence", first_sequence as f64)?;
                let marker = Object::new();
                set(&marker, "kind", "history")?;
                set(&marker, "snapshot", false)?;
                set(&marker, "sequence", first_sequence as f64)?;
                set(&marker, "locked", false)?;
                set(&o, "rows", Array::of1(&marker))?;
            }
            Event::Head { log, next_sequence } => {
                set(&o, "type", "Head")?;
                set(&o, "log", log)?;
                set(&o, "nextSequence", next_sequence as f64)?;
            }
            Event::CaughtUp { log, next_sequence } => {
                set(&o, "type", "CaughtUp")?;
                set(&o, "log", log)?;
                set(&o, "nextSequence", next_sequence as f64)?;
            }
            Event::Pong { id } => {
                set(&o, "type", "Pong")?;
                set(&o, "id", id)?;
            }
            Event::Error { code, message } => {
                set(&o, "type", "Error")?;
                set(&o, "code", code)?;
                set(&o, "message", message)?;
            }
            Event::Partial => set(&o, "type", "Partial")?,
            Event::Other(what) => {
                set(&o, "type", "Other")?;
                set(&o, "what", what)?;
            }
        }
        Ok(o)
    }
}

/// `RequestChanges{publicKey, startSequence}`; with `snapshot` true (optional, default false),
/// `snapshot: true` too: the relay starts from the log's newest snapshot when it covers
/// `startSequence` (a `Snapshot` message, then the entries after it).
#[wasm_bindgen(js_name = encodeRequestChanges)]
pub fn encode_request_changes(
    public_key: &str,
    start_sequence: f64,
    snapshot: Option<bool>,
) -> Uint8Array {
    Uint8Array::from(
        request_changes(public_key, start_sequence, snapshot.unwrap_or(false)).as_slice(),
    )
}

fn request_changes(public_key: &str, start_sequence: f64, snapshot: bool) -> Vec<u8> {
    ClientMsg::RequestChanges {
        public_key: public_key.to_owned(),
        start_sequence: start_sequence.max(0.0) as u64,
        snapshot,
    }
    .encode()
}

/// `StopChanges{publicKey}`.
#[wasm_bindgen(js_name = encodeStopChanges)]
pub fn encode_stop_changes(public_key: &str) -> Uint8Array {
    let msg = ClientMsg::StopChanges {
        public_key: public_key.to_owned(),
    };
    Uint8Array::from(msg.encode().as_slice())
}

/// `Ping{id}`.
#[wasm_bindgen(js_name = encodePing)]
pub fn encode_ping(id: f64) -> Uint8Array {
    Uint8Array::from(ClientMsg::Ping { id: JsNumber(id) }.encode().as_slice())
}

/// The viewer's x25519 key pair for receiving grants.
#[wasm_bindgen]
#[derive(Debug)]
pub struct GrantKeys {
    inner: GrantKeyPair,
}

#[wasm_bindgen]
impl GrantKeys {
    /// From 32 random bytes (the caller takes them from `crypto.getRandomValues`), or a stored
    /// secret.
    #[wasm_bindgen(js_name = fromSecret)]
    pub fn from_secret(secret: &[u8]) -> Result<GrantKeys, JsError> {
        let bytes: [u8; 32] = secret
            .try_into()
            .map_err(|_| JsError::new("an x25519 secret is 32 bytes"))?;
        Ok(GrantKeys {
            inner: GrantKeyPair::from_secret_bytes(bytes),
        })
    }

    /// The public key to give to `wharf grant --to`.
    #[wasm_bindgen(js_name = publicKey)]
    pub fn public_key(&self) -> String {
        self.inner.public_key_string()
    }

    /// The secret, for keeping in the browser's storage.
    pub fn secret(&self) -> Uint8Array {
        Uint8Array::from(self.inner.secret_bytes().as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::snapshot::SNAPSHOT_IV_LEN;
    use wharf_protocol::{Identity, SnapshotContent, Suite};

    fn changes(log: &str, entries: Vec<RemoteEntry>) -> Vec<u8> {
        RelayMsg::Changes {
            public_key: log.to_owned(),
            entries,
        }
        .encode()
    }

    #[test]
    fn decrypts_granted_logs_and_locks_the_rest() {
        let owner = Identity::Native(wharf_protocol::NativeIdentity::from_root([5; 32]));
        let viewer = GrantKeyPair::from_secret_bytes([9; 32]);
        let grant = Grant::seal(
            owner.read_key(),
            &viewer.public_key(),
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
        )
        .expect("seal");
        let mut reader = Reader::default();
        assert_eq!(
            reader.add_key(viewer.open(&grant).expect("open")),
            owner.log()
        );

        let entry = Entry {
            id: [
                0x01, 0x8b, 0xcf, 0xe5, 0x68, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 7,
            ],
            event: "FactLearned".into(),
            primary_key: "sky".into(),
            payload: payload::from_json(&serde_json::json!({"text": "blue"})).expect("payload"),
        };
        let iv = [1u8; 8];
        let sealed = owner
            .read_key()
            .seal(Suite::XChaCha20Poly1305, &iv, &entry.id, &entry.encode())
            .expect("seal");
        let remote = RemoteEntry {
            sequence: 3,
            iv: Bytes::copy_from_slice(&iv),
            entry_id: Bytes::copy_from_slice(&entry.id),
            encrypted_entry: Bytes::from(sealed),
        };
        let Event::Rows { rows, .. } = reader
            .handle(&changes(owner.log(), vec![remote.clone()]), 0)
            .expect("rows")
        else {
            panic!("expected rows")
        };
        assert_eq!(rows[0].sequence, 3);
        assert_eq!(rows[0].time_ms, 1_700_000_000_000);
        let opened = rows[0].content.as_ref().expect("opened");
        assert_eq!(
            (opened.event.as_str(), opened.payload.as_str()),
            ("FactLearned", r#"{"text":"blue"}"#)
        );

        // Another log: no key, a locked row that still shows sequence, time and size.
        let Event::Rows { rows, .. } = reader
            .handle(&changes("other", vec![remote]), 0)
            .expect("rows")
        else {
            panic!("expected rows")
        };
        assert!(rows[0].content.is_err());
        assert_eq!(
            (rows[0].sequence, rows[0].size),
            (3, entry.encode().len() + 16)
        );
        assert!(reader.handle(&[0xc1], 0).is_err());
    }

    fn fact(n: u8, key: &str, text: &str) -> Entry {
        Entry {
            id: [
                0x01, 0x8b, 0xcf, 0xe5, 0x68, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, n,
            ],
            event: "FactLearned".into(),
            primary_key: key.into(),
            payload: payload::from_json(&serde_json::json!({ "text": text })).expect("payload"),
        }
    }

    #[test]
    fn opens_snapshots_and_marks_deleted_history() {
        let owner = Identity::Native(wharf_protocol::NativeIdentity::from_root([6; 32]));
        let mut reader = Reader::default();
        reader.add_key(owner.read_key().clone());
        let log = owner.log().to_owned();

        // Five entries, two keys rewritten: the snapshot covering #4 keeps three.
        let all = [
            (0, fact(1, "sky", "grey")),
            (1, fact(2, "sea", "green")),
            (2, fact(3, "sky", "blue")),
            (3, fact(4, "sun", "hot")),
            (4, fact(5, "sea", "blue")),
        ];
        let content = SnapshotContent::compact(
            4,
            all.iter().map(|(s, e)| SnapshotEntry {
                sequence: *s,
                entry: e.clone(),
            }),
        );
        let iv = [3u8; SNAPSHOT_IV_LEN];
        let sealed = owner.read_key().seal_snapshot(&iv, &content).expect("seal");
        let snapshot = |log: &str, sequence: u64, data: &[u8]| {
            RelayMsg::Snapshot {
                public_key: log.to_owned(),
                sequence,
                iv: Bytes::copy_from_slice(&iv),
                data: Bytes::copy_from_slice(data),
            }
            .encode()
        };

        let Event::Snapshot {
            log: got_log,
            sequence,
            size,
            rows,
        } = reader
            .handle(&snapshot(&log, 4, &sealed), 0)
            .expect("event")
        else {
            panic!("expected a snapshot")
        };
        assert_eq!(
            (got_log.as_str(), sequence, size),
            (log.as_str(), 4, sealed.len())
        );
        let rows = rows.expect("the snapshot opens");
        let got: Vec<(u64, &str, &str, Option<u64>)> = rows
            .iter()
            .map(|r| {
                let c = r.content.as_ref().expect("opened");
                (
                    r.sequence,
                    c.primary_key.as_str(),
                    c.payload.as_str(),
                    r.snapshot,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (2, "sky", r#"{"text":"blue"}"#, Some(4)),
                (3, "sun", r#"{"text":"hot"}"#, Some(4)),
                (4, "sea", r#"{"text":"blue"}"#, Some(4)),
            ]
        );
        assert_eq!(rows[0].time_ms, 1_700_000_000_000);
        assert_eq!(rows[0].entry_id, "018bcfe5-6800-7000-8000-000000000003");
        assert_eq!(rows[0].suite, "xchacha20poly1305");

        // Entries after the snapshot arrive as ordinary rows.
        let next = fact(6, "sky", "black");
        let sealed_entry = owner
            .read_key()
            .seal(Suite::XChaCha20Poly1305, &[1; 8], &next.id, &next.encode())
            .expect("seal");
        let Event::Rows { rows, .. } = reader
            .handle(
                &changes(
                    &log,
                    vec![RemoteEntry {
                        sequence: 5,
                        iv: Bytes::from_static(&[1; 8]),
                        entry_id: Bytes::copy_from_slice(&next.id),
                        encrypted_entry: Bytes::from(sealed_entry),
                    }],
                ),
                0,
            )
            .expect("rows")
        else {
            panic!("expected rows")
        };
        assert_eq!((rows[0].sequence, rows[0].snapshot), (5, None));

        // A snapshot that does not open (the relay named another sequence, it was tampered
        // with, or it is for a log without a key) is an error, not a failure to decode.
        for (log, sequence, data) in [
            (log.as_str(), 3, sealed.clone()),
            (log.as_str(), 4, {
                let mut t = sealed.clone();
                t[0] ^= 1;
                t
            }),
            ("other", 4, sealed.clone()),
        ] {
            let Event::Snapshot { rows, .. } = reader
                .handle(&snapshot(log, sequence, &data), 0)
                .expect("event")
            else {
                panic!("expected a snapshot")
            };
            let why = rows.expect_err("does not open");
            assert!(
                why.contains("does not decrypt") || why.contains("no key"),
                "{why}"
            );
        }

        // A large snapshot arrives in chunks, like any large message.
        let big = SnapshotContent::compact(
            4,
            [SnapshotEntry {
                sequence: 4,
                entry: fact(5, "essay", &"x".repeat(wharf_protocol::CHUNK_SIZE + 1)),
            }],
        );
        let sealed_big = owner.read_key().seal_snapshot(&iv, &big).expect("seal");
        let frames: Vec<Bytes> =
            wharf_protocol::frames(Bytes::from(snapshot(&log, 4, &sealed_big)), JsNumber(7.0))
                .collect();
        assert!(frames.len() > 1);
        let (last, parts) = frames.split_last().expect("frames");
        for f in parts {
            assert_eq!(reader.handle(f, 0).expect("part"), Event::Partial);
        }
        let Event::Snapshot { rows: Ok(rows), .. } = reader.handle(last, 0).expect("event") else {
            panic!("expected an opened snapshot")
        };
        assert_eq!((rows.len(), rows[0].snapshot), (1, Some(4)));

        let starts = RelayMsg::HistoryStarts {
            public_key: log.clone(),
            first_sequence: 40,
        }
        .encode();
        assert_eq!(
            reader.handle(&starts, 0).expect("event"),
            Event::HistoryStarts {
                log: log.clone(),
                first_sequence: 40
            }
        );
    }

    #[test]
    fn asks_for_snapshots_only_when_told() {
        let plain = request_changes("log", 0.0, false);
        assert_eq!(
            ClientMsg::decode(&Bytes::from(plain.clone())).expect("decode"),
            ClientMsg::RequestChanges {
                public_key: "log".into(),
                start_sequence: 0,
                snapshot: false
            }
        );
        assert!(!plain.windows(8).any(|w| w == b"snapshot"));
        assert_eq!(
            ClientMsg::decode(&Bytes::from(request_changes("log", 12.0, true))).expect("decode"),
            ClientMsg::RequestChanges {
                public_key: "log".into(),
                start_sequence: 12,
                snapshot: true
            }
        );
    }
}
