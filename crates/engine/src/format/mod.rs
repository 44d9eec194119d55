//! Everything the engine writes to the device, and the decoders for it.
//!
//! Device layout (all offsets in bytes, every structure 4096-aligned):
//!
//! ```text
//! 0        superblock (1 block)           written once by format
//! 4096     checkpoint slot A (1 block)    alternately rewritten, highest valid gen wins
//! 8192     checkpoint slot B (1 block)
//! 65536    segment 0, segment 1, ...      fixed-size; each holds log batches or checkpoint blob
//! ```

pub mod batch;
pub mod checkpoint;
pub mod superblock;

/// Where segment 0 starts.
pub const SEGMENTS_START: u64 = 65536;
/// Byte offsets of the two checkpoint pointer slots.
pub const SLOT_OFFSETS: [u64; 2] = [4096, 8192];
