//! Any byte stream into both frame decoders (the dialling side's
//! `FrameCodec` and the accepting side's `ControlCodec`): no panic, no
//! unbounded buffering, and every decoded control frame re-encodes to a
//! frame that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pfs_proto::codec::{encode_control, ControlCodec, Frame, FrameCodec};
use p2pfs_proto::limits::MAX_FRAME_LEN;
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

fn run(
    data: &[u8],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<Frame>, p2pfs_proto::ProtoError>,
) {
    let mut buf = BytesMut::new();
    // Feed in uneven pieces, as a socket would.
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf) {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= 2 * (MAX_FRAME_LEN + 4) + data.len());
    }
}

fuzz_target!(|data: &[u8]| {
    run(data, |b| FrameCodec.decode(b));
    run(data, |b| ControlCodec.decode(b));
});
