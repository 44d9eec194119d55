//! Write deduplication of one PG: `(client, seq)` pairs already applied.
//!
//! Every replica updates the table in log order as it applies, so replicas that applied the
//! same entries hold the same table and a new leader has the old one's. A client's `floor`
//! (carried in every command) says it will never retry a `seq` below it, which bounds the
//! table per client; clients silent for [`IDLE_ENTRIES`] log entries are forgotten.
//!
//! Durability: the table is stored in the PG's metadata (`dedup/<client>`), updated in the
//! same engine transaction as the applies that changed it, so after a crash it matches the
//! durable applied index. Snapshots carry the source's table (see `snapshot.rs`), so a
//! replica that joins by snapshot has the same table as the others. Sweeps of idle clients
//! happen at fixed log indexes, so every replica forgets the same clients at the same entry.

use bytes::{Buf, BufMut, Bytes};
use std::collections::{BTreeSet, HashMap, HashSet};

/// A client that has not written for this many log entries of the PG is forgotten.
pub const IDLE_ENTRIES: u64 = 1 << 20;
/// At most this many pairs per client are remembered (a client keeps fewer in flight).
const MAX_PER_CLIENT: usize = 4096;

/// Metadata key prefix of the stored table (PG scope): `dedup/` + client id (8 bytes BE).
pub const KEY_PREFIX: &[u8] = b"dedup/";
const VERSION: u8 = 1;
/// Idle clients are swept when the applied index is a multiple of this.
const SWEEP_EVERY: u64 = IDLE_ENTRIES / 4;

#[derive(Default, Clone, Debug, PartialEq, Eq)]
struct ClientSeqs {
    floor: u64,
    seqs: BTreeSet<u64>,
    last_index: u64,
}

impl ClientSeqs {
    fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(21 + 8 * self.seqs.len());
        b.put_u8(VERSION);
        b.put_u64_le(self.floor);
        b.put_u64_le(self.last_index);
        b.put_u32_le(self.seqs.len() as u32);
        self.seqs.iter().for_each(|s| b.put_u64_le(*s));
        b.into()
    }
    fn decode(mut b: &[u8]) -> Result<Self, String> {
        if b.len() < 21 || b.get_u8() != VERSION {
            return Err("bad dedup record header".into());
        }
        let (floor, last_index, n) = (b.get_u64_le(), b.get_u64_le(), b.get_u32_le() as usize);
        if b.len() != n * 8 || n > MAX_PER_CLIENT {
            return Err(format!("dedup record with {n} seqs in {} bytes", b.len()));
        }
        let seqs = (0..n).map(|_| b.get_u64_le()).collect();
        Ok(ClientSeqs { floor, seqs, last_index })
    }
}

#[derive(Default)]
pub struct Dedup {
    clients: HashMap<u64, ClientSeqs>,
    /// Clients changed since the last [`Dedup::take_changes`].
    dirty: HashSet<u64>,
}

/// The metadata key of a client's record.
pub fn key(client: u64) -> Bytes {
    let mut k = KEY_PREFIX.to_vec();
    k.extend_from_slice(&client.to_be_bytes());
    k.into()
}

impl Dedup {
    /// Records `(client, seq)` applied at log `index`; returns `false` if it had already been
    /// applied (or is below the client's floor), in which case the write must be skipped.
    pub fn admit(&mut self, client: u64, seq: u64, floor: u64, index: u64) -> bool {
        self.dirty.insert(client);
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

    /// Called for every applied log index (any entry type), in order: at multiples of
    /// [`SWEEP_EVERY`] clients idle for [`IDLE_ENTRIES`] are forgotten, identically on
    /// every replica.
    pub fn on_applied(&mut self, index: u64) {
        if !index.is_multiple_of(SWEEP_EVERY) || index == 0 {
            return;
        }
        let gone: Vec<u64> = self.clients.iter().filter(|(_, c)| c.last_index + IDLE_ENTRIES <= index).map(|(id, _)| *id).collect();
        for id in gone {
            self.clients.remove(&id);
            self.dirty.insert(id);
        }
    }

    /// Records to store and keys to delete since the last call (queued by the caller in
    /// the transaction of the applies that made them).
    pub fn take_changes(&mut self) -> (Vec<(Bytes, Bytes)>, Vec<Bytes>) {
        let (mut puts, mut dels) = (Vec::new(), Vec::new());
        for id in std::mem::take(&mut self.dirty) {
            match self.clients.get(&id) {
                Some(c) => puts.push((key(id), c.encode())),
                None => dels.push(key(id)),
            }
        }
        (puts, dels)
    }

    /// The table from stored records (`key`, `value`) at applied index `applied`.
    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Dedup, String> {
        let mut d = Dedup::default();
        for (k, v) in records {
            let id = k.strip_prefix(KEY_PREFIX).and_then(|b| <[u8; 8]>::try_from(b).ok()).ok_or("bad dedup key")?;
            d.clients.insert(u64::from_be_bytes(id), ClientSeqs::decode(v)?);
        }
        Ok(d)
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
    fn the_stored_table_loads_back_identically() {
        let mut d = Dedup::default();
        d.admit(1, 5, 0, 10);
        d.admit(1, 7, 6, 11);
        d.admit(2, 1, 0, 12);
        let (puts, dels) = d.take_changes();
        assert_eq!((puts.len(), dels.len()), (2, 0));
        let back = Dedup::load(puts.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
        assert_eq!(back.clients, d.clients);
        assert!(back.contains(1, 7) && !back.contains(1, 8) && back.contains(2, 1));
        assert!(Dedup::load([(&b"dedup/12345678"[..], &b"\x02"[..])]).is_err());
        assert!(d.take_changes().0.is_empty(), "changes are taken once");
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let mut d = Dedup::default();
        assert!(d.admit(1, 1, 0, 1));
        assert!(d.admit(2, 1, 0, IDLE_ENTRIES));
        d.on_applied(IDLE_ENTRIES + 1);
        assert!(d.contains(1, 1), "sweeps happen only at multiples of SWEEP_EVERY");
        d.on_applied(IDLE_ENTRIES + SWEEP_EVERY);
        assert!(!d.contains(1, 1));
        assert!(d.contains(2, 1), "client 2 wrote recently");
        let (_, dels) = d.take_changes();
        assert_eq!(dels, vec![key(1)], "the forgotten client's record is deleted");
    }
}
