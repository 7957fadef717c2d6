//! One source of one download: a connection to a peer that holds chunks,
//! with a window of pipelined requests sized from the measured rate.
//!
//! The task asks the [`Scheduler`](super::scheduler::Scheduler) for chunks,
//! keeps up to `window` requests in flight, verifies each reply against the
//! manifest and writes it positionally, then marks it held (so it is served
//! at once) and queues it for the tracker. It gives its requests back when
//! it stalls, and ends on disconnect, cancellation, repeated bad data or
//! completion of the download.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use p2pfs_proto::{ErrorCode, Frame, Message, ProtoError, Role};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use super::scheduler::SourceId;
use super::DownloadShared;

/// Requests in flight when a source starts.
pub(crate) const INITIAL_WINDOW: usize = 16;
/// Fewest requests in flight for a healthy source.
pub(crate) const MIN_WINDOW: usize = 1;
/// Most bytes requested and not yet received per source (64 chunks of
/// 256 KiB, 256 of 64 KiB).
pub(crate) const MAX_WINDOW_BYTES: usize = 16 * 1024 * 1024;
/// Seconds of data to keep queued at a source (libtorrent keeps about 3;
/// less here keeps a seeder's upload from being promised far ahead, which
/// slows how fast a swarm passes chunks on).
pub(crate) const QUEUE_SECONDS: f64 = 0.5;
/// A source that sends nothing for this long while requests are out gives
/// them back to the other sources.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(4);
/// A chunk a seeder deferred is asked of it again after this long, unless
/// it arrived from another source meanwhile.
pub(crate) const DEFER_RETRY: Duration = Duration::from_secs(3);
/// Bad chunks after which a source is dropped.
pub(crate) const MAX_STRIKES: u32 = 2;
/// Bytes of one source's chunks being verified and written while the next
/// ones are received (receiving and hashing overlap on different cores):
/// 4 chunks of 256 KiB, 16 of 64 KiB.
pub(crate) const MAX_VERIFYING_BYTES: usize = 1024 * 1024;

/// The window cap and the verifying depth of a download, in chunks.
fn per_chunk_limits(chunk_size: u32) -> (usize, usize) {
    let chunk = (chunk_size as usize).max(1);
    (
        (MAX_WINDOW_BYTES / chunk).max(INITIAL_WINDOW),
        (MAX_VERIFYING_BYTES / chunk).max(1),
    )
}

/// How a source task ended.
#[derive(Debug)]
pub(crate) enum SourceEnd {
    /// The download finished or was cancelled.
    Finished,
    /// It sent bad data [`MAX_STRIKES`] times.
    BadData,
    /// It no longer holds the content.
    Gone,
    /// Connection failure.
    Failed(ProtoError),
    /// Stopped to make room for a source that holds chunks this one lacks.
    Replaced,
}

struct Pending {
    index: u32,
}

