//! The tracker's listener and peer sessions.
//!
//! Each accepted connection gets one task: hello exchange, then a loop that
//! reads control frames (with [`PEER_TIMEOUT`] as the read limit, so a peer
//! that stops sending heartbeats is dropped) and answers them in order. The
//! frames that arrived together (up to `MAX_BATCH`) are answered under one
//! lock of the state and in one write. When the connection ends, the
//! registered peer and its holdings are removed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use p2pfs_proto::conn::{accept, serve_connections, split_server, ConnLimits, FrameWriter};
use p2pfs_proto::limits::{CONNECT_TIMEOUT, PEER_TIMEOUT};
use p2pfs_proto::message::{HolderRef, ReplyRef};
use p2pfs_proto::{ErrorCode, Frame, Message, PeerId, ProtoError, Role};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::handle::Shared;
use crate::state::{Located, Refusal, State};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Most connections served at once from one IP address (every peer of a
/// host, or a load generator, connects from the same address).
pub const MAX_CONNECTIONS_PER_IP: usize = 4096;

/// Most requests of one connection answered under one lock of the state.
const MAX_BATCH: usize = 64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts connections until `shutdown` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    serve_connections(
        listener,
        ConnLimits {
            total: MAX_CONNECTIONS,
            per_ip: MAX_CONNECTIONS_PER_IP,
        },
        shutdown,
        move |stream, remote| {
            let shared = shared.clone();
            async move {
                let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                let mut registered = None;
                let result = session(stream, remote, &shared, conn_id, &mut registered).await;
                if let Some(peer_id) = registered {
                    if shared
                        .state
                        .lock()
                        .map(|mut s| s.remove_peer(peer_id, Some(conn_id)))
                        .unwrap_or(false)
                    {
                        info!(peer = %peer_id.short(), %remote, "peer left");
                        shared.changed();
                    }
                }
                result
            }
        },
    )
    .await;
    info!("tracker stopped accepting");
}

