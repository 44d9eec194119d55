//! Little-endian encoding primitives. The decoder is bounds-checked everywhere: garbage input
//! yields a [`FormatError`], never a panic or an allocation larger than the input.

use crate::error::FormatError;
use bytes::Bytes;

#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n) }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v)
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes())
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes())
    }
    pub fn u128(&mut self, v: u128) {
        self.buf.extend_from_slice(&v.to_le_bytes())
    }
    /// A u32 length prefix, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
}

pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated { what: self.what, need: n, at: self.pos, have: self.remaining() });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    pub fn u128(&mut self) -> Result<u128, FormatError> {
        Ok(u128::from_le_bytes(self.arr()?))
    }
    pub fn bytes(&mut self) -> Result<Bytes, FormatError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    /// A count of items that each occupy at least `min_item_bytes`; rejects counts the
    /// remaining input cannot possibly hold, so garbage cannot trigger huge allocations.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, FormatError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(self.invalid(format!("count {n} exceeds remaining {} bytes", self.remaining())));
        }
        Ok(n)
    }
    /// Consumes an 8-byte magic and a u16 version; both must match.
    pub fn header(&mut self, magic: &[u8; 8], version: u16) -> Result<(), FormatError> {
        if self.take(8)? != magic {
            return Err(FormatError::BadMagic { what: self.what });
        }
        match self.u16()? {
            v if v == version => Ok(()),
            v => Err(FormatError::BadVersion { what: self.what, version: v }),
        }
    }

    /// Like [`Dec::header`], accepting any of `versions`; returns the one found.
    pub fn header_any(&mut self, magic: &[u8; 8], versions: &[u16]) -> Result<u16, FormatError> {
        if self.take(8)? != magic {
            return Err(FormatError::BadMagic { what: self.what });
        }
        match self.u16()? {
            v if versions.contains(&v) => Ok(v),
            v => Err(FormatError::BadVersion { what: self.what, version: v }),
        }
    }

    /// Consumes a u32 CRC32C that must match everything before it.
    pub fn crc_trailer(&mut self) -> Result<(), FormatError> {
        let body = self.pos;
        let stored = self.u32()?;
        let computed = crc_of(&[&self.buf[..body]]);
        if stored != computed {
            return Err(FormatError::BadCrc { what: self.what, stored, computed });
        }
        Ok(())
    }

    pub fn invalid(&self, why: impl Into<String>) -> FormatError {
        FormatError::Invalid { what: self.what, why: why.into() }
    }
    pub fn finish(&self) -> Result<(), FormatError> {
        if self.remaining() != 0 {
            return Err(self.invalid(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// CRC32C over `parts` in order.
pub fn crc_of(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_and_truncation() {
        let mut e = Enc::default();
        e.u8(1);
        e.u16(2);
        e.u32(3);
        e.u64(4);
        e.u128(5);
        e.bytes(b"hello");
        let mut d = Dec::new(&e.buf, "test");
        assert_eq!((d.u8().unwrap(), d.u16().unwrap(), d.u32().unwrap()), (1, 2, 3));
        assert_eq!((d.u64().unwrap(), d.u128().unwrap()), (4, 5));
        assert_eq!(&d.bytes().unwrap()[..], b"hello");
        d.finish().unwrap();
        for cut in 0..e.buf.len() {
            let mut d = Dec::new(&e.buf[..cut], "test");
            let r = (|| -> Result<(), FormatError> {
                d.u8()?;
                d.u16()?;
                d.u32()?;
                d.u64()?;
                d.u128()?;
                d.bytes()?;
                Ok(())
            })();
            assert!(r.is_err(), "cut at {cut} must fail");
        }
    }
    #[test]
    fn huge_count_is_rejected_without_allocating() {
        let mut d = Dec::new(&[0xff, 0xff, 0xff, 0xff, 0], "test");
        assert!(d.count(1).is_err());
    }
}
