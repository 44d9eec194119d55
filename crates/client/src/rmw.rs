//! Serializing read-modify-write of a 4 KiB block within one client.
//!
//! Two calls of the same client that patch different bytes of the same block would
//! otherwise both read the old block and the second write would undo the first. Each patch
//! holds the lock stripe of its `(volume, block)` from its read until its write is answered.
//! Different blocks may share a stripe (that only costs a little concurrency). Clients do
//! not coordinate with each other: across clients the read-modify-write is not atomic.

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 64;

#[derive(Debug)]
pub(crate) struct BlockLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for BlockLocks {
    fn default() -> Self {
        BlockLocks { stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() }
    }
}

impl BlockLocks {
    /// Waits for and holds the stripe of block `block` (a volume byte offset) of `volume`.
    pub(crate) async fn lock(&self, volume: u64, block: u64) -> MutexGuard<'_, ()> {
        let h = volume.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (block / crate::BLOCK_SIZE).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        self.stripes[(h >> 32) as usize % STRIPES].lock().await
    }
}
