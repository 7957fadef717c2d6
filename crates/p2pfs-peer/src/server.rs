//! The peer's listener: serves chunks to any number of downloaders at once,
//! and answers the tracker's pings.
//!
//! One task per connection reads requests in order and answers each one;
//! the requester pipelines, so the connection stays busy. Chunk payloads are
//! read positionally and checked by the reader threads (`crate::reader`),
//! and written to the socket without further copies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use p2pfs_proto::conn::{accept, serve_connections, split_server, ConnLimits};
use p2pfs_proto::limits::IDLE_TIMEOUT;
use p2pfs_proto::pool::ChunkBuf;
use p2pfs_proto::{ErrorCode, Frame, Message, ProtoError, Role};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::handle::PeerInner;
use crate::reader::{Inline, ReadFailure};
use crate::spread::{ConnId, Decision};
use crate::store::Holding;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most connections served at once from one IP address (downloaders on one
/// host use one connection each).
pub const MAX_CONNECTIONS_PER_IP: usize = 256;

pub(crate) async fn accept_loop(listener: TcpListener, inner: Arc<PeerInner>) {
    let shutdown = inner.shutdown.clone();
    serve_connections(
        listener,
        ConnLimits {
            total: MAX_CONNECTIONS,
            per_ip: MAX_CONNECTIONS_PER_IP,
        },
        shutdown,
        move |stream, remote| {
            let inner = inner.clone();
            async move {
                let result = serve(stream, &inner).await;
                if let Err(e @ (ProtoError::WrongSecret | ProtoError::SecurityMismatch { .. })) =
                    &result
                {
                    tracing::info!(%remote, error = %e, "refused a connection");
                }
                result
            }
        },
    )
    .await;
}

/// Requests of one connection taken ahead of the reply being sent
/// (replies still go out in request order).
pub const READ_AHEAD: usize = 4;

/// Most chunk bytes read from disk ahead of their turn to be sent, across
/// every connection, in KiB. A request reads ahead only if its share is at
/// hand; otherwise its chunk is read when its turn comes: when it is the
/// next reply of its connection, before it waits for an upload slot (a
/// read while holding a slot left the slot idle; with 200 downloaders on
/// a tmpfs, where each such read goes to a reader thread, the crowd took
/// 43-70 s instead of 39-41). So a crowd of downloaders never waits for
/// this budget, and a peer holds at most this budget plus one chunk per
/// connection.
pub const SERVE_MEMORY_KIB: u32 = 8 * 1024;

/// A chunk to send: read ahead with its share of [`SERVE_MEMORY_KIB`], or
/// not read yet (`data` is `None`).
struct ReadChunk {
    content_id: p2pfs_proto::ContentId,
    holding: Arc<Holding>,
    index: u32,
    data: Option<ChunkBuf>,
    _memory: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A reply ready to send.
enum Reply {
    Control(u32, Message),
    Chunk(u32, ReadChunk),
}

/// Chunk replies sent at once by this peer, across all connections: the
/// others wait their turn (first come, first served). Few transfers at a
/// time each finish sooner, so the receivers can pass the chunks on sooner
/// (BitTorrent's upload slots, without choking). With 64 KiB chunks, 6
/// keep a shaped link busier than 4: a swarm of 32 leechers on 20 Mbit/s
/// links ended at 1.13 of its bound instead of 1.16, and its seeder sent
/// 1.02 file sizes instead of 1.08 (5 runs each); 2 slots ended at 1.27,
/// and 8 were no better than 6 (BENCHMARKS.md, "Swarm: six upload slots").
pub const UPLOAD_SLOTS: usize = 6;

/// Longest a chunk send keeps its upload slot: a receiver that reads
/// slowly, or not at all, cannot hold the slots and stop this peer from
/// serving everyone else; its send goes on without a slot.
pub const SLOT_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// Unsent bytes a serving socket may hold (`TCP_NOTSENT_LOWAT`): a chunk
/// counts as sent, and frees its upload slot, once it is nearly on the
/// wire rather than when it is queued in a large socket buffer.
pub const NOTSENT_LOWAT: u32 = 32 * 1024;

type SlotWait = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

/// How often at most a connection tells its subscribed downloaders about
/// chunks that became held here (`PeerRequestHave`); it wakes only when
/// there is news.
///
/// Each message costs a wake-up of the serving task, an encoded bitfield,
/// and at the subscriber a wake-up, a decode and a merge. In a crowd every
/// peer has about 32 subscribers: 200 downloaders of 64 MiB on loopback,
/// 3 alternating runs each, took 26.1-34.5 s (49.7-65.8 CPU-s in the
/// downloaders) with 300 ms against 33.0-39.6 s (62.5-68.7 CPU-s) with
/// 100 ms. A swarm of 32 leechers at 20 Mbit/s lost nothing: last leecher
/// 29.95-30.28 s against 30.26-30.63 s.
pub const PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(300);

/// A downloader on this connection that asked to hear of new chunks.
struct Subscription {
    content_id: p2pfs_proto::ContentId,
    holding: Arc<Holding>,
    /// The holding's change counter, seen up to when last told.
    changes: tokio::sync::watch::Receiver<u64>,
    /// Told the full bitfield: nothing more to say.
    done: bool,
}

/// Waits until `quiet_until`, then until some subscription's holding
/// changes, and returns its position. (The watch cannot close: each
/// subscription keeps its holding, which owns the sender, alive.)
async fn next_news(subscriptions: &mut [Subscription], quiet_until: tokio::time::Instant) -> usize {
    tokio::time::sleep_until(quiet_until).await;
    let waits = subscriptions
        .iter_mut()
        .map(|s| Box::pin(s.changes.changed()));
    futures::future::select_all(waits).await.1
}

fn not_held(content_id: &p2pfs_proto::ContentId) -> Message {
    Message::error(
        ErrorCode::NotFound,
        format!("content {} is not held here", content_id.short()),
    )
}

/// Numbers serving connections for the initial-seeding ledger.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

type PendingReply<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + 'a>>;

async fn serve(stream: TcpStream, inner: &PeerInner) -> Result<(), ProtoError> {
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "cannot limit unsent bytes on a serving socket");
    }
    let (_role, stream) = accept(stream, Role::Peer, &inner.security).await?;
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let mut served: Vec<Arc<Holding>> = Vec::new();
    let result = serve_requests(stream, inner, conn, &mut served).await;
    for holding in served {
        holding.forget(conn);
    }
    result
}

