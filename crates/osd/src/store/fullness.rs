//! A full device never stops the OSD (issue 14): who may take new data, and what happens
//! when this OSD or a follower cannot.
//!
//! - **Space items**: every Raft batch this OSD sends carries one byte saying whether its
//!   device refuses data ([`tessera_wire::msg::SPACE_POOL`]); peers keep the latest word of
//!   each OSD. Nothing depends on the mon for this.
//! - **Writes** (leader): a client write is admitted only if a majority of the group's voters
//!   (of both halves of a joint configuration) takes data; otherwise `NoSpace` naming the
//!   full replicas. A leader whose own device is full while a majority with room exists
//!   answers `Retry` and hands leadership to a caught-up voter with room.
//! - **Appends** (leader): a follower that says it is full is sent only the prefix of an
//!   append whose entries carry no write payload (trims, deletes, configuration changes);
//!   the rest waits, as over a lossy network, while the leader commits with the others.
//!   Exception: when the group has no majority with room without it, it gets everything:
//!   entries admitted before the leader heard that its followers filled up must still
//!   commit, or they would block the log, and the trims behind them, for good. That
//!   overshoot is bounded by the writes admitted during one heartbeat's delay.
//! - **Stalled logs** (leader): entries admitted before the leader heard can still find
//!   both followers below the floor, where they drop them; the log then cannot commit, and
//!   the trims queued behind the data (the only thing that frees space) never apply. A
//!   leader whose commit index has not moved for [`STALLED_AFTER`] while entries wait and no
//!   majority takes data steps aside: it makes a follower whose log ends at the commit
//!   index campaign at once ([`crate::peer::Peer::step_aside`]). That follower wins with
//!   the votes of replicas whose logs are no longer than its own, its log continues the
//!   group, and the uncommitted entries are overwritten: their writes were never
//!   acknowledged, and their clients' retries get `NoSpace`.
//! - **Appends** (follower): only below the free-segment floor, where the engine itself
//!   would refuse, a follower drops such appends (the engine's own reserve stays intact).
//! - **Copies**: a snapshot install starts only if the PG fits under the backfillfull ratio
//!   ([`crate::space::backfill_fits`]); otherwise the replica is reopened from storage (the
//!   ready dropped, as a crash would), the PG is reported as waiting for room, and the
//!   leader's next ticket tries again. A copy that fits under the ratio but not in the free
//!   segments as they are makes the cleaner run (`Store::clean_when_short`): the garbage a
//!   dropped replica left is reclaimed by cleaning, which no write traffic paces here.
//! - **Safety net**: should the engine still answer `NoSpace` for a round, the store does not
//!   stop. It stops submitting, lets the rounds in flight finish, discards what they would
//!   have confirmed and reopens every peer from storage: exactly the state a restart would
//!   see, without the restart (and without the crash loop a restart would enter).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType, Snapshot};
use tessera_engine::PgId;
use tessera_wire::msg::SpaceWord;
use tessera_wire::{OpCode, Request, Status};

use super::Store;
use crate::cmd::Command;
use crate::error::OsdError;
use crate::peer::osd_of;

/// A full leader hands over only after leading this long (elections settle first).
const HAND_OVER_AFTER: Duration = Duration::from_secs(1);
/// A leader steps aside after its commit index stood still this long with no majority
/// taking data (and again at most this often).
const STALLED_AFTER: Duration = Duration::from_secs(2);
/// A replica out of free segments while its live data is under the full ratio (its cleaner
/// reclaiming garbage) makes writes it blocks answer `Retry` for this long, then `NoSpace`.
const RECLAIM_PATIENCE: Duration = Duration::from_secs(10);
/// A PG reported as waiting for room is forgotten after this long without a new attempt.
const WAITING_TTL: Duration = Duration::from_secs(90);
/// A replica waiting for room asks its leader for a new snapshot at most this often.
const ASK_AGAIN: Duration = Duration::from_secs(2);

