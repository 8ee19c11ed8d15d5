//! One tenant's storage as its actor and sessions hold it: [`Store`], the reading side
//! sessions and the webhook sender share, and [`Writer`], the writing side only the tenant's
//! actor holds. Each is a closed enum over the backends.

use std::time::Duration;

use uuid::Uuid;
use wharf_protocol::RemoteEntry;

use crate::error::StoreError;
use crate::model::{
    CommitRules, OutboxRow, Outcome, RetainReport, RetentionLimits, SnapshotRefusal,
    StoredSnapshot, WriteReq,
};
use crate::{postgres, sqlite};

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

    /// How often an open tenant should look at its logs for entries committed elsewhere
    /// ([`Store::heads`]), whatever the store's change feed said; `None`: nothing but this
    /// relay writes the tenant.
    pub fn poll_interval(&self) -> Option<Duration> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.poll_interval()),
        }
    }

    /// Remembers whether the tenant has webhook endpoints, so a relay that restarts opens it
    /// and delivers what its outbox holds ([`crate::Backend::pending_webhooks`]). Durable
    /// when it returns.
    pub async fn mark_webhooks(&self, endpoints: bool) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.mark_webhooks(endpoints).await,
            Store::Postgres(_) => Ok(()),
        }
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

    /// Webhook notifications due at `now_ms`, oldest first, a batch of them; and when the
    /// next one not yet due is due. Each delivery may take `timeout`: on a shared store the
    /// rows are claimed for as long as the batch may take (fewer at a time, so that a relay
    /// that dies leaves them due again soon), and no other relay delivers them meanwhile.
    pub async fn outbox_due(
        &self,
        now_ms: i64,
        timeout: Duration,
    ) -> Result<(Vec<OutboxRow>, Option<i64>), StoreError> {
        match self {
            Store::Sqlite(s) => s.outbox_due(now_ms, 64).await,
            Store::Postgres(s) => s.outbox_due(now_ms, 8, claim_for(timeout, 8)).await,
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

impl Writer {
    pub(crate) fn sqlite(store: sqlite::Store, writer: sqlite::Writer) -> Self {
        Writer(Backing::Sqlite {
            store,
            writer: Some(writer),
        })
    }

    pub(crate) fn postgres(writer: postgres::Writer) -> Self {
        Writer(Backing::Postgres(writer))
    }
}

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

/// How long a sender's claim on webhook rows of a shared store lasts, for a batch of `rows`
/// deliveries of at most `timeout` each.
fn claim_for(timeout: Duration, rows: usize) -> i64 {
    let claim = timeout
        .saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX))
        .saturating_add(Duration::from_secs(5));
    i64::try_from(claim.as_millis()).unwrap_or(i64::MAX)
}
