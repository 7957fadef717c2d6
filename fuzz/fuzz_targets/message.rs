//! Any bytes as a postcard-encoded control message: decoding and limit
//! checks never panic, and a message that passes them survives a round
//! trip through a control frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pfs_proto::codec::{encode_control, Frame, FrameCodec};
use p2pfs_proto::Message;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = postcard::from_bytes::<Message>(data) else {
        return;
    };
    if msg.validate().is_err() {
        return;
    }
    let mut out = BytesMut::new();
    if encode_control(9, &msg, &mut out).is_err() {
        return; // larger than a control frame may be
    }
    match FrameCodec.decode(&mut out) {
        Ok(Some(Frame::Control { id: 9, msg: back })) => assert_eq!(back, msg),
        other => panic!("round trip failed: {other:?}"),
    }
});
