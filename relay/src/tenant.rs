//! The tenant actor: the only task that writes a tenant's database or assigns its sequence
//! numbers. Sessions talk to it through a cloneable [`TenantHandle`].
//!
//! Writes that queue up while a transaction commits are committed together in the next one
//! (group commit), as one job on a storage thread. Acks and broadcasts leave only after
//! `COMMIT` returns, that is once the entries are on disk.
//!
//! - this module: the actor, its handle and messages;
//! - `follow`: bringing the live tails up to what other relays committed;
//! - `checkpoint`: the checkpointer that keeps the WAL short, off the write path.
//!
//! The webhook sender is `crate::webhook::sender`: the actor starts it and hears from it.

mod checkpoint;
mod follow;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use uuid::Uuid;
use wharf_protocol::{EncryptedEntry, RemoteEntry};
use wharf_store::{
    Backend, OutboxRow, Outcome, RetainReport, SnapshotRefusal, Store, StoreError, StoredSnapshot,
    WriteReq, Writer,
};

use checkpoint::{spawn_checkpointer, WalGrowth, CHECKPOINT_BYTES};
use follow::{follow_all, follow_log};

use crate::config::{Config, TenantId};
use crate::live::{CommitConsumer, Committed, ConnId, LiveBatch, LiveLog, LiveTails};
use crate::metrics::Metrics;
use crate::policy::{Effective, TenantSettings};
use crate::webhook::endpoint::Endpoint;
use crate::webhook::sender::{Delivery, Sender, SenderSettings};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TenantError {
    #[error("the tenant is being closed; retry")]
    Closed,
    #[error("storage failed: {0}")]
    Storage(Arc<StoreError>),
    #[error("the tenant is being deleted or imported by an administrator; retry")]
    Held,
    #[error(
        "write refused: its AES-GCM iv is already used in this log (nonce reuse; strict_iv is on)"
    )]
    IvRefused,
    /// Nothing was stored: the write would take the tenant over a quota.
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Snapshot(SnapshotRefusal),
    #[error("invalid settings: {0}")]
    Settings(String),
}

impl From<StoreError> for TenantError {
    fn from(e: StoreError) -> Self {
        TenantError::Storage(Arc::new(e))
    }
}

/// What a session gets when it joins a tenant.
#[derive(Debug)]
pub struct Attached {
    /// Cancelled when an administrator deletes or replaces the tenant: the session closes.
    pub evicted: CancellationToken,
    pub remote_id: Uuid,
    pub store: Store,
    /// Held for as long as the session lives; the actor counts these to know when it is idle.
    pub lease: Arc<()>,
}

/// A live feed of one log, and where the backlog ends.
#[derive(Debug)]
pub struct Subscribed {
    pub live: Arc<LiveLog>,
    /// Wakes on every commit to the log; ends when the actor stops.
    pub changes: watch::Receiver<u64>,
    /// Every entry below this is in storage; every entry from it on is pushed to `live`.
    pub next_sequence: u64,
}

/// A durable write: one sequence per submitted entry (a duplicate's original one), and
/// whether its 12-byte iv was already stored in the log (the guardrail, SECURITY.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub sequences: Vec<u64>,
    pub iv_reused: bool,
}

/// A tenant's settings as stored by an administrator, and with every layer applied.
#[derive(Debug, Clone)]
pub struct SettingsView {
    pub stored: Option<TenantSettings>,
    pub effective: Effective,
}

enum Msg {
    Attach(oneshot::Sender<Result<Attached, TenantError>>),
    Snapshot {
        public_key: String,
        snapshot: StoredSnapshot,
        reply: oneshot::Sender<Result<u64, TenantError>>,
    },
    /// Applies the retention policy to the end now (admin API).
    Retain(oneshot::Sender<Result<RetainReport, TenantError>>),
    /// Reads the settings, or replaces the stored ones (`Some(None)` removes them).
    Settings {
        set: Option<Option<TenantSettings>>,
        reply: oneshot::Sender<Result<SettingsView, TenantError>>,
    },
    Subscribe {
        public_key: String,
        reply: oneshot::Sender<Result<Subscribed, TenantError>>,
    },
    Write(Write),
    /// Another relay committed to a log of this shared tenant (up to `next`), or, with no
    /// log, may have: read what the live tails have not seen.
    Follow {
        public_key: Option<String>,
        next: u64,
    },
    /// An administrator changed the settings through another relay (a shared tenant).
    Reload,
    Stop,
}