async fn serve_requests(
    stream: p2pfs_proto::secure::Stream,
    inner: &PeerInner,
    conn: ConnId,
    served: &mut Vec<Arc<Holding>>,
) -> Result<(), ProtoError> {
    let inline = if stream.is_encrypted() {
        Inline::SmallWhenCached
    } else {
        Inline::WhenCached
    };
    let (mut reader, mut writer) = split_server(stream);
    let mut queue: futures::stream::FuturesOrdered<PendingReply<'_>> =
        futures::stream::FuturesOrdered::new();
    let mut subscriptions: Vec<Subscription> = Vec::new();
    // Chunks this connection was deferred for: asked again, they are served.
    let mut deferred: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut quiet_until = tokio::time::Instant::now();
    // The next chunk reply, read and waiting for an upload slot.
    let mut waiting: Option<(u32, ReadChunk, ChunkBuf, SlotWait)> = None;
    loop {
        // With an artificial delay, requests are answered strictly one at a
        // time, so the delay applies to each of them.
        let ahead = if inner.delay().is_zero() {
            READ_AHEAD
        } else {
            1
        };
        tokio::select! {
            biased;
            fired = next_news(&mut subscriptions, quiet_until), if !subscriptions.is_empty() => {
                for (i, sub) in subscriptions.iter_mut().enumerate() {
                    if i == fired || sub.changes.has_changed().unwrap_or(false) {
                        sub.changes.borrow_and_update();
                        let have = sub.holding.have();
                        sub.done = have.is_full();
                        writer.queue_control(0, &Message::PeerHave { content_id: sub.content_id, have })?;
                    }
                }
                subscriptions.retain(|s| !s.done);
                writer.flush().await?;
                quiet_until = tokio::time::Instant::now() + PUSH_INTERVAL;
            }
            Some(permit) = futures::future::OptionFuture::from(waiting.as_mut().map(|w| &mut w.3)), if waiting.is_some() => {
                if let Some((id, c, data, _)) = waiting.take() {
                    // The slot is held while the chunk goes out, for at most
                    // SLOT_HOLD (the semaphore is never closed).
                    let send = writer.send_chunk(id, &c.content_id, c.index, &data);
                    tokio::pin!(send);
                    tokio::select! {
                        sent = &mut send => sent?,
                        () = tokio::time::sleep(SLOT_HOLD) => {
                            drop(permit);
                            send.await?;
                        }
                    }
                    c.holding.written(conn, c.index);
                    inner.stats.record_upload(data.len());
                }
            }
            Some(reply) = queue.next(), if waiting.is_none() && !queue.is_empty() => match reply {
                Reply::Control(id, msg) => writer.send_control(id, &msg).await?,
                Reply::Chunk(id, mut c) => {
                    let data = match c.data.take() {
                        Some(data) => data,
                        // Not read ahead: read it now that its turn came.
                        None => match read_held(inner, &c.holding, &c.content_id, c.index, inline).await {
                            Ok(data) => {
                                inner.stats.record_read_at_turn();
                                data
                            }
                            Err(reply) => {
                                c.holding.unhand(conn, c.index);
                                writer.send_control(id, &reply).await?;
                                continue;
                            }
                        },
                    };
                    waiting = Some((id, c, data, Box::pin(inner.upload_slots.clone().acquire_owned())));
                }
            },
            frame = tokio::time::timeout(IDLE_TIMEOUT, reader.next()), if queue.len() < ahead => {
                let frame = match frame {
                    Err(_) if queue.is_empty() && waiting.is_none() => {
                        return Err(ProtoError::Timeout(IDLE_TIMEOUT, "waiting for a request"))
                    }
                    Err(_) => continue,
                    Ok(None) => return Err(ProtoError::Closed),
                    Ok(Some(f)) => f?,
                };
                let Frame::Control { id, msg } = frame else {
                    writer
                        .send_control(
                            0,
                            &Message::error(ErrorCode::BadRequest, "unexpected chunk frame"),
                        )
                        .await?;
                    return Err(ProtoError::Unexpected("chunk frame"));
                };
                queue.push_back(match msg {
                    Message::RequestPingPong { nonce } => {
                        Box::pin(std::future::ready(Reply::Control(id, Message::ReplyPingPong { nonce })))
                    }
                    Message::PeerRequestHave { content_id } => {
                        let reply = match inner.store.get(&content_id) {
                            None => not_held(&content_id),
                            Some(holding) => {
                                let mut changes = holding.changes();
                                changes.borrow_and_update();
                                let have = holding.have();
                                if !have.is_full()
                                    && !subscriptions.iter().any(|s| s.content_id == content_id)
                                {
                                    subscriptions.push(Subscription { content_id, holding, changes, done: false });
                                }
                                Message::PeerHave { content_id, have }
                            }
                        };
                        Box::pin(std::future::ready(Reply::Control(id, reply)))
                    }
                    Message::PeerRequestChunk { content_id, index } => {
                        let holding = inner.store.get(&content_id);
                        if let Some(h) = &holding {
                            if !served.iter().any(|s| Arc::ptr_eq(s, h)) {
                                served.push(h.clone());
                            }
                        }
                        let asked_again = deferred.remove(&index);
                        match holding.as_ref().map(|h| h.decide(conn, index, asked_again)) {
                            Some(Decision::Defer(suggest)) => {
                                deferred.insert(index);
                                Box::pin(std::future::ready(Reply::Control(
                                    id,
                                    Message::ReplyChunkDeferred { index, suggest },
                                )))
                            }
                            _ => Box::pin(async move {
                                let delay = inner.delay();
                                if !delay.is_zero() {
                                    tokio::time::sleep(delay).await;
                                }
                                let taken = holding.clone();
                                match read_ahead(inner, holding, &content_id, index, inline).await {
                                    Ok((holding, data, memory)) => Reply::Chunk(id, ReadChunk { content_id, holding, index, data, _memory: memory }),
                                    Err(reply) => {
                                        if let Some(h) = taken {
                                            h.unhand(conn, index);
                                        }
                                        Reply::Control(id, reply)
                                    }
                                }
                            }),
                        }
                    }
                    other => Box::pin(std::future::ready(Reply::Control(
                        id,
                        Message::error(
                            ErrorCode::BadRequest,
                            format!("{} is not a peer request", other.kind()),
                        ),
                    ))),
                });
            }
        }
    }
}

