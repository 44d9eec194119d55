//! Object versions: how volume snapshots are kept at object granularity, copy-on-write.
//!
//! An object `(volume, object)` has a *head* (`snap == SNAP_HEAD`, the writable version) and
//! zero or more *frozen versions* `snap = S`. A frozen version `S` holds the object as it
//! was for every snapshot id in `(previous frozen id, S]`; a *marker* is a frozen version
//! saying "the object did not exist then". Snapshot ids come from one counter per cluster,
//! so they increase with time.
//!
//! Writers send their volume's snapshot context `S` (the id of its newest live snapshot)
//! with every change of a head. Before the change, [`State::preserve`] freezes the head as
//! version `S` unless a version `>= S` already exists: the first change after a snapshot
//! copies the object's block references (no data), later ones go straight to the head.
//! Reading snapshot `X` ([`Resolved`]): the oldest frozen version `>= X`; with none, the
//! head (it has not changed since `X`); with no head either, the object is absent.
//!
//! Every rule here is a pure function of the state, applied in log order on every replica,
//! so replicas agree without exchanging anything but the log.

use super::{drop_object_refs, Object, Pg, State};
use crate::ids::{ObjectKey, PgId, SNAP_HEAD, SNAP_STAGING};
use std::collections::BTreeSet;

/// What reading one object version resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Read this stored version (a frozen version or the head).
    Version(ObjectKey),
    /// The object did not exist at that snapshot (or does not exist now, for the head).
    Absent,
}

/// Space of one volume's objects in one PG (per replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    /// Objects with a head.
    pub objects: u64,
    /// Allocated blocks of the heads (what the volume holds now).
    pub head_blocks: u64,
    /// Distinct device blocks referenced by the heads and every frozen version (what the
    /// volume and its snapshots occupy).
    pub unique_blocks: u64,
}

/// Frozen version ids of one object, ascending, each with whether it is a marker.
fn frozen(pg: &Pg, volume: u64, object: u64) -> Vec<(u64, bool)> {
    let lo = ObjectKey::at_snap(volume, object, 0);
    let hi = ObjectKey::at_snap(volume, object, SNAP_STAGING - 1);
    let mut v: Vec<(u64, bool)> = pg.objects.range(lo..=hi).map(|(k, _)| (k.snap, false)).collect();
    v.extend(pg.markers.range(lo..=hi).map(|k| (k.snap, true)));
    v.sort_unstable();
    v
}

/// Object indexes of `volume` that have any version in the PG.
fn objects_of(pg: &Pg, volume: u64) -> BTreeSet<u64> {
    let lo = ObjectKey::at_snap(volume, 0, 0);
    let hi = ObjectKey::at_snap(volume, u64::MAX, SNAP_HEAD);
    pg.objects.range(lo..=hi).map(|(k, _)| k.object).chain(pg.markers.range(lo..=hi).map(|k| k.object)).collect()
}

/// Which of an object's frozen versions some snapshot in `keep` (sorted) still reads:
/// version `C` with predecessor `P` is read by every snapshot in `(P, C]`.
pub(crate) fn needed(versions: &[u64], keep: &[u64]) -> Vec<bool> {
    let mut prev = 0u64;
    versions
        .iter()
        .map(|&c| {
            let i = keep.partition_point(|&k| k <= prev);
            let need = keep.get(i).is_some_and(|&k| k <= c);
            prev = c;
            need
        })
        .collect()
}

pub(crate) fn resolve_in(pg: Option<&Pg>, key: ObjectKey) -> Resolved {
    let Some(pg) = pg else { return Resolved::Absent };
    let head = ObjectKey::head(key.volume, key.object);
    if key.snap != SNAP_HEAD {
        if let Some((snap, marker)) = frozen(pg, key.volume, key.object).into_iter().find(|(s, _)| *s >= key.snap) {
            return if marker { Resolved::Absent } else { Resolved::Version(ObjectKey { snap, ..key }) };
        }
    }
    if pg.objects.contains_key(&head) {
        Resolved::Version(head)
    } else {
        Resolved::Absent
    }
}

