//! The public write API: a [`Txn`] is a list of [`Op`]s committed atomically (all or none
//! survive a crash) and acknowledged only after they are durable.

use crate::error::{EngineError, Result};
use crate::format::batch::{BatchOp, DataRange, EncEntry};
use crate::ids::{MetaScope, ObjectKey, PgId, BLOCK, BLOCK_SIZE};
use bytes::Bytes;

/// One Raft log entry as the engine stores it: `meta` is the opaque command header (kept in
/// memory and in the batch header), `data` a multiple of 4096 bytes stored as data blocks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub meta: Bytes,
    pub data: Bytes,
    /// The CRC32C of each 4 KiB block of `data` as it came from its writer (the end-to-end
    /// checksums a client computed once), or empty to have the engine compute them. When
    /// given, the engine checks every block against its value before anything of the
    /// transaction is written (one pass, as computing would be) and refuses the whole
    /// transaction with [`EngineError::PayloadChecksum`] if one differs; the values are
    /// then stored as the blocks' checksums, so later reads verify the writer's own.
    /// [`crate::Engine::log_entries`] returns the stored ones.
    pub crcs: Vec<u32>,
}

/// One operation. Offsets and lengths are bytes and must be multiples of 4096.
#[derive(Clone, Debug)]
pub enum Op {
    /// Appends `entries` (consecutive indexes) to the PG's log, first removing every entry at
    /// or after the first new index (Raft's conflict rule). The first index must be in
    /// `compacted + 1 ..= last + 1`.
    LogAppend {
        pg: PgId,
        entries: Vec<LogEntry>,
    },
    /// Removes every entry with index `>= from` (`from` must be above the compacted index).
    LogTruncate {
        pg: PgId,
        from: u64,
    },
    /// Discards entries `<= upto` and records `(upto, term)` as the compaction point; `upto`
    /// may lie beyond the last entry (after a snapshot install the log restarts at upto+1).
    LogCompact {
        pg: PgId,
        upto: u64,
        term: u64,
    },
    /// Makes `len` bytes of object `key` at `offset` refer to log entry `entry`'s data starting
    /// at `entry_offset`. No data is copied: this is how a Raft apply writes user data once.
    ApplyWrite {
        pg: PgId,
        key: ObjectKey,
        offset: u64,
        entry: u64,
        entry_offset: u64,
        len: u64,
    },
    /// Writes `data` into object `key` at `offset` (creating the object).
    Write {
        pg: PgId,
        key: ObjectKey,
        offset: u64,
        data: Bytes,
    },
    /// Makes the range read as zeros and frees its space (trim and write-zeroes alike);
    /// creates the object if absent.
    WriteZeroes {
        pg: PgId,
        key: ObjectKey,
        offset: u64,
        len: u64,
    },
    /// Removes the object and frees its blocks not shared with clones. Absent: no-op.
    Delete {
        pg: PgId,
        key: ObjectKey,
    },
    /// Makes `dst` an exact copy of `src` by sharing its blocks (no data copied); later writes
    /// to either go to new blocks. If `src` is absent, `dst` is removed.
    Clone {
        pg: PgId,
        src: ObjectKey,
        dst: ObjectKey,
    },
    /// Copy-on-write before a change of the head of `(volume, object)` made under snapshot
    /// context `snap` (the volume's newest live snapshot id; 0 = none): freezes the head as
    /// version `snap` (a marker when there is no head) unless a version `>= snap` exists.
    /// Shares blocks, copies no data. See `state/versions.rs`.
    Preserve {
        pg: PgId,
        volume: u64,
        object: u64,
        snap: u64,
    },
    /// Removes every frozen version of the volume's objects that no snapshot id in `keep`
    /// reads (after snapshots were deleted). Versions with an id `>= horizon` are always
    /// kept: `keep` was read when the next snapshot id was `horizon`, so newer snapshots
    /// are not in it.
    TrimVersions {
        pg: PgId,
        volume: u64,
        keep: Vec<u64>,
        horizon: u64,
    },
    /// Removes every version of every object of the volume in this PG.
    DropVolume {
        pg: PgId,
        volume: u64,
    },
    /// Makes every head of the volume a copy of what snapshot `snap` reads, after preserving
    /// the heads under the volume's current context `seq`.
    Rollback {
        pg: PgId,
        volume: u64,
        snap: u64,
        seq: u64,
    },
    /// If the head of `(volume, object)` is absent, makes its staging copy
    /// ([`crate::SNAP_STAGING`]) the head, after preserving under `snap`; else drops the
    /// staging copy. A clone's atomic copy-up of its parent's data.
    Promote {
        pg: PgId,
        volume: u64,
        object: u64,
        snap: u64,
    },
    /// Records that frozen version `key` is "absent" (copying a PG to a new replica).
    Mark {
        pg: PgId,
        key: ObjectKey,
    },
    /// Removes everything of the PG: objects, log and its `MetaScope::Pg` metadata.
    DropPg {
        pg: PgId,
    },
    MetaPut {
        scope: MetaScope,
        key: Bytes,
        value: Bytes,
    },
    MetaDelete {
        scope: MetaScope,
        key: Bytes,
    },
}

