//! The secure transport under every connection: a plaintext preamble, a
//! Noise `NNpsk0` handshake keyed by the network secret, then every byte
//! sealed in Noise transport records. See PROTOCOL.md §Transport security.
//!
//! ```text
//! preamble = "P2PF" version:u16be mode:u8 status:u8       (8 bytes, each way)
//! mode     = 0 plain (--insecure) | 1 Noise AES-GCM | 2 Noise ChaCha20-Poly1305
//! status   = 0 go on | 1 wrong network secret | 2 security mode mismatch
//! record   = length:u16be ciphertext                      (Noise mode only)
//! ```
//!
//! The initiator sends its preamble and, in Noise mode, the first handshake
//! record at once; the responder answers with its preamble (status 0 and the
//! second handshake record, or a refusal status and a close). Only then do
//! both sides exchange the role hello of [`crate::conn`], inside the channel.
//! A node without the secret therefore learns nothing but that a p2pfs node
//! of this version listens, and whether it wants encryption.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use base64::Engine;
use bytes::{Buf, BytesMut};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::limits::{MAGIC, PROTOCOL_VERSION};
use crate::pool::Pool;
use crate::ProtoError;

/// Length of the network secret, in bytes.
pub const SECRET_LEN: usize = 32;
/// Length of the preamble each side sends first, in bytes.
pub const PREAMBLE_LEN: usize = 8;
/// Largest Noise message, in bytes (the Noise limit).
pub const MAX_RECORD_LEN: usize = 65_535;
/// Authentication tag at the end of every sealed record, in bytes.
pub const TAG_LEN: usize = 16;
/// Largest plaintext in one record, in bytes.
pub const MAX_RECORD_PLAIN: usize = MAX_RECORD_LEN - TAG_LEN;
/// Largest handshake record a responder reads, in bytes.
const MAX_HANDSHAKE_LEN: usize = 1024;
/// Sealed bytes a writer queues before it waits for the socket.
const WRITE_BACKLOG: usize = 256 * 1024;
/// Smallest and largest read a reader asks the socket for, in bytes.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;
/// A connection's buffers larger than this come from the process-wide
/// pools below while bulk data flows, and go back as soon as they are
/// empty (see [`crate::pool`]); smaller ones stay with the connection.
const POOLED_MIN: usize = 32 * 1024;
/// Size of a pooled read buffer: the largest read plus one partial record.
const READ_BUF: usize = MAX_READ + 2 + MAX_RECORD_LEN;
/// Size of a pooled write buffer: the backlog plus one record.
const WRITE_BUF: usize = WRITE_BACKLOG + 2 + MAX_RECORD_LEN;
/// Idle buffers each pool keeps. With 16, a single encrypted download
/// peaked at 20-21 MiB instead of 15-16 (buffers left idle after a burst),
/// and 200 downloaders were no faster than with 2.
const POOL_KEEP: usize = 2;
static READ_POOL: Pool<BytesMut> = Pool::new(POOL_KEEP);
static RECORD_POOL: Pool<Vec<u8>> = Pool::new(POOL_KEEP);
static WRITE_POOL: Pool<Vec<u8>> = Pool::new(POOL_KEEP);
/// Bound into the handshake hash: a peer speaking another protocol version
/// or application cannot complete it even with the right key.
const PROLOGUE: &[u8] = b"p2pfs wire protocol v3";
/// Key-derivation context turning the network secret into the Noise PSK.
const PSK_CONTEXT: &str = "p2pfs 2026-11 network secret -> Noise NNpsk0 pre-shared key";
/// Prefix of a join token.
const TOKEN_PREFIX: &str = "p2pfs1:";

const STATUS_OK: u8 = 0;
const STATUS_WRONG_SECRET: u8 = 1;
const STATUS_MODE_MISMATCH: u8 = 2;

/// The network secret shared by a tracker and its peers. Its `Debug` output
/// never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkSecret(..)")
    }
}

impl NetworkSecret {
    /// A fresh random secret from the operating system's generator.
    pub fn generate() -> Self {
        let mut b = [0u8; SECRET_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut b[..]);
        Self(b)
    }

    /// A secret from raw bytes.
    pub fn from_bytes(b: [u8; SECRET_LEN]) -> Self {
        Self(b)
    }

