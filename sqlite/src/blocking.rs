//! [`crate::Db`]'s setup for rusqlite connections: the writer with its pragmas and migrations,
//! and read-only connections beside it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{DbError, Synchronous};

/// Opens (creating it and its directory, durably, if needed) the database at `path` for
/// writing: WAL,
/// `synchronous` as given, automatic checkpoints off (the owner checkpoints off the write
/// path), and the schema brought up to date with `migrations` (see [`migrate`]).
pub fn open_writer(
    path: &Path,
    synchronous: Synchronous,
    busy_timeout: Duration,
    migrations: &[&[&str]],
) -> Result<Connection, DbError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        wharf_durable::create_dir_all(dir).map_err(|source| DbError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // A new database gives freed pages back to the file system on `PRAGMA incremental_vacuum`
    // (it can only be chosen before the first table exists).
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
    }
    // journal_mode answers with the mode in force.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 0;",
        match synchronous {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    ))?;
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

/// A read-only connection to a database [`open_writer`] made.
pub fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

/// [`crate::migrate`] for a rusqlite connection: step `i` takes `user_version` from `i` to
/// `i + 1` in one transaction; a database from a newer program is refused.
pub fn migrate(conn: &mut Connection, steps: &[&[&str]]) -> Result<i64, DbError> {
    let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(DbError::NewerSchema { found, known });
    }
    for (version, step) in steps.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction()?;
        for stmt in *step {
            tx.execute_batch(stmt)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
        tx.commit()?;
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[&str] = &["CREATE TABLE a (x INTEGER)"];
    const V2: &[&str] = &["CREATE TABLE b (y INTEGER)", "INSERT INTO b VALUES (7)"];

    #[test]
    fn migrates_step_by_step_and_refuses_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/db.sqlite");
        let t = Duration::from_secs(1);
        drop(open_writer(&path, Synchronous::Full, t, &[V1]).expect("v1"));
        let w = open_writer(&path, Synchronous::Full, t, &[V1, V2]).expect("v2");
        let mode: String = w
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let r = open_reader(&path, t).expect("reader");
        let y: i64 = r
            .query_row("SELECT y FROM b", [], |r| r.get(0))
            .expect("read");
        assert_eq!(y, 7);
        assert!(
            r.execute("INSERT INTO b VALUES (8)", []).is_err(),
            "read-only"
        );
        drop((w, r));
        match open_writer(&path, Synchronous::Full, t, &[V1]) {
            Err(DbError::NewerSchema { found: 2, known: 1 }) => {}
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
}
