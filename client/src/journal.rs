//! The durable local journal: one SQLite file per client (sqlx, WAL).
//!
//! Tables:
//! - `entries`: every decrypted entry this client knows, its own and received ones, in local
//!   order (`local_seq`). Unique per (log, entryId).
//! - `remote_entries`: where an entry sits on a relay: (remoteId, log, sequence, entryId), from
//!   Acks and from Changes. The **outbox** of a relay is every entry of a writable log with no
//!   row here for that relay's remoteId, so a relay with a new remoteId (wiped or replaced) is
//!   owed everything, and refilled.
//! - `cursors`: per (remoteId, log), the next relay sequence to apply; every sequence below it
//!   is applied.
//! - `applied`: the delivery order. An entry is applied once, when every sequence before it on
//!   its log is known; `applied.idx` is the order every stream reads.
//! - `undecryptable`: entries that did not open with the log's key, kept with their ciphertext.
//!
//! One writer task owns the write connection and group-commits what is queued: appends are
//! committed with `synchronous=FULL` (an append is durable before it returns); acks and
//! received entries with `NORMAL`, since the relay holds them and a power loss that drops them
//! only means fetching them again (WAL commits in order, so a later FULL commit makes the
//! earlier NORMAL ones durable too).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqlitePool, SqliteQueryResult, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use wharf_protocol::{Entry, SnapshotContent, SnapshotEntry};
use wharf_sqlite::{Db, DbError, Options, Synchronous};

use crate::error::Error;

/// Rows per multi-VALUES statement (SQLite allows 32,766 bound parameters).
const ROWS_PER_STATEMENT: usize = 500;
/// How many queued commands one transaction takes at most.
const MAX_GROUP: usize = 1024;

/// A 16-byte relay identity (`Hello.remoteId`).
pub type RemoteId = Vec<u8>;

/// An entry as the journal stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub local_seq: i64,
    pub log: String,
    pub entry: Entry,
    /// Appended by this journal (rather than received).
    pub own: bool,
}

/// An applied entry, in delivery order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEntry {
    /// Position in this journal's delivery order (starts at 1).
    pub index: i64,
    pub log: String,
    /// The entry's sequence on the relay it was applied from.
    pub sequence: u64,
    pub entry: Entry,
    pub own: bool,
}

/// An entry received from a relay, opened or not.
#[derive(Debug)]
pub struct Received {
    pub sequence: u64,
    pub entry_id: Vec<u8>,
    pub content: Result<Entry, Undecryptable>,
}

#[derive(Debug)]
pub struct Undecryptable {
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub error: String,
}

/// Counts for `wharf status` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    pub log: String,
    pub entries: u64,
    pub own: u64,
    pub applied: u64,
    pub undecryptable: u64,
}

enum Command {
    Append {
        log: String,
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Acked {
        remote: RemoteId,
        log: String,
        placed: Vec<(Vec<u8>, u64)>,
        /// The acknowledged entries and their `own` flags, when the caller still has them: lets
        /// the writer hand newly applied entries to streams without reading them back.
        entries: Vec<(Entry, bool)>,
    },
    Received {
        remote: RemoteId,
        log: String,
        entries: Vec<Received>,
    },
    /// A snapshot the relay `remote` holds for `log`: its entries are applied in sequence
    /// order and the cursor moves past what it covers.
    Snapshot {
        remote: RemoteId,
        log: String,
        content: SnapshotContent,
    },
    /// The relay deleted `log`'s history below `first`: the cursor jumps there, and the gap
    /// is recorded.
    Truncated {
        remote: RemoteId,
        log: String,
        first: u64,
    },
    Barrier(oneshot::Sender<()>),
}

/// History this journal never received because the relay had deleted it (retention) and no
/// snapshot covered it: sequences `from..to` of `log`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Truncation {
    pub log: String,
    pub from: u64,
    pub to: u64,
}

/// What the writer has committed, for waiters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest `entries.local_seq` of an entry appended here (received ones do not count).
    pub appended: i64,
    /// Highest `applied.idx` committed.
    pub applied: i64,
}

/// A batch of entries one `append` committed, with their local sequence numbers. A batch too
/// large to hand over comes with no entries (`handed_over == false`): read the journal.
#[derive(Debug)]
pub struct Appended {
    pub log: String,
    pub entries: Vec<StoredEntry>,
    pub handed_over: bool,
}

/// Batches larger than this are not handed over in memory (readers fetch them from the journal):
/// the fast path is for latency, and this bounds what it holds.
const HANDOFF_MAX: usize = 256;

