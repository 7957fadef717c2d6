//! Every numeric limit of the wire protocol, with units. PROTOCOL.md §Limits
//! restates these; change both together.

use std::time::Duration;

/// Magic bytes that open every connection's hello.
pub const MAGIC: [u8; 4] = *b"P2PF";
/// Version of the wire protocol spoken by this build.
pub const PROTOCOL_VERSION: u16 = 4;
/// Size of the fixed hello both sides send first, in bytes.
pub const HELLO_LEN: usize = 8;

/// Smallest chunk size a manifest may use, in bytes.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Chunk size of large files, in bytes: files up to [`TARGET_CHUNKS`] ×
/// this size use smaller chunks, down to [`MIN_CHUNK_SIZE`].
pub const BULK_CHUNK_SIZE: u32 = 256 * 1024;
/// Chunk count that files smaller than [`TARGET_CHUNKS`] × [`BULK_CHUNK_SIZE`]
/// (1 GiB) aim at: smaller chunks travel through a swarm in shorter hops.
pub const TARGET_CHUNKS: u32 = 4096;
/// Largest chunk size a manifest may use, in bytes.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest number of chunks in one file. Chunk size grows with file size so
/// that a manifest never has more chunks than this.
pub const MAX_CHUNKS: u32 = 65_536;
/// Largest file size the protocol can describe, in bytes (1 TiB).
pub const MAX_FILE_SIZE: u64 = MAX_CHUNK_SIZE as u64 * MAX_CHUNKS as u64;

/// Bytes of a chunk frame's fixed header after the frame kind:
/// request id (4), content id (32), chunk index (4).
pub const CHUNK_HEADER_LEN: usize = 4 + 32 + 4;
/// Largest body of a control frame (request id + postcard message), in bytes.
/// Sized for the largest manifest: 65,536 hashes of 32 bytes plus slack.
pub const MAX_CONTROL_LEN: usize = 4 * 1024 * 1024;
/// Largest frame (kind byte + body), in bytes: a chunk frame of the largest
/// chunk size.
pub const MAX_FRAME_LEN: usize = 1 + CHUNK_HEADER_LEN + MAX_CHUNK_SIZE as usize;

/// Most chunk indexes suggested in one `ReplyChunkDeferred`.
pub const MAX_SUGGEST: usize = 64;
/// Longest published file name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// Longest local path reported at publish, in bytes of UTF-8.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest free-text field (error messages, agent strings), in bytes.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most entries in any list carried by one message (files, peers, holders,
/// chunk indexes).
pub const MAX_LIST_LEN: usize = 100_000;
/// Bytes of holders a tracker lists in one `ReplyFileLocation` or
/// `ReplyHolders`, counting each holder at [`HOLDER_MAX_LEN`] plus its
/// bitfield's bytes: past that, a random choice of them (see PROTOCOL.md). Beside
/// the largest manifest the reply still fits in [`MAX_CONTROL_LEN`]; a reply
/// listing every holder of a popular large file did not (about 1,400
/// holders of a 5 GiB file), and ended the requester's session.
pub const HOLDERS_REPLY_BYTES: usize = 1024 * 1024;
/// Most bytes of one holder's encoding besides its bitfield's bytes: peer
/// id 16, IPv6 address 1 + 16 + port varint 3, chunk count varint 5, byte
/// count varint 3.
pub const HOLDER_MAX_LEN: usize = 44;

/// How often a peer sends a heartbeat to the tracker.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A peer the tracker has not heard from for this long is removed.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(4);
/// Limit for connecting and for the hello exchange.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit for a request/reply exchange with the tracker.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle peer-to-peer connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
