//! JSON shapes shared by the tracker and peer APIs. Ids are lowercase hex,
//! addresses `IP:PORT` strings.

use p2pfs_proto::message::{FileInfo, PublishedInfo};
use p2pfs_proto::PeerId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A published file as the network knows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDto {
    /// Published name.
    pub name: String,
    /// Publisher address.
    pub publisher: String,
    /// Publisher peer id.
    pub publisher_id: String,
    /// Whether the publisher is online.
    pub publisher_online: bool,
    /// Content id.
    pub content_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Peers holding at least one chunk.
    pub sources: u32,
    /// Peers holding every chunk.
    pub seeders: u32,
    /// Peer API only: published by this peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own: Option<bool>,
}

impl From<&FileInfo> for FileDto {
    fn from(f: &FileInfo) -> Self {
        Self {
            name: f.name.clone(),
            publisher: f.publisher.to_string(),
            publisher_id: f.publisher_id.to_string(),
            publisher_online: f.publisher_online,
            content_id: f.content_id.to_string(),
            size: f.size,
            chunk_size: f.chunk_size,
            chunks: f.chunks,
            sources: f.sources,
            seeders: f.seeders,
            own: None,
        }
    }
}

/// The network's files.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilesReply {
    /// Files, by name then publisher.
    pub files: Vec<FileDto>,
}

/// One file a peer published, as `discover` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedDto {
    /// Published name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// Path on the publisher's machine.
    pub path: String,
    /// Content id.
    pub content_id: String,
}

/// What a peer publishes.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoverReply {
    /// Its peer id.
    pub peer_id: String,
    /// Its address.
    pub addr: String,
    /// Its published files.
    pub files: Vec<PublishedDto>,
}

impl DiscoverReply {
    pub(crate) fn new(
        addr: std::net::SocketAddr,
        peer_id: PeerId,
        files: &[PublishedInfo],
    ) -> Self {
        Self {
            peer_id: peer_id.to_string(),
            addr: addr.to_string(),
            files: files
                .iter()
                .map(|f| PublishedDto {
                    name: f.name.clone(),
                    size: f.size,
                    chunks: f.chunks,
                    path: f.local_path.clone(),
                    content_id: f.content_id.to_string(),
                })
                .collect(),
        }
    }
}

/// `?addr=IP:PORT`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AddrQuery {
    /// A peer's address, `IP:PORT`.
    pub addr: String,
}

/// `{"addr": "IP:PORT"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddrBody {
    /// An address, `IP:PORT`.
    pub addr: String,
}
