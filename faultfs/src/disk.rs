//! The filesystem's state, FUSE aside, and what of it a power cut leaves.
//!
//! Two namespaces are kept. The *current* one is what programs see: every `mkdir`, `create`,
//! `link`, `rename`, `unlink` and `rmdir` acts on it at once. The *durable* one is what a power
//! cut leaves: a directory's entries become durable only when that directory is fsynced, as
//! POSIX promises and no more (a file's own fsync makes its data durable, not its name). File
//! data is [`Volatile`]: durable once the file is fsynced, with unsynced writes surviving as a
//! torn prefix when the cache happened to drain ([`Disk::write`]).
//!
//! On the backing directory: `data/<ino>` holds each regular file's durable bytes, and
//! `manifest` the durable namespace (every node reachable from the root through durable
//! entries). The manifest is replaced atomically at every directory fsync. Killing the process
//! at any moment therefore leaves exactly the durable state; [`Disk::open`] on the same backing
//! directory is the power coming back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::volatile::{Volatile, SECTOR};

pub type Ino = u64;
/// The root directory's inode number.
pub const ROOT: Ino = 1;

const MANIFEST: &str = "manifest";
const MANIFEST_HEADER: &str = "wharf-faultfs 1";

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What `stat` reports of a node.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Names in the current namespace.
    nlink: u32,
    /// A directory's parent in the current namespace.
    parent: Ino,
    /// A regular file's contents.
    data: Option<Volatile>,
}

/// How often unsynced writes drain to the disk on their own, and the seed that decides which.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// After a write, one chance in this many that a prefix of the file's unsynced writes
    /// reaches the disk (the last one possibly torn); 0: never. Rare by default, as an
    /// operating system's page cache drains: what a program did not sync is mostly lost.
    pub write_back_one_in: u64,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            write_back_one_in: 256,
            seed: 0x5eed,
        }
    }
}

/// splitmix64: deterministic for a seed, which is all a fault model needs.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The whole filesystem: nodes, the current and the durable namespace, and the backing store.
#[derive(Debug)]
pub struct Disk {
    backing: PathBuf,
    nodes: HashMap<Ino, Node>,
    /// The current namespace: each directory's entries.
    names: HashMap<Ino, BTreeMap<OsString, Ino>>,
    /// The durable namespace: each directory's entries as of its last fsync.
    durable: HashMap<Ino, BTreeMap<OsString, Ino>>,
    next_ino: Ino,
    options: Options,
    rng: Rng,
}

impl Disk {
    /// The filesystem stored in `backing` (an existing directory): what survived the last power
    /// cut, or a new empty filesystem if `backing` is empty.
    pub fn open(backing: &Path, options: Options) -> io::Result<Self> {
        let backing = fs::canonicalize(backing)?;
        fs::create_dir_all(backing.join("data"))?;
        let mut disk = Self {
            backing,
            nodes: HashMap::new(),
            names: HashMap::new(),
            durable: HashMap::new(),
            next_ino: ROOT + 1,
            options,
            rng: Rng(options.seed),
        };
        let manifest = disk.backing.join(MANIFEST);
        match fs::read(&manifest) {
            Ok(text) => disk.load(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let stray = fs::read_dir(&disk.backing)?
                    .filter_map(Result::ok)
                    .any(|e| e.file_name() != "data");
                if stray {
                    return Err(io::Error::other(format!(
                        "{} holds files but no {MANIFEST}: not a wharf-faultfs store",
                        disk.backing.display()
                    )));
                }
                let now = SystemTime::now();
                disk.nodes.insert(
                    ROOT,
                    Node {
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: now,
                        ctime: now,
                        nlink: 2,
                        parent: ROOT,
                        data: None,
                    },
                );
                disk.names.insert(ROOT, BTreeMap::new());
                disk.save()?;
            }
            Err(e) => return Err(e),
        }
        disk.collect_garbage()?;
        Ok(disk)
    }

    fn data_path(&self, ino: Ino) -> PathBuf {
        self.backing.join("data").join(ino.to_string())
    }

