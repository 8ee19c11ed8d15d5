//! One Effect v4 connection (`/v4/t/{tenant}`): Effect RPC over WebSocket in schema-binary, the
//! `EventLogRemoteRpcs` group. The tenant actor, the storage, the live tails, the limits and
//! the metrics are the v3 session's; what is new is the envelope, the signed challenge and the
//! batch as the unit of storage ([`wharf_protocol::v4::stored`]).
//!
//! - `Hello` hands out the tenant's remote id and a challenge (32 random bytes, one per
//!   connection at a time, 30 s, used once).
//! - `Authenticate` verifies the signature first, then pins the signing key for the
//!   `publicKey` in the tenant (durably, first writer wins), then checks the presented key is
//!   the pinned one. A bad signature pins nothing.
//! - `WriteSingle` / `WriteChunked` (parts joined per connection, bounded) store each batch as
//!   one unit; a batch whose every entry id is stored is acked at its original sequences.
//! - `Changes` ([`changes`]) sends the stored batches, then live ones, each `Chunk` waiting
//!   for the client's `Ack`.
//!
//! A frame that does not decode gets a `Defect` and the connection closes; a request that
//! fails gets an `EventLogProtocolError` and the connection goes on.

mod changes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rand::RngCore;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use wharf_protocol::v4::eventlog::{self, tag, ENTRY_ID_BYTES};
use wharf_protocol::v4::stored::{self, MAX_BATCH_ENTRIES, PINS_LOG};
use wharf_protocol::v4::{
    verify_auth, Authenticate, ChangesRequest, Chunked, ErrorCode, Exit, FrameBuffer, FromClient,
    FromServer, HelloResponse, ProtocolError, Request, RequestId, WriteAck, WriteEntries,
};
use wharf_protocol::EncryptedEntry;

use crate::app::App;
use crate::auth::{Grant, LogAction};
use crate::session::{capacity_error, close_code, write_loop, Out, SessionInit};
use crate::tenant::{Acked, TenantError, TenantHandle};
use wharf_store::Store;

/// How long a challenge may be answered.
const CHALLENGE_TTL: Duration = Duration::from_secs(30);

/// Runs a v4 connection to its end.
pub async fn run(socket: WebSocket, init: SessionInit, app: Arc<App>) {
    let span = tracing::info_span!(
        "conn",
        tenant = init.tenant.as_str(),
        conn = init.conn,
        sub = init.grant.subject(),
        protocol = "v4"
    );
    tracing::Instrument::instrument(run_inner(socket, init, app), span).await;
}

async fn run_inner(socket: WebSocket, init: SessionInit, app: Arc<App>) {
    let SessionInit {
        tenant,
        conn,
        grant,
        slot,
        ..
    } = init;
    let (sink, mut stream) = socket.split();
    let (control, control_rx) = mpsc::channel(64);
    let (bulk, bulk_rx) = mpsc::channel(app.config.outbound_queue_messages.max(1));
    let writer = tokio::spawn(write_loop(sink, control_rx, bulk_rx, app.metrics.clone()));
    debug!("connected");
    let (handle, attached) = match app.registry.attach(&tenant).await {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "cannot open tenant");
            let _ = control
                .send(Out::Close(close_code::INTERNAL_ERROR, e.to_string()))
                .await;
            drop((control, bulk));
            let _ = writer.await;
            return;
        }
    };
    let _lease = attached.lease;
    let mut session = Session {
        max_frame: app.config.max_frame_bytes,
        frames: FrameBuffer::new(app.config.max_frame_bytes),
        throttle: slot.throttle(),
        app,
        conn,
        grant,
        handle,
        store: attached.store,
        remote_id: *attached.remote_id.as_bytes(),
        control,
        bulk,
        challenge: None,
        authenticated: Vec::new(),
        joins: HashMap::new(),
        streams: HashMap::new(),
        pending: FuturesUnordered::new(),
        evicted: attached.evicted,
    };
    let end = session.read_loop(&mut stream).await;
    session.streams.clear();
    // Writes already handed to the tenant are answered before the close.
    while let Some((id, reply)) = session.pending.next().await {
        session.reply(id, reply).await;
    }
    if let Some((code, reason)) = end {
        if code != close_code::GOING_AWAY {
            warn!(close = code, %reason, "closing connection");
        }
        let _ = session.control.send(Out::Close(code, reason)).await;
    }
    let timeout = session.app.config.shutdown_timeout;
    drop(session);
    drop(slot);
    if tokio::time::timeout(timeout, writer).await.is_err() {
        debug!("peer did not take the close frame in time");
    }
    debug!("disconnected");
}

