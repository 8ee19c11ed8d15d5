//! One WebSocket connection: decodes what the client sends, hands writes to the tenant actor,
//! runs one subscription task per subscribed log, and owns the socket's write side.
//!
//! Two outbound queues feed the socket: `control` (Hello, Ack, Pong, Error, Close) and `bulk`
//! (Changes, CaughtUp). The writer always drains `control` first, also between the frames of a
//! multi-frame `bulk` item, so a Pong never waits behind a large catch-up. Both queues are
//! bounded: a subscriber that cannot keep up blocks only its own subscription task, whose live
//! feed then lags and is replaced by reads from storage. Nothing is dropped, nothing blocks
//! the tenant, and the connection is never closed for being slow.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, SplitSink, StreamExt};
use futures_util::{FutureExt, SinkExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use wharf_protocol::message::encode_changes;
use wharf_protocol::{
    ClientMsg, ErrorCode, Inbound, InboundError, JsNumber, RelayMsg, RemoteEntry, WriteEntries,
    WriteSnapshot,
};

use crate::app::App;
use crate::auth::{Grant, Refusal};
use crate::config::TenantId;
use crate::limits::{Slot, Throttle};
use crate::live::ConnId;
use crate::live::{LiveBatch, TailRead};
use crate::metrics::Metrics;
use crate::tenant::{Acked, Subscribed, TenantError, TenantHandle};
use wharf_store::{SnapshotRefusal, Store, StoredSnapshot};

/// WebSocket close codes the relay uses. Never 1000: a v3 client treats it as "done for good".
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

pub(crate) enum Out {
    Frame(Bytes),
    Frames(Arc<[Bytes]>),
    Close(u16, String),
}

/// Why a connection must end, as told to the client.
#[derive(Debug)]
struct Violation {
    close: u16,
    code: ErrorCode,
    reason: String,
}

impl Violation {
    fn new(close: u16, code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            close,
            code,
            reason: reason.into(),
        }
    }

    fn limit(reason: impl Into<String>) -> Self {
        Self::new(
            close_code::POLICY_VIOLATION,
            ErrorCode::LimitExceeded,
            reason,
        )
    }

    fn invalid(reason: impl Into<String>) -> Self {
        Self::new(
            close_code::PROTOCOL_ERROR,
            ErrorCode::InvalidMessage,
            reason,
        )
    }

    fn refused(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::Unauthenticated(_) => ErrorCode::Unauthorized,
            Refusal::Forbidden(_) => ErrorCode::Forbidden,
        };
        Self::new(close_code::POLICY_VIOLATION, code, refusal.to_string())
    }

    /// A write or snapshot the tenant refused, or a failure.
    fn tenant(e: TenantError) -> Self {
        match &e {
            TenantError::Quota(why) => Self::new(
                close_code::POLICY_VIOLATION,
                ErrorCode::QuotaExceeded,
                why.clone(),
            ),
            TenantError::Snapshot(refusal) => {
                let code = match refusal {
                    SnapshotRefusal::Quota(_) => ErrorCode::QuotaExceeded,
                    SnapshotRefusal::NotReached { .. } => ErrorCode::SnapshotRefused,
                };
                Self::new(close_code::POLICY_VIOLATION, code, refusal.to_string())
            }
            _ => Self::internal(&e),
        }
    }

    fn internal(e: &TenantError) -> Self {
        Self::new(
            close_code::INTERNAL_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    }
}

/// Aborts a subscription task when its entry leaves the map (StopChanges, replacement, end).
struct SubscriptionTask(JoinHandle<()>);

impl Drop for SubscriptionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A write's (or snapshot's) id, when it arrived, and its outcome once the tenant has it.
type PendingAck = futures_util::future::BoxFuture<'static, (JsNumber, Instant, Done)>;

/// What the tenant did with a write or a snapshot.
enum Done {
    Write(Result<Acked, TenantError>),
    Snapshot(Result<u64, TenantError>),
}

