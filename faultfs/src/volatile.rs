//! One file's contents as the filesystem presents them: what is durable in its data file, and
//! the pages written since the last sync, which live only in this process's memory.
//!
//! Unsynced writes are not all-or-nothing at a power cut: like a disk cache draining in the
//! background, [`Volatile::write_back`] moves a prefix of them (in the order they were made, the
//! last one possibly torn at a sector boundary) to the data file without making them a sync.
//! Reads never depend on it: they see the file as written.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;
/// The unit a torn write is cut at: what survives of a write reaching the disk is a whole
/// number of sectors.
pub const SECTOR: u64 = 512;

/// A write or truncate not yet synced, in the order it was made.
#[derive(Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    Truncate { size: u64 },
}

/// A file whose writes are volatile until [`Volatile::sync`].
#[derive(Debug)]
pub struct Volatile {
    /// The data file, by descriptor.
    file: File,
    /// The size readers see.
    size: u64,
    /// The smallest size since the last sync: data-file bytes at or past it are not the file's
    /// any more (a truncate that is not synced yet, or bytes written back past it).
    low: u64,
    /// Pages written since the last sync, by page index, each `PAGE` bytes.
    dirty: BTreeMap<u64, Vec<u8>>,
    /// What [`Volatile::write_back`] may still move to the data file, oldest first.
    pending: VecDeque<Pending>,
}

impl Volatile {
    /// The data `file`, whose current contents (`size` bytes) are durable.
    pub fn new(file: File, size: u64) -> Self {
        Self {
            file,
            size,
            low: size,
            dirty: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written and not yet synced (whole pages).
    pub fn unsynced_bytes(&self) -> u64 {
        self.dirty.len() as u64 * PAGE
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.file.read_at(&mut buf[got..], offset + got as u64)?;
            if n == 0 {
                // Past the data file's end: zeros, as a sparse file reads.
                buf[got..].fill(0);
                break;
            }
            got += n;
        }
        Ok(())
    }

    fn page(&mut self, index: u64) -> io::Result<&mut Vec<u8>> {
        if !self.dirty.contains_key(&index) {
            let mut page = vec![0u8; PAGE as usize];
            let start = index * PAGE;
            if start < self.low {
                let n = (self.low - start).min(PAGE) as usize;
                self.read_backing(&mut page[..n], start)?;
            }
            self.dirty.insert(index, page);
        }
        self.dirty
            .get_mut(&index)
            .ok_or_else(|| io::Error::other("page vanished"))
    }

    /// Up to `len` bytes from `offset` (fewer at the end of the file).
    pub fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let durable_end = end.min(self.low);
        if offset < durable_end {
            self.read_backing(&mut out[..(durable_end - offset) as usize], offset)?;
        }
        for (&index, page) in self.dirty.range(offset / PAGE..=(end - 1) / PAGE) {
            let page_start = index * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
        }
        Ok(out)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (index, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - done);
            self.page(index)?[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.size = self.size.max(offset + data.len() as u64);
        self.pending.push_back(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> io::Result<()> {
        if size < self.size {
            self.dirty.retain(|&index, _| index * PAGE < size);
            if !size.is_multiple_of(PAGE) {
                self.page(size / PAGE)?[(size % PAGE) as usize..].fill(0);
            }
            self.low = self.low.min(size);
        }
        self.size = size;
        self.pending.push_back(Pending::Truncate { size });
        Ok(())
    }

    /// Moves the oldest `count` unsynced operations to the data file, as a disk's cache drains
    /// on its own; with `torn`, the last of them only up to `torn` sectors of it. Nothing
    /// readers see changes, and nothing becomes durable by promise: a power cut may simply find
    /// these bytes there.
    pub fn write_back(&mut self, count: usize, torn: Option<u64>) -> io::Result<()> {
        for i in 0..count {
            let Some(op) = self.pending.pop_front() else {
                break;
            };
            match op {
                Pending::Write { offset, mut data } => {
                    let last = i + 1 == count;
                    if let (true, Some(sectors)) = (last, torn) {
                        // A write that straddles sectors reaches the disk as far as a sector
                        // boundary; the rest stays pending.
                        let boundary = (offset / SECTOR + sectors.max(1)) * SECTOR;
                        let keep = usize::try_from(boundary.saturating_sub(offset))
                            .unwrap_or(usize::MAX)
                            .min(data.len());
                        let rest = data.split_off(keep);
                        self.file.write_all_at(&data, offset)?;
                        if !rest.is_empty() {
                            self.pending.push_front(Pending::Write {
                                offset: offset + keep as u64,
                                data: rest,
                            });
                        }
                    } else {
                        self.file.write_all_at(&data, offset)?;
                    }
                }
                Pending::Truncate { size } => self.file.set_len(size)?,
            }
        }
        Ok(())
    }

    /// Unsynced operations [`Volatile::write_back`] could still move.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Makes what the file holds now durable: the pages written go to the data file, which is
    /// then synced.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.set_len(self.low)?;
        for (&index, page) in &self.dirty {
            let start = index * PAGE;
            if start >= self.size {
                continue;
            }
            let n = (self.size - start).min(PAGE) as usize;
            self.file.write_all_at(&page[..n], start)?;
        }
        self.file.set_len(self.size)?;
        self.file.sync_all()?;
        self.dirty.clear();
        self.pending.clear();
        self.low = self.size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir, name: &str) -> (Volatile, std::path::PathBuf) {
        let path = dir.path().join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("open");
        let size = file.metadata().expect("metadata").len();
        (Volatile::new(file, size), path)
    }

    #[test]
    fn writes_are_read_back_but_reach_the_backing_file_only_on_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut v, path) = open(&dir, "f");
        v.write(0, b"hello").expect("write");
        v.write(PAGE - 2, b"across").expect("write");
        assert_eq!(v.read(0, 5).expect("read"), b"hello");
        assert_eq!(v.read(PAGE - 2, 6).expect("read"), b"across");
        assert_eq!(v.size(), PAGE + 4);
        assert_eq!(
            std::fs::read(&path).expect("backing").len(),
            0,
            "nothing durable yet"
        );
        v.sync().expect("sync");
        let backing = std::fs::read(&path).expect("backing");
        assert_eq!(&backing[..5], b"hello");
        assert_eq!(&backing[PAGE as usize - 2..], b"across");
        assert_eq!(v.unsynced_bytes(), 0);
        assert_eq!(v.pending(), 0);
    }

