//! Codec tests: round trips of every message, golden bytes, strict prefixes,
//! limits, and random or truncated input that must never panic.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use p2pfs_proto::codec::{encode_control, KIND_CHUNK, KIND_CONTROL};
use p2pfs_proto::limits::{
    HOLDERS_REPLY_BYTES, HOLDER_MAX_LEN, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_FRAME_LEN, MAX_NAME_LEN,
    MIN_CHUNK_SIZE,
};
use p2pfs_proto::message::{
    ChunkInfo, FileInfo, Holder, HolderRef, PeerInfo, PublishedInfo, ReplyRef,
};
use p2pfs_proto::{Bitfield, ContentId, ErrorCode, Frame, FrameCodec, Manifest, Message, PeerId};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._ü-]{0,40}"
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (0u64..(8 * MIN_CHUNK_SIZE as u64)).prop_map(|size| {
        let n = size.div_ceil(u64::from(MIN_CHUNK_SIZE)) as usize;
        Manifest {
            size,
            chunk_size: MIN_CHUNK_SIZE,
            hashes: (0..n).map(|i| [i as u8; 32]).collect(),
        }
    })
}

fn bitfield() -> impl Strategy<Value = Bitfield> {
    (0u32..300, proptest::collection::vec(any::<u32>(), 0..20)).prop_map(|(len, idx)| {
        let mut b = Bitfield::new(len);
        for i in idx {
            if len > 0 {
                b.set(i % len);
            }
        }
        b
    })
}

fn holder() -> impl Strategy<Value = Holder> {
    (any::<[u8; 16]>(), addr(), bitfield()).prop_map(|(p, addr, have)| Holder {
        peer_id: PeerId(p),
        addr,
        have,
    })
}

