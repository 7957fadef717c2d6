//! A download's chunk writer: checks each received chunk against its hash
//! and writes it positionally into the `.part` file.
//!
//! A chunk is checked and written on the task that received it, while the
//! data is still in that core's cache and without waking another thread:
//! a write into the page cache takes tens of microseconds. A write can also
//! block for much longer (the kernel throttles writers while too much data
//! waits for the disk, or the file system is slow), and a blocked async
//! thread holds up every other task on it. So a write that took longer than
//! [`SLOW_WRITE`] and during which the thread slept sends the download's
//! next chunks, for [`HAND_OFF_FOR`], to a writer thread of its own, started
//! on first use and fed by a bounded queue that pushes back on the sources
//! when the disk falls behind. A write that was only slow because the
//! thread was preempted does not: a thread waiting for a core holds up its
//! tasks wherever it writes, and on a busy machine most slow writes are of
//! that kind (a 1 GiB fetch from 4 seeders on 2 cores met a 2-3 ms write
//! among its first chunks, nearly all of it spent waiting for a core, and
//! then sent nearly all of its 4,096 chunks through the thread). The
//! inline writes of one download take turns under a lock, so that a wait
//! for another task's write is not taken for the disk. Chunks larger than
//! [`INLINE_MAX`] always go to that thread, so that hashing one never holds
//! an async thread for long.
//!
//! Measured (BENCHMARKS.md, "Chunks written on the receiving task" and
//! "Hand-offs to the writer thread only after a sleep"): a 1 GiB fetch from
//! one seeder took 4-19 % less time than with every chunk handed to the
//! writer thread (medians of 6 alternating fetches, 7 sets), and 200
//! downloaders on one machine 8-25 % less (2 pairs); counting only sleeps
//! took 4 sources from 0.539 to 0.514 s (medians of 10).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pfs_proto::types::{hash_chunk, ChunkHash};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Chunks waiting for the writer thread (beyond the one it works on).
pub(crate) const WRITE_QUEUE: usize = 8;
/// A write on the receiving task that took longer than this, and during
/// which its thread slept, was held up.
pub(crate) const SLOW_WRITE: Duration = Duration::from_millis(2);
/// How long a download's chunks go to its writer thread after a slow write.
pub(crate) const HAND_OFF_FOR: Duration = Duration::from_secs(1);
/// Largest chunk checked and written on the receiving task: hashing it
/// takes about 0.2 ms here.
pub(crate) const INLINE_MAX: usize = 1024 * 1024;

enum Job {
    /// Check and write one chunk.
    Write {
        data: Bytes,
        offset: u64,
        expected: ChunkHash,
        done: oneshot::Sender<io::Result<bool>>,
    },
    /// Answer once every earlier job is done.
    Settle(oneshot::Sender<()>),
}

/// Checks and writes a download's chunks; its writer thread, if started,
/// ends when this is dropped.
pub(crate) struct ChunkWriter {
    file: Arc<File>,
    /// Writes slower than this hand the next chunks to the thread...
    slow_write: Duration,
    /// ...if the thread slept during them (`false` in tests: every slow
    /// write counts).
    only_if_slept: bool,
    /// Until when chunks go to the writer thread, if a write was slow.
    hand_off_until: Mutex<Option<Instant>>,
    /// The writer thread's queue, once started (`None` if it could not
    /// start).
    thread: OnceLock<Option<mpsc::Sender<Job>>>,
    /// Chunks handed to the writer thread so far.
    handed_off: AtomicU64,
    /// Held by a task while it writes a chunk itself. The kernel writes a file
    /// once at a time anyway (its inode lock), and a task that waited there
    /// for another's write would count as held up by the disk: in 1 GiB
    /// fetches from 4 seeders on 2 cores, 4 of 6 handed off after one wait
    /// of 2-4 ms behind a preempted writer (0.54-0.58 s against 0.47-0.50
    /// for the other two).
    writing: Mutex<()>,
}

impl ChunkWriter {
    /// A writer for `file`.
    pub(crate) fn start(file: Arc<File>) -> Self {
        Self::with_slow_write(file, SLOW_WRITE, true)
    }

    /// A writer for which a write counts as slow past `slow_write`, and,
    /// with `only_if_slept`, only if the thread slept during it.
    pub(crate) fn with_slow_write(
        file: Arc<File>,
        slow_write: Duration,
        only_if_slept: bool,
    ) -> Self {
        Self {
            file,
            slow_write,
            only_if_slept,
            hand_off_until: Mutex::new(None),
            thread: OnceLock::new(),
            handed_off: AtomicU64::new(0),
            writing: Mutex::new(()),
        }
    }

