//! The `Device` trait: the engine's only path to stable storage.
//!
//! Contract for every implementation:
//! - offsets, lengths and buffer addresses are multiples of [`BLOCK_SIZE`] (callers use
//!   [`AlignedBuf`]); anything else is an `InvalidInput` error, never a panic;
//! - `write_at` returns when the bytes are visible to later reads, **not** when durable;
//! - `sync` returns only after every write that completed before the call is durable;
//! - a write interrupted by a crash may leave any subset of its 512-byte sectors written
//!   (a torn write); the engine detects that with checksums.

mod aligned;
mod fault;
pub mod fault_control;
mod file;
mod mem;
mod volatile;

#[cfg(test)]
mod conformance;

pub use aligned::AlignedBuf;
pub use fault::{FaultConfig, FaultDevice};
pub use fault_control::{FaultControl, FaultSettings};
pub use file::FileDevice;
pub use mem::MemDevice;
pub use volatile::VolatileDevice;

use crate::error::DeviceError;
use crate::ids::BLOCK_SIZE;

#[allow(clippy::len_without_is_empty)] // a device is never empty
pub trait Device: Send + Sync + 'static {
    /// Usable size in bytes (a multiple of 4096).
    fn len(&self) -> u64;
    /// Fills `buf` from byte `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Writes `buf` at byte `offset`; visible to reads on return, durable only after `sync`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError>;
    /// Returns after every previously completed write is on stable storage.
    fn sync(&self) -> Result<(), DeviceError>;
    /// A short human description ("file /x (O_DIRECT)", "memory").
    fn describe(&self) -> String;
}

/// Checks the alignment and range contract shared by all implementations.
pub(crate) fn check_io(op: &'static str, dev_len: u64, offset: u64, ptr: *const u8, len: usize) -> Result<(), DeviceError> {
    let bs = BLOCK_SIZE as u64;
    if !offset.is_multiple_of(bs) || !(len as u64).is_multiple_of(bs) || !(ptr as usize).is_multiple_of(BLOCK_SIZE) {
        return Err(DeviceError::invalid(op, offset, len as u64, "unaligned I/O"));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= dev_len => Ok(()),
        _ => Err(DeviceError::invalid(op, offset, len as u64, format!("beyond device end {dev_len}"))),
    }
}