/// An atomic group of operations.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub ops: Vec<Op>,
    /// Called back once written and applied, without waiting for an `fdatasync` of its own
    /// (see [`Txn::unsynced`]).
    pub unsynced: bool,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    /// Marks the transaction as one whose loss in a crash the caller can redo (an OSD's
    /// applies, replayed from its Raft log): it is called back once its batch is written and
    /// applied to the in-memory state (so reads see it), before any `fdatasync`. It becomes
    /// durable with the next synced batch, since every sync covers every batch written
    /// before it; a crash before that loses it whole (the batch fails its header checksum or
    /// is missing, and recovery ends the log there). Only honoured for transactions without
    /// data blocks: one with data is synced as usual, so recovery's rule that a batch
    /// followed by another was synced stays true for every batch holding data.
    pub fn unsynced(mut self) -> Self {
        self.unsynced = true;
        self
    }
    pub fn with(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
    pub fn push(&mut self, op: Op) {
        self.ops.push(op)
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A transaction checked for static validity and encoded for a batch: data ranges are
/// relative to the transaction's own data, checksums are computed by the submitting thread.
pub(crate) struct PreparedTxn {
    pub ops: Vec<BatchOp>,
    pub data: Vec<Bytes>,
    pub crcs: Vec<u32>,
    /// Encoded size of `ops` in a batch header.
    pub ops_len: usize,
    /// The batch holding it needs no `fdatasync` for it ([`Txn::unsynced`], no data).
    pub unsynced: bool,
}

impl PreparedTxn {
    pub fn data_blocks(&self) -> u32 {
        self.crcs.len() as u32
    }
}

fn to_block(pg: PgId, what: &'static str, offset: u64, len: u64) -> Result<(u32, u32)> {
    if !offset.is_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
        return Err(EngineError::Unaligned { what, offset, len });
    }
    let (b, n) = (offset / BLOCK, len / BLOCK);
    if b + n > u32::MAX as u64 {
        return Err(EngineError::Invalid { pg, why: format!("{what} range {offset}+{len} beyond 16 TiB object limit") });
    }
    Ok((b as u32, n as u32))
}

struct DataSink {
    data: Vec<Bytes>,
    crcs: Vec<u32>,
}

impl DataSink {
    /// Adds `bytes` whose blocks must match `given` (see [`LogEntry::crcs`]).
    fn add_checked(&mut self, pg: PgId, index: u64, bytes: &Bytes, given: &[u32]) -> Result<DataRange> {
        if given.len() != bytes.len() / BLOCK_SIZE {
            return Err(EngineError::Invalid {
                pg,
                why: format!("log entry {index}: {} checksums for {} blocks", given.len(), bytes.len() / BLOCK_SIZE),
            });
        }
        let start = self.crcs.len() as u32;
        for (block, (data, want)) in bytes.chunks(BLOCK_SIZE).zip(given).enumerate() {
            let got = crc32c::crc32c(data);
            if got != *want {
                self.crcs.truncate(start as usize);
                return Err(EngineError::PayloadChecksum { pg, index, block: block as u32, stored: *want, computed: got });
            }
            self.crcs.push(got);
        }
        if !bytes.is_empty() {
            self.data.push(bytes.clone());
        }
        Ok(DataRange { start, n: self.crcs.len() as u32 - start })
    }

    fn add(&mut self, bytes: &Bytes) -> DataRange {
        let start = self.crcs.len() as u32;
        for block in bytes.chunks(BLOCK_SIZE) {
            self.crcs.push(crc32c::crc32c(block));
        }
        if !bytes.is_empty() {
            self.data.push(bytes.clone());
        }
        DataRange { start, n: self.crcs.len() as u32 - start }
    }
}

/// Checks everything that does not depend on engine state and computes data checksums.
pub(crate) fn prepare(txn: Txn) -> Result<PreparedTxn> {
    let mut sink = DataSink { data: Vec::new(), crcs: Vec::new() };
    let mut ops = Vec::with_capacity(txn.ops.len());
    for op in txn.ops {
        ops.push(match op {
            Op::LogAppend { pg, entries } => {
                let Some(first) = entries.first() else {
                    return Err(EngineError::Invalid { pg, why: "log append with no entries".into() });
                };
                if first.index == 0 {
                    return Err(EngineError::Invalid { pg, why: "log index 0 is reserved".into() });
                }
                let mut enc = Vec::with_capacity(entries.len());
                for (i, e) in entries.iter().enumerate() {
                    if e.index != first.index + i as u64 {
                        return Err(EngineError::Invalid { pg, why: format!("log entries not consecutive at index {}", e.index) });
                    }
                    if e.data.len() % BLOCK_SIZE != 0 {
                        return Err(EngineError::Unaligned { what: "log entry data", offset: 0, len: e.data.len() as u64 });
                    }
                    if e.meta.len() > u16::MAX as usize {
                        return Err(EngineError::Invalid { pg, why: format!("log entry meta of {} bytes (max 65535)", e.meta.len()) });
                    }
                    let data = if e.crcs.is_empty() { sink.add(&e.data) } else { sink.add_checked(pg, e.index, &e.data, &e.crcs)? };
                    enc.push(EncEntry { index: e.index, term: e.term, meta: e.meta.clone(), data });
                }
                BatchOp::LogAppend { pg, entries: enc }
            }
            Op::LogTruncate { pg, from } => BatchOp::LogTruncate { pg, from },
            Op::LogCompact { pg, upto, term } => BatchOp::LogCompact { pg, upto, term },
            Op::ApplyWrite { pg, key, offset, entry, entry_offset, len } => {
                let (block, n) = to_block(pg, "apply", offset, len)?;
                let (entry_block, _) = to_block(pg, "apply entry", entry_offset, len)?;
                BatchOp::ApplyWrite { pg, key, block, entry, entry_block, n }
            }
            Op::Write { pg, key, offset, data } => {
                let (block, _) = to_block(pg, "write", offset, data.len() as u64)?;
                BatchOp::Write { pg, key, block, data: sink.add(&data) }
            }
            Op::WriteZeroes { pg, key, offset, len } => {
                let (block, n) = to_block(pg, "write-zeroes", offset, len)?;
                BatchOp::WriteZeroes { pg, key, block, n }
            }
            Op::Delete { pg, key } => BatchOp::Delete { pg, key },
            Op::Clone { pg, src, dst } => BatchOp::Clone { pg, src, dst },
            Op::DropPg { pg } => BatchOp::DropPg { pg },
            Op::Preserve { pg, volume, object, snap } => BatchOp::Preserve { pg, volume, object, snap },
            Op::TrimVersions { pg, volume, keep, horizon } => BatchOp::TrimVersions { pg, volume, keep, horizon },
            Op::DropVolume { pg, volume } => BatchOp::DropVolume { pg, volume },
            Op::Rollback { pg, volume, snap, seq } => BatchOp::Rollback { pg, volume, snap, seq },
            Op::Mark { pg, key } => BatchOp::Mark { pg, key },
            Op::Promote { pg, volume, object, snap } => BatchOp::Promote { pg, volume, object, snap },
            Op::MetaPut { scope, key, value } => BatchOp::MetaPut { scope, key, value },
            Op::MetaDelete { scope, key } => BatchOp::MetaDelete { scope, key },
        });
    }
    let ops_len = crate::format::batch::ops_encoded_len(&ops);
    let unsynced = txn.unsynced && sink.crcs.is_empty();
    Ok(PreparedTxn { ops, data: sink.data, crcs: sink.crcs, ops_len, unsynced })
}

/// Shifts the op's data ranges by `base` blocks (its position in the batch's data area).
pub(crate) fn rebase(op: &mut BatchOp, base: u32) {
    match op {
        BatchOp::LogAppend { entries, .. } => entries.iter_mut().for_each(|e| e.data.start += base),
        BatchOp::Write { data, .. } => data.start += base,
        _ => {}
    }
}
