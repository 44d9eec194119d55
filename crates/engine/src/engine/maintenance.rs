//! Checkpoints and segment cleaning, run by the commit thread between batches.
//!
//! Cleaning is a job: pick victim segments, pin them (`SegState::Cleaning`), then move their
//! live blocks in chunks. Normally each chunk rides in the next user batch (sharing its
//! fsync) and its size is paced by the user data in that batch, so cleaning never stalls the
//! log for long. When the device is out of space, or on `Engine::clean`, the job runs to the
//! end at once.

use super::cleaner::CleanJob;
use super::committer::{Batch, Committer, Purpose};
use crate::codec::crc_of;
use crate::device::AlignedBuf;
use crate::error::{EngineError, Result};
use crate::format::batch::{ops_encoded_len, BatchOp, Move};
use crate::format::checkpoint::{LogPos, Slot, MAX_BLOB_SEGMENTS};
use crate::format::SLOT_OFFSETS;
use crate::ids::{BLOCK, BLOCK_SIZE};
use crate::segments::SegState;
use std::sync::atomic::Ordering::Relaxed;

impl Committer {
    /// Runs a checkpoint or starts cleaning when the log or the free space call for it.
    pub fn maintain(&mut self) -> Result<()> {
        let chain = self.table.count(SegState::Chain) as u64;
        if self.bytes_since_ckpt >= self.sh.cfg.checkpoint_bytes || chain * 4 >= self.geo.seg_count as u64 {
            self.checkpoint()?;
        }
        self.table.reclaim(self.sh.state.read().seg_live());
        if self.clean_job.is_none() && self.table.free_count() < self.low_water() && self.fruitless_clean_at != Some(self.segments_filled) {
            self.start_cleaning(false)?;
        }
        Ok(())
    }

