//! Checkpoints and segment cleaning, run by the commit thread between batches.

use super::committer::{Batch, Committer, Purpose};
use crate::codec::crc_of;
use crate::device::AlignedBuf;
use crate::error::{EngineError, Result};
use crate::format::batch::{BatchOp, Move};
use crate::format::checkpoint::{LogPos, Slot, MAX_BLOB_SEGMENTS};
use crate::format::SLOT_OFFSETS;
use crate::ids::{BLOCK, BLOCK_SIZE};
use crate::segments::SegState;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;

impl Committer {
    /// Runs a checkpoint or the cleaner when the log or the free space call for it.
    pub fn maintain(&mut self) -> Result<()> {
        let chain = self.table.count(SegState::Chain) as u64;
        if self.bytes_since_ckpt >= self.sh.cfg.checkpoint_bytes || chain * 4 >= self.geo.seg_count as u64 {
            self.checkpoint()?;
        }
        self.table.reclaim(self.sh.state.read().seg_live());
        if self.table.free_count() < self.low_water() && self.fruitless_clean_at != Some(self.segments_filled) {
            self.clean()?;
        }
        Ok(())
    }

    /// Sealed segments to clean now, within what the free segments can absorb (one is kept
    /// for the log to move on after relocation fills the current segment).
    fn pick_victims(&mut self) -> Vec<(u32, u32)> {
        self.table.reclaim(self.sh.state.read().seg_live());
        let budget = (self.table.free_count().saturating_sub(1) as u64) * (self.geo.seg_blocks * 3 / 4);
        self.table.pick_victims(self.sh.state.read().seg_live(), self.geo.seg_blocks, budget)
    }

    fn low_water(&self) -> usize {
        (self.geo.seg_count as usize / 8).max(super::committer::RESERVED_SEGMENTS + 2)
    }

    /// Writes the whole state as a new checkpoint. Durable order: blob, sync, slot, sync;
    /// only then are the previous blob and the log before the checkpoint released.
    pub fn checkpoint(&mut self) -> Result<()> {
        let blob = self.sh.state.read().encode();
        let nsegs = (blob.len() as u64).div_ceil(self.geo.seg_bytes()).max(1) as usize;
        if nsegs > MAX_BLOB_SEGMENTS {
            return Err(EngineError::TooLarge { bytes: blob.len() as u64, max: MAX_BLOB_SEGMENTS as u64 * self.geo.seg_bytes() });
        }
        let mut segs = Vec::with_capacity(nsegs);
        for _ in 0..nsegs {
            match self.take_segment(SegState::Ckpt, Purpose::Internal) {
                Some(s) => segs.push(s),
                None => {
                    segs.iter().for_each(|s| self.table.set(*s, SegState::Free));
                    return Err(EngineError::NoSpace {
                        need_blocks: nsegs as u64 * self.geo.seg_blocks,
                        free_segments: self.table.free_count(),
                    });
                }
            }
        }
        let io = (|| -> Result<()> {
            for (i, s) in segs.iter().enumerate() {
                let chunk = &blob[i * self.geo.seg_bytes() as usize..((i + 1) * self.geo.seg_bytes() as usize).min(blob.len())];
                let mut b = AlignedBuf::zeroed(chunk.len());
                b[..chunk.len()].copy_from_slice(chunk);
                self.sh.dev.write_at(self.geo.seg_offset(*s), &b)?;
            }
            self.sh.dev.sync()?;
            let slot = Slot {
                uuid: self.sh.uuid,
                gen: self.gen + 1,
                seq: self.seq - 1,
                head: LogPos { seg: self.seg, off: self.off_blocks * BLOCK },
                next_seg: self.next_seg,
                blob_len: blob.len() as u64,
                blob_crc: crc_of(&[&blob]),
                blob_segs: segs.clone(),
            };
            let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
            b.copy_from_slice(&slot.encode());
            self.sh.dev.write_at(SLOT_OFFSETS[((self.gen + 1) % 2) as usize], &b)?;
            self.sh.dev.sync()?;
            Ok(())
        })();
        if let Err(e) = io {
            self.fail(&e);
            return Err(e);
        }
        for s in std::mem::replace(&mut self.ckpt_segs, segs) {
            self.table.set(s, SegState::Sealed);
        }
        self.table.chain_to_sealed();
        self.gen += 1;
        self.bytes_since_ckpt = 0;
        let st = &self.sh.stats;
        st.checkpoints.fetch_add(1, Relaxed);
        st.device_bytes.fetch_add(blob.len().div_ceil(BLOCK_SIZE) as u64 * BLOCK + BLOCK, Relaxed);
        st.syncs.fetch_add(2, Relaxed);
        tracing::debug!(gen = self.gen, bytes = blob.len(), "checkpoint written");
        Ok(())
    }

    /// Moves the live blocks of the emptiest sealed segments to the log head so those segments
    /// become free. The relocation batch records old -> new block numbers; applying it
    /// repoints every reference, on the live state now and on replay after a crash.
    pub fn clean(&mut self) -> Result<()> {
        let mut victims = self.pick_victims();
        if victims.is_empty() && self.table.count(SegState::Chain) > 0 {
            // Post-checkpoint log cannot be cleaned; a checkpoint makes it eligible.
            self.checkpoint()?;
            victims = self.pick_victims();
        }
        if victims.is_empty() {
            self.fruitless_clean_at = Some(self.segments_filled);
            return Ok(());
        }
        self.fruitless_clean_at = None;
        let mut live: Vec<(u64, u32)> = {
            let st = self.sh.state.read();
            st.refs
                .map
                .iter()
                .filter(|(p, _)| self.geo.seg_of(**p).is_some_and(|s| victims.iter().any(|(v, _)| *v == s)))
                .map(|(p, i)| (*p, i.crc))
                .collect()
        };
        live.sort_unstable();
        // One relocation batch holds at most half a segment of data (header room included).
        let per_batch = (self.geo.seg_blocks / 2).max(1) as usize;
        for chunk in live.chunks(per_batch) {
            let mut batch = Batch::default();
            let mut moves = Vec::with_capacity(chunk.len());
            for (i, (phys, crc)) in chunk.iter().enumerate() {
                let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
                if let Err(e) = self.sh.dev.read_at(phys * BLOCK, &mut b) {
                    // Leave this segment for a later round rather than lose the block.
                    tracing::warn!(error = %e, phys, "cleaner read failed");
                    return Err(e.into());
                }
                let actual = crc32c::crc32c(&b);
                if actual != *crc {
                    tracing::error!(phys, "cleaner found a corrupt block; relocating it still marked corrupt");
                    self.sh.stats.corrupt_relocated.fetch_add(1, Relaxed);
                }
                moves.push(Move { old: *phys, new: i as u32, crc: *crc });
                batch.crcs.push(actual);
                batch.data.push(Bytes::copy_from_slice(&b));
            }
            batch.ops.push(BatchOp::Relocate { moves });
            batch.ops_len = crate::format::batch::ops_encoded_len(&batch.ops);
            self.write_batch(&batch, Purpose::Internal)?;
            self.sh.stats.relocated_blocks.fetch_add(chunk.len() as u64, Relaxed);
        }
        self.table.reclaim(self.sh.state.read().seg_live());
        self.sh.stats.cleaned_segments.fetch_add(victims.len() as u64, Relaxed);
        self.sh.stats.free_segments.store(self.table.free_count() as u64, Relaxed);
        tracing::debug!(segments = victims.len(), blocks = live.len(), "cleaned");
        Ok(())
    }
}
