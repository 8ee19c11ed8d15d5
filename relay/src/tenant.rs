//! The tenant actor: the only task that writes a tenant's database or assigns its sequence
//! numbers. Sessions talk to it through a cloneable [`TenantHandle`].
//!
//! Writes that queue up while a transaction commits are committed together in the next one
//! (group commit). Acks and broadcasts leave only after `COMMIT` returns, that is once the
//! entries are on disk.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use uuid::Uuid;
use wharf_protocol::{EncryptedEntry, RemoteEntry};

use crate::config::{Config, TenantId};
use crate::store::{NewRow, Store, StoreError};

/// Identifies one WebSocket connection, to keep a writer's own entries out of its live feed.
pub type ConnId = u64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TenantError {
    #[error("the tenant is being closed; retry")]
    Closed,
    #[error("storage failed: {0}")]
    Storage(Arc<StoreError>),
}

impl From<StoreError> for TenantError {
    fn from(e: StoreError) -> Self {
        TenantError::Storage(Arc::new(e))
    }
}

/// Entries of one log committed together, shared by every subscriber of that log.
#[derive(Debug)]
pub struct LiveBatch {
    /// Dense, ascending sequences.
    pub entries: Vec<RemoteEntry>,
    /// The connection that wrote each entry.
    pub origins: Vec<ConnId>,
    /// The encoded `Changes` frames, built by the first subscriber that can use them whole.
    pub frames: OnceLock<Arc<[Bytes]>>,
}

impl LiveBatch {
    pub fn first(&self) -> u64 {
        self.entries.first().map_or(0, |e| e.sequence)
    }

    /// One past the last sequence.
    pub fn end(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.sequence + 1)
    }
}

/// The recent tail of one log, shared by the actor (which appends after each commit) and
/// the log's subscribers (which read it). Bounded in bytes: a subscriber whose cursor falls
/// out of the tail reads storage instead, so a stalled reader costs nothing here.
#[derive(Debug)]
pub struct LiveLog {
    tail: std::sync::Mutex<Tail>,
    /// The log's next sequence; changes after every commit that added entries.
    next: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Tail {
    batches: std::collections::VecDeque<Arc<LiveBatch>>,
    bytes: usize,
}

/// What a subscriber finds in the tail from its cursor on.
#[derive(Debug)]
pub enum TailRead {
    /// Batches holding every entry from the cursor to the present (possibly none).
    Batches(Vec<Arc<LiveBatch>>),
    /// The tail no longer reaches back to the cursor: read storage up to this sequence.
    Behind { tail_start: u64 },
}

impl LiveLog {
    fn new(next: u64) -> Self {
        Self {
            tail: std::sync::Mutex::new(Tail::default()),
            next: watch::channel(next).0,
        }
    }

    fn push(&self, batch: LiveBatch, max_bytes: usize) {
        let end = batch.end();
        let size: usize = batch
            .entries
            .iter()
            .map(RemoteEntry::encoded_len_bound)
            .sum();
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.batches.push_back(Arc::new(batch));
            tail.bytes += size;
            // Keep the newest batch whatever its size; drop the oldest beyond the budget.
            while tail.bytes > max_bytes && tail.batches.len() > 1 {
                if let Some(old) = tail.batches.pop_front() {
                    tail.bytes -= old
                        .entries
                        .iter()
                        .map(RemoteEntry::encoded_len_bound)
                        .sum::<usize>();
                }
            }
        }
        self.next.send_replace(end);
    }

    /// Wakes up when the log's next sequence changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.next.subscribe()
    }

    pub fn read_from(&self, cursor: u64) -> TailRead {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        match tail.batches.front() {
            Some(first) if first.first() > cursor => TailRead::Behind {
                tail_start: first.first(),
            },
            _ => TailRead::Batches(
                tail.batches
                    .iter()
                    .filter(|b| b.end() > cursor)
                    .cloned()
                    .collect(),
            ),
        }
    }
}

/// What a session gets when it joins a tenant.
#[derive(Debug)]
pub struct Attached {
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
    public_key: String,
    iv: Bytes,
    entries: Vec<EncryptedEntry>,
    origin: ConnId,
    reply: oneshot::Sender<Result<Vec<u64>, TenantError>>,
}