struct Write {
    req: WriteReq,
    origin: ConnId,
    reply: Reply,
}

/// Where a write's outcome goes.
type Reply = oneshot::Sender<Result<Acked, TenantError>>;

/// A cloneable handle to a tenant actor.
#[derive(Clone, Debug)]
pub struct TenantHandle {
    /// Unique per actor, so the registry can remove exactly this actor and never its successor.
    pub actor_id: u64,
    tx: mpsc::Sender<Msg>,
    evicted: CancellationToken,
    /// Cancelled once the actor has ended and its database is closed.
    closed: CancellationToken,
}

impl TenantHandle {
    /// Sends the message `make` builds around a reply channel: the receiver of the reply.
    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, TenantError>>) -> Msg,
    ) -> Result<oneshot::Receiver<Result<T, TenantError>>, TenantError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| TenantError::Closed)?;
        Ok(rx)
    }

    /// [`TenantHandle::send`], then waits for the reply.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, TenantError>>) -> Msg,
    ) -> Result<T, TenantError> {
        self.send(make)
            .await?
            .await
            .map_err(|_| TenantError::Closed)?
    }

    pub async fn attach(&self) -> Result<Attached, TenantError> {
        self.request(Msg::Attach).await
    }

    pub async fn subscribe(&self, public_key: String) -> Result<Subscribed, TenantError> {
        self.request(|reply| Msg::Subscribe { public_key, reply })
            .await
    }

    /// Queues a write; the returned receiver resolves once it is durable (or failed).
    pub async fn write(
        &self,
        public_key: String,
        iv: Bytes,
        entries: Vec<EncryptedEntry>,
        origin: ConnId,
    ) -> Result<oneshot::Receiver<Result<Acked, TenantError>>, TenantError> {
        self.queue(public_key, iv, entries, false, origin).await
    }

    /// Queues one Effect v4 batch (its rows), stored whole: see [`WriteReq::batch`].
    pub async fn write_batch(
        &self,
        public_key: String,
        iv: Bytes,
        entries: Vec<EncryptedEntry>,
        origin: ConnId,
    ) -> Result<oneshot::Receiver<Result<Acked, TenantError>>, TenantError> {
        self.queue(public_key, iv, entries, true, origin).await
    }

    async fn queue(
        &self,
        public_key: String,
        iv: Bytes,
        entries: Vec<EncryptedEntry>,
        batch: bool,
        origin: ConnId,
    ) -> Result<oneshot::Receiver<Result<Acked, TenantError>>, TenantError> {
        self.send(|reply| {
            Msg::Write(Write {
                req: WriteReq {
                    public_key,
                    iv,
                    entries,
                    batch,
                },
                origin,
                reply,
            })
        })
        .await
    }

    /// Stores a snapshot; resolves with its sequence once durable.
    pub async fn snapshot(
        &self,
        public_key: String,
        snapshot: StoredSnapshot,
    ) -> Result<oneshot::Receiver<Result<u64, TenantError>>, TenantError> {
        self.send(|reply| Msg::Snapshot {
            public_key,
            snapshot,
            reply,
        })
        .await
    }

    /// Applies the retention policy now, to the end.
    pub async fn retain(&self) -> Result<RetainReport, TenantError> {
        self.request(Msg::Retain).await
    }

    /// Reads the tenant's settings, or replaces what an administrator stored.
    pub async fn settings(
        &self,
        set: Option<Option<TenantSettings>>,
    ) -> Result<SettingsView, TenantError> {
        self.request(|reply| Msg::Settings { set, reply }).await
    }

    /// Tells the actor that `public_key` (every subscribed log, if `None`) may have entries
    /// up to `next` it has not seen. Never waits: a full queue drops it, and the actor's poll
    /// makes up for it.
    pub fn follow(&self, public_key: Option<String>, next: u64) {
        let _ = self.tx.try_send(Msg::Follow { public_key, next });
    }

    /// Tells the actor its stored settings changed (through another relay): it reads them
    /// again. Never dropped: queued by a task of its own when the queue is full.
    pub fn reload_settings(&self) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(Msg::Reload) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Asks the actor to finish what is queued and close its database.
    pub async fn stop(&self) {
        let _ = self.tx.send(Msg::Stop).await;
    }

    /// Closes every session of the tenant, stops the actor and waits until its database is
    /// closed.
    pub async fn evict(&self) {
        self.evicted.cancel();
        self.stop().await;
        self.closed.cancelled().await;
    }
}

