//! Effect v4 (`/v4/t/{tenant}`): one connection speaking `effect/eventlog`'s RPCs, as an
//! effect@4.1.0 client does (the envelope and payloads of [`wharf_protocol::v4`]). What the
//! `wharf` CLI reads and writes v4 logs with, and what the suites drive the relay with.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wharf_protocol::v4::eventlog::{self, tag};
use wharf_protocol::v4::{
    Authenticate, ChangesRequest, Chunked, EncryptedBatch, Exit, FrameBuffer, FromClient,
    FromServer, HelloResponse, RemoteBatch, Request, RequestId, StreamElement, V4Error, V4Identity,
    WriteAck, WriteEntries, MAX_ENVELOPE_BYTES,
};

use crate::connection::{dial, redacted, ConnectOptions};
use crate::error::Error;

fn v4(e: V4Error) -> Error {
    Error::Protocol(e.to_string())
}

/// One v4 connection.
pub struct V4Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    frames: FrameBuffer,
    /// Messages read while waiting for another.
    queue: VecDeque<FromServer>,
    next_id: i64,
    pub hello: Option<HelloResponse>,
    /// How long a wait for the relay may take.
    patience: Duration,
}

impl std::fmt::Debug for V4Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4Connection").finish_non_exhaustive()
    }
}

impl V4Connection {
    /// Opens a connection to the tenant's `/v4/t/{tenant}` (TLS and token as `opts` say).
    pub async fn open(opts: &ConnectOptions) -> Result<Self, Error> {
        let url = opts.v4_url()?;
        let (ws, _) = tokio::time::timeout(opts.connect_timeout, dial(opts, &url, None))
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {}", redacted(&url))))??;
        Ok(Self {
            ws,
            frames: FrameBuffer::new(MAX_ENVELOPE_BYTES),
            queue: VecDeque::new(),
            // Effect's ids come from a process-wide counter: not from 0.
            next_id: 1000,
            hello: None,
            patience: Duration::from_secs(60),
        })
    }

