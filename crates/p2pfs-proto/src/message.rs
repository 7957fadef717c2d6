//! Control messages. Every control frame carries exactly one [`Message`].
//!
//! Postcard encodes an enum variant as its position, so the variants below
//! are append-only: never reorder or remove one (PROTOCOL.md lists the
//! numbers, and a golden-byte test pins them).

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_LIST_LEN, MAX_NAME_LEN, MAX_PATH_LEN, MAX_TEXT_LEN};
use crate::types::{Bitfield, ContentId, Manifest, PeerId};
use crate::ProtoError;

/// Numeric error codes carried by [`Message::Error`]. Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0: the request was malformed or broke a limit.
    BadRequest,
    /// 1: the named file, peer or chunk is unknown.
    NotFound,
    /// 2: the request needs a registered peer.
    NotRegistered,
    /// 3: the name is already published by this peer.
    NameTaken,
    /// 4: the local path is already published by this peer.
    PathTaken,
    /// 5: several publishers share the name; ask again with one.
    Ambiguous,
    /// 6: the peer does not hold that chunk.
    NotHeld,
    /// 7: the chunk index is outside the manifest.
    OutOfRange,
    /// 8: the other side speaks another protocol version or role.
    Incompatible,
    /// 9: the server is overloaded; try later or elsewhere.
    Busy,
    /// 10: an unexpected failure on the server's side.
    Internal,
    /// 11: refused by a rule (e.g. pinging oneself).
    Refused,
}

/// Error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

/// One row of the tracker's file list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Published name.
    pub name: String,
    /// Publisher's listen address.
    pub publisher: SocketAddr,
    /// Publisher's peer id.
    pub publisher_id: PeerId,
    /// Whether the publisher is online now.
    pub publisher_online: bool,
    /// Content id.
    pub content_id: ContentId,
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Number of online peers holding at least one chunk.
    pub sources: u32,
    /// Number of online peers holding every chunk.
    pub seeders: u32,
}

/// One published file of one peer, as `discover` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedInfo {
    /// Published name.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// Path on the publisher's disk.
    pub local_path: String,
    /// Content id.
    pub content_id: ContentId,
}

/// A peer that holds some chunks of a content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Where it listens for chunk requests.
    pub addr: SocketAddr,
    /// Which chunks it holds.
    pub have: Bitfield,
}

/// A [`Holder`] whose bitfield is borrowed (from the tracker's state), for
/// a [`ReplyRef`].
#[derive(Clone, Copy, Debug)]
pub struct HolderRef<'a> {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Where it listens for chunk requests.
    pub addr: SocketAddr,
    /// Which chunks it holds.
    pub have: &'a Bitfield,
}

impl HolderRef<'_> {
    /// An owned copy.
    #[must_use]
    pub fn to_holder(&self) -> Holder {
        Holder {
            peer_id: self.peer_id,
            addr: self.addr,
            have: self.have.clone(),
        }
    }
}

/// A reply built from borrowed parts, so that the tracker encodes a
/// location reply straight from its state instead of cloning the manifest
/// and every holder's bitfield into a [`Message`] first. It encodes byte
/// for byte as the [`Message`] variant of the same name (a property test
/// in `tests/codec.rs` pins that), and decodes as that variant.
#[derive(Clone, Copy, Debug)]
pub enum ReplyRef<'a> {
    /// Encodes as [`Message::ReplyFileLocation`].
    FileLocation {
        /// Published name.
        name: &'a str,
        /// Publisher's address.
        publisher: SocketAddr,
        /// Content id.
        content_id: ContentId,
        /// The manifest.
        manifest: &'a Manifest,
        /// Online holders, publisher included when online.
        holders: &'a [HolderRef<'a>],
    },
    /// Encodes as [`Message::ReplyHolders`].
    Holders {
        /// Online holders.
        holders: &'a [HolderRef<'a>],
    },
}

/// Positions of the [`Message`] variants that [`ReplyRef`] stands for.
const REPLY_FILE_LOCATION: u32 = 13;
const REPLY_HOLDERS: u32 = 23;

impl ReplyRef<'_> {
    /// Appends the postcard encoding of the [`Message`] this stands for.
    ///
    /// Written by hand: serde hands postcard every byte of an id, hash or
    /// bitfield one at a time, and through serde this encoding took 10 %
    /// of the tracker's samples under load, its largest function outside
    /// the kernel (BENCHMARKS.md, benchmark 6).
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        match self {
            ReplyRef::FileLocation {
                name,
                publisher,
                content_id,
                manifest,
                holders,
            } => {
                put_varint(dst, REPLY_FILE_LOCATION.into());
                put_varint(dst, name.len() as u64);
                dst.extend_from_slice(name.as_bytes());
                put_addr(dst, publisher);
                dst.extend_from_slice(&content_id.0);
                put_varint(dst, manifest.size);
                put_varint(dst, manifest.chunk_size.into());
                put_varint(dst, manifest.hashes.len() as u64);
                dst.extend_from_slice(manifest.hashes.as_flattened());
                put_holders(dst, holders);
            }
            ReplyRef::Holders { holders } => {
                put_varint(dst, REPLY_HOLDERS.into());
                put_holders(dst, holders);
            }
        }
    }
}