/// Everything a session starts from, decided before the upgrade.
#[derive(Debug)]
pub struct SessionInit {
    pub tenant: TenantId,
    pub conn: ConnId,
    /// Whether the client negotiated `wharf.v1`.
    pub extension: bool,
    /// What the connection may do ([`crate::auth`]).
    pub grant: Grant,
    /// Its place under the connection limits, held until it ends ([`crate::limits`]).
    pub slot: Slot,
}

struct Session {
    app: Arc<App>,
    tenant: TenantId,
    conn: ConnId,
    extension: bool,
    grant: Grant,
    throttle: Throttle,
    /// Whether this connection's first throttling was logged (once per connection).
    throttle_logged: bool,
    handle: TenantHandle,
    store: Store,
    control: mpsc::Sender<Out>,
    bulk: mpsc::Sender<Out>,
    subscriptions: HashMap<String, SubscriptionTask>,
    pending: FuturesOrdered<PendingAck>,
    inbound: Inbound<ClientMsg>,
    started: Instant,
    /// Whether this connection's first reused iv was logged (once per connection).
    iv_warned: bool,
    /// Cancelled when an administrator deletes or replaces the tenant.
    evicted: tokio_util::sync::CancellationToken,
}

/// Runs a connection to its end.
pub async fn run(socket: WebSocket, init: SessionInit, app: Arc<App>) {
    let span = tracing::info_span!(
        "conn",
        tenant = init.tenant.as_str(),
        conn = init.conn,
        sub = init.grant.subject()
    );
    tracing::Instrument::instrument(run_inner(socket, init, app), span).await;
}

async fn run_inner(socket: WebSocket, init: SessionInit, app: Arc<App>) {
    let SessionInit {
        tenant,
        conn,
        extension,
        grant,
        slot,
    } = init;
    let throttle = slot.throttle();
    let (sink, mut stream) = socket.split();
    let (control, control_rx) = mpsc::channel(64);
    let (bulk, bulk_rx) = mpsc::channel(app.config.outbound_queue_messages.max(1));
    let writer = tokio::spawn(write_loop(sink, control_rx, bulk_rx, app.metrics.clone()));
    debug!(extension, "connected");

    let (handle, attached) = match app.registry.attach(&tenant).await {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "cannot open tenant");
            let v = Violation::internal(&e);
            if extension {
                let _ = control.send(Out::Frame(error_frame(&v))).await;
            }
            let _ = control.send(Out::Close(v.close, v.reason)).await;
            drop(control);
            drop(bulk);
            let _ = writer.await;
            return;
        }
    };
    let hello = RelayMsg::Hello {
        remote_id: Bytes::copy_from_slice(attached.remote_id.as_bytes()),
    };
    let _lease = attached.lease;
    let _ = control.send(Out::Frame(Bytes::from(hello.encode()))).await;

    let mut session = Session {
        inbound: Inbound::new(app.config.reassembler_limits()),
        app,
        tenant,
        conn,
        extension,
        grant,
        throttle,
        throttle_logged: false,
        handle,
        store: attached.store,
        evicted: attached.evicted,
        control,
        bulk,
        subscriptions: HashMap::new(),
        pending: FuturesOrdered::new(),
        started: Instant::now(),
        iv_warned: false,
    };
    let end = session.read_loop(&mut stream).await;
    session.finish(end).await;
    let timeout = session.app.config.shutdown_timeout;
    drop(session);
    // The place under the connection limits is free once the session is.
    drop(slot);
    // The writer ends after sending Close (or when the peer is gone).
    if tokio::time::timeout(timeout, writer).await.is_err() {
        debug!("peer did not take the close frame in time");
    }
    debug!("disconnected");
}

/// How the read loop ended.
enum End {
    /// The client closed or vanished: nothing more to say.
    PeerGone,
    ShuttingDown,
    Violation(Violation),
}

