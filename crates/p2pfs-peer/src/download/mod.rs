//! The download manager: one task per fetch, one `source` task per peer
//! holding chunks, and a shared [`scheduler::Scheduler`].
//!
//! Life of a download: `Running` → `Done` | `Failed` | `Cancelled`.
//! The main task refreshes holders from the tracker every second (every
//! 200 ms while the download is young), starts a source task for each new
//! holder, sends verified chunk indexes to the
//! tracker in batches, publishes progress on a `watch` channel, and on
//! completion checks the `.part` file and renames it into place.
//!
//! Received chunks are checked and written by the task that received them,
//! or, while the download's writes are slow, by its own `writer` thread fed
//! by a bounded queue; the main task waits for that thread to settle before
//! it renames the file.
//!
//! Lock order: `DownloadShared::sched` before `Holding::have`; both are
//! std mutexes held only for short, await-free sections.

pub mod scheduler;
pub(crate) mod source;
pub(crate) mod writer;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p2pfs_proto::message::Holder;
use p2pfs_proto::{ContentId, Manifest, Message, PeerId};
use rand::seq::SliceRandom;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::handle::PeerInner;
use crate::repo::RowState;
use crate::store::Holding;
use scheduler::{Scheduler, SourceId};
use source::SourceEnd;

/// Default of [`crate::PeerConfig::verifying_kib`]: 4 MiB of one
/// download's chunks being verified and written, over all its sources (4
/// sources at full depth, see `source::MAX_VERIFYING_BYTES`). Without a
/// download-wide bound, a download with 32 sources held up to 32 MiB of
/// received chunks waiting to be written, which cannot go faster for them
/// (chunks then went to one writer thread); past it a source stops reading
/// its connection and TCP pushes back on the sender. 200 downloaders of
/// 64 MiB, 6 runs each: the largest downloader peaked at 36-44 MiB against
/// 46-56 MiB.
pub const VERIFYING_KIB: u32 = 4 * 1024;

/// Chunks of `chunk_size` bytes that `kib` KiB hold (at least one).
fn verifying_chunks(kib: u32, chunk_size: u32) -> usize {
    (u64::from(kib) * 1024 / u64::from(chunk_size.max(1))).max(1) as usize
}

/// Most chunk indexes per tracker announcement.
pub const REGISTER_BATCH: usize = 1024;
/// Most sources one download connects to at once. In a crowd every
/// downloader holds chunks: connecting to all of them would cost N²
/// connections; 32 random ones keep the swarm connected.
pub const MAX_SOURCES: usize = 32;
/// How often holders are refreshed from the tracker.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often, during a download's first [`EAGER_REFRESH_FOR`], holders are
/// refreshed.
pub const EAGER_REFRESH_INTERVAL: Duration = Duration::from_millis(200);
/// A young download refreshes holders more often: when a crowd starts
/// together, the first chunks reach other downloaders within a fraction of
/// a second, and each of them can upload only once the others know.
pub const EAGER_REFRESH_FOR: Duration = Duration::from_secs(5);
/// A download at its cap of sources that has verified no chunk for this
/// long, none of whose sources holds a chunk it needs while a holder it is
/// not connected to does, stops one source to make room. Cancelled and failed
/// downloads keep serving their chunks, so without this a download could
/// wait for good on sources that will never have the rest.
pub const REPLACE_AFTER: Duration = Duration::from_secs(5);

/// Where a download is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownloadState {
    /// Fetching chunks.
    Running,
    /// Complete and renamed into place.
    Done,
    /// Stopped by an error (the message says why); verified chunks are kept.
    Failed(String),
    /// Cancelled by the user; verified chunks are kept.
    Cancelled,
}

impl DownloadState {
    /// True once the download will not change any more.
    pub fn is_finished(&self) -> bool {
        !matches!(self, DownloadState::Running)
    }
}

