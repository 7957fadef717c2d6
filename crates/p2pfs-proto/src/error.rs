//! Errors of the wire layer.

use std::io;

/// What can go wrong reading, writing or checking protocol data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Reading or writing the socket failed.
    #[error("connection error: {}", io_words(.0))]
    Io(#[from] io::Error),
    /// A frame's length is zero or over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    /// A frame ended before its fixed header did.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The control body is not a valid message.
    #[error("malformed message: {0}")]
    BadMessage(#[source] postcard::Error),
    /// A field broke a protocol limit.
    #[error("{what} of length {len} exceeds the limit of {max}")]
    Limit {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A manifest is inconsistent.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// A bitfield's length does not match its chunk count.
    #[error("invalid bitfield")]
    InvalidBitfield,
    /// The other side did not open with the p2pfs magic.
    #[error("the remote end is not a p2pfs node (bad handshake magic)")]
    BadMagic,
    /// The other side speaks another protocol version.
    #[error("protocol version mismatch: remote speaks v{remote}, we speak v{local}")]
    VersionMismatch {
        /// Remote version.
        remote: u16,
        /// Our version.
        local: u16,
    },
    /// The other side has a role this endpoint does not talk to.
    #[error("unexpected role: {0}")]
    UnexpectedRole(String),
    /// The remote end does not hold our network secret (or we do not hold
    /// its): the security handshake failed.
    #[error("wrong network secret: the handshake failed, so this node and the other end are not in the same network (check the join token or --secret-file)")]
    WrongSecret,
    /// One end runs `--insecure` and the other does not.
    #[error("{}", if *remote_insecure {
        "the other end runs without encryption (--insecure) but this node requires the network secret; run both with --insecure, or neither"
    } else {
        "the other end requires the network secret but this node runs with --insecure; join with the tracker's token instead"
    })]
    SecurityMismatch {
        /// True when the remote is the insecure one.
        remote_insecure: bool,
    },
    /// A network secret or join token that does not parse.
    #[error("bad network secret or join token: {0}")]
    BadSecret(&'static str),
    /// The connection closed.
    #[error("connection closed by the remote end")]
    Closed,
    /// A read, write or connect did not finish in time.
    #[error("timed out after {0:?} while {1}")]
    Timeout(std::time::Duration, &'static str),
    /// The remote answered with an error.
    #[error("{}", .0.message)]
    Remote(crate::message::ErrorReply),
    /// The remote answered with a message we did not expect.
    #[error("unexpected reply {0}")]
    Unexpected(&'static str),
}

/// An IO error as users read it: "connection refused", not "Connection
/// refused (os error 111)".
pub fn io_words(e: &io::Error) -> String {
    error_words(&e.to_string())
}

/// An error message as users read it: without the operating system's
/// "(os error N)" and with a lower-case first letter, to follow a colon.
pub fn error_words(text: &str) -> String {
    let text = text.split(" (os error").next().unwrap_or(text);
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

impl ProtoError {
    /// The remote's error code, when it answered with an error.
    pub fn remote_code(&self) -> Option<crate::message::ErrorCode> {
        match self {
            ProtoError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_read_without_an_os_error_number() {
        #[cfg(target_os = "linux")]
        {
            let refused = ProtoError::Io(io::Error::from_raw_os_error(111));
            assert_eq!(refused.to_string(), "connection error: connection refused");
        }
        let custom = ProtoError::Io(io::Error::other("Broken pipe"));
        assert_eq!(custom.to_string(), "connection error: broken pipe");
        assert_eq!(
            error_words("Address already in use (os error 98)"),
            "address already in use"
        );
        assert_eq!(error_words(""), "");
    }
}
