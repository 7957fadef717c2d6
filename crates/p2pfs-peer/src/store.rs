//! What this peer holds and may serve: published files and downloads, by
//! content id. A chunk is served only when its bit is set, so a download's
//! chunks become servable the moment they are verified.
//!
//! Locking: one `RwLock` over the map (read-mostly: every chunk request
//! reads it), and one `Mutex` per holding over its bitfield. Neither is held
//! across an await.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use p2pfs_proto::pool::ChunkBuf;
use p2pfs_proto::{Bitfield, ContentId, Manifest};

use crate::repo::Stamp;
use crate::spread::{ConnId, Decision, Spread};

/// Why a holding exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldingKind {
    /// Published by this peer under `name`.
    Published {
        /// Published name.
        name: String,
    },
    /// Being fetched (or fetched) under `name`.
    Download {
        /// Published name it was fetched as.
        name: String,
    },
}

/// One content this peer can serve chunks of.
#[derive(Debug)]
pub struct Holding {
    /// The manifest.
    pub manifest: Arc<Manifest>,
    /// Open file the chunks are read from (stays valid across the rename of
    /// a finished download).
    pub file: Arc<File>,
    /// Where the file is (the `.part` path while downloading).
    pub path: Mutex<PathBuf>,
    /// Verified chunks.
    pub have: Mutex<Bitfield>,
    /// Why we hold it.
    pub kind: HoldingKind,
    /// For a complete file in place (published or fetched): its size and
    /// modification time, checked before serving; `None` while a download
    /// writes it.
    pub stamp: Mutex<Option<Stamp>>,
    /// Chunks of the complete file already checked against their hashes
    /// while the file had its present status-change time: served without
    /// hashing them again ([`Holding::checked`]).
    checked: Mutex<Option<Checked>>,
    /// Initial-seeding ledger, made on the first request once complete.
    spread: Mutex<Option<Spread>>,
    /// It served chunks before it was complete: a downloader in a swarm,
    /// where each chunk already has other holders. Its initial-seeding
    /// rules would only hold back chunks others are waiting for.
    served_incomplete: AtomicBool,
    /// Bumped whenever a chunk becomes held (downloaders subscribed with
    /// `PeerRequestHave` are told).
    changes: tokio::sync::watch::Sender<u64>,
    /// How a chunk may be read on an async thread: [`READS_NOWAIT`] until
    /// the file's filesystem refuses a read that must not wait (tmpfs
    /// does), then [`READS_IN_MEMORY`] if the file lives in memory anyway,
    /// else [`READS_THREADED`] (no more zeroed buffers for reads bound to
    /// fail).
    cached_reads: AtomicU8,
}

/// Chunks checked against their hashes while the file's status-change
/// time (ctime) was `ctime_ns`.
///
/// Any change to a file's bytes through the filesystem (a write, a
/// truncation, a write through a shared mapping) sets its ctime, and so
/// does putting its modification time back; the kernel sets it before it
/// changes the bytes. So a chunk that matched its hash when read between
/// two looks at an unchanged ctime still matches while the ctime stays the
/// same, and hashing it again on every serve (a tenth of a core-second per
/// GiB) buys nothing. Timestamps move in clock ticks, so two changes within
/// one tick may leave the same ctime: a chunk is only remembered when the
/// look before its read came [`CTIME_SETTLED`] after the ctime, so that any
/// later change lands in a later tick.
#[derive(Debug)]
struct Checked {
    ctime_ns: i64,
    chunks: Bitfield,
}

/// How long after a file's status-change time a look at it must come for
/// its chunks to be remembered as checked: more than a clock tick (1 to
/// 10 ms on Linux), which is how coarse file timestamps are.
pub const CTIME_SETTLED: std::time::Duration = std::time::Duration::from_millis(20);

/// A look at an open file's status-change time (ctime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctime {
    /// Nanoseconds since the Unix epoch.
    pub ns: i64,
    /// The look came at least [`CTIME_SETTLED`] after that time.
    pub settled: bool,
}

