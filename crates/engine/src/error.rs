//! The engine's error enum. Every variant names the ids needed to act on it.

use crate::ids::{ObjectKey, PgId};
use std::io;

/// A failed device operation. Cloneable so one failed batch can fail every waiter.
#[derive(Debug, Clone, thiserror::Error)]
#[error("device {op} at byte {offset} (len {len}) failed: {kind:?}: {message}")]
pub struct DeviceError {
    pub op: &'static str,
    pub offset: u64,
    pub len: u64,
    pub kind: io::ErrorKind,
    pub message: String,
}

impl DeviceError {
    pub fn new(op: &'static str, offset: u64, len: u64, err: io::Error) -> Self {
        Self { op, offset, len, kind: err.kind(), message: err.to_string() }
    }
    pub fn invalid(op: &'static str, offset: u64, len: u64, message: impl Into<String>) -> Self {
        Self { op, offset, len, kind: io::ErrorKind::InvalidInput, message: message.into() }
    }
}

/// Why bytes read from the device (or handed to a decoder) are not a valid structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated {what}: needed {need} bytes at offset {at}, have {have}")]
    Truncated { what: &'static str, need: usize, at: usize, have: usize },
    #[error("bad magic in {what}")]
    BadMagic { what: &'static str },
    #[error("unsupported {what} version {version}")]
    BadVersion { what: &'static str, version: u16 },
    #[error("checksum mismatch in {what}: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { what: &'static str, stored: u32, computed: u32 },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
}

/// Every error the storage engine returns.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("corrupt on-disk structure: {0}")]
    Format(#[from] FormatError),
    #[error("checksum mismatch reading pg {pg} {key} at byte offset {offset} (device block {phys})")]
    Checksum { pg: PgId, key: ObjectKey, offset: u64, phys: u64 },
    #[error("checksum mismatch reading pg {pg} log entry {index} (device block {phys})")]
    LogChecksum { pg: PgId, index: u64, phys: u64 },
    /// A log entry's data does not match the end-to-end checksums it came with
    /// ([`crate::LogEntry::crcs`]): it was changed after its writer computed them. The
    /// transaction was refused whole; nothing of it was written.
    #[error("pg {pg} log entry {index}: block {block} does not match the checksum it came with (stored {stored:#010x}, computed {computed:#010x}); transaction refused")]
    PayloadChecksum { pg: PgId, index: u64, block: u32, stored: u32, computed: u32 },
    #[error("{what} offset {offset} / length {len} is not a multiple of 4096")]
    Unaligned { what: &'static str, offset: u64, len: u64 },
    #[error("invalid request for pg {pg}: {why}")]
    Invalid { pg: PgId, why: String },
    #[error("log entry {index} of pg {pg} is not in the log (compacted, truncated or never appended)")]
    LogUnavailable { pg: PgId, index: u64 },
    #[error("device full: need {need_blocks} blocks, {free_segments} free segments left")]
    NoSpace { need_blocks: u64, free_segments: usize },
    #[error("transaction of {bytes} bytes exceeds the maximum of {max} bytes per transaction")]
    TooLarge { bytes: u64, max: u64 },
    #[error("invalid format options: {0}")]
    BadFormatOptions(String),
    #[error("not a tessera device (no valid superblock): {0}")]
    NotFormatted(String),
    #[error("engine stopped after a failed write or fsync ({0}); reopen the device to recover")]
    Failed(String),
    /// Recovery fell back to the older checkpoint (the newer slot is unreadable) and found
    /// log batches beyond where its replay ends: the log in between was reused after the
    /// newer checkpoint, so opening would silently forget committed transactions.
    #[error(
        "refusing to open: the newer checkpoint slot is unreadable ({slot_error}); the older one (gen {gen}) replays the log only to batch {replayed_to}, but segment {segment} holds batch {found}, so the log in between was reused and committed transactions would be lost"
    )]
    LogIncomplete { slot_error: String, gen: u64, replayed_to: u64, segment: u32, found: u64 },
    #[error("engine is shut down")]
    Closed,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
