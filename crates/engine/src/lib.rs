//! tessera's storage engine: everything an OSD keeps on one device.
//!
//! # Design in one paragraph
//! The device is a log of *batches*. A batch is one group commit: a header (ops, sequence
//! number, a CRC32C per data block) followed by 4 KiB data blocks, written with one `write`
//! and made durable with one `fdatasync`. The same log is the Raft log of every PG on the
//! device and the home of their data: applying a Raft entry ([`Op::ApplyWrite`]) makes the
//! object index point at the entry's data blocks, so user data is written to the device once
//! per replica. The index (objects, PG logs, small metadata) lives in memory and is
//! periodically checkpointed; recovery loads the checkpoint and replays later batches. A
//! cleaner moves live blocks out of mostly-dead segments. Nothing is overwritten in place,
//! so [`Op::Clone`] (snapshots) shares blocks without copying.
//!
//! # Durability contract
//! - [`Engine::submit`] calls back `Ok` only after the transaction's batch was written and
//!   `fdatasync` (`Device::sync`) returned; all of its ops then survive any crash.
//! - Except a transaction marked [`Txn::unsynced`] (no data blocks; an OSD's applies, which
//!   it replays from its Raft log): called back once written and applied, it is durable only
//!   once a later batch is synced (every sync covers all batches written before it), and a
//!   crash before that loses it whole, never part of it.
//! - A transaction is atomic: after a crash either all of its ops are visible or none.
//! - Reads see only durable state; every block read is checked against its CRC32C.
//! - After a failed write or sync the engine refuses further writes until reopened.

pub mod codec;
pub mod device;
mod engine;
pub mod error;
pub mod format;
pub mod ids;
pub mod pgmeta;
pub mod segments;
pub mod state;
mod txn;

pub use device::{AlignedBuf, Device, FaultConfig, FaultDevice, FileDevice, MemDevice};
pub use engine::{format, zero_block_crc, Callback, Engine, EngineConfig, EngineStats, FormatOptions};
pub use error::{DeviceError, EngineError, FormatError, Result};
pub use ids::{MetaScope, ObjectKey, PgId, BLOCK, BLOCK_SIZE, SNAP_HEAD, SNAP_STAGING};
pub use pgmeta::{HardState, Membership};
pub use state::{LogBounds, ObjectInfo, Resolved, State, VolumeUsage};
pub use txn::{LogEntry, Op, Txn};
