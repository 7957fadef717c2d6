//! The dialling side's frame reader: control frames through [`FrameCodec`],
//! chunk payloads read from the socket straight into pooled buffers
//! ([`ChunkBuf`], which says why), instead of a `FramedRead` slicing each
//! chunk out of a new read buffer.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use futures::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::Decoder;

use crate::codec::{Frame, FrameCodec, KIND_CHUNK};
use crate::limits::{CHUNK_HEADER_LEN, MAX_FRAME_LEN};
use crate::pool::{ChunkBuf, Pool};
use crate::types::ContentId;
use crate::ProtoError;

/// Room offered to each read between chunk payloads.
const HEAD_READ: usize = 8 * 1024;

/// A chunk frame whose header is read and whose payload is arriving.
struct Partial {
    id: u32,
    content_id: ContentId,
    index: u32,
    data: ChunkBuf,
    filled: usize,
}

/// Reads [`Frame`]s from `R`; a [`Stream`] of frames that ends where the
/// connection ends between frames.
pub struct FrameReader<R> {
    inner: R,
    /// Bytes read and not yet decoded: frame headers and control frames,
    /// and at most [`HEAD_READ`] bytes of a chunk's payload that came in
    /// the same read as its header (copied into the chunk's buffer).
    buf: BytesMut,
    chunk: Option<Partial>,
    /// A pool of its own (tests); the process-wide one otherwise.
    pool: Option<&'static Pool<Vec<u8>>>,
}

