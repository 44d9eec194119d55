//! The state-machine command carried in a Raft entry's data.
//!
//! Layout: `hdr_len u16 LE, header (hdr_len bytes), payload`. The payload (write data, a
//! multiple of 4096 bytes) comes last so the engine can store it as the entry's data blocks
//! and later point the object at them ([`tessera_engine::Op::ApplyWrite`]) without copying.
//! Entries whose data is not a command (Raft's empty leader entries, configuration changes)
//! are stored whole in the entry's metadata.

use bytes::{Buf, BufMut, Bytes};
use tessera_engine::{ObjectKey, BLOCK_SIZE};
use tessera_wire::OpCode;

/// Version 3 added the write payload's block checksums (`count u32`, then one CRC32C per
/// 4 KiB block: the client's end-to-end checksums, see [`Command::encode`]); version 2 added
/// `snapc`. Older entries (still in logs written before) decode with `snapc = 0` and no
/// checksums.
const VERSION: u8 = 3;
const VERSION_2: u8 = 2;
const VERSION_1: u8 = 1;
const HEADER_LEN_2: usize = 2 + 8 * 9;
const HEADER_LEN_1: usize = 2 + 8 * 8;
/// Largest write payload a command carries (a frame's data limit), in blocks.
const MAX_BLOCKS: usize = (tessera_wire::msg::MAX_DATA as usize) / BLOCK_SIZE;
/// Largest header [`split_point`] takes for a command's: version 3 with a checksum per block
/// of the largest payload.
const MAX_HEADER: usize = HEADER_LEN_2 + 4 + 4 * MAX_BLOCKS;

/// One replicated write-class operation on one object of the PG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    pub op: OpCode,
    pub key: ObjectKey,
    pub offset: u64,
    pub len: u64,
    /// Deduplication id: `(client, seq)` is applied at most once; `floor` lets the PG forget
    /// the client's pairs below it.
    pub client: u64,
    pub seq: u64,
    pub floor: u64,
    /// Snapshot context (see [`tessera_wire::Request::snapc`]).
    pub snapc: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed command in raft entry: {0}")]
pub struct CmdError(pub String);

impl Command {
    /// The entry data for this command with `payload` (write data for `Write`, the keep
    /// list for `TrimVersions`, else empty) and `crcs`: for a `Write`, the CRC32C of each
    /// 4 KiB block of `payload` as its client computed them (checked on the way in; every
    /// replica's engine checks the payload against them again and stores them), else empty.
    pub fn encode(&self, payload: &[u8], crcs: impl ExactSizeIterator<Item = u32>) -> Vec<u8> {
        let header_len = HEADER_LEN_2 + 4 + 4 * crcs.len();
        let mut b = Vec::with_capacity(2 + header_len + payload.len());
        b.put_u16_le(header_len as u16);
        b.put_u8(VERSION);
        b.put_u8(self.op as u8);
        for v in [self.key.volume, self.key.object, self.key.snap, self.offset, self.len, self.client, self.seq, self.floor, self.snapc] {
            b.put_u64_le(v);
        }
        b.put_u32_le(crcs.len() as u32);
        crcs.for_each(|c| b.put_u32_le(c));
        b.put_slice(payload);
        b
    }

    /// Decodes entry data into the command and its payload (a zero-copy slice of `data`).
    pub fn decode(data: &Bytes) -> Result<(Command, Bytes), CmdError> {
        Self::decode_with_crcs(data).map(|(c, p, _)| (c, p))
    }

    /// [`Command::decode`], also returning the payload's block checksums (empty for
    /// commands without data and for entries written before version 3).
    pub fn decode_with_crcs(data: &Bytes) -> Result<(Command, Bytes, Vec<u32>), CmdError> {
        let start = header_end(data).ok_or_else(|| CmdError(format!("{} bytes, no valid header", data.len())))?;
        let mut h = &data[2..start];
        let version = if h.is_empty() { 0 } else { h.get_u8() };
        let needed = match version {
            VERSION | VERSION_2 => HEADER_LEN_2,
            VERSION_1 => HEADER_LEN_1,
            _ => return Err(CmdError("unknown command version".into())),
        };
        if h.len() + 1 < needed {
            return Err(CmdError(format!("command header of {} bytes", h.len() + 1)));
        }
        let op = match h.get_u8() {
            2 => OpCode::Write,
            3 => OpCode::WriteZeroes,
            4 => OpCode::Delete,
            7 => OpCode::TrimVersions,
            8 => OpCode::DropVolume,
            9 => OpCode::Rollback,
            11 => OpCode::Promote,
            14 => OpCode::SnapSeq,
            v => return Err(CmdError(format!("unknown op {v}"))),
        };
        let mut n = || h.get_u64_le();
        let key = ObjectKey { volume: n(), object: n(), snap: n() };
        let mut cmd = Command { op, key, offset: n(), len: n(), client: n(), seq: n(), floor: n(), snapc: 0 };
        if version >= VERSION_2 {
            cmd.snapc = n();
        }
        let payload = data.slice(start..);
        let mut crcs = Vec::new();
        if version == VERSION {
            if h.len() < 4 {
                return Err(CmdError("command header without its checksum count".into()));
            }
            let count = h.get_u32_le() as usize;
            if h.len() != 4 * count {
                return Err(CmdError(format!("{count} checksums in {} header bytes", h.len())));
            }
            if count != 0 && (op != OpCode::Write || count != payload.len() / BLOCK_SIZE) {
                return Err(CmdError(format!("{count} checksums for a {op:?} of {} payload bytes", payload.len())));
            }
            crcs = (0..count).map(|_| h.get_u32_le()).collect();
        }
        if op == OpCode::Write && payload.len() as u64 != cmd.len {
            return Err(CmdError(format!("write of {} bytes carries {} bytes", cmd.len, payload.len())));
        }
        if op == OpCode::TrimVersions {
            tessera_wire::decode_keep(&payload).map_err(|e| CmdError(e.to_string()))?;
        }
        Ok((cmd, payload, crcs))
    }
}

