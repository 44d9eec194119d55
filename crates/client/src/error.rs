//! [`ClientError`], the crate's one error enum. Every variant names what it failed on (volume,
//! object, PG, offset, OSD) so it can be logged or shown as is.

use std::fmt;
use std::time::Duration;

use tessera_wire::WirePg;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Where an object request was going: the ids an operator needs to find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub volume: u64,
    pub object: u64,
    /// Byte offset within the object.
    pub offset: u64,
    /// `None` when the request could not even be mapped to a PG (pool missing from the map).
    pub pg: Option<WirePg>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "volume {} object {} offset {}", self.volume, self.object, self.offset)?;
        match self.pg {
            Some(pg) => write!(f, " (pg {}.{})", pg.pool, pg.index),
            None => write!(f, " (no pg)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A call to the mon failed (lookup of a volume, the first map).
    #[error("mon: {what}: {source}")]
    Mon {
        what: String,
        #[source]
        source: tessera_mon::ClientError,
    },
    /// The client was built from a fixed map ([`crate::Client::with_map`]) and has no mon.
    #[error("{what} needs the mon, but this client was built without one")]
    NoMon { what: String },
    /// The volume record cannot be served (object size not a power of two >= 4096, size not
    /// a multiple of 4096).
    #[error("volume {volume}: {why}")]
    BadVolume { volume: u64, why: String },
    /// The volume's pool is not in the cluster map.
    #[error("volume {volume}: pool {pool} is not in the cluster map (epoch {epoch})")]
    NoPool { volume: u64, pool: u32, epoch: u64 },
    /// The byte range does not lie within the volume; nothing was sent.
    #[error("volume {volume}: range at offset {offset} of {len} bytes exceeds the volume size {size}")]
    OutOfRange { volume: u64, offset: u64, len: u64, size: u64 },
    /// An object request breaks the request contract (alignment, payload length); nothing
    /// was sent.
    #[error("{at}: bad request: {why}")]
    BadRequest { at: Location, why: String },
    /// The OSD rejected the request as malformed; not retried.
    #[error("{at}: osd {osd} rejected the request as invalid: {message}")]
    Invalid { at: Location, osd: u32, message: String },
    /// The OSD's storage engine failed the request; not retried.
    #[error("{at}: osd {osd} storage error: {message}")]
    Io { at: Location, osd: u32, message: String },
    /// The OSD's device is full.
    #[error("{at}: osd {osd} is out of space: {message}")]
    NoSpace { at: Location, osd: u32, message: String },
    /// The OSD answered something the protocol does not allow (e.g. a read reply of the
    /// wrong length).
    #[error("{at}: protocol violation by osd {osd}: {why}")]
    Protocol { at: Location, osd: u32, why: String },
    /// A write to a read-only (snapshot) handle.
    #[error("volume {volume}: snapshot {snapshot} is read-only")]
    ReadOnly { volume: u64, snapshot: u64 },
    /// The PG refused a write built with an older snapshot context than the volume's newest
    /// snapshot it knows (`snapc`): not applied. The volume handle re-issues such writes with
    /// the newer context by itself; this reaches callers of [`crate::Client::request`] only.
    #[error("{at}: osd {osd}: snapshot context is older than the volume's snapshot {snapc}; re-issue with it")]
    StaleContext { at: Location, osd: u32, snapc: u64 },
    /// The volume cannot be opened in its current state (being rolled back or deleted).
    #[error("volume {volume}: {why}")]
    Busy { volume: u64, why: String },
    /// The call's deadline ([`crate::ClientOptions::op_timeout`]) passed while retrying.
    #[error("{at}: timed out after {elapsed:?}; last error: {last_error}")]
    Timeout { at: Location, elapsed: Duration, last_error: String },
}

impl ClientError {
    /// Where the failed object request was going, for errors that concern one.
    pub fn location(&self) -> Option<Location> {
        match self {
            ClientError::BadRequest { at, .. }
            | ClientError::Invalid { at, .. }
            | ClientError::Io { at, .. }
            | ClientError::NoSpace { at, .. }
            | ClientError::Protocol { at, .. }
            | ClientError::Timeout { at, .. } => Some(*at),
            _ => None,
        }
    }
}
