//! [`StoreError`]: what went wrong with the storage, by kind, whichever backend said it. The
//! libraries' own errors stop here: each is turned into the kind a caller can act on (a
//! client told to retry, an operator told the disk is full), with the library's words kept
//! as the detail.

use wharf_sqlite::DbError;

use crate::sqlite::pool::PoolError;

/// What went wrong with the storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The tenant, log or row asked for is not there.
    #[error("not found: {0}")]
    NotFound(String),
    /// The change conflicts with what is stored (a name or id already taken).
    #[error("{0}")]
    Conflict(String),
    /// The disk (or the database's space) is full: nothing was stored.
    #[error("storage full: {0}")]
    Full(String),
    /// The storage cannot be reached now (no connection, the storage threads stopped): worth
    /// retrying later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A lock or a statement took longer than it may.
    #[error("storage timed out: {0}")]
    TimedOut(String),
    /// Another writer got in the way (a deadlock broken, a serialization failure): the same
    /// request may succeed if made again.
    #[error("storage contended: {0}")]
    Contended(String),
    /// What is stored is not what it should be.
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// Stored by a newer version of Wharf than this one.
    #[error("{0}")]
    Incompatible(String),
    /// The store is configured in a way that cannot work (a malformed URL, say).
    #[error("{0}")]
    Config(String),
    /// A storage job never came back (it panicked): the writer went with it.
    #[error("the tenant's writer was lost")]
    Lost,
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the same request may succeed later without anything changing on the caller's
    /// side (a client's write retried, an administrator asked to try again).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::TimedOut(_) | StoreError::Contended(_)
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let detail = e.to_string();
        match &e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound(detail),
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                C::DiskFull => StoreError::Full(detail),
                C::DatabaseBusy | C::DatabaseLocked => StoreError::TimedOut(detail),
                C::DatabaseCorrupt | C::NotADatabase => StoreError::Corrupt(detail),
                C::CannotOpen | C::ReadOnly | C::PermissionDenied | C::SystemIoFailure => {
                    StoreError::Unavailable(detail)
                }
                C::ConstraintViolation => StoreError::Conflict(detail),
                _ => StoreError::Failed(detail),
            },
            _ => StoreError::Failed(detail),
        }
    }
}

/// SQLSTATE classes and codes (PostgreSQL's appendix A) that say what kind of failure it was.
fn postgres_kind(code: &str, detail: String) -> StoreError {
    match code {
        "53100" => StoreError::Full(detail),
        "57014" | "55P03" => StoreError::TimedOut(detail),
        "40P01" | "40001" => StoreError::Contended(detail),
        "23505" | "23P01" => StoreError::Conflict(detail),
        "XX001" | "XX002" => StoreError::Corrupt(detail),
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
            StoreError::Unavailable(detail)
        }
        _ => StoreError::Failed(detail),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let detail = e.to_string();
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound(detail),
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(detail),
            sqlx::Error::Configuration(_) => StoreError::Config(detail),
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => postgres_kind(&code, detail),
                None => StoreError::Failed(detail),
            },
            _ => StoreError::Failed(detail),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
            sqlx::migrate::MigrateError::VersionMissing(_)
            | sqlx::migrate::MigrateError::VersionTooNew(..) => StoreError::Incompatible(format!(
                "cannot bring the database schema up to date: {e}"
            )),
            other => StoreError::Failed(format!(
                "cannot bring the database schema up to date: {other}"
            )),
        }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlx(inner) => inner.into(),
            DbError::Rusqlite(inner) => inner.into(),
            DbError::NewerSchema { .. } => StoreError::Incompatible(e.to_string()),
            DbError::CreateDir { .. } => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Stopped | PoolError::Spawn(_) => StoreError::Unavailable(e.to_string()),
            PoolError::Panicked(_) => StoreError::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_failures_become_kinds() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let e = StoreError::from(full);
        assert!(matches!(e, StoreError::Full(_)), "{e:?}");
        assert!(e.to_string().contains("full"), "{e}");
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(StoreError::from(busy).is_transient());
        assert!(matches!(
            StoreError::from(rusqlite::Error::QueryReturnedNoRows),
            StoreError::NotFound(_)
        ));
    }

    #[test]
    fn postgres_codes_become_kinds() {
        assert!(matches!(
            postgres_kind("40P01", "deadlock".into()),
            StoreError::Contended(_)
        ));
        assert!(matches!(
            postgres_kind("53100", "disk full".into()),
            StoreError::Full(_)
        ));
        assert!(matches!(
            postgres_kind("57P01", "terminating".into()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            postgres_kind("55P03", "lock".into()),
            StoreError::TimedOut(_)
        ));
        assert!(matches!(
            postgres_kind("42P01", "no table".into()),
            StoreError::Failed(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
    }
}
