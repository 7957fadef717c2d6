//! Any byte stream into every frame decoder (the codec `FrameCodec`, the
//! accepting side's `ControlCodec` and the dialling side's `FrameReader`):
//! no panic, no unbounded buffering, every decoded control frame re-encodes
//! to a frame that decodes to the same message, and `FrameReader` yields
//! the codec's frames and stops where it does.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use futures::Stream;
use libfuzzer_sys::fuzz_target;
use p2pfs_proto::codec::{encode_control, ControlCodec, Frame, FrameCodec};
use p2pfs_proto::frame_reader::FrameReader;
use p2pfs_proto::limits::MAX_FRAME_LEN;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::Decoder;

fn check(frame: &Frame) {
    if let Frame::Control { id, msg } = frame {
        let mut out = BytesMut::new();
        encode_control(*id, msg, &mut out).expect("a decoded message re-encodes");
        match FrameCodec.decode(&mut out) {
            Ok(Some(Frame::Control { id: id2, msg: msg2 })) => {
                assert_eq!((*id, msg), (id2, &msg2));
            }
            other => panic!("re-encoded frame did not decode: {other:?}"),
        }
    }
}

/// Frames decoded, and whether decoding failed.
fn run(
    data: &[u8],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<Frame>, p2pfs_proto::ProtoError>,
) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    // Feed in uneven pieces, as a socket would.
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf) {
                Ok(Some(frame)) => {
                    check(&frame);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        assert!(buf.capacity() <= 2 * (MAX_FRAME_LEN + 4) + data.len());
    }
    (frames, false)
}

/// A socket stand-in that hands out 7 bytes per read.
struct Pieces<'a>(&'a [u8]);

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.0.len()).min(7);
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

/// Frames `FrameReader` yields, and whether it failed.
fn run_reader(data: &[u8]) -> (Vec<Frame>, bool) {
    let mut reader = FrameReader::new(Pieces(data));
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = Vec::new();
    loop {
        match Pin::new(&mut reader).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frames.push(frame),
            Poll::Ready(Some(Err(_))) => return (frames, true),
            Poll::Ready(None) => return (frames, false),
            Poll::Pending => unreachable!("an in-memory reader is always ready"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (frames, failed) = run(data, |b| FrameCodec.decode(b));
    run(data, |b| ControlCodec.decode(b));
    let (read, read_failed) = run_reader(data);
    assert_eq!(frames, read, "FrameReader and FrameCodec disagree");
    // The reader also fails on bytes left over at the end of the stream.
    assert!(!failed || read_failed, "FrameReader missed the codec's error");
});