/// A PG whose copy onto this OSD waits for room.
#[derive(Clone, Debug)]
pub(super) struct Waiting {
    since: Instant,
    /// The size of the copy last offered.
    incoming: u64,
    /// Who offered it (the PG's leader then).
    leader: Option<u32>,
    asked: Option<Instant>,
}

/// Whether a Raft entry carries write payload (a `Write` command: client data or a clone's
/// copy-up). Everything else (trims, deletes, lifecycle ops, empty and configuration entries)
/// is small and frees space or costs none.
fn carries_data(e: &raft::eraftpb::Entry) -> bool {
    e.get_entry_type() == raft::eraftpb::EntryType::EntryNormal
        && Command::decode(&e.data).is_ok_and(|(c, payload)| c.op == OpCode::Write && !payload.is_empty())
}

/// The append's prefix of entries without write payload (`None`: nothing left).
fn without_data(mut m: Message) -> Option<Message> {
    let keep = m.entries.iter().position(carries_data).unwrap_or(m.entries.len());
    if keep == 0 {
        return None;
    }
    m.entries.truncate(keep);
    Some(m)
}

/// The voter a stalled leader `me` steps aside for: one whose log (as far as the leader
/// knows, `matched`) ends at the commit index. Some voter always does (the commit index is
/// the match index of a quorum's last member), and every voter with a log no longer than
/// its own may vote for it: with the commit index at the quorum's median, those are a
/// quorum.
fn step_aside_target(me: u64, voters: &[u64], matched: impl Fn(u64) -> Option<u64>, committed: u64) -> Option<u64> {
    voters.iter().copied().find(|v| *v != me && matched(*v) == Some(committed))
}

/// What a leader does with a client write, from its voters (both halves of a joint
/// configuration) and which of them take data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    Admit,
    /// No majority takes data now, but one will once the replicas out of free segments
    /// have reclaimed garbage (for at most [`RECLAIM_PATIENCE`]): `Retry`.
    Wait,
    /// No majority takes data and waiting would not help: `NoSpace`.
    NoSpace,
}

fn admission(voters: &[u64], outgoing: &[u64], roomy: impl Fn(u64) -> bool, reclaiming: impl Fn(u64) -> bool) -> Admission {
    if majority(voters, &roomy) && majority(outgoing, &roomy) {
        return Admission::Admit;
    }
    let soon = |v: u64| roomy(v) || reclaiming(v);
    if majority(voters, soon) && majority(outgoing, soon) {
        Admission::Wait
    } else {
        Admission::NoSpace
    }
}

/// Whether a majority of `voters` is in `roomy` (an empty half counts as met).
fn majority(voters: &[u64], roomy: impl Fn(u64) -> bool) -> bool {
    voters.is_empty() || voters.iter().filter(|v| roomy(**v)).count() * 2 > voters.len()
}

impl Store {
    /// Whether this OSD's device takes new data now (the full ratio of the map's config and
    /// the free-segment floor).
    pub(super) fn admits_writes(&self) -> bool {
        if !self.cfg.space_checks {
            return true;
        }
        if self.fault_full() {
            return false;
        }
        let (free, total) = self.engine.segments();
        crate::space::admits_writes(self.space_used, free, total, self.map.config.space.full)
    }

    /// Whether this OSD refuses data only until its cleaner reclaims garbage: out of free
    /// segments while its live data is under the full ratio, and the cleaner's last run
    /// (see `clean_when_short`) freed segments (see [`SpaceWord::reclaiming`]).
    pub(super) fn reclaiming(&self) -> bool {
        self.cfg.space_checks
            && !self.fault_full()
            && !self.admits_writes()
            && self.space_used < self.map.config.space.full
            && !self.clean_fruitless.load(std::sync::atomic::Ordering::Acquire)
    }

    /// This OSD's space word for the Raft batches it sends.
    pub(super) fn space_word(&self) -> SpaceWord {
        SpaceWord { refuses_data: !self.admits_writes(), reclaiming: self.reclaiming() }
    }

