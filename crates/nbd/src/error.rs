//! The crate's errors: [`ExportError`] (a backend failed one command; answered with an NBD
//! error value by [`ExportError::errno`], the one mapping), [`OpenError`] (an export could
//! not be opened during the handshake) and [`ConnError`] (why a connection ended early).

use crate::proto;

/// A command failed in the export behind the connection. The connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("range at offset {offset} of {len} bytes exceeds the export size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the export is read-only")]
    ReadOnly,
    #[error("out of space: {0}")]
    NoSpace(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ExportError {
    /// The NBD error value a reply carries for this error. `EIO` for timeouts too: the
    /// write may or may not have happened, exactly like a local disk that failed a write.
    pub fn errno(&self) -> u32 {
        match self {
            ExportError::OutOfRange { .. } | ExportError::Invalid(_) => proto::EINVAL,
            ExportError::ReadOnly => proto::EPERM,
            ExportError::NoSpace(_) => proto::ENOSPC,
            ExportError::Io(_) | ExportError::Timeout(_) => proto::EIO,
        }
    }
}

/// An export could not be opened or listed; answered with an option error reply carrying
/// the message ([`OpenError::reply_type`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no export named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot look the export up now: {0}")]
    Unavailable(String),
}

impl OpenError {
    pub fn reply_type(&self) -> u32 {
        match self {
            OpenError::NotFound(_) | OpenError::Unavailable(_) => proto::REP_ERR_UNKNOWN,
            OpenError::Invalid(_) => proto::REP_ERR_INVALID,
        }
    }
}

/// Why a connection was closed by the server (logged, never sent).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
}