fn header_end(data: &[u8]) -> Option<usize> {
    if data.len() < 2 {
        return None;
    }
    let end = 2 + u16::from_le_bytes([data[0], data[1]]) as usize;
    (end <= data.len()).then_some(end)
}

/// Where the block-aligned payload of entry data starts: the engine stores `data[..split]`
/// in the entry's metadata and `data[split..]` as data blocks. Data that is not a command
/// with a whole-block payload is stored entirely as metadata (`split == data.len()`).
pub fn split_point(data: &[u8]) -> usize {
    match header_end(data) {
        Some(end) if data.len() > end && (data.len() - end).is_multiple_of(BLOCK_SIZE) && end <= MAX_HEADER => end,
        _ => data.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn write_round_trips_and_splits_at_the_payload() {
        let cmd =
            Command { op: OpCode::Write, key: ObjectKey::head(1, 2), offset: 4096, len: 8192, client: 9, seq: 10, floor: 3, snapc: 4 };
        let data = Bytes::from(cmd.encode(&[7u8; 8192], [5, 6].into_iter()));
        let (back, payload, crcs) = Command::decode_with_crcs(&data).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(payload.len(), 8192);
        assert_eq!(crcs, vec![5, 6]);
        assert_eq!(split_point(&data), data.len() - 8192);
        let zero = Command { op: OpCode::WriteZeroes, len: 4096, ..cmd };
        let data = zero.encode(&[], std::iter::empty());
        assert_eq!(split_point(&data), data.len());
        assert_eq!(split_point(b""), 0);
    }

    #[test]
    fn write_with_wrong_payload_length_is_rejected() {
        let cmd = Command { op: OpCode::Write, key: ObjectKey::head(1, 2), offset: 0, len: 4096, client: 1, seq: 1, floor: 0, snapc: 0 };
        assert!(Command::decode(&Bytes::from(cmd.encode(&[0u8; 8192], std::iter::empty()))).is_err());
    }

    #[test]
    fn checksums_must_be_one_per_payload_block_of_a_write() {
        let cmd = Command { op: OpCode::Write, key: ObjectKey::head(1, 2), offset: 0, len: 8192, client: 1, seq: 1, floor: 0, snapc: 0 };
        assert!(Command::decode(&Bytes::from(cmd.encode(&[0u8; 8192], [1].into_iter()))).is_err());
        assert!(Command::decode(&Bytes::from(cmd.encode(&[0u8; 8192], [1, 2, 3].into_iter()))).is_err());
        let (_, _, none) = Command::decode_with_crcs(&Bytes::from(cmd.encode(&[0u8; 8192], std::iter::empty()))).unwrap();
        assert!(none.is_empty(), "a write without checksums has the engine compute them");
        let zero = Command { op: OpCode::WriteZeroes, ..cmd };
        assert!(Command::decode(&Bytes::from(zero.encode(&[], [1, 2].into_iter()))).is_err());
    }

    /// A 4 KiB write command as an older version encoded it: `fields` after the op byte.
    fn legacy_write(version: u8, header_len: usize, fields: &[u64]) -> Bytes {
        let mut b = Vec::new();
        b.put_u16_le(header_len as u16);
        b.put_u8(version);
        b.put_u8(OpCode::Write as u8);
        fields.iter().for_each(|v| b.put_u64_le(*v));
        b.put_slice(&[5u8; 4096]);
        Bytes::from(b)
    }

    #[test]
    fn version_2_entries_still_decode_with_no_checksums() {
        let cmd = Command { op: OpCode::Write, key: ObjectKey::head(1, 2), offset: 0, len: 4096, client: 9, seq: 10, floor: 3, snapc: 4 };
        let v2 = legacy_write(VERSION_2, HEADER_LEN_2, &[1, 2, tessera_engine::SNAP_HEAD, 0, 4096, 9, 10, 3, 4]);
        assert_eq!(Command::decode_with_crcs(&v2).unwrap(), (cmd, v2.slice(v2.len() - 4096..), vec![]));
        assert_eq!(split_point(&v2), v2.len() - 4096);
    }

    #[test]
    fn version_1_entries_still_decode_with_no_snapshot_context() {
        let cmd = Command { op: OpCode::Write, key: ObjectKey::head(1, 2), offset: 0, len: 4096, client: 9, seq: 10, floor: 3, snapc: 0 };
        let v1 = legacy_write(VERSION_1, HEADER_LEN_1, &[1, 2, SNAP_HEAD_V1, 0, 4096, 9, 10, 3]);
        let (back, payload) = Command::decode(&v1).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(payload.len(), 4096);
    }
    const SNAP_HEAD_V1: u64 = u64::MAX;

    proptest! {
        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let data = Bytes::from(data);
            let _ = Command::decode(&data);
            prop_assert!(split_point(&data) <= data.len());
        }
    }
}