async fn session(
    stream: TcpStream,
    remote: SocketAddr,
    shared: &Shared,
    conn_id: u64,
    registered: &mut Option<PeerId>,
) -> Result<(), ProtoError> {
    let (role, stream) = match accept(stream, Role::Tracker, &shared.security).await {
        Ok(s) => s,
        Err(e @ (ProtoError::WrongSecret | ProtoError::SecurityMismatch { .. })) => {
            info!(%remote, error = %e, "refused a connection");
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if role != Role::Peer {
        return Err(ProtoError::UnexpectedRole(format!(
            "{role:?} connected to the tracker"
        )));
    }
    let (mut reader, mut writer) = split_server(stream);
    let mut batch = Vec::new();
    // One timer per connection, moved on only when it fires: a fresh
    // timeout per batch put an entry into the timer wheel and took it out
    // again for every request a busy peer sent.
    let mut last_frame = Instant::now();
    let idle = tokio::time::sleep_until(last_frame + PEER_TIMEOUT);
    tokio::pin!(idle);
    loop {
        let next = loop {
            tokio::select! {
                biased;
                next = reader.next() => break next,
                () = &mut idle => {
                    let deadline = last_frame + PEER_TIMEOUT;
                    if Instant::now() >= deadline {
                        return Err(ProtoError::Timeout(PEER_TIMEOUT, "waiting for a heartbeat"));
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        };
        last_frame = Instant::now();
        let frame = match next {
            None => return Err(ProtoError::Closed),
            Some(f) => f?,
        };
        // Everything already buffered is answered under one lock of the
        // state and in one write.
        batch.push(frame);
        while batch.len() < MAX_BATCH {
            match reader.next().now_or_never() {
                Some(Some(f)) => batch.push(f?),
                _ => break,
            }
        }
        let mut leave = false;
        let mut stray_chunk = false;
        let mut changed = false;
        let mut failed = None;
        {
            let Ok(mut state) = shared.state.lock() else {
                return Err(ProtoError::Unexpected("tracker state poisoned"));
            };
            for frame in batch.drain(..) {
                let Frame::Control { id, msg } = frame else {
                    stray_chunk = true;
                    break;
                };
                leave |= matches!(msg, Message::Leave);
                let (reply, c) = handle_request(&mut state, remote, conn_id, registered, msg);
                changed |= c;
                if let Err(e) = reply.queue(id, &mut writer) {
                    failed = Some(e);
                    break;
                }
            }
        }
        batch.clear();
        // Live views hear of a change even when its reply cannot be sent.
        if changed {
            shared.changed();
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if stray_chunk {
            writer.queue_control(
                0,
                &Message::error(
                    ErrorCode::BadRequest,
                    "chunk frames are not for the tracker",
                ),
            )?;
            writer.flush().await?;
            return Err(ProtoError::Unexpected("chunk frame"));
        }
        // Replies almost always fit the socket's buffer at once; a timer is
        // set only when they do not.
        if let Some(written) = writer.flush().now_or_never() {
            written?;
        } else {
            tokio::time::timeout(CONNECT_TIMEOUT * 2, writer.flush())
                .await
                .map_err(|_| ProtoError::Timeout(CONNECT_TIMEOUT * 2, "writing replies"))??;
        }
        if leave {
            return Ok(());
        }
    }
}

/// The peer this connection speaks for, or the refusal of a request that
/// needs one (`doing`: what the request does). A connection stops speaking
/// for its peer once a newer connection registers the same peer id: a
/// reconnect whose old connection has not timed out yet, or two peers with
/// one identity (a copied repository). Its requests would otherwise be
/// filed under the newer connection's address.
fn speaker(
    state: &State,
    registered: &mut Option<PeerId>,
    conn_id: u64,
    doing: &str,
) -> Result<PeerId, Refusal> {
    let Some(peer) = *registered else {
        return Err((ErrorCode::NotRegistered, format!("register before {doing}")));
    };
    match state.connection_of(peer) {
        Some((current, _)) if current == conn_id => Ok(peer),
        Some((_, addr)) => {
            *registered = None;
            Err((
                ErrorCode::NotRegistered,
                format!(
                    "another connection has registered as this peer ({}, at {addr}); \
                     this one no longer counts. Connect again to take over, and give \
                     each peer its own repository",
                    peer.short()
                ),
            ))
        }
        None => {
            *registered = None;
            Err((
                ErrorCode::NotRegistered,
                format!(
                    "the tracker no longer lists this peer ({}); connect again",
                    peer.short()
                ),
            ))
        }
    }
}

fn refusal((code, message): (ErrorCode, String)) -> Message {
    Message::error(code, message)
}

/// A reply to one request.
enum Reply<'s> {
    Owned(Message),
    /// Encoded from the state while it is locked, without copies.
    Located {
        name: String,
        found: Located<'s>,
    },
    Holders(Vec<HolderRef<'s>>),
}

impl Reply<'_> {
    fn queue<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        id: u32,
        writer: &mut FrameWriter<W>,
    ) -> Result<(), ProtoError> {
        match self {
            Reply::Owned(msg) => writer.queue_control(id, msg),
            Reply::Located { name, found } => writer.queue_control(
                id,
                &ReplyRef::FileLocation {
                    name,
                    publisher: found.publisher,
                    content_id: found.content_id,
                    manifest: found.manifest,
                    holders: &found.holders,
                },
            ),
            Reply::Holders(holders) => writer.queue_control(id, &ReplyRef::Holders { holders }),
        }
    }
}

/// Answers one request; the flag says whether the lists changed.
fn handle_request<'s>(
    state: &'s mut State,
    remote: SocketAddr,
    conn_id: u64,
    registered: &mut Option<PeerId>,
    msg: Message,
) -> (Reply<'s>, bool) {
    // The most frequent requests: answered from borrowed state.
    let msg = match msg {
        Message::RequestFileLocation { name, publisher } => {
            let reply = match state.locate(&name, publisher) {
                Ok(found) => Reply::Located { name, found },
                Err(r) => Reply::Owned(refusal(r)),
            };
            return (reply, false);
        }
        Message::RequestHolders { content_id } => {
            return (Reply::Holders(state.holders(&content_id)), false);
        }
        other => other,
    };
    let mut changed = true;
    let reply = match msg {
        Message::RequestRegister {
            peer_id,
            mut listen,
        } => {
            if listen.ip().is_unspecified() {
                listen.set_ip(remote.ip());
            }
            if let Some(old) = registered.replace(peer_id) {
                if old != peer_id {
                    state.remove_peer(old, Some(conn_id));
                }
            }
            if let Some((old_conn, old_addr)) = state.connection_of(peer_id) {
                if old_conn != conn_id {
                    // A reconnect before the old connection timed out, or
                    // two peers sharing one identity: the newer counts.
                    info!(peer = %peer_id.short(), %listen, older = %old_addr,
                        "peer registered on a new connection; the older one no longer counts");
                }
            }
            state.register(peer_id, listen, conn_id);
            info!(peer = %peer_id.short(), %listen, "peer registered");
            Message::ReplyRegister { listen }
        }
        Message::RequestPublish {
            name,
            local_path,
            manifest,
        } => match speaker(state, registered, conn_id, "publishing") {
            Err(r) => refusal(r),
            Ok(peer) => {
                let size = manifest.size;
                match state.publish(peer, name.clone(), local_path, manifest) {
                    Ok(content_id) => {
                        info!(peer = %peer.short(), %name, size, "file published");
                        Message::ReplyPublish { content_id }
                    }
                    Err(r) => refusal(r),
                }
            }
        },
        Message::RequestChunkRegister {
            content_id,
            indexes,
        } => match speaker(state, registered, conn_id, "announcing chunks") {
            Err(r) => refusal(r),
            Ok(peer) => state
                .chunk_register(peer, content_id, &indexes)
                .map_or_else(refusal, |()| Message::Ok),
        },
        Message::RequestHave { manifest, have } => {
            match speaker(state, registered, conn_id, "announcing chunks") {
                Err(r) => refusal(r),
                Ok(peer) => state
                    .have(peer, manifest, &have)
                    .map_or_else(refusal, |_| Message::Ok),
            }
        }
        Message::RequestUnpublish { name } => {
            match speaker(state, registered, conn_id, "unpublishing") {
                Err(r) => refusal(r),
                Ok(peer) => match state.unpublish(peer, &name) {
                    Ok(()) => {
                        info!(peer = %peer.short(), %name, "file withdrawn");
                        Message::Ok
                    }
                    Err(r) => refusal(r),
                },
            }
        }
        Message::Heartbeat => {
            changed = false;
            Message::Ok
        }
        Message::Leave => {
            if let Some(peer) = registered.take() {
                state.remove_peer(peer, Some(conn_id));
                info!(peer = %peer.short(), "peer left");
            }
            Message::Ok
        }
        other => {
            changed = false;
            match other {
                Message::RequestFileList => Message::ReplyFileList {
                    files: state.files(),
                },
                Message::RequestDiscover { addr } => state.discover(addr).unwrap_or_else(refusal),
                Message::RequestPeerList => Message::ReplyPeerList {
                    peers: state.peers(),
                },
                Message::RequestChunkInfo => Message::ReplyChunkInfo {
                    files: state.chunk_info(),
                },
                Message::RequestPingPong { nonce } => Message::ReplyPingPong { nonce },
                other => Message::error(
                    ErrorCode::BadRequest,
                    format!("{} is not a tracker request", other.kind()),
                ),
            }
        }
    };
    (Reply::Owned(reply), changed)
}
