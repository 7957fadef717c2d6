//! The p2pfs wire protocol. `PROTOCOL.md` at the repository root is the
//! normative contract; this crate implements it.
//!
//! - [`limits`]: every size, count and timer of the protocol.
//! - [`types`]: peer ids, content ids, manifests, bitfields.
//! - [`message`]: control messages and the name rules.
//! - [`codec`]: the frame codec shared by every connection.
//! - [`secure`]: the network secret, join tokens and the Noise transport
//!   under every connection.
//! - [`conn`]: hello exchange, frame writer and a multiplexed RPC client.
//! - [`pool`]: pooled chunk buffers ([`pool::ChunkBuf`]) and transfer buffers.
//! - [`frame_reader`]: the dialling side's frame reader, chunk payloads in
//!   pooled buffers.
//!
//! Goals: one codec for every connection; decoders that enforce limits and
//! never panic; chunk payloads that are never re-encoded, and on receipt
//! read straight into their own buffer (only the few KiB that arrive with
//! a chunk's header are copied).
//! Non-goals: schema evolution within a version.

pub mod codec;
pub mod conn;
mod error;
pub mod frame_reader;
pub mod limits;
pub mod message;
pub mod pool;
pub mod secure;
pub mod types;

pub use codec::{Frame, FrameCodec};
pub use conn::{Role, RpcClient};
pub use error::{error_words, io_words, ProtoError};
pub use message::{ErrorCode, ErrorReply, Message};
pub use secure::{JoinToken, NetworkSecret, Security};
pub use types::{Bitfield, ContentId, Manifest, PeerId};