/// A snapshot of a download's progress.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Life-cycle state.
    pub state: DownloadState,
    /// Verified bytes.
    pub bytes_done: u64,
    /// Bytes already verified when this run started (a resumed download);
    /// the run itself fetched `bytes_done - bytes_at_start`.
    pub bytes_at_start: u64,
    /// File size.
    pub bytes_total: u64,
    /// Verified chunks.
    pub chunks_done: u32,
    /// Chunk count.
    pub chunks_total: u32,
    /// Smoothed rate in bytes per second.
    pub rate: f64,
    /// Sources connected now.
    pub sources: usize,
    /// Time since the start.
    pub elapsed: Duration,
    /// Verified chunks as a bitfield (for chunk maps).
    pub have: p2pfs_proto::Bitfield,
}

/// A running or finished download, as the front ends see it.
#[derive(Debug)]
pub struct DownloadHandle {
    /// Id, unique within this peer.
    pub id: u64,
    /// Published name.
    pub name: String,
    /// Publisher address.
    pub publisher: SocketAddr,
    /// Content id.
    pub content_id: ContentId,
    /// Final path.
    pub dest: PathBuf,
    /// Progress updates.
    pub progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
}

impl DownloadHandle {
    /// Stops the download; verified chunks stay on disk.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The latest progress.
    pub fn snapshot(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until the download is finished and returns its final state.
    pub async fn wait(&self) -> DownloadState {
        let mut rx = self.progress.clone();
        loop {
            let state = rx.borrow_and_update().state.clone();
            if state.is_finished() {
                return state;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().state.clone();
            }
        }
    }
}

/// State shared by a download's main task and its sources.
pub(crate) struct DownloadShared {
    pub(crate) content_id: ContentId,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) holding: Arc<Holding>,
    sched: Mutex<Scheduler>,
    /// Wakes sources when chunks go back to the pool.
    pub(crate) wake: Notify,
    /// Wakes the main task when the last chunk is verified.
    done: Notify,
    pub(crate) cancel: CancellationToken,
    /// How connections to sources are secured.
    pub(crate) security: p2pfs_proto::Security,
    to_register: Mutex<Vec<u32>>,
    bytes_done: AtomicU64,
    local_error: Mutex<Option<String>>,
    /// Checks and writes received chunks.
    pub(crate) writer: writer::ChunkWriter,
    /// Room for chunks being verified and written, shared by every source
    /// ([`crate::PeerConfig::verifying_kib`]).
    pub(crate) verifying_room: Arc<Semaphore>,
}

impl DownloadShared {
    pub(crate) fn sched(&self) -> MutexGuard<'_, Scheduler> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called once per newly verified and written chunk.
    pub(crate) fn chunk_verified(&self, index: u32, len: u32) {
        self.holding.mark_held(index);
        self.bytes_done.fetch_add(u64::from(len), Ordering::Relaxed);
        if let Ok(mut q) = self.to_register.lock() {
            q.push(index);
        }
        if self.sched().is_complete() {
            self.done.notify_one();
        }
    }

    /// A local failure (disk) stops the whole download.
    pub(crate) fn fail_local(&self, why: String) {
        if let Ok(mut e) = self.local_error.lock() {
            e.get_or_insert(why);
        }
        self.done.notify_one();
    }
}

/// What the download task needs to start.
pub(crate) struct DownloadSpec {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) publisher: SocketAddr,
    pub(crate) content_id: ContentId,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) dest: PathBuf,
    pub(crate) part: PathBuf,
    pub(crate) holding: Arc<Holding>,
    pub(crate) holders: Vec<Holder>,
    /// Only this source (`fetch name dest peerIP peerPort`).
    pub(crate) only: Option<SocketAddr>,
}

/// Bytes covered by the chunks set in `have`.
fn bytes_of(manifest: &Manifest, have: &p2pfs_proto::Bitfield) -> u64 {
    have.ones()
        .filter_map(|i| manifest.chunk_range(i))
        .map(|(_, len)| u64::from(len))
        .sum()
}