impl Session {
    async fn read_loop(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
    ) -> End {
        let max_pending = self.app.config.max_pending_writes_per_connection.max(1);
        let shutdown = self.app.shutdown.clone();
        // While over a rate limit, frames stay unread until this instant (Acks of what was read
        // and subscriptions go on; Pings wait with the other frames).
        let mut paused: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Writes the client sent before the shutdown may still sit in the socket:
                    // read until it has been quiet for a moment, so they are committed and
                    // acked before the close rather than left for the client to resend.
                    let grace = self.app.config.shutdown_read_grace;
                    while let Ok(Some(Ok(frame))) = tokio::time::timeout(grace, stream.next()).await {
                        if let Message::Binary(frame) = frame {
                            if let Err(v) = self.on_frame(frame).await {
                                return End::Violation(v);
                            }
                        }
                    }
                    return End::ShuttingDown;
                }
                refusal = self.grant.ended() => return End::Violation(self.refuse(refusal)),
                () = self.evicted.cancelled() => {
                    return End::Violation(Violation::new(
                        close_code::POLICY_VIOLATION,
                        ErrorCode::Other("tenant_removed".into()),
                        "the tenant was deleted or replaced by an administrator",
                    ));
                }
                () = sleep_until(paused) => paused = self.settle(false),
                Some((id, arrived, result)) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(v) = self.send_ack(id, arrived, result).await {
                        return End::Violation(v);
                    }
                }
                frame = stream.next(), if paused.is_none() && self.pending.len() < max_pending => {
                    let result = match frame {
                        None | Some(Ok(Message::Close(_))) => return End::PeerGone,
                        Some(Ok(Message::Binary(frame))) => self.on_frame(frame).await,
                        Some(Ok(Message::Text(_))) => Err(Violation::new(
                            close_code::UNSUPPORTED_DATA,
                            ErrorCode::UnsupportedData,
                            "text frames are not part of the protocol; send msgpack in binary frames",
                        )),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Err(e)) => match capacity_error(&e) {
                            Some(reason) => Err(Violation::new(close_code::MESSAGE_TOO_BIG, ErrorCode::LimitExceeded, reason)),
                            None => {
                                debug!(error = %e, "read failed");
                                return End::PeerGone;
                            }
                        },
                    };
                    if let Err(v) = result {
                        return End::Violation(v);
                    }
                    paused = self.settle(true);
                }
            }
        }
    }

    /// Pays for what the client sent; when over a rate, when to try again (reading stops
    /// until then). `fresh`: the first wait after reading, counted and logged.
    fn settle(&mut self, fresh: bool) -> Option<tokio::time::Instant> {
        let wait = self.throttle.settle()?;
        if fresh {
            self.app.metrics.throttled.inc();
            if !std::mem::replace(&mut self.throttle_logged, true) {
                info!(
                    wait_ms = wait.as_millis(),
                    "over a rate limit: reading paused (logged once per connection)"
                );
            }
        }
        Some(tokio::time::Instant::now() + wait)
    }

    /// Flushes the Acks of writes already handed to the actor, then closes.
    async fn finish(&mut self, end: End) {
        self.subscriptions.clear();
        let (close, reason, error) = match end {
            End::PeerGone => (None, String::new(), None),
            End::ShuttingDown => (
                Some(close_code::GOING_AWAY),
                "relay shutting down".to_owned(),
                Some(Violation::new(
                    close_code::GOING_AWAY,
                    ErrorCode::ShuttingDown,
                    "relay shutting down",
                )),
            ),
            End::Violation(v) => {
                warn!(close = v.close, reason = %v.reason, "closing connection");
                let metrics = &self.app.metrics;
                match v.close {
                    // Counted where the refusal is decided (`refuse`).
                    close_code::POLICY_VIOLATION => {}
                    close_code::MESSAGE_TOO_BIG => metrics.closed_too_big.inc(),
                    close_code::INTERNAL_ERROR => metrics.closed_internal.inc(),
                    _ => metrics.closed_protocol.inc(),
                }
                (Some(v.close), v.reason.clone(), Some(v))
            }
        };
        while let Some((id, arrived, result)) = self.pending.next().await {
            if self.send_ack(id, arrived, result).await.is_err() {
                break;
            }
        }
        if let Some(code) = close {
            if let (true, Some(v)) = (self.extension, &error) {
                let _ = self.control.send(Out::Frame(error_frame(v))).await;
            }
            let _ = self.control.send(Out::Close(code, reason)).await;
        }
    }

    async fn send_ack(
        &mut self,
        id: JsNumber,
        arrived: Instant,
        done: Done,
    ) -> Result<(), Violation> {
        let result = match done {
            Done::Write(result) => result,
            Done::Snapshot(Ok(sequence)) => {
                let ack = RelayMsg::SnapshotAck { id, sequence };
                let _ = self
                    .control
                    .send(Out::Frame(Bytes::from(ack.encode())))
                    .await;
                return Ok(());
            }
            Done::Snapshot(Err(e)) => return Err(Violation::tenant(e)),
        };
        match result {
            Ok(acked) => {
                self.app.metrics.observe_ack(arrived.elapsed());
                if acked.iv_reused {
                    self.iv_reused("its AES-GCM iv is already used in this log", None);
                }
                let ack = RelayMsg::Ack {
                    id,
                    sequence_numbers: acked.sequences,
                };
                let _ = self
                    .control
                    .send(Out::Frame(Bytes::from(ack.encode())))
                    .await;
                Ok(())
            }
            Err(e @ TenantError::IvRefused) => {
                self.app.metrics.bump_iv_reuse(self.tenant.as_str());
                Err(Violation::new(
                    close_code::POLICY_VIOLATION,
                    ErrorCode::UnsupportedData,
                    e.to_string(),
                ))
            }
            Err(e) => Err(Violation::tenant(e)),
        }
    }

    /// Counts a write whose iv was reused, and logs the first of this connection.
    fn iv_reused(&mut self, why: &str, public_key: Option<&str>) {
        self.app.metrics.bump_iv_reuse(self.tenant.as_str());
        if !std::mem::replace(&mut self.iv_warned, true) {
            match public_key {
                Some(public_key) => warn!(
                    public_key,
                    "iv reuse: {why}; see SECURITY.md (logged once per connection)"
                ),
                None => warn!("iv reuse: {why}; see SECURITY.md (logged once per connection)"),
            }
        }
    }

    /// A policy close (1008), counted.
    fn refuse(&self, refusal: Refusal) -> Violation {
        self.app.metrics.closed_by_policy.inc();
        Violation::refused(refusal)
    }

    async fn on_frame(&mut self, frame: Bytes) -> Result<(), Violation> {
        self.throttle.charge_bytes(frame.len());
        self.app.metrics.received_bytes.inc_by(frame.len() as u64);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let msg = match self.inbound.push(&frame, now) {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(()),
            Err(e @ InboundError::Chunk(_)) => return Err(Violation::limit(e.to_string())),
            Err(e) => return Err(Violation::invalid(e.to_string())),
        };
        self.on_message(msg).await
    }

    async fn on_message(&mut self, msg: ClientMsg) -> Result<(), Violation> {
        if let Err(refusal) = self.grant.authorize(&msg) {
            return Err(self.refuse(refusal));
        }
        match msg {
            ClientMsg::Ping { id } => {
                let pong = RelayMsg::Pong { id };
                let _ = self
                    .control
                    .send(Out::Frame(Bytes::from(pong.encode())))
                    .await;
            }
            ClientMsg::WriteEntries(w) => self.on_write(w).await?,
            ClientMsg::WriteSnapshot(w) => self.on_snapshot(w).await?,
            ClientMsg::RequestChanges {
                public_key,
                start_sequence,
                snapshot,
            } => {
                self.check_public_key(&public_key)?;
                debug!(%public_key, start_sequence, "subscribe");
                if !self.subscriptions.contains_key(&public_key)
                    && self.subscriptions.len() >= self.app.config.max_subscriptions_per_connection
                {
                    return Err(Violation::limit(format!(
                        "more than {} subscriptions on one connection",
                        self.app.config.max_subscriptions_per_connection
                    )));
                }
                let feed = Feed {
                    public_key: public_key.clone(),
                    conn: self.conn,
                    extension: self.extension,
                    store: self.store.clone(),
                    bulk: self.bulk.clone(),
                    control: self.control.clone(),
                    app: self.app.clone(),
                };
                let handle = self.handle.clone();
                let task = tokio::spawn(tracing::Instrument::in_current_span(feed.run(
                    handle,
                    start_sequence,
                    snapshot,
                )));
                // Replacing an entry drops (and so aborts) the previous subscription.
                self.subscriptions
                    .insert(public_key, SubscriptionTask(task));
            }
            ClientMsg::StopChanges { public_key } => {
                self.subscriptions.remove(&public_key);
            }
            // `Inbound` only returns whole messages.
            ClientMsg::Chunked(_) => return Err(Violation::invalid("unexpected chunk")),
        }
        Ok(())
    }

    fn check_public_key(&self, public_key: &str) -> Result<(), Violation> {
        if public_key.starts_with(wharf_protocol::v4::stored::LOG_PREFIX) {
            return Err(Violation::invalid(format!(
                "publicKey {:?}: keys starting with {:?} are the relay's names for Effect v4 logs",
                public_key.chars().take(64).collect::<String>(),
                wharf_protocol::v4::stored::LOG_PREFIX
            )));
        }
        let max = self.app.config.max_public_key_bytes;
        if public_key.len() > max {
            return Err(Violation::limit(format!(
                "publicKey is {} bytes; the limit is {max}",
                public_key.len()
            )));
        }
        Ok(())
    }

    /// The guardrail on ciphertext metadata: a 12-byte iv is an AES-GCM nonce, which must never
    /// encrypt twice under one key. Several entries of one write sharing its iv (Effect v3 does
    /// this) is seen here; an iv already stored in the log is seen by the tenant's commit,
    /// which flags it in the Ack (or refuses the write under `strict_iv`). Counted per tenant
    /// and logged once per connection.
    fn check_iv(&mut self, w: &WriteEntries) -> Result<(), Violation> {
        if w.iv.len() != 12 || w.entries.len() < 2 {
            return Ok(());
        }
        let why = format!("{} entries share one AES-GCM iv", w.entries.len());
        if self.app.config.strict_iv {
            self.app.metrics.bump_iv_reuse(self.tenant.as_str());
            return Err(Violation::new(
                close_code::POLICY_VIOLATION,
                ErrorCode::UnsupportedData,
                format!("write refused: {why} (nonce reuse; strict_iv is on)"),
            ));
        }
        self.iv_reused(&why, Some(&w.public_key));
        Ok(())
    }

    async fn on_snapshot(&mut self, w: WriteSnapshot) -> Result<(), Violation> {
        self.check_public_key(&w.public_key)?;
        let max = self.app.config.max_snapshot_bytes;
        if w.data.len() > max {
            return Err(Violation::new(
                close_code::POLICY_VIOLATION,
                ErrorCode::SnapshotRefused,
                format!("snapshot is {} bytes; the limit is {max}", w.data.len()),
            ));
        }
        if w.iv.len() > self.app.config.max_entry_id_bytes {
            return Err(Violation::limit(format!(
                "a snapshot iv is longer than {} bytes",
                self.app.config.max_entry_id_bytes
            )));
        }
        self.throttle.charge_write();
        let id = w.id;
        let arrived = Instant::now();
        let reply = self
            .handle
            .snapshot(
                w.public_key,
                StoredSnapshot {
                    sequence: w.sequence,
                    iv: w.iv,
                    data: w.data,
                },
            )
            .await
            .map_err(|e| Violation::internal(&e))?;
        self.pending.push_back(
            async move {
                let result = reply.await.unwrap_or(Err(TenantError::Closed));
                (id, arrived, Done::Snapshot(result))
            }
            .boxed(),
        );
        Ok(())
    }

    async fn on_write(&mut self, w: WriteEntries) -> Result<(), Violation> {
        let config = &self.app.config;
        self.check_public_key(&w.public_key)?;
        if w.entries.len() > config.max_entries_per_write {
            return Err(Violation::limit(format!(
                "{} entries in one write; the limit is {}",
                w.entries.len(),
                config.max_entries_per_write
            )));
        }
        let max_id = config.max_entry_id_bytes;
        if w.iv.len() > max_id || w.entries.iter().any(|e| e.entry_id.len() > max_id) {
            return Err(Violation::limit(format!(
                "an iv or entryId is longer than {max_id} bytes"
            )));
        }
        if w.entries.iter().any(|e| e.entry_id.is_empty()) {
            return Err(Violation::invalid("an entryId is empty"));
        }
        self.check_iv(&w)?;
        let id = w.id;
        if !w.entries.is_empty() {
            self.throttle.charge_write();
        }
        if w.entries.is_empty() {
            // Nothing to make durable; the Ack still waits its turn behind earlier writes.
            let acked = Acked {
                sequences: Vec::new(),
                iv_reused: false,
            };
            let arrived = Instant::now();
            self.pending
                .push_back(async move { (id, arrived, Done::Write(Ok(acked))) }.boxed());
            return Ok(());
        }
        let arrived = Instant::now();
        let reply = self
            .handle
            .write(w.public_key, w.iv, w.entries, self.conn)
            .await
            .map_err(|e| Violation::internal(&e))?;
        self.pending.push_back(
            async move {
                let result = reply.await.unwrap_or(Err(TenantError::Closed));
                (id, arrived, Done::Write(result))
            }
            .boxed(),
        );
        Ok(())
    }
}

