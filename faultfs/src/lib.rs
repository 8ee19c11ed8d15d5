//! `wharf-faultfs`: a FUSE filesystem for testing durability claims under the strictest
//! power-loss rules POSIX allows. Killing its process is a power cut.
//!
//! - `disk`: the model ([`disk::Disk`]): a current and a durable namespace, with each
//!   directory's entries durable only once that directory is fsynced, and file data durable
//!   once the file is fsynced. A `mkdir`, `create`, `link`, `rename`, `unlink` or `rmdir` is
//!   undone at a cut unless its directory was fsynced after it; a file's own fsync does not
//!   make its name durable.
//! - `volatile`: one file's data, the pages written since its last fsync held in memory.
//!   Unsynced writes are lost at a cut, or survive as a prefix, the last one torn at a sector
//!   boundary, as a disk cache that drained part of itself leaves them.
//! - this module: the FUSE side, which only translates requests into the model's calls.
//!
//! A SIGKILLed program alone cannot show what these rules catch: the operating system keeps
//! its page cache and, on ext4, its journal orders name changes before data. Here a relay
//! that acknowledged before its fsync, or that never fsynced a directory it made, fails.
//!
//! Reads see everything written, and attributes the current size (attribute and entry caching
//! are off). POSIX locks are the kernel's (FUSE handles them locally); `mmap` works (no direct
//! I/O), which SQLite's WAL index needs. No symlinks, special files or extended attributes.

pub mod disk;
pub mod volatile;

use std::ffi::OsStr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::disk::{Attr, Disk, Ino, Kind};
use crate::volatile::PAGE;

/// Attributes and entries are never cached by the kernel: they come from here.
const TTL: Duration = Duration::ZERO;

/// The filesystem: [`Disk`] behind FUSE.
#[derive(Debug)]
pub struct FaultFs {
    disk: Mutex<Disk>,
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: SystemTime::UNIX_EPOCH,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: PAGE as u32,
        flags: 0,
    }
}

impl FaultFs {
    pub fn new(disk: Disk) -> Self {
        Self {
            disk: Mutex::new(disk),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replies with `ino`'s entry, or the error that made it.
    fn entry(disk: &Disk, made: std::io::Result<Ino>, reply: ReplyEntry) {
        match made.and_then(|ino| disk.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn empty(done: std::io::Result<()>, reply: ReplyEmpty) {
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let disk = self.disk();
        Self::entry(&disk, disk.lookup(parent.0, name), reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.disk().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
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
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut disk = self.disk();
        let done = (|| {
            if let Some(mode) = mode {
                disk.set_mode(ino.0, mode)?;
            }
            if let Some(size) = size {
                disk.set_size(ino.0, size)?;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => disk.set_mtime(ino.0, t)?,
                Some(TimeOrNow::Now) => disk.set_mtime(ino.0, SystemTime::now())?,
                None => {}
            }
            disk.attr(ino.0)
        })();
        match done {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut disk = self.disk();
        let made = disk.mkdir(parent.0, name, mode & !umask, req.uid(), req.gid());
        Self::entry(&disk, made, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.disk().unlink(parent.0, name), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.disk().rmdir(parent.0, name), reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(!RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let done = self
            .disk()
            .rename(parent.0, name, new_parent.0, new_name, no_replace);
        Self::empty(done, reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut disk = self.disk();
        let linked = disk.link(ino.0, new_parent.0, new_name).map(|()| ino.0);
        Self::entry(&disk, linked, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.disk().attr(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut disk = self.disk();
        let made = match disk.lookup(parent.0, name) {
            // Only O_EXCL insists on a new file; otherwise an existing one is opened.
            Ok(_) if flags & libc::O_EXCL != 0 => {
                Err(std::io::Error::from_raw_os_error(libc::EEXIST))
            }
            Ok(ino) => Ok(ino),
            Err(_) => disk.create(parent.0, name, mode & !umask, req.uid(), req.gid()),
        };
        match made.and_then(|ino| disk.attr(ino)) {
            Ok(attr) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
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
        match self.disk().read(ino.0, offset, u64::from(size)) {
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
        match self.disk().write(ino.0, offset, data) {
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
        Self::empty(self.disk().fsync(ino.0), reply)
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
        // silent success in the kernel. Here it is what makes a directory's entries durable.
        Self::empty(self.disk().fsync(ino.0), reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let disk = self.disk();
        let (entries, parent) = match (disk.entries(ino.0), disk.parent(ino.0)) {
            (Ok(entries), Ok(parent)) => (entries, parent),
            (Err(e), _) | (_, Err(e)) => return reply.error(errno(&e)),
        };
        let all = [
            (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
            (parent, FileType::Directory, OsStr::new("..").to_owned()),
        ]
        .into_iter()
        .chain(entries.into_iter().map(|(name, child, kind)| {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            (child, kind, name)
        }));
        for (i, (n, kind, name)) in all.enumerate().skip(offset as usize) {
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
