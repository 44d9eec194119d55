//! A batch: the unit of one group commit, written with one `write` and made durable with one
//! `fdatasync`.
//!
//! ```text
//! header blocks:  magic "TSRBATCH" | version u16 | flags u16 | header_len u32 | total_blocks u32
//!                 | seq u64 | device uuid u128 | next_seg u32 | header crc32c u32
//!                 | data block count u32 | crc32c of each data block (u32 each)
//!                 | op count u32 | ops ...            (zero padding to a 4096 multiple)
//! data blocks:    4096 bytes each, referenced by ops as ranges [start, start+n)
//! ```
//!
//! A batch is valid only if the header crc matches **and** every data block matches its crc,
//! so a torn or partially persisted batch is never replayed. User data lives only here: the
//! object index points into data blocks, it never copies them.

use crate::codec::{crc_of, Dec, Enc};
use crate::error::FormatError;
use crate::ids::{MetaScope, ObjectKey, PgId, BLOCK_SIZE};
use bytes::Bytes;

pub const MAGIC: &[u8; 8] = b"TSRBATCH";
const VERSION: u16 = 1;
/// Offset of the header crc field inside the header.
const CRC_AT: usize = 8 + 2 + 2 + 4 + 4 + 8 + 16 + 4;
pub const FIXED_LEN: usize = CRC_AT + 4;

/// Data blocks `[start, start + n)` of the batch's data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataRange {
    pub start: u32,
    pub n: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncEntry {
    pub index: u64,
    pub term: u64,
    pub meta: Bytes,
    pub data: DataRange,
}

/// A block moved by the cleaner: the data now at `new` (a data block of this batch) replaces
/// device block `old` everywhere it is referenced; `crc` is the checksum the data must have
/// (kept from the original write, so a corrupt block stays detectably corrupt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub old: u64,
    pub new: u32,
    pub crc: u32,
}

/// An operation as recorded in a batch. See [`crate::Op`] for the semantics of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    LogAppend { pg: PgId, entries: Vec<EncEntry> },
    LogTruncate { pg: PgId, from: u64 },
    LogCompact { pg: PgId, upto: u64, term: u64 },
    ApplyWrite { pg: PgId, key: ObjectKey, block: u32, entry: u64, entry_block: u32, n: u32 },
    Write { pg: PgId, key: ObjectKey, block: u32, data: DataRange },
    WriteZeroes { pg: PgId, key: ObjectKey, block: u32, n: u32 },
    Delete { pg: PgId, key: ObjectKey },
    Clone { pg: PgId, src: ObjectKey, dst: ObjectKey },
    DropPg { pg: PgId },
    MetaPut { scope: MetaScope, key: Bytes, value: Bytes },
    MetaDelete { scope: MetaScope, key: Bytes },
    Relocate { moves: Vec<Move> },
    Preserve { pg: PgId, volume: u64, object: u64, snap: u64 },
    TrimVersions { pg: PgId, volume: u64, keep: Vec<u64>, horizon: u64 },
    DropVolume { pg: PgId, volume: u64 },
    Rollback { pg: PgId, volume: u64, snap: u64, seq: u64 },
    Mark { pg: PgId, key: ObjectKey },
    Promote { pg: PgId, volume: u64, object: u64, snap: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub seq: u64,
    pub uuid: u128,
    pub next_seg: u32,
    pub header_blocks: u32,
    pub data_crcs: Vec<u32>,
    pub ops: Vec<BatchOp>,
}

impl BatchHeader {
    pub fn total_blocks(&self) -> u32 {
        self.header_blocks + self.data_crcs.len() as u32
    }
}

/// What the first header block says about a batch, before the rest is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prelude {
    pub header_len: u32,
    pub total_blocks: u32,
    pub seq: u64,
}

