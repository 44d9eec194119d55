//! The per-PG leader cache: which replica to try first.
//!
//! An entry is a belief, never trusted blindly: it is used only while the OSD is still in the
//! PG's replica list of the current map, and a PG without an entry starts at the list's first
//! (preferred) OSD.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tessera_wire::WirePg;

#[derive(Debug, Default)]
pub(crate) struct Leaders {
    map: Mutex<HashMap<WirePg, u32>>,
}

impl Leaders {
    fn lock(&self) -> MutexGuard<'_, HashMap<WirePg, u32>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The believed leader of `pg` if it is one of `replicas`.
    pub(crate) fn get(&self, pg: WirePg, replicas: &[u32]) -> Option<u32> {
        self.lock().get(&pg).copied().filter(|l| replicas.contains(l))
    }

    /// Records `osd` as the leader of `pg` (it answered, or another replica named it).
    pub(crate) fn set(&self, pg: WirePg, osd: u32) {
        self.lock().insert(pg, osd);
    }

    /// Moves the belief from `failed` to `next`, unless another request already changed it.
    pub(crate) fn advance(&self, pg: WirePg, failed: u32, next: u32) {
        let mut m = self.lock();
        match m.get(&pg) {
            Some(cur) if *cur != failed => {}
            _ => {
                m.insert(pg, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_outside_the_replica_list_are_ignored_and_advance_is_a_compare_and_set() {
        let l = Leaders::default();
        let pg = WirePg { pool: 1, index: 2 };
        assert_eq!(l.get(pg, &[1, 2, 3]), None);
        l.set(pg, 3);
        assert_eq!(l.get(pg, &[1, 2, 3]), Some(3));
        assert_eq!(l.get(pg, &[1, 2, 4]), None);
        l.advance(pg, 1, 2);
        assert_eq!(l.get(pg, &[1, 2, 3]), Some(3), "3 did not fail");
        l.advance(pg, 3, 1);
        assert_eq!(l.get(pg, &[1, 2, 3]), Some(1));
    }
}
