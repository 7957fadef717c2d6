//! The serving side's chunk readers: a few threads that read requested
//! chunks from disk and check them before they are sent.
//!
//! A small chunk whose bytes are all in the page cache is read and checked
//! on the async thread that asks for it ([`Inline`]: up to [`INLINE_MAX`]
//! on plain connections, 64 KiB on encrypted ones): `preadv2` with
//! `RWF_NOWAIT` never waits for the disk, and it saves a hand-off to a
//! thread and back. So is a small chunk of a file on tmpfs, which refuses
//! `RWF_NOWAIT` but never waits for a disk either. Anything else is
//! blocking IO, so it runs off the async threads; a small fixed set of
//! threads takes jobs from one queue instead of a blocking-pool task
//! per chunk, so that under load a reader finds the next job without being
//! woken (a `strace` of a 1 GiB fetch counted about five futex calls per
//! chunk served with a blocking-pool task each). The queue is bounded by
//! its callers: each connection reads at most [`READ_AHEAD`] chunks ahead,
//! plus the one that became its next reply without being read ahead, so at
//! most [`MAX_CONNECTIONS`] × ([`READ_AHEAD`] + 1) jobs wait, and a job
//! whose connection has closed is dropped unread.
//!
//! [`READ_AHEAD`]: crate::server::READ_AHEAD
//! [`MAX_CONNECTIONS`]: crate::server::MAX_CONNECTIONS

use std::io;
use std::sync::{mpsc, Arc, Mutex};

use p2pfs_proto::pool::ChunkBuf;
use tokio::sync::oneshot;
use tracing::warn;

use crate::store::{Ctime, Holding};

/// Largest chunk read and checked on the async thread that asks for it,
/// when every byte of it is in the page cache: no hand-off to a reader
/// thread and back (two context switches per chunk). Reading and hashing
/// 256 KiB from the page cache takes about 75 µs, within what a task may
/// run between awaits.
const INLINE_MAX: usize = p2pfs_proto::limits::BULK_CHUNK_SIZE as usize;

/// Fewest and most reader threads per peer (one per core in between): a
/// few parallel reads keep a disk busy; hashing needs no more than the cores.
pub(crate) const READER_THREADS: (usize, usize) = (2, 8);

/// The number of reader threads for this machine.
pub(crate) fn reader_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(READER_THREADS.0, |n| n.get())
        .clamp(READER_THREADS.0, READER_THREADS.1)
}

/// Which chunks may be read and checked on the asking (async) thread.
///
/// Small cached chunks always may. Large ones only on plain connections:
/// there the two processes of a transfer need all of both cores, and a
/// hand-off to a reader thread costs more than it frees (1 GiB fetches of
/// 256 KiB chunks took 0.44–0.50 s read on the asking thread against
/// 0.48–0.63 s handed off, 3 interleaved sets of 3). An encrypted
/// connection's task also seals every record, and reading and hashing
/// 256 KiB chunks on the same thread made that one thread the bound (0.6 s
/// of a 0.7 s fetch); handed off, reading overlaps sealing (0.49–0.71 s
/// against 0.61–0.72 s). For 64 KiB chunks the hand-offs cost more than
/// the overlap gains (64 MiB encrypted fetches: 0.05–0.12 s handed off
/// against 0.04–0.08 s on the asking thread). A chunk already checked
/// against its hash (see [`crate::store::Ctime`]) is only read, which costs
/// little next to sealing it, so an encrypted connection reads such chunks
/// on its own thread at any size (1 GiB fetches from a fresh seeder, 3
/// interleaved sets of 4: 0.50–0.68 s against 0.63–0.74 s handed off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inline {
    /// Chunks up to [`INLINE_MAX`] (plain connections).
    WhenCached,
    /// Chunks up to [`SMALL_INLINE_MAX`], and chunks of any size that need
    /// no hashing (encrypted connections).
    SmallWhenCached,
}

/// Largest chunk read on the asking thread of an encrypted connection.
const SMALL_INLINE_MAX: usize = p2pfs_proto::limits::MIN_CHUNK_SIZE as usize;

/// Why a chunk read for serving was not sent.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The file changed on disk (size, modification time or content): it
    /// must be withdrawn, never served.
    Changed(&'static str),
    /// Reading failed.
    Io(io::Error),
    /// The peer is shutting down.
    Stopped,
}

