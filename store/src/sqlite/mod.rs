//! One tenant's SQLite database: every log of the tenant, its entries and the relay's
//! `remoteId`.
//!
//! All SQLite work runs as synchronous rusqlite calls on the relay's storage threads
//! ([`pool::StorePool`]), one job per unit of work: the tenant actor lends its [`Writer`] to a thread
//! for a whole group commit (dedup, sequence assignment, inserts, `COMMIT`), and sessions read
//! pages of a log through the [`Store`] (read-only connections beside the writer: WAL).
//!
//! - this module: the schema, [`Backend`] (opens a tenant's database), one tenant's [`Store`]
//!   and [`Writer`], and the reads;
//! - `commit`, `snapshots`, `quota`, `settings`, `retention`, `outbox`: one concern each;
//! - [`admin`]: what the admin API and backups do outside the actor; [`pool`]: the threads.
pub mod admin;
mod commit;
mod outbox;
pub mod pool;
mod quota;
pub mod retention;
mod settings;
mod snapshots;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{params, Connection};
use uuid::Uuid;
use wharf_protocol::RemoteEntry;
use wharf_sqlite::{blocking, Synchronous};

use crate::config::{Durability, StoreConfig, TenantId};
use crate::error::StoreError;
use crate::model::Totals;
use crate::sqlite::pool::StorePool;

/// The schema, one step per version (`PRAGMA user_version`); append, never edit.
pub(crate) const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, public_key TEXT NOT NULL UNIQUE)",
        "CREATE TABLE entries (log_id INTEGER NOT NULL, seq INTEGER NOT NULL, \
     entry_id BLOB NOT NULL, iv BLOB NOT NULL, ciphertext BLOB NOT NULL)",
        "CREATE UNIQUE INDEX entries_by_seq ON entries (log_id, seq)",
        "CREATE UNIQUE INDEX entries_by_id ON entries (log_id, entry_id)",
    ],
    &[
        // The iv guardrail: "was this 12-byte AES-GCM iv used in this log?"
        "CREATE INDEX entries_by_gcm_iv ON entries (log_id, iv) WHERE length(iv) = 12",
    ],
    &[
        // Retention: a log's history starts at `first_seq` (everything below was deleted by a
        // policy; sequences are never reused), and `bytes` is the ciphertext it still holds.
        "ALTER TABLE logs ADD COLUMN first_seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE logs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        "UPDATE logs SET bytes = \
         (SELECT COALESCE(SUM(length(ciphertext)), 0) FROM entries WHERE log_id = logs.id)",
        // When an entry was committed (Unix ms); NULL for entries stored before this version,
        // which age policies date to the upgrade (`meta.retention_epoch`).
        "ALTER TABLE entries ADD COLUMN at INTEGER",
        "INSERT OR IGNORE INTO meta (key, value) \
         VALUES ('retention_epoch', CAST(unixepoch('subsec') * 1000 AS INTEGER))",
        // Encrypted snapshots, opaque to the relay: the newest few per log.
        "CREATE TABLE snapshots (id INTEGER PRIMARY KEY, log_id INTEGER NOT NULL, \
         seq INTEGER NOT NULL, iv BLOB NOT NULL, data BLOB NOT NULL, at INTEGER NOT NULL)",
        "CREATE UNIQUE INDEX snapshots_by_log ON snapshots (log_id, seq)",
        // Webhook notifications not yet delivered: one row per (endpoint, log), coalesced.
        "CREATE TABLE webhook_outbox (endpoint TEXT NOT NULL, log_id INTEGER NOT NULL, \
         from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL, count INTEGER NOT NULL, \
         attempts INTEGER NOT NULL DEFAULT 0, due_at INTEGER NOT NULL, \
         PRIMARY KEY (endpoint, log_id)) WITHOUT ROWID",
    ],
];

/// How long a connection waits for another's lock (only checkpoints contend with the writer).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Page cache per connection, in KiB: a tenant is mostly appended to and read from its tail,
/// and the operating system caches the file as well.
const CACHE_KIB: u32 = 512;
/// Read-only connections a tenant keeps open between reads.
const IDLE_READERS: usize = 2;

