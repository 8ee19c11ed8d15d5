//! Wharf's storage: each tenant's SQLite database, or one PostgreSQL database shared by many
//! relays; the only crate that knows which.
//!
//! Everything the tenant actor, the feeds and the webhook sender do with a tenant's data goes
//! through two types: [`Store`], the reading side sessions share, and [`Writer`], the one
//! writing side the tenant actor owns. Each is a closed enum over the backends, so nothing
//! outside this crate sees rusqlite or sqlx:
//!
//! - [`sqlite`]: one SQLite file per tenant (the default), synchronous rusqlite calls on the
//!   relay's storage threads ([`StorePool`]).
//! - [`postgres`]: every tenant in one PostgreSQL database that any number of relays share
//!   (scale-out), through sqlx; [`postgres::feed`] carries other relays' commits.
//! - [`config`]: what the storage needs to know ([`config::StoreConfig`], built by the relay).
//! - [`admin`]: describing, deleting, exporting and importing a SQLite tenant; the export
//!   format both stores share.
//! - [`backup`]: online snapshots of a SQLite data directory, and restores.
//! - [`revocations`]: the revocation list's storage.
//!
//! [`Backend`] opens a tenant on whichever backend the relay was configured with.

pub mod admin;
pub mod backup;
pub mod config;
pub mod pool;
pub mod postgres;
pub mod revocations;
pub mod sqlite;

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;
use wharf_protocol::{EncryptedEntry, RemoteEntry};
use wharf_sqlite::DbError;

pub use pool::{PoolError, StorePool};

use crate::config::{StoreConfig, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Open(#[from] DbError),
    #[error("corrupt database: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A storage job never came back (it panicked): the writer went with it.
    #[error("the tenant's writer was lost")]
    Lost,
    #[error("database error: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Config(String),
}

/// What a tenant stores: ciphertext and snapshot bytes, and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub logs: u64,
}

/// One `WriteEntries` handed to a group commit.
#[derive(Debug)]
pub struct WriteReq {
    pub public_key: String,
    pub iv: Bytes,
    pub entries: Vec<EncryptedEntry>,
}

/// What a group commit did with one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: one sequence per submitted entry (a duplicate gets its original one), which
    /// entries were new (indexes into the write), and whether its 12-byte iv was already
    /// stored in the log before this write.
    Written {
        sequences: Vec<u64>,
        new: Vec<usize>,
        iv_reused: bool,
    },
    /// Not committed: its 12-byte iv is already stored in the log and `strict_iv` refuses that.
    IvRefused,
    /// Not committed, checked before anything was stored: it would take the tenant over a
    /// quota.
    OverQuota(String),
}

/// What a group commit checks besides the data itself.
#[derive(Debug, Clone, Default)]
pub struct CommitRules {
    /// Refuse a write whose 12-byte iv the log already holds.
    pub strict_iv: bool,
    /// Quota: ciphertext and snapshot bytes the tenant may store.
    pub max_bytes: Option<u64>,
    /// Quota: logs the tenant may hold.
    pub max_logs: Option<u64>,
    /// Webhook endpoints (their URLs) notified of new entries, through the outbox.
    pub webhooks: Vec<String>,
    /// Commit time (Unix ms), stored with each entry for age-based retention.
    pub now_ms: i64,
}

impl CommitRules {
    pub(crate) fn quota_applies(&self) -> bool {
        self.max_bytes.is_some() || self.max_logs.is_some()
    }

    /// Why a write of `size` bytes (to a new log when `new_log`) is over quota, if it is.
    pub(crate) fn over_quota(&self, totals: &Totals, new_log: bool, size: u64) -> Option<String> {
        if let Some(max) = self.max_logs {
            if new_log && totals.logs >= max {
                return Some(format!(
                    "quota exceeded: the tenant holds {} logs, its limit",
                    totals.logs
                ));
            }
        }
        if let Some(max) = self.max_bytes {
            if size > 0 && totals.bytes.saturating_add(size) > max {
                return Some(format!(
                    "quota exceeded: the tenant stores {} bytes; {size} more would pass its limit of {max}",
                    totals.bytes
                ));
            }
        }
        None
    }
}