    /// The text form: 43 characters of unpadded base64url.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the text form (surrounding whitespace allowed).
    ///
    /// # Errors
    /// [`ProtoError::BadSecret`] unless it is 32 bytes of base64url.
    pub fn from_text(s: &str) -> Result<Self, ProtoError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| ProtoError::BadSecret("not base64url text"))?;
        let b: [u8; SECRET_LEN] = bytes
            .try_into()
            .map_err(|_| ProtoError::BadSecret("not 32 bytes long"))?;
        Ok(Self(b))
    }

    fn psk(&self) -> [u8; 32] {
        blake3::derive_key(PSK_CONTEXT, &self.0)
    }
}

/// What a peer needs to join a network: the tracker's address and the
/// network secret, as one copy-and-paste string `p2pfs1:SECRET@HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// The network secret.
    pub secret: NetworkSecret,
    /// The tracker's address, `host:port` (an IPv6 address in brackets).
    pub tracker: String,
}

impl JoinToken {
    /// The token text.
    pub fn to_text(&self) -> String {
        format!("{TOKEN_PREFIX}{}@{}", self.secret.to_text(), self.tracker)
    }

    /// Parses a token.
    ///
    /// # Errors
    /// [`ProtoError::BadSecret`] with what is wrong.
    pub fn from_text(s: &str) -> Result<Self, ProtoError> {
        let rest = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(ProtoError::BadSecret("a join token starts with `p2pfs1:`"))?;
        let (secret, tracker) = rest.split_once('@').ok_or(ProtoError::BadSecret(
            "a join token has the form p2pfs1:SECRET@HOST:PORT",
        ))?;
        if tracker.is_empty() || !tracker.contains(':') {
            return Err(ProtoError::BadSecret(
                "the join token's tracker address has no port",
            ));
        }
        Ok(Self {
            secret: NetworkSecret::from_text(secret)?,
            tracker: tracker.to_string(),
        })
    }
}

/// The Noise cipher suite. AES-GCM is the default: measured on the project's
/// machine it is the faster of the two (BENCHMARKS.md, "Encryption").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Suite {
    /// `Noise_NNpsk0_25519_AESGCM_SHA256`.
    #[default]
    AesGcm,
    /// `Noise_NNpsk0_25519_ChaChaPoly_SHA256`.
    ChaChaPoly,
}

impl Suite {
    fn mode(self) -> u8 {
        match self {
            Suite::AesGcm => 1,
            Suite::ChaChaPoly => 2,
        }
    }

    fn from_mode(m: u8) -> Option<Self> {
        match m {
            1 => Some(Suite::AesGcm),
            2 => Some(Suite::ChaChaPoly),
            _ => None,
        }
    }

    fn params(self) -> snow::params::NoiseParams {
        let name = match self {
            Suite::AesGcm => "Noise_NNpsk0_25519_AESGCM_SHA256",
            Suite::ChaChaPoly => "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
        };
        name.parse().expect("a valid, supported Noise pattern name")
    }
}

/// How a node protects its connections.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain TCP, no authentication (`--insecure`).
    Insecure,
    /// A Noise handshake proving both sides hold the secret, then every byte
    /// sealed. An initiator proposes `suite`; a responder accepts either.
    Noise {
        /// The network secret.
        secret: NetworkSecret,
        /// The suite an initiator proposes.
        suite: Suite,
    },
}

impl Security {
    /// Noise with the default suite.
    pub fn secret(secret: NetworkSecret) -> Self {
        Security::Noise {
            secret,
            suite: Suite::default(),
        }
    }

    /// True for [`Security::Insecure`].
    pub fn is_insecure(&self) -> bool {
        matches!(self, Security::Insecure)
    }

    fn mode(&self) -> u8 {
        match self {
            Security::Insecure => 0,
            Security::Noise { suite, .. } => suite.mode(),
        }
    }
}

fn preamble(mode: u8, status: u8) -> [u8; PREAMBLE_LEN] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], mode, status,
    ]
}

/// Checks magic and version; returns (mode, status).
fn parse_preamble(b: &[u8; PREAMBLE_LEN]) -> Result<(u8, u8), ProtoError> {
    crate::conn::check_magic_and_version(b)?;
    Ok((b[6], b[7]))
}

fn eof_is_closed(e: io::Error) -> ProtoError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ProtoError::Closed
    } else {
        ProtoError::Io(e)
    }
}