    /// Keeps the time since which this OSD has been reclaiming current (once per tick).
    pub(super) fn note_reclaiming(&mut self, now: Instant) {
        self.reclaiming_since = if self.reclaiming() { Some(self.reclaiming_since.unwrap_or(now)) } else { None };
    }

    /// Whether OSD `osd` refuses data only while its cleaner reclaims garbage, and has for
    /// less than [`RECLAIM_PATIENCE`]: a write it blocks is worth retrying.
    fn reclaiming_briefly(&self, osd: u32, now: Instant) -> bool {
        let since = if osd == self.osd { self.reclaiming_since } else { self.peer_reclaiming.get(&osd).copied() };
        since.is_some_and(|t| now.saturating_duration_since(t) < RECLAIM_PATIENCE)
    }

    /// Whether OSD `osd` takes data, as far as this OSD knows (its own state for itself;
    /// an OSD that never said otherwise is assumed to).
    fn osd_admits(&self, osd: u32) -> bool {
        if osd == self.osd {
            return self.admits_writes();
        }
        !self.peer_full.get(&osd).copied().unwrap_or(false)
    }

    /// A space item from `from`.
    pub(super) fn on_space_item(&mut self, from: u32, word: SpaceWord) {
        let refuses = word.refuses_data;
        let before = self.peer_full.insert(from, refuses).unwrap_or(false);
        if before != refuses {
            tracing::info!(
                osd = from,
                full = refuses,
                reclaiming = word.reclaiming,
                "peer osd {} new data",
                if refuses { "refuses" } else { "takes" }
            );
        }
        if word.reclaiming {
            self.peer_reclaiming.entry(from).or_insert_with(Instant::now);
        } else {
            self.peer_reclaiming.remove(&from);
        }
    }

    /// For a client write: `None` to go on, or the answer that refuses it (`NoSpace` when no
    /// majority of the PG's voters has room, `Retry` while a full leader hands over).
    pub(super) fn refuse_write(&mut self, req: &Request) -> Option<(Status, String)> {
        if req.op != OpCode::Write {
            return None; // trims, deletes and lifecycle ops free space or cost none
        }
        let me = self.admits_writes();
        if me && !self.peer_full.values().any(|f| *f) {
            return None; // the common case: nobody is full, nothing to work out per write
        }
        let pg = PgId::new(req.pg.pool, req.pg.index);
        // Not the leader (or no replica here): the peer answers NotLeader or NoPg.
        let peer = self.peers.get(&pg).filter(|p| p.is_leader())?;
        let cs = peer.node.raft.prs().conf().to_conf_state();
        let now = Instant::now();
        let roomy = |id: u64| osd_of(id).is_some_and(|o| self.osd_admits(o));
        let reclaiming = |id: u64| osd_of(id).is_some_and(|o| self.reclaiming_briefly(o, now));
        let verdict = admission(&cs.voters, &cs.voters_outgoing, roomy, reclaiming);
        if verdict != Admission::Admit {
            let short: Vec<String> = cs
                .voters
                .iter()
                .chain(&cs.voters_outgoing)
                .filter(|v| !roomy(**v))
                .filter_map(|v| osd_of(*v))
                .map(|o| o.to_string())
                .collect();
            let short = short.join(", osd ");
            return Some(match verdict {
                Admission::Wait => {
                    (Status::Retry, format!("pg {pg}: osd {short} out of free segments until the cleaner reclaims garbage; retry"))
                }
                _ => (
                    Status::NoSpace,
                    format!("pg {pg}: no majority of its replicas has room for new data (full: osd {short}); trims and deletes still work"),
                ),
            });
        }
        if !me {
            return Some((Status::Retry, format!("{}; pg {pg} is handing leadership to a replica with room", self.full_message())));
        }
        None
    }

    fn full_message(&self) -> String {
        let (free, total) = self.engine.segments();
        format!(
            "osd {} is full ({:.0}% live data, full ratio {:.0}%, {free} of {total} segments free); it takes no new data until space is freed",
            self.osd,
            self.space_used * 100.0,
            self.map.config.space.full * 100.0
        )
    }

