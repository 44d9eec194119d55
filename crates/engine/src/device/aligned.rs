//! A heap buffer aligned to 4096 bytes, as `O_DIRECT` requires.

use crate::ids::BLOCK_SIZE;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Zero-initialised, 4096-aligned, length a multiple of 4096 (rounded up).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes rounded up to a multiple of 4096.
    pub fn zeroed(len: usize) -> Self {
        let cap = len.div_ceil(BLOCK_SIZE).max(1) * BLOCK_SIZE;
        let layout = Layout::from_size_align(cap, BLOCK_SIZE).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len: len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE, cap }
    }

    /// Shrinks or grows the visible length within capacity (multiple of 4096); new bytes are zero
    /// only if they were never written.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap && len.is_multiple_of(BLOCK_SIZE), "AlignedBuf::set_len out of range");
        self.len = len;
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len bytes, initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BLOCK_SIZE).expect("valid layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rounds_up_and_is_aligned() {
        let b = AlignedBuf::zeroed(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % BLOCK_SIZE, 0);
        assert!(b.iter().all(|&x| x == 0));
    }
}