    fn low_water(&self) -> usize {
        // Cleaning late lets segments empty out first: greedy cleaning then moves fewer
        // live blocks per segment freed.
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
                seq: self.head.seq - 1,
                head: LogPos { seg: self.head.seg, off: self.head.off_blocks * BLOCK },
                next_seg: self.head.next_seg,
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

    /// Sealed segments to clean now: the emptiest victims within three quarters of the free
    /// segments but one (cleaning late and little lets segments empty out first, so fewer
    /// live blocks move per segment freed). When that finds none and room is needed now
    /// (`now`, see `clean`), victims within what relocation batches can still write: the
    /// head segment's rest and every free segment, the last one included (the run that
    /// takes it frees its victims before it returns; a victim is never wholly live, so
    /// freeing victims always gains room, however little). With free segments down to the
    /// reserve and none under three quarters live, any segment not wholly live qualifies:
    /// on a device in that state it is the only way any write, a delete included, can go on.
    fn pick_victims(&mut self, now: bool) -> Vec<(u32, u32)> {
        self.table.reclaim(self.sh.state.read().seg_live());
        let free = self.table.free_count();
        let st = self.sh.state.read();
        let mostly_dead = self.geo.seg_blocks * 3 / 4;
        let victims = self.table.pick_victims(st.seg_live(), mostly_dead, (free.saturating_sub(1) as u64) * mostly_dead);
        if !victims.is_empty() || !now {
            return victims;
        }
        let room = self.relocation_room();
        let victims = self.table.pick_victims(st.seg_live(), mostly_dead, room);
        if !victims.is_empty() || free > super::committer::RESERVED_SEGMENTS {
            return victims;
        }
        self.table.pick_victims(st.seg_live(), self.geo.seg_blocks, room)
    }

    /// How many blocks to relocate along with a batch of `user` data blocks: enough that
    /// the job ends (freeing its victims) before user writes use up the free segments, with
    /// 50% margin; the per-batch maximum when free space is short (under twice the work).
    pub fn clean_pace(&self, user: u64) -> Option<u64> {
        let remaining = self.clean_job.as_ref()?.remaining() as u64;
        let free = (self.table.free_count().saturating_sub(super::committer::RESERVED_SEGMENTS) as u64) * self.geo.seg_blocks;
        // At most a quarter segment per batch. Pacing too gently is worse than a slower
        // batch: users then reach the reserve and wait for a synchronous clean.
        let max = (self.geo.seg_blocks / 4).max(64);
        if free <= remaining * 2 {
            return Some(max);
        }
        // remaining / (free - remaining) relocated blocks per user block, times 1.5.
        let per_user = (user * remaining * 3).div_ceil(2 * (free - remaining));
        Some((per_user + 4).min(max))
    }

    /// Picks victims and pins them; returns false when there is nothing worth cleaning.
    fn start_cleaning(&mut self, now: bool) -> Result<bool> {
        let mut victims = self.pick_victims(now);
        if victims.is_empty() && self.table.count(SegState::Chain) > 0 {
            // Post-checkpoint log cannot be cleaned; a checkpoint makes it eligible.
            self.checkpoint()?;
            victims = self.pick_victims(now);
        }
        if victims.is_empty() {
            self.fruitless_clean_at = Some(self.segments_filled);
            return Ok(false);
        }
        self.fruitless_clean_at = None;
        let victims: Vec<u32> = victims.into_iter().map(|(s, _)| s).collect();
        victims.iter().for_each(|s| self.table.set(*s, SegState::Cleaning));
        let mut blocks: Vec<(u64, u32)> = {
            let st = self.sh.state.read();
            st.refs
                .map
                .iter()
                .filter(|(p, _)| self.geo.seg_of(**p).is_some_and(|s| victims.contains(&s)))
                .map(|(p, i)| (*p, i.crc))
                .collect()
        };
        blocks.sort_unstable();
        tracing::debug!(segments = victims.len(), blocks = blocks.len(), "cleaning started");
        match CleanJob::start(self.sh.dev.clone(), victims.clone(), blocks) {
            Ok(job) => self.clean_job = Some(job),
            Err(e) => {
                victims.iter().for_each(|s| self.table.set(*s, SegState::Sealed));
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Adds up to `max_blocks` of the job's blocks that the reader has read (waiting for it
    /// only if `wait`) and that are still live to `batch` as one `Relocate` op. Each keeps
    /// its original expected checksum, so a block that is corrupt on the device stays
    /// detectably corrupt after the move.
    pub fn relocate_into(&mut self, batch: &mut Batch, max_blocks: usize, wait: bool) -> Result<()> {
        let Some(job) = self.clean_job.as_mut() else { return Ok(()) };
        let blocks = job.take(max_blocks, wait)?;
        let mut moves = Vec::with_capacity(blocks.len());
        {
            let st = self.sh.state.read();
            for b in blocks {
                if !st.refs.map.contains_key(&b.phys) {
                    continue;
                }
                if b.actual != b.crc {
                    tracing::error!(phys = b.phys, "cleaner found a corrupt block; relocating it still marked corrupt");
                    self.sh.stats.corrupt_relocated.fetch_add(1, Relaxed);
                }
                moves.push(Move { old: b.phys, new: batch.crcs.len() as u32, crc: b.crc });
                batch.crcs.push(b.actual);
                batch.data.push(b.data);
            }
        }
        if moves.is_empty() {
            return Ok(());
        }
        batch.relocated += moves.len() as u64;
        let op = BatchOp::Relocate { moves };
        batch.ops_len += ops_encoded_len(std::slice::from_ref(&op));
        batch.ops.push(op);
        Ok(())
    }

    /// Ends the job when every block is moved: its victims, now without live blocks, free up.
    pub fn finish_cleaning(&mut self) {
        if self.clean_job.as_ref().is_some_and(|j| j.is_done()) {
            let job = self.clean_job.take().expect("checked");
            job.victims.iter().for_each(|s| self.table.set(*s, SegState::Sealed));
            self.table.reclaim(self.sh.state.read().seg_live());
            self.clean_credit = 0;
            self.sh.stats.cleaned_segments.fetch_add(job.victims.len() as u64, Relaxed);
            self.sh.stats.free_segments.store(self.table.free_count() as u64, Relaxed);
            tracing::debug!(segments = job.victims.len(), "cleaning finished");
        }
    }

    /// Drops the job after a failed batch; its victims keep their (still live) blocks.
    pub fn abort_cleaning(&mut self) {
        if let Some(job) = self.clean_job.take() {
            job.victims.iter().for_each(|s| self.table.set(*s, SegState::Sealed));
        }
        self.clean_credit = 0;
    }

    /// Cleans to completion now: finishes the current job, or starts one and finishes it.
    ///
    /// Each relocation batch fills what is left of the head segment (or a whole segment),
    /// so the run needs no more segments than its victims' live blocks fill, which
    /// `pick_victims` keeps under three quarters of the free segments but one. A job
    /// started earlier whose remaining blocks no longer fit (user and metadata batches
    /// used segments since) is dropped first: its moved blocks stay moved, and a new job
    /// picks victims that fit. A run that took the last free segment without freeing its
    /// victims would leave the device unable to write anything, cleaning included.
    pub fn clean(&mut self) -> Result<()> {
        self.finish_cleaning();
        if self.clean_job.as_ref().is_some_and(|j| j.remaining() as u64 > self.relocation_room()) {
            tracing::debug!("the cleaning job no longer fits in the free segments; picking new victims");
            self.abort_cleaning();
        }
        if self.clean_job.is_none() && !self.start_cleaning(true)? {
            return Ok(());
        }
        while self.clean_job.as_ref().is_some_and(|j| !j.is_done()) {
            let left = self.geo.seg_blocks - self.head.off_blocks;
            let room = if relocation_fits(left) > 0 { left } else { self.geo.seg_blocks };
            let mut batch = Batch::default();
            let r = self.relocate_into(&mut batch, relocation_fits(room), true).and_then(|_| {
                if batch.ops.is_empty() {
                    Ok(())
                } else {
                    self.write_batch(&batch, Purpose::Internal)
                }
            });
            if let Err(e) = r {
                self.abort_cleaning();
                return Err(e);
            }
        }
        self.finish_cleaning();
        Ok(())
    }

    /// How many blocks relocation batches can still write: the rest of the head segment
    /// and every free segment, each filled by one batch.
    fn relocation_room(&self) -> u64 {
        let free = self.table.free_count() as u64;
        relocation_fits(self.geo.seg_blocks - self.head.off_blocks) as u64 + free * relocation_fits(self.geo.seg_blocks) as u64
    }
}

/// Upper bound of a relocation batch's header bytes besides 20 per block (its fixed part,
/// the op count, the op tag and length).
const RELOCATION_HEADER_FIXED: u64 = 256;

/// How many blocks one relocation batch of at most `room` blocks (its header included) can
/// move: each costs its block plus 20 header bytes (a checksum and a move).
pub(crate) fn relocation_fits(room: u64) -> usize {
    let header = |n: u64| (RELOCATION_HEADER_FIXED + 20 * n).div_ceil(BLOCK);
    let mut n = (room * BLOCK).saturating_sub(RELOCATION_HEADER_FIXED) / (BLOCK + 20);
    while n > 0 && header(n) + n > room {
        n -= 1;
    }
    n as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::batch::FIXED_LEN;

    #[test]
    fn a_relocation_batch_fills_its_room_and_never_overflows_it() {
        for room in 0..3000u64 {
            let n = relocation_fits(room) as u64;
            // The real header: fixed part, crc count and crcs, op count, the op (tag, move
            // count, 16 bytes per move).
            let header = (FIXED_LEN as u64 + 4 + 4 * n + 4 + 5 + 16 * n).div_ceil(BLOCK);
            assert!(n == 0 || header + n <= room, "room {room}: {n} blocks and {header} header blocks");
            assert!(room < 3 || n + header + 2 >= room, "room {room}: only {n} blocks");
        }
    }
}