/// A retention policy as the store applies it (`None`: no such limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionLimits {
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Entries committed longer ago than this (ms) are deleted.
    pub max_age_ms: Option<i64>,
    /// Delete everything the newest snapshot covers.
    pub after_snapshot: bool,
}

impl RetentionLimits {
    pub fn is_off(&self) -> bool {
        *self == RetentionLimits::default()
    }
}

/// What one retention step did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetainReport {
    pub entries_deleted: u64,
    pub bytes_deleted: u64,
    /// Logs whose history now starts later, with where it starts.
    pub truncated: Vec<(String, u64)>,
    /// The step stopped at its budget: run another.
    pub more: bool,
}

/// One retention step's budget of entries, and what the step did: the bookkeeping both
/// stores' loops over a tenant's logs share.
#[derive(Debug)]
pub(crate) struct RetainBudget {
    left: u64,
    report: RetainReport,
}

impl RetainBudget {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            left: budget.max(1),
            report: RetainReport::default(),
        }
    }

    /// How far this step may delete in a log whose history starts at `first` (exclusive);
    /// `None` when the budget is spent (another step does the rest).
    pub(crate) fn window(&mut self, first: u64) -> Option<u64> {
        if self.left == 0 {
            self.report.more = true;
            return None;
        }
        Some(first.saturating_add(self.left))
    }

    /// `public_key`'s history now starts at `end` instead of `first` (the policy wanted
    /// `target`): `deleted` entries and `freed` ciphertext bytes went.
    pub(crate) fn trimmed(
        &mut self,
        public_key: String,
        (first, end, target): (u64, u64, u64),
        deleted: u64,
        freed: u64,
    ) {
        self.report.entries_deleted += deleted;
        self.report.bytes_deleted += freed;
        self.report.truncated.push((public_key, end));
        self.left = self.left.saturating_sub(deleted.max(end - first));
        if end < target {
            self.report.more = true;
        }
    }

    pub(crate) fn report(&self) -> &RetainReport {
        &self.report
    }

    /// The step's report; a spent budget means more may be due.
    pub(crate) fn finish(mut self) -> RetainReport {
        if self.left == 0 {
            self.report.more = true;
        }
        self.report
    }
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefusal {
    #[error("snapshot refused: it covers sequence {sequence}, but log {log:?} has only reached {next} entries")]
    NotReached {
        log: String,
        sequence: u64,
        next: u64,
    },
    #[error("snapshot refused: {0}")]
    Quota(String),
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub sequence: u64,
    pub iv: Bytes,
    pub data: Bytes,
}

/// A pending webhook notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub endpoint: String,
    pub log_id: i64,
    pub public_key: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub count: u64,
    pub attempts: u32,
    pub due_at: i64,
}

/// What storing a snapshot of `size` bytes covering `sequence` adds to what a log stores, when
/// the log holds the snapshots `kept` (sequence, bytes) and keeps the newest `keep`: the new
/// one, less the one it replaces and those it pushes out (so a tenant at its quota can still
/// move its snapshot on). Both stores check quotas with it.
pub(crate) fn snapshot_growth(
    mut kept: Vec<(u64, u64)>,
    sequence: u64,
    size: u64,
    keep: usize,
) -> u64 {
    let before: u64 = kept.iter().map(|(_, n)| n).sum();
    kept.retain(|(seq, _)| *seq != sequence);
    kept.push((sequence, size));
    kept.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    kept.truncate(keep.max(1));
    let after: u64 = kept.iter().map(|(_, n)| n).sum();
    after.saturating_sub(before)
}

