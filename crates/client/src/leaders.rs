//! The per-PG leader cache: which OSD to try first.
//!
//! An entry is a belief, never trusted blindly: it is used while the OSD is in the PG's
//! replica list of the current map, or, if the OSD answered as the leader or was named as
//! the leader, while it is still in the map and up. The second case is a PG
//! being moved: the map already lists the new replicas, but the group keeps its leader (on
//! an OSD the map no longer lists) until the new replicas have copied the PG, which can take
//! minutes; requests must keep going to it meanwhile. A wrong belief costs one redirect. A PG
//! without a usable entry starts at the list's first (preferred) OSD.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tessera_mon::model::ClusterMap;
use tessera_wire::WirePg;

#[derive(Debug, Default)]
pub(crate) struct Leaders {
    map: Mutex<HashMap<WirePg, Entry>>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    osd: u32,
    /// It answered as the leader, or an OSD named it: not just the next replica to try.
    confirmed: bool,
}

impl Leaders {
    fn lock(&self) -> MutexGuard<'_, HashMap<WirePg, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The believed leader of `pg` if it is one of `replicas`, or a confirmed leader that
    /// `map` knows as up.
    pub(crate) fn get(&self, pg: WirePg, replicas: &[u32], map: &ClusterMap) -> Option<u32> {
        let e = self.lock().get(&pg).copied()?;
        let usable = replicas.contains(&e.osd) || (e.confirmed && usable_leader(map, replicas, e.osd));
        usable.then_some(e.osd)
    }

    /// Records `osd` as the leader of `pg` (it answered, or another replica named it).
    pub(crate) fn set(&self, pg: WirePg, osd: u32) {
        self.lock().insert(pg, Entry { osd, confirmed: true });
    }

    /// Moves the belief from `failed` to the replica `next`, unless another request already
    /// changed it.
    pub(crate) fn advance(&self, pg: WirePg, failed: u32, next: u32) {
        let mut m = self.lock();
        match m.get(&pg) {
            Some(cur) if cur.osd != failed => {}
            _ => {
                m.insert(pg, Entry { osd: next, confirmed: false });
            }
        }
    }
}

/// Whether `osd` may be tried as the leader of a PG whose map replicas are `replicas`: one
/// of them, or an OSD of the map that is up (a PG moving away from its leader's OSD keeps
/// that leader until the move is done).
pub(crate) fn usable_leader(map: &ClusterMap, replicas: &[u32], osd: u32) -> bool {
    replicas.contains(&osd) || map.osd(osd).is_some_and(|o| o.up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_mon::model::OsdRecord;

    fn map(up: &[(u32, bool)]) -> ClusterMap {
        let osds = up
            .iter()
            .map(|(id, up)| {
                let v = serde_json::json!({
                    "id": id, "uuid": "", "addr": "", "host": "", "device": "", "capacity_bytes": 0, "weight": 1.0, "up": up, "in": true, "since_ms": 0,
                });
                serde_json::from_value::<OsdRecord>(v).unwrap()
            })
            .collect();
        ClusterMap { epoch: 1, osds, ..Default::default() }
    }

    #[test]
    fn entries_are_used_for_replicas_and_up_osds_of_the_map_and_advance_is_a_compare_and_set() {
        let l = Leaders::default();
        let m = map(&[(1, true), (2, true), (3, true), (4, true), (5, false)]);
        let pg = WirePg { pool: 1, index: 2 };
        assert_eq!(l.get(pg, &[1, 2, 3], &m), None);
        l.set(pg, 3);
        assert_eq!(l.get(pg, &[1, 2, 3], &m), Some(3));
        assert_eq!(l.get(pg, &[1, 2, 4], &m), Some(3), "a PG moving off osd 3 keeps its leader there until the move is done");
        l.set(pg, 5);
        assert_eq!(l.get(pg, &[1, 2, 4], &m), None, "down and not a replica");
        assert_eq!(l.get(pg, &[1, 2, 5], &m), Some(5), "a replica, even if the map says down");
        l.set(pg, 9);
        assert_eq!(l.get(pg, &[1, 2, 3], &m), None, "not in the map at all");
        l.set(pg, 3);
        l.advance(pg, 1, 2);
        assert_eq!(l.get(pg, &[1, 2, 3], &m), Some(3), "3 did not fail");
        l.advance(pg, 3, 1);
        assert_eq!(l.get(pg, &[1, 2, 3], &m), Some(1));
        assert_eq!(l.get(pg, &[2, 3, 4], &m), None, "1 was only the next replica to try, never a leader");
    }
}
