//! The public SDK: [`Client`], built with [`ClientBuilder`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use wharf_protocol::{Entry, Identity, ReadKey};

use crate::connection::{ConnectOptions, TokenPlacement};
use crate::error::Error;
use crate::journal::{Journal, Progress, StoredEntry};
use crate::sync::{LogKey, Shared};
pub use crate::sync::{Status, SyncConfig};

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    config: SyncConfig,
    journal: Option<PathBuf>,
    logs: Vec<(String, LogKey)>,
}

impl ClientBuilder {
    /// The journal file (created if missing). Required.
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// A log this client writes (and reads). The first one is the default log of
    /// [`Client::append`].
    pub fn identity(mut self, identity: Identity) -> Self {
        self.logs
            .push((identity.log().to_owned(), LogKey::Writer(identity)));
        self
    }

    /// A log this client only reads, for example from an opened grant.
    pub fn read_key(mut self, key: ReadKey) -> Self {
        self.logs.push((key.log().to_owned(), LogKey::Reader(key)));
        self
    }

    /// A bearer token, sent as `Authorization: Bearer …`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.connect.token = Some(token.into());
        self
    }

    /// Send the token as `?token=` instead of a header.
    pub fn token_in_url(mut self) -> Self {
        self.config.connect.token_placement = TokenPlacement::Query;
        self
    }

    /// Extra PEM CA certificates for `wss://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.connect.ca_file = Some(path.into());
        self
    }

    /// Everything else: timeouts, backoff, batching.
    pub fn configure(mut self, f: impl FnOnce(&mut SyncConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Opens the journal and starts syncing in the background. Returns at once, online or not.
    pub async fn open(self) -> Result<Client, Error> {
        let path = self
            .journal
            .ok_or_else(|| Error::Io("no journal path given (ClientBuilder::journal)".into()))?;
        if self.logs.is_empty() {
            return Err(Error::Io("no identity or read key given".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (log, _) in &self.logs {
            if !seen.insert(log.clone()) {
                return Err(Error::Io(format!("log {log:?} given twice")));
            }
        }
        self.config.connect.url()?;
        let journal = Journal::open(&path).await?;
        let (status, _) = watch::channel(Status::Connecting { attempt: 0 });
        let (remote, _) = watch::channel(None);
        let (snapshot_tx, snapshot_rx) = tokio::sync::mpsc::channel(16);
        let shared = Arc::new(Shared {
            snapshots: Mutex::new(snapshot_rx),
            no_snapshot: std::sync::Mutex::default(),
            config: self.config,
            journal: journal.clone(),
            logs: self.logs,
            status,
            remote,
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(crate::sync::run(shared.clone(), cancel.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                journal,
                task: Mutex::new(Some(task)),
                snapshot_tx,
                cancel: cancel.clone(),
                _guard: cancel.drop_guard(),
            }),
        })
    }
}

struct Inner {
    shared: Arc<Shared>,
    journal: Journal,
    task: Mutex<Option<JoinHandle<()>>>,
    snapshot_tx: tokio::sync::mpsc::Sender<crate::sync::SnapshotRequest>,
    cancel: CancellationToken,
    _guard: DropGuard,
}

/// A Wharf client: a durable journal plus a background sync task. Cheap to clone; syncing
/// stops when the last clone is dropped or on [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("logs", &self.logs().collect::<Vec<_>>())
            .field("status", &*self.inner.shared.status.borrow())
            .finish()
    }
}

/// One event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event: String,
    pub primary_key: String,
    /// msgpack (see [`NewEvent::new`] for a serde value).
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// An event whose payload is any serde value, written as msgpack with named fields (what an
    /// Effect `Schema.Struct` payload decodes).
    pub fn new<T: Serialize + ?Sized>(
        event: impl Into<String>,
        primary_key: impl Into<String>,
        payload: &T,
    ) -> Result<Self, Error> {
        Ok(NewEvent {
            event: event.into(),
            primary_key: primary_key.into(),
            payload: rmp_serde::to_vec_named(payload).map_err(|e| Error::Payload(e.to_string()))?,
        })
    }
}

impl Client {
    /// Starts building a client for `relay` (a `ws://` or `wss://` address) and `tenant`.
    pub fn builder(relay: impl Into<String>, tenant: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            config: SyncConfig::new(ConnectOptions::new(relay, tenant)),
            journal: None,
            logs: Vec::new(),
        }
    }

    /// Appends one event to the default (first) log. Returns once it is durable in the
    /// journal; the upload happens in the background.
    pub async fn append<T: Serialize + ?Sized>(
        &self,
        event: &str,
        primary_key: &str,
        payload: &T,
    ) -> Result<[u8; 16], Error> {
        let log = self.default_log().to_owned();
        let ids = self
            .append_many(&log, vec![NewEvent::new(event, primary_key, payload)?])
            .await?;
        Ok(ids[0])
    }

    /// Publishes an encrypted snapshot of `log`: this client's view of it as read from the
    /// relay (the last writer per event and primary key), sealed under the log's key and bound
    /// to the log and the last sequence it covers. Returns that sequence once the relay has
    /// stored it durably. Waits for a connection; entries appended here but not yet acked are
    /// not part of it (they come after it). Needs the log's identity (not a read key).
    pub async fn snapshot(&self, log: &str) -> Result<u64, Error> {
        match self.key(log)? {
            LogKey::Writer(_) => {}
            LogKey::Reader(_) => return Err(Error::ReadOnly(log.to_owned())),
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner
            .snapshot_tx
            .send(crate::sync::SnapshotRequest {
                log: log.to_owned(),
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| {
            Error::Disconnected("the connection ended before the snapshot was acknowledged".into())
        })?
    }

    /// History the relay had deleted before this client read it, with no snapshot covering it.
    pub async fn truncations(&self) -> Result<Vec<crate::journal::Truncation>, Error> {
        self.inner.journal.truncations().await
    }

    /// Appends events to `log` in one durable transaction; returns their entry ids.
    pub async fn append_many(
        &self,
        log: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<[u8; 16]>, Error> {
        match self.key(log)? {
            LogKey::Writer(_) => {}
            LogKey::Reader(_) => return Err(Error::ReadOnly(log.to_owned())),
        }
        let entries: Vec<Entry> = events
            .into_iter()
            .map(|e| Entry {
                id: *uuid::Uuid::now_v7().as_bytes(),
                event: e.event,
                primary_key: e.primary_key,
                payload: e.payload,
            })
            .collect();
        let ids = entries.iter().map(|e| e.id).collect();
        self.inner.journal.append(log, entries).await?;
        Ok(ids)
    }

    /// The default log: the first identity given to the builder.
    pub fn default_log(&self) -> &str {
        &self.inner.shared.logs[0].0
    }

    /// Every log this client syncs.
    pub fn logs(&self) -> impl Iterator<Item = &str> {
        self.inner.shared.logs.iter().map(|(l, _)| l.as_str())
    }

    fn key(&self, log: &str) -> Result<&LogKey, Error> {
        self.inner
            .shared
            .logs
            .iter()
            .find(|(l, _)| l == log)
            .map(|(_, k)| k)
            .ok_or_else(|| Error::UnknownLog(log.to_owned()))
    }

    /// Every applied entry, own and others', from the beginning of this journal, then live. The
    /// order is the relay's sequence order per log, the same on every replica.
    pub fn entries(&self) -> EntryStream {
        self.entries_after(0)
    }

    /// Like [`Client::entries`], starting after delivery index `index`
    /// ([`Delivered::index`]), for consumers that keep their own position.
    pub fn entries_after(&self, index: i64) -> EntryStream {
        EntryStream {
            applied: self.inner.journal.subscribe_applied(),
            journal: self.inner.journal.clone(),
            progress: self.inner.journal.progress(),
            after: index,
            buffer: VecDeque::new(),
        }
    }

    /// Resolves once every local entry of every writable log is acknowledged by the relay the
    /// client is connected to. Waits through disconnects; wrap it in a timeout if needed.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut progress = self.inner.journal.progress();
        let mut remote = self.inner.shared.remote.subscribe();
        let mut status = self.inner.shared.status.subscribe();
        loop {
            progress.borrow_and_update();
            let current = remote.borrow_and_update().clone();
            if let Some(remote_id) = current {
                if self.unacked(&remote_id).await? == 0 {
                    return Ok(());
                }
            }
            if let Status::Closed | Status::Error { retry_in: None, .. } =
                &*status.borrow_and_update()
            {
                return Err(Error::Closed);
            }
            tokio::select! {
                r = progress.changed() => r.map_err(|_| Error::Closed)?,
                r = remote.changed() => r.map_err(|_| Error::Closed)?,
                r = status.changed() => r.map_err(|_| Error::Closed)?,
            }
        }
    }

    async fn unacked(&self, remote: &[u8]) -> Result<u64, Error> {
        let mut n = 0;
        for (log, key) in &self.inner.shared.logs {
            if let LogKey::Writer(_) = key {
                n += self.inner.journal.outbox_len(remote, log).await?;
            }
        }
        Ok(n)
    }

    /// Entries not yet acknowledged by the relay last connected to (all of them if none).
    pub async fn pending(&self) -> Result<u64, Error> {
        let remote = self
            .inner
            .shared
            .remote
            .borrow()
            .clone()
            .unwrap_or_default();
        self.unacked(&remote).await
    }

    /// The sync status, as a watch: `.borrow()` for now, `.changed()` to follow it.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.shared.status.subscribe()
    }

    /// The relay's `remoteId` once connected.
    pub fn remote_id(&self) -> Option<Vec<u8>> {
        self.inner.shared.remote.borrow().clone()
    }

    /// The last-writer-wins view over every log of this client (see [`View`]).
    pub async fn view(&self) -> Result<View, Error> {
        let logs: Vec<String> = self.logs().map(str::to_owned).collect();
        let latest = self.inner.journal.latest(&logs).await?;
        Ok(View {
            records: latest
                .into_iter()
                .map(|s| {
                    (
                        (s.entry.event.clone(), s.entry.primary_key.clone()),
                        Record::from(s),
                    )
                })
                .collect(),
        })
    }

    /// The journal, for inspection.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// Stops syncing (after telling the relay) and waits for the sync task. Appended entries
    /// stay in the journal and go out the next time a client opens it.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.cancel.cancel();
        if let Some(task) = self.inner.task.lock().await.take() {
            let _ = task.await;
        }
        self.inner.journal.barrier().await
    }
}