/// Where tenants are stored; opens one tenant's [`Store`] and [`Writer`].
#[derive(Debug, Clone)]
pub enum Backend {
    /// `data/tenants/{tenant}.sqlite`, worked on by these storage threads.
    Sqlite(StorePool, Arc<StoreConfig>),
    /// One shared PostgreSQL database (or why its URL is unusable: [`Backend::prepare`]
    /// reports it, and the relay does not serve).
    Postgres(Arc<Result<postgres::Backend, String>>),
}

impl Backend {
    /// The backend `config.store` names. A Postgres pool connects on first use
    /// ([`Backend::prepare`] checks it).
    pub fn new(config: &StoreConfig) -> Self {
        match &config.url {
            None => Backend::Sqlite(
                StorePool::new(config.storage_threads),
                Arc::new(config.clone()),
            ),
            Some(url) => Backend::Postgres(Arc::new(
                postgres::Backend::connect_lazy(url, &config.postgres).map_err(|e| e.to_string()),
            )),
        }
    }

    /// The Postgres backend, when tenants live there.
    pub fn postgres(&self) -> Result<Option<&postgres::Backend>, StoreError> {
        match self {
            Backend::Sqlite(..) => Ok(None),
            Backend::Postgres(pg) => match &**pg {
                Ok(pg) => Ok(Some(pg)),
                Err(e) => Err(StoreError::Config(e.clone())),
            },
        }
    }

    /// Readies the backend before the relay serves: the Postgres schema is migrated (which
    /// also proves the database is reachable).
    pub async fn prepare(&self) -> Result<(), StoreError> {
        match self.postgres()? {
            Some(pg) => pg.migrate().await,
            None => Ok(()),
        }
    }

    /// Whether the store answers (the Postgres database, within a few seconds).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.postgres()? {
            Some(pg) => pg.ping().await,
            None => Ok(()),
        }
    }

    /// Opens (creating it if needed) `tenant`'s storage.
    pub async fn open(&self, tenant: &TenantId) -> Result<(Store, Writer), StoreError> {
        match self {
            Backend::Sqlite(pool, config) => {
                let (store, writer) =
                    sqlite::Store::open(pool, &config.tenant_path(tenant), config.durability)
                        .await?;
                Ok((
                    Store::Sqlite(store.clone()),
                    Writer(Backing::Sqlite {
                        store,
                        writer: Some(writer),
                    }),
                ))
            }
            Backend::Postgres(_) => {
                let pg = self
                    .postgres()?
                    .ok_or_else(|| StoreError::Config("no Postgres store".into()))?;
                let (store, writer) = pg.open(tenant).await?;
                Ok((Store::Postgres(store), Writer(Backing::Postgres(writer))))
            }
        }
    }
}

/// The reading side of one tenant, shared by its sessions and its webhook sender. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

impl Store {
    /// The id the relay announces in `Hello`: created with the tenant, stable for its life.
    pub fn remote_id(&self) -> Uuid {
        match self {
            Store::Sqlite(s) => s.remote_id(),
            Store::Postgres(s) => s.remote_id(),
        }
    }