/// A chunked write being joined.
struct Join {
    parts: Vec<Option<Bytes>>,
    count: usize,
    bytes: usize,
    started: Instant,
}

/// A write's outcome, to answer its request with.
type PendingWrite =
    futures_util::future::BoxFuture<'static, (RequestId, Result<Vec<WriteAck>, ProtocolError>)>;

struct Session {
    app: Arc<App>,
    conn: crate::live::ConnId,
    grant: Grant,
    throttle: crate::limits::Throttle,
    handle: TenantHandle,
    store: Store,
    remote_id: [u8; 16],
    control: mpsc::Sender<Out>,
    bulk: mpsc::Sender<Out>,
    frames: FrameBuffer,
    max_frame: usize,
    /// The challenge `Hello` handed out, and when.
    challenge: Option<([u8; 32], Instant)>,
    /// The identities authenticated on this connection.
    authenticated: Vec<String>,
    joins: HashMap<i64, Join>,
    /// Running `Changes` streams, by request id; dropping one stops it.
    streams: HashMap<String, changes::Stream>,
    pending: FuturesUnordered<PendingWrite>,
    evicted: tokio_util::sync::CancellationToken,
}

/// A request id as a map key (its form too: 1, 1.0 and "1" are three ids).
fn key(id: &RequestId) -> String {
    format!("{id:?}")
}

fn error(request_tag: &str, code: ErrorCode, message: impl Into<String>) -> ProtocolError {
    ProtocolError {
        request_tag: request_tag.to_owned(),
        public_key: None,
        store_id: None,
        code,
        message: message.into(),
    }
}

