//! Which 4 KiB blocks of a byte range are only partly covered (sans-IO).
//!
//! OSDs take only whole, aligned 4 KiB blocks. A write or write-zeroes of `[offset, end)`
//! therefore becomes: the aligned `middle` (sent as is) and at most two `Partial` edge
//! blocks (read, patched and written whole). The parts are disjoint and cover the range
//! exactly; the head and tail blocks are never the same block.

use std::ops::Range;

use crate::BLOCK_SIZE;

/// A 4 KiB block of which the range covers only `within`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Partial {
    /// Volume offset of the block (aligned).
    pub(crate) block: u64,
    /// The covered bytes, relative to the block start; never the whole block.
    pub(crate) within: Range<usize>,
}

impl Partial {
    /// Volume offset of the first covered byte.
    pub(crate) fn start(&self) -> u64 {
        self.block + self.within.start as u64
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Edges {
    pub(crate) head: Option<Partial>,
    /// Volume range of whole blocks: aligned, or empty.
    pub(crate) middle: Range<u64>,
    pub(crate) tail: Option<Partial>,
}

/// Splits `[offset, offset + len)` (which must not overflow) into edges and middle.
pub(crate) fn edges(offset: u64, len: u64) -> Edges {
    let end = offset + len;
    if len == 0 {
        return Edges { head: None, middle: offset..offset, tail: None };
    }
    let head_block = align_down(offset);
    let head_partial = offset != head_block || end - head_block < BLOCK_SIZE;
    let partial = |block: u64, from: u64, to: u64| Partial { block, within: (from - block) as usize..(to - block) as usize };
    let (head, mid_start) = if head_partial {
        (Some(partial(head_block, offset, end.min(head_block + BLOCK_SIZE))), head_block + BLOCK_SIZE)
    } else {
        (None, offset)
    };
    if mid_start >= end {
        return Edges { head, middle: end..end, tail: None };
    }
    let tail_block = align_down(end);
    let (tail, mid_end) = if end != tail_block { (Some(partial(tail_block, tail_block, end)), tail_block) } else { (None, end) };
    Edges { head, middle: mid_start..mid_end, tail }
}

pub(crate) fn align_down(x: u64) -> u64 {
    x / BLOCK_SIZE * BLOCK_SIZE
}

/// `x` rounded up to a block multiple (`x` must be at most `u64::MAX - 4095`).
pub(crate) fn align_up(x: u64) -> u64 {
    x.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let p = |block, within: Range<usize>| Some(Partial { block, within });
        assert_eq!(edges(0, 8192), Edges { head: None, middle: 0..8192, tail: None });
        assert_eq!(edges(100, 10), Edges { head: p(0, 100..110), middle: 110..110, tail: None });
        assert_eq!(edges(0, 10), Edges { head: p(0, 0..10), middle: 10..10, tail: None });
        assert_eq!(edges(4000, 200), Edges { head: p(0, 4000..4096), middle: 4096..4096, tail: p(4096, 0..104) });
        assert_eq!(edges(100, 8092), Edges { head: p(0, 100..4096), middle: 4096..8192, tail: None });
        assert_eq!(edges(8192, 4097), Edges { head: None, middle: 8192..12288, tail: p(12288, 0..1) });
    }

    proptest! {
        #[test]
        fn parts_are_disjoint_aligned_and_cover_the_range(offset in 0u64..1 << 20, len in 0u64..1 << 16) {
            let e = edges(offset, len);
            let end = offset + len;
            let mut covered = Vec::new();
            if let Some(h) = &e.head {
                prop_assert!(h.block.is_multiple_of(BLOCK_SIZE));
                prop_assert!(h.within.end <= BLOCK_SIZE as usize && h.within.start < h.within.end);
                prop_assert!(h.within.len() < BLOCK_SIZE as usize);
                covered.push(h.start()..h.block + h.within.end as u64);
            }
            prop_assert!(e.middle.is_empty() || (e.middle.start.is_multiple_of(BLOCK_SIZE) && e.middle.end.is_multiple_of(BLOCK_SIZE)));
            covered.push(e.middle.clone());
            if let Some(t) = &e.tail {
                prop_assert_eq!(t.within.start, 0);
                prop_assert!(t.within.end < BLOCK_SIZE as usize && t.within.end > 0);
                prop_assert!(e.head.as_ref().is_none_or(|h| h.block != t.block));
                covered.push(t.start()..t.block + t.within.end as u64);
            }
            let mut at = offset;
            for r in covered.into_iter().filter(|r| !r.is_empty()) {
                prop_assert_eq!(r.start, at);
                at = r.end;
            }
            prop_assert_eq!(at, end);
        }
    }
}