    /// Opens a connection to a whole v4 URL (`ws://host/v4/t/{tenant}?token=…`).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::open(&ConnectOptions::new(url, "")).await
    }

    pub async fn send(&mut self, msg: &FromClient) -> Result<(), Error> {
        self.send_raw(msg.encode()).await
    }

    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), Error> {
        self.ws
            .send(Message::Binary(bytes))
            .await
            .map_err(|e| Error::Disconnected(e.to_string()))?;
        Ok(())
    }

    /// Sends a request; its id.
    pub async fn request(&mut self, tag: &str, payload: Vec<u8>) -> Result<RequestId, Error> {
        self.next_id += 1;
        let id = RequestId::Int(self.next_id);
        self.send(&FromClient::Request(Request {
            id: id.clone(),
            tag: tag.into(),
            payload: payload.into(),
            headers: Vec::new(),
            options: Default::default(),
        }))
        .await?;
        Ok(id)
    }

    /// The next message from the relay; `None` once the connection closed.
    pub async fn recv(&mut self) -> Result<Option<FromServer>, Error> {
        if let Some(m) = self.queue.pop_front() {
            return Ok(Some(m));
        }
        loop {
            if let Some(body) = self.frames.next_frame().map_err(v4)? {
                return Ok(Some(FromServer::decode(&body).map_err(v4)?));
            }
            let msg = tokio::time::timeout(self.patience, self.ws.next())
                .await
                .map_err(|_| Error::Timeout("no message from the relay".into()))?;
            match msg {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(b))) => self.frames.push(&b),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Error::Disconnected(e.to_string())),
            }
        }
    }

    /// Reads until the Exit of `id` (other messages are kept for later).
    pub async fn exit_of(&mut self, id: &RequestId) -> Result<Bytes, Error> {
        let mut kept = VecDeque::new();
        let found = loop {
            let Some(m) = self.recv().await? else {
                return Err(Error::Disconnected(format!(
                    "closed before the exit of {id:?}"
                )));
            };
            match m {
                FromServer::Exit { request_id, exit } if request_id == *id => break exit,
                other => kept.push_back(other),
            }
        };
        kept.extend(self.queue.drain(..));
        self.queue = kept;
        Ok(found)
    }

    pub async fn call(&mut self, tag: &str, payload: Vec<u8>) -> Result<Bytes, Error> {
        let id = self.request(tag, payload).await?;
        self.exit_of(&id).await
    }

    pub async fn hello(&mut self) -> Result<HelloResponse, Error> {
        let exit = self.call(tag::HELLO, eventlog::encode_void()).await?;
        match Exit::<HelloResponse>::decode(&exit).map_err(v4)? {
            Exit::Success(h) => {
                self.hello = Some(h.clone());
                Ok(h)
            }
            other => Err(Error::Protocol(format!("Hello failed: {other:?}"))),
        }
    }

    /// Hello, then Authenticate as `id`.
    pub async fn authenticate(&mut self, id: &V4Identity) -> Result<Exit<()>, Error> {
        let hello = self.hello().await?;
        let signature = id.sign_challenge(&hello.remote_id, &hello.challenge);
        self.authenticate_with(Authenticate {
            public_key: id.public_key.clone(),
            signing_public_key: id.signing_public_key().to_vec(),
            signature: signature.to_vec(),
        })
        .await
    }

    pub async fn authenticate_with(&mut self, auth: Authenticate) -> Result<Exit<()>, Error> {
        let exit = self.call(tag::AUTHENTICATE, auth.encode()).await?;
        Exit::decode(&exit).map_err(v4)
    }

    pub async fn write(
        &mut self,
        id: &V4Identity,
        store: &str,
        batches: Vec<EncryptedBatch>,
    ) -> Result<Exit<Vec<WriteAck>>, Error> {
        let data = WriteEntries {
            public_key: id.public_key.clone(),
            store_id: store.into(),
            batches,
        }
        .encode();
        let exit = if data.len() <= eventlog::CHUNK_BYTES {
            self.call(tag::WRITE_SINGLE, eventlog::encode_write_single(&data))
                .await?
        } else {
            // Parts of 512,000 bytes, the last first, every other one acked with [].
            let parts = Chunked::split(self.next_id, &Bytes::from(data));
            let mut ids = Vec::new();
            for part in parts.iter().rev() {
                ids.push(
                    self.request(tag::WRITE_CHUNKED, part.encode_payload())
                        .await?,
                );
            }
            // Every part but the completing one is answered with []: the answer is the other.
            let mut answer = None;
            for id in &ids {
                let exit = self.exit_of(id).await?;
                let empty = matches!(Exit::<Vec<WriteAck>>::decode(&exit).map_err(v4)?, Exit::Success(ref a) if a.is_empty());
                if !empty || answer.is_none() {
                    answer = Some(exit);
                }
            }
            answer.unwrap_or_default()
        };
        Exit::decode(&exit).map_err(v4)
    }

    /// Starts `Changes`; read with [`V4Connection::batches`].
    pub async fn changes(
        &mut self,
        public_key: &str,
        store: &str,
        start: u64,
    ) -> Result<RequestId, Error> {
        self.request(
            tag::CHANGES,
            ChangesRequest {
                public_key: public_key.into(),
                store_id: store.into(),
                start_sequence: start,
            }
            .encode(),
        )
        .await
    }

    /// The next whole payload of stream `id` (its Chunked parts joined), each Chunk acked.
    /// An Exit of the stream is an error.
    pub async fn batches(&mut self, id: &RequestId) -> Result<Vec<RemoteBatch>, Error> {
        let mut parts: Vec<Option<Bytes>> = Vec::new();
        loop {
            let mut kept = VecDeque::new();
            let values = loop {
                let Some(m) = self.recv().await? else {
                    return Err(Error::Disconnected(
                        "closed while waiting for changes".into(),
                    ));
                };
                match m {
                    FromServer::Chunk { request_id, values } if request_id == *id => break values,
                    FromServer::Exit { request_id, exit } if request_id == *id => {
                        return Err(Error::Protocol(format!(
                            "the stream ended: {:?}",
                            Exit::<()>::decode(&exit).map_err(v4)?
                        )))
                    }
                    other => kept.push_back(other),
                }
            };
            kept.extend(self.queue.drain(..));
            self.queue = kept;
            self.send(&FromClient::Ack(id.clone())).await?;
            for element in StreamElement::decode_all(&values).map_err(v4)? {
                match element {
                    StreamElement::Single(data) => {
                        return RemoteBatch::decode_all(&data).map_err(v4)
                    }
                    StreamElement::Chunked(c) => {
                        if parts.is_empty() {
                            parts = vec![None; c.total as usize];
                        }
                        parts[c.index as usize] = Some(c.data);
                        if parts.iter().all(Option::is_some) {
                            let joined: Vec<u8> = parts
                                .iter()
                                .flatten()
                                .flat_map(|p| p.iter().copied())
                                .collect();
                            return RemoteBatch::decode_all(&joined).map_err(v4);
                        }
                    }
                }
            }
        }
    }

    /// Batches of stream `id` until `count` entries arrived.
    pub async fn collect(
        &mut self,
        id: &RequestId,
        count: usize,
    ) -> Result<Vec<RemoteBatch>, Error> {
        let mut out = Vec::new();
        let mut n = 0;
        while n < count {
            for b in self.batches(id).await? {
                n += b.batch.entry_ids.len();
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Closes the connection (a close handshake, then the socket).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// How the connection ended (the close code), reading past anything else.
    pub async fn closed(&mut self) -> Result<Option<u16>, Error> {
        loop {
            let msg = tokio::time::timeout(self.patience, self.ws.next())
                .await
                .map_err(|_| Error::Timeout("the relay did not close".into()))?;
            match msg {
                None => return Ok(None),
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Binary(b))) => self.frames.push(&b),
                Some(Ok(_)) => {}
                Some(Err(_)) => return Ok(None),
            }
        }
    }
}