type Permit = tokio::sync::OwnedSemaphorePermit;

/// Checks a chunk request, and reads the chunk now if its share of the
/// read-ahead budget ([`SERVE_MEMORY_KIB`] by default) is at hand; `None`
/// data: read it when it is the connection's next reply, with
/// [`read_held`].
async fn read_ahead(
    inner: &PeerInner,
    holding: Option<Arc<Holding>>,
    content_id: &p2pfs_proto::ContentId,
    index: u32,
    inline: Inline,
) -> Result<(Arc<Holding>, Option<ChunkBuf>, Option<Permit>), Message> {
    let Some(holding) = holding else {
        return Err(not_held(content_id));
    };
    let Some((_, len)) = holding.manifest.chunk_range(index) else {
        return Err(Message::error(
            ErrorCode::OutOfRange,
            format!("chunk {index} is out of range"),
        ));
    };
    if !holding.has(index) {
        return Err(Message::error(
            ErrorCode::NotHeld,
            format!("chunk {index} is not held here yet"),
        ));
    }
    let Ok(memory) = inner
        .serve_memory
        .clone()
        .try_acquire_many_owned(len.div_ceil(1024))
    else {
        return Ok((holding, None, None));
    };
    let data = read_held(inner, &holding, content_id, index, inline).await?;
    Ok((holding, Some(data), Some(memory)))
}

/// Reads and checks chunk `index` of a holding that has it; a changed file
/// is withdrawn.
async fn read_held(
    inner: &PeerInner,
    holding: &Arc<Holding>,
    content_id: &p2pfs_proto::ContentId,
    index: u32,
    inline: Inline,
) -> Result<ChunkBuf, Message> {
    let gone = || {
        Message::error(
            ErrorCode::NotFound,
            format!("content {} is no longer served here", content_id.short()),
        )
    };
    match inner.reader.read(holding.clone(), index, inline).await {
        Ok(data) => Ok(data),
        Err(ReadFailure::Changed(why)) => {
            inner.withdraw(*content_id, why).await;
            Err(gone())
        }
        Err(ReadFailure::Stopped) => Err(Message::error(
            ErrorCode::Internal,
            "this peer is shutting down",
        )),
        Err(ReadFailure::Io(e)) => {
            warn!(content = %content_id.short(), index, error = %e, "cannot read a chunk we hold");
            Err(Message::error(
                ErrorCode::Internal,
                "cannot read that chunk",
            ))
        }
    }
}