/// The journal. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Journal {
    readers: SqlitePool,
    commands: mpsc::Sender<Command>,
    appended: broadcast::Sender<Arc<Appended>>,
    applied: broadcast::Sender<Arc<Vec<AppliedEntry>>>,
    progress: watch::Receiver<Progress>,
    failed: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Append { .. } => "Append",
            Command::Acked { .. } => "Acked",
            Command::Received { .. } => "Received",
            Command::Snapshot { .. } => "Snapshot",
            Command::Truncated { .. } => "Truncated",
            Command::Barrier(_) => "Barrier",
        })
    }
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub async fn open(path: &Path) -> Result<Journal, Error> {
        let options = Options {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(30),
            readers: 4,
            idle_timeout: None,
        };
        let db = Db::open(path, &options, MIGRATIONS)
            .await
            .map_err(|e| match e {
                DbError::Sqlx(e) => Error::Sqlx(e),
                DbError::NewerSchema { .. } => Error::Corrupt(format!("the journal was {e}")),
                // Creating its directory, or (never here) another backend's error.
                other => Error::Io(other.to_string()),
            })?;
        let mut conn = db.writer.acquire().await?;
        let progress = Progress {
            appended: sqlx::query_scalar(
                "SELECT COALESCE(MAX(local_seq), 0) FROM entries WHERE own = 1",
            )
            .fetch_one(&mut *conn)
            .await?,
            applied: sqlx::query_scalar("SELECT COALESCE(MAX(idx), 0) FROM applied")
                .fetch_one(&mut *conn)
                .await?,
        };
        drop(conn);
        let (tx, rx) = mpsc::channel(256);
        let (progress_tx, progress_rx) = watch::channel(progress);
        let (failed_tx, failed_rx) = watch::channel(None);
        let (appended, _) = broadcast::channel(64);
        let (applied, _) = broadcast::channel(64);
        let readers = db.readers.clone();
        let writer = db.writer.clone();
        tokio::spawn(checkpoints(db, progress_rx.clone()));
        tokio::spawn(run_writer(
            writer,
            rx,
            Handoff {
                progress: progress_tx,
                appended: appended.clone(),
                applied: applied.clone(),
            },
            failed_tx,
        ));
        Ok(Journal {
            readers,
            commands: tx,
            appended,
            applied,
            progress: progress_rx,
            failed: failed_rx,
        })
    }

    /// Appends entries to `log` in one durable transaction.
    pub async fn append(&self, log: &str, entries: Vec<Entry>) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            log: log.to_owned(),
            entries,
            reply,
        })
        .await?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Records where the relay `remote` put entries this client uploaded (`entries`: their
    /// contents and `own` flags, or empty).
    pub async fn acked(
        &self,
        remote: &[u8],
        log: &str,
        placed: Vec<(Vec<u8>, u64)>,
        entries: Vec<(Entry, bool)>,
    ) -> Result<(), Error> {
        self.send(Command::Acked {
            remote: remote.to_vec(),
            log: log.to_owned(),
            placed,
            entries,
        })
        .await
    }

    /// Entries appended from now on, as they commit (small batches only: a batch that never
    /// comes, or a lagging receiver, means "read the journal").
    pub fn subscribe_appended(&self) -> broadcast::Receiver<Arc<Appended>> {
        self.appended.subscribe()
    }

    /// Entries applied from now on, in delivery order (same caveat).
    pub fn subscribe_applied(&self) -> broadcast::Receiver<Arc<Vec<AppliedEntry>>> {
        self.applied.subscribe()
    }

    /// Stores entries received from `remote` and applies what has become contiguous.
    pub async fn received(
        &self,
        remote: &[u8],
        log: &str,
        entries: Vec<Received>,
    ) -> Result<(), Error> {
        self.send(Command::Received {
            remote: remote.to_vec(),
            log: log.to_owned(),
            entries,
        })
        .await
    }

    /// Applies a snapshot of `log` from `remote` (see [`Command::Snapshot`]).
    pub async fn snapshot(
        &self,
        remote: &[u8],
        log: &str,
        content: SnapshotContent,
    ) -> Result<(), Error> {
        self.send(Command::Snapshot {
            remote: remote.to_vec(),
            log: log.to_owned(),
            content,
        })
        .await
    }

    /// Records that `remote` deleted `log`'s history below `first`.
    pub async fn truncated(&self, remote: &[u8], log: &str, first: u64) -> Result<(), Error> {
        self.send(Command::Truncated {
            remote: remote.to_vec(),
            log: log.to_owned(),
            first,
        })
        .await
    }

    /// The state of `log` as applied from `remote`, compacted by (event, primaryKey): what a
    /// snapshot publishes. `None` until something was applied.
    pub async fn snapshot_content(
        &self,
        remote: &[u8],
        log: &str,
    ) -> Result<Option<SnapshotContent>, Error> {
        let cursor = self.cursor(remote, log).await?;
        let Some(last) = cursor.checked_sub(1) else {
            return Ok(None);
        };
        // SQLite takes bare columns from the row that holds the MAX().
        let rows = sqlx::query(
            "SELECT r.sequence, MAX(e.entry_id) AS entry_id, e.event, e.primary_key, e.payload
             FROM remote_entries r JOIN entries e ON e.log = r.log AND e.entry_id = r.entry_id
             WHERE r.remote_id = ?1 AND r.log = ?2 AND r.sequence <= ?3
             GROUP BY e.event, e.primary_key",
        )
        .bind(remote)
        .bind(log)
        .bind(last as i64)
        .fetch_all(&self.readers)
        .await?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(SnapshotEntry {
                    sequence: r.try_get::<i64, _>("sequence")?.max(0) as u64,
                    entry: entry_of(r)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Some(SnapshotContent::compact(last, entries)))
    }

    /// Every gap recorded by [`Journal::truncated`], oldest first.
    pub async fn truncations(&self) -> Result<Vec<Truncation>, Error> {
        let rows = sqlx::query("SELECT log, from_seq, to_seq FROM truncations ORDER BY rowid")
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Truncation {
                    log: r.try_get("log")?,
                    from: r.try_get::<i64, _>("from_seq")?.max(0) as u64,
                    to: r.try_get::<i64, _>("to_seq")?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Waits until everything queued before it is committed.
    pub async fn barrier(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Barrier(tx)).await?;
        rx.await.map_err(|_| self.closed())
    }

    async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.commands.send(cmd).await.map_err(|_| self.closed())
    }

    fn closed(&self) -> Error {
        match self.failed.borrow().clone() {
            Some(why) => Error::JournalFailed(why),
            None => Error::Closed,
        }
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The next relay sequence to request for `log` from `remote`.
    pub async fn cursor(&self, remote: &[u8], log: &str) -> Result<u64, Error> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT next_sequence FROM cursors WHERE remote_id = ? AND log = ?")
                .bind(remote)
                .bind(log)
                .fetch_optional(&self.readers)
                .await?;
        Ok(next.unwrap_or(0).max(0) as u64)
    }

    /// Up to `limit` entries of `log` after `after_local_seq` that `remote` has not placed yet,
    /// in local order.
    pub async fn outbox(
        &self,
        remote: &[u8],
        log: &str,
        after_local_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, Error> {
        let rows = sqlx::query(
            "SELECT local_seq, log, entry_id, event, primary_key, payload, own FROM entries e
             WHERE e.log = ?1 AND e.local_seq > ?2
               AND NOT EXISTS (SELECT 1 FROM remote_entries r
                               WHERE r.remote_id = ?3 AND r.log = e.log AND r.entry_id = e.entry_id)
             ORDER BY e.local_seq LIMIT ?4",
        )
        .bind(log)
        .bind(after_local_seq)
        .bind(remote)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(stored_entry).collect()
    }

    /// How many entries of `log` `remote` has not placed yet.
    pub async fn outbox_len(&self, remote: &[u8], log: &str) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM entries e WHERE e.log = ?1
               AND NOT EXISTS (SELECT 1 FROM remote_entries r
                               WHERE r.remote_id = ?2 AND r.log = e.log AND r.entry_id = e.entry_id)",
        )
        .bind(log)
        .bind(remote)
        .fetch_one(&self.readers)
        .await?;
        Ok(n as u64)
    }

    /// Applied entries after `after_index`, in delivery order.
    pub async fn applied_after(
        &self,
        after_index: i64,
        limit: usize,
    ) -> Result<Vec<AppliedEntry>, Error> {
        let rows = sqlx::query(
            "SELECT a.idx, a.log, a.sequence, e.entry_id, e.event, e.primary_key, e.payload, e.own
             FROM applied a JOIN entries e ON e.log = a.log AND e.entry_id = a.entry_id
             WHERE a.idx > ? ORDER BY a.idx LIMIT ?",
        )
        .bind(after_index)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AppliedEntry {
                    index: r.try_get("idx")?,
                    log: r.try_get("log")?,
                    sequence: r.try_get::<i64, _>("sequence")?.max(0) as u64,
                    entry: entry_of(r)?,
                    own: r.try_get("own")?,
                })
            })
            .collect()
    }

    /// The last-writer-wins view: for every (event, primaryKey), the entry with the greatest
    /// entryId (UUIDv7: the writer's clock, then random bits) across `logs` (all logs if empty).
    /// It depends only on the set of entries, never on the order they arrived in, so every
    /// replica that holds the same entries holds the same view.
    pub async fn latest(&self, logs: &[String]) -> Result<Vec<StoredEntry>, Error> {
        // SQLite takes bare columns from the row that holds the MAX().
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT local_seq, log, MAX(entry_id) AS entry_id, event, primary_key, payload, own
             FROM entries",
        );
        if !logs.is_empty() {
            q.push(" WHERE log IN (");
            let mut sep = q.separated(", ");
            for l in logs {
                sep.push_bind(l);
            }
            q.push(")");
        }
        q.push(" GROUP BY event, primary_key ORDER BY event, primary_key");
        let rows = q.build().fetch_all(&self.readers).await?;
        rows.iter().map(stored_entry).collect()
    }

    /// Every entry of `log` in local order (own and received), `limit` at a time.
    pub async fn entries(
        &self,
        log: &str,
        after_local_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, Error> {
        let rows = sqlx::query(
            "SELECT local_seq, log, entry_id, event, primary_key, payload, own FROM entries
             WHERE log = ? AND local_seq > ? ORDER BY local_seq LIMIT ?",
        )
        .bind(log)
        .bind(after_local_seq)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(stored_entry).collect()
    }

    pub async fn stats(&self, log: &str) -> Result<LogStats, Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM entries WHERE log = ?1) AS entries,
                    (SELECT COUNT(*) FROM entries WHERE log = ?1 AND own = 1) AS own,
                    (SELECT COUNT(*) FROM applied WHERE log = ?1) AS applied,
                    (SELECT COUNT(*) FROM undecryptable WHERE log = ?1) AS undecryptable",
        )
        .bind(log)
        .fetch_one(&self.readers)
        .await?;
        let n = |c: &str| row.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
        Ok(LogStats {
            log: log.to_owned(),
            entries: n("entries")?,
            own: n("own")?,
            applied: n("applied")?,
            undecryptable: n("undecryptable")?,
        })
    }

    /// Every (remoteId, log, next sequence) this journal has synced with.
    pub async fn remotes(&self) -> Result<Vec<(RemoteId, String, u64)>, Error> {
        let rows = sqlx::query("SELECT remote_id, log, next_sequence FROM cursors ORDER BY log")
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("remote_id")?,
                    r.try_get("log")?,
                    r.try_get::<i64, _>("next_sequence")?.max(0) as u64,
                ))
            })
            .collect()
    }
}

