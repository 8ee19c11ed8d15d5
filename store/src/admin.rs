//! What the admin API and backups need from a tenant database, outside the actor: a
//! description (`remoteId`, logs), deleting a log, and export and import in the documented
//! NDJSON format (docs/operations.md). Blocking calls: run them on a blocking thread, and only
//! while the tenant is held (no actor running) when they write.

use std::io::{BufRead, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_sqlite::{blocking, Synchronous};

use super::sqlite::{BUSY_TIMEOUT, MIGRATIONS};
use super::StoreError;

/// The export format's name and version (the first line of every export).
pub const EXPORT_FORMAT: &str = "wharf-export";
pub const EXPORT_VERSION: u32 = 1;

/// One log of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogState {
    pub public_key: String,
    pub entries: u64,
    pub next_sequence: u64,
    /// Where the log's history starts (retention deleted everything below).
    #[serde(default)]
    pub first_sequence: u64,
}

/// A tenant database's `remoteId` and logs, read from a read-only connection (beside a
/// running relay, or from a snapshot).
pub fn describe(path: &Path) -> Result<(Uuid, Vec<LogState>), StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let (remote_id, mut logs) = describe_in(&conn)?;
    logs.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Ok((remote_id, logs))
}

/// Deletes log `public_key` and its entries; whether it existed. The tenant must be held.
pub fn delete_log(path: &Path, public_key: &str) -> Result<bool, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    let tx = conn.transaction()?;
    let id: Option<i64> = tx
        .query_row(
            "SELECT id FROM logs WHERE public_key = ?1",
            [public_key],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = id else { return Ok(false) };
    tx.execute("DELETE FROM entries WHERE log_id = ?1", [id])?;
    // A log created later may get this id again: nothing of this one may stay behind.
    tx.execute("DELETE FROM snapshots WHERE log_id = ?1", [id])?;
    tx.execute("DELETE FROM webhook_outbox WHERE log_id = ?1", [id])?;
    tx.execute("DELETE FROM logs WHERE id = ?1", [id])?;
    tx.commit()?;
    Ok(true)
}

/// The export's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportHeader {
    pub format: String,
    pub version: u32,
    pub tenant: String,
    pub remote_id: Uuid,
    pub logs: Vec<LogState>,
}

/// One entry: a line per entry, in log order then sequence order. Binary fields in base64.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportEntry {
    pub log: String,
    pub seq: u64,
    pub entry_id: String,
    pub iv: String,
    pub ciphertext: String,
}

/// The export's last line: its absence means the export was cut short.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportEnd {
    pub end: bool,
    pub entries: u64,
}

/// Writes the tenant at `path` as NDJSON to `out`, from one read transaction (a consistent
/// snapshot while the relay serves); how many entries it wrote.
pub fn export(path: &Path, tenant: &str, out: &mut dyn Write) -> Result<u64, ExportError> {
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(StoreError::from)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(StoreError::from)?;
    let tx = conn.transaction().map_err(StoreError::from)?;
    let (remote_id, logs) = describe_in(&tx)?;
    let header = ExportHeader {
        format: EXPORT_FORMAT.to_owned(),
        version: EXPORT_VERSION,
        tenant: tenant.to_owned(),
        remote_id,
        logs,
    };
    write_line(out, &header)?;
    let mut stmt = tx
        .prepare(
            "SELECT logs.public_key, entries.seq, entries.entry_id, entries.iv, \
             entries.ciphertext FROM entries JOIN logs ON logs.id = entries.log_id \
             ORDER BY entries.log_id, entries.seq",
        )
        .map_err(StoreError::from)?;
    let mut rows = stmt.query([]).map_err(StoreError::from)?;
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        let seq: i64 = row.get(1).map_err(StoreError::from)?;
        let entry = ExportEntry {
            log: row.get(0).map_err(StoreError::from)?,
            seq: u64::try_from(seq).unwrap_or(0),
            entry_id: B64.encode(
                row.get_ref(2)
                    .map_err(StoreError::from)?
                    .as_blob()
                    .unwrap_or_default(),
            ),
            iv: B64.encode(
                row.get_ref(3)
                    .map_err(StoreError::from)?
                    .as_blob()
                    .unwrap_or_default(),
            ),
            ciphertext: B64.encode(
                row.get_ref(4)
                    .map_err(StoreError::from)?
                    .as_blob()
                    .unwrap_or_default(),
            ),
        };
        write_line(out, &entry)?;
        n += 1;
    }
    write_line(
        out,
        &ExportEnd {
            end: true,
            entries: n,
        },
    )?;
    out.flush().map_err(ExportError::Io)?;
    Ok(n)
}