impl Session {
    /// Reads until the connection ends; `Some((close code, reason))` when the relay ends it.
    async fn read_loop(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
    ) -> Option<(u16, String)> {
        let shutdown = self.app.shutdown.clone();
        let max_pending = self.app.config.max_pending_writes_per_connection.max(1);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    return Some((close_code::GOING_AWAY, "relay shutting down".into()));
                }
                refusal = self.grant.ended() => {
                    self.app.metrics.closed_by_policy.inc();
                    return Some((close_code::POLICY_VIOLATION, refusal.to_string()));
                }
                () = self.evicted.cancelled() => {
                    return Some((
                        close_code::POLICY_VIOLATION,
                        "the tenant was deleted or replaced by an administrator".into(),
                    ));
                }
                Some((id, reply)) = self.pending.next(), if !self.pending.is_empty() => {
                    self.reply(id, reply).await;
                }
                frame = stream.next(), if self.pending.len() < max_pending => {
                    let data = match frame {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Ok(Message::Binary(data))) => data,
                        Some(Ok(Message::Text(_))) => {
                            return self.defect(
                                close_code::UNSUPPORTED_DATA,
                                "text messages are not schema-binary: use RpcSerialization.layerSchemaBinary()",
                            ).await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Err(e)) => match capacity_error(&e) {
                            Some(reason) => {
                                self.app.metrics.closed_too_big.inc();
                                return Some((close_code::MESSAGE_TOO_BIG, reason));
                            }
                            None => {
                                debug!(error = %e, "read failed");
                                return None;
                            }
                        },
                    };
                    self.throttle.charge_bytes(data.len());
                    self.app.metrics.received_bytes.inc_by(data.len() as u64);
                    self.frames.push(&data);
                    loop {
                        match self.frames.next_frame() {
                            Ok(Some(body)) => match FromClient::decode(&body) {
                                Ok(msg) => {
                                    // Many frames in one message: the cap on writes waiting
                                    // for the tenant holds between them too.
                                    while self.pending.len() >= max_pending {
                                        if let Some((id, reply)) = self.pending.next().await {
                                            self.reply(id, reply).await;
                                        }
                                    }
                                    if let Some(end) = self.on_message(msg).await {
                                        return Some(end);
                                    }
                                }
                                Err(e) => {
                                    self.app.metrics.closed_protocol.inc();
                                    return self.defect(close_code::PROTOCOL_ERROR, &format!("malformed envelope: {e}")).await;
                                }
                            },
                            Ok(None) => break,
                            Err(e) => {
                                self.app.metrics.closed_protocol.inc();
                                return self.defect(close_code::MESSAGE_TOO_BIG, &format!("{e}")).await;
                            }
                        }
                    }
                    if self.frames.pending() > self.max_frame {
                        return self.defect(close_code::MESSAGE_TOO_BIG, "a frame past the limit").await;
                    }
                    if let Some(wait) = self.throttle.settle() {
                        self.app.metrics.throttled.inc();
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    /// Tells the client its connection is broken (a `Defect`), then closes.
    async fn defect(&mut self, close: u16, message: &str) -> Option<(u16, String)> {
        let frame = FromServer::Defect(eventlog::encode_defect(message).into()).encode();
        let _ = self.control.send(Out::Frame(frame)).await;
        Some((close, message.to_owned()))
    }

    async fn send(&mut self, msg: FromServer) {
        let _ = self.control.send(Out::Frame(msg.encode())).await;
    }

    async fn exit<T: eventlog::ExitValue>(&mut self, request_id: RequestId, exit: Exit<T>) {
        self.send(FromServer::Exit {
            request_id,
            exit: exit.encode().into(),
        })
        .await;
    }

    /// `None` to go on; `Some` ends the connection.
    async fn on_message(&mut self, msg: FromClient) -> Option<(u16, String)> {
        match msg {
            FromClient::Ping => self.send(FromServer::Pong).await,
            FromClient::Eof => return Some((close_code::GOING_AWAY, "end of input".into())),
            FromClient::Ack(id) => {
                if let Some(s) = self.streams.get(&key(&id)) {
                    s.ack();
                }
            }
            FromClient::Interrupt(id) => {
                // The stream stops where it is; the client is told it was interrupted.
                self.streams.remove(&key(&id));
                self.exit(id, Exit::<()>::Interrupt(None)).await;
            }
            FromClient::Request(req) => self.on_request(req).await,
        }
        None
    }

    async fn on_request(&mut self, req: Request) {
        let id = req.id.clone();
        match req.tag.as_str() {
            tag::HELLO => {
                let exit = match eventlog::decode_void(&req.payload) {
                    Ok(()) => Exit::Success(self.hello()),
                    Err(e) => Exit::die(&format!("EventLog.Hello: {e}")),
                };
                self.exit(id, exit).await;
            }
            tag::AUTHENTICATE => {
                let exit = match Authenticate::decode(&req.payload) {
                    Ok(auth) => match self.authenticate(auth).await {
                        Ok(()) => Exit::Success(()),
                        Err(e) => Exit::Failure(e),
                    },
                    Err(e) => Exit::die(&format!("EventLog.Authenticate: {e}")),
                };
                self.exit(id, exit).await;
            }
            tag::WRITE_SINGLE => match eventlog::decode_write_single(&req.payload) {
                Ok(data) => self.write(id, &data).await,
                Err(e) => {
                    self.exit(
                        id,
                        Exit::<Vec<WriteAck>>::die(&format!("EventLog.WriteSingle: {e}")),
                    )
                    .await
                }
            },
            tag::WRITE_CHUNKED if self.authenticated.is_empty() => {
                // Nothing is joined for a connection with no identity.
                let e = error(
                    "WriteEntries",
                    ErrorCode::Forbidden,
                    "Identity is not authenticated",
                );
                self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await;
            }
            tag::WRITE_CHUNKED => match Chunked::decode_payload(&req.payload) {
                Ok(part) => match self.join(part) {
                    Ok(Some(data)) => self.write(id, &data).await,
                    Ok(None) => self.exit(id, Exit::Success(Vec::<WriteAck>::new())).await,
                    Err(e) => self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await,
                },
                Err(e) => {
                    self.exit(
                        id,
                        Exit::<Vec<WriteAck>>::die(&format!("EventLog.WriteChunked: {e}")),
                    )
                    .await
                }
            },
            tag::CHANGES => match ChangesRequest::decode(&req.payload) {
                Ok(request) => self.changes(id, request).await,
                Err(e) => {
                    self.exit(id, Exit::<()>::die(&format!("EventLog.Changes: {e}")))
                        .await
                }
            },
            other => {
                let message = format!("Unknown request tag: {other}");
                self.exit(id, Exit::<()>::die(&message)).await;
            }
        }
    }

    fn hello(&mut self) -> HelloResponse {
        let fresh = self
            .challenge
            .filter(|(_, at)| at.elapsed() < CHALLENGE_TTL);
        let challenge = match fresh {
            Some((c, _)) => c,
            None => {
                let mut c = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut c);
                self.challenge = Some((c, Instant::now()));
                c
            }
        };
        HelloResponse {
            remote_id: self.remote_id,
            challenge: challenge.to_vec(),
            first_sequence: None,
            compaction: false,
        }
    }

