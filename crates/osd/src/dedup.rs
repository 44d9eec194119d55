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
    /// The client's promise: it never retries a seq below this.
    floor: u64,
    /// Seqs in `floor..trimmed` were dropped from `seqs` to bound it: whether they were
    /// applied is unknown.
    trimmed: u64,
    seqs: BTreeSet<u64>,
    last_index: u64,
}

/// What the table knows about a `(client, seq)` pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never applied: apply it.
    New,
    /// Applied before, or below the client's floor (it will not retry those): skip it and
    /// answer success.
    Applied,
    /// Possibly applied (the pair was trimmed from a full table): skip it and answer an
    /// error, never success.
    Unknown,
}

impl ClientSeqs {
    fn seen(&self, seq: u64) -> Seen {
        if seq < self.floor || self.seqs.contains(&seq) {
            Seen::Applied
        } else if seq < self.trimmed {
            Seen::Unknown
        } else {
            Seen::New
        }
    }

    fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(29 + 8 * self.seqs.len());
        b.put_u8(VERSION);
        b.put_u64_le(self.floor);
        b.put_u64_le(self.trimmed);
        b.put_u64_le(self.last_index);
        b.put_u32_le(self.seqs.len() as u32);
        self.seqs.iter().for_each(|s| b.put_u64_le(*s));
        b.into()
    }
    fn decode(mut b: &[u8]) -> Result<Self, String> {
        if b.len() < 29 || b.get_u8() != VERSION {
            return Err("bad dedup record header".into());
        }
        let (floor, trimmed, last_index, n) = (b.get_u64_le(), b.get_u64_le(), b.get_u64_le(), b.get_u32_le() as usize);
        if b.len() != n * 8 || n > MAX_PER_CLIENT {
            return Err(format!("dedup record with {n} seqs in {} bytes", b.len()));
        }
        let seqs = (0..n).map(|_| b.get_u64_le()).collect();
        Ok(ClientSeqs { floor, trimmed, seqs, last_index })
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
    /// Looks `(client, seq)` up for the write at log `index` and records it if new (the
    /// caller applies only [`Seen::New`]).
    pub fn admit(&mut self, client: u64, seq: u64, floor: u64, index: u64) -> Seen {
        self.dirty.insert(client);
        let c = self.clients.entry(client).or_default();
        c.last_index = index;
        if floor > c.floor {
            c.floor = floor;
            c.seqs = c.seqs.split_off(&floor);
        }
        let seen = c.seen(seq);
        if seen != Seen::New {
            return seen;
        }
        c.seqs.insert(seq);
        while c.seqs.len() > MAX_PER_CLIENT {
            let low = *c.seqs.first().expect("non-empty");
            c.seqs.remove(&low);
            c.trimmed = c.trimmed.max(low + 1);
        }
        Seen::New
    }

    /// What is known about `(client, seq)` without recording anything.
    pub fn check(&self, client: u64, seq: u64) -> Seen {
        self.clients.get(&client).map_or(Seen::New, |c| c.seen(seq))
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
    use Seen::*;

    #[test]
    fn a_pair_is_admitted_once_and_the_floor_forgets_older_pairs() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(1, 5, 0, 10), New);
        assert_eq!(d.admit(1, 5, 0, 11), Applied, "retry of an applied write");
        assert_eq!(d.admit(2, 5, 0, 12), New, "other client, same seq");
        assert_eq!(d.admit(1, 7, 6, 13), New);
        assert_eq!(d.admit(1, 5, 6, 14), Applied, "below the floor: the client promised not to retry it");
        assert_eq!((d.check(1, 7), d.check(1, 8)), (Applied, New));
    }

    /// Regression: trimming a full table used to raise the floor, so a retry of a trimmed,
    /// never-applied write was answered success and silently dropped.
    #[test]
    fn pairs_trimmed_from_a_full_table_are_unknown_never_applied() {
        let mut d = Dedup::default();
        // seq 1 stays in flight (the client's floor stays 1) while many later writes apply.
        for seq in 2..(MAX_PER_CLIENT as u64 + 10) {
            assert_eq!(d.admit(1, seq, 1, seq), New);
        }
        assert_eq!(d.check(1, 1), Unknown, "never applied, but the table cannot tell any more: an error, never success");
        assert_eq!(d.check(1, 2), Unknown, "trimmed: may have been applied");
        assert_eq!(d.admit(1, 3, 1, 99_999), Unknown);
        assert_eq!(d.check(1, MAX_PER_CLIENT as u64 + 5), Applied);
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
        assert_eq!((back.check(1, 7), back.check(1, 8), back.check(2, 1)), (Applied, New, Applied));
        assert!(Dedup::load([(&b"dedup/12345678"[..], &b"\x02"[..])]).is_err());
        assert!(d.take_changes().0.is_empty(), "changes are taken once");
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(1, 1, 0, 1), New);
        assert_eq!(d.admit(2, 1, 0, IDLE_ENTRIES), New);
        d.on_applied(IDLE_ENTRIES + 1);
        assert_eq!(d.check(1, 1), Applied, "sweeps happen only at multiples of SWEEP_EVERY");
        d.on_applied(IDLE_ENTRIES + SWEEP_EVERY);
        assert_eq!(d.check(1, 1), New);
        assert_eq!(d.check(2, 1), Applied, "client 2 wrote recently");
        let (_, dels) = d.take_changes();
        assert_eq!(dels, vec![key(1)], "the forgotten client's record is deleted");
    }
}