/// An entry in delivery order.
pub type Delivered = crate::journal::AppliedEntry;

impl Delivered {
    /// The payload decoded into `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        rmp_serde::from_slice(&self.entry.payload).map_err(|e| Error::Payload(e.to_string()))
    }

    /// The payload as JSON.
    pub fn payload_json(&self) -> Result<serde_json::Value, Error> {
        wharf_protocol::payload::to_json(&self.entry.payload)
            .map_err(|e| Error::Payload(e.to_string()))
    }
}

/// Applied entries in delivery order: the journal's backlog, then live. Live entries usually
/// come straight from the journal's writer; anything else (a backlog, a missed handoff, a slow
/// consumer) is read from the journal in pages, so a slow consumer costs no memory and misses
/// nothing.
#[derive(Debug)]
pub struct EntryStream {
    journal: Journal,
    progress: watch::Receiver<Progress>,
    applied: broadcast::Receiver<Arc<Vec<Delivered>>>,
    after: i64,
    buffer: VecDeque<Delivered>,
}

impl EntryStream {
    /// The next entry, waiting for one if needed. `Err(Closed)` once the journal is gone.
    pub async fn next(&mut self) -> Result<Delivered, Error> {
        loop {
            if let Some(d) = self.buffer.pop_front() {
                self.after = d.index;
                return Ok(d);
            }
            // Handed-over batches that continue exactly where this stream stands.
            // (Empty, Lagged or Closed: the journal has whatever is missing.)
            while let Ok(batch) = self.applied.try_recv() {
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                    continue;
                };
                if last.index <= self.after {
                    continue; // already read from the journal
                }
                if first.index <= self.after + 1 {
                    self.buffer
                        .extend(batch.iter().filter(|d| d.index > self.after).cloned());
                }
                break; // either continues this stream, or leaves a gap the journal fills
            }
            if !self.buffer.is_empty() {
                continue;
            }
            let upto = self.progress.borrow_and_update().applied;
            if upto > self.after {
                self.buffer
                    .extend(self.journal.applied_after(self.after, 512).await?);
                if !self.buffer.is_empty() {
                    continue;
                }
            }
            self.progress.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    /// Delivery index of the last entry returned.
    pub fn position(&self) -> i64 {
        self.after
    }
}

/// One (event, primaryKey) in the [`View`]: the entry that won.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub log: String,
    pub entry: Entry,
    pub own: bool,
}