    async fn authenticate(&mut self, auth: Authenticate) -> Result<(), ProtocolError> {
        let forbidden = |message: &str| ProtocolError {
            public_key: Some(auth.public_key.clone()),
            ..error("Authenticate", ErrorCode::Forbidden, message)
        };
        // Used once, whatever happens next.
        let challenge = match self.challenge.take() {
            Some((c, at)) if at.elapsed() < CHALLENGE_TTL => c,
            _ => return Err(forbidden("Session auth challenge has expired")),
        };
        if auth.public_key.len() > self.app.config.max_public_key_bytes {
            return Err(forbidden("publicKey is too long"));
        }
        // A token scoped to some identities' logs pins no key for another identity.
        if let Err(refusal) = self.grant.covers_identity(&auth.public_key) {
            self.app.metrics.refused_forbidden.inc();
            return Err(ProtocolError {
                code: ErrorCode::Unauthorized,
                ..forbidden(&refusal.to_string())
            });
        }
        // The signature first: a key that does not sign is never pinned.
        if verify_auth(
            &self.remote_id,
            &challenge,
            &auth.public_key,
            &auth.signing_public_key,
            &auth.signature,
        )
        .is_err()
        {
            self.app.metrics.refused_forbidden.inc();
            return Err(forbidden("Session auth signature verification failed"));
        }
        // A pin is a durable write: it pays like one.
        self.throttle.charge_write();
        let pinned = self
            .pin(&auth.public_key, &auth.signing_public_key)
            .await
            .map_err(|e| {
                warn!(error = %e, "pinning a signing key failed");
                ProtocolError {
                    public_key: Some(auth.public_key.clone()),
                    ..error(
                        "Authenticate",
                        ErrorCode::InternalServerError,
                        "Session auth binding lookup failed",
                    )
                }
            })?;
        if pinned != auth.signing_public_key {
            self.app.metrics.refused_forbidden.inc();
            return Err(forbidden("Session auth signature verification failed"));
        }
        if !self.authenticated.contains(&auth.public_key) {
            self.authenticated.push(auth.public_key);
        }
        Ok(())
    }

    /// The signing key pinned for `public_key`: `key`, unless another was pinned first.
    async fn pin(&mut self, public_key: &str, key: &[u8]) -> Result<Vec<u8>, TenantError> {
        let entry = EncryptedEntry {
            entry_id: Bytes::copy_from_slice(&stored::pin_id(public_key)),
            encrypted_entry: stored::pin_row(public_key, key).into(),
        };
        let reply = self
            .handle
            .write(PINS_LOG.to_owned(), Bytes::new(), vec![entry], self.conn)
            .await?;
        let acked = reply.await.map_err(|_| TenantError::Closed)??;
        let seq = acked
            .sequences
            .first()
            .copied()
            .ok_or(TenantError::Closed)?;
        let rows = self.store.read(PINS_LOG, seq, seq + 1, 1).await?;
        let row = rows.first().ok_or(TenantError::Closed)?;
        let (stored_key, pinned) = stored::parse_pin_row(&row.encrypted_entry).map_err(|e| {
            TenantError::Storage(Arc::new(wharf_store::StoreError::Corrupt(e.to_string())))
        })?;
        if stored_key != public_key {
            return Err(TenantError::Storage(Arc::new(
                wharf_store::StoreError::Corrupt(
                    "a pinned key stored under another identity's id".into(),
                ),
            )));
        }
        Ok(pinned)
    }