    /// A full leader hands its PGs to caught-up voters with room (once it has led for
    /// [`HAND_OVER_AFTER`]; one transfer at a time per PG).
    pub(super) fn hand_over_full_leaders(&mut self, now: Instant) {
        if self.admits_writes() {
            return;
        }
        let roomy: HashMap<u32, bool> = self.peer_full.iter().map(|(o, f)| (*o, !f)).collect();
        for p in self.peers.values_mut().filter(|p| p.is_leader()) {
            if p.leading_since.is_none_or(|t| now.duration_since(t) < HAND_OVER_AFTER) || p.node.raft.lead_transferee.is_some() {
                continue;
            }
            let r = &p.node.raft;
            let committed = r.raft_log.committed;
            let to = r.prs().conf().to_conf_state().voters.into_iter().find(|v| {
                *v != r.id
                    && osd_of(*v).is_some_and(|o| roomy.get(&o).copied().unwrap_or(false))
                    && r.prs().get(*v).is_some_and(|pr| pr.matched + 64 >= committed && pr.state == raft::ProgressState::Replicate)
            });
            if let Some(to) = to {
                tracing::info!(pg = %p.pg, to = ?osd_of(to), "this osd is full: handing leadership to a replica with room");
                p.transfer_leader(to);
            }
        }
    }

    /// Leaders whose log stalled because no majority takes data step aside for a follower
    /// whose log ends at the commit index (see the module docs).
    pub(super) fn step_aside_when_data_cannot_commit(&mut self, now: Instant) {
        let me_roomy = self.admits_writes();
        if me_roomy && !self.peer_full.values().any(|f| *f) {
            for p in self.peers.values_mut() {
                p.commit_stalled_for(now); // keeps the stall clock current
            }
            return;
        }
        let me = self.osd;
        let peer_full = &self.peer_full;
        let roomy = |id: u64| osd_of(id).is_some_and(|o| if o == me { me_roomy } else { !peer_full.get(&o).copied().unwrap_or(false) });
        for p in self.peers.values_mut() {
            let stalled = p.commit_stalled_for(now);
            if stalled < STALLED_AFTER || p.stepped_aside.is_some_and(|t| now.duration_since(t) < STALLED_AFTER) {
                continue;
            }
            let r = &p.node.raft;
            let cs = r.prs().conf().to_conf_state();
            if majority(&cs.voters, roomy) && majority(&cs.voters_outgoing, roomy) {
                continue; // data can commit: the stall has another cause
            }
            let committed = r.raft_log.committed;
            let voters: Vec<u64> = cs.voters.iter().chain(&cs.voters_outgoing).copied().collect();
            let Some(to) = step_aside_target(r.id, &voters, |v| r.prs().get(v).map(|pr| pr.matched), committed) else {
                continue;
            };
            tracing::warn!(
                pg = %p.pg,
                to = ?osd_of(to),
                committed,
                last = r.raft_log.last_index(),
                stalled_ms = stalled.as_millis() as u64,
                "no majority takes data and the log stalled: stepping aside for a replica whose log ends at the commit index"
            );
            self.counters.step_asides += 1;
            p.step_aside(to, now);
        }
    }

    /// Whether the engine has free segments above the floor below which it would refuse
    /// data ([`crate::space::min_free_segments`]): the follower's hard limit.
    fn above_floor(&self) -> bool {
        let (free, total) = self.engine.segments();
        !self.cfg.space_checks || (!self.fault_full() && free >= crate::space::min_free_segments(total))
    }

    /// The fault control file says to act as if the device were full (tests only).
    fn fault_full(&self) -> bool {
        self.cfg.faults.as_ref().is_some_and(|f| f.settings().space_full)
    }

    /// Follower side: below the free-segment floor, keeps only the prefix of an append that
    /// carries no write payload; `None`: drop the message.
    pub(super) fn filter_append(&self, m: Message) -> Option<Message> {
        if m.get_msg_type() != MessageType::MsgAppend || m.entries.is_empty() || self.above_floor() {
            return Some(m);
        }
        without_data(m)
    }