    /// Whether other relays may append to this tenant (its logs must be followed).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The committed next sequence of each of `public_keys` that exists (for following a
    /// shared tenant; a tenant only this relay writes has nothing to follow).
    pub async fn heads(&self, public_keys: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Vec::new()),
            Store::Postgres(s) => s.heads(public_keys).await,
        }
    }

    /// Entries of a log with `from <= sequence < to`, in order, at most `limit` of them.
    pub async fn read(
        &self,
        public_key: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RemoteEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(public_key, from, to, limit).await,
            Store::Postgres(s) => s.read(public_key, from, to, limit).await,
        }
    }

    /// Where `public_key`'s history starts, and the sequence its newest snapshot covers.
    pub async fn history(&self, public_key: &str) -> Result<(u64, Option<u64>), StoreError> {
        match self {
            Store::Sqlite(s) => s.history(public_key).await,
            Store::Postgres(s) => s.history(public_key).await,
        }
    }

    /// The snapshot of `public_key` covering `sequence`.
    pub async fn snapshot(
        &self,
        public_key: &str,
        sequence: u64,
    ) -> Result<Option<StoredSnapshot>, StoreError> {
        match self {
            Store::Sqlite(s) => s.snapshot(public_key, sequence).await,
            Store::Postgres(s) => s.snapshot(public_key, sequence).await,
        }
    }

    /// Webhook notifications due at `now_ms`, oldest first, at most `limit`; and when the
    /// next one not yet due is due. On a shared store the rows are claimed for `claim_ms`
    /// (the time their delivery may take), so that no other relay delivers them meanwhile.
    pub async fn outbox_due(
        &self,
        now_ms: i64,
        limit: usize,
        claim_ms: i64,
    ) -> Result<(Vec<OutboxRow>, Option<i64>), StoreError> {
        match self {
            Store::Sqlite(s) => s.outbox_due(now_ms, limit).await,
            Store::Postgres(s) => s.outbox_due(now_ms, limit, claim_ms).await,
        }
    }

    /// The `remoteId` the store holds for the tenant now (`None`: it was deleted). On SQLite
    /// the tenant's file is this relay's alone: always the one it opened with.
    pub async fn stored_identity(&self) -> Result<Option<Uuid>, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(Some(s.remote_id())),
            Store::Postgres(s) => s.stored_identity().await,
        }
    }

    /// Gives back the webhook notifications this relay claimed for the tenant and has not
    /// reported on (its sender stopped): due at once. Nothing to do on SQLite (no claims).
    pub async fn release_claims(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.release_claims().await,
        }
    }

    /// Moves committed pages into the database file without waiting for the writer (SQLite's
    /// WAL; nothing to do elsewhere).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint().await,
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Empties the WAL so freed pages leave the file now; whether it completed.
    pub async fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint_truncate().await,
            Store::Postgres(_) => Ok(true),
        }
    }
}

/// The writing side of one tenant: owned by its actor, the only thing that writes the tenant's
/// data or assigns its sequences.
#[derive(Debug)]
pub struct Writer(Backing);

#[derive(Debug)]
enum Backing {
    /// The writer is lent to a storage thread for each job; `None` only if a job was lost.
    Sqlite {
        store: sqlite::Store,
        writer: Option<sqlite::Writer>,
    },
    Postgres(postgres::Writer),
}

