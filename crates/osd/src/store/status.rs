//! What the store publishes about itself every tick: per-PG Raft state, counters, space.

use raft::StateRole;
use tessera_engine::PgId;

use super::Store;
use crate::peer::osd_of;

/// What one PG replica looks like from outside (published every tick).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgStatus {
    pub pg: PgId,
    pub role: &'static str,
    pub leader: Option<u32>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u32>,
    pub learners: Vec<u32>,
    /// The old voters while a joint-consensus change is in progress (else empty).
    pub outgoing: Vec<u32>,
    /// For a leader: each other replica's matched log index.
    pub matched: Vec<(u32, u64)>,
    pub last_index: u64,
}

/// Counters since the OSD started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Log entries sent to followers (appends, including catch-up of a lagging replica).
    pub entries_sent: u64,
    /// Snapshots sent to replicas that were behind the log.
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub snapshot_bytes: u64,
    /// Log compactions (each discards at least a tenth of the kept entries of one PG).
    pub compactions: u64,
    /// Replicas dropped on a leader's tombstone.
    pub replicas_dropped: u64,
    /// PG replicas found holding corrupt data (marked damaged).
    pub damage_found: u64,
    /// Damaged PG replicas repaired (reinstalled from a healthy replica).
    pub repairs: u64,
    /// Rounds the engine refused for lack of space (each made the store reopen its peers).
    pub no_space_rounds: u64,
    /// Rounds the engine refused because a payload did not match its end-to-end checksums
    /// (each made the store reopen its peers).
    pub bad_payload_rounds: u64,
    /// Leaders that stepped aside because their log stalled with no majority taking data
    /// (see `store/fullness.rs`).
    pub step_asides: u64,
}

#[derive(Clone, Debug, Default)]
pub struct StoreStatus {
    pub epoch: u64,
    pub pgs: Vec<PgStatus>,
    pub counters: Counters,
    /// Fraction of the device's capacity held by live blocks (see [`crate::space`]).
    pub space_used: f64,
    /// Free and total engine segments.
    pub segments: (u64, u64),
    /// PGs marked damaged here (corrupt data found, repair pending or under way).
    pub damaged: Vec<PgId>,
    /// PGs being reinstalled from a healthy replica right now.
    pub repairing: Vec<PgId>,
    /// Bytes held by live blocks, and the device's capacity.
    pub live_bytes: u64,
    pub capacity_bytes: u64,
    /// The device takes no new data (full ratio, or out of free segments).
    pub refuses_data: bool,
    /// PGs whose copy onto this OSD waits for room.
    pub backfill_waiting: Vec<PgId>,
}

impl Store {
    pub(super) fn publish_status(&mut self) {
        let backfill_waiting = self.waiting_for_room(std::time::Instant::now());
        let pgs = self
            .peers
            .values()
            .map(|p| {
                let r = &p.node.raft;
                let cs = p.node.store().conf_state();
                let matched = if r.state == StateRole::Leader {
                    r.prs().iter().filter(|(id, _)| **id != r.id).filter_map(|(id, pr)| Some((osd_of(*id)?, pr.matched))).collect()
                } else {
                    Vec::new()
                };
                PgStatus {
                    pg: p.pg,
                    role: match r.state {
                        StateRole::Leader => "leader",
                        StateRole::Follower => "follower",
                        StateRole::Candidate => "candidate",
                        StateRole::PreCandidate => "precandidate",
                    },
                    leader: osd_of(r.leader_id),
                    term: r.term,
                    commit: r.raft_log.committed,
                    applied: p.durable_applied,
                    voters: cs.voters.iter().filter_map(|v| osd_of(*v)).collect(),
                    learners: cs.learners.iter().filter_map(|v| osd_of(*v)).collect(),
                    outgoing: cs.voters_outgoing.iter().filter_map(|v| osd_of(*v)).collect(),
                    matched,
                    last_index: r.raft_log.last_index(),
                }
            })
            .collect();
        *self.status.lock() = StoreStatus {
            epoch: self.map.epoch,
            pgs,
            counters: self.counters,
            space_used: self.space_used,
            segments: self.engine.segments(),
            damaged: self.damaged.keys().copied().collect(),
            repairing: self.repairing.keys().copied().collect(),
            live_bytes: self.engine.live_blocks() * tessera_engine::BLOCK,
            capacity_bytes: self.engine.capacity_bytes(),
            refuses_data: !self.admits_writes(),
            backfill_waiting,
        };
    }
}
