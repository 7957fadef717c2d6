//! The serving side's chunk readers: a few threads that read requested
//! chunks from disk and check them before they are sent.
//!
//! Reading is blocking IO, so it runs off the async threads; a small fixed
//! set of threads takes jobs from one queue instead of a blocking-pool task
//! per chunk, so that under load a reader finds the next job without being
//! woken (a `strace` of a 1 GiB fetch counted about five futex calls per
//! chunk served with a blocking-pool task each). The queue is bounded by
//! its callers: each connection reads at most [`READ_AHEAD`] chunks ahead.
//!
//! [`READ_AHEAD`]: crate::server::READ_AHEAD

use std::io;
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;
use tracing::warn;

use crate::store::Holding;

/// Why a chunk read for serving was not sent.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The file changed on disk (size, modification time or content): it
    /// must be withdrawn, never served.
    Changed(&'static str),
    /// Reading failed.
    Io(io::Error),
}

struct Job {
    holding: Arc<Holding>,
    index: u32,
    done: oneshot::Sender<Result<Vec<u8>, ReadFailure>>,
}

/// Hands chunk reads to the reader threads.
pub(crate) struct ChunkReader {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
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
                    let _ = job.done.send(read_and_check(&job.holding, job.index));
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a chunk reader thread");
            }
        }
        Self {
            tx: Mutex::new(Some(tx)),
        }
    }

    /// Reads chunk `index` of `holding` and checks it: the file's size and
    /// modification time first, the chunk's hash after reading.
    ///
    /// # Errors
    /// [`ReadFailure`]; `Io` also when the readers are stopped.
    pub(crate) async fn read(
        &self,
        holding: Arc<Holding>,
        index: u32,
    ) -> Result<Vec<u8>, ReadFailure> {
        let stopped = || ReadFailure::Io(io::Error::other("the chunk readers are stopped"));
        let (done, outcome) = oneshot::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|tx| {
                tx.send(Job {
                    holding,
                    index,
                    done,
                })
            });
        match sent {
            Some(Ok(())) => outcome.await.unwrap_or_else(|_| Err(stopped())),
            _ => Err(stopped()),
        }
    }

    /// Stops the threads once the jobs already queued are done.
    pub(crate) fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Never serve a file that changed under us: check its size and
/// modification time first, and the chunk's hash after reading.
fn read_and_check(holding: &Holding, index: u32) -> Result<Vec<u8>, ReadFailure> {
    if !holding.unchanged_on_disk() {
        return Err(ReadFailure::Changed("the file changed on disk"));
    }
    let data = holding.read_chunk(index).map_err(ReadFailure::Io)?;
    if holding.verify(index, &data) {
        Ok(data)
    } else {
        Err(ReadFailure::Changed(
            "a chunk read from disk no longer matches its hash",
        ))
    }
}