fn put_pg(e: &mut Enc, pg: PgId) {
    e.u32(pg.pool);
    e.u32(pg.index);
}
fn put_key(e: &mut Enc, k: &ObjectKey) {
    e.u64(k.volume);
    e.u64(k.object);
    e.u64(k.snap);
}
fn put_range(e: &mut Enc, r: DataRange) {
    e.u32(r.start);
    e.u32(r.n);
}
fn put_scope(e: &mut Enc, s: MetaScope) {
    match s {
        MetaScope::Global => e.u8(0),
        MetaScope::Pg(pg) => {
            e.u8(1);
            put_pg(e, pg)
        }
    }
}

pub(crate) fn get_pg(d: &mut Dec) -> Result<PgId, FormatError> {
    Ok(PgId { pool: d.u32()?, index: d.u32()? })
}
pub(crate) fn get_key(d: &mut Dec) -> Result<ObjectKey, FormatError> {
    Ok(ObjectKey { volume: d.u64()?, object: d.u64()?, snap: d.u64()? })
}
fn get_range(d: &mut Dec, ndata: u32) -> Result<DataRange, FormatError> {
    let r = DataRange { start: d.u32()?, n: d.u32()? };
    if r.start as u64 + r.n as u64 > ndata as u64 {
        return Err(d.invalid(format!("data range {}+{} beyond {ndata} data blocks", r.start, r.n)));
    }
    Ok(r)
}
pub(crate) fn put_scope_pub(e: &mut Enc, s: MetaScope) {
    put_scope(e, s)
}
pub(crate) fn get_scope(d: &mut Dec) -> Result<MetaScope, FormatError> {
    match d.u8()? {
        0 => Ok(MetaScope::Global),
        1 => Ok(MetaScope::Pg(get_pg(d)?)),
        t => Err(d.invalid(format!("meta scope tag {t}"))),
    }
}

fn put_op(e: &mut Enc, op: &BatchOp) {
    match op {
        BatchOp::LogAppend { pg, entries } => {
            e.u8(1);
            put_pg(e, *pg);
            e.u32(entries.len() as u32);
            for en in entries {
                e.u64(en.index);
                e.u64(en.term);
                e.bytes(&en.meta);
                put_range(e, en.data);
            }
        }
        BatchOp::LogTruncate { pg, from } => {
            e.u8(2);
            put_pg(e, *pg);
            e.u64(*from);
        }
        BatchOp::LogCompact { pg, upto, term } => {
            e.u8(3);
            put_pg(e, *pg);
            e.u64(*upto);
            e.u64(*term);
        }
        BatchOp::ApplyWrite { pg, key, block, entry, entry_block, n } => {
            e.u8(4);
            put_pg(e, *pg);
            put_key(e, key);
            e.u32(*block);
            e.u64(*entry);
            e.u32(*entry_block);
            e.u32(*n);
        }
        BatchOp::Write { pg, key, block, data } => {
            e.u8(5);
            put_pg(e, *pg);
            put_key(e, key);
            e.u32(*block);
            put_range(e, *data);
        }
        BatchOp::WriteZeroes { pg, key, block, n } => {
            e.u8(6);
            put_pg(e, *pg);
            put_key(e, key);
            e.u32(*block);
            e.u32(*n);
        }
        BatchOp::Delete { pg, key } => {
            e.u8(7);
            put_pg(e, *pg);
            put_key(e, key);
        }
        BatchOp::Clone { pg, src, dst } => {
            e.u8(8);
            put_pg(e, *pg);
            put_key(e, src);
            put_key(e, dst);
        }
        BatchOp::DropPg { pg } => {
            e.u8(9);
            put_pg(e, *pg);
        }
        BatchOp::MetaPut { scope, key, value } => {
            e.u8(10);
            put_scope(e, *scope);
            e.bytes(key);
            e.bytes(value);
        }
        BatchOp::MetaDelete { scope, key } => {
            e.u8(11);
            put_scope(e, *scope);
            e.bytes(key);
        }
        BatchOp::Preserve { pg, volume, object, snap } => {
            e.u8(13);
            put_pg(e, *pg);
            e.u64(*volume);
            e.u64(*object);
            e.u64(*snap);
        }
        BatchOp::TrimVersions { pg, volume, keep, horizon } => {
            e.u8(14);
            put_pg(e, *pg);
            e.u64(*volume);
            e.u64(*horizon);
            e.u32(keep.len() as u32);
            keep.iter().for_each(|k| e.u64(*k));
        }
        BatchOp::DropVolume { pg, volume } => {
            e.u8(15);
            put_pg(e, *pg);
            e.u64(*volume);
        }
        BatchOp::Rollback { pg, volume, snap, seq } => {
            e.u8(16);
            put_pg(e, *pg);
            e.u64(*volume);
            e.u64(*snap);
            e.u64(*seq);
        }
        BatchOp::Mark { pg, key } => {
            e.u8(17);
            put_pg(e, *pg);
            put_key(e, key);
        }
        BatchOp::Promote { pg, volume, object, snap } => {
            e.u8(18);
            put_pg(e, *pg);
            e.u64(*volume);
            e.u64(*object);
            e.u64(*snap);
        }
        BatchOp::Relocate { moves } => {
            e.u8(12);
            e.u32(moves.len() as u32);
            for m in moves {
                e.u64(m.old);
                e.u32(m.new);
                e.u32(m.crc);
            }
        }
    }
}