/// The SQLite store: one database file per tenant under `data/tenants/`, worked on by the
/// storage threads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Backend {
    pool: StorePool,
    config: Arc<StoreConfig>,
}

impl Backend {
    pub fn new(config: Arc<StoreConfig>) -> Self {
        Self {
            pool: StorePool::new(config.storage_threads),
            config,
        }
    }

    /// Opens (creating it if needed) `tenant`'s database.
    pub async fn open(&self, tenant: &TenantId) -> Result<(Store, Writer), StoreError> {
        Store::open(
            &self.pool,
            &self.config.tenant_path(tenant),
            self.config.durability,
            self.config.data.join("webhooks").join(tenant.as_str()),
        )
        .await
    }

    /// Whether `tenant` has a database.
    pub fn exists(&self, tenant: &TenantId) -> bool {
        self.config.tenant_path(tenant).exists()
    }

    /// The size of `tenant`'s database file (0 if it has none).
    pub fn file_size(&self, tenant: &TenantId) -> u64 {
        std::fs::metadata(self.config.tenant_path(tenant)).map_or(0, |m| m.len())
    }
}

/// The reading side of a tenant database, shared by its sessions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    pool: StorePool,
    remote_id: Uuid,
    /// Where the tenant leaves a mark while it has webhook endpoints (`data/webhooks/`).
    webhook_marker: PathBuf,
    /// Read-only connections not in use.
    readers: Mutex<Vec<Connection>>,
    /// A read-write connection for checkpoints, opened on first use.
    maintenance: Mutex<Option<Connection>>,
}

/// The writing side: the tenant's one read-write connection, and each log's id and next
/// sequence as of the last commit. Owned by the tenant actor, lent to a storage thread for
/// each job; nothing else writes the database.
#[derive(Debug)]
pub struct Writer {
    conn: Connection,
    logs: HashMap<String, LogMeta>,
    /// What the tenant stores, for quotas: loaded on first use, then kept.
    totals: Option<Totals>,
}

#[derive(Debug, Clone, Copy)]
struct LogMeta {
    /// `None` until the log's first entry is committed.
    id: Option<i64>,
    next: u64,
    /// The earliest sequence still stored (retention deletes below it).
    first: u64,
}

fn synchronous(durability: Durability) -> Synchronous {
    match durability {
        Durability::Full => Synchronous::Full,
        Durability::Normal => Synchronous::Normal,
    }
}