impl State {
    /// Which stored version a read of `key` (head or snapshot id) sees.
    pub fn resolve(&self, pg: PgId, key: ObjectKey) -> Resolved {
        resolve_in(self.pgs.get(&pg), key)
    }

    /// Per volume usage in the PG.
    pub fn volume_usage(&self, pg: PgId) -> Vec<(u64, VolumeUsage)> {
        let Some(p) = self.pgs.get(&pg) else { return Vec::new() };
        let mut out: Vec<(u64, VolumeUsage)> = Vec::new();
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        for (k, o) in &p.objects {
            if out.last().is_none_or(|(v, _)| *v != k.volume) {
                out.push((k.volume, VolumeUsage::default()));
                seen.clear();
            }
            let u = &mut out.last_mut().expect("pushed above").1;
            if k.snap == SNAP_HEAD {
                u.objects += 1;
                u.head_blocks += o.blocks.len() as u64;
            }
            for b in o.blocks.values() {
                if seen.insert(b.phys) {
                    u.unique_blocks += 1;
                }
            }
        }
        out
    }

    /// Markers of the PG (frozen "absent" versions), for copying a PG to a new replica.
    pub fn list_markers(&self, pg: PgId) -> Vec<ObjectKey> {
        self.pgs.get(&pg).map(|p| p.markers.iter().copied().collect()).unwrap_or_default()
    }

    /// Before the head of `(volume, object)` changes under snapshot context `snap`: freezes
    /// the head as version `snap` (a marker if there is no head) unless a frozen version
    /// `>= snap` exists. `snap == 0` (no snapshot) does nothing.
    pub(crate) fn preserve(&mut self, pg: PgId, volume: u64, object: u64, snap: u64) {
        if snap == 0 || snap >= SNAP_STAGING {
            return;
        }
        let p = self.pgs.entry(pg).or_default();
        if frozen(p, volume, object).last().is_some_and(|(newest, _)| *newest >= snap) {
            return;
        }
        let dst = ObjectKey::at_snap(volume, object, snap);
        match p.objects.get(&ObjectKey::head(volume, object)).cloned() {
            Some(copy) => {
                copy.blocks.values().for_each(|b| self.refs.inc(*b));
                p.objects.insert(dst, copy);
            }
            None => {
                p.markers.insert(dst);
            }
        }
    }

    /// Removes every frozen version of `volume` below `horizon` that no snapshot in `keep`
    /// reads.
    pub(crate) fn trim_versions(&mut self, pg: PgId, volume: u64, keep: &[u64], horizon: u64) {
        let Some(p) = self.pgs.get_mut(&pg) else { return };
        let mut keep = keep.to_vec();
        keep.sort_unstable();
        for object in objects_of(p, volume) {
            let versions = frozen(p, volume, object);
            let ids: Vec<u64> = versions.iter().map(|(s, _)| *s).collect();
            for ((snap, marker), need) in versions.into_iter().zip(needed(&ids, &keep)) {
                if need || snap >= horizon {
                    continue;
                }
                let key = ObjectKey::at_snap(volume, object, snap);
                if marker {
                    p.markers.remove(&key);
                } else if let Some(o) = p.objects.remove(&key) {
                    drop_object_refs(&mut self.refs, o);
                }
            }
        }
    }