fn get_op(d: &mut Dec, ndata: u32) -> Result<BatchOp, FormatError> {
    Ok(match d.u8()? {
        1 => {
            let pg = get_pg(d)?;
            let n = d.count(28)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(EncEntry { index: d.u64()?, term: d.u64()?, meta: d.bytes()?, data: get_range(d, ndata)? });
            }
            BatchOp::LogAppend { pg, entries }
        }
        2 => BatchOp::LogTruncate { pg: get_pg(d)?, from: d.u64()? },
        3 => BatchOp::LogCompact { pg: get_pg(d)?, upto: d.u64()?, term: d.u64()? },
        4 => BatchOp::ApplyWrite { pg: get_pg(d)?, key: get_key(d)?, block: d.u32()?, entry: d.u64()?, entry_block: d.u32()?, n: d.u32()? },
        5 => BatchOp::Write { pg: get_pg(d)?, key: get_key(d)?, block: d.u32()?, data: get_range(d, ndata)? },
        6 => BatchOp::WriteZeroes { pg: get_pg(d)?, key: get_key(d)?, block: d.u32()?, n: d.u32()? },
        7 => BatchOp::Delete { pg: get_pg(d)?, key: get_key(d)? },
        8 => BatchOp::Clone { pg: get_pg(d)?, src: get_key(d)?, dst: get_key(d)? },
        9 => BatchOp::DropPg { pg: get_pg(d)? },
        10 => BatchOp::MetaPut { scope: get_scope(d)?, key: d.bytes()?, value: d.bytes()? },
        11 => BatchOp::MetaDelete { scope: get_scope(d)?, key: d.bytes()? },
        12 => {
            let n = d.count(16)?;
            let mut moves = Vec::with_capacity(n);
            for _ in 0..n {
                let m = Move { old: d.u64()?, new: d.u32()?, crc: d.u32()? };
                if m.new >= ndata {
                    return Err(d.invalid(format!("move target {} beyond {ndata} data blocks", m.new)));
                }
                moves.push(m);
            }
            BatchOp::Relocate { moves }
        }
        13 => BatchOp::Preserve { pg: get_pg(d)?, volume: d.u64()?, object: d.u64()?, snap: d.u64()? },
        14 => {
            let (pg, volume, horizon) = (get_pg(d)?, d.u64()?, d.u64()?);
            let n = d.count(8)?;
            let keep = (0..n).map(|_| d.u64()).collect::<Result<Vec<_>, _>>()?;
            BatchOp::TrimVersions { pg, volume, keep, horizon }
        }
        15 => BatchOp::DropVolume { pg: get_pg(d)?, volume: d.u64()? },
        16 => BatchOp::Rollback { pg: get_pg(d)?, volume: d.u64()?, snap: d.u64()?, seq: d.u64()? },
        17 => BatchOp::Mark { pg: get_pg(d)?, key: get_key(d)? },
        18 => BatchOp::Promote { pg: get_pg(d)?, volume: d.u64()?, object: d.u64()?, snap: d.u64()? },
        t => return Err(d.invalid(format!("op tag {t}"))),
    })
}

