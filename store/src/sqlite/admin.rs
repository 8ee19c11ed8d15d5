//! What the admin API and backups need from a tenant's SQLite database, outside the actor: a
//! description (`remoteId`, logs), deleting a log, and export and import in the shared format
//! ([`crate::export`]). Blocking calls: run them on a blocking thread, and only while the
//! tenant is held (no actor running) when they write.

use std::io::{BufRead, Write};
use std::path::Path;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use uuid::Uuid;
use wharf_sqlite::{blocking, Synchronous};

use super::{Backend, BUSY_TIMEOUT, MIGRATIONS};
use crate::config::TenantId;
use crate::error::StoreError;
use crate::export::{
    write_line, ExportEnd, ExportEntry, ExportError, ExportHeader, ExportStream, ImportCheck,
    ImportError, Imported, EXPORT_FORMAT, EXPORT_VERSION,
};
use crate::model::{LogState, TenantDetail, TenantSummary};

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
            wharf_durable::rename(&partial, path)?;
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

/// [`describe`], or `None` for a database created this instant by a first connection: until
/// its schema and `remoteId` are committed, the tenant is not there yet.
fn describe_if_ready(path: &Path) -> Result<Option<(Uuid, Vec<LogState>)>, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let probe = conn.query_row("SELECT value FROM meta WHERE key = 'remote_id'", [], |r| {
        r.get::<_, Vec<u8>>(0)
    });
    match probe {
        Ok(_) => {}
        Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    }
    let (remote_id, mut logs) = describe_in(&conn)?;
    logs.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Ok(Some((remote_id, logs)))
}

/// Sizes and modification time of the database and its WAL.
fn files_of(path: &Path) -> (u64, Option<u64>) {
    let mut size = 0;
    let mut modified = None;
    for suffix in ["", "-wal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(meta) = std::fs::metadata(&p) {
            size += meta.len();
            let ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            modified = modified.max(ms);
        }
    }
    (size, modified)
}

/// Whether the tenant database at `path` has webhook notifications waiting.
fn outbox_pending(path: &Path) -> Result<bool, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    match conn.query_row("SELECT EXISTS (SELECT 1 FROM webhook_outbox)", [], |r| {
        r.get::<_, bool>(0)
    }) {
        Ok(pending) => Ok(pending),
        // A database from before webhooks (or not yet migrated) has nothing to deliver.
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs blocking file and database work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Failed(format!("a storage task failed: {e}")))?
}

