//! The tenant actor: the only task that writes a tenant's database or assigns its sequence
//! numbers. Sessions talk to it through a cloneable [`TenantHandle`].
//!
//! Writes that queue up while a transaction commits are committed together in the next one
//! (group commit), as one job on a storage thread. Acks and broadcasts leave only after
//! `COMMIT` returns, that is once the entries are on disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

use crate::config::{Config, TenantId};
use crate::live::{CommitConsumer, Committed, LiveBatch, LiveLog, LiveTails};
use crate::store::{Outcome, Store, StoreError, StorePool, WriteReq, Writer};

/// Identifies one WebSocket connection, to keep a writer's own entries out of its live feed.
pub type ConnId = u64;

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

enum Msg {
    Attach(oneshot::Sender<Result<Attached, TenantError>>),
    Subscribe {
        public_key: String,
        reply: oneshot::Sender<Result<Subscribed, TenantError>>,
    },
    Write(Write),
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
    pub async fn attach(&self) -> Result<Attached, TenantError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Attach(reply))
            .await
            .map_err(|_| TenantError::Closed)?;
        rx.await.map_err(|_| TenantError::Closed)?
    }

    pub async fn subscribe(&self, public_key: String) -> Result<Subscribed, TenantError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Subscribe { public_key, reply })
            .await
            .map_err(|_| TenantError::Closed)?;
        rx.await.map_err(|_| TenantError::Closed)?
    }

    /// Queues a write; the returned receiver resolves once it is durable (or failed).
    pub async fn write(
        &self,
        public_key: String,
        iv: Bytes,
        entries: Vec<EncryptedEntry>,
        origin: ConnId,
    ) -> Result<oneshot::Receiver<Result<Acked, TenantError>>, TenantError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Write(Write {
                req: WriteReq {
                    public_key,
                    iv,
                    entries,
                },
                origin,
                reply,
            }))
            .await
            .map_err(|_| TenantError::Closed)?;
        Ok(rx)
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
    pool: StorePool,
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
}

/// The database as the actor holds it: the reading side it hands to sessions, and the writer,
/// which is lent to a storage thread for each job. `writer` is `None` only if a job was lost
/// (a panic on a storage thread); the actor then stops.
struct Db {
    store: Store,
    writer: Option<Writer>,
}

impl Db {
    /// Runs `f` with the writer on a storage thread.
    async fn job<R, F>(&mut self, f: F) -> Result<R, TenantError>
    where
        F: FnOnce(&mut Writer) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let writer = self.writer.take().ok_or(TenantError::Closed)?;
        let (writer, r) = self.store.with_writer(writer, f).await?;
        self.writer = Some(writer);
        Ok(r?)
    }
}

impl TenantActor {
    /// Starts an actor. Synchronous on purpose: the registry calls it inside
    /// `DashMap::entry().or_insert_with`, so two first connections can never start two actors.
    /// The database is opened by the actor itself.
    pub fn spawn(
        tenant: TenantId,
        actor_id: u64,
        config: Arc<Config>,
        pool: StorePool,
        tracker: &TaskTracker,
        consumers: Vec<Box<dyn CommitConsumer>>,
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
            pool,
            retire: Some(retire),
            rx,
            live,
            consumers,
            lease: Arc::new(()),
            wal: Arc::new(WalGrowth::default()),
            last_commit: None,
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
        let path = self.config.tenant_path(&self.tenant);
        let (store, writer) = match Store::open(&self.pool, &path, self.config.durability).await {
            Ok(opened) => opened,
            Err(e) => {
                warn!(error = %e, path = %path.display(), "cannot open tenant database");
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
        let mut db = Db {
            store,
            writer: Some(writer),
        };
        self.serve(&mut db).await;
        checkpointer.abort();
        if let Some(writer) = db.writer.take() {
            db.store.close(writer).await;
        }
        debug!("tenant closed");
    }

    async fn serve(&mut self, db: &mut Db) {
        let idle_timeout = self.config.tenant_idle_timeout;
        let mut idle_since: Option<Instant> = Some(Instant::now());
        // When to give back memory after the last commit (see `Store::trim`).
        let mut trim_at: Option<Instant> = None;
        let mut batch: Vec<Msg> = Vec::new();
        loop {
            // Wake up to check idleness at most every quarter of the timeout.
            let tick = idle_timeout.max(Duration::from_millis(40)) / 4;
            let msg = tokio::select! {
                msg = self.rx.recv() => msg,
                () = sleep_until(trim_at) => {
                    trim_at = None;
                    let store = db.store.clone();
                    if let Err(e) = db.job(move |w| { store.trim(w); Ok(()) }).await {
                        warn!(error = %e, "trimming the tenant's memory failed");
                    }
                    continue;
                }
                () = tokio::time::sleep(tick) => {
                    if Arc::strong_count(&self.lease) > 1 {
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
                }
            }
            if !writes.is_empty() {
                self.commit(db, writes).await;
                trim_at = Some(Instant::now() + TRIM_AFTER);
            }
            if stop || db.writer.is_none() {
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
                let pk = public_key.clone();
                let next = db.job(move |w| w.next_sequence(&pk)).await?;
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
        let strict = self.config.strict_iv;
        // A tenant that commits rarely gives back the writer's page cache right after the
        // commit (memory per idle tenant); one that commits often keeps it (speed).
        let now = Instant::now();
        let sparse = self
            .last_commit
            .replace(now)
            .is_none_or(|last| now - last > SPARSE_COMMITS);
        let started = std::time::Instant::now();
        let result = db
            .job(move |w| {
                let outcomes = w.commit(&reqs, strict);
                if sparse {
                    w.release_memory();
                }
                Ok((reqs, outcomes))
            })
            .await;
        let duration = started.elapsed();
        let (reqs, outcomes) = match result {
            Ok((reqs, Ok(outcomes))) => (reqs, outcomes),
            Ok((_, Err(e))) => return self.failed(rest, TenantError::from(e)),
            Err(e) => return self.failed(rest, e),
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
        Msg::Stop => {}
    }
}

/// A tenant quiet this long after its last commit gives back its caches (`Store::trim`).
const TRIM_AFTER: Duration = Duration::from_secs(2);
/// Commits further apart than this release the writer's page cache right away.
const SPARSE_COMMITS: Duration = Duration::from_secs(1);

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the checkpointer watches.
#[derive(Debug, Default)]
struct WalGrowth {
    bytes: AtomicU64,
    commits: AtomicU64,
}

/// A tenant's WAL is checkpointed, off the write path, once it holds this much since the last
/// checkpoint, whether or not writes go on.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// Checkpoints the tenant's WAL (`PASSIVE`: never blocks the writer), looking every `every`:
/// when a quiet period follows writes, or once the WAL has grown by [`CHECKPOINT_BYTES`]. A
/// busy small tenant is not checkpointed every tick: with many tenants, that would double
/// the disk's fsyncs.
fn spawn_checkpointer(
    store: Store,
    wal: Arc<WalGrowth>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let commits = wal.commits.swap(0, Ordering::Relaxed);
                let bytes = wal.bytes.load(Ordering::Relaxed);
                let quiet = commits == 0 && bytes > 0;
                if !quiet && bytes < CHECKPOINT_BYTES {
                    continue;
                }
                wal.bytes.fetch_sub(bytes, Ordering::Relaxed);
                if let Err(e) = store.checkpoint().await {
                    debug!(error = %e, "checkpoint skipped");
                }
            }
        }
        .in_current_span(),
    )
}
