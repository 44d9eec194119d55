//! The checkpoint blob: the whole state, encoded.
//!
//! ```text
//! magic "TSRSTATE" | version u16
//! meta count u32   | (scope, key bytes, value bytes)*
//! pg count u32     | (pg, compacted u64, compacted_term u64,
//!                     entry count u32 | (term u64, meta bytes, block count u32 | (phys u64, crc u32)*)*,
//!                     object count u32 | (key, block count u32 | (block u32, phys u64, crc u32)*)*)*
//! ```
//! Reference counts and per-segment live counts are derived on load, never stored.

use super::{BlockRef, Entry, Object, Pg, PgLog, Refs, State};
use crate::codec::{Dec, Enc};
use crate::error::FormatError;
use crate::format::batch::{get_key, get_pg, get_scope, put_scope_pub};
use crate::segments::Geometry;

const MAGIC: &[u8; 8] = b"TSRSTATE";
/// Version 2 added each PG's absent-version markers after its objects; version 1 blobs
/// (no markers) still decode.
const VERSION: u16 = 2;
const VERSION_1: u16 = 1;

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(64 + self.refs.map.len() * 16);
        e.buf.extend_from_slice(MAGIC);
        e.u16(VERSION);
        e.u32(self.meta.len() as u32);
        for ((scope, k), v) in &self.meta {
            put_scope_pub(&mut e, *scope);
            e.bytes(k);
            e.bytes(v);
        }
        e.u32(self.pgs.len() as u32);
        for (pg, p) in &self.pgs {
            e.u32(pg.pool);
            e.u32(pg.index);
            e.u64(p.log.compacted);
            e.u64(p.log.compacted_term);
            e.u32(p.log.entries.len() as u32);
            for en in &p.log.entries {
                e.u64(en.term);
                e.bytes(&en.meta);
                e.u32(en.data.len() as u32);
                for b in &en.data {
                    e.u64(b.phys);
                    e.u32(b.crc);
                }
            }
            e.u32(p.objects.len() as u32);
            for (k, o) in &p.objects {
                e.u64(k.volume);
                e.u64(k.object);
                e.u64(k.snap);
                e.u32(o.blocks.len() as u32);
                for (idx, b) in &o.blocks {
                    e.u32(*idx);
                    e.u64(b.phys);
                    e.u32(b.crc);
                }
            }
            e.u32(p.markers.len() as u32);
            for k in &p.markers {
                e.u64(k.volume);
                e.u64(k.object);
                e.u64(k.snap);
            }
        }
        e.buf
    }

    /// Decodes a blob; every block reference must lie in the segment area of `geo` and all
    /// references to one block must agree on its checksum.
    pub fn decode(b: &[u8], geo: Geometry) -> Result<State, FormatError> {
        let mut d = Dec::new(b, "checkpoint state");
        let version = d.header_any(MAGIC, &[VERSION_1, VERSION])?;
        let mut st = State::new(geo);
        for _ in 0..d.count(9)? {
            let scope = get_scope(&mut d)?;
            let k = d.bytes()?;
            let v = d.bytes()?;
            st.meta.insert((scope, k), v);
        }
        let mut refs = Refs::new(geo);
        let block = |d: &mut Dec, refs: &mut Refs| -> Result<BlockRef, FormatError> {
            let b = BlockRef { phys: d.u64()?, crc: d.u32()? };
            if geo.seg_of(b.phys).is_none() {
                return Err(d.invalid(format!("block {} outside the segment area", b.phys)));
            }
            if let Some(info) = refs.map.get(&b.phys) {
                if info.crc != b.crc {
                    return Err(d.invalid(format!("block {} referenced with two checksums", b.phys)));
                }
            }
            refs.inc(b);
            Ok(b)
        };
        for _ in 0..d.count(28)? {
            let pg = get_pg(&mut d)?;
            let mut p = Pg { log: PgLog { compacted: d.u64()?, compacted_term: d.u64()?, ..Default::default() }, ..Default::default() };
            for _ in 0..d.count(16)? {
                let term = d.u64()?;
                let meta = d.bytes()?;
                let n = d.count(12)?;
                let data = (0..n).map(|_| block(&mut d, &mut refs)).collect::<Result<Vec<_>, _>>()?;
                p.log.entries.push_back(Entry { term, meta, data });
            }
            if p.log.compacted.checked_add(p.log.entries.len() as u64).is_none() {
                return Err(d.invalid("log index overflow"));
            }
            for _ in 0..d.count(28)? {
                let key = get_key(&mut d)?;
                let mut o = Object::default();
                for _ in 0..d.count(16)? {
                    let idx = d.u32()?;
                    let b = block(&mut d, &mut refs)?;
                    if o.blocks.insert(idx, b).is_some() {
                        return Err(d.invalid(format!("block {idx} of {key} listed twice")));
                    }
                }
                if p.objects.insert(key, o).is_some() {
                    return Err(d.invalid(format!("object {key} listed twice")));
                }
            }
            if version >= VERSION {
                for _ in 0..d.count(24)? {
                    let key = get_key(&mut d)?;
                    if key.snap == crate::ids::SNAP_HEAD || p.objects.contains_key(&key) || !p.markers.insert(key) {
                        return Err(d.invalid(format!("marker {key} is a head, an object or listed twice")));
                    }
                }
            }
            if st.pgs.insert(pg, p).is_some() {
                return Err(d.invalid(format!("pg {pg} listed twice")));
            }
        }
        d.finish()?;
        st.refs = refs;
        Ok(st)
    }
}