/// The handle of a download restored from the repository that is not
/// running (done, failed or cancelled).
pub(crate) fn finished(
    row: &crate::repo::DownloadRow,
    manifest: &Manifest,
    state: DownloadState,
    have: p2pfs_proto::Bitfield,
) -> Arc<DownloadHandle> {
    let done = bytes_of(manifest, &have);
    let progress = Progress {
        state,
        bytes_done: done,
        bytes_at_start: done,
        bytes_total: manifest.size,
        chunks_done: have.count_ones(),
        chunks_total: manifest.chunk_count(),
        rate: 0.0,
        sources: 0,
        elapsed: Duration::ZERO,
        have,
    };
    let cancel = CancellationToken::new();
    cancel.cancel();
    Arc::new(DownloadHandle {
        id: row.id,
        name: row.name.clone(),
        publisher: row
            .publisher
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        content_id: row.content_id,
        dest: row.dest.clone(),
        progress: watch::channel(progress).1,
        cancel,
    })
}

/// Starts the download task; returns its handle at once.
pub(crate) fn spawn(peer: Arc<PeerInner>, spec: DownloadSpec) -> Arc<DownloadHandle> {
    let have = spec
        .holding
        .have
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    let resumed_bytes = bytes_of(&spec.manifest, &have);
    let initial = Progress {
        state: DownloadState::Running,
        bytes_done: resumed_bytes,
        bytes_at_start: resumed_bytes,
        bytes_total: spec.manifest.size,
        chunks_done: have.count_ones(),
        chunks_total: spec.manifest.chunk_count(),
        rate: 0.0,
        sources: 0,
        elapsed: Duration::ZERO,
        have: have.clone(),
    };
    let (tx, rx) = watch::channel(initial);
    let cancel = peer.shutdown.child_token();
    let handle = Arc::new(DownloadHandle {
        id: spec.id,
        name: spec.name.clone(),
        publisher: spec.publisher,
        content_id: spec.content_id,
        dest: spec.dest.clone(),
        progress: rx,
        cancel: cancel.clone(),
    });
    let shared = Arc::new(DownloadShared {
        content_id: spec.content_id,
        manifest: spec.manifest.clone(),
        holding: spec.holding.clone(),
        sched: Mutex::new(Scheduler::new(have)),
        wake: Notify::new(),
        done: Notify::new(),
        cancel,
        security: peer.security.clone(),
        to_register: Mutex::new(Vec::new()),
        bytes_done: AtomicU64::new(resumed_bytes),
        local_error: Mutex::new(None),
        writer: writer::ChunkWriter::start(spec.holding.file.clone()),
        verifying_room: Arc::new(Semaphore::new(verifying_chunks(
            peer.verifying_kib,
            spec.manifest.chunk_size,
        ))),
    });
    tokio::spawn(async move {
        let (id, name) = (spec.id, spec.name.clone());
        let state = run(peer.clone(), shared.clone(), spec, &tx).await;
        match &state {
            DownloadState::Done => info!(%name, "download complete"),
            DownloadState::Failed(why) => warn!(%name, reason = %why, "download failed"),
            _ => info!(%name, "download cancelled"),
        }
        shared.cancel.cancel();
        let have = shared.sched().done().clone();
        let (row_state, error) = match &state {
            DownloadState::Running | DownloadState::Done => (RowState::Done, None),
            // Stopped because the peer shuts down: it resumes at the next start.
            DownloadState::Cancelled if peer.shutdown.is_cancelled() => (RowState::Running, None),
            DownloadState::Failed(why) => (RowState::Failed, Some(why.as_str())),
            DownloadState::Cancelled => (RowState::Cancelled, None),
        };
        if let Err(e) = peer.db.set_download_state(id, row_state, error, &have) {
            warn!(%name, error = %e, "cannot record the end of a download");
        }
        tx.send_modify(|p| p.state = state.clone());
        peer.emit(crate::handle::PeerEvent::DownloadEnded { id, name, state });
    });
    handle
}

struct Sources {
    set: JoinSet<(SourceId, PeerId, SourceEnd)>,
    active: HashMap<PeerId, SourceId>,
    banned: HashSet<PeerId>,
    failures: HashMap<PeerId, (u32, Instant)>,
    /// Each running source's stop token.
    stops: HashMap<SourceId, CancellationToken>,
    next_sid: SourceId,
}