struct Job {
    holding: Arc<Holding>,
    index: u32,
    /// The look at the file's ctime the asking thread took before handing
    /// the read over.
    before: Option<Ctime>,
    done: oneshot::Sender<Result<ChunkBuf, ReadFailure>>,
}

/// Hands chunk reads to the reader threads.
pub(crate) struct ChunkReader {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// Largest chunk read on the asking thread when cached.
    inline_max: usize,
    /// Reads handed to the threads so far.
    handed_off: std::sync::atomic::AtomicU64,
}

impl ChunkReader {
    /// Starts `threads` reader threads (at least one).
    pub(crate) fn start(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("p2pfs-read-{n}"))
                .spawn(move || loop {
                    // One thread waits on the queue, the others on the lock.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // Its connection closed while the job waited.
                    if job.done.is_closed() {
                        continue;
                    }
                    let _ = job
                        .done
                        .send(read_and_check(&job.holding, job.index, job.before));
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a chunk reader thread");
            }
        }
        Self {
            tx: Mutex::new(Some(tx)),
            inline_max: INLINE_MAX,
            handed_off: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Reads chunk `index` of `holding` and checks it: the file's size and
    /// modification time, and the chunk's hash after reading. With
    /// [`Inline::WhenCached`], a small chunk wholly in the page cache is
    /// read and checked right here; any other goes to the reader threads.
    ///
    /// # Errors
    /// [`ReadFailure`].
    pub(crate) async fn read(
        &self,
        holding: Arc<Holding>,
        index: u32,
        inline: Inline,
    ) -> Result<ChunkBuf, ReadFailure> {
        let Some(tx) = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .cloned()
        else {
            return Err(ReadFailure::Stopped);
        };
        let before = holding.ctime();
        let max = match inline {
            Inline::WhenCached => self.inline_max,
            Inline::SmallWhenCached if before.is_some_and(|c| holding.checked(index, c.ns)) => {
                self.inline_max
            }
            Inline::SmallWhenCached => self.inline_max.min(SMALL_INLINE_MAX),
        };
        if let Some(checked) = read_cached_and_check(&holding, index, max, before) {
            return checked;
        }
        let (done, outcome) = oneshot::channel();
        self.handed_off
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match tx.send(Job {
            holding,
            index,
            before,
            done,
        }) {
            Ok(()) => outcome.await.unwrap_or(Err(ReadFailure::Stopped)),
            Err(_) => Err(ReadFailure::Stopped),
        }
    }

    /// Reads handed to the threads so far.
    #[cfg(test)]
    fn handed_off(&self) -> u64 {
        self.handed_off.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the threads once the jobs already queued are done.
    pub(crate) fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Reads and checks chunk `index` on the calling (async) thread when it is
/// at most `max` bytes long and wholly in the page cache; `None`
/// otherwise. `before`: a look at the file's ctime before the read.
fn read_cached_and_check(
    holding: &Holding,
    index: u32,
    max: usize,
    before: Option<Ctime>,
) -> Option<Result<ChunkBuf, ReadFailure>> {
    let data = holding.read_chunk_cached(index, max)?;
    // The same checks as `read_and_check`, in another order: the cheap
    // read first, so that a chunk that is not cached costs one system call.
    if !holding.unchanged_on_disk() {
        return Some(Err(ReadFailure::Changed("the file changed on disk")));
    }
    Some(check(holding, index, data, before))
}

/// Never serve a file that changed under us: check its size and
/// modification time first, and the chunk's hash after reading.
/// `before`: a look at the file's ctime taken before this call.
fn read_and_check(
    holding: &Holding,
    index: u32,
    before: Option<Ctime>,
) -> Result<ChunkBuf, ReadFailure> {
    if !holding.unchanged_on_disk() {
        return Err(ReadFailure::Changed("the file changed on disk"));
    }
    let data = holding.read_chunk(index).map_err(ReadFailure::Io)?;
    check(holding, index, data, before)
}

/// Checks a chunk read from disk against its hash, unless it was already
/// checked while the file had the status-change time (ctime) it has now,
/// after the read: a change to the file's bytes during the read would have
/// changed it. `before` is the look at the ctime before the read; a chunk
/// whose hash matched is remembered as checked only if the ctime did not
/// move during the read and had settled (see [`crate::store::Ctime`]).
/// Files being downloaded (no ctime) are always hashed.
fn check(
    holding: &Holding,
    index: u32,
    data: ChunkBuf,
    before: Option<Ctime>,
) -> Result<ChunkBuf, ReadFailure> {
    let after = holding.ctime();
    if let Some(a) = after {
        if holding.checked(index, a.ns) {
            return Ok(data);
        }
    }
    if holding.verify(index, &data) {
        if let (Some(b), Some(a)) = (before, after) {
            if b.settled && b.ns == a.ns {
                holding.mark_checked(index, a.ns);
            }
        }
        Ok(data)
    } else {
        Err(ReadFailure::Changed(
            "a chunk read from disk no longer matches its hash",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HoldingKind;
    use p2pfs_proto::Bitfield;
    use std::time::Duration;

    const CHUNK: usize = p2pfs_proto::limits::MIN_CHUNK_SIZE as usize;

    fn holding(path: &std::path::Path) -> Arc<Holding> {
        published(path, crate::hashing::build_manifest(path).unwrap())
    }

    /// A complete published file at `path`, described by `manifest`.
    fn published(path: &std::path::Path, manifest: p2pfs_proto::Manifest) -> Arc<Holding> {
        let file = std::fs::File::open(path).unwrap();
        let stamp = crate::repo::Stamp::of_file(&file).unwrap();
        let n = manifest.chunk_count();
        Arc::new(Holding::new(
            Arc::new(manifest),
            file,
            path.to_path_buf(),
            Bitfield::full(n),
            HoldingKind::Published { name: "f".into() },
            Some(stamp),
        ))
    }

    #[tokio::test]
    async fn a_checked_chunk_is_hashed_again_only_after_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // A manifest that is wrong about chunk 1: only a hash would tell.
        let mut manifest = crate::hashing::build_manifest(&path).unwrap();
        manifest.hashes[1] = p2pfs_proto::types::hash_chunk(b"something else");
        let h = published(&path, manifest);
        let reader = ChunkReader::start(1);
        for inline in [Inline::WhenCached, Inline::SmallWhenCached] {
            assert!(matches!(
                within(reader.read(h.clone(), 1, inline)).await,
                Err(ReadFailure::Changed(_))
            ));
        }
        // Recorded as hashed at the present ctime (as a publish that hashed
        // the file does): served as it is.
        let ctime = h.ctime().expect("a complete file has a ctime").ns;
        h.mark_all_checked(ctime);
        for inline in [Inline::WhenCached, Inline::SmallWhenCached] {
            let chunk = within(reader.read(h.clone(), 1, inline)).await.unwrap();
            assert_eq!(&*chunk, &data[CHUNK..]);
        }
        // A change of status that leaves size, modification time and bytes
        // alone still moves the ctime: every chunk is hashed again.
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
        std::thread::sleep(crate::store::CTIME_SETTLED * 2);
        assert_ne!(h.ctime().unwrap().ns, ctime);
        assert!(matches!(
            within(reader.read(h.clone(), 1, Inline::WhenCached)).await,
            Err(ReadFailure::Changed(_))
        ));
        // Chunk 0 matches: hashed once more, then remembered at the new ctime.
        let now = h.ctime().unwrap().ns;
        assert!(!h.checked(0, now));
        assert_eq!(
            &*within(reader.read(h.clone(), 0, Inline::WhenCached))
                .await
                .unwrap(),
            &data[..CHUNK]
        );
        assert!(h.checked(0, now));
        assert!(!h.checked(0, ctime));
        reader.stop();
    }

    #[tokio::test]
    async fn encrypted_connections_read_large_checked_chunks_on_their_own_thread() {
        // In /dev/shm: always "cached" (a disk-backed /tmp may refuse reads
        // that must not wait and send every read to the threads).
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let path = dir.path().join("f");
        let big = p2pfs_proto::limits::BULK_CHUNK_SIZE as usize;
        let data: Vec<u8> = (0..2 * big).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        std::thread::sleep(crate::store::CTIME_SETTLED * 2);
        let manifest = p2pfs_proto::Manifest {
            size: data.len() as u64,
            chunk_size: big as u32,
            hashes: data
                .chunks(big)
                .map(p2pfs_proto::types::hash_chunk)
                .collect(),
        };
        let h = published(&path, manifest);
        let reader = ChunkReader::start(1);
        // Not checked yet: hashing a large chunk goes to a thread.
        let chunk = within(reader.read(h.clone(), 0, Inline::SmallWhenCached))
            .await
            .unwrap();
        assert_eq!(&*chunk, &data[..big]);
        let handed = reader.handed_off();
        if crate::store::in_memory_fs(&h.file) || h.read_chunk_cached(1, big).is_some() {
            assert_eq!(handed, 1, "a large unchecked chunk is hashed on a thread");
            // Checked now: read on the asking thread.
            let chunk = within(reader.read(h.clone(), 0, Inline::SmallWhenCached))
                .await
                .unwrap();
            assert_eq!(&*chunk, &data[..big]);
            assert_eq!(
                reader.handed_off(),
                handed,
                "a checked chunk needs no thread"
            );
        }
        reader.stop();
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("answers within 10 s")
    }

    #[tokio::test]
    async fn reads_checked_chunks_and_refuses_a_file_changed_in_place() {
        // Cached chunks on the asking thread, then everything on the
        // reader threads.
        for inline_max in [INLINE_MAX, 0] {
            changed_in_place(inline_max, None).await;
        }
        // tmpfs refuses reads that must not wait (on this kernel), but its
        // files are in memory: read on the asking thread all the same.
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            changed_in_place(INLINE_MAX, Some(shm)).await;
        }
    }

    async fn changed_in_place(inline_max: usize, base: Option<&std::path::Path>) {
        let dir = match base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            // The build's own folder: on a disk (a tmpfs /tmp would not
            // allow reads that must not wait).
            None => {
                let build = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target");
                std::fs::create_dir_all(build).unwrap();
                tempfile::tempdir_in(build).unwrap()
            }
        };
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..2 * CHUNK + 10).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Chunks are remembered as checked only once the ctime has settled.
        std::thread::sleep(crate::store::CTIME_SETTLED * 2);
        let h = holding(&path);
        let in_memory = crate::store::in_memory_fs(&std::fs::File::open(&path).unwrap());
        if inline_max > 0 && (base.is_none() || in_memory) {
            // Just written, so in the page cache (or on a tmpfs): read
            // without the threads, the first time and after.
            for _ in 0..2 {
                assert_eq!(
                    h.read_chunk_cached(1, inline_max).as_deref(),
                    Some(&data[CHUNK..2 * CHUNK])
                );
            }
            assert_eq!(h.read_chunk_cached(1, CHUNK - 1), None, "too long");
        }
        if base.is_some() {
            assert!(in_memory, "{} is not a tmpfs", dir.path().display());
        }
        let mut reader = ChunkReader::start(2);
        reader.inline_max = inline_max;
        let last = within(reader.read(h.clone(), 2, Inline::WhenCached))
            .await
            .unwrap();
        assert_eq!(&*last, &data[2 * CHUNK..]);
        let first = within(reader.read(h.clone(), 0, Inline::WhenCached))
            .await
            .unwrap();
        assert_eq!(&*first, &data[..CHUNK]);
        // The encrypted connections' limit reads the same bytes.
        let first = within(reader.read(h.clone(), 0, Inline::SmallWhenCached))
            .await
            .unwrap();
        assert_eq!(&*first, &data[..CHUNK]);

        // Served chunks are remembered as checked at the file's ctime.
        assert!(h.checked(0, h.ctime().unwrap().ns));

        // Same size, modification time put back: only the hash tells.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut changed = data.clone();
        changed[5] ^= 0xff;
        std::fs::write(&path, &changed).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        for inline in [Inline::WhenCached, Inline::SmallWhenCached] {
            assert!(matches!(
                within(reader.read(h.clone(), 0, inline)).await,
                Err(ReadFailure::Changed(_))
            ));
        }

        reader.stop();
        assert!(matches!(
            within(reader.read(h, 1, Inline::WhenCached)).await,
            Err(ReadFailure::Stopped)
        ));
    }
}
