//! The engine's in-memory state: object index, per-PG logs, metadata and block reference
//! counts. Sans-IO and deterministic: replaying the same batches from the same checkpoint
//! yields the same state, which is what crash recovery relies on. It only ever describes
//! durable batches: the committer applies a batch after its fsync returned.

mod apply;
mod codec;
mod validate;
mod versions;

pub use versions::{Resolved, VolumeUsage};

#[cfg(test)]
mod tests;

pub(crate) use validate::Overlay;

use crate::ids::{MetaScope, ObjectKey, PgId};
use crate::segments::Geometry;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Where one 4 KiB block lives and the checksum its contents must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub phys: u64,
    pub crc: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Object {
    pub blocks: BTreeMap<u32, BlockRef>,
}

impl Object {
    /// References of `n` blocks from `block`; `None` where unallocated.
    pub(crate) fn refs(&self, block: u32, n: u32) -> Vec<Option<BlockRef>> {
        let mut out = vec![None; n as usize];
        for (b, r) in self.blocks.range(block..block.saturating_add(n)) {
            out[(b - block) as usize] = Some(*r);
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub term: u64,
    pub meta: Bytes,
    pub data: Vec<BlockRef>,
}

/// Entries `compacted + 1 ..= compacted + entries.len()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PgLog {
    pub compacted: u64,
    pub compacted_term: u64,
    pub entries: VecDeque<Entry>,
}

impl PgLog {
    pub fn last(&self) -> u64 {
        self.compacted + self.entries.len() as u64
    }
    pub fn get(&self, index: u64) -> Option<&Entry> {
        if index <= self.compacted {
            return None;
        }
        self.entries.get((index - self.compacted - 1) as usize)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pg {
    pub objects: BTreeMap<ObjectKey, Object>,
    /// Frozen versions recording "this object did not exist at that snapshot" (see
    /// `versions.rs`); never heads, never also in `objects`.
    pub markers: BTreeSet<ObjectKey>,
    pub log: PgLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RefInfo {
    pub count: u32,
    pub crc: u32,
}

/// Reference counts per device block, and live blocks per segment derived from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refs {
    pub geo: Geometry,
    pub map: HashMap<u64, RefInfo>,
    pub seg_live: Vec<u32>,
}

impl Refs {
    pub fn new(geo: Geometry) -> Self {
        Self { geo, map: HashMap::new(), seg_live: vec![0; geo.seg_count as usize] }
    }
    pub fn inc(&mut self, b: BlockRef) {
        let e = self.map.entry(b.phys).or_insert(RefInfo { count: 0, crc: b.crc });
        e.count += 1;
        if e.count == 1 {
            if let Some(s) = self.geo.seg_of(b.phys) {
                self.seg_live[s as usize] += 1;
            }
        }
    }
    pub fn dec(&mut self, phys: u64) {
        if let Some(e) = self.map.get_mut(&phys) {
            e.count -= 1;
            if e.count == 0 {
                self.map.remove(&phys);
                if let Some(s) = self.geo.seg_of(phys) {
                    self.seg_live[s as usize] -= 1;
                }
            }
        }
    }
}

/// Size and allocation of one object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Blocks that hold data (written and not trimmed). Blocks shared with clones count in
    /// each version.
    pub allocated_blocks: u64,
    /// One past the highest allocated block, in bytes (0 when nothing is allocated).
    pub extent_end: u64,
}

/// One 4 KiB data block of an object version, as listed by [`State::data_blocks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataBlock {
    pub pg: PgId,
    /// The object version (`key.snap`: `SNAP_HEAD`, a snapshot id, or `SNAP_STAGING`).
    pub key: ObjectKey,
    /// Byte offset of the block within the object.
    pub offset: u64,
    /// Byte offset of the block on the device.
    pub device_offset: u64,
}

/// The range of a PG's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// Entries `<= compacted` are gone; `compacted_term` is the term of entry `compacted`.
    pub compacted: u64,
    pub compacted_term: u64,
    /// Index of the last entry (`== compacted` when the log is empty).
    pub last: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub(crate) pgs: BTreeMap<PgId, Pg>,
    pub(crate) meta: BTreeMap<(MetaScope, Bytes), Bytes>,
    pub(crate) refs: Refs,
    /// Point-in-time images of PGs being copied to new replicas (see `versions.rs`'s
    /// `pin`). In memory only: not in checkpoints, gone after a restart.
    pub(crate) pins: BTreeMap<u64, Pin>,
}

/// An immutable image of one PG's objects at one applied index. Holds references on its
/// blocks, so they stay put (the cleaner repoints them like any other reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pin {
    pub pg: PgId,
    pub applied: u64,
    pub objects: BTreeMap<ObjectKey, Object>,
    pub markers: BTreeSet<ObjectKey>,
}