/// Called once when an actor stops taking new work, so whoever maps tenants to actors can
/// forget this one (and only this one).
pub(crate) type Retire = Box<dyn FnOnce() + Send>;

pub(crate) struct TenantActor {
    tenant: TenantId,
    config: Arc<Config>,
    backend: Backend,
    retire: Option<Retire>,
    rx: mpsc::Receiver<Msg>,
    /// The live tail of every log that has (or recently had) subscribers: the first consumer
    /// of this tenant's [`Committed`] events.
    live: LiveTails,
    /// The other consumers of [`Committed`] events (metrics).
    consumers: Vec<Box<dyn CommitConsumer>>,
    evicted: CancellationToken,
    closed: CancellationToken,
    lease: Arc<()>,
    /// Bytes committed since the last checkpoint, and commits since the checkpointer's last
    /// look (see [`spawn_checkpointer`]).
    wal: Arc<WalGrowth>,
    last_commit: Option<Instant>,
    metrics: Arc<Metrics>,
    /// What an administrator stored, and every layer applied.
    stored: Option<TenantSettings>,
    effective: Effective,
    /// The webhook sender, while the tenant has endpoints, and where it reports.
    sender: Option<Sender>,
    deliveries: Option<mpsc::Receiver<Delivery>>,
}

/// The tenant's storage as the actor holds it: the reading side it hands to sessions, and
/// the writer only it uses.
struct Db {
    store: Store,
    writer: Writer,
}

