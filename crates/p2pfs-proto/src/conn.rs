//! Connection helpers over the [`secure`] transport: connect
//! and accept (security handshake, then the role hello inside it), a frame
//! writer that batches small frames and never copies chunk payloads, and a
//! multiplexed request/reply client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::codec::{chunk_header, encode_control, Control, ControlCodec, Frame, FrameCodec};
use crate::frame_reader::FrameReader;
use crate::limits::{CONNECT_TIMEOUT, HELLO_LEN, MAGIC, PROTOCOL_VERSION, REQUEST_TIMEOUT};
use crate::message::Message;
use crate::secure::{self, ReadHalf, Security, Stream, WriteHalf};
use crate::types::ContentId;
use crate::ProtoError;

/// What kind of endpoint sent a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A tracker.
    Tracker = 1,
    /// A peer daemon.
    Peer = 2,
}

impl Role {
    fn from_u8(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Tracker),
            2 => Some(Role::Peer),
            _ => None,
        }
    }
}

/// Encodes the 8-byte hello: magic, version (u16 BE), role, reserved zero.
pub fn encode_hello(role: Role) -> [u8; HELLO_LEN] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], role as u8, 0,
    ]
}

/// Decodes and checks a hello.
///
/// # Errors
/// [`ProtoError::BadMagic`], [`ProtoError::VersionMismatch`] or
/// [`ProtoError::UnexpectedRole`].
pub fn decode_hello(b: &[u8; HELLO_LEN]) -> Result<Role, ProtoError> {
    check_magic_and_version(b)?;
    Role::from_u8(b[6]).ok_or_else(|| ProtoError::UnexpectedRole(format!("role byte {}", b[6])))
}

/// Checks the first 6 bytes shared by the hello and the security preamble:
/// the magic and our protocol version.
///
/// # Errors
/// [`ProtoError::BadMagic`] or [`ProtoError::VersionMismatch`].
pub(crate) fn check_magic_and_version(b: &[u8; 8]) -> Result<(), ProtoError> {
    if b[0..4] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let remote = u16::from_be_bytes([b[4], b[5]]);
    if remote != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch {
            remote,
            local: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// Runs `fut` with a time limit, naming what timed out.
///
/// # Errors
/// [`ProtoError::Timeout`] when the limit passes first.
pub async fn with_timeout<T>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, ProtoError>>,
) -> Result<T, ProtoError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ProtoError::Timeout(limit, what))?
}

/// Sends our hello and reads the other side's, within [`CONNECT_TIMEOUT`].
/// Both sides send first, so each learns the other's version and role.
///
/// # Errors
/// Handshake errors and timeouts.
pub async fn exchange_hello<S>(stream: &mut S, me: Role) -> Result<Role, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(CONNECT_TIMEOUT, "exchanging hellos", async {
        stream.write_all(&encode_hello(me)).await?;
        stream.flush().await?;
        let mut theirs = [0u8; HELLO_LEN];
        stream.read_exact(&mut theirs).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ProtoError::Closed
            } else {
                ProtoError::Io(e)
            }
        })?;
        decode_hello(&theirs)
    })
    .await
}

/// Connects to `addr`, runs the security handshake, exchanges hellos and
/// checks the remote's role.
///
/// # Errors
/// Connect failures, [`ProtoError::WrongSecret`] and other handshake errors,
/// timeouts.
pub async fn connect(
    addr: SocketAddr,
    me: Role,
    expect: Role,
    security: &Security,
) -> Result<Stream, ProtoError> {
    let stream = with_timeout(CONNECT_TIMEOUT, "connecting", async {
        Ok(TcpStream::connect(addr).await?)
    })
    .await?;
    connect_stream(stream, addr, me, expect, security).await
}

/// [`connect`] over an already connected socket (for callers that bind the
/// local address themselves).
///
/// # Errors
/// As [`connect`].
pub async fn connect_stream(
    stream: TcpStream,
    addr: SocketAddr,
    me: Role,
    expect: Role,
    security: &Security,
) -> Result<Stream, ProtoError> {
    stream.set_nodelay(true)?;
    let mut stream = with_timeout(
        CONNECT_TIMEOUT,
        "securing the connection",
        secure::initiate(stream, security),
    )
    .await?;
    let role = exchange_hello(&mut stream, me).await?;
    if role != expect {
        return Err(ProtoError::UnexpectedRole(format!(
            "{addr} is a {role:?}, not a {expect:?}"
        )));
    }
    Ok(stream)
}