impl From<StoredEntry> for Record {
    fn from(s: StoredEntry) -> Self {
        Record {
            log: s.log,
            entry: s.entry,
            own: s.own,
        }
    }
}

impl Record {
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        rmp_serde::from_slice(&self.entry.payload).map_err(|e| Error::Payload(e.to_string()))
    }
}

/// Last-writer-wins state keyed by (event, primaryKey): the entry with the greatest entry id
/// (UUIDv7: the writer's millisecond clock, then random bits) wins. It is a function of the set
/// of entries only, so every replica holding the same entries holds the same view, whatever
/// order they arrived in. Local entries not yet uploaded are included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    records: BTreeMap<(String, String), Record>,
}

impl View {
    pub fn get(&self, event: &str, primary_key: &str) -> Option<&Record> {
        self.records
            .get(&(event.to_owned(), primary_key.to_owned()))
    }

    /// Every record of `event`, by primary key.
    pub fn of<'a>(&'a self, event: &'a str) -> impl Iterator<Item = (&'a str, &'a Record)> + 'a {
        self.records
            .iter()
            .filter(move |((e, _), _)| e == event)
            .map(|((_, k), r)| (k.as_str(), r))
    }

    /// Every record, ordered by (event, primaryKey).
    pub fn iter(&self) -> impl Iterator<Item = ((&str, &str), &Record)> + '_ {
        self.records
            .iter()
            .map(|((e, k), r)| ((e.as_str(), k.as_str()), r))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// `(event, primaryKey) → payload` as JSON, for comparing replicas.
    pub fn to_json_map(&self) -> HashMap<String, serde_json::Value> {
        self.records
            .iter()
            .map(|((e, k), r)| {
                let v = wharf_protocol::payload::to_json(&r.entry.payload)
                    .unwrap_or(serde_json::Value::Null);
                (format!("{e}/{k}"), v)
            })
            .collect()
    }
}
