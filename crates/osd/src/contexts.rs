//! Snapshot contexts of one PG (issue 14): per volume, the newest live snapshot id the PG
//! was told ([`tessera_wire::OpCode::SnapSeq`]), and whether the volume was dropped.
//!
//! # Why
//! A write carries its volume's snapshot context (`snapc`); applying it first freezes the
//! head as version `snapc` if nothing newer is frozen. A write built before `snapshot
//! create` but applied after it (a client retrying for a while) would carry the old context
//! and change the head that the new snapshot still reads through: the snapshot would change
//! after its create command returned. So `snapshot create` (and `delete`) tell every PG of
//! the pool the volume's new context, through the PG's Raft log, before returning; from that
//! entry on, every replica refuses, in log order, any write-class op of the volume with an
//! older context ([`Verdict::Stale`]: the client re-issues it with the newer one). Writes
//! after `DropVolume` are refused too ([`Verdict::Dropped`]): a deleted volume cannot come
//! back through a late writer. No clock and no session is involved.
//!
//! Pushes carry the map epoch at which the context was set; a PG keeps the one with the
//! highest epoch, so a delete's lower context and a create's higher one cannot be applied
//! out of order. A write with a context *above* the PG's is accepted (a client that has not
//! seen a snapshot delete yet: at worst it freezes a version nobody reads until the next trim).
//!
//! Durability: stored in the PG's metadata (`snapseq/<volume>`), in the same engine
//! transaction as the applies that changed it, and carried in snapshot tickets, like the
//! deduplication table.

use bytes::{Buf, BufMut, Bytes};
use std::collections::{HashMap, HashSet};

/// Metadata key prefix (PG scope): `snapseq/` + volume id (8 bytes BE).
pub const KEY_PREFIX: &[u8] = b"snapseq/";
const VERSION: u8 = 1;
/// The `seq` of a dropped volume.
const DROPPED: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ctx {
    seq: u64,
    epoch: u64,
}

/// What the PG says about a write-class op's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Older than the PG's context for the volume (carried).
    Stale(u64),
    /// The volume was dropped (deleted).
    Dropped,
}

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Contexts {
    vols: HashMap<u64, Ctx>,
    dirty: HashSet<u64>,
}

fn key(volume: u64) -> Bytes {
    let mut k = KEY_PREFIX.to_vec();
    k.extend(volume.to_be_bytes());
    k.into()
}

impl Contexts {
    /// From the stored records (`(key, value)` under [`KEY_PREFIX`]).
    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Contexts, String> {
        let mut c = Contexts::default();
        for (k, mut v) in records {
            let id = k.strip_prefix(KEY_PREFIX).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
            let Some(volume) = id else { return Err(format!("bad snapshot context key {k:?}")) };
            if v.len() != 17 || v.get_u8() != VERSION {
                return Err(format!("bad snapshot context record of volume {volume}"));
            }
            c.vols.insert(volume, Ctx { seq: v.get_u64_le(), epoch: v.get_u64_le() });
        }
        Ok(c)
    }

    /// Whether a write-class op of `volume` under context `snapc` may be applied.
    pub fn check(&self, volume: u64, snapc: u64) -> Verdict {
        match self.vols.get(&volume) {
            Some(c) if c.seq == DROPPED => Verdict::Dropped,
            Some(c) if snapc < c.seq => Verdict::Stale(c.seq),
            _ => Verdict::Ok,
        }
    }

    /// `SnapSeq(volume, seq)` set at map epoch `epoch`: kept if newer than what the PG has
    /// (a dropped volume stays dropped).
    pub fn set(&mut self, volume: u64, seq: u64, epoch: u64) {
        let cur = self.vols.get(&volume).copied();
        if cur.is_some_and(|c| c.seq == DROPPED || c.epoch >= epoch) {
            return;
        }
        self.vols.insert(volume, Ctx { seq, epoch });
        self.dirty.insert(volume);
    }

    /// The volume was dropped: every later write of it is refused.
    pub fn drop_volume(&mut self, volume: u64) {
        if self.check(volume, 0) != Verdict::Dropped {
            self.vols.insert(volume, Ctx { seq: DROPPED, epoch: u64::MAX });
            self.dirty.insert(volume);
        }
    }

    /// Records changed since the last call, as metadata puts.
    pub fn take_changes(&mut self) -> Vec<(Bytes, Bytes)> {
        let mut out = Vec::new();
        for v in std::mem::take(&mut self.dirty) {
            let c = self.vols[&v];
            let mut b = Vec::with_capacity(17);
            b.put_u8(VERSION);
            b.put_u64_le(c.seq);
            b.put_u64_le(c.epoch);
            out.push((key(v), Bytes::from(b)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stale_contexts_are_refused_pushes_never_go_back_and_dropped_stays_dropped() {
        let mut c = Contexts::default();
        assert_eq!(c.check(1, 0), Verdict::Ok, "nothing known: anything goes");
        c.set(1, 5, 10);
        assert_eq!(c.check(1, 4), Verdict::Stale(5));
        assert_eq!(c.check(1, 5), Verdict::Ok);
        assert_eq!(c.check(1, 9), Verdict::Ok, "a newer context than the PG's is taken");
        c.set(1, 3, 9);
        assert_eq!(c.check(1, 4), Verdict::Stale(5), "an older push arriving late does not go back");
        c.set(1, 3, 11);
        assert_eq!(c.check(1, 4), Verdict::Ok, "a newer push (a snapshot delete) lowers it");
        c.drop_volume(1);
        c.set(1, 20, 99);
        assert_eq!(c.check(1, 30), Verdict::Dropped);
        assert_eq!(c.check(2, 0), Verdict::Ok, "other volumes are unaffected");
        let changes = c.take_changes();
        let back = Contexts::load(changes.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
        assert_eq!(back.vols, c.vols);
        assert!(c.take_changes().is_empty());
    }

    proptest! {
        #[test]
        fn stored_records_decode_or_fail_cleanly(k in prop::collection::vec(any::<u8>(), 0..20), v in prop::collection::vec(any::<u8>(), 0..24)) {
            let _ = Contexts::load([(&k[..], &v[..])]);
        }
    }
}
