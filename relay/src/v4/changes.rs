//! One `EventLog.Changes` stream: the stored batches whose last sequence is at or after the
//! start, then the live ones, in sequence order, each batch byte for byte as it was written.
//! Every `Chunk` message waits for the client's `Ack` of the one before (Effect's flow
//! control), and a payload over 512,000 bytes travels as `Chunked` parts, each its own `Chunk`
//! message, so an event of any size reaches the client in frames it accepts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use wharf_protocol::v4::eventlog::CHUNK_BYTES;
use wharf_protocol::v4::stored::{self, MAX_BATCH_ENTRIES};
use wharf_protocol::v4::{
    Chunked, ErrorCode, Exit, FromServer, ProtocolError, RemoteBatch, RequestId, StreamElement,
};
use wharf_protocol::RemoteEntry;

use crate::app::App;
use crate::live::{ConnId, TailRead};
use crate::session::Out;
use crate::tenant::{Subscribed, TenantError, TenantHandle};
use wharf_store::Store;

/// What a stream needs.
pub(super) struct Feed {
    pub request_id: RequestId,
    /// The log's storage key.
    pub log: String,
    pub start: u64,
    pub conn: ConnId,
    pub store: Store,
    pub handle: TenantHandle,
    pub bulk: mpsc::Sender<Out>,
    pub control: mpsc::Sender<Out>,
    pub app: Arc<App>,
}

/// A running stream; dropping it stops it.
pub(super) struct Stream {
    task: JoinHandle<()>,
    acks: Arc<Semaphore>,
}

impl Stream {
    pub fn start(feed: Feed) -> Self {
        let acks = Arc::new(Semaphore::new(0));
        let task = tokio::spawn(feed.run(acks.clone()));
        Self { task, acks }
    }