/// Postcard's unsigned varint (LEB128) of any unsigned integer.
fn put_varint(dst: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

/// Serde's non-human-readable `SocketAddr`: a variant index, the octets
/// and the port (postcard drops an IPv6 address's flow info and scope).
fn put_addr(dst: &mut BytesMut, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            dst.put_u8(0);
            dst.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            dst.put_u8(1);
            dst.extend_from_slice(&a.ip().octets());
        }
    }
    put_varint(dst, addr.port().into());
}

fn put_holders(dst: &mut BytesMut, holders: &[HolderRef<'_>]) {
    put_varint(dst, holders.len() as u64);
    for h in holders {
        dst.extend_from_slice(&h.peer_id.0);
        put_addr(dst, &h.addr);
        put_varint(dst, h.have.len().into());
        let bits = h.have.as_bytes();
        put_varint(dst, bits.len() as u64);
        dst.extend_from_slice(bits);
    }
}

/// One online peer, as `list_peers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Seconds since the Unix epoch when it registered.
    pub connected_since: u64,
    /// Files it published.
    pub published: u32,
    /// Contents it holds chunks of.
    pub holding: u32,
}

/// Holders of one content, as `list_chunkinfo` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Names this content is published under, with publishers.
    pub names: Vec<(String, SocketAddr)>,
    /// Content id.
    pub content_id: ContentId,
    /// Number of chunks.
    pub chunks: u32,
    /// Online holders.
    pub holders: Vec<Holder>,
}