impl TenantActor {
    /// Starts an actor. Synchronous on purpose: the registry calls it inside
    /// `DashMap::entry().or_insert_with`, so two first connections can never start two actors.
    /// The database is opened by the actor itself.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        tenant: TenantId,
        actor_id: u64,
        config: Arc<Config>,
        backend: Backend,
        tracker: &TaskTracker,
        consumers: Vec<Box<dyn CommitConsumer>>,
        metrics: Arc<Metrics>,
        retire: Retire,
    ) -> TenantHandle {
        let (tx, rx) = mpsc::channel(1024);
        let span = tracing::info_span!("tenant", tenant = tenant.as_str());
        let live = LiveTails::new(config.live_tail_bytes);
        let (evicted, closed) = (CancellationToken::new(), CancellationToken::new());
        let actor = TenantActor {
            evicted: evicted.clone(),
            closed: closed.clone(),
            tenant,
            config,
            backend,
            retire: Some(retire),
            rx,
            live,
            consumers,
            lease: Arc::new(()),
            wal: Arc::new(WalGrowth::default()),
            last_commit: None,
            metrics,
            stored: None,
            effective: Effective::default(),
            sender: None,
            deliveries: None,
        };
        tracker.spawn(actor.run().instrument(span));
        TenantHandle {
            actor_id,
            tx,
            evicted,
            closed,
        }
    }

    async fn run(mut self) {
        // Whichever way this ends (even a panic), `closed` fires after the database is shut.
        let _closed = self.closed.clone().drop_guard();
        let (store, writer) = match self.backend.open(&self.tenant).await {
            Ok(opened) => opened,
            Err(e) => {
                warn!(error = %e, "cannot open the tenant's storage");
                self.retire();
                let err = TenantError::from(e);
                self.rx.close();
                while let Some(msg) = self.rx.recv().await {
                    fail(msg, err.clone());
                }
                return;
            }
        };
        debug!(remote_id = %store.remote_id(), "tenant opened");
        let checkpointer = spawn_checkpointer(
            store.clone(),
            self.wal.clone(),
            self.config.checkpoint_interval,
        );
        let mut db = Db { store, writer };
        if let Err(e) = self.load_settings(&mut db).await {
            warn!(error = %e, "the tenant's stored settings are unreadable; using the config file's");
            self.apply_settings(&db.store, None).await;
        }
        self.serve(&mut db).await;
        if let Some(sender) = self.sender.take() {
            sender.stop(&db.store).await;
        }
        checkpointer.abort();
        db.writer.close().await;
        debug!("tenant closed");
    }

    async fn serve(&mut self, db: &mut Db) {
        let idle_timeout = self.config.tenant_idle_timeout;
        let mut idle_since: Option<Instant> = Some(Instant::now());
        // When to give back memory after the last commit (see `Store::trim`).
        let mut trim_at: Option<Instant> = None;
        // Retention runs when the tenant opens, then every `retention_interval` (sooner while
        // a run stopped at its step budget).
        let mut retain_at: Option<Instant> = Some(Instant::now());
        // A tenant other relays append to looks at its subscribed logs this often, whatever
        // the doorbells said.
        let poll_every = db.store.poll_interval();
        let mut poll_at: Option<Instant> = poll_every.map(|every| Instant::now() + every);
        let mut batch: Vec<Msg> = Vec::new();
        loop {
            // Wake up to check idleness at most every quarter of the timeout.
            let tick = idle_timeout.max(Duration::from_millis(40)) / 4;
            let msg = tokio::select! {
                msg = self.rx.recv() => msg,
                () = sleep_until(trim_at) => {
                    trim_at = None;
                    if let Err(e) = db.writer.trim().await {
                        warn!(error = %e, "trimming the tenant's memory failed");
                    }
                    continue;
                }
                () = sleep_until(poll_at) => {
                    poll_at = poll_every.map(|every| Instant::now() + every);
                    follow_all(&mut self.live, &db.store).await;
                    continue;
                }
                delivery = next_delivery(&mut self.deliveries) => {
                    match delivery {
                        Some(d) => {
                            self.delivered(db, d.row, d.ok).await;
                            let _ = d.done.send(());
                        }
                        None => self.deliveries = None,
                    }
                    continue;
                }
                () = sleep_until(retain_at) => {
                    retain_at = Some(match self.retain_step(db).await {
                        Ok(true) => Instant::now(),
                        _ => Instant::now() + self.config.retention_interval,
                    });
                    continue;
                }
                () = tokio::time::sleep(tick) => {
                    if Arc::strong_count(&self.lease) > 1 || !self.outbox_drained() {
                        idle_since = None;
                    } else if let Some(since) = idle_since {
                        if since.elapsed() >= idle_timeout {
                            info!("tenant idle; closing its database");
                            break;
                        }
                    } else {
                        idle_since = Some(Instant::now());
                    }
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            batch.push(msg);
            // Group commit: take whatever else is already queued, up to the limit.
            let mut entries = batch_entries(&batch);
            while entries < self.config.commit_max_entries {
                match self.rx.try_recv() {
                    Ok(msg) => {
                        entries += batch_entries(std::slice::from_ref(&msg));
                        batch.push(msg);
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            let mut writes = Vec::new();
            for msg in batch.drain(..) {
                match msg {
                    Msg::Write(w) => writes.push(w),
                    Msg::Attach(reply) => {
                        idle_since = None;
                        let _ = reply.send(Ok(Attached {
                            evicted: self.evicted.clone(),
                            remote_id: db.store.remote_id(),
                            store: db.store.clone(),
                            lease: self.lease.clone(),
                        }));
                    }
                    Msg::Subscribe { public_key, reply } => {
                        let r = self.subscribe(db, public_key).await;
                        let _ = reply.send(r);
                    }
                    Msg::Stop => stop = true,
                    Msg::Snapshot {
                        public_key,
                        snapshot,
                        reply,
                    } => {
                        let r = self.write_snapshot(db, public_key, snapshot).await;
                        let _ = reply.send(r);
                    }
                    Msg::Retain(reply) => {
                        let r = self.retain_all(db).await;
                        let _ = reply.send(r);
                    }
                    Msg::Settings { set, reply } => {
                        let r = match set {
                            Some(stored) => self.store_settings(db, stored).await,
                            None => Ok(()),
                        };
                        let _ = reply.send(r.map(|()| SettingsView {
                            stored: self.stored.clone(),
                            effective: self.effective.clone(),
                        }));
                    }
                    Msg::Follow {
                        public_key: Some(public_key),
                        next,
                    } => follow_log(&mut self.live, &db.store, &public_key, next).await,
                    Msg::Follow {
                        public_key: None, ..
                    } => follow_all(&mut self.live, &db.store).await,
                    Msg::Reload => {
                        if let Err(e) = self.load_settings(db).await {
                            warn!(error = %e, "cannot reload the tenant's settings; keeping the current ones");
                        }
                        // A deletion or replacement through another relay whose notification
                        // this relay missed (its LISTEN connection was down): the stored
                        // identity changed under this actor.
                        if matches!(db.store.stored_identity().await, Ok(id) if id != Some(db.store.remote_id()))
                        {
                            info!("tenant deleted or replaced through another relay; its sessions here close");
                            self.evicted.cancel();
                            stop = true;
                        }
                    }
                }
            }
            if !writes.is_empty() {
                self.commit(db, writes).await;
                trim_at = Some(Instant::now() + TRIM_AFTER);
            }
            if stop || db.writer.is_lost() {
                break;
            }
            if Arc::strong_count(&self.lease) == 1 && idle_since.is_none() {
                idle_since = Some(Instant::now());
            }
        }
        // No new work can reach us once we leave the registry; drain what already did.
        self.retire();
        self.rx.close();
        let mut writes = Vec::new();
        while let Some(msg) = self.rx.recv().await {
            match msg {
                Msg::Write(w) => writes.push(w),
                other => fail(other, TenantError::Closed),
            }
        }
        if !writes.is_empty() {
            self.commit(db, writes).await;
        }
    }

    fn retire(&mut self) {
        if let Some(retire) = self.retire.take() {
            retire();
        }
    }

    async fn subscribe(
        &mut self,
        db: &mut Db,
        public_key: String,
    ) -> Result<Subscribed, TenantError> {
        let live = match self.live.get(&public_key) {
            Some(live) => live.clone(),
            None => {
                let next = db.writer.next_sequence(public_key.clone()).await?;
                let live = Arc::new(LiveLog::new(next));
                self.live.insert(public_key, live.clone());
                live
            }
        };
        let changes = live.watch();
        let next_sequence = *changes.borrow();
        Ok(Subscribed {
            changes,
            live,
            next_sequence,
        })
    }

    async fn commit(&mut self, db: &mut Db, writes: Vec<Write>) {
        let (reqs, rest): (Vec<WriteReq>, Vec<_>) = writes
            .into_iter()
            .map(|w| (w.req, (w.origin, w.reply)))
            .unzip();
        let rules = self
            .effective
            .commit_rules(self.config.strict_iv, crate::policy::now_ms());
        // A tenant that commits rarely gives back the writer's page cache right after the
        // commit (memory per idle tenant); one that commits often keeps it (speed).
        let now = Instant::now();
        let sparse = self
            .last_commit
            .replace(now)
            .is_none_or(|last| now - last > SPARSE_COMMITS);
        let started = std::time::Instant::now();
        let result = db.writer.commit(reqs, rules, sparse).await;
        let duration = started.elapsed();
        let (reqs, outcomes) = match result {
            Ok(done) => done,
            Err(e) => return self.failed(rest, TenantError::from(e)),
        };
        // Durable: acknowledge, then publish what was committed.
        let mut batches: HashMap<&str, LiveBatch> = HashMap::new();
        let (mut writes, mut entries, mut bytes) = (0, 0, 0);
        for ((req, outcome), (origin, reply)) in reqs.iter().zip(outcomes).zip(rest) {
            let (sequences, new, iv_reused) = match outcome {
                Outcome::Written {
                    sequences,
                    new,
                    iv_reused,
                } => (sequences, new, iv_reused),
                Outcome::IvRefused => {
                    let _ = reply.send(Err(TenantError::IvRefused));
                    continue;
                }
                Outcome::OverQuota(why) => {
                    self.metrics.quota_refusals.inc();
                    let _ = reply.send(Err(TenantError::Quota(why)));
                    continue;
                }
            };
            writes += 1;
            for i in &new {
                bytes += req.entries[*i].encrypted_entry.len();
            }
            entries += new.len();
            let wanted = !new.is_empty()
                && (self.live.wants_entries(&req.public_key)
                    || self
                        .consumers
                        .iter()
                        .any(|c| c.wants_entries(&req.public_key)));
            if wanted {
                let batch = batches.entry(&req.public_key).or_insert_with(|| LiveBatch {
                    entries: Vec::new(),
                    origins: Vec::new(),
                    frames: OnceLock::new(),
                });
                for i in &new {
                    let e = &req.entries[*i];
                    batch.entries.push(RemoteEntry {
                        sequence: sequences[*i],
                        iv: req.iv.clone(),
                        entry_id: e.entry_id.clone(),
                        encrypted_entry: e.encrypted_entry.clone(),
                    });
                    batch.origins.push(origin);
                }
            }
            let _ = reply.send(Ok(Acked {
                sequences,
                iv_reused,
            }));
        }
        // What the checkpointer watches: roughly what this commit appended to the WAL.
        self.wal
            .bytes
            .fetch_add((bytes + 64 * entries) as u64, Ordering::Relaxed);
        self.wal.commits.fetch_add(1, Ordering::Relaxed);
        if entries > 0 {
            if let Some(sender) = &self.sender {
                sender.committed();
            }
        }
        // Entries other relays committed before this group come first in the tails (a tenant
        // only this relay writes finds its tails at the group's first sequence: no read).
        for (public_key, batch) in &batches {
            follow_log(&mut self.live, &db.store, public_key, batch.first()).await;
        }
        let event = Committed {
            writes,
            entries,
            bytes,
            duration,
            logs: batches
                .into_iter()
                .map(|(public_key, batch)| (public_key, Arc::new(batch)))
                .collect(),
        };
        self.live.committed(&event);
        for consumer in &mut self.consumers {
            consumer.committed(&event);
        }
    }

    /// Reads what an administrator stored and applies every layer.
    async fn load_settings(&mut self, db: &mut Db) -> Result<(), TenantError> {
        let raw = db.writer.settings().await?;
        let stored = match raw {
            None => None,
            Some(json) => Some(
                serde_json::from_str::<TenantSettings>(&json)
                    .map_err(|e| TenantError::Settings(e.to_string()))?,
            ),
        };
        // Notifications for endpoints no longer configured (removed from the config file
        // while the tenant was closed) are dropped, not retried until given up.
        let endpoints: Vec<String> = self
            .config
            .effective(&self.tenant, stored.as_ref())
            .webhooks
            .iter()
            .map(|w| w.url.clone())
            .collect();
        db.writer.outbox_retain_endpoints(endpoints).await?;
        self.apply_settings(&db.store, stored).await;
        Ok(())
    }

    /// Makes `stored` current: the effective settings, the webhook sender, and the store's
    /// mark that makes a restarted relay deliver what the outbox holds.
    async fn apply_settings(&mut self, store: &Store, stored: Option<TenantSettings>) {
        self.effective = self.config.effective(&self.tenant, stored.as_ref());
        self.stored = stored;
        let endpoints: Vec<Endpoint> = self
            .effective
            .webhooks
            .iter()
            .filter_map(|hook| match Endpoint::parse(hook, &self.config.webhooks) {
                Ok(e) => Some(e),
                Err(e) => {
                    warn!(error = %e, "webhook endpoint skipped");
                    None
                }
            })
            .collect();
        let hooks = self.effective.webhooks.clone();
        // The same endpoints and secrets (a reload that changed something else): the sender
        // goes on.
        if self.sender.as_ref().is_some_and(|s| s.hooks() == hooks) {
            return;
        }
        if let Some(sender) = self.sender.take() {
            sender.stop(store).await;
        }
        self.deliveries = None;
        if let Err(e) = store.mark_webhooks(!endpoints.is_empty()).await {
            warn!(error = %e, "cannot mark the tenant for webhook delivery after a restart");
        }
        if endpoints.is_empty() {
            return;
        }
        let (sender, deliveries) = Sender::spawn(SenderSettings {
            tenant: self.tenant.clone(),
            store: store.clone(),
            hooks,
            endpoints,
            timeout: self.config.webhooks.timeout,
            metrics: self.metrics.clone(),
        });
        self.sender = Some(sender);
        self.deliveries = Some(deliveries);
    }

    async fn store_settings(
        &mut self,
        db: &mut Db,
        stored: Option<TenantSettings>,
    ) -> Result<(), TenantError> {
        if let Some(s) = &stored {
            s.validate(&self.config.webhooks)
                .map_err(TenantError::Settings)?;
        }
        let json = match &stored {
            Some(s) => {
                Some(serde_json::to_string(s).map_err(|e| TenantError::Settings(e.to_string()))?)
            }
            None => None,
        };
        let endpoints: Vec<String> = self
            .config
            .effective(&self.tenant, stored.as_ref())
            .webhooks
            .iter()
            .map(|w| w.url.clone())
            .collect();
        db.writer.set_settings(json).await?;
        db.writer.outbox_retain_endpoints(endpoints).await?;
        self.apply_settings(&db.store, stored).await;
        Ok(())
    }

    async fn write_snapshot(
        &mut self,
        db: &mut Db,
        public_key: String,
        snapshot: StoredSnapshot,
    ) -> Result<u64, TenantError> {
        let sequence = snapshot.sequence;
        let keep = self.config.snapshots_per_log;
        let rules = self.effective.commit_rules(false, crate::policy::now_ms());
        db.writer
            .write_snapshot(public_key, snapshot, keep, rules)
            .await?
            .map_err(TenantError::Snapshot)?;
        self.metrics.snapshots_written.inc();
        Ok(sequence)
    }

    /// One bounded retention step; whether more remains.
    async fn retain_step(&mut self, db: &mut Db) -> Result<bool, TenantError> {
        let limits = self.effective.retention;
        if limits.is_off() {
            return Ok(false);
        }
        let report = db
            .writer
            .retain(limits, crate::policy::now_ms(), RETAIN_STEP)
            .await
            .map_err(TenantError::from)
            .inspect_err(|e| warn!(error = %e, "retention failed; it runs again later"))?;
        if report.entries_deleted > 0 {
            self.metrics
                .retention_deleted
                .inc_by(report.entries_deleted);
            info!(
                entries = report.entries_deleted,
                bytes = report.bytes_deleted,
                "retention deleted history"
            );
            // The pages freed by the vacuum leave the file at the next checkpoint.
            self.wal
                .bytes
                .fetch_add(CHECKPOINT_BYTES, Ordering::Relaxed);
        }
        Ok(report.more)
    }

    /// Retention to the end, for the admin API.
    async fn retain_all(&mut self, db: &mut Db) -> Result<RetainReport, TenantError> {
        let limits = self.effective.retention;
        let mut total = RetainReport::default();
        loop {
            let step = db
                .writer
                .retain(limits, crate::policy::now_ms(), RETAIN_STEP)
                .await?;
            total.entries_deleted += step.entries_deleted;
            total.bytes_deleted += step.bytes_deleted;
            for (log, first) in step.truncated {
                total.truncated.retain(|(l, _)| *l != log);
                total.truncated.push((log, first));
            }
            if !step.more {
                break;
            }
        }
        self.metrics.retention_deleted.inc_by(total.entries_deleted);
        // Also when this run found nothing left (the timer may have just deleted it): what
        // the vacuum freed leaves the file at this checkpoint.
        if !db.store.checkpoint_truncate().await? {
            debug!("readers held the WAL; the file shrinks at a later checkpoint");
        }
        Ok(total)
    }

    /// Whether the webhook outbox is known to be empty (an idle tenant with notifications
    /// left stays open to deliver them).
    fn outbox_drained(&self) -> bool {
        self.sender.as_ref().is_none_or(Sender::drained)
    }

    async fn delivered(&mut self, db: &mut Db, row: OutboxRow, ok: bool) {
        let now = crate::policy::now_ms();
        let hooks = &self.config.webhooks;
        let result = if ok {
            self.metrics
                .webhook_deliveries
                .with_label_values(&["delivered"])
                .inc();
            db.writer.outbox_delivered(row, now).await
        } else {
            let give_up = row.attempts + 1 >= hooks.max_attempts.max(1);
            let outcome = if give_up { "given_up" } else { "failed" };
            self.metrics
                .webhook_deliveries
                .with_label_values(&[outcome])
                .inc();
            if give_up {
                warn!(endpoint = %crate::webhook::endpoint::origin_of(&row.endpoint), public_key = %row.public_key, attempts = row.attempts + 1,
                      "webhook notification given up");
            }
            let delay = i64::try_from(hooks.backoff(row.attempts).as_millis()).unwrap_or(i64::MAX);
            db.writer
                .outbox_failed(row, now.saturating_add(delay), give_up)
                .await
        };
        if let Err(e) = result {
            warn!(error = %e, "cannot update the webhook outbox");
        }
    }

    fn failed(&mut self, writes: Vec<(ConnId, Reply)>, err: TenantError) {
        for consumer in &mut self.consumers {
            consumer.failed();
        }
        fail_writes(writes, err);
    }
}

/// Nothing in memory moved (sequence state advances only after COMMIT): every write fails.
fn fail_writes(writes: Vec<(ConnId, Reply)>, err: TenantError) {
    warn!(error = %err, writes = writes.len(), "commit failed; nothing acknowledged");
    for (_, reply) in writes {
        let _ = reply.send(Err(err.clone()));
    }
}

fn batch_entries(batch: &[Msg]) -> usize {
    batch
        .iter()
        .map(|m| match m {
            Msg::Write(w) => w.req.entries.len().max(1),
            _ => 1,
        })
        .sum()
}

fn fail(msg: Msg, err: TenantError) {
    match msg {
        Msg::Attach(reply) => {
            let _ = reply.send(Err(err));
        }
        Msg::Subscribe { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Msg::Write(w) => {
            let _ = w.reply.send(Err(err));
        }
        Msg::Snapshot { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Msg::Retain(reply) => {
            let _ = reply.send(Err(err));
        }
        Msg::Settings { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Msg::Follow { .. } | Msg::Reload | Msg::Stop => {}
    }
}

/// A tenant quiet this long after its last commit gives back its caches (`Store::trim`).
const TRIM_AFTER: Duration = Duration::from_secs(2);
/// Commits further apart than this release the writer's page cache right away.
const SPARSE_COMMITS: Duration = Duration::from_secs(1);

/// The next report of the webhook sender; never without one (`None`: it ended).
async fn next_delivery(deliveries: &mut Option<mpsc::Receiver<Delivery>>) -> Option<Delivery> {
    match deliveries {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Entries one retention step deletes at most, so writes queued meanwhile wait little.
const RETAIN_STEP: u64 = 20_000;
