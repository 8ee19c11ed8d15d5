//! Online backups of a relay's data directory, and restores.
//!
//! `backup` takes a consistent snapshot of every tenant database with `VACUUM INTO` on a
//! read-only connection, while the relay goes on serving: each snapshot holds every commit
//! that finished before it began, so every entry acked before the backup started is in it.
//! The relay's signing key and revocation list are copied too. A `manifest.json` records
//! what is there: per tenant its `remoteId` and each log's entry count and next sequence, and
//! per file its size and SHA-256. `restore` checks every file against the manifest and brings
//! them into an empty data directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wharf_durable as durable;

use crate::error::StoreError;
pub use crate::model::LogState;

/// The manifest's file name inside a backup directory.
pub const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "wharf-backup";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Always `wharf-backup`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// When the backup started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The `wharf-relay` that wrote it.
    pub relay_version: String,
    pub tenants: Vec<TenantBackup>,
    /// The relay's own files (signing key, revocation list), when present.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantBackup {
    pub tenant: String,
    pub remote_id: String,
    pub logs: Vec<LogState>,
    pub file: FileEntry,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the backup directory, and to the data directory it restores into.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("{0} is not empty: back up into, or restore into, an empty or new directory")]
    NotEmpty(PathBuf),
    #[error("{0}: not a Wharf backup manifest: {1}")]
    Manifest(PathBuf, String),
    #[error("{path}: {what} does not match the manifest; the backup is damaged")]
    Mismatch { path: PathBuf, what: &'static str },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sql(path: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// What happened to one file, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub path: &'a str,
    pub bytes: u64,
    pub done: usize,
    pub total: usize,
}

/// Snapshots every tenant database under `data` into `to` (which must be empty or absent),
/// with the relay's key and revocation list, and writes the manifest last.
pub fn backup(
    data: &Path,
    to: &Path,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Manifest, BackupError> {
    ensure_empty(to)?;
    let started_unix_ms = unix_ms();
    let tenants_dir = data.join("tenants");
    let mut tenant_files: Vec<(String, PathBuf)> = match std::fs::read_dir(&tenants_dir) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sqlite"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&tenants_dir)(e)),
    };
    tenant_files.sort();
    let auth = data.join("auth");
    let key = auth.join("signing-key.pem");
    let revocations = auth.join("revocations.sqlite");
    let total = tenant_files.len() + usize::from(key.exists()) + usize::from(revocations.exists());
    let mut done = 0;
    let mut tenants = Vec::with_capacity(tenant_files.len());
    for (tenant, source) in tenant_files {
        let rel = format!("tenants/{tenant}.sqlite");
        let target = to.join(&rel);
        snapshot(&source, &target)?;
        let (remote_id, logs) = describe(&target)?;
        let file = file_entry(to, &rel)?;
        done += 1;
        progress(Progress {
            path: &rel,
            bytes: file.bytes,
            done,
            total,
        });
        tenants.push(TenantBackup {
            tenant,
            remote_id,
            logs,
            file,
        });
    }
    // The relay's own files: the key is copied (owner-only), the revocation list snapshotted.
    let mut files = Vec::new();
    for (rel, source, is_database) in [
        ("auth/signing-key.pem", &key, false),
        ("auth/revocations.sqlite", &revocations, true),
    ] {
        if !source.exists() {
            continue;
        }
        let target = to.join(rel);
        if is_database {
            snapshot(source, &target)?;
        } else {
            create_parent(&target)?;
            std::fs::copy(source, &target).map_err(io(source))?;
            restrict(&target)?;
            sync_file(&target)?;
            durable::sync_name(&target).map_err(io(&target))?;
        }
        let entry = file_entry(to, rel)?;
        done += 1;
        progress(Progress {
            path: rel,
            bytes: entry.bytes,
            done,
            total,
        });
        files.push(entry);
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        version: VERSION,
        started_unix_ms,
        relay_version: env!("CARGO_PKG_VERSION").to_owned(),
        tenants,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Manifest(to.join(MANIFEST), e.to_string()))?;
    // Last, and durably: a backup with a manifest is whole.
    let path = to.join(MANIFEST);
    durable::write(&path, &json, 0o644).map_err(io(&path))?;
    Ok(manifest)
}