/// Every control message of the protocol. See PROTOCOL.md for who sends
/// which and what answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// 0: an error reply to the request with the same id.
    Error(ErrorReply),
    /// 1: a plain success reply.
    Ok,
    /// 2: peer → tracker: register this peer.
    RequestRegister {
        /// Stable id of the peer.
        peer_id: PeerId,
        /// Address other peers connect to. An unspecified IP (0.0.0.0) is
        /// replaced by the IP the tracker sees.
        listen: SocketAddr,
    },
    /// 3: tracker → peer: registered.
    ReplyRegister {
        /// The listen address the tracker will advertise.
        listen: SocketAddr,
    },
    /// 4: peer → tracker: publish a file.
    RequestPublish {
        /// Name unique among this peer's publications.
        name: String,
        /// Path on the publisher's disk (shown by discover).
        local_path: String,
        /// Size, chunk size and chunk hashes.
        manifest: Manifest,
    },
    /// 5: tracker → peer: published.
    ReplyPublish {
        /// Content id of the manifest.
        content_id: ContentId,
    },
    /// 6: list every file.
    RequestFileList,
    /// 7: the files.
    ReplyFileList {
        /// One row per (name, publisher).
        files: Vec<FileInfo>,
    },
    /// 8: list one peer's published files.
    RequestDiscover {
        /// Its listen address.
        addr: SocketAddr,
    },
    /// 9: that peer's files.
    ReplyDiscover {
        /// The peer's address.
        addr: SocketAddr,
        /// The peer's id.
        peer_id: PeerId,
        /// Its publications.
        files: Vec<PublishedInfo>,
    },
    /// 10: ping; answered by `ReplyPingPong` with the same nonce.
    RequestPingPong {
        /// Echoed back.
        nonce: u64,
    },
    /// 11: pong.
    ReplyPingPong {
        /// The request's nonce.
        nonce: u64,
    },
    /// 12: where is this file: its manifest and holders.
    RequestFileLocation {
        /// Published name.
        name: String,
        /// The publisher, when several share the name.
        publisher: Option<SocketAddr>,
    },
    /// 13: the file's manifest and holders.
    ReplyFileLocation {
        /// Published name.
        name: String,
        /// Publisher's address.
        publisher: SocketAddr,
        /// Content id.
        content_id: ContentId,
        /// The manifest.
        manifest: Manifest,
        /// Online holders, publisher included when online.
        holders: Vec<Holder>,
    },
    /// 14: peer → tracker: it now holds these chunks (batched).
    RequestChunkRegister {
        /// Content.
        content_id: ContentId,
        /// Newly verified chunk indexes.
        indexes: Vec<u32>,
    },
    /// 15: peer → peer: send one chunk; answered by a chunk frame with the
    /// same request id, or an error.
    PeerRequestChunk {
        /// Content.
        content_id: ContentId,
        /// Chunk index.
        index: u32,
    },
    /// 16: peer → tracker: still alive. Answered by `Ok`.
    Heartbeat,
    /// 17: peer → tracker: leaving; forget me. Answered by `Ok`.
    Leave,
    /// 18: list online peers.
    RequestPeerList,
    /// 19: the peers.
    ReplyPeerList {
        /// Online peers.
        peers: Vec<PeerInfo>,
    },
    /// 20: who holds which chunks of every content.
    RequestChunkInfo,
    /// 21: per content, the holders and their bitfields.
    ReplyChunkInfo {
        /// One entry per content.
        files: Vec<ChunkInfo>,
    },
    /// 22: refreshed holders of a content (the download manager polls this).
    RequestHolders {
        /// Content.
        content_id: ContentId,
    },
    /// 23: the holders.
    ReplyHolders {
        /// Online holders.
        holders: Vec<Holder>,
    },
    /// 24: peer → tracker: withdraw this publication (and this peer's
    /// holding of its content, unless another of its publications has the
    /// same content). Answered by `Ok`.
    RequestUnpublish {
        /// The published name.
        name: String,
    },
    /// 25: peer → tracker: it holds these verified chunks of this content.
    /// Sent when re-announcing after a (re)connection, so that the tracker
    /// learns contents whose publisher is not back yet. Answered by `Ok`.
    RequestHave {
        /// The content's manifest (its content id is derived from it).
        manifest: Manifest,
        /// Held chunks; as many bits as the manifest has chunks.
        have: Bitfield,
    },
    /// 26: peer → peer, reply to `PeerRequestChunk` from a complete holder
    /// while it seeds a content out: it sent that chunk to another
    /// downloader moments ago, so the requester should get it from there
    /// (it will be registered at the tracker shortly) and ask this peer
    /// for chunks it has not sent to anyone recently, such as `suggest`.
    /// See PROTOCOL.md §Initial seeding.
    ReplyChunkDeferred {
        /// The requested chunk.
        index: u32,
        /// Chunks this peer has not sent recently (at most
        /// [`MAX_SUGGEST`](crate::limits::MAX_SUGGEST)).
        suggest: Vec<u32>,
    },
    /// 27: downloader → peer: which chunks of this content do you hold,
    /// and tell me as you verify more. Answered by `PeerHave` with the same
    /// request id, then by `PeerHave` with request id 0 whenever the peer
    /// holds more, until it holds them all or the connection closes.
    PeerRequestHave {
        /// Content.
        content_id: ContentId,
    },
    /// 28: peer → downloader: the chunks it holds now.
    PeerHave {
        /// Content.
        content_id: ContentId,
        /// Held chunks, as many bits as the content has chunks.
        have: Bitfield,
    },
}

