//! A download's chunk writer: one thread that checks each received chunk
//! against its hash and writes it positionally into the `.part` file.
//!
//! One long-lived thread per download instead of a blocking-pool task per
//! chunk: while chunks keep arriving it never sleeps, so handing a chunk
//! over costs no thread wake-up, and its writes to the file are sequential
//! (concurrent writes contend for the inode lock). The bounded queue pushes
//! back on the sources when hashing or the disk falls behind.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use p2pfs_proto::types::{hash_chunk, ChunkHash};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Chunks waiting for the writer thread (beyond the one it works on).
pub(crate) const WRITE_QUEUE: usize = 8;

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

/// Hands chunks to a download's writer thread; the thread ends when this
/// is dropped.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<Job>,
}

impl ChunkWriter {
    /// Starts the writer thread for `file`. If the thread cannot start,
    /// the reason is logged and every [`write`](Self::write) fails.
    pub(crate) fn start(file: Arc<File>) -> Self {
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
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a chunk writer thread");
        }
        Self { tx }
    }

    /// Checks `data` against `expected` and, when it matches, writes it at
    /// `offset`. Returns whether it matched.
    ///
    /// # Cancel safety
    /// Once queued, the chunk is written even if this future is dropped,
    /// unless the thread has not started on it yet; [`settle`](Self::settle)
    /// waits for such writes.
    ///
    /// # Errors
    /// Write errors, or the writer thread is gone.
    pub(crate) async fn write(
        &self,
        data: Bytes,
        offset: u64,
        expected: ChunkHash,
    ) -> io::Result<bool> {
        let gone = || io::Error::other("the chunk writer thread is not running");
        let (done, outcome) = oneshot::channel();
        self.tx
            .send(Job::Write {
                data,
                offset,
                expected,
                done,
            })
            .await
            .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }

    /// Waits until every chunk queued so far is written (or skipped), so
    /// that no late write changes the file after the download is finished
    /// and its modification time recorded.
    pub(crate) async fn settle(&self) {
        let (done, settled) = oneshot::channel();
        if self.tx.send(Job::Settle(done)).await.is_ok() {
            let _ = settled.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settle_waits_for_writes_whose_futures_were_dropped() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4).unwrap();
        let file = Arc::new(f);
        let w = ChunkWriter::start(file.clone());
        let data = Bytes::from_static(b"abcd");
        // Queue a write, then drop its future before the reply: with a full
        // queue some of these are skipped, the rest written; settle waits.
        for _ in 0..WRITE_QUEUE * 4 {
            let write = w.write(data.clone(), 0, hash_chunk(&data));
            let _ = tokio::time::timeout(std::time::Duration::from_micros(1), write).await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), w.settle())
            .await
            .expect("settles");
        assert!(w.write(data.clone(), 0, hash_chunk(&data)).await.unwrap());
    }

    #[tokio::test]
    async fn writes_matching_chunks_and_refuses_others() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8).unwrap();
        let file = Arc::new(f);
        let w = ChunkWriter::start(file.clone());
        let good = Bytes::from_static(b"abcd");
        assert!(w.write(good.clone(), 4, hash_chunk(&good)).await.unwrap());
        let bad = Bytes::from_static(b"wxyz");
        assert!(!w.write(bad, 0, hash_chunk(&good)).await.unwrap());
        let mut back = [0u8; 8];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"\0\0\0\0abcd");
    }
}
