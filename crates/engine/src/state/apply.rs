//! Applying one batch op to the state. Each op checks everything first and then mutates, so a
//! rejected op leaves the state untouched.

use super::{BlockRef, Entry, Object, Pg, Refs, State};
use crate::error::{EngineError, Result};
use crate::format::batch::{BatchOp, DataRange};
use crate::ids::{MetaScope, PgId};
use std::collections::HashMap;

/// Where the data blocks of the batch being applied are: device block of data block 0, and
/// the checksum of each data block.
pub(crate) struct BatchData<'a> {
    pub base: u64,
    pub crcs: &'a [u32],
}

impl BatchData<'_> {
    fn block(&self, r: DataRange, i: u32) -> BlockRef {
        let j = (r.start + i) as usize;
        BlockRef { phys: self.base + j as u64, crc: self.crcs[j] }
    }
}

fn invalid(pg: PgId, why: String) -> EngineError {
    EngineError::Invalid { pg, why }
}

fn set_block(refs: &mut Refs, obj: &mut Object, idx: u32, b: BlockRef) {
    refs.inc(b);
    if let Some(old) = obj.blocks.insert(idx, b) {
        refs.dec(old.phys);
    }
}

fn drop_object(refs: &mut Refs, obj: Object) {
    super::drop_object_refs(refs, obj)
}

fn drop_entries(refs: &mut Refs, entries: impl IntoIterator<Item = Entry>) {
    for e in entries {
        e.data.iter().for_each(|b| refs.dec(b.phys));
    }
}