fn noise_failed(e: snow::Error) -> ProtoError {
    ProtoError::Io(io::Error::other(format!("noise handshake: {e}")))
}

async fn read_record<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Vec<u8>, ProtoError> {
    let len = stream.read_u16().await.map_err(eof_is_closed)? as usize;
    if len == 0 || len > max {
        return Err(ProtoError::FrameTooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(eof_is_closed)?;
    Ok(buf)
}

fn record(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Runs the initiator's side of the security handshake on a fresh
/// connection. The caller bounds it in time.
///
/// # Errors
/// [`ProtoError::WrongSecret`], [`ProtoError::SecurityMismatch`], version and
/// magic errors, socket errors.
pub async fn initiate(mut stream: TcpStream, security: &Security) -> Result<Stream, ProtoError> {
    let mut hs = match security {
        Security::Insecure => None,
        Security::Noise { secret, suite } => {
            let psk = secret.psk();
            let mut hs = snow::Builder::new(suite.params())
                .prologue(PROLOGUE)
                .and_then(|b| b.psk(0, &psk))
                .and_then(snow::Builder::build_initiator)
                .map_err(noise_failed)?;
            let mut msg = [0u8; MAX_HANDSHAKE_LEN];
            let n = hs.write_message(&[], &mut msg).map_err(noise_failed)?;
            let mut first = preamble(security.mode(), STATUS_OK).to_vec();
            first.extend_from_slice(&record(&msg[..n]));
            stream.write_all(&first).await?;
            Some(hs)
        }
    };
    if hs.is_none() {
        stream.write_all(&preamble(0, STATUS_OK)).await?;
    }
    let mut theirs = [0u8; PREAMBLE_LEN];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(eof_is_closed)?;
    let (mode, status) = parse_preamble(&theirs)?;
    match status {
        STATUS_OK => {}
        STATUS_WRONG_SECRET => return Err(ProtoError::WrongSecret),
        _ => {
            return Err(ProtoError::SecurityMismatch {
                remote_insecure: mode == 0,
            })
        }
    }
    if (mode == 0) != hs.is_none() {
        return Err(ProtoError::SecurityMismatch {
            remote_insecure: mode == 0,
        });
    }
    let state = match hs.take() {
        None => None,
        Some(mut hs) => {
            let msg = read_record(&mut stream, MAX_HANDSHAKE_LEN).await?;
            let mut payload = [0u8; MAX_HANDSHAKE_LEN];
            hs.read_message(&msg, &mut payload)
                .map_err(|_| ProtoError::WrongSecret)?;
            Some(Arc::new(
                hs.into_stateless_transport_mode().map_err(noise_failed)?,
            ))
        }
    };
    Ok(Stream::new(stream, state))
}

/// Runs the responder's side of the security handshake on an accepted
/// connection: answers a wrong secret or a mismatched mode with a refusal
/// status and fails. The caller bounds it in time.
///
/// # Errors
/// As [`initiate`].
pub async fn respond(mut stream: TcpStream, security: &Security) -> Result<Stream, ProtoError> {
    let state = respond_handshake(&mut stream, security).await?;
    Ok(Stream::new(stream, state))
}

/// Feeds `input` to a responder holding a fixed secret, as the bytes an
/// initiator sent, and reports whether the handshake succeeded. For the
/// `handshake` fuzz target: the part of a node an outsider can reach.
#[doc(hidden)]
pub async fn fuzz_respond(input: &[u8]) -> bool {
    // The pipe holds all of the input, so writing it never waits.
    let input = &input[..input.len().min(60 * 1024)];
    let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let _ = theirs.write_all(input).await;
    drop(theirs.shutdown().await);
    let security = Security::secret(NetworkSecret::from_bytes([7; SECRET_LEN]));
    respond_handshake(&mut ours, &security).await.is_ok()
}

async fn respond_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &Security,
) -> Result<Option<Arc<StatelessTransportState>>, ProtoError> {
    let mut theirs = [0u8; PREAMBLE_LEN];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(eof_is_closed)?;
    let (mode, _status) = match parse_preamble(&theirs) {
        Ok(p) => p,
        Err(e @ ProtoError::VersionMismatch { .. }) => {
            // Tell the other side our version; it reports the mismatch.
            let _ = stream
                .write_all(&preamble(security.mode(), STATUS_OK))
                .await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let refuse = |status: u8| preamble(security.mode(), status);
    let state = match (security, mode) {
        (Security::Insecure, 0) => {
            stream.write_all(&refuse(STATUS_OK)).await?;
            None
        }
        (Security::Noise { secret, .. }, m) if m != 0 => {
            let Some(suite) = Suite::from_mode(m) else {
                let _ = stream.write_all(&refuse(STATUS_MODE_MISMATCH)).await;
                return Err(ProtoError::SecurityMismatch {
                    remote_insecure: false,
                });
            };
            let psk = secret.psk();
            let mut hs = snow::Builder::new(suite.params())
                .prologue(PROLOGUE)
                .and_then(|b| b.psk(0, &psk))
                .and_then(snow::Builder::build_responder)
                .map_err(noise_failed)?;
            let msg = read_record(stream, MAX_HANDSHAKE_LEN).await?;
            let mut payload = [0u8; MAX_HANDSHAKE_LEN];
            if hs.read_message(&msg, &mut payload).is_err() {
                let _ = stream.write_all(&refuse(STATUS_WRONG_SECRET)).await;
                let _ = stream.shutdown().await;
                return Err(ProtoError::WrongSecret);
            }
            let mut reply = [0u8; MAX_HANDSHAKE_LEN];
            let n = hs.write_message(&[], &mut reply).map_err(noise_failed)?;
            let mut answer = preamble(suite.mode(), STATUS_OK).to_vec();
            answer.extend_from_slice(&record(&reply[..n]));
            stream.write_all(&answer).await?;
            Some(Arc::new(
                hs.into_stateless_transport_mode().map_err(noise_failed)?,
            ))
        }
        _ => {
            let _ = stream.write_all(&refuse(STATUS_MODE_MISMATCH)).await;
            let _ = stream.shutdown().await;
            return Err(ProtoError::SecurityMismatch {
                remote_insecure: mode == 0,
            });
        }
    };
    Ok(state)
}

/// A connection after the security handshake: plain, or sealed both ways.
/// Writes may be buffered until `flush`.
pub struct Stream {
    read: ReadHalf,
    write: WriteHalf,
}

impl Stream {
    fn new(stream: TcpStream, state: Option<Arc<StatelessTransportState>>) -> Self {
        let (r, w) = stream.into_split();
        Self {
            read: ReadHalf {
                inner: r,
                noise: state.clone().map(|s| Opener {
                    state: s,
                    nonce: 0,
                    buf: BytesMut::new(),
                    read_hint: MIN_READ,
                    plain: Vec::new(),
                    plain_pos: 0,
                    plain_end: 0,
                }),
            },
            write: WriteHalf {
                inner: w,
                noise: state.map(|s| Sealer {
                    state: s,
                    nonce: 0,
                    out: Vec::new(),
                    start: 0,
                    end: 0,
                }),
            },
        }
    }

    /// True when the bytes are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.write.noise.is_some()
    }

    /// Splits into halves that can be used from different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

/// The reading half of a [`Stream`].
pub struct ReadHalf {
    inner: OwnedReadHalf,
    noise: Option<Opener>,
}

struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Sealed bytes read from the socket, not yet opened.
    buf: BytesMut,
    /// How much to ask the socket for: grows while reads fill what they are
    /// offered (bulk transfer), shrinks when they do not (control traffic),
    /// so an idle connection keeps a small buffer.
    read_hint: usize,
    /// An opened record too large for the caller's buffer is
    /// `plain[..plain_end]`, of which `plain[..plain_pos]` was handed out.
    /// `plain` is pooled: empty unless it holds such a record.
    plain: Vec<u8>,
    plain_pos: usize,
    plain_end: usize,
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.release_idle();
        self.release_plain();
    }
}

fn bad_record(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Opener {
    /// Gives a large read buffer that holds nothing back to the pool.
    fn release_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > POOLED_MIN {
            READ_POOL.give_bytes(std::mem::take(&mut self.buf));
        }
    }

    /// Gives the record buffer back once everything in it was handed out.
    fn release_plain(&mut self) {
        if self.plain_pos == self.plain_end && !self.plain.is_empty() {
            RECORD_POOL.give_vec(std::mem::take(&mut self.plain));
            self.plain_pos = 0;
            self.plain_end = 0;
        }
    }

    /// Makes room for at least `want` more sealed bytes in `buf`.
    ///
    /// Past [`POOLED_MIN`] the bytes held (at most a partial record) move to
    /// the front of a pooled buffer, and a large old one goes back to the
    /// pool. `BytesMut::reserve` would instead grow the buffer with
    /// `realloc` whenever the partial record is longer than what was read
    /// before it, and each growth faulted in new pages: an encrypted
    /// download of 1 GiB took about 6,000 page faults, a fifth of them in
    /// that `realloc`.
    fn reserve(&mut self, want: usize) {
        if self.buf.capacity() - self.buf.len() >= want {
            return;
        }
        // Unshared with room before its bytes: move them to the front.
        if self.buf.try_reclaim(want) {
            return;
        }
        let need = self.buf.len() + want;
        if need <= POOLED_MIN {
            self.buf.reserve(want);
            return;
        }
        let mut big = READ_POOL.take_bytes(READ_BUF.max(need));
        big.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, big);
        old.clear();
        // Whole again (nothing else shares it) and large: keep it.
        if old.try_reclaim(POOLED_MIN + 1) {
            READ_POOL.give_bytes(old);
        }
    }

    /// Bytes still missing to complete the record at the front of `buf`.
    fn missing(&self) -> usize {
        if self.buf.len() < 2 {
            return 2 - self.buf.len();
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        (2 + len).saturating_sub(self.buf.len())
    }

    /// The length of the complete record at the front of `buf`, if any.
    fn complete(&self) -> io::Result<Option<usize>> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        if len < TAG_LEN {
            return Err(bad_record("sealed record shorter than its tag"));
        }
        Ok((self.buf.len() >= 2 + len).then_some(len))
    }

    /// Opens the record of `len` sealed bytes at the front of `buf` into
    /// `out`, which has room for all `len` (the plaintext and the tag).
    fn open(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let n = self
            .state
            .read_message(self.nonce, &self.buf[2..2 + len], out)
            .map_err(|_| bad_record("a sealed record failed authentication"))?;
        self.nonce += 1;
        self.buf.advance(2 + len);
        Ok(n)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(o) = &mut this.noise else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if o.plain_pos < o.plain_end {
                let n = buf.remaining().min(o.plain_end - o.plain_pos);
                buf.put_slice(&o.plain[o.plain_pos..o.plain_pos + n]);
                o.plain_pos += n;
                o.release_plain();
                return Poll::Ready(Ok(()));
            }
            let mut produced = false;
            while let Some(len) = o.complete()? {
                // Opening needs room for the tag too: snow then decrypts
                // in place in `out`, where with less room it copies the
                // record into a new buffer first (an allocation and two
                // copies per record).
                if buf.remaining() >= len {
                    let n = o.open(len, buf.initialize_unfilled_to(len))?;
                    buf.advance(n);
                    // An empty record yields nothing; returning then would
                    // read as the end of the stream.
                    produced |= n > 0;
                } else if produced {
                    break;
                } else {
                    let mut tmp = RECORD_POOL.take_vec(MAX_RECORD_LEN);
                    match o.open(len, &mut tmp[..len]) {
                        Ok(n) => {
                            o.plain = tmp;
                            o.plain_pos = 0;
                            o.plain_end = n;
                            o.release_plain();
                        }
                        Err(e) => {
                            RECORD_POOL.give_vec(tmp);
                            return Poll::Ready(Err(e));
                        }
                    }
                    break;
                }
            }
            if produced {
                return Poll::Ready(Ok(()));
            }
            if o.plain_pos < o.plain_end {
                continue;
            }
            let want = o.missing().max(o.read_hint);
            o.reserve(want);
            let offered = o.buf.capacity() - o.buf.len();
            let Poll::Ready(read) =
                tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut o.buf)
            else {
                // Nothing to read now: an empty buffer goes back to the pool.
                o.release_idle();
                return Poll::Pending;
            };
            let n = read?;
            if n == offered {
                o.read_hint = (o.read_hint * 2).min(MAX_READ);
            } else if n < o.read_hint / 4 {
                o.read_hint = (o.read_hint / 2).max(MIN_READ);
            }
            if n == 0 {
                return if o.buf.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

/// The writing half of a [`Stream`]. Sealed bytes queue until
/// [`flush`](AsyncWriteExt::flush); plain writes go straight through.
pub struct WriteHalf {
    inner: OwnedWriteHalf,
    noise: Option<Sealer>,
}

struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Sealed records not yet written to the socket are `out[start..end]`.
    /// Small, it grows with the connection's traffic; past [`POOLED_MIN`]
    /// it is a pooled buffer of [`WRITE_BUF`] bytes (zeroed once when new,
    /// so sealing never clears memory), given back once drained.
    out: Vec<u8>,
    start: usize,
    end: usize,
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.start = self.end;
        self.release_idle();
    }
}

impl Sealer {
    /// Gives a pooled buffer back once everything in it was written.
    fn release_idle(&mut self) {
        if self.start == self.end && self.out.len() == WRITE_BUF {
            WRITE_POOL.give_vec(std::mem::take(&mut self.out));
            self.start = 0;
            self.end = 0;
        }
    }

    /// Sealed bytes waiting for the socket.
    fn pending(&self) -> usize {
        self.end - self.start
    }

    fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        let len = plain.len() + TAG_LEN;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end + 2 + len > self.out.len() {
            if self.start > 0 {
                self.out.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // Grow by doubling, so control traffic keeps a small buffer;
            // bulk traffic takes a pooled one.
            let need = self.end + 2 + len;
            if need > self.out.len() {
                let grown = (self.out.len() * 2).max(need);
                if grown > POOLED_MIN {
                    let mut big = WRITE_POOL.take_vec(WRITE_BUF);
                    big[..self.end].copy_from_slice(&self.out[..self.end]);
                    self.out = big;
                } else {
                    self.out.resize(grown, 0);
                }
            }
        }
        let at = self.end;
        self.out[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
        self.state
            .write_message(self.nonce, plain, &mut self.out[at + 2..at + 2 + len])
            .map_err(|e| io::Error::other(format!("sealing a record: {e}")))?;
        self.nonce += 1;
        self.end = at + 2 + len;
        Ok(())
    }

    /// Writes queued records until none is left or the socket is full.
    fn poll_drain(
        &mut self,
        inner: &mut OwnedWriteHalf,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.out[self.start..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(s) = &mut this.noise else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        match s.poll_drain(&mut this.inner, cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if s.pending() >= WRITE_BACKLOG => return Poll::Pending,
            _ => {}
        }
        let mut taken = 0;
        while taken < buf.len() && s.pending() < WRITE_BACKLOG {
            let n = MAX_RECORD_PLAIN.min(buf.len() - taken);
            s.seal(&buf[taken..taken + n])?;
            taken += n;
        }
        if let Poll::Ready(Err(e)) = s.poll_drain(&mut this.inner, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.noise.is_none() {
            return Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs);
        }
        // Sealing copies anyway: one slice at a time.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.noise.is_none()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = &mut this.noise {
            ready!(s.poll_drain(&mut this.inner, cx))?;
            s.release_idle();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = &mut this.noise {
            ready!(s.poll_drain(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        client: Security,
        server: Security,
    ) -> (Result<Stream, ProtoError>, Result<Stream, ProtoError>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            respond(s, &server).await
        });
        let c = initiate(TcpStream::connect(addr).await.unwrap(), &client).await;
        (c, srv.await.unwrap())
    }

    #[test]
    fn secret_and_token_round_trip() {
        let s = NetworkSecret::generate();
        assert_eq!(s.to_text().len(), 43);
        assert_eq!(
            NetworkSecret::from_text(&format!(" {}\n", s.to_text())).unwrap(),
            s
        );
        assert!(NetworkSecret::from_text("short").is_err());
        assert!(!format!("{s:?}").contains(&s.to_text()));
        let t = JoinToken {
            secret: s,
            tracker: "[::1]:7000".into(),
        };
        assert_eq!(JoinToken::from_text(&t.to_text()).unwrap(), t);
        assert!(JoinToken::from_text("p2pfs1:abc").is_err());
        assert!(JoinToken::from_text(&t.to_text().replace("p2pfs1", "p2pfs9")).is_err());
    }

    #[tokio::test]
    async fn same_secret_talks_both_ways_in_both_suites() {
        for suite in [Suite::AesGcm, Suite::ChaChaPoly] {
            let secret = NetworkSecret::generate();
            let (c, s) = pair(
                Security::Noise {
                    secret: secret.clone(),
                    suite,
                },
                Security::secret(secret),
            )
            .await;
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            assert!(c.is_encrypted() && s.is_encrypted());
            // Large enough to need many records and partial socket writes.
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let sent = data.clone();
            let w = tokio::spawn(async move {
                c.write_all(&sent).await.unwrap();
                c.flush().await.unwrap();
                let mut back = [0u8; 5];
                c.read_exact(&mut back).await.unwrap();
                back
            });
            let mut got = vec![0u8; data.len()];
            // Reads smaller than a record take the partial-record path;
            // reads with room for a record and its tag open it in place;
            // a read with room for the plaintext but not the tag takes the
            // partial path too.
            let sizes = [1000, MAX_RECORD_LEN, 300_000, MAX_RECORD_PLAIN, 70_000, 1];
            let mut at = 0;
            for size in sizes.iter().cycle() {
                if at == got.len() {
                    break;
                }
                let end = (at + size).min(got.len());
                let n = s.read(&mut got[at..end]).await.unwrap();
                assert!(n > 0);
                at += n;
            }
            assert!(got == data);
            s.write_all(b"hello").await.unwrap();
            s.flush().await.unwrap();
            assert_eq!(&w.await.unwrap(), b"hello");
        }
    }

    #[tokio::test]
    async fn an_empty_record_is_not_the_end_of_the_stream() {
        let secret = NetworkSecret::generate();
        let (c, s) = pair(Security::secret(secret.clone()), Security::secret(secret)).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        // Our writer never sends one, but a peer holding the secret may.
        c.write.noise.as_mut().unwrap().seal(&[]).unwrap();
        c.write_all(b"abc").await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 3];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_on_both_sides() {
        let (c, s) = pair(
            Security::secret(NetworkSecret::generate()),
            Security::secret(NetworkSecret::generate()),
        )
        .await;
        assert!(matches!(c, Err(ProtoError::WrongSecret)), "{:?}", c.err());
        assert!(matches!(s, Err(ProtoError::WrongSecret)));
        assert!(ProtoError::WrongSecret
            .to_string()
            .contains("wrong network secret"));
    }

    #[tokio::test]
    async fn plain_and_sealed_nodes_refuse_each_other() {
        let secret = Security::secret(NetworkSecret::generate());
        let (c, s) = pair(Security::Insecure, secret.clone()).await;
        assert!(matches!(
            c,
            Err(ProtoError::SecurityMismatch {
                remote_insecure: false
            })
        ));
        assert!(s.is_err());
        let (c, s) = pair(secret, Security::Insecure).await;
        assert!(matches!(
            c,
            Err(ProtoError::SecurityMismatch {
                remote_insecure: true
            })
        ));
        assert!(s.is_err());
        let (c, s) = pair(Security::Insecure, Security::Insecure).await;
        assert!(!c.unwrap().is_encrypted());
        assert!(!s.unwrap().is_encrypted());
    }

    #[tokio::test]
    async fn a_tampered_record_ends_the_stream() {
        let secret = NetworkSecret::generate();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sec = Security::secret(secret.clone());
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = respond(s, &sec).await.unwrap();
            let mut b = vec![0u8; 100];
            s.read_exact(&mut b).await
        });
        // A man in the middle that flips one ciphertext bit after the handshake.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let paddr = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut a, _) = proxy.accept().await.unwrap();
            let mut b = TcpStream::connect(addr).await.unwrap();
            let mut first = vec![0u8; PREAMBLE_LEN + 2 + 48];
            a.read_exact(&mut first).await.unwrap();
            b.write_all(&first).await.unwrap();
            let mut answer = vec![0u8; PREAMBLE_LEN + 2 + 48];
            b.read_exact(&mut answer).await.unwrap();
            a.write_all(&answer).await.unwrap();
            let mut rec = vec![0u8; 2 + 100 + TAG_LEN];
            a.read_exact(&mut rec).await.unwrap();
            rec[10] ^= 1;
            b.write_all(&rec).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        });
        let mut c = initiate(
            TcpStream::connect(paddr).await.unwrap(),
            &Security::secret(secret),
        )
        .await
        .unwrap();
        c.write_all(&[7u8; 100]).await.unwrap();
        c.flush().await.unwrap();
        let e = srv.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