fn cid() -> impl Strategy<Value = ContentId> {
    any::<[u8; 32]>().prop_map(ContentId)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        name().prop_map(|m| Message::error(ErrorCode::NotFound, m)),
        Just(Message::Ok),
        (any::<[u8; 16]>(), addr()).prop_map(|(p, listen)| Message::RequestRegister {
            peer_id: PeerId(p),
            listen
        }),
        addr().prop_map(|listen| Message::ReplyRegister { listen }),
        (name(), name(), manifest()).prop_map(|(name, local_path, manifest)| {
            Message::RequestPublish {
                name,
                local_path,
                manifest,
            }
        }),
        cid().prop_map(|content_id| Message::ReplyPublish { content_id }),
        Just(Message::RequestFileList),
        proptest::collection::vec((name(), addr(), cid(), any::<u64>(), any::<u32>()), 0..5)
            .prop_map(|v| Message::ReplyFileList {
                files: v
                    .into_iter()
                    .map(|(name, publisher, content_id, size, n)| FileInfo {
                        name,
                        publisher,
                        publisher_id: PeerId([1; 16]),
                        publisher_online: n % 2 == 0,
                        content_id,
                        size,
                        chunk_size: MIN_CHUNK_SIZE,
                        chunks: n,
                        sources: n / 3,
                        seeders: n / 7,
                    })
                    .collect()
            }),
        addr().prop_map(|addr| Message::RequestDiscover { addr }),
        (
            addr(),
            proptest::collection::vec((name(), name(), any::<u64>(), cid()), 0..5)
        )
            .prop_map(|(addr, v)| Message::ReplyDiscover {
                addr,
                peer_id: PeerId([9; 16]),
                files: v
                    .into_iter()
                    .map(|(name, local_path, size, content_id)| PublishedInfo {
                        name,
                        size,
                        chunks: 3,
                        local_path,
                        content_id
                    })
                    .collect()
            }),
        any::<u64>().prop_map(|nonce| Message::RequestPingPong { nonce }),
        any::<u64>().prop_map(|nonce| Message::ReplyPingPong { nonce }),
        (name(), proptest::option::of(addr()))
            .prop_map(|(name, publisher)| Message::RequestFileLocation { name, publisher }),
        (
            name(),
            addr(),
            cid(),
            manifest(),
            proptest::collection::vec(holder(), 0..4)
        )
            .prop_map(|(name, publisher, content_id, manifest, holders)| {
                Message::ReplyFileLocation {
                    name,
                    publisher,
                    content_id,
                    manifest,
                    holders,
                }
            }),
        (cid(), proptest::collection::vec(any::<u32>(), 0..50)).prop_map(
            |(content_id, indexes)| Message::RequestChunkRegister {
                content_id,
                indexes
            }
        ),
        (cid(), any::<u32>())
            .prop_map(|(content_id, index)| Message::PeerRequestChunk { content_id, index }),
        Just(Message::Heartbeat),
        Just(Message::Leave),
        Just(Message::RequestPeerList),
        proptest::collection::vec((any::<[u8; 16]>(), addr(), any::<u64>()), 0..5).prop_map(|v| {
            Message::ReplyPeerList {
                peers: v
                    .into_iter()
                    .map(|(p, addr, t)| PeerInfo {
                        peer_id: PeerId(p),
                        addr,
                        connected_since: t,
                        published: 1,
                        holding: 2,
                    })
                    .collect(),
            }
        }),
        Just(Message::RequestChunkInfo),
        (
            name(),
            addr(),
            cid(),
            proptest::collection::vec(holder(), 0..3)
        )
            .prop_map(|(n, a, content_id, holders)| Message::ReplyChunkInfo {
                files: vec![ChunkInfo {
                    names: vec![(n, a)],
                    content_id,
                    chunks: 7,
                    holders
                }]
            }),
        cid().prop_map(|content_id| Message::RequestHolders { content_id }),
        name().prop_map(|name| Message::RequestUnpublish { name }),
        manifest().prop_map(|manifest| {
            let mut have = Bitfield::new(manifest.chunk_count());
            have.set(0);
            Message::RequestHave { manifest, have }
        }),
        proptest::collection::vec(holder(), 0..4)
            .prop_map(|holders| Message::ReplyHolders { holders }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..64))
            .prop_map(|(index, suggest)| Message::ReplyChunkDeferred { index, suggest }),
        cid().prop_map(|content_id| Message::PeerRequestHave { content_id }),
        (cid(), proptest::collection::vec(any::<bool>(), 0..300)).prop_map(|(content_id, bits)| {
            let mut have = Bitfield::new(bits.len() as u32);
            for (i, b) in bits.iter().enumerate() {
                if *b {
                    have.set(i as u32);
                }
            }
            Message::PeerHave { content_id, have }
        }),
    ]
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, p2pfs_proto::ProtoError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = FrameCodec.decode(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

proptest! {
    #[test]
    fn bitfield_set_indexes_match_bit_by_bit(a in bitfield(), idx in proptest::collection::vec(any::<u32>(), 0..40)) {
        let mut b = Bitfield::new(a.len());
        for i in idx {
            if !a.is_empty() {
                b.set(i % a.len());
            }
        }
        let ones: Vec<u32> = (0..a.len()).filter(|&i| a.get(i)).collect();
        prop_assert_eq!(a.ones().collect::<Vec<_>>(), ones);
        let new: Vec<u32> = (0..a.len()).filter(|&i| a.get(i) && !b.get(i)).collect();
        prop_assert_eq!(a.ones_not_in(&b).collect::<Vec<_>>(), new);
    }

    #[test]
    fn control_frames_round_trip(id in any::<u32>(), msg in message()) {
        let mut buf = BytesMut::new();
        FrameCodec.encode(Frame::Control { id, msg: msg.clone() }, &mut buf).unwrap();
        let frames = decode_all(&buf).unwrap();
        prop_assert_eq!(frames, vec![Frame::Control { id, msg }]);
    }

    #[test]
    fn chunk_frames_round_trip(id in any::<u32>(), c in cid(), index in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut buf = BytesMut::new();
        let frame = Frame::Chunk { id, content_id: c, index, data: Bytes::from(data) };
        FrameCodec.encode(frame.clone(), &mut buf).unwrap();
        prop_assert_eq!(decode_all(&buf).unwrap(), vec![frame]);
    }

    #[test]
    fn borrowed_replies_encode_as_their_messages(
        id in any::<u32>(),
        name in name(),
        publisher in addr(),
        content_id in cid(),
        manifest in manifest(),
        holders in proptest::collection::vec(holder(), 0..6),
        prefix in proptest::collection::vec(any::<u8>(), 0..5),
    ) {
        let refs: Vec<HolderRef<'_>> = holders
            .iter()
            .map(|h| HolderRef { peer_id: h.peer_id, addr: h.addr, have: &h.have })
            .collect();
        let cases = [
            (
                ReplyRef::FileLocation {
                    name: &name,
                    publisher,
                    content_id,
                    manifest: &manifest,
                    holders: &refs,
                },
                Message::ReplyFileLocation {
                    name: name.clone(),
                    publisher,
                    content_id,
                    manifest: manifest.clone(),
                    holders: holders.clone(),
                },
            ),
            (
                ReplyRef::Holders { holders: &refs },
                Message::ReplyHolders { holders: holders.clone() },
            ),
        ];
        for (borrowed, owned) in cases {
            // Appended after whatever the buffer already holds.
            let mut a = BytesMut::from(&prefix[..]);
            let mut b = BytesMut::from(&prefix[..]);
            encode_control(id, &borrowed, &mut a).unwrap();
            encode_control(id, &owned, &mut b).unwrap();
            prop_assert_eq!(&a[..], &b[..]);
            prop_assert_eq!(
                decode_all(&a[prefix.len()..]).unwrap(),
                vec![Frame::Control { id, msg: owned }]
            );
        }
    }

    #[test]
    fn every_strict_prefix_needs_more(msg in message()) {
        let mut full = BytesMut::new();
        encode_control(7, &msg, &mut full).unwrap();
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            prop_assert_eq!(FrameCodec.decode(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn random_control_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::new();
        buf.put_u32(1 + body.len() as u32);
        buf.put_u8(KIND_CONTROL);
        buf.put_slice(&body);
        let _ = decode_all(&buf);
    }

    #[test]
    fn corrupted_frames_never_panic(msg in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut buf = BytesMut::new();
        encode_control(1, &msg, &mut buf).unwrap();
        for (pos, val) in flips {
            let n = buf.len();
            buf[pos % n] ^= val;
        }
        let _ = decode_all(&buf);
    }
}

#[test]
fn golden_bytes_pin_the_wire_format() {
    let mut buf = BytesMut::new();
    encode_control(
        0x0102_0304,
        &Message::RequestPingPong { nonce: 5 },
        &mut buf,
    )
    .unwrap();
    // length 7 = kind + id + variant 10 + varint 5
    assert_eq!(&buf[..], &[0, 0, 0, 7, 1, 1, 2, 3, 4, 10, 5]);
    let mut buf = BytesMut::new();
    encode_control(1, &Message::Heartbeat, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0, 0, 0, 6, 1, 0, 0, 0, 1, 16]);
    let mut buf = BytesMut::new();
    encode_control(
        1,
        &Message::RequestHolders {
            content_id: ContentId([0; 32]),
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf[9], 22);
    // Version 3: initial seeding and news.
    let mut buf = BytesMut::new();
    encode_control(
        1,
        &Message::ReplyChunkDeferred {
            index: 3,
            suggest: vec![1, 2],
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..], &[0, 0, 0, 10, 1, 0, 0, 0, 1, 26, 3, 2, 1, 2]);
    let mut buf = BytesMut::new();
    let content_id = ContentId([0; 32]);
    encode_control(1, &Message::PeerRequestHave { content_id }, &mut buf).unwrap();
    assert_eq!((buf.len(), buf[9]), (4 + 38, 27));
    let mut have = Bitfield::new(3);
    for i in 0..3 {
        have.set(i);
    }
    let mut buf = BytesMut::new();
    encode_control(1, &Message::PeerHave { content_id, have }, &mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, 0, 0, 0x29]);
    assert_eq!(buf[9], 28);
    assert_eq!(
        &buf[42..],
        &[3, 1, 0xe0],
        "bitfield: len 3, one byte, bits e0"
    );
}

#[test]
fn an_oversize_control_message_leaves_the_buffer_as_it_was() {
    let mut buf = BytesMut::from(&b"queued"[..]);
    let msg = Message::RequestChunkRegister {
        content_id: ContentId([1; 32]),
        indexes: (0..2_000_000).collect(),
    };
    assert!(matches!(
        encode_control(1, &msg, &mut buf),
        Err(p2pfs_proto::ProtoError::FrameTooLarge { .. })
    ));
    assert_eq!(&buf[..], b"queued");
}

/// The largest location reply a tracker sends (the longest name, the
/// largest manifest, as many holders as it lists, each with the largest
/// bitfield and an IPv6 address) fits in a control frame and decodes, and
/// each holder takes no more than `HOLDER_MAX_LEN` plus its bitfield.
#[test]
fn the_largest_location_reply_fits_a_control_frame() {
    let publisher: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
    let manifest = Manifest {
        size: u64::from(MAX_CHUNK_SIZE) * u64::from(MAX_CHUNKS),
        chunk_size: MAX_CHUNK_SIZE,
        hashes: vec![[0xab; 32]; MAX_CHUNKS as usize],
    };
    let mut have = Bitfield::new(MAX_CHUNKS);
    for i in 0..MAX_CHUNKS {
        have.set(i);
    }
    let bits = MAX_CHUNKS.div_ceil(8) as usize;
    let listed = HOLDERS_REPLY_BYTES / (HOLDER_MAX_LEN + bits);
    let holders: Vec<Holder> = (0..listed)
        .map(|i| Holder {
            peer_id: PeerId([i as u8; 16]),
            addr: SocketAddr::new(publisher.ip(), 60_000 + i as u16),
            have: have.clone(),
        })
        .collect();
    let located = |holders: Vec<Holder>| Message::ReplyFileLocation {
        name: "n".repeat(MAX_NAME_LEN),
        publisher,
        content_id: manifest.content_id(),
        manifest: manifest.clone(),
        holders,
    };
    let mut none = BytesMut::new();
    encode_control(u32::MAX, &located(Vec::new()), &mut none).unwrap();
    let msg = located(holders);
    let mut buf = BytesMut::new();
    encode_control(u32::MAX, &msg, &mut buf).expect("fits");
    assert!(buf.len() - none.len() <= listed * (HOLDER_MAX_LEN + bits));
    match FrameCodec.decode(&mut buf).unwrap() {
        Some(Frame::Control { msg: back, .. }) => assert_eq!(back, msg),
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversize_length_errors_before_allocating() {
    let mut buf = BytesMut::new();
    buf.put_u32(MAX_FRAME_LEN as u32 + 1);
    buf.put_u8(KIND_CHUNK);
    assert!(FrameCodec.decode(&mut buf).is_err());
    assert!(buf.capacity() < 1024);
    // A control frame may not claim a chunk-sized length either.
    let mut buf = BytesMut::new();
    buf.put_u32(8 * 1024 * 1024);
    buf.put_u8(KIND_CONTROL);
    assert!(FrameCodec.decode(&mut buf).is_err());
    assert!(buf.capacity() < 1024);
}

#[test]
fn zero_length_and_unknown_kinds_are_errors() {
    assert!(decode_all(&[0, 0, 0, 0]).is_err());
    assert!(decode_all(&[0, 0, 0, 1, 9]).is_err());
    assert!(decode_all(&[0, 0, 0, 2, KIND_CHUNK, 0]).is_err());
}

#[test]
fn limits_are_enforced_by_the_decoder() {
    let long = "x".repeat(300);
    let mut buf = BytesMut::new();
    encode_control(
        1,
        &Message::RequestFileLocation {
            name: long,
            publisher: None,
        },
        &mut buf,
    )
    .unwrap();
    assert!(decode_all(&buf).is_err());
    let bad = Manifest {
        size: 10,
        chunk_size: MIN_CHUNK_SIZE,
        hashes: vec![],
    };
    let mut buf = BytesMut::new();
    encode_control(
        1,
        &Message::RequestPublish {
            name: "a".into(),
            local_path: "/a".into(),
            manifest: bad,
        },
        &mut buf,
    )
    .unwrap();
    assert!(decode_all(&buf).is_err());
}

#[test]
fn hello_checks_magic_version_and_role() {
    use p2pfs_proto::conn::{decode_hello, encode_hello};
    use p2pfs_proto::{ProtoError, Role};
    assert_eq!(decode_hello(&encode_hello(Role::Peer)).unwrap(), Role::Peer);
    let mut h = encode_hello(Role::Tracker);
    h[5] = 99;
    assert!(matches!(
        decode_hello(&h),
        Err(ProtoError::VersionMismatch { remote: 99, .. })
    ));
    assert!(matches!(
        decode_hello(b"GET / HT"),
        Err(ProtoError::BadMagic)
    ));
    let mut h = encode_hello(Role::Peer);
    h[6] = 7;
    assert!(decode_hello(&h).is_err());
}

#[test]
fn control_codec_refuses_chunk_frames_and_large_lengths() {
    use p2pfs_proto::codec::ControlCodec;
    let mut buf = BytesMut::new();
    buf.put_u32(1000);
    buf.put_u8(KIND_CHUNK);
    assert!(ControlCodec.decode(&mut buf).is_err());
    let mut buf = BytesMut::new();
    buf.put_u32(16 * 1024 * 1024);
    assert!(ControlCodec.decode(&mut buf).is_err());
    assert!(buf.capacity() < 1024);
    let mut buf = BytesMut::new();
    encode_control(3, &Message::Heartbeat, &mut buf).unwrap();
    assert_eq!(
        ControlCodec.decode(&mut buf).unwrap(),
        Some(Frame::Control {
            id: 3,
            msg: Message::Heartbeat
        })
    );
}