    #[test]
    fn an_unsynced_truncate_and_overwrite_leave_the_durable_file_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut v, path) = open(&dir, "f");
        v.write(0, &[1u8; 10_000]).expect("write");
        v.sync().expect("sync");
        v.truncate(100).expect("truncate");
        v.write(50, &[2u8; 10]).expect("write");
        assert_eq!(v.size(), 100);
        let now = v.read(0, 200).expect("read");
        assert_eq!(now.len(), 100);
        assert_eq!(&now[48..62], &[1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]);
        assert_eq!(
            std::fs::read(&path).expect("backing"),
            vec![1u8; 10_000],
            "a power cut now finds the synced file"
        );
        // Growing again after the truncate reads zeros, not the old bytes.
        v.truncate(5_000).expect("grow");
        assert!(v.read(100, 4_900).expect("read").iter().all(|b| *b == 0));
        v.sync().expect("sync");
        let backing = std::fs::read(&path).expect("backing");
        assert_eq!(backing.len(), 5_000);
        assert!(backing[100..].iter().all(|b| *b == 0));
    }

    #[test]
    fn write_back_moves_a_prefix_of_the_writes_in_order_the_last_one_torn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut v, path) = open(&dir, "f");
        v.write(0, &[1u8; 1000]).expect("write");
        v.write(1000, &[2u8; 3000]).expect("write");
        v.write(0, &[3u8; 10]).expect("write");
        // The first write whole, the second up to its first sector boundary past 1000 (1024),
        // the third not at all.
        v.write_back(2, Some(1)).expect("write back");
        let disk = std::fs::read(&path).expect("backing");
        assert_eq!(disk.len(), 1024);
        assert!(disk[..1000].iter().all(|b| *b == 1));
        assert!(disk[1000..].iter().all(|b| *b == 2));
        // Readers still see everything written, in its latest form.
        let now = v.read(0, 4000).expect("read");
        assert_eq!(&now[..10], &[3u8; 10]);
        assert!(now[1000..].iter().all(|b| *b == 2));
        assert_eq!(v.pending(), 2, "the rest of the torn write and the third");
        v.write_back(10, None).expect("write back the rest");
        let disk = std::fs::read(&path).expect("backing");
        assert_eq!(disk.len(), 4000);
        assert_eq!(&disk[..10], &[3u8; 10]);
    }

    #[test]
    fn written_back_bytes_past_an_unsynced_truncate_are_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut v, _) = open(&dir, "f");
        v.write(0, &[7u8; 2 * PAGE as usize]).expect("write");
        v.truncate(10).expect("truncate");
        v.write_back(1, None).expect("the write, not the truncate");
        v.truncate(2 * PAGE).expect("grow");
        assert!(v.read(10, 2 * PAGE).expect("read").iter().all(|b| *b == 0));
    }
}