impl<R> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(HEAD_READ),
            chunk: None,
            pool: None,
        }
    }

    #[cfg(test)]
    fn with_pool(inner: R, pool: &'static Pool<Vec<u8>>) -> Self {
        Self {
            pool: Some(pool),
            ..Self::new(inner)
        }
    }

    /// Bytes of the frame being received that have arrived so far (for
    /// telling a slow source from a stalled one).
    pub fn received(&self) -> usize {
        self.buf.len() + self.chunk.as_ref().map_or(0, |c| c.filled)
    }

    /// The length field of the frame at the front of `buf`, if read.
    fn frame_len(&self) -> Option<usize> {
        let b = self.buf.get(..4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// What the bytes at the front of `buf` call for.
    fn next_step(&self) -> Result<Step, ProtoError> {
        let Some(len) = self.frame_len() else {
            return Ok(Step::Read);
        };
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        // Until the kind is known, read on: the codec would make room for
        // a whole frame of this length, and a chunk frame's payload does
        // not go to `buf`.
        if self.buf.len() < 5 {
            return Ok(Step::Read);
        }
        if self.buf[4] != KIND_CHUNK {
            return Ok(Step::Codec);
        }
        Ok(if len < 1 + CHUNK_HEADER_LEN {
            // Too short for a chunk header: the codec reports it once the
            // whole (small) frame is in.
            Step::Codec
        } else if self.buf.len() < 5 + CHUNK_HEADER_LEN {
            Step::Read
        } else {
            Step::Chunk(len - 1 - CHUNK_HEADER_LEN)
        })
    }

    /// Takes the chunk frame header at the front of `buf` and starts the
    /// payload in a pooled buffer, with the part of it already read.
    fn start_chunk(&mut self, payload: usize) {
        self.buf.advance(5);
        let id = self.buf.get_u32();
        let mut cid = [0u8; 32];
        self.buf.copy_to_slice(&mut cid);
        let index = self.buf.get_u32();
        let mut data = match self.pool {
            Some(pool) => ChunkBuf::take_from(pool, payload),
            None => ChunkBuf::take(payload),
        };
        let already = self.buf.len().min(payload);
        data[..already].copy_from_slice(&self.buf[..already]);
        self.buf.advance(already);
        self.chunk = Some(Partial {
            id,
            content_id: ContentId(cid),
            index,
            data,
            filled: already,
        });
    }
}

/// What to do with the bytes at the front of the read buffer.
enum Step {
    /// Let the codec decode a frame, or wait for more of one.
    Codec,
    /// Read more: a chunk frame's header is incomplete.
    Read,
    /// A chunk frame with this many payload bytes starts.
    Chunk(usize),
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, ProtoError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(c) = &mut this.chunk {
                if c.filled < c.data.len() {
                    let mut rb = ReadBuf::new(&mut c.data[c.filled..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Some(Err(ProtoError::Io(
                            std::io::ErrorKind::UnexpectedEof.into(),
                        ))));
                    }
                    c.filled += n;
                    continue;
                }
                let Some(c) = this.chunk.take() else {
                    continue;
                };
                return Poll::Ready(Some(Ok(Frame::Chunk {
                    id: c.id,
                    content_id: c.content_id,
                    index: c.index,
                    data: c.data.into_bytes(),
                })));
            }
            match this.next_step()? {
                Step::Chunk(payload) => {
                    this.start_chunk(payload);
                    continue;
                }
                Step::Codec => {
                    if let Some(frame) = FrameCodec.decode(&mut this.buf)? {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Step::Read => {}
            }
            // Each read into `buf` takes at most what a frame header, or
            // the rest of the control frame it holds, needs: never a chunk's
            // payload, which goes straight into its own buffer.
            let want = match this.frame_len() {
                Some(len) if this.buf.len() >= 5 && this.buf[4] != KIND_CHUNK => {
                    (4 + len).saturating_sub(this.buf.len()).max(HEAD_READ)
                }
                _ => HEAD_READ,
            };
            if this.buf.capacity() - this.buf.len() < HEAD_READ / 2 {
                this.buf.reserve(HEAD_READ);
            }
            let mut room = (&mut this.buf).limit(want);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut room
            ))?;
            if n == 0 {
                return Poll::Ready(if this.buf.is_empty() {
                    None
                } else {
                    Some(Err(ProtoError::Io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{chunk_header, encode_control};
    use crate::message::Message;
    use futures::StreamExt;
    use proptest::prelude::*;

    /// An in-memory reader that hands out at most `step` bytes per read.
    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn chunk_frame(out: &mut Vec<u8>, id: u32, index: u32, data: &[u8]) {
        let h = chunk_header(id, &ContentId([7; 32]), index, data.len()).unwrap();
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
    }

    fn control_frame(out: &mut Vec<u8>, id: u32, index: u32) {
        let mut b = BytesMut::new();
        let msg = Message::PeerRequestChunk {
            content_id: ContentId([9; 32]),
            index,
        };
        encode_control(id, &msg, &mut b).unwrap();
        out.extend_from_slice(&b);
    }

    /// Every frame `FrameReader` yields from `data` read `step` bytes at a
    /// time, and how it ended.
    async fn read_all(data: Vec<u8>, step: usize) -> (Vec<Frame>, Option<String>) {
        let mut r = FrameReader::new(Pieces { data, pos: 0, step });
        let mut frames = Vec::new();
        while let Some(f) = r.next().await {
            match f {
                Ok(f) => frames.push(f),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
        (frames, None)
    }

    /// The same through the codec alone, fed all at once.
    fn codec_all(data: &[u8]) -> (Vec<Frame>, Option<String>) {
        let mut buf = BytesMut::from(data);
        let mut frames = Vec::new();
        loop {
            match FrameCodec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }

    proptest! {
        #[test]
        fn reads_what_the_codec_decodes(
            frames in proptest::collection::vec(
                (any::<bool>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..3000)),
                0..12,
            ),
            step in 1usize..5000,
        ) {
            let mut data = Vec::new();
            for (i, (chunk, index, payload)) in frames.iter().enumerate() {
                if *chunk {
                    chunk_frame(&mut data, i as u32, *index, payload);
                } else {
                    control_frame(&mut data, i as u32, *index);
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (got, end) = rt.block_on(read_all(data.clone(), step));
            let (want, _) = codec_all(&data);
            prop_assert_eq!(got, want);
            prop_assert_eq!(end, None);
        }

        #[test]
        fn any_bytes_end_where_the_codec_ends(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            step in 1usize..64,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (got, end) = rt.block_on(read_all(data.clone(), step));
            let (want, codec_err) = codec_all(&data);
            prop_assert_eq!(&got, &want);
            if codec_err.is_some() {
                prop_assert_eq!(end, codec_err);
            }
        }
    }

    #[tokio::test]
    async fn a_chunk_cut_short_is_an_error_and_a_clean_end_is_none() {
        let mut data = Vec::new();
        chunk_frame(&mut data, 1, 0, &[5; 1000]);
        let (frames, end) = read_all(data.clone(), 100).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(end, None);
        data.truncate(data.len() - 1);
        let (frames, end) = read_all(data, 100).await;
        assert!(frames.is_empty());
        assert!(end.is_some(), "a truncated chunk must not read as the end");
    }

    #[tokio::test]
    async fn the_read_buffer_never_takes_a_chunk_payload() {
        // Reads of 4 bytes end inside every header: the length is known,
        // the kind not yet.
        let mut data = Vec::new();
        let big = vec![3u8; 1 << 20];
        chunk_frame(&mut data, 1, 0, &big);
        control_frame(&mut data, 2, 5);
        chunk_frame(&mut data, 3, 1, &big);
        for step in [4, 4096, 1 << 20] {
            let mut r = FrameReader::new(Pieces {
                data: data.clone(),
                pos: 0,
                step,
            });
            let mut frames = 0;
            while let Some(f) = r.next().await {
                f.unwrap();
                frames += 1;
                assert!(
                    r.buf.capacity() <= 4 * HEAD_READ,
                    "read buffer grew to {} with reads of {step}",
                    r.buf.capacity()
                );
            }
            assert_eq!(frames, 3);
        }
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_limit_is_refused_from_its_length() {
        let mut data = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        data.push(KIND_CHUNK);
        let (frames, end) = read_all(data, 5).await;
        assert!(frames.is_empty());
        assert!(end.unwrap().contains("exceeds the limit"));
    }

    #[tokio::test]
    async fn chunk_buffers_go_back_to_the_pool_and_are_reused() {
        static POOL: Pool<Vec<u8>> = Pool::new(4);
        let len = 100_000;
        let mut data = Vec::new();
        chunk_frame(&mut data, 1, 0, &vec![1; len]);
        // A shorter one (a file's last chunk) fits in the same buffer.
        chunk_frame(&mut data, 2, 1, &vec![2; len - 7]);
        chunk_frame(&mut data, 3, 2, &vec![3; len]);
        let mut r = FrameReader::with_pool(
            Pieces {
                data,
                pos: 0,
                step: 65536,
            },
            &POOL,
        );
        let mut next = async || match r.next().await {
            Some(Ok(Frame::Chunk { data, .. })) => data,
            other => panic!("not a chunk: {other:?}"),
        };
        let first = next().await;
        assert!(first.len() == len && first.iter().all(|&b| b == 1));
        let ptr = first.as_ptr();
        let copy = first.clone();
        drop(first);
        assert_eq!(POOL.idle(), 0, "a clone still holds the buffer");
        drop(copy);
        assert_eq!(POOL.idle(), 1);
        let second = next().await;
        assert!(second.len() == len - 7 && second.iter().all(|&b| b == 2));
        assert_eq!(second.as_ptr(), ptr, "the buffer is reused");
        drop(second);
        let third = next().await;
        assert!(third.len() == len && third.iter().all(|&b| b == 3));
        assert_eq!(third.as_ptr(), ptr, "and grows back within its room");
    }
}