/// One event to write to a v4 log: its payload is the app's SchemaBinary (see
/// [`wharf_protocol::v4::payload::encode`] for a JSON object).
#[derive(Debug, Clone)]
pub struct V4Event {
    pub event: String,
    pub primary_key: String,
    pub payload: Bytes,
}

/// The most entries Effect's client puts in one batch, and the plaintext bytes after which it
/// starts another.
const BATCH_ENTRIES: usize = 100;
const BATCH_BYTES: usize = 256 * 1024;

/// Encrypts events into batches as Effect's client does: at most 100 entries and 256 KiB of
/// payload each (an event larger than that goes alone), a UUIDv7 per entry, a random iv per
/// batch.
pub fn encrypt_events(
    identity: &V4Identity,
    store: &str,
    events: &[V4Event],
    rng: &mut impl rand::RngCore,
) -> Result<Vec<EncryptedBatch>, Error> {
    use wharf_protocol::v4::BatchEntry;
    let mut batches = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len() && end - start < BATCH_ENTRIES {
            let size = events[end].payload.len();
            if end > start && bytes + size > BATCH_BYTES {
                break;
            }
            bytes += size;
            end += 1;
        }
        let entries: Vec<BatchEntry> = events[start..end]
            .iter()
            .map(|e| BatchEntry {
                id: *uuid::Uuid::now_v7().as_bytes(),
                event: e.event.clone(),
                primary_key: e.primary_key.clone(),
                payload: e.payload.clone(),
            })
            .collect();
        let ids: Vec<[u8; 16]> = entries.iter().map(|e| e.id).collect();
        let mut iv = [0u8; 12];
        rng.fill_bytes(&mut iv);
        let plaintext = BatchEntry::encode_all(&entries);
        let ciphertext = identity
            .encrypt_batch(store, &ids, &iv, &plaintext)
            .map_err(v4)?;
        batches.push(EncryptedBatch {
            entry_ids: ids,
            iv: Bytes::copy_from_slice(&iv),
            encrypted_batch: ciphertext.into(),
        });
        start = end;
    }
    Ok(batches)
}

/// Decrypts a stored batch: each entry with its sequence.
pub fn decrypt_batch(
    identity: &V4Identity,
    store: &str,
    batch: &RemoteBatch,
) -> Result<Vec<(u64, wharf_protocol::v4::BatchEntry)>, Error> {
    let b = &batch.batch;
    let plaintext = identity
        .decrypt_batch(store, &b.entry_ids, &b.iv, &b.encrypted_batch)
        .map_err(v4)?;
    let entries = wharf_protocol::v4::BatchEntry::decode_all(&plaintext).map_err(v4)?;
    let ids: Vec<[u8; 16]> = entries.iter().map(|e| e.id).collect();
    if ids != b.entry_ids {
        return Err(Error::Protocol(
            "a batch whose entries are not the ids it was stored under".into(),
        ));
    }
    Ok((0u64..).map(|i| batch.sequence + i).zip(entries).collect())
}