/// Answers the security handshake and the hello of an accepted connection,
/// within [`CONNECT_TIMEOUT`] each. Returns the remote's role. A wrong secret
/// is answered with a refusal before any of our data is sent.
///
/// # Errors
/// As [`connect`].
pub async fn accept(
    stream: TcpStream,
    me: Role,
    security: &Security,
) -> Result<(Role, Stream), ProtoError> {
    stream.set_nodelay(true)?;
    let mut stream = with_timeout(
        CONNECT_TIMEOUT,
        "securing the connection",
        secure::respond(stream, security),
    )
    .await?;
    let role = exchange_hello(&mut stream, me).await?;
    Ok((role, stream))
}

/// Splits an accepted stream into a request reader (control frames only,
/// see [`ControlCodec`]) and a [`FrameWriter`].
pub fn split_server(
    stream: Stream,
) -> (FramedRead<ReadHalf, ControlCodec>, FrameWriter<WriteHalf>) {
    let (r, w) = stream.into_split();
    (
        FramedRead::with_capacity(r, ControlCodec, 2048),
        FrameWriter::new(w),
    )
}

/// Splits a stream into a [`FrameReader`] and a [`FrameWriter`].
pub fn split(stream: Stream) -> (FrameReader<ReadHalf>, FrameWriter<WriteHalf>) {
    let (r, w) = stream.into_split();
    (FrameReader::new(r), FrameWriter::new(w))
}