    /// Leader side: appends to followers that said they are full keep only their prefix
    /// without write payload, unless the group has no majority with room without them
    /// (see the module docs).
    pub(super) fn hold_data_for_full(&self, msgs: Vec<(PgId, Message)>) -> Vec<(PgId, Message)> {
        if !self.peer_full.values().any(|f| *f) {
            return msgs;
        }
        msgs.into_iter()
            .filter_map(|(pg, m)| {
                let to = osd_of(m.to)?;
                if m.get_msg_type() != MessageType::MsgAppend || m.entries.is_empty() || self.osd_admits(to) {
                    return Some((pg, m));
                }
                let needed = self.peers.get(&pg).is_some_and(|p| {
                    let cs = p.node.raft.prs().conf().to_conf_state();
                    let roomy = |id: u64| osd_of(id).is_some_and(|o| self.osd_admits(o));
                    !(majority(&cs.voters, roomy) && majority(&cs.voters_outgoing, roomy))
                });
                if needed {
                    return Some((pg, m));
                }
                without_data(m).map(|m| (pg, m))
            })
            .collect()
    }

    /// Whether the snapshot's PG copy fits on this device; if not, the PG is recorded as
    /// waiting for room (reported to the mon) and `false` returned.
    pub(super) fn install_fits(&mut self, pg: PgId, snap: &Snapshot) -> bool {
        // Short of space, one copy at a time: each reclaims its old copy's room first.
        let short = self.space_used >= self.map.config.space.nearfull || !self.admits_writes();
        if short && self.peers.values().any(|p| p.installing_snapshot() && p.pg != pg) {
            let leader = self.peers.get(&pg).and_then(|p| p.leader_osd());
            self.wait_for_room(pg, 0, leader);
            return false;
        }
        let incoming = crate::snapshot::Ticket::decode(&snap.data).map_or(0, |t| t.blocks) * tessera_engine::BLOCK;
        let current: u64 = self.engine.volume_usage(pg).iter().map(|(_, u)| u.unique_blocks).sum::<u64>() * tessera_engine::BLOCK;
        let live = self.engine.live_blocks() * tessera_engine::BLOCK;
        let capacity = self.engine.capacity_bytes();
        let ratio = self.map.config.space.backfillfull;
        // A copy that shrinks the PG makes room (the old copy is dropped and its space
        // reclaimed first); a larger one must fit under the ratio and in the free segments
        // as they are (dropped blocks are reclaimed only by cleaning, which needs room).
        let (free, total) = self.engine.segments();
        let free_bytes = free.saturating_sub(crate::space::min_free_segments(total)) * self.engine.segment_bytes();
        let under_ratio = crate::space::backfill_fits(live, current, incoming, capacity, ratio);
        let fits = incoming <= current || !self.cfg.space_checks || (under_ratio && incoming - current <= free_bytes);
        if fits {
            self.backfill_waiting.remove(&pg);
            self.copy_waits_for_segments = false;
            return true;
        }
        // Room by the ratio but not in the free segments: garbage (a dropped replica's old
        // blocks, say) waits for the cleaner, which no write traffic paces here.
        self.copy_waits_for_segments |= under_ratio;
        let leader = self.peers.get(&pg).and_then(|p| p.leader_osd());
        let first = !self.backfill_waiting.contains_key(&pg);
        self.wait_for_room(pg, incoming, leader);
        if first {
            tracing::warn!(
                %pg,
                incoming_mib = incoming >> 20,
                used_pct = (100 * live / capacity.max(1)),
                backfillfull_pct = (ratio * 100.0) as u64,
                "not copying in this PG: it would take the device past its backfillfull ratio; waiting for room"
            );
        }
        false
    }

    /// Drops the kept-aside snapshot of `pg` by reopening its replica from storage.
    pub(super) fn defer_install(&mut self, pg: PgId) -> Result<(), OsdError> {
        if let Some(mut peer) = self.peers.remove(&pg) {
            peer.abandon(self.map.epoch, None);
        }
        self.open_peer(pg)
    }