/// Encodes the header (unpadded). `header_len` and `total_blocks` are filled in here.
pub fn encode_header(seq: u64, uuid: u128, next_seg: u32, data_crcs: &[u32], ops: &[BatchOp]) -> Vec<u8> {
    let mut e = Enc::with_capacity(BLOCK_SIZE);
    e.buf.extend_from_slice(MAGIC);
    e.u16(VERSION);
    e.u16(0);
    e.u32(0); // header_len, patched below
    e.u32(0); // total_blocks, patched below
    e.u64(seq);
    e.u128(uuid);
    e.u32(next_seg);
    e.u32(0); // crc, patched below
    e.u32(data_crcs.len() as u32);
    for c in data_crcs {
        e.u32(*c);
    }
    e.u32(ops.len() as u32);
    for op in ops {
        put_op(&mut e, op);
    }
    let len = e.buf.len();
    let header_blocks = len.div_ceil(BLOCK_SIZE);
    let total = (header_blocks + data_crcs.len()) as u32;
    e.buf[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    e.buf[16..20].copy_from_slice(&total.to_le_bytes());
    let crc = crc_of(&[&e.buf]);
    e.buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    e.buf
}

/// Parses the fixed part from the first header block and checks magic, version and device.
pub fn decode_prelude(first: &[u8], uuid: u128) -> Result<Prelude, FormatError> {
    let mut d = Dec::new(first, "batch header");
    d.header(MAGIC, VERSION)?;
    let _flags = d.u16()?;
    let header_len = d.u32()?;
    let total_blocks = d.u32()?;
    let seq = d.u64()?;
    if d.u128()? != uuid {
        return Err(d.invalid("batch belongs to another format of this device"));
    }
    if (header_len as usize) < FIXED_LEN || (header_len as u64).div_ceil(BLOCK_SIZE as u64) > total_blocks as u64 {
        return Err(d.invalid(format!("header_len {header_len} with {total_blocks} blocks")));
    }
    Ok(Prelude { header_len, total_blocks, seq })
}

/// Decodes a whole header (at least `header_len` bytes) and checks its crc and internal
/// consistency. Data block crcs are checked by the caller against the data it read.
pub fn decode_header(b: &[u8], uuid: u128) -> Result<BatchHeader, FormatError> {
    let pre = decode_prelude(b, uuid)?;
    let len = pre.header_len as usize;
    if b.len() < len {
        return Err(FormatError::Truncated { what: "batch header", need: len, at: 0, have: b.len() });
    }
    let h = &b[..len];
    let stored = u32::from_le_bytes(h[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    let computed = crc_of(&[&h[..CRC_AT], &[0; 4], &h[CRC_AT + 4..]]);
    if stored != computed {
        return Err(FormatError::BadCrc { what: "batch header", stored, computed });
    }
    let mut d = Dec::new(h, "batch header");
    d.take(FIXED_LEN)?;
    let ndata = d.count(4)?;
    let header_blocks = len.div_ceil(BLOCK_SIZE) as u32;
    if header_blocks as u64 + ndata as u64 != pre.total_blocks as u64 {
        return Err(d.invalid(format!("{header_blocks} header + {ndata} data != {} blocks", pre.total_blocks)));
    }
    let data_crcs = (0..ndata).map(|_| d.u32()).collect::<Result<Vec<_>, _>>()?;
    let nops = d.count(1)?;
    let mut ops = Vec::with_capacity(nops);
    for _ in 0..nops {
        ops.push(get_op(&mut d, ndata as u32)?);
    }
    d.finish()?;
    let next_seg = u32::from_le_bytes(h[CRC_AT - 4..CRC_AT].try_into().expect("4 bytes"));
    Ok(BatchHeader { seq: pre.seq, uuid, next_seg, header_blocks, data_crcs, ops })
}

/// Encoded size of `ops` inside a header (independent of where their data lands).
pub fn ops_encoded_len(ops: &[BatchOp]) -> usize {
    let mut e = Enc::default();
    ops.iter().for_each(|op| put_op(&mut e, op));
    e.buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_ops() -> Vec<BatchOp> {
        let pg = PgId::new(1, 2);
        let key = ObjectKey::head(3, 4);
        vec![
            BatchOp::LogAppend {
                pg,
                entries: vec![EncEntry { index: 5, term: 1, meta: Bytes::from_static(b"m"), data: DataRange { start: 0, n: 1 } }],
            },
            BatchOp::LogTruncate { pg, from: 6 },
            BatchOp::LogCompact { pg, upto: 2, term: 1 },
            BatchOp::ApplyWrite { pg, key, block: 9, entry: 5, entry_block: 0, n: 1 },
            BatchOp::Write { pg, key, block: 1, data: DataRange { start: 1, n: 1 } },
            BatchOp::WriteZeroes { pg, key, block: 0, n: 3 },
            BatchOp::Delete { pg, key },
            BatchOp::Clone { pg, src: key, dst: ObjectKey::at_snap(3, 4, 1) },
            BatchOp::DropPg { pg },
            BatchOp::MetaPut { scope: MetaScope::Pg(pg), key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") },
            BatchOp::MetaDelete { scope: MetaScope::Global, key: Bytes::from_static(b"k") },
            BatchOp::Relocate { moves: vec![Move { old: 77, new: 1, crc: 5 }] },
            BatchOp::Preserve { pg, volume: 3, object: 4, snap: 9 },
            BatchOp::TrimVersions { pg, volume: 3, keep: vec![1, 5], horizon: 9 },
            BatchOp::DropVolume { pg, volume: 3 },
            BatchOp::Rollback { pg, volume: 3, snap: 5, seq: 9 },
            BatchOp::Mark { pg, key: ObjectKey::at_snap(3, 4, 9) },
            BatchOp::Promote { pg, volume: 3, object: 4, snap: 9 },
        ]
    }

    #[test]
    fn round_trip_every_op() {
        let ops = sample_ops();
        let h = encode_header(42, 9, 3, &[1, 2], &ops);
        let d = decode_header(&h, 9).unwrap();
        assert_eq!((d.seq, d.next_seg, d.header_blocks, d.total_blocks()), (42, 3, 1, 3));
        assert_eq!(d.data_crcs, vec![1, 2]);
        assert_eq!(d.ops, ops);
    }

    #[test]
    fn every_single_bit_flip_in_the_header_is_rejected() {
        let h = encode_header(42, 9, 3, &[1, 2], &sample_ops());
        for byte in 0..h.len() {
            let mut c = h.clone();
            c[byte] ^= 0x04;
            assert!(decode_header(&c, 9).is_err(), "flip at byte {byte}");
        }
    }

    #[test]
    fn data_range_beyond_batch_is_rejected() {
        let ops = vec![BatchOp::Write { pg: PgId::new(0, 0), key: ObjectKey::head(0, 0), block: 0, data: DataRange { start: 1, n: 1 } }];
        let h = encode_header(1, 9, 0, &[7], &ops);
        assert!(matches!(decode_header(&h, 9), Err(FormatError::Invalid { .. })));
    }
}