fn entry_of(r: &SqliteRow) -> Result<Entry, Error> {
    let id: Vec<u8> = r.try_get("entry_id")?;
    Ok(Entry {
        id: id
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt(format!("an entry id of {} bytes", id.len())))?,
        event: r.try_get("event")?,
        primary_key: r.try_get("primary_key")?,
        payload: r.try_get("payload")?,
    })
}

fn stored_entry(r: &SqliteRow) -> Result<StoredEntry, Error> {
    Ok(StoredEntry {
        local_seq: r.try_get("local_seq")?,
        log: r.try_get("log")?,
        entry: entry_of(r)?,
        own: r.try_get("own")?,
    })
}

/// The schema, one step per version (`PRAGMA user_version`); append, never edit. Step 1 says
/// `IF NOT EXISTS` because journals made before versions moved to `user_version` already hold
/// its tables (and a `meta` table that is no longer read).
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS entries (
        local_seq INTEGER PRIMARY KEY AUTOINCREMENT,
        log TEXT NOT NULL,
        entry_id BLOB NOT NULL,
        event TEXT NOT NULL,
        primary_key TEXT NOT NULL,
        payload BLOB NOT NULL,
        own INTEGER NOT NULL,
        UNIQUE (log, entry_id))",
        "CREATE INDEX IF NOT EXISTS entries_by_key ON entries (event, primary_key, entry_id)",
        "CREATE TABLE IF NOT EXISTS remote_entries (
        remote_id BLOB NOT NULL,
        log TEXT NOT NULL,
        entry_id BLOB NOT NULL,
        sequence INTEGER NOT NULL,
        PRIMARY KEY (remote_id, log, entry_id)) WITHOUT ROWID",
        "CREATE UNIQUE INDEX IF NOT EXISTS remote_entries_by_sequence
        ON remote_entries (remote_id, log, sequence)",
        "CREATE TABLE IF NOT EXISTS cursors (
        remote_id BLOB NOT NULL,
        log TEXT NOT NULL,
        next_sequence INTEGER NOT NULL,
        PRIMARY KEY (remote_id, log)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS applied (
        idx INTEGER PRIMARY KEY AUTOINCREMENT,
        log TEXT NOT NULL,
        entry_id BLOB NOT NULL,
        remote_id BLOB NOT NULL,
        sequence INTEGER NOT NULL,
        UNIQUE (log, entry_id))",
        "CREATE TABLE IF NOT EXISTS undecryptable (
        remote_id BLOB NOT NULL,
        log TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        entry_id BLOB NOT NULL,
        iv BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (remote_id, log, sequence)) WITHOUT ROWID",
    ],
    &[
        // History a relay had deleted (retention) when this journal asked for it.
        "CREATE TABLE truncations (
        remote_id BLOB NOT NULL,
        log TEXT NOT NULL,
        from_seq INTEGER NOT NULL,
        to_seq INTEGER NOT NULL)",
    ],
    &[
        // The outbox and `entries()` read a log in local order from a position: without this,
        // each page searched every entry of the log and sorted them (a bulk append of N entries
        // uploaded in O(N²)).
        "CREATE INDEX entries_by_log_seq ON entries (log, local_seq)",
    ],
];