/// Writes frames. Control frames queue in a buffer until [`flush`](Self::flush);
/// chunk payloads go straight from the caller's buffer to the socket.
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(1024),
        }
    }

    /// Queues a control frame.
    ///
    /// # Errors
    /// Oversize messages.
    pub fn queue_control<M: Control + ?Sized>(
        &mut self,
        id: u32,
        msg: &M,
    ) -> Result<(), ProtoError> {
        encode_control(id, msg, &mut self.buf)
    }

    /// Writes everything queued.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn flush(&mut self) -> Result<(), ProtoError> {
        self.inner.write_all_buf(&mut self.buf).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Queues and flushes one control frame.
    ///
    /// # Errors
    /// Oversize messages, socket errors.
    pub async fn send_control(&mut self, id: u32, msg: &Message) -> Result<(), ProtoError> {
        self.queue_control(id, msg)?;
        self.flush().await
    }

    /// Writes anything queued, then a chunk frame.
    ///
    /// # Errors
    /// Oversize payloads, socket errors.
    pub async fn send_chunk(
        &mut self,
        id: u32,
        content_id: &ContentId,
        index: u32,
        data: &[u8],
    ) -> Result<(), ProtoError> {
        let header = chunk_header(id, content_id, index, data.len())?;
        self.buf.extend_from_slice(&header);
        // Queued frames, header and payload in one system call where the
        // socket takes them all.
        let mut data = data;
        while !self.buf.is_empty() || !data.is_empty() {
            let n = self
                .inner
                .write_vectored(&[
                    std::io::IoSlice::new(&self.buf),
                    std::io::IoSlice::new(data),
                ])
                .await?;
            if n == 0 {
                return Err(ProtoError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            let from_buf = n.min(self.buf.len());
            self.buf.advance(from_buf);
            data = &data[n - from_buf..];
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Shuts the write side down.
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.inner.shutdown().await;
    }
}

type Pending = oneshot::Sender<Result<Message, ProtoError>>;

/// A request/reply client over one connection. Requests are multiplexed by
/// request id, so many tasks can call at once. Cloning is cheap.
#[derive(Clone)]
pub struct RpcClient {
    tx: mpsc::Sender<(Message, Pending)>,
    closed: CancellationToken,
    remote: SocketAddr,
    /// When the last reply arrived, if one has.
    last_reply: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl RpcClient {
    /// Connects, secures the connection, exchanges hellos and starts the
    /// connection task.
    ///
    /// # Errors
    /// Connect and handshake errors.
    pub async fn connect(
        addr: SocketAddr,
        me: Role,
        expect: Role,
        security: &Security,
    ) -> Result<Self, ProtoError> {
        let stream = connect(addr, me, expect, security).await?;
        Ok(Self::start(stream, addr))
    }

    /// Starts the connection task over an already greeted stream.
    pub fn start(stream: Stream, remote: SocketAddr) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let closed = CancellationToken::new();
        let guard = closed.clone().drop_guard();
        let last_reply = std::sync::Arc::default();
        let last = std::sync::Arc::clone(&last_reply);
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = rpc_task(stream, rx, &last).await {
                tracing::debug!(%remote, error = %e, "rpc connection ended");
            }
        });
        Self {
            tx,
            closed,
            remote,
            last_reply,
        }
    }

    /// When the last reply arrived (`None` before the first). A reply shows
    /// that both directions worked; a peer uses it to skip a heartbeat the
    /// tracker does not need.
    pub fn last_reply(&self) -> Option<std::time::Instant> {
        *self.last_reply.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remote address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Sends a request and waits for its reply, within [`REQUEST_TIMEOUT`].
    /// An error reply becomes [`ProtoError::Remote`].
    ///
    /// # Errors
    /// Connection errors, timeouts, remote errors.
    pub async fn call(&self, msg: Message) -> Result<Message, ProtoError> {
        self.call_timeout(msg, REQUEST_TIMEOUT).await
    }

    /// [`call`](Self::call) with a chosen time limit.
    ///
    /// # Errors
    /// As `call`.
    pub async fn call_timeout(&self, msg: Message, limit: Duration) -> Result<Message, ProtoError> {
        let (tx, rx) = oneshot::channel();
        // Queueing counts against the limit too: a connection whose remote
        // stopped reading must not block callers forever.
        let reply = with_timeout(limit, "waiting for a reply", async {
            self.tx
                .send((msg, tx))
                .await
                .map_err(|_| ProtoError::Closed)?;
            rx.await.map_err(|_| ProtoError::Closed)?
        })
        .await?;
        match reply {
            Message::Error(e) => Err(ProtoError::Remote(e)),
            other => Ok(other),
        }
    }
}

async fn rpc_task(
    stream: Stream,
    mut rx: mpsc::Receiver<(Message, Pending)>,
    last_reply: &std::sync::Mutex<Option<std::time::Instant>>,
) -> Result<(), ProtoError> {
    // Control traffic only: a small read buffer that grows when needed.
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::with_capacity(r, FrameCodec, 2048);
    let mut writer = FrameWriter::new(w);
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut next_id: u32 = 1;
    let result = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some((msg, reply)) = req else { break Ok(()) };
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(1);
                if let Err(e) = writer.queue_control(id, &msg) {
                    let _ = reply.send(Err(e));
                    continue;
                }
                pending.insert(id, reply);
                // Batch whatever else is already waiting into the same write.
                while let Ok((msg, reply)) = rx.try_recv() {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1).max(1);
                    match writer.queue_control(id, &msg) {
                        Ok(()) => { pending.insert(id, reply); }
                        Err(e) => { let _ = reply.send(Err(e)); }
                    }
                }
                // A remote that stops reading ends the connection.
                match tokio::time::timeout(REQUEST_TIMEOUT, writer.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(ProtoError::Timeout(REQUEST_TIMEOUT, "sending requests")),
                }
            }
            frame = reader.next() => match frame {
                Some(Ok(Frame::Control { id, msg })) => {
                    *last_reply.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(std::time::Instant::now());
                    if let Some(reply) = pending.remove(&id) {
                        let _ = reply.send(Ok(msg));
                    }
                }
                Some(Ok(Frame::Chunk { .. })) => break Err(ProtoError::Unexpected("chunk frame")),
                Some(Err(e)) => break Err(e),
                None => break Err(ProtoError::Closed),
            }
        }
    };
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(ProtoError::Closed));
    }
    result
}