/// One subscription: the backlog from storage, then the live feed, with no gap and no
/// duplicate across the handover.
struct Feed {
    public_key: String,
    conn: ConnId,
    extension: bool,
    store: Store,
    bulk: mpsc::Sender<Out>,
    control: mpsc::Sender<Out>,
    app: Arc<App>,
}

impl Feed {
    async fn run(self, handle: TenantHandle, start: u64, snapshot: bool) {
        if let Err(Some(e)) = self.run_inner(handle, start, snapshot).await {
            warn!(error = %e, public_key = %self.public_key, "subscription failed");
            let v = Violation::internal(&e);
            if self.extension {
                let _ = self.control.send(Out::Frame(error_frame(&v))).await;
            }
            let _ = self.control.send(Out::Close(v.close, v.reason)).await;
        }
    }

    /// `Err(None)`: the connection went away; `Err(Some(e))`: storage failed.
    async fn run_inner(
        &self,
        handle: TenantHandle,
        start: u64,
        snapshot: bool,
    ) -> Result<(), Option<TenantError>> {
        let Subscribed {
            live,
            mut changes,
            next_sequence,
        } = handle
            .subscribe(self.public_key.clone())
            .await
            .map_err(Some)?;
        if self.extension {
            let msg = RelayMsg::Head {
                public_key: self.public_key.clone(),
                next_sequence,
            };
            self.send(Out::Frame(Bytes::from(msg.encode()))).await?;
        }
        // History deleted by retention: a `wharf.v1` reader gets the newest snapshot (when it
        // asked for one, or when what it asked for is gone) and is told where history starts;
        // a v3 reader gets what remains.
        let mut start = start;
        if self.extension {
            let (first, newest) = self
                .store
                .history(&self.public_key)
                .await
                .map_err(|e| Some(TenantError::from(e)))?;
            let wanted =
                newest.filter(|s| *s >= start && *s < next_sequence && (snapshot || start < first));
            // Retention may drop the snapshot between the two reads: then there is none to send.
            let snap = match wanted {
                Some(seq) => self
                    .store
                    .snapshot(&self.public_key, seq)
                    .await
                    .map_err(|e| Some(TenantError::from(e)))?,
                None => None,
            };
            if let Some(snap) = snap {
                let msg = RelayMsg::Snapshot {
                    public_key: self.public_key.clone(),
                    sequence: snap.sequence,
                    iv: snap.iv,
                    data: snap.data,
                };
                let id = JsNumber::from(self.app.chunk_ids.fetch_add(1, Ordering::Relaxed));
                let frames: Arc<[Bytes]> =
                    wharf_protocol::frames(Bytes::from(msg.encode()), id).collect();
                self.send(Out::Frames(frames)).await?;
                start = snap.sequence + 1;
            }
            if start < first {
                self.history_starts(first).await?;
                start = first;
            }
        }
        // Everything below `next_sequence` is in storage; everything from it on is in the tail.
        let mut cursor = self.catch_up(start, next_sequence).await?;
        if self.extension {
            let msg = RelayMsg::CaughtUp {
                public_key: self.public_key.clone(),
                next_sequence: cursor.max(next_sequence),
            };
            self.send(Out::Frame(Bytes::from(msg.encode()))).await?;
        }
        loop {
            match live.read_from(cursor) {
                TailRead::Behind { tail_start } => {
                    let metrics = &self.app.metrics;
                    metrics.subscriber_fallbacks.inc();
                    metrics
                        .subscriber_lag
                        .observe(tail_start.saturating_sub(cursor) as f64);
                    debug!(
                        cursor,
                        tail_start, "subscriber fell behind; reading from storage"
                    );
                    cursor = self.catch_up(cursor, tail_start).await?;
                    continue;
                }
                TailRead::Batches(batches) => {
                    for batch in batches {
                        self.send_live(&batch, cursor).await?;
                        cursor = batch.end();
                    }
                }
            }
            // Sleep until a commit moves the log past the cursor.
            let reached = changes.wait_for(|next| *next > cursor).await;
            if reached.is_err() {
                return Err(None);
            }
        }
    }