async fn run(
    peer: Arc<PeerInner>,
    dl: Arc<DownloadShared>,
    spec: DownloadSpec,
    tx: &watch::Sender<Progress>,
) -> DownloadState {
    let started = Instant::now();
    let mut sources = Sources {
        set: JoinSet::new(),
        active: HashMap::new(),
        banned: HashSet::new(),
        failures: HashMap::new(),
        stops: HashMap::new(),
        next_sid: 1,
    };
    update_sources(&peer, &dl, &mut sources, &spec.holders, spec.only, false);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_refresh = Instant::now();
    let mut rate = RateMeter::default();
    let mut unsourced_since: Option<Instant> = None;
    let mut saved = dl.sched().done().count_ones();
    let mut last_progress = Instant::now();
    let result = loop {
        if dl.sched().is_complete() {
            break Ok(());
        }
        if let Some(e) = dl.local_error.lock().ok().and_then(|e| e.clone()) {
            break Err(e);
        }
        tokio::select! {
            () = dl.cancel.cancelled() => break Err(String::new()),
            () = dl.done.notified() => {}
            Some(joined) = sources.set.join_next() => {
                if let Ok((sid, pid, end)) = joined {
                    source_ended(&dl, &mut sources, sid, pid, end);
                }
            }
            _ = tick.tick() => {
                flush_register(&peer, &dl).await;
                let every = if started.elapsed() < EAGER_REFRESH_FOR {
                    EAGER_REFRESH_INTERVAL
                } else {
                    REFRESH_INTERVAL
                };
                if last_refresh.elapsed() >= every {
                    last_refresh = Instant::now();
                    // Without the tracker's view (it is away), keep waiting:
                    // sources cannot be judged gone.
                    let answered = match peer.refresh_holders(dl.content_id).await {
                        Some(holders) => {
                            let stalled = last_progress.elapsed() >= REPLACE_AFTER;
                            update_sources(&peer, &dl, &mut sources, &holders, spec.only, stalled);
                            true
                        }
                        None => false,
                    };
                    let missing = dl.sched().missing_without_source();
                    if answered && missing > 0 && sources.active.is_empty() {
                        let since = *unsourced_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_secs(3) {
                            break Err(format!("{missing} of {} chunks have no source left; the verified chunks are kept in {}", dl.manifest.chunk_count(), spec.part.display()));
                        }
                    } else {
                        unsourced_since = None;
                    }
                }
                let done = dl.bytes_done.load(Ordering::Relaxed);
                let r = rate.update(done);
                let (chunks_done, have) = {
                    let s = dl.sched();
                    (s.done().count_ones(), s.done().clone())
                };
                if chunks_done != saved {
                    saved = chunks_done;
                    last_progress = Instant::now();
                    if let Err(e) = peer.db.save_have(spec.id, &have) {
                        warn!(error = %e, "cannot record verified chunks");
                    }
                }
                tx.send_modify(|p| {
                    p.bytes_done = done.min(p.bytes_total).max(p.bytes_done);
                    p.chunks_done = chunks_done;
                    p.rate = r;
                    p.sources = sources.active.len();
                    p.elapsed = started.elapsed();
                    p.have = have;
                });
            }
        }
    };
    dl.cancel.cancel();
    while sources.set.join_next().await.is_some() {}
    // A duplicate copy may still be on its way into the file.
    dl.writer.settle().await;
    debug!(
        name = %spec.name,
        handed_off = dl.writer.handed_off(),
        "chunks written on the writer thread (slow writes or large chunks)"
    );
    flush_register(&peer, &dl).await;
    let state = match result {
        Ok(()) => match finish_file(&dl, &spec).await {
            Ok(()) => DownloadState::Done,
            Err(e) => DownloadState::Failed(e),
        },
        Err(e) if e.is_empty() => DownloadState::Cancelled,
        Err(e) => DownloadState::Failed(e),
    };
    let bytes = dl.bytes_done.load(Ordering::Relaxed);
    tx.send_modify(|p| {
        p.bytes_done = if state == DownloadState::Done {
            p.bytes_total
        } else {
            bytes
        };
        p.chunks_done = dl.sched().done().count_ones();
        p.have = dl.sched().done().clone();
        p.elapsed = started.elapsed();
        p.sources = 0;
        if p.elapsed.as_secs_f64() > 0.0 && state == DownloadState::Done {
            // What this run fetched: a resumed download had part of the
            // file already.
            p.rate =
                p.bytes_total.saturating_sub(p.bytes_at_start) as f64 / p.elapsed.as_secs_f64();
        }
    });
    state
}

