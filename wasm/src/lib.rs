//! `wharf-wasm`: what the browser viewer needs from `wharf-protocol`, as wasm-bindgen bindings.
//! Read-only by construction: it decodes relay frames, encodes only the messages a reader sends
//! (`RequestChanges`, `StopChanges`, `Ping`), and decrypts; it cannot build a `WriteEntries`.
//!
//! The logic lives in plain Rust ([`Reader`], [`Row`]), tested natively; the `#[wasm_bindgen]`
//! layer only converts to JavaScript values.

use std::collections::HashMap;

use bytes::Bytes;
use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wharf_protocol::{
    payload, ClientMsg, Grant, GrantKeyPair, Inbound, JsNumber, ReadKey, ReassemblerLimits,
    RelayMsg, RemoteEntry,
};

/// One entry as the viewer shows it: decrypted, or locked with what is visible without a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub sequence: u64,
    /// The writer's clock (ms since the epoch), from the UUIDv7 entry id.
    pub time_ms: u64,
    pub entry_id: String,
    /// Bytes stored on the relay.
    pub size: usize,
    pub suite: &'static str,
    pub content: Result<Opened, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub event: String,
    pub primary_key: String,
    /// The payload rendered as JSON text.
    pub payload: String,
}

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
            RelayMsg::Pong { id } => Event::Pong { id: id.0 },
            RelayMsg::Error { code, message } => Event::Error {
                code: code.to_string(),
                message,
            },
            RelayMsg::Ack { .. } => Event::Other("Ack"),
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
            .map(|entry| Opened {
                payload: payload::to_json(&entry.payload)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|err| {
                        serde_json::json!({ "$error": err.to_string() }).to_string()
                    }),
                event: entry.event,
                primary_key: entry.primary_key,
            }),
    };
    Row {
        sequence: e.sequence,
        time_ms: wharf_protocol::entry::timestamp_ms(&e.entry_id),
        // A v3 entry id is 16 bytes; anything else is shown as hex.
        entry_id: uuid::Uuid::from_slice(&e.entry_id)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| hex::encode(&e.entry_id)),
        size: e.encrypted_entry.len(),
        suite,
        content,
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

/// The viewer's protocol state: keys by log name and chunk reassembly.
#[wasm_bindgen(js_name = Reader)]
#[derive(Debug, Default)]
pub struct JsReader {
    inner: Reader,
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
        Ok(self.inner.add_key(key))
    }

    /// Decodes one binary frame. Returns `{type, ...}`: `Hello{remoteId}`,
    /// `Rows{log, rows:[{sequence, time, id, size, suite, locked, event?, primaryKey?, payload?, error?}]}`,
    /// `Head{log, nextSequence}`, `CaughtUp{log, nextSequence}`, `Pong{id}`,
    /// `Error{code, message}`, `Partial`, or `Other{what}`.
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

/// `RequestChanges{publicKey, startSequence}`.
#[wasm_bindgen(js_name = encodeRequestChanges)]
pub fn encode_request_changes(public_key: &str, start_sequence: f64) -> Uint8Array {
    let msg = ClientMsg::RequestChanges {
        public_key: public_key.to_owned(),
        start_sequence: start_sequence.max(0.0) as u64,
        snapshot: false,
    };
    Uint8Array::from(msg.encode().as_slice())
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
    use wharf_protocol::{Entry, Identity, Suite};

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
}
