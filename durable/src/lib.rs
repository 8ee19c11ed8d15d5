//! `wharf-durable`: durable names. The file operations whose result must survive power loss,
//! each followed by the `fsync` of the directory that holds the name.
//!
//! POSIX makes a new, renamed or removed name durable only when its directory is fsynced;
//! syncing the file makes its data durable, not its name. ext4's journal usually hides the
//! difference; XFS, btrfs, network and virtual block storage need not. Every directory and file
//! the relay, the CLI and the SDK create and later depend on goes through here, so one place
//! keeps the rule. SQLite keeps it for its own files: it fsyncs a database's directory when it
//! creates the database's WAL or rollback journal (so the database's name is durable by its
//! first durable commit), never the directory above.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The directory that holds `path`'s name (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the names in `dir` durable: every entry created, renamed or removed in it so far.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes `path`'s own name durable (its directory's fsync).
pub fn sync_name(path: &Path) -> io::Result<()> {
    sync_dir(parent(path))
}

/// `mkdir -p`, durably: each directory it creates has its name synced into its parent, and the
/// name of `dir` itself is synced even when it already existed (a process that died between
/// its `mkdir` and the sync left it there, not durable). `private`: new directories are made
/// owner-only (0700).
fn create_dir_all_with(dir: &Path, private: bool) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
        if p.is_dir() {
            break;
        }
        missing.push(p.to_owned());
        at = p.parent();
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    if private {
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    }
    #[cfg(not(unix))]
    let _ = private;
    for p in missing.iter().rev() {
        match builder.create(p) {
            Ok(()) => {}
            // Made by someone else meanwhile; its name is synced below all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    // Top down, each new directory's name into its parent, then `dir`'s own.
    for p in missing.iter().rev() {
        sync_name(p)?;
    }
    if missing.is_empty() {
        match sync_name(dir) {
            // An existing directory under a parent this process may not open (say /var/lib
            // for a service user): whoever made it there made it durable; nothing to add.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            other => other?,
        }
    }
    Ok(())
}

/// `mkdir -p`, durably (see the module's documentation).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    create_dir_all_with(dir, false)
}

/// [`create_dir_all`], the directories it makes owner-only (0700).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    create_dir_all_with(dir, true)
}

/// `rename(2)`, durably: the new name (and the old one's removal, when `from` is in another
/// directory) is synced before it returns. `from`'s data must already be synced.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_name(to)?;
    if parent(from) != parent(to) {
        sync_name(from)?;
    }
    Ok(())
}

/// `link(2)`, durably: the new name is synced before it returns.
pub fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    sync_name(to)
}

/// `unlink(2)`, durably: the name's removal is synced before it returns. A name already gone
/// is not an error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_name(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `path` with `contents`, durably and whole: written under a temporary name beside it,
/// synced, renamed over `path`, and the name synced. A reader sees the old file or the new one,
/// never a part; a power cut leaves one of the two. `mode` (unix): the new file's permissions.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = parent(path).join(format!(
        ".{}.{}.partial",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates an empty file at `path` unless one is there, durably (a marker whose presence is
/// what matters).
pub fn touch(path: &Path) -> io::Result<()> {
    if path.is_file() {
        return sync_name(path);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?
        .sync_all()?;
    sync_name(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_replaces_files_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).expect("mkdir -p");
        create_dir_all(&deep).expect("again: only a sync");
        assert!(deep.is_dir());
        let key = deep.join("key");
        write(&key, b"one", 0o600).expect("write");
        write(&key, b"two", 0o600).expect("replace");
        assert_eq!(std::fs::read(&key).expect("read"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(&deep)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["key"], "no temporary file left behind");
        let moved = dir.path().join("a/key");
        rename(&key, &moved).expect("rename across directories");
        hard_link(&moved, &key).expect("link");
        remove_file(&moved).expect("remove");
        remove_file(&moved).expect("removing what is gone is fine");
        touch(&deep.join("mark")).expect("touch");
        touch(&deep.join("mark")).expect("touch again");
        assert!(deep.join("mark").is_file());
    }

    #[cfg(unix)]
    #[test]
    fn private_directories_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = dir.path().join("data/auth");
        create_private_dir_all(&auth).expect("mkdir");
        let mode = std::fs::metadata(&auth).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_relative_bare_name_syncs_the_working_directory() {
        sync_name(Path::new("Cargo.toml")).expect("sync .");
    }
}
