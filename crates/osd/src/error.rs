//! The OSD's errors, and the one mapping from storage errors to wire statuses.

use tessera_engine::EngineError;
use tessera_wire::Status;

#[derive(Debug, thiserror::Error)]
pub enum OsdError {
    #[error("storage engine: {0}")]
    Engine(#[from] EngineError),
    #[error("device {path}: {source}")]
    Device { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("mon: {0}")]
    Mon(#[from] tessera_mon::client::ClientError),
    #[error("raft group of pg {pg}: {source}")]
    Raft { pg: tessera_engine::PgId, source: raft::Error },
    #[error("the OSD's event loop stopped: {0}")]
    Stopped(String),
    /// The mon refuses this device for good (its OSD was removed with `tessera osd rm`).
    #[error("{0}")]
    Removed(String),
}

/// How a storage error is reported to a client.
pub fn status_of(e: &EngineError) -> Status {
    match e {
        EngineError::NoSpace { .. } => Status::NoSpace,
        EngineError::Unaligned { .. } | EngineError::Invalid { .. } | EngineError::TooLarge { .. } => Status::Invalid,
        _ => Status::Io,
    }
}