    fn load(&mut self, text: &[u8]) -> io::Result<()> {
        let bad = |line: &str| io::Error::other(format!("bad manifest line: {line:?}"));
        let text = std::str::from_utf8(text).map_err(|_| bad("(not UTF-8)"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(bad("(header)"));
        }
        let mut entries = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["next", n] => self.next_ino = n.parse().map_err(|_| bad(line))?,
                ["node", ino, kind, mode, uid, gid, mtime] => {
                    let ino: Ino = ino.parse().map_err(|_| bad(line))?;
                    let kind = match *kind {
                        "d" => Kind::Dir,
                        "f" => Kind::File,
                        _ => return Err(bad(line)),
                    };
                    let mtime = SystemTime::UNIX_EPOCH
                        + Duration::from_nanos(mtime.parse().map_err(|_| bad(line))?);
                    let data = match kind {
                        Kind::File => {
                            let file = OpenOptions::new()
                                .read(true)
                                .write(true)
                                .create(true)
                                .truncate(false)
                                .open(self.data_path(ino))?;
                            let size = file.metadata()?.len();
                            Some(Volatile::new(file, size))
                        }
                        Kind::Dir => None,
                    };
                    self.nodes.insert(
                        ino,
                        Node {
                            kind,
                            mode: u32::from_str_radix(mode, 8).map_err(|_| bad(line))?,
                            uid: uid.parse().map_err(|_| bad(line))?,
                            gid: gid.parse().map_err(|_| bad(line))?,
                            mtime,
                            ctime: mtime,
                            nlink: 0,
                            parent: ROOT,
                            data,
                        },
                    );
                    if kind == Kind::Dir {
                        self.names.insert(ino, BTreeMap::new());
                    }
                }
                ["entry", dir, child, name] => {
                    let name = hex_decode(name).ok_or_else(|| bad(line))?;
                    entries.push((
                        dir.parse::<Ino>().map_err(|_| bad(line))?,
                        child.parse::<Ino>().map_err(|_| bad(line))?,
                        OsString::from_vec(name),
                    ));
                }
                _ => return Err(bad(line)),
            }
        }
        for (dir, child, name) in entries {
            if !self.nodes.contains_key(&child) {
                return Err(bad("(an entry names no node)"));
            }
            self.names
                .get_mut(&dir)
                .ok_or_else(|| bad("(an entry's directory is no directory)"))?
                .insert(name, child);
        }
        self.durable = self.names.clone();
        // Link counts and parents follow from the namespace.
        let links: Vec<(Ino, Ino)> = self
            .names
            .iter()
            .flat_map(|(dir, m)| m.values().map(move |c| (*dir, *c)))
            .collect();
        if let Some(root) = self.nodes.get_mut(&ROOT) {
            root.nlink = 2;
        }
        for (dir, child) in links {
            let child_is_dir = self.nodes.get(&child).is_some_and(|n| n.kind == Kind::Dir);
            if let Some(node) = self.nodes.get_mut(&child) {
                if child_is_dir {
                    node.nlink = 2;
                    node.parent = dir;
                } else {
                    node.nlink += 1;
                }
            }
            if child_is_dir {
                if let Some(d) = self.nodes.get_mut(&dir) {
                    d.nlink += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes the durable namespace (what is reachable from the root through durable entries)
    /// as the new manifest, in one rename.
    fn save(&self) -> io::Result<()> {
        let mut out = format!("{MANIFEST_HEADER}\nnext {}\n", self.next_ino);
        let mut stack = vec![ROOT];
        let mut seen = HashSet::new();
        let mut entries = String::new();
        while let Some(ino) = stack.pop() {
            if !seen.insert(ino) {
                continue;
            }
            let node = self.nodes.get(&ino).ok_or_else(|| err(libc::EIO))?;
            let nanos = node
                .mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            out.push_str(&format!(
                "node {ino} {} {:o} {} {} {nanos}\n",
                if node.kind == Kind::Dir { "d" } else { "f" },
                node.mode,
                node.uid,
                node.gid,
            ));
            if let Some(children) = self.durable.get(&ino) {
                for (name, child) in children {
                    entries.push_str(&format!(
                        "entry {ino} {child} {}\n",
                        hex_encode(name.as_bytes())
                    ));
                    stack.push(*child);
                }
            }
        }
        out.push_str(&entries);
        let tmp = self.backing.join(format!("{MANIFEST}.new"));
        let mut file = File::create(&tmp)?;
        file.write_all(out.as_bytes())?;
        // The host's page cache outlives this process, which is all a power cut here kills;
        // no host fsync is needed for the model.
        drop(file);
        fs::rename(&tmp, self.backing.join(MANIFEST))
    }

    /// Removes data files no durable node owns (files created, or unlinked, before a cut).
    fn collect_garbage(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.backing.join("data"))? {
            let entry = entry?;
            let owned = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ino>().ok())
                .is_some_and(|ino| self.nodes.contains_key(&ino));
            if !owned {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    fn node(&self, ino: Ino) -> io::Result<&Node> {
        self.nodes.get(&ino).ok_or_else(|| err(libc::ENOENT))
    }

    fn node_mut(&mut self, ino: Ino) -> io::Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(|| err(libc::ENOENT))
    }

    fn dir(&self, ino: Ino) -> io::Result<&BTreeMap<OsString, Ino>> {
        match self.node(ino)?.kind {
            Kind::Dir => self.names.get(&ino).ok_or_else(|| err(libc::EIO)),
            Kind::File => Err(err(libc::ENOTDIR)),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> io::Result<&mut BTreeMap<OsString, Ino>> {
        self.dir(ino)?;
        self.names.get_mut(&ino).ok_or_else(|| err(libc::EIO))
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            node.mtime = now;
            node.ctime = now;
        }
    }

    pub fn attr(&self, ino: Ino) -> io::Result<Attr> {
        let node = self.node(ino)?;
        Ok(Attr {
            ino,
            kind: node.kind,
            size: node.data.as_ref().map_or(4096, Volatile::size),
            mode: node.mode,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime,
            ctime: node.ctime,
        })
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<Ino> {
        self.dir(parent)?
            .get(name)
            .copied()
            .ok_or_else(|| err(libc::ENOENT))
    }

    fn new_node(&mut self, kind: Kind, mode: u32, uid: u32, gid: u32, parent: Ino) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        self.nodes.insert(
            ino,
            Node {
                kind,
                mode: mode & 0o7777,
                uid,
                gid,
                mtime: now,
                ctime: now,
                nlink: if kind == Kind::Dir { 2 } else { 1 },
                parent,
                data: None,
            },
        );
        ino
    }

    fn vacant(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        if name.is_empty() || name.len() > 255 || name.as_bytes().contains(&b'/') {
            return Err(err(libc::EINVAL));
        }
        match self.dir(parent)?.contains_key(name) {
            true => Err(err(libc::EEXIST)),
            false => Ok(()),
        }
    }

    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<Ino> {
        self.vacant(parent, name)?;
        let ino = self.new_node(Kind::Dir, mode, uid, gid, parent);
        self.names.insert(ino, BTreeMap::new());
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        self.node_mut(parent)?.nlink += 1;
        self.touch(parent);
        Ok(ino)
    }

    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<Ino> {
        self.vacant(parent, name)?;
        let ino = self.new_node(Kind::File, mode, uid, gid, parent);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.data_path(ino));
        match file {
            Ok(file) => self.node_mut(ino)?.data = Some(Volatile::new(file, 0)),
            Err(e) => {
                self.nodes.remove(&ino);
                return Err(e);
            }
        }
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> io::Result<()> {
        if self.node(ino)?.kind == Kind::Dir {
            return Err(err(libc::EPERM));
        }
        self.vacant(parent, name)?;
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        self.node_mut(ino)?.nlink += 1;
        self.touch(parent);
        Ok(())
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        if self.node(ino)?.kind == Kind::Dir {
            return Err(err(libc::EISDIR));
        }
        self.dir_mut(parent)?.remove(name);
        let node = self.node_mut(ino)?;
        node.nlink = node.nlink.saturating_sub(1);
        // The node itself stays: open descriptors still read it, and the durable namespace may
        // still name it.
        self.touch(parent);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.is_empty() {
            return Err(err(libc::ENOTEMPTY));
        }
        self.dir_mut(parent)?.remove(name);
        self.node_mut(ino)?.nlink = 0;
        let p = self.node_mut(parent)?;
        p.nlink = p.nlink.saturating_sub(1);
        self.touch(parent);
        Ok(())
    }

    /// `rename(2)`: replaces what `to` names (a file by a file, an empty directory by a
    /// directory), unless `no_replace`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        to_parent: Ino,
        to_name: &OsStr,
        no_replace: bool,
    ) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        self.dir(to_parent)?;
        if to_name.is_empty() || to_name.len() > 255 || to_name.as_bytes().contains(&b'/') {
            return Err(err(libc::EINVAL));
        }
        let kind = self.node(ino)?.kind;
        if kind == Kind::Dir {
            // A directory cannot move into itself or below itself.
            let mut at = to_parent;
            loop {
                if at == ino {
                    return Err(err(libc::EINVAL));
                }
                if at == ROOT {
                    break;
                }
                at = self.node(at)?.parent;
            }
        }
        if let Some(&existing) = self.dir(to_parent)?.get(to_name) {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(err(libc::EEXIST));
            }
            match (kind, self.node(existing)?.kind) {
                (Kind::Dir, Kind::File) => return Err(err(libc::ENOTDIR)),
                (Kind::File, Kind::Dir) => return Err(err(libc::EISDIR)),
                (Kind::Dir, Kind::Dir) => self.rmdir(to_parent, to_name)?,
                (Kind::File, Kind::File) => self.unlink(to_parent, to_name)?,
            }
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(to_parent)?.insert(to_name.to_owned(), ino);
        if kind == Kind::Dir && parent != to_parent {
            self.node_mut(ino)?.parent = to_parent;
            let from = self.node_mut(parent)?;
            from.nlink = from.nlink.saturating_sub(1);
            self.node_mut(to_parent)?.nlink += 1;
        }
        self.touch(parent);
        self.touch(to_parent);
        Ok(())
    }

    pub fn set_mode(&mut self, ino: Ino, mode: u32) -> io::Result<()> {
        let node = self.node_mut(ino)?;
        node.mode = mode & 0o7777;
        node.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_size(&mut self, ino: Ino, size: u64) -> io::Result<()> {
        let node = self.node_mut(ino)?;
        let data = node.data.as_mut().ok_or_else(|| err(libc::EISDIR))?;
        data.truncate(size)?;
        self.touch(ino);
        Ok(())
    }

    pub fn set_mtime(&mut self, ino: Ino, mtime: SystemTime) -> io::Result<()> {
        self.node_mut(ino)?.mtime = mtime;
        Ok(())
    }

    pub fn read(&self, ino: Ino, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.node(ino)?
            .data
            .as_ref()
            .ok_or_else(|| err(libc::EISDIR))?
            .read(offset, len)
    }

    /// Writes `data` at `offset`. Now and then, a prefix of the file's unsynced writes drains to
    /// its data file, the last of them torn at a sector ([`Options::write_back_one_in`]).
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> io::Result<()> {
        let one_in = self.options.write_back_one_in;
        let drain = one_in > 0 && self.rng.below(one_in) == 0;
        let (count, torn) = (self.rng.next(), self.rng.next());
        let file = self
            .nodes
            .get_mut(&ino)
            .ok_or_else(|| err(libc::ENOENT))?
            .data
            .as_mut()
            .ok_or_else(|| err(libc::EISDIR))?;
        file.write(offset, data)?;
        if drain {
            let pending = file.pending() as u64;
            let count = 1 + count % pending.max(1);
            let torn = (torn % 2 == 0).then(|| 1 + torn / 2 % (data.len() as u64 / SECTOR + 1));
            file.write_back(usize::try_from(count).unwrap_or(usize::MAX), torn)?;
        }
        self.touch(ino);
        Ok(())
    }

    /// `fsync(2)`: a file's data becomes durable; a directory's entries do (each entry made or
    /// removed since its last fsync, and nothing in any other directory).
    pub fn fsync(&mut self, ino: Ino) -> io::Result<()> {
        match self.node(ino)?.kind {
            Kind::File => match self.node_mut(ino)?.data.as_mut() {
                Some(data) => data.sync(),
                None => Err(err(libc::EIO)),
            },
            Kind::Dir => {
                let now = self.dir(ino)?.clone();
                self.durable.insert(ino, now);
                self.save()
            }
        }
    }

    /// A directory's entries (name, inode, kind), sorted by name.
    pub fn entries(&self, ino: Ino) -> io::Result<Vec<(OsString, Ino, Kind)>> {
        self.dir(ino)?
            .iter()
            .map(|(name, child)| Ok((name.clone(), *child, self.node(*child)?.kind)))
            .collect()
    }

    pub fn parent(&self, ino: Ino) -> io::Result<Ino> {
        Ok(self.node(ino)?.parent)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_DRAIN: Options = Options {
        write_back_one_in: 0,
        seed: 1,
    };

    /// A power cut: the process's memory is gone, the backing directory is what remains.
    fn cut(disk: Disk) -> Disk {
        let backing = disk.backing.clone();
        drop(disk);
        Disk::open(&backing, NO_DRAIN).expect("power on")
    }

    fn path(disk: &Disk, path: &str) -> io::Result<Ino> {
        let mut at = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = disk.lookup(at, OsStr::new(part))?;
        }
        Ok(at)
    }

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_new_name_survives_only_if_its_directory_was_synced_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Disk::open(dir.path(), NO_DRAIN).expect("open");
        let data = d.mkdir(ROOT, n("data"), 0o755, 0, 0).expect("mkdir");
        let tenants = d.mkdir(data, n("tenants"), 0o755, 0, 0).expect("mkdir");
        let f = d
            .create(tenants, n("a.sqlite"), 0o644, 0, 0)
            .expect("create");
        d.write(f, 0, b"acked").expect("write");
        d.fsync(f).expect("fsync file");
        d.fsync(tenants).expect("fsync tenants");
        d.fsync(ROOT).expect("fsync root");
        // `data` never synced: `tenants` (and all in it) is gone, though synced itself.
        let d = cut(d);
        assert!(path(&d, "data").is_ok());
        assert_eq!(
            path(&d, "data/tenants").map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOENT))
        );

        let mut d = d;
        let data = path(&d, "data").expect("data");
        let tenants = d.mkdir(data, n("tenants"), 0o755, 0, 0).expect("mkdir");
        let f = d
            .create(tenants, n("a.sqlite"), 0o644, 0, 0)
            .expect("create");
        d.write(f, 0, b"acked").expect("write");
        d.fsync(f).expect("fsync file");
        d.fsync(tenants).expect("fsync tenants");
        d.fsync(data).expect("fsync data");
        let d = cut(d);
        let f = path(&d, "data/tenants/a.sqlite").expect("every name synced");
        assert_eq!(d.read(f, 0, 100).expect("read"), b"acked");
    }

