//! One tenant's SQLite database: every log of the tenant, its entries and the relay's
//! `remoteId`. Only the tenant's actor calls the write methods; sessions read concurrently
//! through the reader pool (WAL lets readers run beside the writer).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;
use wharf_protocol::RemoteEntry;
use wharf_sqlite::{Db, DbError, Options, Synchronous};

use crate::config::Durability;

/// The schema, one step per version (`PRAGMA user_version`); append, never edit.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, public_key TEXT NOT NULL UNIQUE)",
        "CREATE TABLE entries (log_id INTEGER NOT NULL, seq INTEGER NOT NULL, \
     entry_id BLOB NOT NULL, iv BLOB NOT NULL, ciphertext BLOB NOT NULL)",
        "CREATE UNIQUE INDEX entries_by_seq ON entries (log_id, seq)",
        "CREATE UNIQUE INDEX entries_by_id ON entries (log_id, entry_id)",
    ],
    &[
        // The iv guardrail (crate::session): "was this 12-byte AES-GCM iv used in this log?"
        "CREATE INDEX entries_by_gcm_iv ON entries (log_id, iv) WHERE length(iv) = 12",
    ],
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] DbError),
    #[error("corrupt database: {0}")]
    Corrupt(String),
}

/// A tenant database. Cheap to clone (the pools are shared).
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    remote_id: Uuid,
}

/// A row about to be inserted.
#[derive(Debug)]
pub struct NewRow<'a> {
    pub log_id: i64,
    pub sequence: u64,
    pub entry_id: &'a [u8],
    pub iv: &'a [u8],
    pub ciphertext: &'a [u8],
}

impl Store {
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let options = Options {
            synchronous: match durability {
                Durability::Full => Synchronous::Full,
                Durability::Normal => Synchronous::Normal,
            },
            busy_timeout: Duration::from_secs(10),
            readers: 4,
            idle_timeout: Some(Duration::from_secs(30)),
        };
        let db = Db::open(path, &options, MIGRATIONS).await?;
        // Made once, with the database; `OR IGNORE` keeps the first one for good.
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('remote_id', ?)")
            .bind(Uuid::new_v4().as_bytes().as_slice())
            .execute(&db.writer)
            .await?;
        let raw: Vec<u8> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'remote_id'")
            .fetch_one(&db.writer)
            .await?;
        let remote_id = Uuid::from_slice(&raw)
            .map_err(|_| StoreError::Corrupt("remote_id is not 16 bytes".into()))?;
        Ok(Self { db, remote_id })
    }

    /// The id the relay announces in `Hello`: created with the database, stable for its life.
    pub fn remote_id(&self) -> Uuid {
        self.remote_id
    }

    pub fn writer(&self) -> &SqlitePool {
        &self.db.writer
    }

    /// The id of a log and the sequence its next entry gets.
    pub async fn log_state(&self, public_key: &str) -> Result<Option<(i64, u64)>, StoreError> {
        let mut conn = self.db.writer.acquire().await?;
        let Some(row) = sqlx::query("SELECT id FROM logs WHERE public_key = ?")
            .bind(public_key)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.try_get(0)?;
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM entries WHERE log_id = ?")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        let next = match max {
            Some(m) => {
                u64::try_from(m)
                    .map_err(|_| StoreError::Corrupt(format!("negative sequence {m}")))?
                    + 1
            }
            None => 0,
        };
        Ok(Some((id, next)))
    }

    /// Creates a log row inside the caller's transaction.
    pub async fn insert_log(
        conn: &mut SqliteConnection,
        public_key: &str,
    ) -> Result<i64, StoreError> {
        let id: i64 = sqlx::query_scalar("INSERT INTO logs (public_key) VALUES (?) RETURNING id")
            .bind(public_key)
            .fetch_one(conn)
            .await?;
        Ok(id)
    }

    /// Which of `entry_ids` a log already holds, and at what sequence.
    pub async fn existing(
        conn: &mut SqliteConnection,
        log_id: i64,
        entry_ids: &[&[u8]],
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut found = Vec::new();
        for ids in entry_ids.chunks(500) {
            let mut q: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("SELECT entry_id, seq FROM entries WHERE log_id = ");
            q.push_bind(log_id).push(" AND entry_id IN (");
            let mut sep = q.separated(", ");
            for id in ids {
                sep.push_bind(*id);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *conn).await? {
                let seq: i64 = row.try_get(1)?;
                found.push((row.try_get(0)?, seq as u64));
            }
        }
        Ok(found)
    }

    pub async fn insert_rows(
        conn: &mut SqliteConnection,
        rows: &[NewRow<'_>],
    ) -> Result<(), StoreError> {
        // 5 parameters a row; SQLite allows 32,766 per statement.
        for rows in rows.chunks(1_000) {
            let mut q: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("INSERT INTO entries (log_id, seq, entry_id, iv, ciphertext) ");
            q.push_values(rows, |mut b, r| {
                b.push_bind(r.log_id)
                    .push_bind(r.sequence as i64)
                    .push_bind(r.entry_id)
                    .push_bind(r.iv)
                    .push_bind(r.ciphertext);
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Whether a 12-byte (AES-GCM) `iv` is already stored in the log (through the reader pool:
    /// never waits for the writer). Any other length answers `false`.
    pub async fn gcm_iv_used(&self, public_key: &str, iv: &[u8]) -> Result<bool, StoreError> {
        if iv.len() != 12 {
            return Ok(false);
        }
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM entries \
             WHERE log_id = (SELECT id FROM logs WHERE public_key = ?) \
             AND length(iv) = 12 AND iv = ? LIMIT 1",
        )
        .bind(public_key)
        .bind(iv)
        .fetch_optional(&self.db.readers)
        .await?;
        Ok(found.is_some())
    }

    /// Entries of a log with `from <= sequence < to`, in order, at most `limit` of them.
    pub async fn read(
        &self,
        public_key: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RemoteEntry>, StoreError> {
        let to = i64::try_from(to).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT seq, entry_id, iv, ciphertext FROM entries \
             WHERE log_id = (SELECT id FROM logs WHERE public_key = ?) AND seq >= ? AND seq < ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(public_key)
        .bind(from as i64)
        .bind(to)
        .bind(limit as i64)
        .fetch_all(&self.db.readers)
        .await?;
        rows.into_iter()
            .map(|row| {
                let seq: i64 = row.try_get(0)?;
                Ok(RemoteEntry {
                    sequence: seq as u64,
                    entry_id: Bytes::from(row.try_get::<Vec<u8>, _>(1)?),
                    iv: Bytes::from(row.try_get::<Vec<u8>, _>(2)?),
                    encrypted_entry: Bytes::from(row.try_get::<Vec<u8>, _>(3)?),
                })
            })
            .collect()
    }

    /// Moves committed pages from the WAL into the database file without blocking writers.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(self.db.checkpoint().await?)
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
