//! Segment geometry and the segment table: which segments are free, which hold the log after
//! the last checkpoint, which hold the checkpoint blob. Sans-IO: the engine asks, then acts.
//!
//! A segment may be reused only when nothing can need its contents again:
//! - no live block in it is referenced by the index (`live == 0`),
//! - it is not part of the log written since the current checkpoint (`Chain`), which replay
//!   walks after a crash,
//! - it does not hold the current checkpoint blob (`Ckpt`), and
//! - it is neither the segment being written (`Active`) nor the one named next (`Next`),
//! - no cleaning job is moving its blocks (`Cleaning`).

use crate::format::SEGMENTS_START;
use crate::ids::BLOCK;

/// Where segments lie on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub seg_blocks: u64,
    pub seg_count: u32,
}

impl Geometry {
    pub fn first_block(&self) -> u64 {
        SEGMENTS_START / BLOCK
    }
    pub fn seg_bytes(&self) -> u64 {
        self.seg_blocks * BLOCK
    }
    /// Device block number of block `off_blocks` of segment `seg`.
    pub fn block_of(&self, seg: u32, off_blocks: u64) -> u64 {
        self.first_block() + seg as u64 * self.seg_blocks + off_blocks
    }
    pub fn seg_offset(&self, seg: u32) -> u64 {
        SEGMENTS_START + seg as u64 * self.seg_bytes()
    }
    /// The segment holding device block `phys`, if it lies in the segment area.
    pub fn seg_of(&self, phys: u64) -> Option<u32> {
        let rel = phys.checked_sub(self.first_block())?;
        let seg = rel / self.seg_blocks;
        (seg < self.seg_count as u64).then_some(seg as u32)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegState {
    Free,
    /// Being appended to.
    Active,
    /// Reserved as the segment the log continues in (named in every batch header).
    Next,
    /// Filled with log written after the current checkpoint: replay needs it.
    Chain,
    /// Filled before the current checkpoint; reusable once `live == 0`.
    Sealed,
    /// Holds the current checkpoint blob.
    Ckpt,
    /// Sealed, with a cleaning job moving its live blocks out; not reusable until the job
    /// is done (a block read for relocation must stay where it was read).
    Cleaning,
}

pub struct SegmentTable {
    pub states: Vec<SegState>,
}

impl SegmentTable {
    pub fn new(count: u32) -> Self {
        Self { states: vec![SegState::Sealed; count as usize] }
    }

    pub fn set(&mut self, seg: u32, s: SegState) {
        self.states[seg as usize] = s;
    }

    pub fn get(&self, seg: u32) -> SegState {
        self.states[seg as usize]
    }

    /// Turns every sealed segment without live blocks into a free one.
    pub fn reclaim(&mut self, live: &[u32]) {
        for (s, l) in self.states.iter_mut().zip(live) {
            if *s == SegState::Sealed && *l == 0 {
                *s = SegState::Free;
            }
        }
    }

    pub fn free_count(&self) -> usize {
        self.states.iter().filter(|s| **s == SegState::Free).count()
    }

    pub fn count(&self, st: SegState) -> usize {
        self.states.iter().filter(|s| **s == st).count()
    }

    /// Takes the lowest-numbered free segment.
    pub fn take_free(&mut self, new_state: SegState) -> Option<u32> {
        let i = self.states.iter().position(|s| *s == SegState::Free)?;
        self.states[i] = new_state;
        Some(i as u32)
    }

    /// A checkpoint made the log before it unnecessary for replay.
    pub fn chain_to_sealed(&mut self) {
        for s in self.states.iter_mut() {
            if *s == SegState::Chain {
                *s = SegState::Sealed;
            }
        }
    }

    /// Sealed segments with fewer than `max_live` live blocks, emptiest first, with their live
    /// block counts; stops when their live blocks would exceed `budget_blocks`.
    pub fn pick_victims(&self, live: &[u32], max_live: u64, budget_blocks: u64) -> Vec<(u32, u32)> {
        let mut c: Vec<(u32, u32)> = self
            .states
            .iter()
            .enumerate()
            .filter(|(i, s)| **s == SegState::Sealed && live[*i] > 0 && (live[*i] as u64) < max_live)
            .map(|(i, _)| (i as u32, live[i]))
            .collect();
        c.sort_by_key(|&(i, l)| (l, i));
        let mut total = 0u64;
        c.into_iter()
            .take_while(|&(_, l)| {
                total += l as u64;
                total <= budget_blocks
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_maps_blocks_to_segments() {
        let g = Geometry { seg_blocks: 16, seg_count: 4 };
        assert_eq!(g.seg_of(g.block_of(0, 0)), Some(0));
        assert_eq!(g.seg_of(g.block_of(3, 15)), Some(3));
        assert_eq!(g.seg_of(g.block_of(3, 16)), None);
        assert_eq!(g.seg_of(0), None, "superblock area is not a segment");
    }

    #[test]
    fn only_sealed_empty_segments_are_reclaimed() {
        let mut t = SegmentTable::new(5);
        t.set(0, SegState::Chain);
        t.set(1, SegState::Ckpt);
        t.set(2, SegState::Active);
        t.reclaim(&[0, 0, 0, 0, 3]);
        assert_eq!(t.states, vec![SegState::Chain, SegState::Ckpt, SegState::Active, SegState::Free, SegState::Sealed]);
        t.chain_to_sealed();
        t.reclaim(&[0, 0, 0, 0, 3]);
        assert_eq!(t.get(0), SegState::Free);
    }

    #[test]
    fn victims_are_emptiest_first_within_budget() {
        let t = SegmentTable::new(4);
        let v = t.pick_victims(&[10, 2, 15, 5], 12, 8);
        assert_eq!(v, vec![(1, 2), (3, 5)]);
    }
}
