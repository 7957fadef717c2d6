//! The p2pfs tracker: a directory of online peers, published files and
//! which peer holds which chunks. It never sees file data.
//!
//! - [`state`]: the soft state and every rule about it (pure, unit-tested).
//! - [`server`]: the TCP listener and one session task per peer connection.
//! - [`handle`]: [`TrackerHandle`], the core API the shell and the HTTP API call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2pfs_tracker::TrackerError> {
//! use p2pfs_proto::{NetworkSecret, Security};
//! let secret = NetworkSecret::generate();
//! let tracker = p2pfs_tracker::TrackerHandle::new(Security::secret(secret));
//! let addr = tracker.start("127.0.0.1:0".parse().unwrap()).await?;
//! println!("tracker on {addr}, {} peers", tracker.peers().len());
//! # Ok(()) }
//! ```

pub mod handle;
pub mod server;
pub mod state;

pub use handle::{TrackerError, TrackerHandle};