impl State {
    pub fn new(geo: Geometry) -> Self {
        Self { pgs: BTreeMap::new(), meta: BTreeMap::new(), refs: Refs::new(geo), pins: BTreeMap::new() }
    }

    pub fn object_info(&self, pg: PgId, key: &ObjectKey) -> Option<ObjectInfo> {
        self.pgs.get(&pg)?.objects.get(key).map(info_of)
    }

    pub fn list_objects(&self, pg: PgId) -> Vec<(ObjectKey, ObjectInfo)> {
        self.pgs.get(&pg).map(|p| p.objects.iter().map(|(k, o)| (*k, info_of(o))).collect()).unwrap_or_default()
    }

    pub fn log_bounds(&self, pg: PgId) -> Option<LogBounds> {
        let l = &self.pgs.get(&pg)?.log;
        Some(LogBounds { compacted: l.compacted, compacted_term: l.compacted_term, last: l.last() })
    }

    pub fn pg_ids(&self) -> Vec<PgId> {
        self.pgs.keys().copied().collect()
    }

    pub fn meta_get(&self, scope: MetaScope, key: &[u8]) -> Option<Bytes> {
        self.meta.get(&(scope, Bytes::copy_from_slice(key))).cloned()
    }

    pub fn meta_scan(&self, scope: MetaScope) -> Vec<(Bytes, Bytes)> {
        self.meta.range((scope, Bytes::new())..).take_while(|((s, _), _)| *s == scope).map(|((_, k), v)| (k.clone(), v.clone())).collect()
    }

    /// Block references for `n` blocks of an object from `block`; `None` where unallocated.
    pub(crate) fn object_blocks(&self, pg: PgId, key: &ObjectKey, block: u32, n: u32) -> Vec<Option<BlockRef>> {
        match self.pgs.get(&pg).and_then(|p| p.objects.get(key)) {
            Some(o) => o.refs(block, n),
            None => vec![None; n as usize],
        }
    }

    pub(crate) fn log_entry(&self, pg: PgId, index: u64) -> Option<&Entry> {
        self.pgs.get(&pg)?.log.get(index)
    }

    /// Every allocated data block of every stored object version (heads, frozen snapshot
    /// versions, staging copies), in PG, key and offset order. A device block shared by
    /// several versions (snapshots, clones) or also holding a PG log entry's payload (an
    /// applied Raft write) is listed once per version. Not listed: log-only, metadata,
    /// checkpoint and batch header blocks, and pinned images (in memory only). For tools
    /// that pick corruption targets: every listed block is CRC32C-checked on each read.
    pub fn data_blocks(&self) -> Vec<DataBlock> {
        let mut out = Vec::new();
        for (pg, p) in &self.pgs {
            for (key, o) in &p.objects {
                out.extend(o.blocks.iter().map(|(b, r)| DataBlock {
                    pg: *pg,
                    key: *key,
                    offset: *b as u64 * crate::ids::BLOCK,
                    device_offset: r.phys * crate::ids::BLOCK,
                }));
            }
        }
        out
    }

    /// Live (referenced) blocks in total.
    pub fn live_blocks(&self) -> u64 {
        self.refs.map.len() as u64
    }

    pub(crate) fn seg_live(&self) -> &[u32] {
        &self.refs.seg_live
    }
}

/// Releases the references of a removed object version.
pub(crate) fn drop_object_refs(refs: &mut Refs, obj: Object) {
    obj.blocks.values().for_each(|b| refs.dec(b.phys));
}

pub(crate) fn info_of_pub(o: &Object) -> ObjectInfo {
    info_of(o)
}

fn info_of(o: &Object) -> ObjectInfo {
    ObjectInfo {
        allocated_blocks: o.blocks.len() as u64,
        extent_end: o.blocks.keys().next_back().map_or(0, |b| (*b as u64 + 1) * crate::ids::BLOCK),
    }
}

/// Applies every op of a durable batch whose data blocks start at device block `base`.
/// An op the state rejects is skipped and logged (it was validated before it was written, so
/// this is a bug); skipping is deterministic, so replay reproduces the same state. Returns
/// the number of rejected ops.
pub(crate) fn apply_batch(state: &mut State, ops: &[crate::format::batch::BatchOp], base: u64, crcs: &[u32]) -> u64 {
    let data = apply::BatchData { base, crcs };
    let mut rejected = 0;
    for op in ops {
        if let Err(e) = state.apply(op, &data) {
            tracing::error!(error = %e, ?op, "durable op rejected at apply");
            rejected += 1;
        }
    }
    rejected
}