    fn check_identity(
        &self,
        request_tag: &str,
        public_key: &str,
        store_id: &str,
        action: LogAction,
    ) -> Result<(), ProtocolError> {
        let with_log = |e: ProtocolError| ProtocolError {
            public_key: Some(public_key.to_owned()),
            store_id: Some(store_id.to_owned()),
            ..e
        };
        if !self.authenticated.iter().any(|k| k == public_key) {
            return Err(with_log(error(
                request_tag,
                ErrorCode::Forbidden,
                "Identity is not authenticated",
            )));
        }
        let max = self.app.config.max_public_key_bytes;
        if store_id.len() > max {
            return Err(with_log(error(
                request_tag,
                ErrorCode::InvalidRequest,
                format!("storeId is {} bytes; the limit is {max}", store_id.len()),
            )));
        }
        if let Err(refusal) = self.grant.authorize_log(action, public_key, store_id) {
            self.app.metrics.refused_forbidden.inc();
            return Err(with_log(error(
                request_tag,
                ErrorCode::Unauthorized,
                refusal.to_string(),
            )));
        }
        Ok(())
    }

    /// Adds a part of a chunked write; the whole message once every part is in.
    fn join(&mut self, part: Chunked) -> Result<Option<Bytes>, ProtocolError> {
        let invalid = |m: String| error("WriteEntries", ErrorCode::InvalidRequest, m);
        let config = &self.app.config;
        let max_bytes = config.max_message_bytes;
        let max_parts = max_bytes.div_ceil(eventlog::CHUNK_BYTES).max(1) as u64;
        if part.total > max_parts {
            return Err(invalid(format!(
                "a chunked write of {} parts; at most {max_parts} ({max_bytes} bytes)",
                part.total
            )));
        }
        // Parts left unfinished for longer than the chunk timeout are dropped.
        let timeout = config.chunk_timeout;
        self.joins.retain(|_, j| j.started.elapsed() < timeout);
        if !self.joins.contains_key(&part.id) && self.joins.len() >= config.max_open_chunked.max(1)
        {
            return Err(invalid(format!(
                "more than {} chunked writes open on one connection",
                config.max_open_chunked.max(1)
            )));
        }
        // Bounded per connection: every open join together holds at most max_message_bytes.
        let held: usize = self.joins.values().map(|j| j.bytes).sum();
        if held + part.data.len() > max_bytes {
            self.joins.remove(&part.id);
            return Err(invalid(format!(
                "chunked writes past {max_bytes} bytes open on one connection"
            )));
        }
        let join = self.joins.entry(part.id).or_insert_with(|| Join {
            parts: vec![None; part.total as usize],
            count: 0,
            bytes: 0,
            started: Instant::now(),
        });
        if join.parts.len() as u64 != part.total {
            self.joins.remove(&part.id);
            return Err(invalid(
                "the parts of a chunked write disagree on their total".into(),
            ));
        }
        let slot = &mut join.parts[part.index as usize];
        if slot.is_some() {
            return Ok(None);
        }
        join.bytes += part.data.len();
        *slot = Some(part.data);
        join.count += 1;
        if join.count < join.parts.len() {
            return Ok(None);
        }
        let join = self
            .joins
            .remove(&part.id)
            .ok_or_else(|| invalid("lost".into()))?;
        let mut data = Vec::with_capacity(join.bytes);
        for p in join.parts.into_iter().flatten() {
            data.extend_from_slice(&p);
        }
        Ok(Some(data.into()))
    }