    /// The client took a chunk: the next may go.
    pub fn ack(&self) {
        // More Acks than chunks are the client's mistake, not a reason to send ahead.
        if self.acks.available_permits() < 1 {
            self.acks.add_permits(1);
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The stream ended: the connection went away (`None`) or storage failed.
type Ended = Option<TenantError>;

impl Feed {
    async fn run(self, acks: Arc<Semaphore>) {
        match self.run_inner(&acks).await {
            Ok(()) | Err(None) => {}
            Err(Some(e)) => {
                warn!(error = %e, log = %self.log, "v4 changes stream failed");
                let (public_key, store_id) = stored::parse_log_key(&self.log).unzip();
                let exit = Exit::<()>::Failure(ProtocolError {
                    request_tag: "Changes".into(),
                    public_key,
                    store_id,
                    code: ErrorCode::InternalServerError,
                    message: e.to_string(),
                });
                let msg = FromServer::Exit {
                    request_id: self.request_id.clone(),
                    exit: exit.encode().into(),
                };
                let _ = self.control.send(Out::Frame(msg.encode())).await;
            }
        }
    }

    async fn run_inner(&self, acks: &Semaphore) -> Result<(), Ended> {
        let Subscribed {
            live,
            mut changes,
            next_sequence,
        } = self
            .handle
            .subscribe(self.log.clone())
            .await
            .map_err(Some)?;
        // A batch holding `start` began at most MAX_BATCH_ENTRIES - 1 before it.
        let from = self.start.saturating_sub(MAX_BATCH_ENTRIES as u64 - 1);
        let mut cursor = self.catch_up(acks, from, next_sequence).await?;
        loop {
            match live.read_from(cursor) {
                TailRead::Behind { tail_start } => {
                    self.app.metrics.subscriber_fallbacks.inc();
                    debug!(
                        cursor,
                        tail_start, "v4 subscriber fell behind; reading from storage"
                    );
                    cursor = self.catch_up(acks, cursor, tail_start).await?;
                    continue;
                }
                TailRead::Batches(batches) => {
                    // Everything committed since the last look goes out together (in payloads
                    // of up to 512,000 bytes): one Chunk and one Ack for many commits, not one
                    // each, so a subscriber that fell behind catches up at once.
                    let mut rows: Vec<&RemoteEntry> = Vec::new();
                    for batch in &batches {
                        for (e, origin) in batch.entries.iter().zip(&batch.origins) {
                            // The writer gets its acks, not an echo of its own batches.
                            if e.sequence >= cursor && *origin != self.conn {
                                rows.push(e);
                            }
                        }
                    }
                    self.send_rows(acks, rows.into_iter()).await?;
                    if let Some(last) = batches.last() {
                        cursor = cursor.max(last.end());
                    }
                }
            }
            if changes.wait_for(|next| *next > cursor).await.is_err() {
                return Err(None);
            }
        }
    }

    /// Sends the batches stored with `from <= sequence < to`; returns `to`.
    async fn catch_up(&self, acks: &Semaphore, from: u64, to: u64) -> Result<u64, Ended> {
        // Pages as the v3 feed reads them (a row holds at most one batch).
        let page = self.app.config.changes_max_entries.max(1) * 4;
        let mut from = from;
        while from < to {
            let rows = self
                .store
                .read(&self.log, from, to, page)
                .await
                .map_err(|e| Some(TenantError::from(e)))?;
            let Some(last) = rows.last() else { break };
            from = last.sequence + 1;
            self.send_rows(acks, rows.iter()).await?;
        }
        Ok(to.max(from))
    }

    /// Rebuilds the batches whose first rows are among `rows` and sends those that end at or
    /// after the stream's start.
    async fn send_rows<'a>(
        &self,
        acks: &Semaphore,
        rows: impl Iterator<Item = &'a RemoteEntry>,
    ) -> Result<(), Ended> {
        let mut batches = Vec::new();
        for row in rows {
            match stored::batch_from_row(row.sequence, &row.iv, &row.encrypted_entry) {
                Ok(Some(b)) if b.last_sequence() >= self.start => batches.push(b),
                Ok(_) => {}
                Err(e) => {
                    return Err(Some(TenantError::Storage(Arc::new(
                        wharf_store::StoreError::Corrupt(format!(
                            "log {} at {}: {e}",
                            self.log, row.sequence
                        )),
                    ))))
                }
            }
        }
        self.send_batches(acks, &batches).await
    }

    /// Groups batches into payloads of at most [`CHUNK_BYTES`] (a larger batch goes alone, in
    /// parts), each payload one `Chunk` message.
    async fn send_batches(&self, acks: &Semaphore, batches: &[RemoteBatch]) -> Result<(), Ended> {
        let mut start = 0;
        while start < batches.len() {
            let mut end = start;
            let mut size = 0;
            while end < batches.len() {
                let b = &batches[end].batch;
                let s = b.encrypted_batch.len() + b.iv.len() + b.entry_ids.len() * 17 + 32;
                if end > start && size + s > CHUNK_BYTES {
                    break;
                }
                size += s;
                end += 1;
            }
            let payload = Bytes::from(RemoteBatch::encode_all(&batches[start..end]));
            self.app.metrics.entries_sent.inc_by(
                batches[start..end]
                    .iter()
                    .map(|b| b.batch.entry_ids.len() as u64)
                    .sum(),
            );
            if payload.len() <= CHUNK_BYTES {
                self.send_chunk(acks, &[StreamElement::Single(payload)])
                    .await?;
            } else {
                let id = self.app.chunk_ids.fetch_add(1, Ordering::Relaxed) as i64;
                for part in Chunked::split(id, &payload) {
                    self.send_chunk(acks, &[StreamElement::Chunked(part)])
                        .await?;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// One `Chunk` message, then the wait for its `Ack`.
    async fn send_chunk(&self, acks: &Semaphore, elements: &[StreamElement]) -> Result<(), Ended> {
        let msg = FromServer::Chunk {
            request_id: self.request_id.clone(),
            values: StreamElement::encode_all(elements).into(),
        };
        self.bulk
            .send(Out::Frame(msg.encode()))
            .await
            .map_err(|_| None)?;
        acks.acquire().await.map_err(|_| None)?.forget();
        Ok(())
    }
}
