//! How Wharf opens a SQLite database, in one place for the relay's tenant databases and the
//! client's journal.
//!
//! - [`Db::open`]: WAL mode, one writer connection with automatic checkpoints turned off, a
//!   maintenance connection that checkpoints instead ([`Db::checkpoint`]), off the write path
//!   (an automatic checkpoint inside a commit is what makes the commit-latency tail), and a
//!   read-only pool for concurrent readers.
//! - [`migrate`]: schema steps numbered by `PRAGMA user_version`, each applied in its own
//!   transaction; a database from a newer program is refused.
//! - [`blocking`] (feature `blocking`): the same for rusqlite connections, for code that runs
//!   its SQLite work as synchronous calls on threads of its own.
//! - [`durable`] (`wharf-durable`): durable names, which the directories of databases are
//!   made with.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use sqlx::sqlite::SqliteSynchronous as Synchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::SqliteConnection;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("written by a newer version (schema {found}; this one knows {known})")]
    NewerSchema { found: i64, known: i64 },
    #[cfg(feature = "blocking")]
    #[error("database error: {0}")]
    Rusqlite(#[from] rusqlite::Error),
}

#[cfg(feature = "blocking")]
pub mod blocking;
pub use wharf_durable as durable;

/// How to open a database.
#[derive(Clone, Debug)]
pub struct Options {
    /// `FULL`: a commit survives power loss; `NORMAL`: it survives a crash of the process.
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock held by another.
    pub busy_timeout: Duration,
    /// Connections in the read-only pool.
    pub readers: u32,
    /// Reader and maintenance connections idle this long are closed (`None`: kept).
    pub idle_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(10),
            readers: 4,
            idle_timeout: None,
        }
    }
}

/// The connections to one database file. Cheap to clone (the pools are shared).
#[derive(Clone, Debug)]
pub struct Db {
    /// Exactly one connection: whoever owns the database serialises its writes through it.
    pub writer: SqlitePool,
    /// Read-only connections (WAL readers run beside the writer).
    pub readers: SqlitePool,
    maintenance: SqlitePool,
}

impl Db {
    /// Opens (creating it and its directory if needed) the database at `path` and brings its
    /// schema up to date with `migrations` (see [`migrate`]). The directory's name is durable
    /// before the database is used ([`durable::create_dir_all`]).
    pub async fn open(
        path: &Path,
        options: &Options,
        migrations: &[&[&str]],
    ) -> Result<Self, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let owned = dir.to_path_buf();
            tokio::task::spawn_blocking(move || durable::create_dir_all(&owned))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|made| made)
                .map_err(|source| DbError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(options.synchronous)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await?;
        {
            let mut conn = writer.acquire().await?;
            migrate(&mut conn, migrations).await?;
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .idle_timeout(options.idle_timeout)
            .connect_with(base.clone().read_only(true))
            .await?;
        let maintenance = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(options.idle_timeout)
            .connect_with(base)
            .await?;
        Ok(Self {
            writer,
            readers,
            maintenance,
        })
    }

    /// Moves committed pages from the WAL into the database file without blocking the writer.
    pub async fn checkpoint(&self) -> Result<(), DbError> {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.maintenance)
            .await?;
        Ok(())
    }

    /// A last checkpoint that also empties the WAL (best effort), then closes every connection.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.maintenance)
            .await;
        self.readers.close().await;
        self.maintenance.close().await;
        self.writer.close().await;
    }
}

/// Applies the schema steps a database lacks. Step `i` (0-based) takes the database from
/// `user_version` `i` to `i + 1`, all its statements in one transaction with the version bump.
/// Returns the version the database is at now.
pub async fn migrate(conn: &mut SqliteConnection, steps: &[&[&str]]) -> Result<i64, DbError> {
    let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    let found: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if found > known {
        return Err(DbError::NewerSchema { found, known });
    }
    for (version, step) in steps.iter().enumerate().skip(found.max(0) as usize) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for stmt in *step {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        sqlx::query(&format!("PRAGMA user_version = {}", version + 1))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[&str] = &["CREATE TABLE a (x INTEGER)"];
    const V2: &[&str] = &["CREATE TABLE b (y INTEGER)", "INSERT INTO b VALUES (7)"];

    #[tokio::test]
    async fn migrates_step_by_step_and_refuses_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/dir/db.sqlite");
        let db = Db::open(&path, &Options::default(), &[V1])
            .await
            .expect("v1");
        db.close().await;
        let db = Db::open(&path, &Options::default(), &[V1, V2])
            .await
            .expect("v2");
        let y: i64 = sqlx::query_scalar("SELECT y FROM b")
            .fetch_one(&db.readers)
            .await
            .expect("read");
        assert_eq!(y, 7);
        db.checkpoint().await.expect("checkpoint");
        db.close().await;
        match Db::open(&path, &Options::default(), &[V1]).await {
            Err(DbError::NewerSchema { found: 2, known: 1 }) => {}
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
}