    async fn history_starts(&self, first: u64) -> Result<(), Option<TenantError>> {
        let msg = RelayMsg::HistoryStarts {
            public_key: self.public_key.clone(),
            first_sequence: first,
        };
        self.send(Out::Frame(Bytes::from(msg.encode()))).await
    }

    /// Sends stored entries with `from <= sequence < to` and returns `to`: every entry below it
    /// was sent, or deleted by retention meanwhile (a `wharf.v1` reader is told where the
    /// history it missed ends). The first page is small, so the first entries leave quickly;
    /// later pages are read while the previous one is being sent.
    async fn catch_up(&self, from: u64, to: u64) -> Result<u64, Option<TenantError>> {
        let per_message = self.app.config.changes_max_entries.max(1);
        let (first_page, page) = ((per_message / 4).max(1), per_message * 4);
        let read = |from: u64, limit: usize| async move {
            self.store
                .read(&self.public_key, from, to, limit)
                .await
                .map_err(|e| Some(TenantError::from(e)))
        };
        if from >= to {
            return Ok(from);
        }
        let (mut entries, mut limit) = (read(from, first_page).await?, first_page);
        let mut from = from;
        loop {
            if self.extension {
                let first = entries.first().map_or(to, |e| e.sequence);
                if first > from {
                    // Deleted by retention since the subscription started, or between pages.
                    self.history_starts(first).await?;
                }
            }
            let Some(last) = entries.last() else { break };
            from = last.sequence + 1;
            let more = entries.len() == limit && from < to;
            self.app.metrics.entries_sent.inc_by(entries.len() as u64);
            let frames = self.frames(&entries);
            if !more {
                self.send(Out::Frames(frames)).await?;
                break;
            }
            let (sent, next) = tokio::join!(self.send(Out::Frames(frames)), read(from, page));
            sent?;
            (entries, limit) = (next?, page);
        }
        Ok(to.max(from))
    }