/// Runs one source until it ends.
///
/// `stop` is a child of the download's cancel token: cancelled alone, it
/// ends this source to make room for another.
pub(crate) async fn run_source(
    dl: Arc<DownloadShared>,
    sid: SourceId,
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> SourceEnd {
    let result = tokio::select! {
        () = stop.cancelled() => Ok(if dl.cancel.is_cancelled() {
            SourceEnd::Finished
        } else {
            SourceEnd::Replaced
        }),
        r = source_impl(&dl, sid, addr) => r,
    };
    let end = result.unwrap_or_else(SourceEnd::Failed);
    dl.sched().release_all(sid);
    dl.wake.notify_waiters();
    end
}

async fn source_impl(
    dl: &DownloadShared,
    sid: SourceId,
    addr: SocketAddr,
) -> Result<SourceEnd, ProtoError> {
    let stream = p2pfs_proto::conn::connect(addr, Role::Peer, Role::Peer, &dl.security).await?;
    let (mut reader, mut writer) = p2pfs_proto::conn::split(stream);
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    // Subscribe to the source's news: it tells us each chunk it verifies
    // (within 300 ms), sooner than the tracker's holder lists would.
    let have_id: u32 = 1;
    writer.queue_control(
        have_id,
        &Message::PeerRequestHave {
            content_id: dl.content_id,
        },
    )?;
    let mut next_id: u32 = 2;
    let (max_window, max_verifying) = per_chunk_limits(dl.manifest.chunk_size);
    let mut window = INITIAL_WINDOW;
    let mut strikes = 0;
    let mut last_data = Instant::now();
    let mut last_buffered = 0;
    let mut rate_start = Instant::now();
    let mut rate_bytes: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut verifying = futures::stream::FuturesUnordered::new();
    // A received chunk waiting for room in the download's verifying budget;
    // no frame is read meanwhile.
    let mut parked: Option<(u32, Bytes)> = None;
    loop {
        if dl.sched().is_complete() {
            return Ok(SourceEnd::Finished);
        }
        let want = window.saturating_sub(pending.len());
        if want > 0 {
            if pending.is_empty() {
                // The stall clock runs from the first outstanding request.
                last_data = Instant::now();
            }
            let picks = dl.sched().pick(sid, want, Instant::now());
            for index in picks {
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(have_id + 1);
                writer.queue_control(
                    id,
                    &Message::PeerRequestChunk {
                        content_id: dl.content_id,
                        index,
                    },
                )?;
                pending.insert(id, Pending { index });
            }
            writer.flush().await?;
        }
        let wake = dl.wake.notified();
        tokio::select! {
            () = wake => {}
            _ = tick.tick() => {
                // Part of a frame arriving counts as progress: on a slow or
                // crowded link one chunk can take longer than the stall limit.
                // While this task does not read (its chunks wait for the
                // writer), the source cannot be judged.
                if parked.is_some() || verifying.len() >= max_verifying {
                    last_data = Instant::now();
                }
                let buffered = reader.received();
                if buffered != last_buffered {
                    last_buffered = buffered;
                    last_data = Instant::now();
                }
                if !pending.is_empty() && last_data.elapsed() > STALL_TIMEOUT && dl.sched().inflight(sid) > 0 {
                    let n = dl.sched().release_all(sid);
                    warn!(%addr, requests = n, "source stalled; its requests go to others");
                    window = 1;
                    dl.wake.notify_waiters();
                }
                let elapsed = rate_start.elapsed();
                if elapsed >= Duration::from_secs(1) {
                    let rate = rate_bytes as f64 / elapsed.as_secs_f64();
                    let chunk = f64::from(dl.manifest.chunk_size);
                    if last_data.elapsed() < STALL_TIMEOUT {
                        window = ((rate * QUEUE_SECONDS / chunk).ceil() as usize).clamp(MIN_WINDOW, max_window);
                    }
                    rate_start = Instant::now();
                    rate_bytes = 0;
                }
            }
            Some((index, accepted)) = verifying.next(), if !verifying.is_empty() => {
                let accepted: Result<bool, ProtoError> = accepted;
                if !accepted? {
                    strikes += 1;
                    warn!(%addr, chunk = index, strikes, "source sent a chunk that does not match the manifest");
                    if strikes >= MAX_STRIKES {
                        return Ok(SourceEnd::BadData);
                    }
                }
            }
            room = dl.verifying_room.clone().acquire_owned(), if parked.is_some() => {
                // The semaphore is never closed.
                let Ok(room) = room else { return Ok(SourceEnd::Finished) };
                if let Some((index, data)) = parked.take() {
                    verifying.push(verify(dl, sid, index, data, room));
                }
            }
            frame = reader.next(), if parked.is_none() && verifying.len() < max_verifying => {
                let frame = match frame {
                    None => return Err(ProtoError::Closed),
                    Some(f) => f?,
                };
                // News does not count as an answer to our requests.
                let news = matches!(&frame, Frame::Control { id, .. } if *id == 0 || *id == have_id);
                if !news {
                    last_data = Instant::now();
                }
                match frame {
                    Frame::Chunk { id, index, data, content_id } => {
                        let Some(p) = pending.remove(&id) else { continue };
                        if p.index != index || content_id != dl.content_id {
                            return Err(ProtoError::Unexpected("chunk for another request"));
                        }
                        rate_bytes += data.len() as u64;
                        match dl.verifying_room.clone().try_acquire_owned() {
                            Ok(room) => verifying.push(verify(dl, sid, index, data, room)),
                            Err(_) => parked = Some((index, data)),
                        }
                    }
                    Frame::Control { id, msg: Message::PeerHave { content_id, have } } if id == have_id || id == 0 => {
                        // Only this task can ask this source for the new
                        // chunks, and it picks again on its next turn of the
                        // loop. Waking every source task of the download on
                        // each news (up to 32 sources, each hearing news
                        // several times a second) was needless work, though
                        // removing it did not move benchmark 7 beyond noise.
                        if content_id == dl.content_id {
                            dl.sched().merge_source(sid, &have);
                        }
                    }
                    Frame::Control { id, msg: Message::Error(e) } if id == have_id => {
                        if e.code == ErrorCode::NotFound {
                            return Ok(SourceEnd::Gone);
                        }
                    }
                    Frame::Control { id, msg } => {
                        let Some(p) = pending.remove(&id) else { continue };
                        match msg {
                            Message::ReplyChunkDeferred { suggest, .. } => {
                                dl.sched().defer(sid, p.index, &suggest, Instant::now() + DEFER_RETRY);
                            }
                            Message::Error(e) if e.code == ErrorCode::NotFound => return Ok(SourceEnd::Gone),
                            Message::Error(e) => {
                                debug!(%addr, chunk = p.index, reason = %e.message, "source refused a chunk");
                                dl.sched().source_lacks(sid, p.index);
                            }
                            _ => return Err(ProtoError::Unexpected("reply to a chunk request")),
                        }
                    }
                }
            }
        }
    }
}

/// [`accept_chunk`], holding a place in the download's verifying budget
/// until it is done.
async fn verify(
    dl: &DownloadShared,
    sid: SourceId,
    index: u32,
    data: Bytes,
    room: OwnedSemaphorePermit,
) -> (u32, Result<bool, ProtoError>) {
    let accepted = accept_chunk(dl, sid, index, data).await;
    drop(room);
    (index, accepted)
}

/// Verifies a chunk, writes it and records it. Returns false on a hash
/// mismatch (the chunk goes back to the pool).
async fn accept_chunk(
    dl: &DownloadShared,
    sid: SourceId,
    index: u32,
    data: Bytes,
) -> Result<bool, ProtoError> {
    let Some((offset, len)) = dl.manifest.chunk_range(index) else {
        dl.sched().release(sid, index);
        return Ok(false);
    };
    let Some(expected) = dl.manifest.chunk_hash(index).copied() else {
        dl.sched().release(sid, index);
        return Ok(false);
    };
    if data.len() != len as usize || dl.holding.has(index) {
        if dl.holding.has(index) {
            dl.sched().complete(sid, index);
            return Ok(true);
        }
        dl.sched().release(sid, index);
        return Ok(false);
    }
    match dl.writer.write(data, offset, expected).await {
        Ok(true) => {
            if dl.sched().complete(sid, index) {
                dl.chunk_verified(index, len);
            }
            Ok(true)
        }
        Ok(false) => {
            dl.sched().release(sid, index);
            dl.wake.notify_waiters();
            Ok(false)
        }
        Err(e) => {
            dl.sched().release(sid, index);
            dl.fail_local(format!(
                "cannot write to {}: {}; the verified chunks are kept (`resume` continues)",
                dl.holding.path().display(),
                crate::handle::describe_io(&e)
            ));
            Err(ProtoError::Io(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_verifying_depth_follow_the_chunk_size() {
        // 256 KiB chunks: the limits of before (64 requests, 4 verifying).
        assert_eq!(per_chunk_limits(256 * 1024), (64, 4));
        assert_eq!(per_chunk_limits(64 * 1024), (256, 16));
        // Large chunks keep the initial window and one chunk verifying.
        assert_eq!(per_chunk_limits(16 * 1024 * 1024), (INITIAL_WINDOW, 1));
    }
}
