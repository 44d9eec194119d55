//! Sending frames from several buffers at once: small parts (headers, encoded fields) are
//! copied together, large payloads are sent from their own buffers with vectored writes.
//! Used by the Raft transport and the data port's response writer.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Buffers at least this long are sent by reference; shorter ones are copied (an extra
/// iovec costs more than copying them).
pub const BY_REFERENCE: usize = 2048;

/// The buffers of one or more frames, in order, waiting to be written.
#[derive(Default)]
pub struct Chunks {
    small: BytesMut,
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    /// Appends bytes that are copied.
    pub fn copy(&mut self, b: &[u8]) {
        self.small.put_slice(b);
        self.len += b.len();
    }

    /// Appends a buffer: by reference if it is at least [`BY_REFERENCE`] long.
    pub fn push(&mut self, b: Bytes) {
        if b.len() < BY_REFERENCE {
            return self.copy(&b);
        }
        self.len += b.len();
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
        self.chunks.push_back(b);
    }

    /// Bytes appended since the last write.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes everything appended, with vectored writes of at most 64 buffers.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
        self.len = 0;
        while !self.chunks.is_empty() {
            let n = {
                let slices: Vec<IoSlice<'_>> = self.chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
                w.write_vectored(&slices).await
            };
            let n = match n {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                other => other,
            };
            match n {
                Ok(n) => tessera_wire::consume_chunks(&mut self.chunks, n),
                Err(e) => {
                    self.chunks.clear();
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_appended_is_written_in_order_large_buffers_by_reference() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let big = Bytes::from(vec![7u8; 100_000]);
        let mut c = Chunks::default();
        c.copy(b"head");
        c.push(big.clone());
        c.push(Bytes::from_static(b"small"));
        c.copy(b"tail");
        assert_eq!(c.len(), 4 + 100_000 + 5 + 4);
        assert!(c.chunks.iter().any(|b| b.as_ptr() == big.as_ptr()), "the large buffer itself is queued");
        let mut out = Vec::new();
        rt.block_on(c.write_to(&mut out)).unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"smalltail");
        assert_eq!(out, want);
        assert!(c.is_empty());
    }
}