    /// Chunks handed to the writer thread so far.
    pub(crate) fn handed_off(&self) -> u64 {
        self.handed_off.load(Ordering::Relaxed)
    }

    /// True while chunks should go to the writer thread.
    fn handing_off(&self) -> bool {
        let mut until = self
            .hand_off_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Checks `data` against `expected` and, when it matches, writes it at
    /// `offset`. Returns whether it matched.
    ///
    /// # Cancel safety
    /// A chunk checked on the calling task is written before this returns
    /// (there is no await in between). Once queued for the writer thread,
    /// the chunk is written even if this future is dropped, unless the
    /// thread has not started on it yet; [`settle`](Self::settle) waits for
    /// such writes.
    ///
    /// # Errors
    /// Write errors, or the writer thread is gone.
    pub(crate) async fn write(
        &self,
        data: Bytes,
        offset: u64,
        expected: ChunkHash,
    ) -> io::Result<bool> {
        if data.len() > INLINE_MAX || self.handing_off() {
            return self.hand_off(data, offset, expected).await;
        }
        if hash_chunk(&data) != expected {
            return Ok(false);
        }
        // A wait here is for this download's other writes, not the disk.
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sleeps = voluntary_switches();
        let started = Instant::now();
        self.file.write_all_at(&data, offset)?;
        let took = started.elapsed();
        if took > self.slow_write {
            // The count is read before every write (one system call) and
            // after a slow one. Without counts, a slow write counts as a
            // sleep.
            let slept = match (sleeps, voluntary_switches()) {
                (Some(before), Some(after)) => after > before,
                _ => true,
            };
            self.note_slow_write(took, slept);
        }
        Ok(true)
    }

    /// Hands the next chunks to the thread after a write that took `took`
    /// if it counts as held up.
    fn note_slow_write(&self, took: Duration, slept: bool) {
        if took <= self.slow_write || (self.only_if_slept && !slept) {
            return;
        }
        debug!(
            ?took,
            "a chunk write was held up; the next go to the writer thread"
        );
        *self
            .hand_off_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + HAND_OFF_FOR);
    }

    /// [`write`](Self::write) on the writer thread.
    async fn hand_off(&self, data: Bytes, offset: u64, expected: ChunkHash) -> io::Result<bool> {
        let gone = || io::Error::other("the chunk writer thread is not running");
        let tx = self.queue().ok_or_else(gone)?;
        self.handed_off.fetch_add(1, Ordering::Relaxed);
        let (done, outcome) = oneshot::channel();
        tx.send(Job::Write {
            data,
            offset,
            expected,
            done,
        })
        .await
        .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }

    /// The writer thread's queue, starting the thread on first use. If the
    /// thread cannot start, the reason is logged and `None` returned.
    fn queue(&self) -> Option<&mpsc::Sender<Job>> {
        self.thread
            .get_or_init(|| spawn_thread(self.file.clone()))
            .as_ref()
    }

    /// Waits until every chunk queued so far is written (or skipped), so
    /// that no late write changes the file after the download is finished
    /// and its modification time recorded.
    pub(crate) async fn settle(&self) {
        let Some(Some(tx)) = self.thread.get() else {
            return;
        };
        let (done, settled) = oneshot::channel();
        if tx.send(Job::Settle(done)).await.is_ok() {
            let _ = settled.await;
        }
    }
}

/// How often the calling thread gave up its core of its own accord so far
/// (it slept: waited for the disk, a lock or memory), as opposed to being
/// preempted. `None` if the count is not available.
fn voluntary_switches() -> Option<std::ffi::c_long> {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD)
        .ok()
        .map(|u| u.voluntary_context_switches())
}

