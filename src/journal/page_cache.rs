//! Handing the journal file's written pages back to the kernel.
//!
//! A journal only appends: once a batch is committed and checkpointed into
//! the database file, its pages in the OS page cache are read again only
//! to upload it and to delete it (see below). Left there, they fill
//! memory, and every new batch lands in page-cache pages the kernel takes
//! fresh from its free memory.
//! On a virtual machine that returns free memory to its host (free page
//! reporting, ballooning) a fresh page costs a host fault: writing 1 GB to
//! a new file took 4.9 s of CPU on the 2-core test VM, against 0.15–0.25 s
//! when each written and synced 16 MiB was dropped from the cache
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`) so that the next writes reuse the
//! same pages. At 1024 ch × 30 kHz that copy was ~45 % of the journal
//! thread.
//!
//! The advice goes to a descriptor SQLite already has open on the file,
//! found in `/proc/self/fd`: opening and later closing a descriptor of our
//! own would drop every POSIX lock the process holds on the file,
//! SQLite's included (fcntl locks belong to the process and the inode, and
//! any close releases them all). The advice never loses data: dirty pages
//! are written back first, not discarded; only clean ones leave the cache.
//!
//! Only for a journal whose quota the page cache could not hold anyway
//! (`max_bytes` over half the machine's memory; `neuroedge bench`'s
//! unbounded journals): SQLite reads a batch's pages back to delete it
//! (evicted at the quota, or uploaded and past retention), with or
//! without `auto_vacuum` (measured: 40 MiB of blobs deleted, 40–64 MiB
//! read). While the quota fits in memory those pages stay cached and
//! deleting is free; released, a 1024-ch rig at its 8 GiB quota read
//! 4.7 GB back in 70 s and its journal fell behind (6 % dropped in 300 s).

use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};

/// Committed bytes after which the writer releases the file's cached
/// pages: a few checkpoints' worth at high rates (a checkpoint runs once
/// the WAL holds 1000 pages), half an hour at the idle default run's
/// ~4.5 KB/s, whose pages the uplink may still read.
pub const RELEASE_EVERY_BYTES: u64 = 16 << 20;

/// Where the journal file is, and which of the process's descriptors is
/// open on it.
#[derive(Debug)]
pub struct PageCache {
    /// The file's canonical path (as `/proc/self/fd` links show it).
    file: Option<PathBuf>,
    fd: Option<RawFd>,
}

impl PageCache {
    /// For the journal at `path` with quota `max_bytes`: `None` when the
    /// quota fits in half the machine's memory (see the module's text).
    pub fn for_journal(path: &Path, max_bytes: u64) -> Option<PageCache> {
        let memory = memory_bytes()?;
        (max_bytes > memory / 2).then(|| PageCache::new(path))
    }

    pub fn new(path: &Path) -> PageCache {
        PageCache {
            file: std::fs::canonicalize(path).ok(),
            fd: None,
        }
    }

    /// Drop the file's clean cached pages (and start writing back dirty
    /// ones). Ok(false): no descriptor of the process is open on it.
    pub fn release(&mut self) -> std::io::Result<bool> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let fd = match self.fd.filter(|&fd| open_on(fd, file)) {
            Some(fd) => fd,
            None => match find_fd(file)? {
                Some(fd) => fd,
                None => return Ok(false),
            },
        };
        self.fd = Some(fd);
        nix::fcntl::posix_fadvise(
            fd,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(std::io::Error::from)?;
        Ok(true)
    }
}

/// The machine's memory (`MemTotal`), bytes.
pub(super) fn memory_bytes() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

fn open_on(fd: RawFd, file: &Path) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|p| p == file)
}

fn find_fd(file: &Path) -> std::io::Result<Option<RawFd>> {
    for e in std::fs::read_dir("/proc/self/fd")? {
        let e = e?;
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        if open_on(fd, file) {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    /// Bytes of `p` in the page cache (util-linux's `fincore`).
    pub(crate) fn cached(p: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(p)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    #[test]
    fn drops_the_cached_pages_through_the_descriptor_already_open_and_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let mut f = std::fs::File::create(&p).unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let mut pc = PageCache::new(&p);
        // Dirty pages are written back, not discarded.
        assert!(pc.release().unwrap());
        assert_eq!(pc.fd, Some(f.as_raw_fd()));
        assert_eq!(std::fs::read(&p).unwrap(), data);
        f.sync_all().unwrap();
        assert_eq!(cached(&p), 1 << 20);
        assert!(pc.release().unwrap());
        assert_eq!(cached(&p), 0);
        assert_eq!(std::fs::read(&p).unwrap(), data);
    }

    #[test]
    fn only_a_quota_bigger_than_half_the_memory_releases() {
        let mem = memory_bytes().unwrap();
        assert!(mem > 64 << 20, "{mem}");
        let p = Path::new("/tmp/j.db");
        assert!(PageCache::for_journal(p, mem / 2).is_none());
        assert!(PageCache::for_journal(p, 2 << 30).is_none() || mem < 4 << 30);
        assert!(PageCache::for_journal(p, mem / 2 + 1).is_some());
        assert!(PageCache::for_journal(p, u64::MAX / 4).is_some());
    }

    #[test]
    fn a_file_nobody_has_open_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("closed.db");
        std::fs::write(&p, b"x").unwrap();
        assert!(!PageCache::new(&p).release().unwrap());
        assert!(!PageCache::new(&d.path().join("missing.db"))
            .release()
            .unwrap());
    }
}