fn source_ended(
    dl: &DownloadShared,
    sources: &mut Sources,
    sid: SourceId,
    pid: PeerId,
    end: SourceEnd,
) {
    dl.sched().remove_source(sid);
    sources.active.remove(&pid);
    sources.stops.remove(&sid);
    match end {
        SourceEnd::Finished => {}
        SourceEnd::Replaced => {
            debug!(peer = %pid.short(), "dropped a source that holds no chunk still needed");
            sources.failures.insert(pid, (1, Instant::now()));
        }
        SourceEnd::BadData => {
            warn!(peer = %pid.short(), "dropping a source that sent bad data twice");
            sources.banned.insert(pid);
        }
        SourceEnd::Gone => {
            sources.failures.insert(pid, (1, Instant::now()));
        }
        SourceEnd::Failed(e) => {
            let entry = sources.failures.entry(pid).or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
            tracing::debug!(peer = %pid.short(), error = %e, failures = entry.0, "source failed");
        }
    }
    dl.wake.notify_waiters();
}

fn update_sources(
    peer: &PeerInner,
    dl: &Arc<DownloadShared>,
    sources: &mut Sources,
    holders: &[Holder],
    only: Option<SocketAddr>,
    stalled: bool,
) {
    // Known sources first (their news is merged), then the others in
    // random order, so that a crowd of downloaders does not pile onto the
    // same few holders (the tracker lists them by address).
    let mut order: Vec<&Holder> = holders.iter().collect();
    order.shuffle(&mut rand::rng());
    order.sort_by_key(|h| !sources.active.contains_key(&h.peer_id));
    for h in order {
        if h.peer_id == peer.peer_id
            || sources.banned.contains(&h.peer_id)
            || only.is_some_and(|a| a != h.addr)
        {
            continue;
        }
        if h.have.len() != dl.manifest.chunk_count() || h.have.count_ones() == 0 {
            continue;
        }
        if let Some(&sid) = sources.active.get(&h.peer_id) {
            // The source may have told us more than the tracker knows yet.
            dl.sched().merge_source(sid, &h.have);
            continue;
        }
        if let Some((n, at)) = sources.failures.get(&h.peer_id) {
            // Back off 2 s, 4 s, 8 s ... (at most 32 s) between reconnects to a failing source.
            if at.elapsed() < Duration::from_secs(1 << (*n).min(5)) {
                continue;
            }
        }
        if sources.active.len() >= peer.max_sources {
            if stalled && dl.sched().wants_any(&h.have) {
                make_room(dl, sources);
                break;
            }
            continue;
        }
        let sid = sources.next_sid;
        sources.next_sid += 1;
        dl.sched().set_source(sid, h.have.clone());
        sources.active.insert(h.peer_id, sid);
        let stop = dl.cancel.child_token();
        sources.stops.insert(sid, stop.clone());
        let (dl2, addr, pid) = (dl.clone(), h.addr, h.peer_id);
        sources
            .set
            .spawn(async move { (sid, pid, source::run_source(dl2, sid, addr, stop).await) });
    }
    dl.wake.notify_waiters();
}

/// Stops one running source so that a holder outside the cap can take its
/// slot at the next refresh. Nothing is stopped while another source is
/// stopping, or while some source holds a chunk the download still needs
/// (it may only be slow: a download is left with its sources then).
fn make_room(dl: &DownloadShared, sources: &Sources) {
    if sources.stops.values().any(CancellationToken::is_cancelled) {
        return;
    }
    let sched = dl.sched();
    if sources
        .active
        .values()
        .any(|&sid| sched.source_has_wanted(sid))
    {
        return;
    }
    if let Some(stop) = sources
        .active
        .values()
        .next()
        .and_then(|sid| sources.stops.get(sid))
    {
        stop.cancel();
    }
}