    /// Records that `pg`'s copy of `incoming` bytes offered by `leader` waits for room.
    pub(super) fn wait_for_room(&mut self, pg: PgId, incoming: u64, leader: Option<u32>) {
        let now = Instant::now();
        let w = self.backfill_waiting.entry(pg).or_insert(Waiting { since: now, incoming, leader, asked: None });
        w.since = now;
        w.incoming = w.incoming.max(incoming);
        w.leader = leader.or(w.leader);
    }

    /// PGs whose copy waits for room (stale entries dropped).
    pub(super) fn waiting_for_room(&mut self, now: Instant) -> Vec<PgId> {
        self.backfill_waiting.retain(|_, w| now.duration_since(w.since) < WAITING_TTL);
        self.copy_waits_for_segments &= !self.backfill_waiting.is_empty();
        self.backfill_waiting.keys().copied().collect()
    }

    /// A waiting copy that fits now (or one held back only because another copy ran) is
    /// asked for again: the leader is told the last snapshot failed (raft-rs's snapshot
    /// status report), so it sends a new one at once instead of after its patience runs out.
    pub(super) fn ask_again_when_room(&mut self, now: Instant) {
        let live = self.engine.live_blocks() * tessera_engine::BLOCK;
        let capacity = self.engine.capacity_bytes();
        let ratio = self.map.config.space.backfillfull;
        let copying = self.peers.values().any(|p| p.installing_snapshot());
        let mut reports = Vec::new();
        for (pg, w) in self.backfill_waiting.iter_mut() {
            if copying || w.asked.is_some_and(|t| now.duration_since(t) < ASK_AGAIN) {
                continue;
            }
            let current: u64 = self.engine.volume_usage(*pg).iter().map(|(_, u)| u.unique_blocks).sum::<u64>() * tessera_engine::BLOCK;
            let (Some(leader), true) = (w.leader, crate::space::backfill_fits(live, current, w.incoming, capacity, ratio)) else {
                continue;
            };
            w.asked = Some(now);
            let mut m =
                Message { from: crate::peer::raft_id(self.osd), to: crate::peer::raft_id(leader), reject: true, ..Default::default() };
            m.set_msg_type(MessageType::MsgSnapStatus);
            reports.push((*pg, m));
        }
        if !reports.is_empty() {
            tracing::info!(osd = self.osd, pgs = ?reports.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(), "room for waiting copies: asking their leaders again");
            self.send(reports);
        }
    }

    /// A replica's word that the snapshot it was sent was not installed (it waits for room):
    /// the leader sends a new one.
    pub(super) fn on_snapshot_refused(&mut self, pg: PgId, from: u32) {
        if let Some(p) = self.peers.get_mut(&pg).filter(|p| p.is_leader()) {
            let id = crate::peer::raft_id(from);
            if p.node.raft.prs().get(id).is_some_and(|pr| pr.state == raft::ProgressState::Snapshot) {
                p.node.report_snapshot(id, raft::SnapshotStatus::Failure);
            }
        }
    }

    /// The engine refused a round for lack of space: stop submitting until every round in
    /// flight is back, then reopen every peer from storage (see the module docs).
    pub(super) fn on_round_without_space(&mut self, e: &tessera_engine::EngineError) -> Result<(), OsdError> {
        if !self.round_refused {
            tracing::warn!(osd = self.osd, "the engine refused a round for lack of space ({e}); reopening the PG replicas from storage");
            self.counters.no_space_rounds += 1;
        }
        self.round_refused = true;
        self.reopen_if_drained()
    }

    /// The engine refused a round because a log entry's payload no longer matched the
    /// end-to-end checksums it came with (changed in this process's memory after it was
    /// received and checked): nothing of that transaction was stored. As after a round
    /// without space, the peers are reopened from storage and Raft sends the entries again.
    pub(super) fn on_round_with_bad_payload(&mut self, e: &tessera_engine::EngineError) -> Result<(), OsdError> {
        tracing::error!(osd = self.osd, "the engine refused a round: {e}; reopening the PG replicas from storage");
        self.counters.bad_payload_rounds += 1;
        self.round_refused = true;
        self.reopen_if_drained()
    }