impl Writer {
    /// Runs `f` with the SQLite writer on a storage thread.
    async fn job<R, F>(
        store: &sqlite::Store,
        slot: &mut Option<sqlite::Writer>,
        f: F,
    ) -> Result<R, StoreError>
    where
        F: FnOnce(&mut sqlite::Writer) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let writer = slot.take().ok_or(StoreError::Lost)?;
        let (writer, r) = store.with_writer(writer, f).await?;
        *slot = Some(writer);
        r
    }

    /// Whether the writer is gone (a storage job was lost): the tenant must close.
    pub fn is_lost(&self) -> bool {
        match &self.0 {
            Backing::Sqlite { writer, .. } => writer.is_none(),
            Backing::Postgres(_) => false,
        }
    }

    /// Commits `writes` as one group: each log's entries get its next sequences in order, an
    /// entry id the log holds gets its original sequence. Nothing is acknowledged by the
    /// caller before this returns. `quiet`: the tenant commits rarely, give caches back.
    /// The writes come back with one outcome each.
    pub async fn commit(
        &mut self,
        writes: Vec<WriteReq>,
        rules: CommitRules,
        quiet: bool,
    ) -> Result<(Vec<WriteReq>, Vec<Outcome>), StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| {
                    let outcomes = w.commit(&writes, &rules);
                    if quiet {
                        w.release_memory();
                    }
                    Ok((writes, outcomes?))
                })
                .await
            }
            Backing::Postgres(w) => {
                let outcomes = w.commit(&writes, &rules).await?;
                Ok((writes, outcomes))
            }
        }
    }

    /// The sequence the next entry of `public_key` gets.
    pub async fn next_sequence(&mut self, public_key: String) -> Result<u64, StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| w.next_sequence(&public_key)).await
            }
            Backing::Postgres(w) => w.next_sequence(&public_key).await,
        }
    }

    /// Stores a snapshot, keeping the newest `keep` of its log.
    pub async fn write_snapshot(
        &mut self,
        public_key: String,
        snapshot: StoredSnapshot,
        keep: usize,
        rules: CommitRules,
    ) -> Result<Result<(), SnapshotRefusal>, StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| {
                    w.write_snapshot(&public_key, &snapshot, keep, &rules)
                })
                .await
            }
            Backing::Postgres(w) => w.write_snapshot(&public_key, &snapshot, keep, &rules).await,
        }
    }

    /// One retention step: at most `budget` entries deleted, whole prefixes only.
    pub async fn retain(
        &mut self,
        limits: RetentionLimits,
        now_ms: i64,
        budget: u64,
    ) -> Result<RetainReport, StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| w.retain(&limits, now_ms, budget)).await
            }
            Backing::Postgres(w) => w.retain(&limits, now_ms, budget).await,
        }
    }

    /// The tenant's settings as an administrator stored them (JSON), if any.
    pub async fn settings(&mut self) -> Result<Option<String>, StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => Self::job(store, writer, |w| w.settings()).await,
            Backing::Postgres(w) => w.settings().await,
        }
    }

    /// Replaces the stored settings (`None` removes them).
    pub async fn set_settings(&mut self, json: Option<String>) -> Result<(), StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| w.set_settings(json.as_deref())).await
            }
            Backing::Postgres(w) => w.set_settings(json.as_deref()).await,
        }
    }

    /// Drops webhook notifications for endpoints not in `endpoints`.
    pub async fn outbox_retain_endpoints(
        &mut self,
        endpoints: Vec<String>,
    ) -> Result<u64, StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| {
                    w.outbox_retain_endpoints(&endpoints)
                })
                .await
            }
            Backing::Postgres(w) => w.outbox_retain_endpoints(&endpoints).await,
        }
    }

    /// A notification was delivered.
    pub async fn outbox_delivered(
        &mut self,
        row: OutboxRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| w.outbox_delivered(&row, now_ms)).await
            }
            Backing::Postgres(w) => w.outbox_retire(&row, now_ms).await,
        }
    }

    /// A delivery failed: try again at `due_at`, or drop the row when `give_up`.
    pub async fn outbox_failed(
        &mut self,
        row: OutboxRow,
        due_at: i64,
        give_up: bool,
    ) -> Result<(), StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                Self::job(store, writer, move |w| {
                    w.outbox_failed(&row, due_at, give_up)
                })
                .await
            }
            Backing::Postgres(w) if give_up => w.outbox_retire(&row, due_at).await,
            Backing::Postgres(w) => w.outbox_retry(&row, due_at).await,
        }
    }

    /// Frees what a quiet tenant holds but does not need (idle readers, page caches).
    pub async fn trim(&mut self) -> Result<(), StoreError> {
        match &mut self.0 {
            Backing::Sqlite { store, writer } => {
                let s = store.clone();
                Self::job(store, writer, move |w| {
                    s.trim(w);
                    Ok(())
                })
                .await
            }
            Backing::Postgres(_) => Ok(()),
        }
    }

    /// Closes the tenant's storage (after a last checkpoint, best effort).
    pub async fn close(self) {
        match self.0 {
            Backing::Sqlite { store, writer } => {
                if let Some(writer) = writer {
                    store.close(writer).await;
                }
            }
            Backing::Postgres(_) => {}
        }
    }
}