/// Announces to the tracker every chunk verified since the last call, in
/// messages of at most [`REGISTER_BATCH`] indexes.
async fn flush_register(peer: &PeerInner, dl: &DownloadShared) {
    for batch in register_batches(&dl.to_register) {
        peer.tracker_send(Message::RequestChunkRegister {
            content_id: dl.content_id,
            indexes: batch,
        })
        .await;
    }
}

/// Empties `queue` into batches of at most [`REGISTER_BATCH`] indexes. All
/// of it: a download verifies more than one batch between two ticks when it
/// runs faster than 1,024 chunks per 200 ms, and its last flush must not
/// leave any behind.
fn register_batches(queue: &Mutex<Vec<u32>>) -> Vec<Vec<u32>> {
    let queued = std::mem::take(
        &mut *queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    queued.chunks(REGISTER_BATCH).map(<[u32]>::to_vec).collect()
}

async fn finish_file(dl: &DownloadShared, spec: &DownloadSpec) -> Result<(), String> {
    let file = dl.holding.file.clone();
    let size = dl.manifest.size;
    let part = spec.part.clone();
    let dest = spec.dest.clone();
    let complete = dl.holding.is_complete();
    if !complete {
        return Err("internal error: finished without every chunk".into());
    }
    tokio::task::spawn_blocking(move || {
        let len = file
            .metadata()
            .map_err(|e| format!("cannot check {}: {e}", part.display()))?
            .len();
        if len != size {
            return Err(format!(
                "{} has {len} bytes, expected {size}",
                part.display()
            ));
        }
        if dest.exists() {
            return Err(format!(
                "{} appeared during the download; the data stays in {}",
                dest.display(),
                part.display()
            ));
        }
        std::fs::rename(&part, &dest).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                part.display(),
                dest.display()
            )
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    if let Ok(mut p) = dl.holding.path.lock() {
        p.clone_from(&spec.dest);
    }
    if let Ok(mut s) = dl.holding.stamp.lock() {
        *s = crate::repo::Stamp::of(&spec.dest).ok();
    }
    Ok(())
}

/// Exponentially smoothed rate over the progress ticks.
#[derive(Default)]
struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl RateMeter {
    fn update(&mut self, bytes: u64) -> f64 {
        let now = Instant::now();
        if let Some((t, b)) = self.last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let inst = bytes.saturating_sub(b) as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    inst
                } else {
                    0.7 * self.rate + 0.3 * inst
                };
            }
        }
        self.last = Some((now, bytes));
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifying_budget_counts_chunks_of_the_file() {
        // 4 MiB: 4 sources at full depth, whatever the chunk size.
        assert_eq!(verifying_chunks(VERIFYING_KIB, 256 * 1024), 16);
        assert_eq!(verifying_chunks(VERIFYING_KIB, 64 * 1024), 64);
        // Never less than one chunk, so a download always moves.
        assert_eq!(verifying_chunks(VERIFYING_KIB, 16 * 1024 * 1024), 1);
        assert_eq!(verifying_chunks(0, 64 * 1024), 1);
    }

    #[test]
    fn a_flush_announces_every_queued_chunk_in_batches() {
        // 2,400 chunks verified between two ticks (a 300 MiB file in
        // 0.3 s): one flush announces them all. A flush that sent one
        // batch left 352 of them unannounced after the last one.
        let queue = Mutex::new((0..2400).collect::<Vec<u32>>());
        let batches = register_batches(&queue);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [REGISTER_BATCH, REGISTER_BATCH, 2400 - 2 * REGISTER_BATCH]
        );
        assert_eq!(batches.concat(), (0..2400).collect::<Vec<u32>>());
        assert!(queue.lock().unwrap().is_empty());
        assert!(register_batches(&queue).is_empty());
    }
}