impl Message {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Error(_) => "Error",
            Message::Ok => "Ok",
            Message::RequestRegister { .. } => "REQUEST_REGISTER",
            Message::ReplyRegister { .. } => "REPLY_REGISTER",
            Message::RequestPublish { .. } => "REQUEST_PUBLISH",
            Message::ReplyPublish { .. } => "REPLY_PUBLISH",
            Message::RequestFileList => "REQUEST_FILE_LIST",
            Message::ReplyFileList { .. } => "REPLY_FILE_LIST",
            Message::RequestDiscover { .. } => "REQUEST_DISCOVER",
            Message::ReplyDiscover { .. } => "REPLY_DISCOVER",
            Message::RequestPingPong { .. } => "REQUEST_PING_PONG",
            Message::ReplyPingPong { .. } => "REPLY_PING_PONG",
            Message::RequestFileLocation { .. } => "REQUEST_FILE_LOCATION",
            Message::ReplyFileLocation { .. } => "REPLY_FILE_LOCATION",
            Message::RequestChunkRegister { .. } => "REQUEST_CHUNK_REGISTER",
            Message::PeerRequestChunk { .. } => "PEER_REQUEST_CHUNK",
            Message::Heartbeat => "HEARTBEAT",
            Message::Leave => "LEAVE",
            Message::RequestPeerList => "REQUEST_PEER_LIST",
            Message::ReplyPeerList { .. } => "REPLY_PEER_LIST",
            Message::RequestChunkInfo => "REQUEST_CHUNK_INFO",
            Message::ReplyChunkInfo { .. } => "REPLY_CHUNK_INFO",
            Message::RequestHolders { .. } => "REQUEST_HOLDERS",
            Message::ReplyHolders { .. } => "REPLY_HOLDERS",
            Message::RequestUnpublish { .. } => "REQUEST_UNPUBLISH",
            Message::RequestHave { .. } => "REQUEST_HAVE",
            Message::ReplyChunkDeferred { .. } => "REPLY_CHUNK_DEFERRED",
            Message::PeerRequestHave { .. } => "PEER_REQUEST_HAVE",
            Message::PeerHave { .. } => "PEER_HAVE",
        }
    }

    /// Builds an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_TEXT_LEN);
        Message::Error(ErrorReply { code, message })
    }

    /// Checks every limit that serde cannot: name and text lengths, list
    /// lengths, manifest and bitfield consistency.
    ///
    /// # Errors
    /// [`ProtoError::Limit`] or the manifest/bitfield error.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Message::Error(e) => text(&e.message, MAX_TEXT_LEN, "error message"),
            Message::RequestPublish {
                name,
                local_path,
                manifest,
            } => {
                text(name, MAX_NAME_LEN, "name")?;
                text(local_path, MAX_PATH_LEN, "local path")?;
                manifest.validate()
            }
            Message::ReplyFileList { files } => {
                list(files.len())?;
                files
                    .iter()
                    .try_for_each(|f| text(&f.name, MAX_NAME_LEN, "name"))
            }
            Message::ReplyDiscover { files, .. } => {
                list(files.len())?;
                files.iter().try_for_each(|f| {
                    text(&f.name, MAX_NAME_LEN, "name")?;
                    text(&f.local_path, MAX_PATH_LEN, "local path")
                })
            }
            Message::RequestFileLocation { name, .. } | Message::RequestUnpublish { name } => {
                text(name, MAX_NAME_LEN, "name")
            }
            Message::ReplyFileLocation {
                name,
                manifest,
                holders,
                ..
            } => {
                text(name, MAX_NAME_LEN, "name")?;
                manifest.validate()?;
                holders_ok(holders)
            }
            Message::RequestChunkRegister { indexes, .. } => list(indexes.len()),
            Message::ReplyChunkDeferred { suggest, .. } => {
                if suggest.len() > crate::limits::MAX_SUGGEST {
                    return Err(ProtoError::Limit {
                        what: "suggested chunks",
                        len: suggest.len(),
                        max: crate::limits::MAX_SUGGEST,
                    });
                }
                Ok(())
            }
            Message::ReplyPeerList { peers } => list(peers.len()),
            Message::ReplyChunkInfo { files } => {
                list(files.len())?;
                files.iter().try_for_each(|f| {
                    list(f.names.len())?;
                    f.names
                        .iter()
                        .try_for_each(|(n, _)| text(n, MAX_NAME_LEN, "name"))?;
                    holders_ok(&f.holders)
                })
            }
            Message::ReplyHolders { holders } => holders_ok(holders),
            Message::PeerHave { have, .. } => have.validate(),
            Message::RequestHave { manifest, have } => {
                manifest.validate()?;
                have.validate()?;
                if have.len() != manifest.chunk_count() {
                    return Err(ProtoError::Limit {
                        what: "bitfield length",
                        len: have.len() as usize,
                        max: manifest.chunk_count() as usize,
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn text(s: &str, max: usize, what: &'static str) -> Result<(), ProtoError> {
    if s.len() > max {
        return Err(ProtoError::Limit {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn list(len: usize) -> Result<(), ProtoError> {
    if len > MAX_LIST_LEN {
        return Err(ProtoError::Limit {
            what: "list",
            len,
            max: MAX_LIST_LEN,
        });
    }
    Ok(())
}

fn holders_ok(holders: &[Holder]) -> Result<(), ProtoError> {
    list(holders.len())?;
    holders.iter().try_for_each(|h| h.have.validate())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Why a published name is not acceptable, or `None` when it is.
///
/// A name must be 1–255 bytes of UTF-8, hold no `/`, `\`, NUL or other
/// control character, not be `.` or `..`, and not start or end with
/// white space.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Some("the name is longer than 255 bytes");
    }
    if name.contains(['/', '\\']) {
        return Some("the name holds a path separator");
    }
    if name.chars().any(char::is_control) {
        return Some("the name holds a control character");
    }
    if name == "." || name == ".." {
        return Some("the name cannot be '.' or '..'");
    }
    if name.trim() != name {
        return Some("the name starts or ends with white space");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_problem("notes ü.txt"), None);
        assert!(name_problem("").is_some());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("a\\b").is_some());
        assert!(name_problem("a\0b").is_some());
        assert!(name_problem("a\nb").is_some());
        assert!(name_problem("..").is_some());
        assert!(name_problem(&"x".repeat(256)).is_some());
        assert_eq!(name_problem(&"x".repeat(255)), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut s = "üüü".to_string();
        truncate_utf8(&mut s, 3);
        assert_eq!(s, "ü");
    }
}
