//! [`TrackerHandle`]: the tracker's core API. The shell, the HTTP API and
//! the demo call only this.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2pfs_proto::conn::{split, with_timeout};
use p2pfs_proto::limits::CONNECT_TIMEOUT;
use p2pfs_proto::message::{ChunkInfo, FileInfo, PeerInfo, PublishedInfo};
use p2pfs_proto::{Frame, JoinToken, Message, PeerId, ProtoError, Role, Security};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Errors of tracker operations, worded for users.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// `start` when already serving.
    #[error("the tracker is already serving on {0}")]
    AlreadyStarted(SocketAddr),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {}", p2pfs_proto::io_words(.source))]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Pinging the tracker's own address.
    #[error("{0} is this tracker's own address; ping a peer instead")]
    PingSelf(SocketAddr),
    /// A network exchange with a peer failed.
    #[error("{addr}: {source}")]
    Peer {
        /// Peer address.
        addr: SocketAddr,
        /// Cause.
        source: ProtoError,
    },
    /// The peer is not online.
    #[error("no peer is online at {0}")]
    UnknownPeer(SocketAddr),
}

impl TrackerError {
    /// A stable machine-readable code (used by the HTTP API).
    pub fn code(&self) -> &'static str {
        match self {
            TrackerError::AlreadyStarted(_) => "already_started",
            TrackerError::Bind { .. } => "bind_failed",
            TrackerError::PingSelf(_) => "ping_self",
            TrackerError::Peer { .. } => "peer_unreachable",
            TrackerError::UnknownPeer(_) => "unknown_peer",
        }
    }
}

/// State shared by the handle and the server tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    version: watch::Sender<u64>,
    /// How every connection, in and out, is secured.
    pub(crate) security: Security,
}

impl Shared {
    /// Signals that the lists changed (for live views).
    pub(crate) fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

/// The tracker's core API; cheap to clone. Dropping the last clone does not
/// stop a started tracker: call [`shutdown`](Self::shutdown).
#[derive(Clone, Debug)]
pub struct TrackerHandle {
    shared: Arc<Shared>,
    addr: Arc<Mutex<Option<SocketAddr>>>,
    shutdown: CancellationToken,
}

impl TrackerHandle {
    /// A tracker that is not serving yet, securing its connections as
    /// `security` says (the same secret as its peers, or `Insecure`).
    pub fn new(security: Security) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                version: watch::channel(0).0,
                security,
            }),
            addr: Arc::new(Mutex::new(None)),
            shutdown: CancellationToken::new(),
        }
    }

    /// Binds `addr` and starts serving; returns the bound address (useful
    /// with port 0).
    ///
    /// # Errors
    /// Already started, or the address cannot be bound.
    pub async fn start(&self, addr: SocketAddr) -> Result<SocketAddr, TrackerError> {
        if let Some(a) = self.local_addr() {
            return Err(TrackerError::AlreadyStarted(a));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TrackerError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TrackerError::Bind { addr, source })?;
        {
            let mut slot = self.addr.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = *slot {
                return Err(TrackerError::AlreadyStarted(a));
            }
            *slot = Some(bound);
        }
        tracing::info!(addr = %bound, "tracker listening");
        tokio::spawn(crate::server::accept_loop(
            listener,
            self.shared.clone(),
            self.shutdown.clone(),
        ));
        Ok(bound)
    }

    /// The address it serves on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How its connections are secured.
    pub fn security(&self) -> &Security {
        &self.shared.security
    }

    /// What a peer needs to join, once serving with a network secret: the
    /// secret and the address to reach this tracker at (a wildcard listen
    /// address becomes this machine's outward address, or loopback).
    pub fn join_token(&self) -> Option<JoinToken> {
        let Security::Noise { secret, .. } = &self.shared.security else {
            return None;
        };
        let mut addr = self.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(outward_ip().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()));
        }
        Some(JoinToken {
            secret: secret.clone(),
            tracker: addr.to_string(),
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Online peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.with_state(State::peers)
    }

    /// Every published file.
    pub fn files(&self) -> Vec<FileInfo> {
        self.with_state(State::files)
    }

    /// Per content, which peer holds which chunks.
    pub fn chunk_info(&self) -> Vec<ChunkInfo> {
        self.with_state(State::chunk_info)
    }

    /// The files published by the peer at `addr`.
    ///
    /// # Errors
    /// [`TrackerError::UnknownPeer`].
    pub fn discover(&self, addr: SocketAddr) -> Result<(PeerId, Vec<PublishedInfo>), TrackerError> {
        match self.with_state(|s| s.discover(addr)) {
            Ok(Message::ReplyDiscover { peer_id, files, .. }) => Ok((peer_id, files)),
            _ => Err(TrackerError::UnknownPeer(addr)),
        }
    }

    /// A receiver that changes whenever peers, files or holdings change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Sends a ping to the peer at `addr` and returns the round-trip time
    /// (connect and hello excluded). Answers within about 2 s.
    ///
    /// # Errors
    /// Pinging the tracker itself, or a dead or non-p2pfs address.
    pub async fn ping(&self, addr: SocketAddr) -> Result<Duration, TrackerError> {
        if let Some(own) = self.local_addr() {
            if is_same_endpoint(own, addr) {
                return Err(TrackerError::PingSelf(addr));
            }
        }
        let peer_err = |source| TrackerError::Peer { addr, source };
        let stream =
            p2pfs_proto::conn::connect(addr, Role::Tracker, Role::Peer, &self.shared.security)
                .await
                .map_err(peer_err)?;
        let (mut reader, mut writer) = split(stream);
        let nonce: u64 = rand::random();
        let started = Instant::now();
        with_timeout(CONNECT_TIMEOUT, "waiting for the pong", async {
            use futures::StreamExt;
            writer
                .send_control(1, &Message::RequestPingPong { nonce })
                .await?;
            match reader.next().await {
                Some(Ok(Frame::Control {
                    msg: Message::ReplyPingPong { nonce: n },
                    ..
                })) if n == nonce => Ok(()),
                Some(Ok(Frame::Control {
                    msg: Message::Error(e),
                    ..
                })) => Err(ProtoError::Remote(e)),
                Some(Ok(_)) => Err(ProtoError::Unexpected("reply to ping")),
                Some(Err(e)) => Err(e),
                None => Err(ProtoError::Closed),
            }
        })
        .await
        .map_err(peer_err)?;
        let rtt = started.elapsed();
        writer.shutdown().await;
        Ok(rtt)
    }

    /// Stops serving and drops every connection.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves once [`shutdown`](Self::shutdown) was called.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }
}

/// Whether `b` names the same listening socket as `own` (treating a
/// wildcard or loopback IP as this host).
fn is_same_endpoint(own: SocketAddr, b: SocketAddr) -> bool {
    if own.port() != b.port() {
        return false;
    }
    let local = |ip: std::net::IpAddr| ip.is_unspecified() || ip.is_loopback();
    own.ip() == b.ip()
        || (own.ip().is_unspecified() && local(b.ip()))
        || (local(own.ip()) && b.ip().is_unspecified())
}

/// The address other machines most likely reach this one at: the source
/// address of the route to a documentation address (no packet is sent).
fn outward_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_endpoint() {
        let a: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(is_same_endpoint(a, "127.0.0.1:7000".parse().unwrap()));
        assert!(!is_same_endpoint(a, "127.0.0.1:7001".parse().unwrap()));
        let b: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert!(is_same_endpoint(b, b));
        assert!(!is_same_endpoint(b, "127.0.0.2:7000".parse().unwrap()));
    }
}