/// A cloneable handle to a tenant actor.
#[derive(Clone, Debug)]
pub struct TenantHandle {
    /// Unique per actor, so the registry can remove exactly this actor and never its successor.
    pub actor_id: u64,
    tx: mpsc::Sender<Msg>,
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
    ) -> Result<oneshot::Receiver<Result<Vec<u64>, TenantError>>, TenantError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Write(Write {
                public_key,
                iv,
                entries,
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
}

struct LogState {
    id: Option<i64>,
    next: u64,
    /// Present while the log has subscribers.
    live: Option<Arc<LiveLog>>,
}

/// Called once when an actor stops taking new work, so whoever maps tenants to actors can
/// forget this one (and only this one).
pub(crate) type Retire = Box<dyn FnOnce() + Send>;

pub(crate) struct TenantActor {
    tenant: TenantId,
    config: Arc<Config>,
    retire: Option<Retire>,
    rx: mpsc::Receiver<Msg>,
    logs: HashMap<String, LogState>,
    lease: Arc<()>,
}

impl TenantActor {
    /// Starts an actor. Synchronous on purpose: the registry calls it inside
    /// `DashMap::entry().or_insert_with`, so two first connections can never start two actors.
    /// The database is opened by the actor itself.
    pub fn spawn(
        tenant: TenantId,
        actor_id: u64,
        config: Arc<Config>,
        tracker: &TaskTracker,
        retire: Retire,
    ) -> TenantHandle {
        let (tx, rx) = mpsc::channel(1024);
        let span = tracing::info_span!("tenant", tenant = tenant.as_str());
        let actor = TenantActor {
            tenant,
            config,
            retire: Some(retire),
            rx,
            logs: HashMap::new(),
            lease: Arc::new(()),
        };
        tracker.spawn(actor.run().instrument(span));
        TenantHandle { actor_id, tx }
    }

    async fn run(mut self) {
        let path = self.config.tenant_path(&self.tenant);
        let store = match Store::open(&path, self.config.durability).await {
            Ok(store) => store,
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
        let checkpointer = spawn_checkpointer(store.clone(), self.config.checkpoint_interval);
        self.serve(&store).await;
        checkpointer.abort();
        store.close().await;
        debug!("tenant closed");
    }

    async fn serve(&mut self, store: &Store) {
        let idle_timeout = self.config.tenant_idle_timeout;
        let mut idle_since: Option<Instant> = Some(Instant::now());
        let mut batch: Vec<Msg> = Vec::new();
        loop {
            // Wake up to check idleness at most every quarter of the timeout.
            let tick = idle_timeout.max(Duration::from_millis(40)) / 4;
            let msg = tokio::select! {
                msg = self.rx.recv() => msg,
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
                            remote_id: store.remote_id(),
                            store: store.clone(),
                            lease: self.lease.clone(),
                        }));
                    }
                    Msg::Subscribe { public_key, reply } => {
                        let r = self.subscribe(store, public_key).await;
                        let _ = reply.send(r);
                    }
                    Msg::Stop => stop = true,
                }
            }
            if !writes.is_empty() {
                self.commit(store, writes).await;
            }
            if stop {
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
            self.commit(store, writes).await;
        }
    }

    fn retire(&mut self) {
        if let Some(retire) = self.retire.take() {
            retire();
        }
    }

    async fn log(&mut self, store: &Store, public_key: &str) -> Result<&mut LogState, StoreError> {
        if !self.logs.contains_key(public_key) {
            let (id, next) = match store.log_state(public_key).await? {
                Some((id, next)) => (Some(id), next),
                None => (None, 0),
            };
            self.logs.insert(
                public_key.to_owned(),
                LogState {
                    id,
                    next,
                    live: None,
                },
            );
        }
        Ok(self
            .logs
            .get_mut(public_key)
            .unwrap_or_else(|| unreachable!()))
    }

    async fn subscribe(
        &mut self,
        store: &Store,
        public_key: String,
    ) -> Result<Subscribed, TenantError> {
        let log = self.log(store, &public_key).await?;
        let next = log.next;
        let live = log
            .live
            .get_or_insert_with(|| Arc::new(LiveLog::new(next)))
            .clone();
        Ok(Subscribed {
            changes: live.watch(),
            live,
            next_sequence: next,
        })
    }

    async fn commit(&mut self, store: &Store, writes: Vec<Write>) {
        match self.try_commit(store, &writes).await {
            Ok((acks, batches)) => {
                for (w, seqs) in writes.into_iter().zip(acks) {
                    let _ = w.reply.send(Ok(seqs));
                }
                let max_bytes = self.config.live_tail_bytes;
                for (public_key, batch) in batches {
                    if let Some(log) = self.logs.get_mut(&public_key) {
                        if let Some(live) = &log.live {
                            if Arc::strong_count(live) == 1 {
                                // Its last subscriber left: free the tail.
                                log.live = None;
                            } else {
                                live.push(batch, max_bytes);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                // Nothing in memory moved: sequence state advances only after COMMIT.
                warn!(error = %e, writes = writes.len(), "commit failed; nothing acknowledged");
                let err = TenantError::from(e);
                for w in writes {
                    let _ = w.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Assigns sequences and commits one transaction. Returns each write's sequence numbers
    /// (index-aligned, duplicates getting their original sequence) and the new entries per log.
    #[allow(clippy::type_complexity)]
    async fn try_commit(
        &mut self,
        store: &Store,
        writes: &[Write],
    ) -> Result<(Vec<Vec<u64>>, Vec<(String, LiveBatch)>), StoreError> {
        // Sequence state for every log touched, loaded before the transaction starts.
        let mut touched: Vec<&str> = Vec::new();
        for w in writes {
            if !touched.contains(&w.public_key.as_str()) {
                touched.push(&w.public_key);
            }
        }
        for pk in &touched {
            self.log(store, pk).await?;
        }
        let mut tx = store.writer().begin().await?;
        // Per log: (log id, next sequence, known entry ids → sequence).
        let mut plan: HashMap<&str, (i64, u64, HashMap<&[u8], u64>)> = HashMap::new();
        for pk in &touched {
            let log = &self.logs[*pk];
            let id = match log.id {
                Some(id) => id,
                None => Store::insert_log(&mut tx, pk).await?,
            };
            let ids: Vec<&[u8]> = {
                let mut seen = HashSet::new();
                writes
                    .iter()
                    .filter(|w| w.public_key == *pk)
                    .flat_map(|w| w.entries.iter().map(|e| &e.entry_id[..]))
                    .filter(|id| seen.insert(*id))
                    .collect()
            };
            let known = if log.id.is_some() {
                Store::existing(&mut tx, id, &ids).await?
            } else {
                Vec::new()
            };
            // Key the map by the writes' own slices (O(n), no copies of the ids).
            let by_value: HashSet<&[u8]> = ids.iter().copied().collect();
            let mut map: HashMap<&[u8], u64> = HashMap::with_capacity(ids.len());
            for (entry_id, seq) in known {
                if let Some(id) = by_value.get(entry_id.as_slice()) {
                    map.insert(id, seq);
                }
            }
            plan.insert(pk, (id, log.next, map));
        }
        let mut acks = Vec::with_capacity(writes.len());
        let mut rows = Vec::new();
        let mut batches: HashMap<&str, LiveBatch> = HashMap::new();
        for w in writes {
            let (log_id, next, known) = plan
                .get_mut(w.public_key.as_str())
                .unwrap_or_else(|| unreachable!());
            let mut seqs = Vec::with_capacity(w.entries.len());
            for e in &w.entries {
                if let Some(seq) = known.get(&e.entry_id[..]) {
                    seqs.push(*seq);
                    continue;
                }
                let seq = *next;
                *next += 1;
                known.insert(&e.entry_id[..], seq);
                seqs.push(seq);
                rows.push(NewRow {
                    log_id: *log_id,
                    sequence: seq,
                    entry_id: &e.entry_id,
                    iv: &w.iv,
                    ciphertext: &e.encrypted_entry,
                });
                let batch = batches.entry(&w.public_key).or_insert_with(|| LiveBatch {
                    entries: Vec::new(),
                    origins: Vec::new(),
                    frames: OnceLock::new(),
                });
                batch.entries.push(RemoteEntry {
                    sequence: seq,
                    iv: w.iv.clone(),
                    entry_id: e.entry_id.clone(),
                    encrypted_entry: e.encrypted_entry.clone(),
                });
                batch.origins.push(w.origin);
            }
            acks.push(seqs);
        }
        Store::insert_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        // Durable: now the in-memory state may move on.
        for (pk, (id, next, _)) in plan {
            if let Some(log) = self.logs.get_mut(pk) {
                log.id = Some(id);
                log.next = next;
            }
        }
        let batches = batches
            .into_iter()
            .map(|(pk, b)| (pk.to_owned(), b))
            .collect();
        Ok((acks, batches))
    }
}

fn batch_entries(batch: &[Msg]) -> usize {
    batch
        .iter()
        .map(|m| match m {
            Msg::Write(w) => w.entries.len().max(1),
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

fn spawn_checkpointer(store: Store, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.checkpoint().await {
                    debug!(error = %e, "checkpoint skipped");
                }
            }
        }
        .in_current_span(),
    )
}