/// Checks every file of the backup in `from` against its manifest, then copies them into
/// `data` (empty or absent). Nothing is written to `data` unless the whole backup checks out.
pub fn restore(
    from: &Path,
    data: &Path,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(from)?;
    ensure_empty(data)?;
    let entries: Vec<&FileEntry> = manifest
        .tenants
        .iter()
        .map(|t| &t.file)
        .chain(&manifest.files)
        .collect();
    for entry in &entries {
        check(from, entry)?;
    }
    for t in &manifest.tenants {
        let (remote_id, logs) = describe(&from.join(&t.file.path))?;
        if remote_id != t.remote_id || logs != t.logs {
            return Err(BackupError::Mismatch {
                path: from.join(&t.file.path),
                what: "the remoteId or a log's state",
            });
        }
    }
    for (done, entry) in entries.iter().enumerate() {
        let (source, target) = (from.join(&entry.path), data.join(&entry.path));
        create_parent(&target)?;
        let partial = target.with_extension("restoring");
        std::fs::copy(&source, &partial).map_err(io(&source))?;
        if entry.path.ends_with(".pem") {
            restrict(&partial)?;
        }
        sync_file(&partial)?;
        durable::rename(&partial, &target).map_err(io(&target))?;
        progress(Progress {
            path: &entry.path,
            bytes: entry.bytes,
            done: done + 1,
            total: entries.len(),
        });
    }
    Ok(manifest)
}

/// The manifest of the backup in `dir`, checked for format and version.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Manifest(path.clone(), e.to_string()))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(BackupError::Manifest(
            path,
            format!(
                "format {:?} version {}; this relay reads {FORMAT:?} version {VERSION}",
                manifest.format, manifest.version
            ),
        ));
    }
    // Paths stay inside the backup and the data directory.
    for p in manifest
        .tenants
        .iter()
        .map(|t| &t.file.path)
        .chain(manifest.files.iter().map(|f| &f.path))
    {
        let safe = Path::new(p)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            return Err(BackupError::Manifest(path, format!("unsafe path {p:?}")));
        }
    }
    Ok(manifest)
}

/// A consistent copy of the database at `source` (readers and the writer go on meanwhile).
fn snapshot(source: &Path, target: &Path) -> Result<(), BackupError> {
    create_parent(target)?;
    let conn = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(source))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(sql(source))?;
    let into = target
        .to_str()
        .ok_or_else(|| BackupError::Manifest(target.to_path_buf(), "path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [into])
        .map_err(sql(source))?;
    drop(conn);
    sync_file(target)?;
    durable::sync_name(target).map_err(io(target))
}

/// A tenant database's `remoteId` and logs.
fn describe(path: &Path) -> Result<(String, Vec<LogState>), BackupError> {
    let (remote_id, logs) =
        crate::sqlite::admin::describe(path).map_err(|e| BackupError::Store {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok((remote_id.to_string(), logs))
}

fn file_entry(dir: &Path, rel: &str) -> Result<FileEntry, BackupError> {
    let path = dir.join(rel);
    let (bytes, sha256) = hash(&path)?;
    Ok(FileEntry {
        path: rel.to_owned(),
        bytes,
        sha256,
    })
}

fn check(dir: &Path, entry: &FileEntry) -> Result<(), BackupError> {
    let path = dir.join(&entry.path);
    let (bytes, sha256) = hash(&path)?;
    if bytes != entry.bytes || sha256 != entry.sha256 {
        return Err(BackupError::Mismatch {
            path,
            what: "its size or SHA-256",
        });
    }
    Ok(())
}

fn hash(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

fn ensure_empty(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(dir.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            durable::create_dir_all(dir).map_err(io(dir))
        }
        Err(e) => Err(io(dir)(e)),
    }
}

fn create_parent(path: &Path) -> Result<(), BackupError> {
    match path.parent() {
        Some(dir) => durable::create_dir_all(dir).map_err(io(dir)),
        None => Ok(()),
    }
}

fn sync_file(path: &Path) -> Result<(), BackupError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

#[cfg(unix)]
fn restrict(path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> Result<(), BackupError> {
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