    async fn send_live(&self, batch: &LiveBatch, cursor: u64) -> Result<(), Option<TenantError>> {
        let own = batch.origins.contains(&self.conn);
        if batch.first() >= cursor && !own {
            // The common case: every subscriber of the log gets the same frames, built once.
            self.app
                .metrics
                .entries_sent
                .inc_by(batch.entries.len() as u64);
            let frames = batch
                .frames
                .get_or_init(|| self.frames(&batch.entries))
                .clone();
            return self.send(Out::Frames(frames)).await;
        }
        // The writer gets its Ack instead of an echo of its own entries.
        let entries: Vec<RemoteEntry> = batch
            .entries
            .iter()
            .zip(&batch.origins)
            .filter(|(e, origin)| e.sequence >= cursor && **origin != self.conn)
            .map(|(e, _)| e.clone())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        self.app.metrics.entries_sent.inc_by(entries.len() as u64);
        let frames = self.frames(&entries);
        self.send(Out::Frames(frames)).await
    }

    /// Encodes entries as `Changes` messages of bounded size, each chunked when it exceeds
    /// the chunk size (an entry larger than the bound travels alone).
    fn frames(&self, entries: &[RemoteEntry]) -> Arc<[Bytes]> {
        let max_bytes = self.app.config.changes_max_bytes;
        let max_entries = self.app.config.changes_max_entries.max(1);
        let mut frames = Vec::new();
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut size = 0;
            while end < entries.len() && end - start < max_entries {
                let s = entries[end].encoded_len_bound();
                if end > start && size + s > max_bytes {
                    break;
                }
                size += s;
                end += 1;
            }
            let encoded = Bytes::from(encode_changes(&self.public_key, &entries[start..end]));
            let id = JsNumber::from(self.app.chunk_ids.fetch_add(1, Ordering::Relaxed));
            frames.extend(wharf_protocol::frames(encoded, id));
            start = end;
        }
        frames.into()
    }

    async fn send(&self, out: Out) -> Result<(), Option<TenantError>> {
        self.bulk.send(out).await.map_err(|_| None)
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut control: mpsc::Receiver<Out>,
    mut bulk: mpsc::Receiver<Out>,
    metrics: Arc<Metrics>,
) {
    loop {
        let out = tokio::select! {
            biased;
            Some(out) = control.recv() => out,
            Some(out) = bulk.recv() => out,
            else => break,
        };
        let frames: Arc<[Bytes]> = match out {
            Out::Frame(f) => Arc::from([f]),
            Out::Frames(f) => f,
            Out::Close(code, reason) => return close(&mut sink, code, reason).await,
        };
        for frame in frames.iter() {
            metrics.sent_bytes.inc_by(frame.len() as u64);
            if sink.send(Message::Binary(frame.clone())).await.is_err() {
                return;
            }
            // Control goes ahead of the rest of a multi-frame bulk item.
            while let Ok(out) = control.try_recv() {
                if !send_control(&mut sink, out, &metrics).await {
                    return;
                }
            }
        }
    }
    let _ = sink.close().await;
}

/// Sends one control item; `false` once the socket is closed or gone.
async fn send_control(
    sink: &mut SplitSink<WebSocket, Message>,
    out: Out,
    metrics: &Metrics,
) -> bool {
    let frames: Arc<[Bytes]> = match out {
        Out::Frame(f) => Arc::from([f]),
        Out::Frames(f) => f,
        Out::Close(code, reason) => {
            close(sink, code, reason).await;
            return false;
        }
    };
    for f in frames.iter() {
        metrics.sent_bytes.inc_by(f.len() as u64);
        if sink.send(Message::Binary(f.clone())).await.is_err() {
            return false;
        }
    }
    true
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: truncate_reason(reason).into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
    info!(code, "closed connection");
}

fn error_frame(v: &Violation) -> Bytes {
    let msg = RelayMsg::Error {
        code: v.code.clone(),
        message: v.reason.clone(),
    };
    Bytes::from(msg.encode())
}

/// A close reason must fit in a control frame (123 bytes).
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
}

pub(crate) fn capacity_error(e: &axum::Error) -> Option<String> {
    let text = e.to_string();
    // axum wraps tungstenite's `Error::Capacity`; its message names the limit.
    (text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Capacity"))
    .then(|| format!("frame too large: {text}"))
}