fn io_error(e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull => StoreError::Full(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Backend {
    /// How many tenant databases `data/tenants/` holds.
    pub async fn tenant_count(&self) -> usize {
        let dir = self.config.data.join("tenants");
        blocking(move || {
            Ok(std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "sqlite"))
                    .count()
            }))
        })
        .await
        .unwrap_or(0)
    }

    /// The tenants whose databases are in `data/tenants/`, by id (one being created this
    /// instant is not listed yet).
    pub async fn tenants(&self) -> Result<Vec<TenantSummary>, StoreError> {
        let backend = self.clone();
        blocking(move || {
            let dir = backend.config.data.join("tenants");
            let mut names: Vec<TenantId> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let path = e.path();
                        (path.extension()? == "sqlite")
                            .then(|| TenantId::parse(path.file_stem()?.to_str()?))?
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_error(e)),
            };
            names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let mut out = Vec::with_capacity(names.len());
            for tenant in names {
                // A tenant deleted meanwhile is simply not listed.
                if let Some(detail) = backend.describe_now(&tenant)? {
                    out.push(detail.summary);
                }
            }
            Ok(out)
        })
        .await
    }

    fn describe_now(&self, tenant: &TenantId) -> Result<Option<TenantDetail>, StoreError> {
        let path = self.config.tenant_path(tenant);
        if !path.exists() {
            return Ok(None);
        }
        let (size_bytes, last_write_unix_ms) = files_of(&path);
        let Some((remote_id, logs)) = describe_if_ready(&path)? else {
            return Ok(None);
        };
        Ok(Some(TenantDetail {
            summary: TenantSummary {
                tenant: tenant.as_str().to_owned(),
                size_bytes,
                logs: logs.len(),
                entries: logs.iter().map(|l| l.entries).sum(),
                last_write_unix_ms,
            },
            remote_id,
            logs,
        }))
    }

    /// `tenant` described from its database file (beside a running actor: WAL readers).
    pub async fn describe(&self, tenant: &TenantId) -> Result<Option<TenantDetail>, StoreError> {
        let (backend, tenant) = (self.clone(), tenant.clone());
        blocking(move || backend.describe_now(&tenant)).await
    }

    /// Removes the tenant's database, its WAL and shared memory, durably; whether it existed.
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let path = self.config.tenant_path(tenant);
        blocking(move || {
            let existed = path.exists();
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(e)),
                }
            }
            wharf_durable::sync_name(&path).map_err(io_error)?;
            Ok(existed)
        })
        .await
    }

    /// [`delete_log`] on the tenant's database; `false` when there is no such tenant.
    pub async fn delete_log(
        &self,
        tenant: &TenantId,
        public_key: &str,
    ) -> Result<bool, StoreError> {
        let path = self.config.tenant_path(tenant);
        let public_key = public_key.to_owned();
        blocking(move || {
            if !path.exists() {
                return Ok(false);
            }
            delete_log(&path, &public_key)
        })
        .await
    }

    /// [`export`] on a blocking thread, into a channel.
    pub fn export(&self, tenant: &TenantId) -> Result<ExportStream, StoreError> {
        let path = self.config.tenant_path(tenant);
        if !path.exists() {
            return Err(StoreError::NotFound(format!(
                "no tenant {:?}",
                tenant.as_str()
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let name = tenant.as_str().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            if let Err(e) = export(&path, &name, &mut out) {
                tracing::warn!(tenant = %name, error = %e, "export failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        Ok(rx)
    }

    /// [`import`] into a staged file on a blocking thread, fed from `input`, then moved into
    /// place (the tenant's WAL and shared memory removed first), durably.
    pub async fn import(
        &self,
        tenant: &TenantId,
        input: &mut (dyn AsyncBufRead + Send + Unpin),
        replace: bool,
    ) -> Result<Imported, ImportError> {
        let target = self.config.tenant_path(tenant);
        if !replace && target.exists() {
            return Err(ImportError::Exists(format!(
                "tenant {:?} already has data; add ?replace=true to replace it",
                tenant.as_str()
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let worker = tokio::task::spawn_blocking(move || {
            let mut input = std::io::BufReader::new(ChannelReader {
                rx,
                chunk: Bytes::new(),
            });
            let staged = target.with_extension("replacing");
            let imported = import(&staged, &mut input)?;
            replace_files(&staged, &target)?;
            Ok::<_, ImportError>(imported)
        });
        loop {
            let chunk = match input.fill_buf().await {
                Ok([]) => break,
                Ok(data) => Ok(Bytes::copy_from_slice(data)),
                Err(e) => Err(e),
            };
            let (failed, n) = match &chunk {
                Ok(data) => (false, data.len()),
                Err(_) => (true, 0),
            };
            if tx.send(chunk).await.is_err() || failed {
                // The import gave up (its reason comes from the worker), or the input failed.
                break;
            }
            input.consume(n);
        }
        drop(tx);
        worker
            .await
            .map_err(|e| ImportError::Store(StoreError::Failed(e.to_string())))?
    }

    /// Tenants with a webhook mark whose outbox holds notifications; marks of tenants that
    /// are gone are removed.
    pub async fn pending_webhooks(&self) -> Result<Vec<String>, StoreError> {
        let backend = self.clone();
        blocking(move || {
            let dir = backend.config.data.join("webhooks");
            let names: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect(),
                Err(_) => return Ok(Vec::new()),
            };
            let mut pending = Vec::new();
            for name in names {
                let Some(tenant) = TenantId::parse(&name) else {
                    continue;
                };
                let path = backend.config.tenant_path(&tenant);
                if !path.exists() {
                    let _ = wharf_durable::remove_file(&dir.join(&name));
                    continue;
                }
                match outbox_pending(&path) {
                    Ok(true) => pending.push(name),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(tenant = %name, error = %e, "cannot look at the webhook outbox")
                    }
                }
            }
            Ok(pending)
        })
        .await
    }
}

/// Moves an imported database into place, removing the old one's WAL and shared memory.
fn replace_files(staged: &Path, target: &Path) -> Result<(), ImportError> {
    for suffix in ["-wal", "-shm"] {
        let mut p = target.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    wharf_durable::rename(staged, target)?;
    Ok(())
}

const CHUNK: usize = 256 * 1024;

/// A `Write` that sends 256 KiB chunks to an export's channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// A `Read` over chunks handed over from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    chunk: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