    /// Once no round is in flight after a refused one, reopens every peer from storage.
    pub(super) fn reopen_if_drained(&mut self) -> Result<(), OsdError> {
        if !self.round_refused || !self.inflight.is_empty() {
            return Ok(());
        }
        let epoch = self.map.epoch;
        let pgs: Vec<PgId> = self.peers.iter().filter(|(_, p)| !p.installing()).map(|(pg, _)| *pg).collect();
        for pg in &pgs {
            if let Some(mut peer) = self.peers.remove(pg) {
                peer.abandon(epoch, None);
            }
            self.open_peer(*pg)?;
        }
        self.round_refused = false;
        tracing::info!(osd = self.osd, pgs = pgs.len(), "PG replicas reopened after a refused round");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    #[test]
    fn only_write_commands_carry_data_and_majorities_cover_both_halves() {
        let cmd = |op| Command {
            op,
            key: tessera_engine::ObjectKey { volume: 1, object: 2, snap: tessera_engine::SNAP_HEAD },
            offset: 0,
            len: 4096,
            client: 1,
            seq: 1,
            floor: 0,
            snapc: 0,
        };
        let entry = |data: Vec<u8>| Entry { data: data.into(), ..Default::default() };
        assert!(carries_data(&entry(cmd(OpCode::Write).encode(&[7u8; 4096], std::iter::empty()))));
        assert!(!carries_data(&entry(cmd(OpCode::WriteZeroes).encode(&[], std::iter::empty()))));
        assert!(!carries_data(&entry(cmd(OpCode::Delete).encode(&[], std::iter::empty()))));
        assert!(!carries_data(&entry(Vec::new())), "the empty entry of a new leader");
        assert!(majority(&[1, 2, 3], |v| v != 3) && !majority(&[1, 2, 3], |v| v == 1));
        assert!(majority(&[], |_| false), "no outgoing half");
        assert!(!majority(&[1, 2], |v| v == 1), "one of two is no majority");
    }

    #[test]
    fn writes_wait_for_reclaiming_replicas_and_get_no_space_only_when_waiting_cannot_help() {
        let roomy = |set: &'static [u64]| move |v: u64| set.contains(&v);
        assert_eq!(admission(&[1, 2, 3], &[], roomy(&[1, 2]), roomy(&[])), Admission::Admit);
        assert_eq!(admission(&[1, 2, 3], &[], roomy(&[1]), roomy(&[2])), Admission::Wait, "one cleaner away from a majority");
        assert_eq!(admission(&[1, 2, 3], &[], roomy(&[1]), roomy(&[])), Admission::NoSpace);
        assert_eq!(admission(&[1, 2, 3], &[], roomy(&[]), roomy(&[3])), Admission::NoSpace, "one reclaiming is no majority");
        // Joint configuration: both halves must get there.
        assert_eq!(admission(&[1, 2, 3], &[3, 4, 5], roomy(&[1, 2]), roomy(&[4])), Admission::NoSpace);
        assert_eq!(admission(&[1, 2, 3], &[3, 4, 5], roomy(&[1, 2, 5]), roomy(&[4])), Admission::Wait);
    }

    #[test]
    fn a_stalled_leader_steps_aside_for_a_voter_whose_log_ends_at_the_commit_index() {
        // Leader 1 at last 78, commit 73; followers at 73 and 70.
        let matched = |v| [(1, 78), (2, 70), (3, 73)].iter().find(|(id, _)| *id == v).map(|(_, m)| *m);
        assert_eq!(step_aside_target(1, &[1, 2, 3], matched, 73), Some(3));
        assert_eq!(step_aside_target(1, &[1, 2, 3], matched, 74), None, "nobody ends there");
        assert_eq!(step_aside_target(3, &[1, 2, 3], matched, 73), None, "never itself");
    }
}
