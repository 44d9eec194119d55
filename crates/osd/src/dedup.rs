//! Write deduplication of one PG: `(client, seq)` pairs already applied.
//!
//! Every replica updates the table in log order as it applies, so replicas that applied the
//! same entries hold the same table and a new leader has the old one's. A client's `floor`
//! (carried in every command) says it will never retry a `seq` below it, which bounds the
//! table per client; clients silent for [`IDLE_ENTRIES`] log entries are forgotten.
//!
//! The table lives in memory. After an OSD restart it is rebuilt from the last 4,096
//! applied entries still in the PG's log; a replica that joined by snapshot starts with an
//! empty table. Known gap: a duplicate of a write applied before that window (or before the
//! snapshot) is skipped by replicas that remember it and applied by one that does not; if
//! another write to the same block came in between, that replica diverges. Duplicates only
//! arise from client retries across leader changes, so the window is seconds wide; shipping
//! the table with snapshots and persisting it is planned.

use std::collections::{BTreeSet, HashMap};

/// A client that has not written for this many log entries of the PG is forgotten.
pub const IDLE_ENTRIES: u64 = 1 << 20;
/// At most this many pairs per client are remembered (a client keeps fewer in flight).
const MAX_PER_CLIENT: usize = 4096;

#[derive(Default)]
struct ClientSeqs {
    floor: u64,
    seqs: BTreeSet<u64>,
    last_index: u64,
}

#[derive(Default)]
pub struct Dedup {
    clients: HashMap<u64, ClientSeqs>,
    checked_at: u64,
}

impl Dedup {
    /// Records `(client, seq)` applied at log `index`; returns `false` if it had already been
    /// applied (or is below the client's floor), in which case the write must be skipped.
    pub fn admit(&mut self, client: u64, seq: u64, floor: u64, index: u64) -> bool {
        self.expire(index);
        let c = self.clients.entry(client).or_default();
        c.last_index = index;
        if floor > c.floor {
            c.floor = floor;
            c.seqs = c.seqs.split_off(&floor);
        }
        if seq < c.floor || !c.seqs.insert(seq) {
            return false;
        }
        while c.seqs.len() > MAX_PER_CLIENT {
            let low = *c.seqs.first().expect("non-empty");
            c.seqs.remove(&low);
            c.floor = low + 1;
        }
        true
    }

    /// Whether `(client, seq)` was already applied.
    pub fn contains(&self, client: u64, seq: u64) -> bool {
        self.clients.get(&client).is_some_and(|c| seq < c.floor || c.seqs.contains(&seq))
    }

    fn expire(&mut self, index: u64) {
        if index < self.checked_at + IDLE_ENTRIES / 4 {
            return;
        }
        self.checked_at = index;
        self.clients.retain(|_, c| c.last_index + IDLE_ENTRIES > index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_admitted_once_and_the_floor_forgets_older_pairs() {
        let mut d = Dedup::default();
        assert!(d.admit(1, 5, 0, 10));
        assert!(!d.admit(1, 5, 0, 11), "retry of an applied write");
        assert!(d.admit(2, 5, 0, 12), "other client, same seq");
        assert!(d.admit(1, 7, 6, 13));
        assert!(!d.admit(1, 5, 6, 14), "below the floor: the client promised not to retry it, treated as applied");
        assert!(d.contains(1, 7) && !d.contains(1, 8));
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let mut d = Dedup::default();
        assert!(d.admit(1, 1, 0, 1));
        assert!(d.admit(2, 1, 0, IDLE_ENTRIES + 2));
        assert!(!d.contains(1, 1));
    }
}
