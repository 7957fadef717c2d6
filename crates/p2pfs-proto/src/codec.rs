//! The one frame codec used on every connection.
//!
//! ```text
//! frame   = length:u32be kind:u8 body          (length counts kind + body)
//! control = kind 1: request_id:u32be postcard(Message)
//! chunk   = kind 2: request_id:u32be content_id:[32] index:u32be data...
//! ```
//!
//! The decoder checks the length against [`MAX_FRAME_LEN`] (and a control
//! frame's against [`MAX_CONTROL_LEN`]) before reserving any memory, returns
//! `Ok(None)` when it needs more bytes, and never panics on any input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::limits::{CHUNK_HEADER_LEN, MAX_CONTROL_LEN, MAX_FRAME_LEN};
use crate::message::{Message, ReplyRef};
use crate::types::ContentId;
use crate::ProtoError;

/// Frame kind byte of a control frame.
pub const KIND_CONTROL: u8 = 1;
/// Frame kind byte of a chunk frame.
pub const KIND_CHUNK: u8 = 2;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A control message with the request id it answers or asks under.
    Control {
        /// Request id chosen by the requester; replies echo it.
        id: u32,
        /// The message.
        msg: Message,
    },
    /// Raw chunk bytes answering a `PeerRequestChunk`.
    Chunk {
        /// The request id of the `PeerRequestChunk`.
        id: u32,
        /// Content.
        content_id: ContentId,
        /// Chunk index.
        index: u32,
        /// The chunk's bytes: sliced out of the codec's read buffer, or read
        /// straight into a pooled buffer by
        /// [`FrameReader`](crate::frame_reader::FrameReader).
        data: Bytes,
    },
}

/// Codec for [`Frame`]s; see the module docs for the layout.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if src.len() >= 5 {
            let kind = src[4];
            let max = match kind {
                KIND_CONTROL => 1 + MAX_CONTROL_LEN,
                KIND_CHUNK => MAX_FRAME_LEN,
                other => return Err(ProtoError::UnknownFrameKind(other)),
            };
            if len > max {
                return Err(ProtoError::FrameTooLarge { len, max });
            }
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len);
        let kind = body.get_u8();
        decode_body(kind, &mut body).map(Some)
    }
}

fn decode_body(kind: u8, body: &mut BytesMut) -> Result<Frame, ProtoError> {
    match kind {
        KIND_CONTROL => {
            if body.len() < 4 {
                return Err(ProtoError::Truncated("control header"));
            }
            let id = body.get_u32();
            let msg: Message = postcard::from_bytes(body).map_err(ProtoError::BadMessage)?;
            msg.validate()?;
            Ok(Frame::Control { id, msg })
        }
        KIND_CHUNK => {
            if body.len() < CHUNK_HEADER_LEN {
                return Err(ProtoError::Truncated("chunk header"));
            }
            let id = body.get_u32();
            let mut cid = [0u8; 32];
            body.copy_to_slice(&mut cid);
            let index = body.get_u32();
            let data = std::mem::take(body).freeze();
            Ok(Frame::Chunk {
                id,
                content_id: ContentId(cid),
                index,
                data,
            })
        }
        other => Err(ProtoError::UnknownFrameKind(other)),
    }
}

/// What a control frame carries: a [`Message`], or a [`ReplyRef`] that
/// encodes as one.
pub trait Control: sealed::Sealed {}
impl Control for Message {}
impl Control for ReplyRef<'_> {}

mod sealed {
    use bytes::BytesMut;

    use super::Append;
    use crate::message::{Message, ReplyRef};

    pub trait Sealed {
        /// Appends the postcard encoding.
        fn encode_body(&self, dst: &mut BytesMut) -> postcard::Result<()>;
    }

    impl Sealed for Message {
        fn encode_body(&self, dst: &mut BytesMut) -> postcard::Result<()> {
            postcard::serialize_with_flavor(self, Append(dst))
        }
    }

    impl Sealed for ReplyRef<'_> {
        fn encode_body(&self, dst: &mut BytesMut) -> postcard::Result<()> {
            self.encode(dst);
            Ok(())
        }
    }
}

/// Postcard output appended straight to a frame buffer: no body is built
/// apart and copied in.
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends a control frame to `dst`; on an error `dst` is left as it was.
///
/// # Errors
/// [`ProtoError::FrameTooLarge`] when the message exceeds the control limit.
pub fn encode_control<M: Control + ?Sized>(
    id: u32,
    msg: &M,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    let start = dst.len();
    dst.reserve(9 + 64);
    dst.put_u32(0); // the length, filled in below
    dst.put_u8(KIND_CONTROL);
    dst.put_u32(id);
    if let Err(e) = msg.encode_body(dst) {
        dst.truncate(start);
        return Err(ProtoError::BadMessage(e));
    }
    let body = dst.len() - start - 9;
    if body + 4 > MAX_CONTROL_LEN {
        dst.truncate(start);
        return Err(ProtoError::FrameTooLarge {
            len: body + 4,
            max: MAX_CONTROL_LEN,
        });
    }
    dst[start..start + 4].copy_from_slice(&((1 + 4 + body) as u32).to_be_bytes());
    Ok(())
}

/// The fixed header of a chunk frame carrying `data_len` bytes; the caller
/// writes the payload right after it (so the payload is never copied).
///
/// # Errors
/// [`ProtoError::FrameTooLarge`] when the payload exceeds the frame limit.
pub fn chunk_header(
    id: u32,
    content_id: &ContentId,
    index: u32,
    data_len: usize,
) -> Result<[u8; 5 + CHUNK_HEADER_LEN], ProtoError> {
    let len = 1 + CHUNK_HEADER_LEN + data_len;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut h = [0u8; 5 + CHUNK_HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4] = KIND_CHUNK;
    h[5..9].copy_from_slice(&id.to_be_bytes());
    h[9..41].copy_from_slice(&content_id.0);
    h[41..45].copy_from_slice(&index.to_be_bytes());
    Ok(h)
}

/// A [`FrameCodec`] for the accepting side of a connection, which only ever
/// receives requests: it refuses chunk frames and any length above the
/// control limit before reserving memory, so a hostile client can make it
/// buffer at most one control frame (4 MiB), not a chunk frame (16 MiB).
#[derive(Clone, Copy, Debug, Default)]
pub struct ControlCodec;

impl Decoder for ControlCodec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if src.len() >= 4 {
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len > 1 + MAX_CONTROL_LEN {
                return Err(ProtoError::FrameTooLarge {
                    len,
                    max: 1 + MAX_CONTROL_LEN,
                });
            }
        }
        if src.len() >= 5 && src[4] != KIND_CONTROL {
            return Err(ProtoError::UnknownFrameKind(src[4]));
        }
        FrameCodec.decode(src)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
        match frame {
            Frame::Control { id, msg } => encode_control(id, &msg, dst),
            Frame::Chunk {
                id,
                content_id,
                index,
                data,
            } => {
                dst.put_slice(&chunk_header(id, &content_id, index, data.len())?);
                dst.put_slice(&data);
                Ok(())
            }
        }
    }
}
