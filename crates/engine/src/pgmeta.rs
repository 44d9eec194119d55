//! Typed per-PG metadata records stored in the engine's PG-scoped metadata (`MetaScope::Pg`),
//! so they are dropped with the PG and written atomically with the log entries and applies
//! of the same transaction.
//!
//! | key          | record       | written when                                   |
//! |--------------|--------------|------------------------------------------------|
//! | `hardstate`  | [`HardState`]  | Raft term/vote/commit change (with the append) |
//! | `applied`    | `u64`        | after applying entries (same txn as the applies) |
//! | `membership` | [`Membership`] | a configuration change is applied             |

use crate::codec::{Dec, Enc};
use crate::error::FormatError;
use crate::ids::{MetaScope, PgId};
use crate::txn::Op;
use crate::Engine;
use bytes::Bytes;

const HARD_STATE: &[u8] = b"hardstate";
const APPLIED: &[u8] = b"applied";
/// The metadata key of the applied index (read by the engine itself when pinning).
pub(crate) const APPLIED_KEY: &[u8] = APPLIED;
const MEMBERSHIP: &[u8] = b"membership";
const VERSION: u8 = 1;

/// Raft's persistent per-replica state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Replica ids (OSD ids) of a PG's Raft group; `outgoing` is non-empty during a joint
/// consensus change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub outgoing: Vec<u64>,
}

fn list(e: &mut Enc, v: &[u64]) {
    e.u32(v.len() as u32);
    v.iter().for_each(|x| e.u64(*x));
}

fn get_list(d: &mut Dec) -> Result<Vec<u64>, FormatError> {
    let n = d.count(8)?;
    (0..n).map(|_| d.u64()).collect()
}

fn header(d: &mut Dec) -> Result<(), FormatError> {
    match d.u8()? {
        VERSION => Ok(()),
        v => Err(FormatError::BadVersion { what: "pg metadata", version: v as u16 }),
    }
}

impl HardState {
    pub fn encode(&self) -> Bytes {
        let mut e = Enc::default();
        e.u8(VERSION);
        e.u64(self.term);
        e.u64(self.vote);
        e.u64(self.commit);
        e.buf.into()
    }
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let mut d = Dec::new(b, "hard state");
        header(&mut d)?;
        let hs = HardState { term: d.u64()?, vote: d.u64()?, commit: d.u64()? };
        d.finish()?;
        Ok(hs)
    }
}

impl Membership {
    pub fn encode(&self) -> Bytes {
        let mut e = Enc::default();
        e.u8(VERSION);
        list(&mut e, &self.voters);
        list(&mut e, &self.learners);
        list(&mut e, &self.outgoing);
        e.buf.into()
    }
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let mut d = Dec::new(b, "membership");
        header(&mut d)?;
        let m = Membership { voters: get_list(&mut d)?, learners: get_list(&mut d)?, outgoing: get_list(&mut d)? };
        d.finish()?;
        Ok(m)
    }
}

fn put(pg: PgId, key: &'static [u8], value: Bytes) -> Op {
    Op::MetaPut { scope: MetaScope::Pg(pg), key: Bytes::from_static(key), value }
}

/// An op that stores the PG's hard state.
pub fn put_hard_state(pg: PgId, hs: HardState) -> Op {
    put(pg, HARD_STATE, hs.encode())
}

/// An op that stores the PG's applied index.
pub fn put_applied(pg: PgId, index: u64) -> Op {
    put(pg, APPLIED, Bytes::copy_from_slice(&index.to_le_bytes()))
}

/// An op that stores the PG's membership.
pub fn put_membership(pg: PgId, m: &Membership) -> Op {
    put(pg, MEMBERSHIP, m.encode())
}

impl Engine {
    /// The stored hard state, `None` if never written.
    pub fn hard_state(&self, pg: PgId) -> Result<Option<HardState>, FormatError> {
        self.meta_get(MetaScope::Pg(pg), HARD_STATE).map(|b| HardState::decode(&b)).transpose()
    }
    /// The stored applied index (0 if never written).
    pub fn applied_index(&self, pg: PgId) -> Result<u64, FormatError> {
        match self.meta_get(MetaScope::Pg(pg), APPLIED) {
            None => Ok(0),
            Some(b) => Ok(u64::from_le_bytes(
                b[..].try_into().map_err(|_| FormatError::Invalid { what: "applied index", why: format!("{} bytes", b.len()) })?,
            )),
        }
    }
    /// The stored membership, `None` if never written.
    pub fn membership(&self, pg: PgId) -> Result<Option<Membership>, FormatError> {
        self.meta_get(MetaScope::Pg(pg), MEMBERSHIP).map(|b| Membership::decode(&b)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EngineConfig, FaultDevice, FormatOptions, LogEntry, Txn};
    use std::sync::Arc;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let hs = HardState { term: 3, vote: 2, commit: 9 };
        assert_eq!(HardState::decode(&hs.encode()).unwrap(), hs);
        let m = Membership { voters: vec![1, 2, 3], learners: vec![4], outgoing: vec![] };
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
        assert!(HardState::decode(&[2, 0, 0]).is_err());
        assert!(Membership::decode(&[1, 255, 255, 255, 255]).is_err());
        let mut long = hs.encode().to_vec();
        long.push(0);
        assert!(HardState::decode(&long).is_err(), "trailing bytes");
    }

    #[test]
    fn raft_state_is_atomic_with_the_append_and_survives_power_cut() {
        let dev = Arc::new(FaultDevice::new(65536 + 16 * 65536, 4));
        let pg = PgId::new(2, 7);
        let e = Engine::create(dev.clone(), FormatOptions { segment_size: 65536 }, EngineConfig::default()).unwrap();
        let members = Membership { voters: vec![1, 2, 3], ..Default::default() };
        let entry = LogEntry { index: 1, term: 5, meta: Bytes::from_static(b"cmd"), data: Bytes::new(), crcs: Vec::new() };
        e.commit(
            Txn::new()
                .with(Op::LogAppend { pg, entries: vec![entry] })
                .with(put_hard_state(pg, HardState { term: 5, vote: 1, commit: 1 }))
                .with(put_membership(pg, &members))
                .with(put_applied(pg, 1)),
        )
        .unwrap();
        dev.power_cut();
        drop(e);
        dev.restart();
        let e = Engine::open(dev, EngineConfig::default()).unwrap();
        assert_eq!(e.hard_state(pg).unwrap(), Some(HardState { term: 5, vote: 1, commit: 1 }));
        assert_eq!(e.membership(pg).unwrap(), Some(members));
        assert_eq!(e.applied_index(pg).unwrap(), 1);
        assert_eq!(e.log_bounds(pg).unwrap().last, 1);
        assert_eq!(e.hard_state(PgId::new(2, 8)).unwrap(), None);
    }
}