impl Store {
    /// Opens (creating it if needed) the database at `path` on a storage thread: the reading
    /// side for sessions and the [`Writer`] for the tenant actor.
    pub async fn open(
        pool: &StorePool,
        path: &Path,
        durability: Durability,
        webhook_marker: PathBuf,
    ) -> Result<(Self, Writer), StoreError> {
        let owned = path.to_owned();
        let (conn, remote_id) = pool
            .run(move || -> Result<(Connection, Uuid), StoreError> {
                let conn = blocking::open_writer(
                    &owned,
                    synchronous(durability),
                    BUSY_TIMEOUT,
                    MIGRATIONS,
                )?;
                conn.execute_batch(&format!("PRAGMA cache_size = -{CACHE_KIB}"))?;
                // Made once, with the database; `OR IGNORE` keeps the first one for good.
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('remote_id', ?1)",
                    [Uuid::new_v4().as_bytes().as_slice()],
                )?;
                let raw: Vec<u8> =
                    conn.query_row("SELECT value FROM meta WHERE key = 'remote_id'", [], |r| {
                        r.get(0)
                    })?;
                let id = Uuid::from_slice(&raw)
                    .map_err(|_| StoreError::Corrupt("remote_id is not 16 bytes".into()))?;
                Ok((conn, id))
            })
            .await??;
        let store = Self {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                pool: pool.clone(),
                remote_id,
                webhook_marker,
                readers: Mutex::new(Vec::new()),
                maintenance: Mutex::new(None),
            }),
        };
        Ok((
            store,
            Writer {
                conn,
                logs: HashMap::new(),
                totals: None,
            },
        ))
    }

    /// The id the relay announces in `Hello`: created with the database, stable for its life.
    pub fn remote_id(&self) -> Uuid {
        self.shared.remote_id
    }

    /// Runs `f` with the writer on a storage thread, and gives the writer back.
    pub async fn with_writer<R, F>(&self, writer: Writer, f: F) -> Result<(Writer, R), StoreError>
    where
        F: FnOnce(&mut Writer) -> R + Send + 'static,
        R: Send + 'static,
    {
        Ok(self
            .shared
            .pool
            .run(move || {
                let mut writer = writer;
                let r = f(&mut writer);
                (writer, r)
            })
            .await?)
    }

    /// Runs `f` with a read-only connection on a storage thread.
    pub(super) async fn with_read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let shared = self.shared.clone();
        self.shared.pool.run(move || shared.with_reader(f)).await?
    }

    /// Entries of a log with `from <= sequence < to`, in order, at most `limit` of them.
    pub async fn read(
        &self,
        public_key: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RemoteEntry>, StoreError> {
        let public_key = public_key.to_owned();
        self.with_read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, entry_id, iv, ciphertext FROM entries \
             WHERE log_id = (SELECT id FROM logs WHERE public_key = ?1) \
             AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4",
            )?;
            let to = i64::try_from(to).unwrap_or(i64::MAX);
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![public_key, from, to, limit], |r| {
                let seq: i64 = r.get(0)?;
                Ok(RemoteEntry {
                    sequence: seq as u64,
                    entry_id: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    iv: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                    encrypted_entry: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Moves committed pages from the WAL into the database file (`PASSIVE`: never waits for
    /// the writer, which keeps committing meanwhile).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_with("PASSIVE").await.map(|_| ())
    }

    /// Moves the whole WAL into the database file and empties it, so that pages a vacuum
    /// freed leave the file now. Waits for readers (up to the busy timeout); retried a few
    /// times when another checkpoint or a reader holds it up. Whether it completed.
    pub async fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        // Bounded: at most ~10 × (200 ms of waiting for readers + 20 ms); the storage thread
        // is held for one attempt at a time.
        for _ in 0..10 {
            if self.checkpoint_with("TRUNCATE").await? {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(false)
    }

    /// `PRAGMA wal_checkpoint(mode)` on the maintenance connection (one checkpoint at a time);
    /// whether it was not blocked.
    async fn checkpoint_with(&self, mode: &'static str) -> Result<bool, StoreError> {
        let shared = self.shared.clone();
        self.shared
            .pool
            .run(move || -> Result<bool, StoreError> {
                let mut slot = shared.maintenance.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    let conn = Connection::open(&shared.path)?;
                    conn.busy_timeout(BUSY_TIMEOUT)?;
                    *slot = Some(conn);
                }
                match slot.as_ref() {
                    Some(conn) => {
                        // A blocking mode waits for readers briefly, not the full busy timeout.
                        let blocking = mode != "PASSIVE";
                        if blocking {
                            conn.busy_timeout(Duration::from_millis(200))?;
                        }
                        let busy =
                            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                                r.get::<_, i64>(0)
                            });
                        if blocking {
                            conn.busy_timeout(BUSY_TIMEOUT)?;
                        }
                        Ok(busy? == 0)
                    }
                    None => Ok(false),
                }
            })
            .await?
    }

    /// Frees what a quiet tenant holds but does not need: its idle read connections and the
    /// writer's page cache (sqlite3_db_release_memory). Run with the writer, between commits.
    pub fn trim(&self, writer: &mut Writer) {
        self.shared
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        writer.release_memory();
    }

    /// Closes the database: the readers, the maintenance connection, and the writer after a
    /// last checkpoint that empties the WAL (best effort).
    pub async fn close(&self, writer: Writer) {
        let shared = self.shared.clone();
        let _ = self
            .shared
            .pool
            .run(move || {
                shared
                    .readers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                *shared.maintenance.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let _ = writer
                    .conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                drop(writer);
            })
            .await;
    }
}

impl Shared {
    /// Runs `f` with a read-only connection (an idle one, or a new one), then keeps it for the
    /// next read if few are idle.
    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = blocking::open_reader(&self.path, BUSY_TIMEOUT)?;
                conn.execute_batch(&format!("PRAGMA cache_size = -{CACHE_KIB}"))?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

impl Writer {
    /// Gives back the page cache (best effort; the pages are read again when needed).
    pub fn release_memory(&mut self) {
        let _ = self.conn.release_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        CommitRules, Outcome, RetentionLimits, SnapshotRefusal, StoredSnapshot, WriteReq,
    };
    use wharf_protocol::EncryptedEntry;

    fn req(pk: &str, iv: &[u8], ids: &[u8]) -> WriteReq {
        WriteReq {
            batch: false,
            public_key: pk.into(),
            iv: Bytes::copy_from_slice(iv),
            entries: ids
                .iter()
                .map(|i| EncryptedEntry {
                    entry_id: Bytes::from(vec![*i; 16]),
                    encrypted_entry: Bytes::from(vec![*i; 8]),
                })
                .collect(),
        }
    }

    fn written(o: &Outcome) -> (&[u64], bool) {
        match o {
            Outcome::Written {
                sequences,
                iv_reused,
                ..
            } => (sequences, *iv_reused),
            Outcome::IvRefused | Outcome::OverQuota(_) => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn group_commit_assigns_dense_sequences_and_dedups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = StorePool::new(2);
        let path = dir.path().join("t.sqlite");
        let (store, writer) = Store::open(&pool, &path, Durability::Full, PathBuf::new())
            .await
            .expect("open");
        let writes = vec![
            req("a", &[1; 8], &[1, 2, 1]),
            req("b", &[2; 8], &[1]),
            req("a", &[3; 8], &[2, 3]),
        ];
        let (writer, outcomes) = store
            .with_writer(writer, move |w| w.commit(&writes, &CommitRules::default()))
            .await
            .expect("job");
        let outcomes = outcomes.expect("commit");
        assert_eq!(written(&outcomes[0]).0, &[0, 1, 0]);
        assert_eq!(written(&outcomes[1]).0, &[0]);
        assert_eq!(written(&outcomes[2]).0, &[1, 2]);
        let got = store.read("a", 0, u64::MAX, 10).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let remote_id = store.remote_id();
        store.close(writer).await;

        // Reopened: sequences continue, the remoteId is the same.
        let (store, writer) = Store::open(&pool, &path, Durability::Full, PathBuf::new())
            .await
            .expect("reopen");
        assert_eq!(store.remote_id(), remote_id);
        let writes = vec![req("a", &[4; 8], &[3, 4])];
        let (writer, outcomes) = store
            .with_writer(writer, move |w| w.commit(&writes, &CommitRules::default()))
            .await
            .expect("job");
        assert_eq!(written(&outcomes.expect("commit")[0]).0, &[2, 3]);
        store.close(writer).await;
    }

    #[tokio::test]
    async fn a_stored_gcm_iv_is_flagged_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = StorePool::new(1);
        let (store, writer) = Store::open(
            &pool,
            &dir.path().join("t.sqlite"),
            Durability::Normal,
            PathBuf::new(),
        )
        .await
        .expect("open");
        let writes = vec![req("a", &[7; 12], &[1]), req("a", &[7; 12], &[2])];
        let (writer, outcomes) = store
            .with_writer(writer, move |w| w.commit(&writes, &CommitRules::default()))
            .await
            .expect("job");
        let outcomes = outcomes.expect("commit");
        assert!(!written(&outcomes[0]).1, "first use");
        assert!(written(&outcomes[1]).1, "seen within the same group commit");
        let writes = vec![req("a", &[7; 12], &[3]), req("a", &[8; 12], &[4])];
        let (writer, outcomes) = store
            .with_writer(writer, move |w| {
                w.commit(
                    &writes,
                    &CommitRules {
                        strict_iv: true,
                        ..Default::default()
                    },
                )
            })
            .await
            .expect("job");
        let outcomes = outcomes.expect("commit");
        assert_eq!(outcomes[0], Outcome::IvRefused);
        assert_eq!(
            written(&outcomes[1]).0,
            &[2],
            "the refused write took no sequence"
        );
        store.close(writer).await;
    }

    #[tokio::test]
    async fn retention_deletes_prefixes_and_sequences_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = StorePool::new(1);
        let path = dir.path().join("t.sqlite");
        let (store, writer) = Store::open(&pool, &path, Durability::Normal, PathBuf::new())
            .await
            .expect("open");
        let writes = vec![req("a", &[1; 8], &(1..=10).collect::<Vec<u8>>())];
        let (writer, _) = store
            .with_writer(writer, move |w| w.commit(&writes, &CommitRules::default()))
            .await
            .expect("job");
        let snap = |sequence: u64| StoredSnapshot {
            sequence,
            iv: Bytes::from_static(&[0; 24]),
            data: Bytes::from_static(b"sealed"),
        };
        let (writer, refused) = store
            .with_writer(writer, move |w| {
                w.write_snapshot("a", &snap(10), 2, &CommitRules::default())
            })
            .await
            .expect("job");
        assert!(matches!(
            refused.expect("store"),
            Err(SnapshotRefusal::NotReached { next: 10, .. })
        ));
        let (writer, stored) = store
            .with_writer(writer, move |w| {
                w.write_snapshot("a", &snap(4), 2, &CommitRules::default())
            })
            .await
            .expect("job");
        stored.expect("store").expect("accepted");
        let policy = RetentionLimits {
            after_snapshot: true,
            ..Default::default()
        };
        let (writer, report) = store
            .with_writer(writer, move |w| w.retain(&policy, 0, 1000))
            .await
            .expect("job");
        let report = report.expect("retain");
        assert_eq!(report.entries_deleted, 5);
        assert_eq!(report.truncated, vec![("a".to_owned(), 5)]);
        let check = Connection::open(&path).expect("open");
        let mode: i64 = check
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .expect("pragma");
        let free: i64 = check
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(
            (mode, free),
            (2, 0),
            "incremental auto-vacuum gave the pages back"
        );
        drop(check);
        let (first, newest) = store.history("a").await.expect("history");
        assert_eq!((first, newest), (5, Some(4)));
        let got = store.read("a", 0, u64::MAX, 100).await.expect("read");
        assert_eq!(got.first().map(|e| e.sequence), Some(5));
        // One entry kept, in bounded steps; the log continues where it was after reopening.
        let policy = RetentionLimits {
            max_entries: Some(1),
            ..Default::default()
        };
        let (writer, report) = store
            .with_writer(writer, move |w| w.retain(&policy, 0, 2))
            .await
            .expect("job");
        let report = report.expect("retain");
        assert!(report.more, "a step stops at its budget");
        let (writer, _) = store
            .with_writer(writer, move |w| w.retain(&policy, 0, 1000))
            .await
            .expect("job");
        store.close(writer).await;
        let (store, writer) = Store::open(&pool, &path, Durability::Normal, PathBuf::new())
            .await
            .expect("reopen");
        let writes = vec![req("a", &[2; 8], &[20])];
        let rules = CommitRules {
            max_bytes: Some(1),
            ..Default::default()
        };
        let (writer, outcomes) = store
            .with_writer(writer, move |w| w.commit(&writes, &rules))
            .await
            .expect("job");
        assert!(matches!(
            outcomes.expect("commit")[0],
            Outcome::OverQuota(_)
        ));
        let writes = vec![req("a", &[2; 8], &[20])];
        let (writer, outcomes) = store
            .with_writer(writer, move |w| w.commit(&writes, &CommitRules::default()))
            .await
            .expect("job");
        assert_eq!(written(&outcomes.expect("commit")[0]).0, &[10]);
        store.close(writer).await;
    }
}
