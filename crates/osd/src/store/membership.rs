//! Which PG replicas this OSD hosts: opening them, creating them as the map (or a leader)
//! asks, dropping them on a leader's tombstone, and leaders moving their groups towards the
//! map's replica sets.

use bytes::Bytes;
use raft::eraftpb::MessageType;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tessera_engine::{EngineError, MetaScope, Op, PgId, Txn};
use tessera_mon::model::ClusterMap;

use super::Store;
use crate::error::OsdError;
use crate::peer::Peer;
use crate::storage::PgStorage;

const PG_KEY_PREFIX: &str = "pg/";

/// Global metadata key that records that this OSD hosts a replica of `pg`.
pub(super) fn pg_key(pg: PgId) -> String {
    format!("{PG_KEY_PREFIX}{}.{}", pg.pool, pg.index)
}

pub(super) fn parse_pg_key(k: &[u8]) -> Option<PgId> {
    let s = std::str::from_utf8(k).ok()?.strip_prefix(PG_KEY_PREFIX)?;
    let (a, b) = s.split_once('.')?;
    Some(PgId::new(a.parse().ok()?, b.parse().ok()?))
}

impl Store {
    pub(super) fn open_peer(&mut self, pg: PgId) -> Result<(), OsdError> {
        let storage = PgStorage::open(self.engine.clone(), pg, self.osd)?;
        // Never past the stored commit index (raft-rs refuses to start otherwise); applies
        // are idempotent, so replaying a few is harmless.
        let commit = storage.hard_state().commit;
        let applied = self.engine.applied_index(pg).map_err(EngineError::from)?.min(commit);
        let mut peer = Peer::open(pg, self.osd, storage, applied).map_err(|source| OsdError::Raft { pg, source })?;
        peer.lease_reads = self.cfg.lease_reads;
        self.peers.insert(pg, peer);
        Ok(())
    }

    /// Creates the replica of a PG the map assigns to this OSD. A PG that never moved since
    /// its pool was created is bootstrapped with its initial replicas as voters; otherwise
    /// the replica starts empty and waits for the group's leader.
    pub(super) fn create_peer(&mut self, pg: PgId, voters: Option<&[u32]>) -> Result<(), OsdError> {
        self.create_peers(vec![(pg, voters.map(<[u32]>::to_vec))])
    }

    /// Creates several replicas with one engine transaction (one fsync however many PGs a
    /// map change brings).
    pub(super) fn create_peers(&mut self, new: Vec<(PgId, Option<Vec<u32>>)>) -> Result<(), OsdError> {
        if new.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new();
        for (pg, voters) in &new {
            txn.push(Op::MetaPut { scope: MetaScope::Global, key: Bytes::from(pg_key(*pg)), value: Bytes::from_static(b"1") });
            if let Some(voters) = voters {
                txn.ops.extend(Peer::bootstrap_ops(*pg, voters).0);
            }
        }
        self.engine.commit(txn)?;
        for (pg, voters) in new {
            tracing::info!(%pg, bootstrap = voters.is_some(), "pg replica created");
            self.open_peer(pg)?;
        }
        Ok(())
    }

    pub(super) fn apply_map(&mut self, map: Arc<ClusterMap>) -> Result<(), OsdError> {
        if map.epoch < self.map.epoch {
            return Ok(());
        }
        let addrs: HashMap<u32, String> = map.osds.iter().map(|o| (o.id, o.addr.clone())).collect();
        self.transport.set_peers(&addrs);
        let mut new = Vec::new();
        for table in &map.pg_tables {
            let Some(pool) = map.pool(table.pool_id) else { continue };
            for (i, entry) in table.pgs.iter().enumerate() {
                let pg = PgId::new(table.pool_id, i as u32);
                if !entry.osds().contains(&self.osd) || self.peers.contains_key(&pg) || self.repairing.contains_key(&pg) {
                    continue;
                }
                let bootstrap = entry.epoch() == pool.created_epoch;
                new.push((pg, bootstrap.then(|| entry.osds().to_vec())));
            }
        }
        self.create_peers(new)?;
        *self.shared_map.write() = map.clone();
        self.map = map;
        Ok(())
    }

    /// A message from a leader for a PG this OSD does not host yet: the leader has a newer
    /// map that adds this OSD (the map will arrive here shortly). The replica is created now,
    /// empty unless the PG bootstraps here, so the leader's snapshot ticket is not lost.
    /// Returns whether the PG is hosted now.
    pub(super) fn adopt(&mut self, pg: PgId, kind: MessageType, from: u32) -> Result<bool, OsdError> {
        let from_leader = matches!(kind, MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot);
        if !from_leader {
            tracing::debug!(%pg, from, "raft message for a pg not hosted here");
            return Ok(false);
        }
        let bootstrap = self
            .map
            .pool(pg.pool)
            .zip(self.map.pg_table(pg.pool).and_then(|t| t.pgs.get(pg.index as usize)))
            .and_then(|(pool, e)| (e.epoch() == pool.created_epoch && e.osds().contains(&self.osd)).then(|| e.osds().to_vec()));
        tracing::info!(%pg, leader = from, "creating a replica on the leader's request");
        self.create_peer(pg, bootstrap.as_deref())?;
        Ok(true)
    }

    /// The PG's leader (at `term`) says this replica is no longer a member. It is destroyed
    /// unless the map still places the PG here (the leader is about to add it back) or this
    /// replica has seen a newer term (the sender is a stale leader, e.g. one that was paused
    /// while the group moved on and may have re-added this replica).
    pub(super) fn on_tombstone(&mut self, pg: PgId, term: u64, from: u32) -> Result<(), OsdError> {
        let listed = self.map.pg_table(pg.pool).and_then(|t| t.pgs.get(pg.index as usize)).is_some_and(|e| e.osds().contains(&self.osd));
        let newer = self.peers.get(&pg).is_some_and(|p| p.node.raft.term > term);
        if listed || newer || !self.peers.contains_key(&pg) {
            return Ok(());
        }
        let Some(mut peer) = self.peers.remove(&pg) else { return Ok(()) };
        peer.abandon(self.map.epoch, None);
        // An install (or repair) still copying must not write after the drop: a retried
        // install would wipe a re-created replica's log, its last step would write back an
        // older term and vote (issue 16).
        self.withdraw_install(pg);
        let txn = Txn::new()
            .with(Op::DropPg { pg })
            .with(Op::MetaDelete { scope: MetaScope::Global, key: Bytes::from(pg_key(pg)) })
            .with(Op::MetaDelete { scope: MetaScope::Global, key: crate::repair::damaged_key(pg) });
        self.engine.commit(txn)?;
        self.damaged.remove(&pg);
        self.counters.replicas_dropped += 1;
        tracing::info!(%pg, leader = from, term, "replica removed from the group: dropped its data");
        Ok(())
    }

    /// Leaders move their groups towards the map's replica sets.
    pub(super) fn reconcile(&mut self) {
        let map = self.map.clone();
        let now = Instant::now();
        for p in self.peers.values_mut().filter(|p| p.is_leader()) {
            p.retry_stuck_snapshots(now);
            if let Some(entry) = map.pg_table(p.pg.pool).and_then(|t| t.pgs.get(p.pg.index as usize)) {
                p.reconcile(entry.osds());
            }
        }
    }
}
