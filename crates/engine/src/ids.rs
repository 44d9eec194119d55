//! Identifiers shared by every layer that talks to the engine.

use std::fmt;

/// The engine's unit of allocation, checksumming and addressing: 4 KiB.
pub const BLOCK_SIZE: usize = 4096;
/// [`BLOCK_SIZE`] as a `u64`, for offset arithmetic.
pub const BLOCK: u64 = BLOCK_SIZE as u64;

/// A placement group: `pool` is the pool id, `index` the PG's number within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PgId {
    pub pool: u32,
    pub index: u32,
}

impl PgId {
    pub const fn new(pool: u32, index: u32) -> Self {
        Self { pool, index }
    }
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.pool, self.index)
    }
}

/// The snapshot id that names the writable head version of an object.
pub const SNAP_HEAD: u64 = u64::MAX;

/// The version id of an object's *staging* copy: a clone's client copies its parent's data
/// for the object there (in several writes), then `Op::Promote` makes it the head in one
/// step if the head is still absent. Never a snapshot id, never a frozen version.
pub const SNAP_STAGING: u64 = u64::MAX - 1;

/// One object version: `(volume, object index, snapshot)`. The head (writable) version has
/// `snap == SNAP_HEAD`; a frozen version (made by [`crate::Op::Preserve`], see
/// `state/versions.rs`) carries the snapshot id; `SNAP_STAGING` is a clone's copy-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub volume: u64,
    pub object: u64,
    pub snap: u64,
}

impl ObjectKey {
    pub const fn head(volume: u64, object: u64) -> Self {
        Self { volume, object, snap: SNAP_HEAD }
    }
    pub const fn at_snap(volume: u64, object: u64, snap: u64) -> Self {
        Self { volume, object, snap }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.snap == SNAP_HEAD {
            write!(f, "vol {} obj {}", self.volume, self.object)
        } else {
            write!(f, "vol {} obj {}@{}", self.volume, self.object, self.snap)
        }
    }
}

/// Namespace of a small metadata key: engine-wide, or owned by one PG (dropped with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetaScope {
    Global,
    Pg(PgId),
}