fn describe_in(conn: &Connection) -> Result<(Uuid, Vec<LogState>), StoreError> {
    let raw: Vec<u8> =
        conn.query_row("SELECT value FROM meta WHERE key = 'remote_id'", [], |r| {
            r.get(0)
        })?;
    let remote_id = Uuid::from_slice(&raw)
        .map_err(|_| StoreError::Corrupt("remote_id is not 16 bytes".into()))?;
    let mut stmt = conn.prepare(
        "SELECT logs.public_key, count(entries.seq), \
         max(coalesce(max(entries.seq) + 1, 0), logs.first_seq), logs.first_seq \
         FROM logs LEFT JOIN entries ON entries.log_id = logs.id \
         GROUP BY logs.id ORDER BY logs.id",
    )?;
    let logs = stmt
        .query_map([], |r| {
            Ok(LogState {
                public_key: r.get(0)?,
                entries: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                next_sequence: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                first_sequence: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((remote_id, logs))
}

/// One NDJSON line.
pub(crate) fn write_line(out: &mut dyn Write, value: &impl Serialize) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| ExportError::Io(e.into()))?;
    out.write_all(b"\n").map_err(ExportError::Io)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export failed: {0}")]
    Io(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the import failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
    /// The tenant has data, and the import was not asked to replace it.
    #[error("{0}")]
    Exists(String),
}

/// What an import brought in.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Imported {
    pub remote_id: Uuid,
    pub logs: usize,
    pub entries: u64,
}

/// Builds a tenant database at `path` from the NDJSON export in `input`, keeping `remoteId`,
/// entry ids and sequences (the header's tenant name is informational: an export may be
/// imported under another name). Written to `path` + `.importing` first and renamed into place
/// only when the whole export was read and checked (its header, dense sequences from 0 per
/// log, its end line), so a failed import leaves nothing behind. `path` must not exist.
pub fn import(path: &Path, input: &mut dyn BufRead) -> Result<Imported, ImportError> {
    let partial = path.with_extension("importing");
    let _ = std::fs::remove_file(&partial);
    let result = import_into(&partial, input);
    match result {
        Ok(imported) => {
            wharf_sqlite::durable::rename(&partial, path)?;
            Ok(imported)
        }
        Err(e) => {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = partial.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

fn import_into(partial: &Path, input: &mut dyn BufRead) -> Result<Imported, ImportError> {
    let mut lines = input.lines();
    let first = lines.next().transpose()?;
    let mut check = ImportCheck::start(first.as_deref())?;
    let mut conn = blocking::open_writer(partial, Synchronous::Off, BUSY_TIMEOUT, MIGRATIONS)
        .map_err(StoreError::from)?;
    let tx = conn.transaction().map_err(StoreError::from)?;
    let header = check.header().clone();
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('remote_id', ?1)",
        [header.remote_id.as_bytes().as_slice()],
    )
    .map_err(StoreError::from)?;
    let mut ids: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for log in &header.logs {
        tx.execute(
            "INSERT INTO logs (public_key, first_seq) VALUES (?1, ?2)",
            params![
                &log.public_key,
                i64::try_from(log.first_sequence).unwrap_or(0)
            ],
        )
        .map_err(StoreError::from)?;
        ids.insert(log.public_key.clone(), tx.last_insert_rowid());
    }
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO entries (log_id, seq, entry_id, iv, ciphertext) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(StoreError::from)?;
        while let Some(text) = lines.next().transpose()? {
            let Some(e) = check.line(&text)? else {
                continue;
            };
            let log_id = ids
                .get(&e.log)
                .copied()
                .ok_or_else(|| check.invalid(format!("log {:?} is not in the header", e.log)))?;
            insert
                .execute(params![log_id, e.seq, e.entry_id, e.iv, e.ciphertext])
                .map_err(|err| match err {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        check.invalid(format!("entry id repeated in log {:?}", e.log))
                    }
                    other => ImportError::Store(other.into()),
                })?;
        }
    }
    let imported = check.finish()?;
    tx.execute(
        "UPDATE logs SET bytes = \
         (SELECT COALESCE(SUM(length(ciphertext)), 0) FROM entries WHERE log_id = logs.id)",
        [],
    )
    .map_err(StoreError::from)?;
    tx.commit().map_err(StoreError::from)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .map_err(StoreError::from)?;
    let file = conn.path().map(std::path::PathBuf::from);
    drop(conn);
    if let Some(file) = file {
        std::fs::File::open(file)?.sync_all()?;
    }
    Ok(imported)
}

/// One entry of an import, checked and decoded.
#[derive(Debug)]
pub struct CheckedEntry {
    pub log: String,
    pub seq: i64,
    pub entry_id: Vec<u8>,
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Reads an export line by line and checks it, whichever store it goes into: its header,
/// dense sequences per log from where the log's history starts, the end line, and that every
/// log has the entries its header announces.
#[derive(Debug)]
pub struct ImportCheck {
    header: ExportHeader,
    /// Each log's sequence due next.
    due: std::collections::HashMap<String, u64>,
    line: u64,
    entries: u64,
    ended: bool,
}

impl ImportCheck {
    /// Checks the export's first line (`None`: the input is empty).
    pub fn start(first: Option<&str>) -> Result<Self, ImportError> {
        let invalid = |reason: String| ImportError::Invalid { line: 1, reason };
        let first = first.ok_or_else(|| invalid("empty input".into()))?;
        let header: ExportHeader = serde_json::from_str(first)
            .map_err(|e| invalid(format!("not an export header: {e}")))?;
        if header.format != EXPORT_FORMAT || header.version != EXPORT_VERSION {
            return Err(invalid(format!(
                "format {:?} version {}; this relay reads {EXPORT_FORMAT:?} version {EXPORT_VERSION}",
                header.format, header.version
            )));
        }
        let mut due = std::collections::HashMap::with_capacity(header.logs.len());
        for log in &header.logs {
            if i64::try_from(log.first_sequence.saturating_add(log.entries)).is_err() {
                return Err(invalid(format!(
                    "log {:?}: sequences too large",
                    log.public_key
                )));
            }
            if due
                .insert(log.public_key.clone(), log.first_sequence)
                .is_some()
            {
                return Err(invalid(format!(
                    "log {:?} is listed twice in the header",
                    log.public_key
                )));
            }
        }
        Ok(Self {
            header,
            due,
            line: 1,
            entries: 0,
            ended: false,
        })
    }

    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    /// An error about the line read last.
    pub fn invalid(&self, reason: String) -> ImportError {
        ImportError::Invalid {
            line: self.line,
            reason,
        }
    }

    /// Checks the next line: an entry, or `None` for a blank line and the end line.
    pub fn line(&mut self, text: &str) -> Result<Option<CheckedEntry>, ImportError> {
        self.line += 1;
        if text.trim().is_empty() {
            return Ok(None);
        }
        if self.ended {
            return Err(self.invalid("data after the end line".into()));
        }
        if let Ok(end) = serde_json::from_str::<ExportEnd>(text) {
            if !end.end || end.entries != self.entries {
                return Err(self.invalid(format!(
                    "the end line counts {} entries; {} were read",
                    end.entries, self.entries
                )));
            }
            self.ended = true;
            return Ok(None);
        }
        let e: ExportEntry = serde_json::from_str(text)
            .map_err(|err| self.invalid(format!("not an entry: {err}")))?;
        let Some(due) = self.due.get(&e.log).copied() else {
            return Err(self.invalid(format!("log {:?} is not in the header", e.log)));
        };
        if e.seq != due {
            return Err(self.invalid(format!(
                "log {:?}: sequence {} where {due} was due",
                e.log, e.seq
            )));
        }
        let blob = |field: &str, value: &str| {
            B64.decode(value)
                .map_err(|err| self.invalid(format!("{field} is not base64: {err}")))
        };
        let entry = CheckedEntry {
            seq: i64::try_from(e.seq).map_err(|_| self.invalid("sequence too large".into()))?,
            entry_id: blob("entry_id", &e.entry_id)?,
            iv: blob("iv", &e.iv)?,
            ciphertext: blob("ciphertext", &e.ciphertext)?,
            log: e.log,
        };
        self.due.insert(entry.log.clone(), due + 1);
        self.entries += 1;
        Ok(Some(entry))
    }

    /// After the last line: the export ended, and every log got what its header announced.
    pub fn finish(self) -> Result<Imported, ImportError> {
        if !self.ended {
            return Err(self.invalid("no end line: the export was cut short".into()));
        }
        for log in &self.header.logs {
            let due = self.due.get(&log.public_key).copied();
            let got = due.unwrap_or(log.first_sequence) - log.first_sequence;
            if got != log.entries {
                return Err(self.invalid(format!(
                    "log {:?}: the header announces {} entries; {got} were read",
                    log.public_key, log.entries
                )));
            }
        }
        Ok(Imported {
            remote_id: self.header.remote_id,
            logs: self.header.logs.len(),
            entries: self.entries,
        })
    }
}