/// Reads that must not wait (`preadv2` with `RWF_NOWAIT`).
const READS_NOWAIT: u8 = 0;
/// Plain reads: the file is on a filesystem in memory (tmpfs, ramfs), so a
/// read never waits for a disk.
const READS_IN_MEMORY: u8 = 1;
/// Reads only on a reader thread.
const READS_THREADED: u8 = 2;

impl Holding {
    /// A holding of the open `file` at `path`.
    pub fn new(
        manifest: Arc<Manifest>,
        file: File,
        path: PathBuf,
        have: Bitfield,
        kind: HoldingKind,
        stamp: Option<Stamp>,
    ) -> Self {
        Self {
            manifest,
            file: Arc::new(file),
            path: Mutex::new(path),
            have: Mutex::new(have),
            kind,
            stamp: Mutex::new(stamp),
            checked: Mutex::new(None),
            spread: Mutex::new(None),
            served_incomplete: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(0),
            cached_reads: AtomicU8::new(READS_NOWAIT),
        }
    }

    /// Marks chunk `index` held (verified and written).
    pub fn mark_held(&self, index: u32) {
        if let Ok(mut have) = self.have.lock() {
            have.set(index);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Watches a counter that changes whenever a chunk becomes held.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A copy of the held chunks.
    pub fn have(&self) -> Bitfield {
        self.have.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.have.lock().map(|b| b.is_full()).unwrap_or(false)
    }

    /// Decides a request of `conn` for chunk `index` by the initial-seeding
    /// rules ([`crate::spread`]); only a holding that was complete before it
    /// served anyone defers (a downloader of a swarm never does).
    pub fn decide(&self, conn: ConnId, index: u32, asked_again: bool) -> Decision {
        if index >= self.manifest.chunk_count() {
            return Decision::Serve;
        }
        if !self.is_complete() {
            self.served_incomplete.store(true, Ordering::Relaxed);
            return Decision::Serve;
        }
        if self.served_incomplete.load(Ordering::Relaxed) {
            return Decision::Serve;
        }
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        spread
            .get_or_insert_with(|| Spread::new(self.manifest.chunk_count()))
            .decide(conn, index, Instant::now(), asked_again)
    }

    /// Takes back chunk `index` from `conn`: it could not be sent.
    pub fn unhand(&self, conn: ConnId, index: u32) {
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spread.as_mut() {
            s.unhand(conn, index);
        }
    }

    /// Records that chunk `index` was written to `conn`.
    pub fn written(&self, conn: ConnId, index: u32) {
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spread.as_mut() {
            s.written(conn, index, Instant::now());
        }
    }

    /// Releases the chunks handed to `conn` (it closed).
    pub fn forget(&self, conn: ConnId) {
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spread.as_mut() {
            s.forget(conn);
        }
    }

    /// Whether the file in place still has the size and modification time
    /// it was hashed or completed at (always true while downloading).
    pub fn unchanged_on_disk(&self) -> bool {
        let stamp = *self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        match stamp {
            None => true,
            Some(s) => Stamp::of(&self.path()).is_ok_and(|now| now == s),
        }
    }

    /// A look at the open file's status-change time (ctime), for a complete
    /// file in place; `None` while a download writes it (its
    /// own writes change it all the time) or if it cannot be read.
    pub fn ctime(&self) -> Option<Ctime> {
        self.stamp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()?;
        ctime_of(&self.file)
    }

    /// Whether chunk `index` was checked against its hash while the file's
    /// ctime was `ctime_ns`.
    pub fn checked(&self, index: u32, ctime_ns: i64) -> bool {
        let checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        checked
            .as_ref()
            .is_some_and(|c| c.ctime_ns == ctime_ns && c.chunks.get(index))
    }

    /// Records that chunk `index` matched its hash when read between two
    /// looks at the file that both saw ctime `ctime_ns`. The chunks
    /// checked under an older ctime are forgotten.
    pub fn mark_checked(&self, index: u32, ctime_ns: i64) {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        let c = match checked.as_mut() {
            Some(c) if c.ctime_ns == ctime_ns => c,
            _ => checked.insert(Checked {
                ctime_ns,
                chunks: Bitfield::new(self.manifest.chunk_count()),
            }),
        };
        c.chunks.set(index);
    }

    /// Records that every chunk was checked (the whole file was hashed
    /// through this holding's open file) while its ctime was `ctime_ns`.
    pub fn mark_all_checked(&self, ctime_ns: i64) {
        *self.checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Checked {
            ctime_ns,
            chunks: Bitfield::full(self.manifest.chunk_count()),
        });
    }

    /// Whether `data` is chunk `index` according to the manifest.
    pub fn verify(&self, index: u32, data: &[u8]) -> bool {
        self.manifest
            .chunk_hash(index)
            .is_some_and(|h| *h == p2pfs_proto::types::hash_chunk(data))
    }

    /// Whether chunk `index` is held.
    pub fn has(&self, index: u32) -> bool {
        self.have.lock().map(|b| b.get(index)).unwrap_or(false)
    }

    /// Reads chunk `index` into a pooled buffer (blocking IO).
    ///
    /// # Errors
    /// IO errors; `InvalidInput` for an index out of range.
    pub fn read_chunk(&self, index: u32) -> std::io::Result<ChunkBuf> {
        let (offset, len) = self.manifest.chunk_range(index).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "chunk index out of range")
        })?;
        // A pooled buffer is reused as it is: zeroing a fresh buffer per
        // chunk served was about 5 % of a seeder's CPU time.
        let mut buf = ChunkBuf::take(len as usize);
        let mut filled = 0;
        while filled < buf.len() {
            match rustix::io::pread(&*self.file, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file ended before the chunk did",
                    ))
                }
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf)
    }

    /// Reads chunk `index` only if every byte of it is in the page cache
    /// and it is at most `max` bytes long, without ever waiting for the
    /// disk (`preadv2` with `RWF_NOWAIT`). `None`: read it with
    /// [`Holding::read_chunk`] on a thread that may block; errors are
    /// reported there.
    ///
    /// On a filesystem in memory (tmpfs, which refuses `RWF_NOWAIT`), a
    /// plain read: it never waits for a disk either.
    pub fn read_chunk_cached(&self, index: u32, max: usize) -> Option<ChunkBuf> {
        let (offset, len) = self.manifest.chunk_range(index)?;
        let len = len as usize;
        if len > max {
            return None;
        }
        match self.cached_reads.load(Ordering::Relaxed) {
            READS_NOWAIT => match cached_read(&self.file, offset, len) {
                Ok(read) => read,
                Err(()) => {
                    let in_memory = in_memory_fs(&self.file);
                    self.cached_reads.store(
                        if in_memory {
                            READS_IN_MEMORY
                        } else {
                            READS_THREADED
                        },
                        Ordering::Relaxed,
                    );
                    if in_memory {
                        self.read_chunk(index).ok()
                    } else {
                        None
                    }
                }
            },
            READS_IN_MEMORY => self.read_chunk(index).ok(),
            _ => None,
        }
    }

    /// Current path.
    pub fn path(&self) -> PathBuf {
        self.path.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// A look at the status-change time (ctime) of an open file.
pub fn ctime_of(file: &File) -> Option<Ctime> {
    use std::os::unix::fs::MetadataExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let m = file.metadata().ok()?;
    let ns = m
        .ctime()
        .checked_mul(1_000_000_000)?
        .checked_add(m.ctime_nsec())?;
    let settled = i128::try_from(now.as_nanos()).ok()? - i128::from(ns)
        >= i128::try_from(CTIME_SETTLED.as_nanos()).ok()?;
    Some(Ctime { ns, settled })
}

/// `Ok(None)`: not all of it is cached, or any other error (a blocking
/// read reports it); `Err(())`: this file never allows such reads.
#[cfg(target_os = "linux")]
fn cached_read(file: &std::fs::File, offset: u64, len: usize) -> Result<Option<ChunkBuf>, ()> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let mut buf = ChunkBuf::take(len);
    // A short read means the rest is not cached: the caller reads it all
    // again on a reader thread (the cached part costs little).
    match preadv2(
        file,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) if n == len => Ok(Some(buf)),
        Err(Errno::OPNOTSUPP | Errno::INVAL) => Err(()),
        _ => Ok(None),
    }
}