/// Starts a writer thread for `file`; it ends when the sender is dropped.
fn spawn_thread(file: Arc<File>) -> Option<mpsc::Sender<Job>> {
    let (tx, mut rx) = mpsc::channel::<Job>(WRITE_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("p2pfs-write".into())
        .spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                match job {
                    // Its source is gone (the download ended): nobody
                    // would record the chunk, so it is not written.
                    Job::Write { done, .. } if done.is_closed() => {}
                    Job::Write {
                        data,
                        offset,
                        expected,
                        done,
                    } => {
                        let outcome = if hash_chunk(&data) == expected {
                            file.write_all_at(&data, offset).map(|()| true)
                        } else {
                            Ok(false)
                        };
                        let _ = done.send(outcome);
                    }
                    Job::Settle(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            warn!(error = %e, "cannot start a chunk writer thread");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(len: u64) -> Arc<File> {
        let f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        Arc::new(f)
    }

    #[tokio::test]
    async fn settle_waits_for_writes_whose_futures_were_dropped() {
        let file = file_of(4);
        // Every write counts as slow, so all but the first are handed off.
        let w = ChunkWriter::with_slow_write(file.clone(), Duration::ZERO, false);
        let data = Bytes::from_static(b"abcd");
        // Queue a write, then drop its future before the reply: with a full
        // queue some of these are skipped, the rest written; settle waits.
        for _ in 0..WRITE_QUEUE * 4 {
            let write = w.write(data.clone(), 0, hash_chunk(&data));
            let _ = tokio::time::timeout(Duration::from_micros(1), write).await;
        }
        assert!(w.handed_off() > 0, "writes went to the thread");
        tokio::time::timeout(Duration::from_secs(10), w.settle())
            .await
            .expect("settles");
        assert!(w.write(data.clone(), 0, hash_chunk(&data)).await.unwrap());
    }

    #[tokio::test]
    async fn writes_matching_chunks_and_refuses_others_on_either_path() {
        for slow_write in [Duration::from_secs(3600), Duration::ZERO] {
            let file = file_of(12);
            let w = ChunkWriter::with_slow_write(file.clone(), slow_write, false);
            let good = Bytes::from_static(b"abcd");
            assert!(w.write(good.clone(), 4, hash_chunk(&good)).await.unwrap());
            assert!(w.write(good.clone(), 8, hash_chunk(&good)).await.unwrap());
            let bad = Bytes::from_static(b"wxyz");
            assert!(!w.write(bad, 0, hash_chunk(&good)).await.unwrap());
            w.settle().await;
            let mut back = [0u8; 12];
            file.read_exact_at(&mut back, 0).unwrap();
            assert_eq!(&back, b"\0\0\0\0abcdabcd");
            if slow_write.is_zero() {
                // The first write was slow, so the next two were handed off.
                assert_eq!(w.handed_off(), 2);
            } else {
                assert_eq!(w.handed_off(), 0, "fast writes stay on the task");
                assert!(w.thread.get().is_none(), "no thread was started");
            }
        }
    }

    #[tokio::test]
    async fn large_chunks_always_go_to_the_thread() {
        let file = file_of(INLINE_MAX as u64 + 1);
        let w = ChunkWriter::start(file.clone());
        let big = Bytes::from(vec![7u8; INLINE_MAX + 1]);
        assert!(w.write(big.clone(), 0, hash_chunk(&big)).await.unwrap());
        assert_eq!(w.handed_off(), 1);
        let mut back = vec![0u8; INLINE_MAX + 1];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, big);
    }

    #[test]
    fn only_writes_that_slept_hand_off() {
        let w = ChunkWriter::start(file_of(4));
        // Preempted: slow, but the thread never slept.
        w.note_slow_write(Duration::from_millis(50), false);
        assert!(!w.handing_off());
        // Fast, though the thread slept.
        w.note_slow_write(Duration::from_micros(100), true);
        assert!(!w.handing_off());
        w.note_slow_write(SLOW_WRITE * 2, true);
        assert!(w.handing_off());
    }

    #[test]
    fn sleeps_count_as_voluntary_switches_and_busy_work_does_not() {
        let before = voluntary_switches().expect("counts on Linux");
        std::thread::sleep(Duration::from_millis(2));
        let slept = voluntary_switches().unwrap();
        assert!(slept > before, "a sleep gives up the core");
        // Spinning is at most preempted, never a voluntary switch.
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert_eq!(voluntary_switches().unwrap(), slept);
    }

    #[tokio::test]
    async fn hand_off_ends_after_its_time() {
        let w = ChunkWriter::start(file_of(4));
        *w.hand_off_until.lock().unwrap() = Some(Instant::now() - Duration::from_millis(1));
        assert!(!w.handing_off());
        assert!(w.hand_off_until.lock().unwrap().is_none());
        *w.hand_off_until.lock().unwrap() = Some(Instant::now() + HAND_OFF_FOR);
        assert!(w.handing_off());
    }
}
