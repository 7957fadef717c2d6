//! The p2pfs peer: publishes local files, serves their chunks to any number
//! of downloaders, and fetches files from the swarm.
//!
//! - [`handle`]: [`PeerHandle`], the core API every front end calls.
//! - [`download`]: the download manager (scheduler, sources, progress).
//! - [`server`]: the listener that serves chunks and pings.
//! - [`store`]: what this peer holds and may serve.
//! - `reader`: the threads that read and hash-check chunks for serving.
//! - [`spread`]: initial seeding: every chunk out once before any twice.
//! - [`repo`]: the durable repository (SQLite): peer id, publications,
//!   manifests, downloads and their verified chunks.
//! - [`hashing`]: chunking and hashing a file into a manifest.
//! - [`error`]: [`PeerError`], with stable codes.

pub mod download;
pub mod error;
pub mod handle;
pub mod hashing;
mod reader;
pub mod repo;
mod restore;
pub mod server;
pub mod spread;
pub mod store;

pub use download::{DownloadHandle, DownloadState, Progress};
pub use error::PeerError;
pub use handle::{PeerConfig, PeerEvent, PeerHandle, Publication, MAX_DELAY_SECS};