/// Whether `file` lives on a filesystem kept in memory (tmpfs, ramfs).
#[cfg(target_os = "linux")]
pub(crate) fn in_memory_fs(file: &std::fs::File) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::fstatfs(file).is_ok_and(|st| {
        // `f_type`'s width differs between targets; the magic numbers are
        // 32-bit.
        #[allow(clippy::unnecessary_cast)]
        let kind = (st.f_type as u64) & 0xffff_ffff;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn in_memory_fs(_file: &std::fs::File) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn cached_read(_file: &std::fs::File, _offset: u64, _len: usize) -> Result<Option<ChunkBuf>, ()> {
    Err(())
}

/// The map of holdings.
#[derive(Debug, Default)]
pub struct Store {
    holdings: RwLock<HashMap<ContentId, Arc<Holding>>>,
}

impl Store {
    /// The holding of a content.
    pub fn get(&self, id: &ContentId) -> Option<Arc<Holding>> {
        self.holdings.read().ok()?.get(id).cloned()
    }

    /// Adds a holding unless one exists; returns the one in place.
    pub fn insert(&self, id: ContentId, holding: Holding) -> Arc<Holding> {
        let mut map = self.holdings.write().unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_insert_with(|| Arc::new(holding)).clone()
    }

    /// Adds a complete holding, replacing one that is still incomplete
    /// (a download of the same content); keeps an existing complete one.
    pub fn insert_complete(&self, id: ContentId, holding: Holding) -> Arc<Holding> {
        let mut map = self.holdings.write().unwrap_or_else(|e| e.into_inner());
        match map.get(&id) {
            Some(existing) if existing.is_complete() => existing.clone(),
            _ => {
                let h = Arc::new(holding);
                map.insert(id, h.clone());
                h
            }
        }
    }

    /// Removes a holding.
    pub fn remove(&self, id: &ContentId) {
        if let Ok(mut map) = self.holdings.write() {
            map.remove(id);
        }
    }

    /// Every holding.
    pub fn all(&self) -> Vec<(ContentId, Arc<Holding>)> {
        self.holdings
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = p2pfs_proto::limits::MIN_CHUNK_SIZE as usize;

    fn holding(dir: &std::path::Path, have: impl Fn(u32) -> bool) -> Holding {
        let path = dir.join("f");
        std::fs::write(&path, vec![7u8; 3 * CHUNK]).unwrap();
        let manifest = crate::hashing::build_manifest(&path).unwrap();
        let mut bits = Bitfield::new(manifest.chunk_count());
        for i in (0..manifest.chunk_count()).filter(|&i| have(i)) {
            bits.set(i);
        }
        Holding::new(
            Arc::new(manifest),
            File::open(&path).unwrap(),
            path,
            bits,
            HoldingKind::Download { name: "f".into() },
            None,
        )
    }

    #[test]
    fn a_complete_holding_sends_each_chunk_once_before_any_twice() {
        let dir = tempfile::tempdir().unwrap();
        let h = holding(dir.path(), |_| true);
        assert_eq!(h.decide(1, 0, false), Decision::Serve);
        assert!(matches!(h.decide(2, 0, false), Decision::Defer(_)));
    }

    #[test]
    fn a_downloader_that_served_while_incomplete_never_defers() {
        let dir = tempfile::tempdir().unwrap();
        let h = holding(dir.path(), |i| i == 0);
        assert_eq!(h.decide(1, 0, false), Decision::Serve);
        for i in 1..3 {
            h.mark_held(i);
        }
        assert!(h.is_complete());
        // Other downloaders of the swarm hold copies too: no initial
        // seeding rules.
        assert_eq!(h.decide(1, 1, false), Decision::Serve);
        assert_eq!(h.decide(2, 1, false), Decision::Serve);
        assert_eq!(h.decide(3, 1, false), Decision::Serve);
    }
}