/// Accepts connections until `shutdown` is cancelled, at most `max` at once
/// (further ones are closed at once), and runs `handle` for each in its own
/// task, logging how it ended. Used by the tracker and the peer listeners.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    limits: ConnLimits,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), ProtoError>> + Send + 'static,
{
    let limit = std::sync::Arc::new(Semaphore::new(limits.total));
    let per_ip = PerIp::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "connection limit reached; closing");
            continue;
        };
        let Some(ip_slot) = per_ip.take(remote.ip(), limits.per_ip) else {
            tracing::debug!(%remote, "too many connections from this address; closing");
            continue;
        };
        let session = handle(stream, remote);
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ip_slot = ip_slot;
            let result = tokio::select! {
                () = token.cancelled() => Ok(()),
                r = session => r,
            };
            match result {
                Ok(()) | Err(ProtoError::Closed) => tracing::debug!(%remote, "connection closed"),
                Err(e) => tracing::debug!(%remote, error = %e, "connection ended"),
            }
        });
    }
}

/// How many connections a listener serves at once.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// In total.
    pub total: usize,
    /// From one remote IP address.
    pub per_ip: usize,
}

/// Open connections per remote IP.
#[derive(Clone, Default)]
struct PerIp(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place in [`PerIp`]; freed on drop.
struct IpSlot {
    map: PerIp,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_survive_partial_vectored_writes() {
        // A 7-byte pipe: every write is cut short, in the queued control
        // frames, in the header and in the payload.
        let (a, b) = tokio::io::duplex(7);
        let mut writer = FrameWriter::new(a);
        let content_id = ContentId([9; 32]);
        let payload: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let reading = tokio::spawn(async move {
            let mut reader = FramedRead::new(b, FrameCodec);
            let mut frames = Vec::new();
            while let Some(f) = reader.next().await {
                frames.push(f.unwrap());
            }
            frames
        });
        writer.queue_control(3, &Message::Ok).unwrap();
        writer
            .send_chunk(4, &content_id, 2, &payload)
            .await
            .unwrap();
        writer.send_control(5, &Message::Ok).await.unwrap();
        drop(writer);
        let frames = reading.await.unwrap();
        assert_eq!(frames.len(), 3);
        assert!(matches!(
            frames[0],
            Frame::Control {
                id: 3,
                msg: Message::Ok
            }
        ));
        match &frames[1] {
            Frame::Chunk {
                id,
                content_id: c,
                index,
                data,
            } => {
                assert_eq!((*id, *c, *index), (4, content_id, 2));
                assert_eq!(&data[..], &payload[..]);
            }
            other => panic!("not a chunk frame: {other:?}"),
        }
        assert!(matches!(
            frames[2],
            Frame::Control {
                id: 5,
                msg: Message::Ok
            }
        ));
    }

    #[tokio::test]
    async fn rpc_client_records_when_the_last_reply_arrived() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (_, stream) = accept(tcp, Role::Tracker, &Security::Insecure)
                .await
                .unwrap();
            let (mut reader, mut writer) = split_server(stream);
            while let Some(Ok(Frame::Control { id, .. })) = reader.next().await {
                writer.send_control(id, &Message::Ok).await.unwrap();
            }
        });
        let client = RpcClient::connect(addr, Role::Peer, Role::Tracker, &Security::Insecure)
            .await
            .unwrap();
        assert_eq!(client.last_reply(), None, "no reply yet");
        let before = std::time::Instant::now();
        client.call(Message::Heartbeat).await.unwrap();
        let first = client.last_reply().expect("a reply arrived");
        assert!(first >= before);
        client.call(Message::Heartbeat).await.unwrap();
        assert!(client.last_reply().unwrap() >= first);
        assert_ne!(client.last_reply(), Some(first), "the newer reply counts");
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn per_ip_limit_closes_extra_connections_and_frees_slots() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let limits = ConnLimits {
            total: 10,
            per_ip: 2,
        };
        tokio::spawn(serve_connections(
            listener,
            limits,
            stop.clone(),
            |mut s, _| async move {
                // Hold the connection until the client closes it.
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf).await;
                Ok(())
            },
        ));
        let a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        // The third is accepted by the kernel, then closed by the server.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("closed quickly")
            .unwrap_or(0);
        assert_eq!(n, 0);
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = TcpStream::connect(addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), d.read(&mut buf)).await;
        assert!(r.is_err(), "a freed slot takes a new connection");
        stop.cancel();
    }
}
