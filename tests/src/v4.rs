//! A raw Effect v4 client for the suites: the RPC envelope over a real WebSocket, written with
//! wharf-protocol's v4 codec (whose bytes the golden vectors hold to effect@4.1.0's).

use std::collections::VecDeque;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wharf_protocol::v4::eventlog::{self, tag};
use wharf_protocol::v4::{
    Authenticate, BatchEntry, ChangesRequest, Chunked, EncryptedBatch, Exit, FrameBuffer,
    FromClient, FromServer, HelloResponse, RemoteBatch, Request, RequestId, StreamElement,
    V4Identity, WriteAck, WriteEntries,
};

use crate::PATIENCE;

/// A fresh v4 identity (random publicKey and secret).
pub fn identity() -> V4Identity {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    V4Identity::new(uuid::Uuid::new_v4().to_string(), secret)
}

/// A batch of `n` entries of `size` bytes each, encrypted for `store` (random ids and iv).
pub fn batch(id: &V4Identity, store: &str, n: usize, size: usize) -> EncryptedBatch {
    let mut rng = rand::thread_rng();
    let entries: Vec<BatchEntry> = (0..n)
        .map(|i| {
            let mut entry_id = [0u8; 16];
            rng.fill_bytes(&mut entry_id);
            let mut payload = vec![0u8; size];
            rng.fill_bytes(&mut payload);
            BatchEntry {
                id: entry_id,
                event: "Noted".into(),
                primary_key: format!("k{i}"),
                payload: payload.into(),
            }
        })
        .collect();
    let ids: Vec<[u8; 16]> = entries.iter().map(|e| e.id).collect();
    let mut iv = [0u8; 12];
    rng.fill_bytes(&mut iv);
    let plaintext = BatchEntry::encode_all(&entries);
    EncryptedBatch {
        entry_ids: ids.clone(),
        iv: iv.to_vec().into(),
        encrypted_batch: id
            .encrypt_batch(store, &ids, &iv, &plaintext)
            .expect("encrypts")
            .into(),
    }
}

/// One v4 connection.
pub struct V4Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    frames: FrameBuffer,
    /// Messages read while waiting for another.
    queue: VecDeque<FromServer>,
    next_id: i64,
    pub hello: Option<HelloResponse>,
}

impl std::fmt::Debug for V4Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4Client").finish_non_exhaustive()
    }
}

impl V4Client {
    pub async fn connect(url: &str) -> Result<Self> {
        let request = url.into_client_request()?;
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .context("connect timed out")??;
        Ok(Self {
            ws,
            frames: FrameBuffer::new(64 << 20),
            queue: VecDeque::new(),
            // Effect's ids come from a process-wide counter: not from 0.
            next_id: 1000,
            hello: None,
        })
    }

    pub async fn send(&mut self, msg: &FromClient) -> Result<()> {
        self.send_raw(msg.encode()).await
    }

    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<()> {
        self.ws.send(Message::Binary(bytes)).await?;
        Ok(())
    }

    /// Sends a request; its id.
    pub async fn request(&mut self, tag: &str, payload: Vec<u8>) -> Result<RequestId> {
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
    pub async fn recv(&mut self) -> Result<Option<FromServer>> {
        if let Some(m) = self.queue.pop_front() {
            return Ok(Some(m));
        }
        loop {
            if let Some(body) = self.frames.next_frame()? {
                return Ok(Some(FromServer::decode(&body)?));
            }
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("no message from the relay")?;
            match msg {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(b))) => self.frames.push(&b),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Reads until the Exit of `id` (other messages are kept for later).
    pub async fn exit_of(&mut self, id: &RequestId) -> Result<Bytes> {
        let mut kept = VecDeque::new();
        let found = loop {
            let Some(m) = self.recv().await? else {
                bail!("closed before the exit of {id:?}")
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

    pub async fn call(&mut self, tag: &str, payload: Vec<u8>) -> Result<Bytes> {
        let id = self.request(tag, payload).await?;
        self.exit_of(&id).await
    }

    pub async fn hello(&mut self) -> Result<HelloResponse> {
        let exit = self.call(tag::HELLO, eventlog::encode_void()).await?;
        match Exit::<HelloResponse>::decode(&exit)? {
            Exit::Success(h) => {
                self.hello = Some(h.clone());
                Ok(h)
            }
            other => bail!("Hello failed: {other:?}"),
        }
    }

    /// Hello, then Authenticate as `id`.
    pub async fn authenticate(&mut self, id: &V4Identity) -> Result<Exit<()>> {
        let hello = self.hello().await?;
        let signature = id.sign_challenge(&hello.remote_id, &hello.challenge);
        self.authenticate_with(Authenticate {
            public_key: id.public_key.clone(),
            signing_public_key: id.signing_public_key().to_vec(),
            signature: signature.to_vec(),
        })
        .await
    }

    pub async fn authenticate_with(&mut self, auth: Authenticate) -> Result<Exit<()>> {
        let exit = self.call(tag::AUTHENTICATE, auth.encode()).await?;
        Ok(Exit::decode(&exit)?)
    }

    pub async fn write(
        &mut self,
        id: &V4Identity,
        store: &str,
        batches: Vec<EncryptedBatch>,
    ) -> Result<Exit<Vec<WriteAck>>> {
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
                let empty = matches!(Exit::<Vec<WriteAck>>::decode(&exit)?, Exit::Success(ref a) if a.is_empty());
                if !empty || answer.is_none() {
                    answer = Some(exit);
                }
            }
            answer.unwrap_or_default()
        };
        Ok(Exit::decode(&exit)?)
    }

    /// Starts `Changes`; read with [`V4Client::batches`].
    pub async fn changes(
        &mut self,
        public_key: &str,
        store: &str,
        start: u64,
    ) -> Result<RequestId> {
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
    pub async fn batches(&mut self, id: &RequestId) -> Result<Vec<RemoteBatch>> {
        let mut parts: Vec<Option<Bytes>> = Vec::new();
        loop {
            let mut kept = VecDeque::new();
            let values = loop {
                let Some(m) = self.recv().await? else {
                    bail!("closed while waiting for changes")
                };
                match m {
                    FromServer::Chunk { request_id, values } if request_id == *id => break values,
                    FromServer::Exit { request_id, exit } if request_id == *id => {
                        bail!("the stream ended: {:?}", Exit::<()>::decode(&exit)?)
                    }
                    other => kept.push_back(other),
                }
            };
            kept.extend(self.queue.drain(..));
            self.queue = kept;
            self.send(&FromClient::Ack(id.clone())).await?;
            for element in StreamElement::decode_all(&values)? {
                match element {
                    StreamElement::Single(data) => return Ok(RemoteBatch::decode_all(&data)?),
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
                            return Ok(RemoteBatch::decode_all(&joined)?);
                        }
                    }
                }
            }
        }
    }

    /// Batches of stream `id` until `count` entries arrived.
    pub async fn collect(&mut self, id: &RequestId, count: usize) -> Result<Vec<RemoteBatch>> {
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

    /// How the connection ended (the close code), reading past anything else.
    pub async fn closed(&mut self) -> Result<Option<u16>> {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("the relay did not close")?;
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