impl State {
    pub(crate) fn apply(&mut self, op: &BatchOp, data: &BatchData) -> Result<()> {
        // A version written directly is no longer "absent" (keeps objects and markers
        // disjoint, which the checkpoint decoder insists on).
        if let BatchOp::ApplyWrite { pg, key, .. }
        | BatchOp::Write { pg, key, .. }
        | BatchOp::WriteZeroes { pg, key, .. }
        | BatchOp::Clone { pg, dst: key, .. } = op
        {
            if let Some(p) = self.pgs.get_mut(pg) {
                p.markers.remove(key);
            }
        }
        let refs = &mut self.refs;
        match op {
            BatchOp::LogAppend { pg, entries } => {
                let first = entries.first().map_or(0, |e| e.index);
                let log = self.pgs.get(pg).map(|p| &p.log);
                let (compacted, last) = log.map_or((0, 0), |l| (l.compacted, l.last()));
                if first <= compacted || first > last + 1 {
                    return Err(invalid(*pg, format!("append at {first} but log holds {compacted}+1..={last}")));
                }
                let log = &mut self.pgs.entry(*pg).or_default().log;
                let keep = (first - log.compacted - 1) as usize;
                let removed: Vec<Entry> = log.entries.drain(keep..).collect();
                for e in entries {
                    let blocks: Vec<BlockRef> = (0..e.data.n).map(|i| data.block(e.data, i)).collect();
                    blocks.iter().for_each(|b| refs.inc(*b));
                    log.entries.push_back(Entry { term: e.term, meta: e.meta.clone(), data: blocks });
                }
                drop_entries(refs, removed);
            }
            BatchOp::LogTruncate { pg, from } => {
                let compacted = self.pgs.get(pg).map_or(0, |p| p.log.compacted);
                if *from <= compacted {
                    return Err(invalid(*pg, format!("truncate from {from} at or below compacted {compacted}")));
                }
                let Some(p) = self.pgs.get_mut(pg) else { return Ok(()) };
                let keep = ((from - p.log.compacted - 1) as usize).min(p.log.entries.len());
                let removed: Vec<Entry> = p.log.entries.drain(keep..).collect();
                drop_entries(refs, removed);
            }
            BatchOp::LogCompact { pg, upto, term } => {
                let log = self.pgs.get(pg).map(|p| &p.log);
                if let Some(l) = log {
                    if *upto < l.compacted {
                        return Err(invalid(*pg, format!("compact to {upto} below compacted {}", l.compacted)));
                    }
                    if let Some(e) = l.get(*upto) {
                        if e.term != *term {
                            return Err(invalid(*pg, format!("compact to {upto} with term {term}, entry has term {}", e.term)));
                        }
                    }
                }
                let log = &mut self.pgs.entry(*pg).or_default().log;
                let n = ((upto - log.compacted) as usize).min(log.entries.len());
                // Compaction beyond the last entry (snapshot install) empties the log.
                let removed: Vec<Entry> = log.entries.drain(..n).collect();
                log.compacted = *upto;
                log.compacted_term = *term;
                drop_entries(refs, removed);
            }
            BatchOp::ApplyWrite { pg, key, block, entry, entry_block, n } => {
                let p = self.pgs.get_mut(pg).ok_or(EngineError::LogUnavailable { pg: *pg, index: *entry })?;
                let e = p.log.get(*entry).ok_or(EngineError::LogUnavailable { pg: *pg, index: *entry })?;
                let end = *entry_block as u64 + *n as u64;
                if end > e.data.len() as u64 || *block as u64 + *n as u64 > u32::MAX as u64 {
                    return Err(invalid(
                        *pg,
                        format!("apply of entry {entry} blocks {entry_block}+{n}: entry has {} blocks", e.data.len()),
                    ));
                }
                let src: Vec<BlockRef> = e.data[*entry_block as usize..end as usize].to_vec();
                let obj = p.objects.entry(*key).or_default();
                for (i, b) in src.into_iter().enumerate() {
                    set_block(refs, obj, block + i as u32, b);
                }
            }
            BatchOp::Write { pg, key, block, data: r } => {
                let obj = self.pgs.entry(*pg).or_default().objects.entry(*key).or_default();
                for i in 0..r.n {
                    set_block(refs, obj, block + i, data.block(*r, i));
                }
            }
            BatchOp::WriteZeroes { pg, key, block, n } => {
                let obj = self.pgs.entry(*pg).or_default().objects.entry(*key).or_default();
                let end = block.saturating_add(*n);
                let gone: Vec<u32> = obj.blocks.range(*block..end).map(|(b, _)| *b).collect();
                for b in gone {
                    let old = obj.blocks.remove(&b).expect("key from range");
                    refs.dec(old.phys);
                }
            }
            BatchOp::Delete { pg, key } => {
                if let Some(obj) = self.pgs.get_mut(pg).and_then(|p| p.objects.remove(key)) {
                    drop_object(refs, obj);
                }
            }
            BatchOp::Clone { pg, src, dst } => {
                if src != dst {
                    let p = self.pgs.entry(*pg).or_default();
                    let copy = p.objects.get(src).cloned();
                    if let Some(c) = &copy {
                        c.blocks.values().for_each(|b| refs.inc(*b));
                    }
                    let old = match copy {
                        Some(c) => p.objects.insert(*dst, c),
                        None => p.objects.remove(dst),
                    };
                    if let Some(o) = old {
                        drop_object(refs, o);
                    }
                }
            }
            BatchOp::DropPg { pg } => {
                if let Some(p) = self.pgs.remove(pg) {
                    let Pg { objects, log, .. } = p;
                    objects.into_values().for_each(|o| drop_object(refs, o));
                    drop_entries(refs, log.entries);
                }
                self.meta.retain(|(s, _), _| *s != MetaScope::Pg(*pg));
            }
            BatchOp::Preserve { pg, volume, object, snap } => self.preserve(*pg, *volume, *object, *snap),
            BatchOp::TrimVersions { pg, volume, keep, horizon } => self.trim_versions(*pg, *volume, keep, *horizon),
            BatchOp::DropVolume { pg, volume } => self.drop_volume(*pg, *volume),
            BatchOp::Rollback { pg, volume, snap, seq } => self.rollback(*pg, *volume, *snap, *seq),
            BatchOp::Mark { pg, key } => self.mark(*pg, *key),
            BatchOp::Promote { pg, volume, object, snap } => self.promote(*pg, *volume, *object, *snap),
            BatchOp::MetaPut { scope, key, value } => {
                self.meta.insert((*scope, key.clone()), value.clone());
            }
            BatchOp::MetaDelete { scope, key } => {
                self.meta.remove(&(*scope, key.clone()));
            }
            BatchOp::Relocate { moves } => {
                let mut to: HashMap<u64, BlockRef> = HashMap::with_capacity(moves.len());
                for m in moves {
                    let new = BlockRef { phys: data.base + m.new as u64, crc: m.crc };
                    if let Some(info) = refs.map.get(&m.old).copied() {
                        for _ in 0..info.count {
                            refs.inc(new);
                            refs.dec(m.old);
                        }
                        to.insert(m.old, new);
                    }
                }
                if !to.is_empty() {
                    self.repoint(&to);
                }
            }
        }
        Ok(())
    }

    /// Rewrites every reference to a moved block. O(all references); the cleaner moves many
    /// blocks per call, so this runs rarely.
    fn repoint(&mut self, to: &HashMap<u64, BlockRef>) {
        let fix = |b: &mut BlockRef| {
            if let Some(n) = to.get(&b.phys) {
                *b = *n;
            }
        };
        for p in self.pins.values_mut() {
            p.objects.values_mut().for_each(|o| o.blocks.values_mut().for_each(fix));
        }
        for p in self.pgs.values_mut() {
            p.objects.values_mut().for_each(|o| o.blocks.values_mut().for_each(fix));
            p.log.entries.iter_mut().for_each(|e| e.data.iter_mut().for_each(fix));
        }
    }
}