    /// Stores a `WriteEntries`' batches, each whole; answers once all are durable.
    async fn write(&mut self, id: RequestId, data: &[u8]) {
        let request = match WriteEntries::decode(data) {
            Ok(r) => r,
            Err(e) => {
                let e = error(
                    "WriteEntries",
                    ErrorCode::InvalidRequest,
                    format!("Decoding failure: {e}"),
                );
                return self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await;
            }
        };
        if let Err(e) = self.check_identity(
            "WriteEntries",
            &request.public_key,
            &request.store_id,
            LogAction::Write,
        ) {
            return self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await;
        }
        if request.batches.is_empty() {
            return self.exit(id, Exit::Success(Vec::<WriteAck>::new())).await;
        }
        let invalid = |m: String| ProtocolError {
            public_key: Some(request.public_key.clone()),
            store_id: Some(request.store_id.clone()),
            ..error("WriteEntries", ErrorCode::InvalidRequest, m)
        };
        let max_id = self.app.config.max_entry_id_bytes;
        for b in &request.batches {
            if b.entry_ids.len() > MAX_BATCH_ENTRIES {
                let e = invalid(format!(
                    "a batch of {} entries; at most {MAX_BATCH_ENTRIES}",
                    b.entry_ids.len()
                ));
                return self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await;
            }
            if b.iv.len() > max_id || b.encrypted_batch.is_empty() {
                let e = invalid("a batch's iv is too long or its ciphertext empty".into());
                return self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await;
            }
        }
        let log = stored::log_key(&request.public_key, &request.store_id);
        let mut replies = Vec::with_capacity(request.batches.len());
        for b in &request.batches {
            self.throttle.charge_write();
            let entries = stored::batch_rows(b)
                .into_iter()
                .map(|(entry_id, ciphertext)| EncryptedEntry {
                    entry_id: Bytes::copy_from_slice(&entry_id),
                    encrypted_entry: ciphertext.into(),
                })
                .collect();
            match self
                .handle
                .write_batch(log.clone(), b.iv.clone(), entries, self.conn)
                .await
            {
                Ok(reply) => replies.push((b.entry_ids.clone(), reply)),
                Err(e) => {
                    let e = internal("WriteEntries", &request, &e);
                    return self.exit(id, Exit::<Vec<WriteAck>>::Failure(e)).await;
                }
            }
        }
        let arrived = Instant::now();
        let metrics = self.app.metrics.clone();
        let (public_key, store_id) = (request.public_key, request.store_id);
        self.pending.push(
            async move {
                let mut acks = Vec::new();
                for (ids, reply) in replies {
                    let acked: Result<Acked, TenantError> =
                        reply.await.unwrap_or(Err(TenantError::Closed));
                    match acked {
                        Ok(acked) => acks.extend(ids.into_iter().zip(acked.sequences).map(
                            |(entry_id, sequence): ([u8; ENTRY_ID_BYTES], u64)| WriteAck {
                                entry_id,
                                sequence,
                            },
                        )),
                        Err(e) => {
                            let code = match e {
                                TenantError::Quota(_) | TenantError::IvRefused => {
                                    ErrorCode::InvalidRequest
                                }
                                _ => ErrorCode::InternalServerError,
                            };
                            return (
                                id,
                                Err(ProtocolError {
                                    public_key: Some(public_key),
                                    store_id: Some(store_id),
                                    ..error("WriteEntries", code, e.to_string())
                                }),
                            );
                        }
                    }
                }
                metrics.observe_ack(arrived.elapsed());
                (id, Ok(acks))
            }
            .boxed(),
        );
    }

    async fn reply(&mut self, id: RequestId, reply: Result<Vec<WriteAck>, ProtocolError>) {
        let exit = match reply {
            Ok(acks) => Exit::Success(acks),
            Err(e) => Exit::Failure(e),
        };
        self.exit(id, exit).await;
    }

    async fn changes(&mut self, id: RequestId, request: ChangesRequest) {
        if let Err(e) = self.check_identity(
            "Changes",
            &request.public_key,
            &request.store_id,
            LogAction::Read,
        ) {
            return self.exit(id, Exit::<()>::Failure(e)).await;
        }
        let max = self.app.config.max_subscriptions_per_connection;
        if !self.streams.contains_key(&key(&id)) && self.streams.len() >= max {
            let e = ProtocolError {
                public_key: Some(request.public_key),
                store_id: Some(request.store_id),
                ..error(
                    "Changes",
                    ErrorCode::InvalidRequest,
                    format!("more than {max} Changes streams on one connection"),
                )
            };
            return self.exit(id, Exit::<()>::Failure(e)).await;
        }
        let stream = changes::Stream::start(changes::Feed {
            request_id: id.clone(),
            log: stored::log_key(&request.public_key, &request.store_id),
            start: request.start_sequence,
            conn: self.conn,
            store: self.store.clone(),
            handle: self.handle.clone(),
            bulk: self.bulk.clone(),
            control: self.control.clone(),
            app: self.app.clone(),
        });
        // A second Changes with the same id replaces the first.
        self.streams.insert(key(&id), stream);
    }
}

fn internal(request_tag: &str, request: &WriteEntries, e: &TenantError) -> ProtocolError {
    ProtocolError {
        public_key: Some(request.public_key.clone()),
        store_id: Some(request.store_id.clone()),
        ..error(request_tag, ErrorCode::InternalServerError, e.to_string())
    }
}