/// Copies committed WAL frames into the database after commits, at most four times a second.
/// Ends with the writer (when the progress sender goes away).
async fn checkpoints(db: Db, mut progress: watch::Receiver<Progress>) {
    while progress.changed().await.is_ok() {
        if let Err(e) = db.checkpoint().await {
            tracing::debug!(error = %e, "journal checkpoint failed; the next one retries");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    db.close().await;
}

/// Where the writer announces what it committed.
struct Handoff {
    progress: watch::Sender<Progress>,
    appended: broadcast::Sender<Arc<Appended>>,
    applied: broadcast::Sender<Arc<Vec<AppliedEntry>>>,
}

async fn run_writer(
    pool: SqlitePool,
    mut commands: mpsc::Receiver<Command>,
    out: Handoff,
    failed: watch::Sender<Option<String>>,
) {
    let progress = &out.progress;
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => {
            let _ = failed.send(Some(e.to_string()));
            return;
        }
    };
    let mut full = true; // the connection's current `synchronous`
    let mut cursors = CursorCache::new();
    let mut group = Vec::with_capacity(MAX_GROUP);
    while commands.recv_many(&mut group, MAX_GROUP).await > 0 {
        let needs_full = group.iter().any(|c| matches!(c, Command::Append { .. }));
        let result = async {
            if needs_full != full {
                let mode = if needs_full { "FULL" } else { "NORMAL" };
                sqlx::query(&format!("PRAGMA synchronous = {mode}"))
                    .execute(&mut *conn)
                    .await?;
                full = needs_full;
            }
            // Copies for the in-memory handoff are made only when someone is listening.
            let listeners = Listeners {
                appended: out.appended.receiver_count() > 0,
                applied: out.applied.receiver_count() > 0,
            };
            commit_group(&mut conn, &mut cursors, listeners, &mut group).await
        }
        .await;
        match result {
            Ok(mut outcome) => {
                // In-memory handoffs go out before progress moves, so a reader woken by the
                // progress change finds them.
                for batch in outcome.appended_batches.drain(..) {
                    let _ = out.appended.send(Arc::new(batch));
                }
                if let Some(delivered) = outcome.delivered.take().filter(|d| !d.is_empty()) {
                    let _ = out.applied.send(Arc::new(delivered));
                }
                for cmd in group.drain(..) {
                    match cmd {
                        Command::Append { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                        Command::Barrier(reply) => {
                            let _ = reply.send(());
                        }
                        Command::Acked { .. }
                        | Command::Received { .. }
                        | Command::Snapshot { .. }
                        | Command::Truncated { .. } => {}
                    }
                }
                // Wakes every waiter after every commit (flush re-checks the outbox then).
                progress.send_modify(|p| {
                    p.appended = p.appended.max(outcome.appended);
                    p.applied = p.applied.max(outcome.applied);
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "journal write failed");
                let why = e.to_string();
                for cmd in group.drain(..) {
                    if let Command::Append { reply, .. } = cmd {
                        let _ = reply.send(Err(Error::JournalFailed(why.clone())));
                    }
                }
                // A failed commit of received entries or acks would leave a hole in the
                // delivery order if later ones went on; stop, and let the client report it.
                let _ = failed.send(Some(why));
                return;
            }
        }
    }
}

#[derive(Default)]
struct Outcome {
    appended: i64,
    applied: i64,
    appended_batches: Vec<Appended>,
    /// Newly applied entries in delivery order, when the writer knows all their contents.
    delivered: Option<Vec<AppliedEntry>>,
}

/// Which in-memory handoffs have a receiver.
#[derive(Clone, Copy)]
struct Listeners {
    appended: bool,
    applied: bool,
}

async fn commit_group(
    conn: &mut SqliteConnection,
    cursors: &mut CursorCache,
    listeners: Listeners,
    group: &mut [Command],
) -> Result<Outcome, Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let mut outcome = Outcome::default();
    // (remote, log) pairs whose cursor may move.
    let mut touched: Vec<(RemoteId, String)> = Vec::new();
    // Contents of entries this group may apply, for the in-memory handoff to streams.
    let mut known: HashMap<(&str, [u8; 16]), (&Entry, bool)> = HashMap::new();
    let mut handoff = listeners.applied;
    for cmd in group.iter() {
        match cmd {
            Command::Append { log, entries, .. } => {
                let mut local_seqs = Vec::with_capacity(entries.len());
                for chunk in entries.chunks(ROWS_PER_STATEMENT) {
                    let r = insert_entries(&mut tx, log, chunk.iter(), true).await?;
                    if r.rows_affected() > 0 {
                        outcome.appended = outcome.appended.max(r.last_insert_rowid());
                    }
                    // One statement from one writer: the rows got consecutive rowids.
                    if r.rows_affected() == chunk.len() as u64 {
                        let first = r.last_insert_rowid() - chunk.len() as i64 + 1;
                        local_seqs.extend(first..=r.last_insert_rowid());
                    }
                }
                if !listeners.appended {
                    // Nobody to hand over to.
                } else if local_seqs.len() != entries.len() || entries.len() > HANDOFF_MAX {
                    outcome.appended_batches.push(Appended {
                        log: log.clone(),
                        entries: Vec::new(),
                        handed_over: false,
                    });
                } else {
                    outcome.appended_batches.push(Appended {
                        log: log.clone(),
                        handed_over: true,
                        entries: entries
                            .iter()
                            .zip(local_seqs)
                            .map(|(e, local_seq)| StoredEntry {
                                local_seq,
                                log: log.clone(),
                                entry: e.clone(),
                                own: true,
                            })
                            .collect(),
                    });
                }
            }
            Command::Acked {
                remote,
                log,
                placed,
                entries,
            } => {
                if !handoff {
                    // Not collecting contents.
                } else if entries.len() == placed.len() {
                    for (e, own) in entries {
                        known.insert((log.as_str(), e.id), (e, *own));
                    }
                } else {
                    handoff = false;
                }
                for chunk in placed.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT OR IGNORE INTO remote_entries (remote_id, log, entry_id, sequence) ",
                    );
                    q.push_values(chunk, |mut b, (id, seq)| {
                        b.push_bind(remote.as_slice())
                            .push_bind(log)
                            .push_bind(id.as_slice())
                            .push_bind(*seq as i64);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                note(&mut touched, remote, log);
            }
            Command::Received {
                remote,
                log,
                entries,
            } => {
                let opened: Vec<&Entry> = entries
                    .iter()
                    .filter_map(|r| r.content.as_ref().ok())
                    .collect();
                for chunk in opened.chunks(ROWS_PER_STATEMENT) {
                    let r = insert_entries(&mut tx, log, chunk.iter().copied(), false).await?;
                    if handoff && r.rows_affected() == chunk.len() as u64 {
                        // All new here, so none of them is our own.
                        for e in chunk {
                            known.insert((log.as_str(), e.id), (e, false));
                        }
                    }
                }
                for chunk in entries.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT OR IGNORE INTO remote_entries (remote_id, log, entry_id, sequence) ",
                    );
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(remote.as_slice())
                            .push_bind(log)
                            .push_bind(r.entry_id.as_slice())
                            .push_bind(r.sequence as i64);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                for r in entries {
                    if let Err(u) = &r.content {
                        sqlx::query(
                            "INSERT OR IGNORE INTO undecryptable
                             (remote_id, log, sequence, entry_id, iv, ciphertext, error)
                             VALUES (?, ?, ?, ?, ?, ?, ?)",
                        )
                        .bind(remote.as_slice())
                        .bind(log)
                        .bind(r.sequence as i64)
                        .bind(r.entry_id.as_slice())
                        .bind(u.iv.as_slice())
                        .bind(u.ciphertext.as_slice())
                        .bind(&u.error)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                note(&mut touched, remote, log);
            }
            Command::Snapshot {
                remote,
                log,
                content,
            } => {
                handoff = false;
                let entries: Vec<&Entry> = content.entries.iter().map(|e| &e.entry).collect();
                for chunk in entries.chunks(ROWS_PER_STATEMENT) {
                    insert_entries(&mut tx, log, chunk.iter().copied(), false).await?;
                }
                for chunk in content.entries.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT OR IGNORE INTO remote_entries (remote_id, log, entry_id, sequence) ",
                    );
                    q.push_values(chunk, |mut b, e| {
                        b.push_bind(remote.as_slice())
                            .push_bind(log)
                            .push_bind(e.entry.id.as_slice())
                            .push_bind(e.sequence as i64);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                let cursor = load_cursor(&mut tx, cursors, remote, log).await?;
                if (content.sequence as i64) >= cursor {
                    // In sequence order, so the delivery order is the relay's.
                    sqlx::query(
                        "INSERT OR IGNORE INTO applied (log, entry_id, remote_id, sequence)
                         SELECT r.log, r.entry_id, r.remote_id, r.sequence FROM remote_entries r
                         WHERE r.remote_id = ?1 AND r.log = ?2 AND r.sequence >= ?3
                           AND r.sequence <= ?4
                           AND EXISTS (SELECT 1 FROM entries e
                                       WHERE e.log = r.log AND e.entry_id = r.entry_id)
                         ORDER BY r.sequence",
                    )
                    .bind(remote.as_slice())
                    .bind(log)
                    .bind(cursor)
                    .bind(content.sequence as i64)
                    .execute(&mut *tx)
                    .await?;
                    let top: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(idx), 0) FROM applied")
                        .fetch_one(&mut *tx)
                        .await?;
                    outcome.applied = outcome.applied.max(top);
                    store_cursor(&mut tx, cursors, remote, log, content.sequence as i64 + 1)
                        .await?;
                }
                note(&mut touched, remote, log);
            }
            Command::Truncated { remote, log, first } => {
                let cursor = load_cursor(&mut tx, cursors, remote, log).await?;
                if (*first as i64) > cursor {
                    sqlx::query(
                        "INSERT INTO truncations (remote_id, log, from_seq, to_seq)
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(remote.as_slice())
                    .bind(log)
                    .bind(cursor)
                    .bind(*first as i64)
                    .execute(&mut *tx)
                    .await?;
                    store_cursor(&mut tx, cursors, remote, log, *first as i64).await?;
                }
                note(&mut touched, remote, log);
            }
            Command::Barrier(_) => {}
        }
    }
    let mut delivered = Vec::new();
    for (remote, log) in &touched {
        for (idx, entry_id, sequence) in advance(&mut tx, cursors, remote, log).await? {
            outcome.applied = outcome.applied.max(idx);
            if !handoff || delivered.len() >= HANDOFF_MAX {
                handoff = false;
                continue;
            }
            let key = <[u8; 16]>::try_from(entry_id.as_slice())
                .ok()
                .and_then(|id| known.get(&(log.as_str(), id)));
            match key {
                Some((entry, own)) => delivered.push(AppliedEntry {
                    index: idx,
                    log: log.clone(),
                    sequence: sequence.max(0) as u64,
                    entry: (*entry).clone(),
                    own: *own,
                }),
                None => handoff = false,
            }
        }
    }
    if handoff {
        outcome.delivered = Some(delivered);
    }
    tx.commit().await?;
    Ok(outcome)
}

/// One multi-row `INSERT` of entries into `log`; an entry already there is left as it is.
async fn insert_entries<'e>(
    conn: &mut SqliteConnection,
    log: &str,
    entries: impl Iterator<Item = &'e Entry>,
    own: bool,
) -> Result<SqliteQueryResult, sqlx::Error> {
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO entries (log, entry_id, event, primary_key, payload, own) ",
    );
    q.push_values(entries, |mut b, e| {
        b.push_bind(log)
            .push_bind(e.id.as_slice())
            .push_bind(&e.event)
            .push_bind(&e.primary_key)
            .push_bind(&e.payload)
            .push_bind(own);
    });
    q.push(" ON CONFLICT (log, entry_id) DO NOTHING");
    q.build().execute(&mut *conn).await
}

fn note(touched: &mut Vec<(RemoteId, String)>, remote: &RemoteId, log: &str) {
    if !touched.iter().any(|(r, l)| r == remote && l == log) {
        touched.push((remote.clone(), log.to_owned()));
    }
}

/// The writer's copy of `cursors`, so the hot path skips reading it back.
type CursorCache = HashMap<(RemoteId, String), i64>;

/// The (remote, log) cursor: every sequence below it is applied.
async fn load_cursor(
    conn: &mut SqliteConnection,
    cursors: &mut CursorCache,
    remote: &[u8],
    log: &str,
) -> Result<i64, Error> {
    let key = (remote.to_vec(), log.to_owned());
    if let Some(next) = cursors.get(&key) {
        return Ok(*next);
    }
    let next: Option<i64> =
        sqlx::query_scalar("SELECT next_sequence FROM cursors WHERE remote_id = ? AND log = ?")
            .bind(remote)
            .bind(log)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(next.unwrap_or(0))
}

async fn store_cursor(
    conn: &mut SqliteConnection,
    cursors: &mut CursorCache,
    remote: &[u8],
    log: &str,
    next: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO cursors (remote_id, log, next_sequence) VALUES (?, ?, ?)
         ON CONFLICT (remote_id, log) DO UPDATE SET next_sequence = excluded.next_sequence",
    )
    .bind(remote)
    .bind(log)
    .bind(next)
    .execute(&mut *conn)
    .await?;
    cursors.insert((remote.to_vec(), log.to_owned()), next);
    Ok(())
}

/// Moves the (remote, log) cursor over every sequence now known, applying the entries in
/// sequence order. Returns what it applied: (idx, entryId, sequence), by idx.
async fn advance(
    conn: &mut SqliteConnection,
    cursors: &mut CursorCache,
    remote: &[u8],
    log: &str,
) -> Result<Vec<(i64, Vec<u8>, i64)>, Error> {
    const PAGE: usize = 4096;
    let key = (remote.to_vec(), log.to_owned());
    let (start, stored) = match cursors.get(&key) {
        Some(next) => (*next, true),
        None => {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT next_sequence FROM cursors WHERE remote_id = ? AND log = ?",
            )
            .bind(remote)
            .bind(log)
            .fetch_optional(&mut *conn)
            .await?;
            (next.unwrap_or(0), next.is_some())
        }
    };
    let mut next = start;
    let mut applied = Vec::new();
    loop {
        let known: Vec<i64> = sqlx::query_scalar(
            "SELECT sequence FROM remote_entries
             WHERE remote_id = ? AND log = ? AND sequence >= ? ORDER BY sequence LIMIT ?",
        )
        .bind(remote)
        .bind(log)
        .bind(next)
        .bind(PAGE as i64)
        .fetch_all(&mut *conn)
        .await?;
        let end = known
            .iter()
            .zip(next..)
            .take_while(|(seq, want)| **seq == *want)
            .count() as i64
            + next;
        if end == next {
            break;
        }
        // Entries that did not decrypt have no `entries` row; they are skipped here while the
        // cursor still moves past them.
        let rows = sqlx::query(
            "INSERT OR IGNORE INTO applied (log, entry_id, remote_id, sequence)
             SELECT r.log, r.entry_id, r.remote_id, r.sequence FROM remote_entries r
             WHERE r.remote_id = ?1 AND r.log = ?2 AND r.sequence >= ?3 AND r.sequence < ?4
               AND EXISTS (SELECT 1 FROM entries e WHERE e.log = r.log AND e.entry_id = r.entry_id)
             ORDER BY r.sequence
             RETURNING idx, entry_id, sequence",
        )
        .bind(remote)
        .bind(log)
        .bind(next)
        .bind(end)
        .fetch_all(&mut *conn)
        .await?;
        let mut page = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("idx")?,
                    r.try_get("entry_id")?,
                    r.try_get("sequence")?,
                ))
            })
            .collect::<Result<Vec<(i64, Vec<u8>, i64)>, sqlx::Error>>()?;
        // RETURNING gives rows in no promised order.
        page.sort_unstable_by_key(|(idx, _, _)| *idx);
        applied.extend(page);
        let whole_page = known.len() == PAGE && (end - next) as usize == PAGE;
        next = end;
        if !whole_page {
            break;
        }
    }
    if next != start || !stored {
        sqlx::query(
            "INSERT INTO cursors (remote_id, log, next_sequence) VALUES (?, ?, ?)
             ON CONFLICT (remote_id, log) DO UPDATE SET next_sequence = excluded.next_sequence",
        )
        .bind(remote)
        .bind(log)
        .bind(next)
        .execute(&mut *conn)
        .await?;
    }
    cursors.insert(key, next);
    Ok(applied)
}
