//! A lean client of the v3 wire protocol: what a load generator needs and nothing else.
//! It speaks to any v3 relay (Wharf, Effect's memory or SQL server): binary msgpack frames,
//! `ChunkedMessage` both ways, no extension.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wharf_protocol::{
    ClientMsg, EncryptedEntry, Inbound, JsNumber, ReassemblerLimits, RelayMsg, WriteEntries,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one wait for the server may take before the scenario fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Entry ids unique across every connection of this process (the servers dedup by id).
static NEXT_ENTRY: AtomicU64 = AtomicU64::new(1);
static NEXT_IV: AtomicU64 = AtomicU64::new(1);

/// `count` entries of `size` bytes of ciphertext-like filler, each with a fresh id shaped
/// like the UUIDv7 real clients use (Effect's memory server refuses ids that are not UUIDs):
/// 48 bits of milliseconds, version 7, this process, variant, and a process-wide counter.
pub fn entries(count: usize, size: usize) -> Vec<EncryptedEntry> {
    let first = NEXT_ENTRY.fetch_add(count as u64, Ordering::Relaxed);
    let filler = Bytes::from((0..size).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let pid = std::process::id();
    (0..count as u64)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
            id[6] = 0x70 | ((pid >> 8) & 0x0f) as u8;
            id[7] = pid as u8;
            id[8..].copy_from_slice(&(first + i).to_be_bytes());
            id[8] = 0x80 | (id[8] & 0x3f);
            EncryptedEntry {
                entry_id: Bytes::copy_from_slice(&id),
                encrypted_entry: filler.clone(),
            }
        })
        .collect()
}

/// Small socket buffers: a load generator holds thousands of mostly idle connections.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(64 << 20))
}

/// One connection, after the server's `Hello`.
#[allow(missing_debug_implementations)]
pub struct Conn {
    pub tx: Sender,
    pub rx: Receiver,
}

/// The sending half: writes with ids counting from 0, chunked when large.
#[allow(missing_debug_implementations)]
pub struct Sender {
    sink: SplitSink<Ws, Message>,
    next_id: u32,
}

/// The receiving half: frames to whole messages.
#[allow(missing_debug_implementations)]
pub struct Receiver {
    stream: SplitStream<Ws>,
    inbound: Inbound<RelayMsg>,
    started: Instant,
}

impl Conn {
    /// Connects and waits for `Hello`.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        let url: String = url.into();
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true),
        )
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {url}"))?;
        let (sink, stream) = ws.split();
        let mut conn = Conn {
            tx: Sender { sink, next_id: 0 },
            rx: Receiver {
                stream,
                // Effect's memory server sends a whole backlog as one message: a million
                // entries are ~650 chunks of 512 kB.
                inbound: Inbound::new(ReassemblerLimits {
                    max_parts: 1 << 16,
                    max_bytes: 4 << 30,
                    max_age_ms: 10 * 60 * 1000,
                    ..ReassemblerLimits::default()
                }),
                started: Instant::now(),
            },
        };
        match conn.rx.recv().await? {
            RelayMsg::Hello { .. } => Ok(conn),
            other => bail!("expected Hello first, got {other:?}"),
        }
    }

    /// Writes and waits for its Ack, skipping anything else.
    pub async fn write_acked(
        &mut self,
        public_key: &str,
        entries: Vec<EncryptedEntry>,
    ) -> Result<()> {
        let id = self.tx.write(public_key, entries).await?;
        self.rx.ack(id).await
    }
}

/// Connects to every URL, 64 at a time.
pub async fn connect_all(urls: impl IntoIterator<Item = String>) -> Result<Vec<Conn>> {
    let urls: Vec<String> = urls.into_iter().collect();
    let mut conns = Vec::with_capacity(urls.len());
    for chunk in urls.chunks(64) {
        conns.extend(
            futures_util::future::try_join_all(chunk.iter().cloned().map(Conn::connect)).await?,
        );
    }
    Ok(conns)
}

impl Sender {
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<()> {
        let encoded = Bytes::from(msg.encode());
        let id = JsNumber::from(self.next_id);
        for frame in wharf_protocol::frames(encoded, id) {
            self.sink.feed(Message::Binary(frame)).await?;
        }
        self.sink.flush().await?;
        Ok(())
    }

    /// Sends a write; returns its id.
    pub async fn write(&mut self, public_key: &str, entries: Vec<EncryptedEntry>) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        // A fresh 12-byte iv per write, as Effect's clients draw one per batch.
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(&NEXT_IV.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        iv[..4].copy_from_slice(&std::process::id().to_be_bytes());
        let msg = ClientMsg::WriteEntries(WriteEntries {
            public_key: public_key.to_owned(),
            id: JsNumber::from(id),
            iv: Bytes::copy_from_slice(&iv),
            entries,
        });
        self.send(&msg).await?;
        Ok(id)
    }

    pub async fn subscribe(&mut self, public_key: &str, start_sequence: u64) -> Result<()> {
        self.send(&ClientMsg::RequestChanges {
            public_key: public_key.to_owned(),
            start_sequence,
            snapshot: false,
        })
        .await
    }
}

impl Receiver {
    /// The next whole message.
    pub async fn recv(&mut self) -> Result<RelayMsg> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .context("no message in time")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            let data = match frame {
                Message::Binary(data) => data,
                Message::Close(frame) => bail!("closed by the server: {frame:?}"),
                _ => continue,
            };
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Some(msg) = self.inbound.push(&data, now)? {
                return Ok(msg);
            }
        }
    }

    /// Waits for the Ack of write `id`; returns how many entries it acknowledged.
    pub async fn ack(&mut self, id: u32) -> Result<()> {
        loop {
            if let RelayMsg::Ack { id: got, .. } = self.recv().await? {
                if got == JsNumber::from(id) {
                    return Ok(());
                }
            }
        }
    }

    /// The next Ack: (id, entries acknowledged).
    pub async fn next_ack(&mut self) -> Result<(JsNumber, usize)> {
        loop {
            if let RelayMsg::Ack {
                id,
                sequence_numbers,
            } = self.recv().await?
            {
                return Ok((id, sequence_numbers.len()));
            }
        }
    }

    /// The entries of the next `Changes` message.
    pub async fn next_changes(&mut self) -> Result<usize> {
        loop {
            if let RelayMsg::Changes { entries, .. } = self.recv().await? {
                return Ok(entries.len());
            }
        }
    }
}
