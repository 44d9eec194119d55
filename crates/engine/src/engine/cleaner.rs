//! A cleaning job: the victim segments and a reader thread that reads their live blocks
//! ahead of the commit thread.
//!
//! The victims are pinned (`SegState::Cleaning`) for the job's lifetime, so the blocks the
//! reader reads cannot be overwritten underneath it; a block that dies meanwhile is simply
//! skipped when relocated (`Relocate` ignores blocks without references). The commit thread
//! never waits for the reader except when it must clean to completion.

use crate::device::{AlignedBuf, Device};
use crate::error::{EngineError, Result};
use crate::ids::{BLOCK, BLOCK_SIZE};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;

/// Two live blocks at most this far apart are read with one device read.
const READ_BRIDGE_BLOCKS: u64 = 32;
/// Blocks per chunk handed from the reader to the commit thread.
const CHUNK_BLOCKS: usize = 256;
/// Chunks the reader may run ahead (bounds the memory a job holds: 4 x 1 MiB).
const AHEAD_CHUNKS: usize = 4;

/// A block read from a victim segment.
pub(crate) struct ReadBlock {
    pub phys: u64,
    /// The checksum the index expects.
    pub crc: u32,
    /// The checksum of what was read (differs if the block is corrupt on the device).
    pub actual: u32,
    pub data: Bytes,
}

pub(crate) struct CleanJob {
    pub victims: Vec<u32>,
    total: usize,
    taken: usize,
    ready: VecDeque<ReadBlock>,
    rx: Receiver<Result<Vec<ReadBlock>>>,
}

impl CleanJob {
    /// Starts reading `blocks` (ascending device block numbers with expected checksums).
    pub fn start(dev: Arc<dyn Device>, victims: Vec<u32>, blocks: Vec<(u64, u32)>) -> Result<Self> {
        let (tx, rx) = sync_channel(AHEAD_CHUNKS);
        let total = blocks.len();
        std::thread::Builder::new()
            .name("tessera-clean".into())
            .spawn(move || {
                for chunk in blocks.chunks(CHUNK_BLOCKS) {
                    let r = read_chunk(&*dev, chunk);
                    let failed = r.is_err();
                    // The job was dropped (finished or aborted): stop reading.
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Failed(format!("cannot start cleaner thread: {e}")))?;
        Ok(Self { victims, total, taken: 0, ready: VecDeque::new(), rx })
    }

    /// Blocks not yet handed out.
    pub fn remaining(&self) -> usize {
        self.total - self.taken
    }

    pub fn is_done(&self) -> bool {
        self.remaining() == 0
    }

    /// Up to `max` blocks that have been read; waits for the reader only if `wait`.
    pub fn take(&mut self, max: usize, wait: bool) -> Result<Vec<ReadBlock>> {
        while self.ready.len() < max && self.taken + self.ready.len() < self.total {
            let chunk = if wait {
                self.rx.recv().map_err(|_| EngineError::Failed("cleaner reader stopped".into()))?
            } else {
                match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(EngineError::Failed("cleaner reader stopped".into())),
                }
            };
            self.ready.extend(chunk?);
        }
        let n = max.min(self.ready.len());
        self.taken += n;
        Ok(self.ready.drain(..n).collect())
    }
}

fn read_chunk(dev: &dyn Device, chunk: &[(u64, u32)]) -> Result<Vec<ReadBlock>> {
    let mut out = Vec::with_capacity(chunk.len());
    let mut i = 0;
    while i < chunk.len() {
        let mut j = i + 1;
        while j < chunk.len() && chunk[j].0 - chunk[j - 1].0 <= READ_BRIDGE_BLOCKS {
            j += 1;
        }
        let first = chunk[i].0;
        let mut buf = AlignedBuf::zeroed(((chunk[j - 1].0 - first + 1) * BLOCK) as usize);
        dev.read_at(first * BLOCK, &mut buf)?;
        for &(phys, crc) in &chunk[i..j] {
            let at = ((phys - first) * BLOCK) as usize;
            let data = &buf[at..at + BLOCK_SIZE];
            out.push(ReadBlock { phys, crc, actual: crc32c::crc32c(data), data: Bytes::copy_from_slice(data) });
        }
        i = j;
    }
    Ok(out)
}
