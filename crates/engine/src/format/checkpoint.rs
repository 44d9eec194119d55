//! Checkpoint pointer slots and blob framing.
//!
//! A checkpoint is the whole in-memory index (objects, PG logs, metadata) encoded as one blob
//! written to free segments, then made current by writing a [`Slot`] that names those
//! segments into the older of the two slot blocks. The slot is written only after the blob is
//! synced, and the slot itself is synced before the checkpoint counts, so a crash at any point
//! leaves at least one valid slot pointing at a complete blob.

use crate::codec::{crc_of, Dec, Enc};
use crate::error::FormatError;
use crate::ids::BLOCK_SIZE;

const MAGIC: &[u8; 8] = b"TSRCKPT1";
const VERSION: u16 = 1;
const FIXED_LEN: usize = 8 + 2 + 16 + 8 + 8 + 4 + 8 + 4 + 8 + 4 + 4;
/// How many blob segments one slot can name.
pub const MAX_BLOB_SEGMENTS: usize = (BLOCK_SIZE - FIXED_LEN - 4) / 4;

/// Where the log continues after a checkpoint: segment number and byte offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPos {
    pub seg: u32,
    pub off: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub uuid: u128,
    /// Increases by one per checkpoint; the valid slot with the higher gen is current.
    pub gen: u64,
    /// Sequence number of the last batch whose effects the blob contains.
    pub seq: u64,
    /// Where batch `seq + 1` is (or will be) written.
    pub head: LogPos,
    /// The segment the log moves to when `head.seg` is full.
    pub next_seg: u32,
    pub blob_len: u64,
    pub blob_crc: u32,
    pub blob_segs: Vec<u32>,
}

impl Slot {
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.blob_segs.len() <= MAX_BLOB_SEGMENTS, "caller checks blob segment count");
        let mut e = Enc::with_capacity(BLOCK_SIZE);
        e.buf.extend_from_slice(MAGIC);
        e.u16(VERSION);
        e.u128(self.uuid);
        e.u64(self.gen);
        e.u64(self.seq);
        e.u32(self.head.seg);
        e.u64(self.head.off);
        e.u32(self.next_seg);
        e.u64(self.blob_len);
        e.u32(self.blob_crc);
        e.u32(self.blob_segs.len() as u32);
        for s in &self.blob_segs {
            e.u32(*s);
        }
        let crc = crc_of(&[&e.buf]);
        e.u32(crc);
        e.buf.resize(BLOCK_SIZE, 0);
        e.buf
    }

    /// Decodes a slot block; `uuid` is the device's, so slots of an earlier format are invalid.
    pub fn decode(b: &[u8], uuid: u128) -> Result<Self, FormatError> {
        let mut d = Dec::new(b, "checkpoint slot");
        d.header(MAGIC, VERSION)?;
        let slot_uuid = d.u128()?;
        let gen = d.u64()?;
        let seq = d.u64()?;
        let head = LogPos { seg: d.u32()?, off: d.u64()? };
        let next_seg = d.u32()?;
        let blob_len = d.u64()?;
        let blob_crc = d.u32()?;
        let n = d.count(4)?;
        if n > MAX_BLOB_SEGMENTS {
            return Err(d.invalid(format!("{n} blob segments")));
        }
        let blob_segs = (0..n).map(|_| d.u32()).collect::<Result<Vec<_>, _>>()?;
        d.crc_trailer()?;
        if slot_uuid != uuid {
            return Err(d.invalid("slot belongs to another format of this device"));
        }
        Ok(Slot { uuid, gen, seq, head, next_seg, blob_len, blob_crc, blob_segs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_and_corruption() {
        let s = Slot {
            uuid: 77,
            gen: 3,
            seq: 99,
            head: LogPos { seg: 4, off: 8192 },
            next_seg: 5,
            blob_len: 12345,
            blob_crc: 0xdead,
            blob_segs: vec![1, 2],
        };
        let b = s.encode();
        assert_eq!(Slot::decode(&b, 77).unwrap(), s);
        assert!(Slot::decode(&b, 78).is_err(), "foreign uuid");
        for byte in 0..FIXED_LEN + 8 {
            let mut c = b.clone();
            c[byte] ^= 1;
            assert!(Slot::decode(&c, 77).is_err(), "flip at {byte}");
        }
    }
}