    #[test]
    fn a_synced_file_whose_name_was_never_synced_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Disk::open(dir.path(), NO_DRAIN).expect("open");
        let f = d.create(ROOT, n("key"), 0o600, 0, 0).expect("create");
        d.write(f, 0, b"secret").expect("write");
        d.fsync(f).expect("fsync");
        let d = cut(d);
        assert!(path(&d, "key").is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("data"))
                .expect("data")
                .count(),
            0,
            "its data file was collected"
        );
    }

    #[test]
    fn a_rename_and_an_unlink_are_undone_unless_the_directory_was_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Disk::open(dir.path(), NO_DRAIN).expect("open");
        let old = d.create(ROOT, n("list"), 0o644, 0, 0).expect("create");
        d.write(old, 0, b"old").expect("write");
        d.fsync(old).expect("fsync");
        d.fsync(ROOT).expect("fsync root");
        let new = d.create(ROOT, n("list.tmp"), 0o644, 0, 0).expect("create");
        d.write(new, 0, b"new").expect("write");
        d.fsync(new).expect("fsync");
        d.rename(ROOT, n("list.tmp"), ROOT, n("list"), false)
            .expect("rename");
        let gone = d.create(ROOT, n("gone"), 0o644, 0, 0).expect("create");
        d.fsync(ROOT).expect("fsync root");
        d.unlink(ROOT, n("gone")).expect("unlink");
        assert_ne!(gone, new);
        let mut d = cut(d);
        let list = path(&d, "list").expect("list");
        assert_eq!(d.read(list, 0, 10).expect("read"), b"new", "rename durable");
        assert!(path(&d, "gone").is_ok(), "the unsynced unlink is undone");

        let again = d.create(ROOT, n("list.tmp"), 0o644, 0, 0).expect("create");
        d.write(again, 0, b"newer").expect("write");
        d.fsync(again).expect("fsync");
        d.rename(ROOT, n("list.tmp"), ROOT, n("list"), false)
            .expect("rename");
        let d = cut(d);
        let list = path(&d, "list").expect("list");
        assert_eq!(
            d.read(list, 0, 10).expect("read"),
            b"new",
            "the unsynced rename is undone"
        );
        assert!(path(&d, "list.tmp").is_err(), "and its new file gone");
    }

    #[test]
    fn unsynced_data_is_lost_or_torn_never_invented() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            write_back_one_in: 1,
            seed: 7,
        };
        let mut d = Disk::open(dir.path(), options).expect("open");
        let f = d.create(ROOT, n("wal"), 0o644, 0, 0).expect("create");
        d.fsync(ROOT).expect("fsync root");
        d.write(f, 0, &[1u8; 4096]).expect("write");
        d.fsync(f).expect("fsync");
        for i in 0..20u64 {
            d.write(f, 4096 + i * 1000, &[2u8; 1000]).expect("write");
        }
        let d = cut(d);
        let f = path(&d, "wal").expect("wal");
        let got = d.read(f, 0, 1 << 20).expect("read");
        assert!(got.len() >= 4096, "the synced part survives");
        assert!(got[..4096].iter().all(|b| *b == 1));
        assert!(
            got.len() > 4096 && got.len() <= 4096 + 20_000,
            "with a write back after every write, a torn prefix of the rest survives ({} bytes)",
            got.len()
        );
        assert!(got[4096..].iter().all(|b| *b == 2 || *b == 0));
    }

    #[test]
    fn a_directory_cannot_move_below_itself_and_links_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Disk::open(dir.path(), NO_DRAIN).expect("open");
        let a = d.mkdir(ROOT, n("a"), 0o755, 0, 0).expect("mkdir");
        let b = d.mkdir(a, n("b"), 0o755, 0, 0).expect("mkdir");
        assert_eq!(
            d.rename(ROOT, n("a"), b, n("a"), false)
                .map_err(|e| e.raw_os_error()),
            Err(Some(libc::EINVAL))
        );
        let f = d.create(a, n("f"), 0o644, 0, 0).expect("create");
        d.link(f, b, n("g")).expect("link");
        assert_eq!(d.attr(f).expect("attr").nlink, 2);
        assert_eq!(d.attr(a).expect("attr").nlink, 3);
        assert_eq!(
            d.rmdir(ROOT, n("a")).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOTEMPTY))
        );
    }

    #[test]
    fn a_backing_directory_of_other_files_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("precious"), b"x").expect("write");
        let e = Disk::open(dir.path(), NO_DRAIN).expect_err("refused");
        assert!(e.to_string().contains("not a wharf-faultfs store"), "{e}");
    }
}