    /// Removes every version (heads, frozen versions, markers) of `volume`.
    pub(crate) fn drop_volume(&mut self, pg: PgId, volume: u64) {
        let Some(p) = self.pgs.get_mut(&pg) else { return };
        let lo = ObjectKey::at_snap(volume, 0, 0);
        let hi = ObjectKey::at_snap(volume, u64::MAX, SNAP_HEAD);
        let keys: Vec<ObjectKey> = p.objects.range(lo..=hi).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(o) = p.objects.remove(&k) {
                drop_object_refs(&mut self.refs, o);
            }
        }
        let marks: Vec<ObjectKey> = p.markers.range(lo..=hi).copied().collect();
        for k in marks {
            p.markers.remove(&k);
        }
    }

    /// Rolls every object of `volume` back to snapshot `snap`: first the heads are preserved
    /// under the volume's current context `seq` (so newer snapshots keep their data), then
    /// each head becomes a copy of the version `snap` reads (removed where it was absent).
    pub(crate) fn rollback(&mut self, pg: PgId, volume: u64, snap: u64, seq: u64) {
        let Some(p) = self.pgs.get(&pg) else { return };
        let objects = objects_of(p, volume);
        for object in objects {
            self.preserve(pg, volume, object, seq);
            let p = self.pgs.get_mut(&pg).expect("exists: checked above");
            let head = ObjectKey::head(volume, object);
            let restored: Option<Object> = match resolve_in(Some(p), ObjectKey::at_snap(volume, object, snap)) {
                Resolved::Version(k) if k == head => continue,
                Resolved::Version(k) => p.objects.get(&k).cloned(),
                Resolved::Absent => None,
            };
            if let Some(o) = &restored {
                o.blocks.values().for_each(|b| self.refs.inc(*b));
            }
            let old = match restored {
                Some(o) => p.objects.insert(head, o),
                None => p.objects.remove(&head),
            };
            if let Some(o) = old {
                drop_object_refs(&mut self.refs, o);
            }
        }
    }

    /// Makes the object's staging copy its head if the head is absent (after preserving
    /// under `snap`); otherwise drops the staging copy. No staging copy: nothing.
    pub(crate) fn promote(&mut self, pg: PgId, volume: u64, object: u64, snap: u64) {
        let head = ObjectKey::head(volume, object);
        let staging = ObjectKey::at_snap(volume, object, SNAP_STAGING);
        let Some(p) = self.pgs.get_mut(&pg) else { return };
        let Some(staged) = p.objects.remove(&staging) else { return };
        if p.objects.contains_key(&head) {
            drop_object_refs(&mut self.refs, staged);
            return;
        }
        self.preserve(pg, volume, object, snap);
        self.pgs.get_mut(&pg).expect("exists: checked above").objects.insert(head, staged);
    }

    /// Takes an immutable image of `pg` (objects and markers, sharing blocks) as pin `id`,
    /// with the applied index stored in the same state (so the image is exactly the state
    /// at that index). Returns the applied index.
    pub(crate) fn pin(&mut self, pg: PgId, id: u64, applied: u64) {
        let (objects, markers) = match self.pgs.get(&pg) {
            Some(p) => (p.objects.clone(), p.markers.clone()),
            None => Default::default(),
        };
        for o in objects.values() {
            o.blocks.values().for_each(|b| self.refs.inc(*b));
        }
        if let Some(old) = self.pins.insert(id, super::Pin { pg, applied, objects, markers }) {
            old.objects.into_values().for_each(|o| drop_object_refs(&mut self.refs, o));
        }
    }

    /// Releases pin `id` (no-op if gone).
    pub(crate) fn unpin(&mut self, id: u64) {
        if let Some(p) = self.pins.remove(&id) {
            p.objects.into_values().for_each(|o| drop_object_refs(&mut self.refs, o));
        }
    }

    /// Makes `key` a marker (used when copying a PG to a new replica).
    pub(crate) fn mark(&mut self, pg: PgId, key: ObjectKey) {
        if key.snap >= SNAP_STAGING {
            return;
        }
        let p = self.pgs.entry(pg).or_default();
        if let Some(o) = p.objects.remove(&key) {
            drop_object_refs(&mut self.refs, o);
        }
        p.markers.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_needed_by_the_snapshots_between_its_predecessor_and_itself() {
        assert_eq!(needed(&[3, 7, 9], &[1, 8]), vec![true, false, true]);
        assert_eq!(needed(&[3, 7, 9], &[]), vec![false, false, false]);
        assert_eq!(needed(&[3, 7, 9], &[4]), vec![false, true, false]);
        assert_eq!(needed(&[5], &[5, 6]), vec![true]);
        assert_eq!(needed(&[], &[5]), Vec::<bool>::new());
    }
}
