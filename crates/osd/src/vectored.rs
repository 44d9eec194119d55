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

/// Buffers in order: small ones copied together, large ones ([`BY_REFERENCE`]) kept as they
/// are. The one place that decides what is copied and what is sent by reference.
#[derive(Default)]
pub struct Parts {
    small: BytesMut,
    parts: Vec<Bytes>,
    len: usize,
}

impl Parts {
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
        self.flush_small();
        self.parts.push(b);
    }

    /// Bytes appended since the last [`Parts::take`].
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Everything appended, as buffers in order; starts empty again.
    pub fn take(&mut self) -> Vec<Bytes> {
        self.flush_small();
        self.len = 0;
        std::mem::take(&mut self.parts)
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }
}

/// Writes [`Parts`] with vectored writes of at most 64 buffers per call.
pub async fn write_parts<W: AsyncWrite + Unpin>(parts: &mut Parts, w: &mut W) -> std::io::Result<()> {
    let mut chunks: VecDeque<Bytes> = parts.take().into();
    while !chunks.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        tessera_wire::consume_chunks(&mut chunks, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_appended_is_written_in_order_large_buffers_by_reference() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let big = Bytes::from(vec![7u8; 100_000]);
        let mut c = Parts::default();
        c.copy(b"head");
        c.push(big.clone());
        c.push(Bytes::from_static(b"small"));
        c.copy(b"tail");
        assert_eq!(c.len(), 4 + 100_000 + 5 + 4);
        assert!(c.parts.iter().any(|b| b.as_ptr() == big.as_ptr()), "the large buffer itself is kept");
        let mut out = Vec::new();
        rt.block_on(write_parts(&mut c, &mut out)).unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"smalltail");
        assert_eq!(out, want);
        assert!(c.is_empty());
    }
}
