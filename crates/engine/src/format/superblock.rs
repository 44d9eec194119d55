//! The superblock: identifies a formatted device and fixes its geometry.

use crate::codec::{crc_of, Dec, Enc};
use crate::error::FormatError;
use crate::ids::BLOCK_SIZE;

const MAGIC: &[u8; 8] = b"TSRSUPER";
const VERSION: u16 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Random per format; every batch and slot carries it so stale structures from an earlier
    /// format of the same device are never mistaken for current ones.
    pub uuid: u128,
    pub segment_size: u64,
    pub segment_count: u32,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(BLOCK_SIZE);
        e.buf.extend_from_slice(MAGIC);
        e.u16(VERSION);
        e.u128(self.uuid);
        e.u64(self.segment_size);
        e.u32(self.segment_count);
        let crc = crc_of(&[&e.buf]);
        e.u32(crc);
        e.buf.resize(BLOCK_SIZE, 0);
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let mut d = Dec::new(b, "superblock");
        d.header(MAGIC, VERSION)?;
        let sb = Superblock { uuid: d.u128()?, segment_size: d.u64()?, segment_count: d.u32()? };
        d.crc_trailer()?;
        if sb.segment_size == 0 || !sb.segment_size.is_multiple_of(BLOCK_SIZE as u64) || sb.segment_count == 0 {
            return Err(d.invalid(format!("geometry {} x {}", sb.segment_count, sb.segment_size)));
        }
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_and_every_bit_flip_is_caught() {
        let sb = Superblock { uuid: 0x1234_5678_9abc, segment_size: 1 << 20, segment_count: 17 };
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        for byte in 0..42 {
            let mut c = b.clone();
            c[byte] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "flip at {byte}");
        }
    }
}
