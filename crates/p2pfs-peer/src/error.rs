//! Errors of peer operations, worded for users, each with a stable code
//! for machine front ends.

use std::net::SocketAddr;
use std::path::PathBuf;

use p2pfs_proto::ProtoError;

/// What can go wrong in a peer operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No tracker connection.
    #[error("not connected to a tracker; use 'connect IP PORT' first")]
    NotConnected,
    /// Talking to the tracker failed.
    #[error("tracker {addr}: {source}")]
    Tracker {
        /// Tracker address.
        addr: SocketAddr,
        /// Cause.
        source: ProtoError,
    },
    /// The tracker refused the request.
    #[error("{0}")]
    TrackerRefused(String),
    /// The name breaks the naming rules.
    #[error("invalid name '{name}': {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// The broken rule.
        why: &'static str,
    },
    /// This peer already published a file under that name.
    #[error("you already published a file named '{0}'")]
    NameTaken(String),
    /// This peer already published that path.
    #[error("{path} is already published as '{name}'")]
    PathTaken {
        /// The path.
        path: PathBuf,
        /// Its published name.
        name: String,
    },
    /// The local file cannot be published.
    #[error("cannot publish {path}: {why}")]
    BadLocalFile {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The file is this peer's own publication.
    #[error("'{0}' is your own published file; there is nothing to fetch")]
    OwnFile(String),
    /// The destination exists.
    #[error("destination {0} already exists; choose another")]
    DestinationExists(PathBuf),
    /// The destination cannot be used.
    #[error("cannot write to {path}: {why}")]
    BadDestination {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// No such file in the network.
    #[error("{0}")]
    NotFound(String),
    /// Several peers published the name.
    #[error("{0}")]
    Ambiguous(String),
    /// The same content is already being fetched or held.
    #[error("{0}")]
    AlreadyHeld(String),
    /// A peer's own address was given where another peer's is needed.
    #[error("{0}")]
    Refused(String),
    /// `set_delay` with a value out of range.
    #[error("the delay must be between 0 and {max} seconds, not {0}", max = crate::handle::MAX_DELAY_SECS)]
    BadDelay(f64),
    /// The repository database failed.
    #[error("repository database {path}: {why}")]
    Repository {
        /// The database file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Another process (a peer started on the same folder) holds the
    /// repository.
    #[error(
        "the repository {dir} is in use by another p2pfs peer{}; stop that peer, or give this one its own --repo",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    RepositoryInUse {
        /// The repository folder.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// No download with that id.
    #[error("there is no download #{0}")]
    NoSuchDownload(u64),
    /// The download cannot be resumed now.
    #[error("{0}")]
    CannotResume(String),
    /// Local IO failed.
    #[error("{context}: {}", crate::handle::describe_io(.source))]
    Io {
        /// What we were doing.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl PeerError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PeerError::NotConnected => "not_connected",
            PeerError::Tracker { .. } => "tracker_unreachable",
            PeerError::TrackerRefused(_) => "tracker_refused",
            PeerError::InvalidName { .. } => "invalid_name",
            PeerError::NameTaken(_) => "name_taken",
            PeerError::PathTaken { .. } => "path_taken",
            PeerError::BadLocalFile { .. } => "bad_local_file",
            PeerError::OwnFile(_) => "own_file",
            PeerError::DestinationExists(_) => "destination_exists",
            PeerError::BadDestination { .. } => "bad_destination",
            PeerError::NotFound(_) => "not_found",
            PeerError::Ambiguous(_) => "ambiguous",
            PeerError::AlreadyHeld(_) => "already_held",
            PeerError::Refused(_) => "refused",
            PeerError::BadDelay(_) => "bad_delay",
            PeerError::Repository { .. } => "repository",
            PeerError::RepositoryInUse { .. } => "repository_in_use",
            PeerError::NoSuchDownload(_) => "no_such_download",
            PeerError::CannotResume(_) => "cannot_resume",
            PeerError::Io { .. } => "io",
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
        let context = context.into();
        move |source| PeerError::Io { context, source }
    }
}
