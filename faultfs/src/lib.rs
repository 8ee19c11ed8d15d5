//! `wharf-faultfs`: a FUSE filesystem for testing durability claims. It passes through to a
//! backing directory, but keeps every byte written to a file in its own memory until that file
//! is `fsync`ed or `fdatasync`ed. Killing its process is a power cut: whatever was not synced
//! is gone, exactly as from a disk cache that lost power.
//!
//! A SIGKILLed program alone cannot show that: the operating system keeps the page cache, so
//! a relay that acknowledged before its fsync would pass. Here it fails.
//!
//! What it models and what it does not:
//! - File data: volatile until the file is synced (writes, truncates, extensions).
//! - Metadata (create, unlink, rename, mkdir, permissions) is durable at once. A program that
//!   forgets to fsync a directory after creating a file is not caught.
//! - Reads see the volatile data, and attributes the volatile size (attribute caching is off).
//! - POSIX locks are the kernel's (FUSE handles them locally); `mmap` works (no direct I/O),
//!   which SQLite's WAL index needs.

pub mod volatile;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::volatile::{Volatile, PAGE};

/// Attributes are never cached by the kernel: sizes come from here, volatile data included.
const TTL: Duration = Duration::ZERO;

/// The filesystem: inode numbers are the backing files' own (the root is 1).
#[derive(Debug)]
pub struct FaultFs {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    root_ino: u64,
    paths: HashMap<u64, PathBuf>,
    files: HashMap<u64, Volatile>,
    next_handle: u64,
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    match (u64::try_from(secs), u32::try_from(nanos)) {
        (Ok(s), Ok(n)) => SystemTime::UNIX_EPOCH + Duration::new(s, n),
        _ => SystemTime::UNIX_EPOCH,
    }
}

impl FaultFs {
    /// A filesystem over `backing` (an existing directory).
    pub fn new(backing: &Path) -> std::io::Result<Self> {
        let backing = fs::canonicalize(backing)?;
        let root_ino = fs::metadata(&backing)?.ino();
        let mut paths = HashMap::new();
        paths.insert(1, backing);
        Ok(Self {
            state: Mutex::new(State {
                root_ino,
                paths,
                files: HashMap::new(),
                next_handle: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn ino(&self, m: &fs::Metadata) -> u64 {
        if m.ino() == self.root_ino {
            1
        } else {
            m.ino()
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn attr(&self, ino: u64, path: &Path) -> std::io::Result<FileAttr> {
        let m = fs::symlink_metadata(path)?;
        let kind = if m.is_dir() {
            FileType::Directory
        } else if m.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = self.files.get(&ino).map_or(m.size(), Volatile::size);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// Learns `path` (and opens a regular file's backing file once).
    fn register(&mut self, path: PathBuf) -> std::io::Result<FileAttr> {
        let m = fs::symlink_metadata(&path)?;
        let ino = self.ino(&m);
        if m.is_file() && !self.files.contains_key(&ino) {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            self.files.insert(ino, Volatile::new(file, m.size()));
        }
        self.paths.insert(ino, path.clone());
        self.attr(ino, &path)
    }

    fn handle(&mut self) -> FileHandle {
        self.next_handle += 1;
        FileHandle(self.next_handle)
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.state();
        match st.child(parent, name) {
            Ok(path) => match st.register(path) {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.state();
        match st.path(ino) {
            Ok(path) => match st.attr(ino.0, &path) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state();
        let path = match st.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        if let Some(mode) = mode {
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)) {
                return reply.error(errno(&e));
            }
        }
        if let Some(size) = size {
            let Some(file) = st.files.get_mut(&ino.0) else {
                return reply.error(Errno::EISDIR);
            };
            if let Err(e) = file.truncate(size) {
                return reply.error(errno(&e));
            }
        }
        match st.attr(ino.0, &path) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state();
        let path = match st.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let made = fs::create_dir(&path).and_then(|()| {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))
        });
        match made.and_then(|()| st.register(path)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = self.state();
        match st.child(parent, name) {
            Ok(path) => match fs::remove_file(path) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = self.state();
        match st.child(parent, name) {
            Ok(path) => match fs::remove_dir(path) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        let (from, to) = match (st.child(parent, name), st.child(new_parent, new_name)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if let Err(e) = fs::rename(&from, &to) {
            return reply.error(errno(&e));
        }
        for path in st.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(&from) {
                *path = to.join(rest);
            }
        }
        reply.ok()
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state();
        if !st.paths.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        let fh = st.handle();
        reply.opened(fh, FopenFlags::empty())
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state();
        let path = match st.child(parent, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        }
        match options.open(&path).and_then(|_| st.register(path)) {
            Ok(attr) => {
                let fh = st.handle();
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.state();
        let Some(file) = st.files.get(&ino.0) else {
            return reply.error(Errno::EISDIR);
        };
        match file.read(offset, u64::from(size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.state();
        let Some(file) = st.files.get_mut(&ino.0) else {
            return reply.error(Errno::EISDIR);
        };
        match file.write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync: nothing becomes durable here.
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        let Some(file) = st.files.get_mut(&ino.0) else {
            return reply.ok();
        };
        match file.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Must be implemented: a FUSE filesystem without it makes every later fsyncdir a
        // silent success in the kernel.
        let st = self.state();
        match st.path(ino) {
            Ok(path) => match File::open(path).and_then(|d| d.sync_all()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state();
        let path = match st.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (1, FileType::Directory, "..".into()),
        ];
        match fs::read_dir(&path) {
            Ok(dir) => {
                for entry in dir.flatten() {
                    let Ok(m) = entry.metadata() else { continue };
                    let kind = if m.is_dir() {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    entries.push((st.ino(&m), kind, entry.file_name()));
                }
            }
            Err(e) => return reply.error(errno(&e)),
        }
        for (i, (n, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(n), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            1 << 24,
            1 << 23,
            1 << 23,
            1 << 20,
            1 << 19,
            PAGE as u32,
            255,
            PAGE as u32,
        )
    }
}
