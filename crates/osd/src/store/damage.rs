//! The store's side of repairing a damaged PG replica: marking the damage, handing
//! leadership over, asking the leader for a ticket, serving tickets as leader, and
//! reinstalling. The protocol, and why each step is safe, is in [`crate::repair`].

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Snapshot;
use std::time::{Duration, Instant};
use tessera_engine::{MetaScope, Op, PgId, Txn};
use tessera_wire::{OpCode, Request, Response, Status};

use super::{Event, Store};
use crate::error::OsdError;
use crate::peer::{osd_of, raft_id};
use crate::repair::{damaged_key, handover_target, parse_damaged_key, quorum_without, ticket_covers_log};
use crate::reply::Reply;
use crate::snapshot::{Rpc, Ticket};

/// How often a damaged follower asks its leader for a ticket.
const ASK_EVERY: Duration = Duration::from_millis(500);
/// How long a leader counts a follower as repairing after its last ticket request (it asks
/// every [`ASK_EVERY`] while it waits).
const REPAIRING_FOR: Duration = Duration::from_secs(10);
/// How often a damaged leader tries again to hand over (raft-rs abandons a transfer that
/// did not complete within an election timeout).
const HANDOVER_EVERY: Duration = Duration::from_secs(1);
/// A damaged leader hands over only after leading this long: damaged followers (e.g. the
/// leader that just handed over to it) have announced themselves with ticket requests by
/// then, so leadership does not bounce between damaged replicas.
const HANDOVER_GRACE: Duration = Duration::from_secs(1);
/// How long a leader waits for its applied index to reach the requester's last index.
const APPLY_WAIT: Duration = Duration::from_secs(3);
/// Longest silence while waiting for a ticket (the leader reads its whole image first).
const TICKET_PATIENCE: Duration = Duration::from_secs(600);
/// Longest wait for reads this replica dispatched as leader before its data is dropped. A
/// client attempt gives up well before (and then ignores a late answer).
const READS_DRAIN: Duration = Duration::from_secs(10);

/// Repair state of a damaged replica, in memory (the damage mark itself is durable).
#[derive(Default)]
pub(super) struct Damage {
    /// A ticket request is under way: the replica takes no new log entries meanwhile, so its
    /// last index stays what it told the leader.
    pub(super) asking: bool,
    /// The leader asked: entries from another OSD (a newer leader, elected because the
    /// asked one hangs or is cut off) end the wait, so the survivors keep a quorum.
    pub(super) asked: Option<u32>,
    asked_at: Option<Instant>,
    handed_at: Option<Instant>,
}

fn shorten(s: &str) -> String {
    s.chars().take(400).collect()
}

impl Store {
    /// Loads the damage marks at startup (their PGs repair as soon as they know a leader);
    /// marks of PGs no longer hosted here are deleted.
    pub(super) fn load_damage(&mut self) -> Result<(), OsdError> {
        let mut stale = Txn::new();
        for (key, note) in self.engine.meta_scan(MetaScope::Global) {
            let Some(pg) = parse_damaged_key(&key) else { continue };
            if self.peers.contains_key(&pg) {
                tracing::info!("pg {pg} damaged on osd {} ({}): it will be repaired", self.osd, String::from_utf8_lossy(&note));
                self.damaged.insert(pg, Damage::default());
            } else {
                stale.push(Op::MetaDelete { scope: MetaScope::Global, key });
            }
        }
        if !stale.is_empty() {
            self.engine.commit(stale)?;
        }
        Ok(())
    }

    /// A checksum failure in this replica's data of `pg` (`what` says where). The mark is
    /// durable before anything else happens. `reply`: the client read that hit it, answered
    /// `Retry` while a healthy replica can take over (or already leads), `Io` otherwise.
    pub(super) fn on_damaged(&mut self, pg: PgId, what: String, reply: Option<Reply>) -> Result<(), OsdError> {
        let epoch = self.map.epoch;
        if let Some(source) = self.repairing.get(&pg) {
            if let Some(r) = reply {
                r.not_leader(Some(*source), epoch);
            }
            return Ok(());
        }
        if !self.peers.contains_key(&pg) {
            if let Some(r) = reply {
                r.error(Status::NoPg, epoch, format!("osd {} has no replica of pg {pg}", self.osd));
            }
            return Ok(());
        }
        if !self.damaged.contains_key(&pg) {
            let mark = Op::MetaPut { scope: MetaScope::Global, key: damaged_key(pg), value: Bytes::from(shorten(&what)) };
            self.engine.commit(Txn::new().with(mark))?;
            self.damaged.insert(pg, Damage::default());
            self.counters.damage_found += 1;
            tracing::info!("pg {pg} damaged on osd {} ({what})", self.osd);
        }
        self.hand_over(pg, Instant::now());
        let Some(reply) = reply else { return Ok(()) };
        let p = &self.peers[&pg];
        if !p.is_leader() {
            reply.not_leader(p.leader_osd(), epoch);
        } else if p.node.raft.lead_transferee.is_some() || self.handover_target(pg).is_some() {
            reply.error(Status::Retry, epoch, format!("pg {pg}: corrupt data on osd {}; leadership moves to a healthy replica", self.osd));
        } else {
            reply.error(
                Status::Io,
                epoch,
                format!("pg {pg}: {} on osd {}, and no healthy replica can take over", shorten(&what), self.osd),
            );
        }
        Ok(())
    }

    /// Replicas whose log holds an entry they cannot read (its payload failed its checksum,
    /// see `PgStorage::log_damage`) are marked damaged: they are rebuilt like any other.
    pub(super) fn mark_log_damage(&mut self) -> Result<(), OsdError> {
        let found: Vec<(PgId, String)> = self
            .peers
            .iter()
            .filter(|(pg, _)| !self.damaged.contains_key(*pg))
            .filter_map(|(pg, p)| p.node.store().log_damage().map(|w| (*pg, w.to_string())))
            .collect();
        for (pg, what) in found {
            self.on_damaged(pg, format!("{what} (a log entry it still had to apply or send)"), None)?;
        }
        Ok(())
    }

    /// The voter this OSD, leading damaged `pg`, would hand leadership to.
    fn handover_target(&self, pg: PgId) -> Option<u64> {
        let p = self.peers.get(&pg).filter(|p| p.is_leader())?;
        let raft = &p.node.raft;
        let voters = raft.prs().conf().to_conf_state().voters;
        let now = Instant::now();
        // Neither a replica under repair nor one the leader has not heard from lately (a
        // transfer to a down voter blocks proposals until it times out).
        let repairing = |id: u64| {
            osd_of(id).and_then(|o| self.repair_requests.get(&(pg, o))).is_some_and(|t| now.duration_since(*t) < REPAIRING_FOR)
                || !raft.prs().get(id).is_some_and(|pr| pr.recent_active)
        };
        handover_target(raft.id, &voters, |id| raft.prs().get(id).map_or(0, |pr| pr.matched), repairing)
    }

    /// A damaged leader transfers leadership (at most every [`HANDOVER_EVERY`]).
    fn hand_over(&mut self, pg: PgId, now: Instant) {
        let Some(target) = self.handover_target(pg) else { return };
        let (Some(d), Some(p)) = (self.damaged.get_mut(&pg), self.peers.get_mut(&pg)) else { return };
        let new_leader = p.leading_since.is_none_or(|t| now.duration_since(t) < HANDOVER_GRACE);
        if new_leader || p.node.raft.lead_transferee.is_some() || d.handed_at.is_some_and(|t| now.duration_since(t) < HANDOVER_EVERY) {
            return;
        }
        d.handed_at = Some(now);
        tracing::info!(%pg, to = ?osd_of(target), "pg damaged on this replica: handing leadership over before repairing");
        p.transfer_leader(target);
    }

    /// Every tick: damaged leaders hand over, damaged followers ask their leader for a
    /// ticket, also after an interrupted install emptied their log (the leader may believe
    /// them up to date and never send a snapshot). A replica whose Raft snapshot install is
    /// under way is left alone: that install replaces the whole PG and clears the mark.
    pub(super) fn drive_repairs(&mut self, now: Instant) -> Result<(), OsdError> {
        self.repair_requests.retain(|_, t| now.duration_since(*t) < REPAIRING_FOR);
        self.tickets_granted.retain(|_, t| now.duration_since(*t) < REPAIRING_FOR);
        let pgs: Vec<PgId> = self.damaged.keys().copied().collect();
        for pg in pgs {
            if self.repairing.contains_key(&pg) {
                continue;
            }
            let Some(p) = self.peers.get(&pg) else {
                self.damaged.remove(&pg);
                self.engine.commit(Txn::new().with(Op::MetaDelete { scope: MetaScope::Global, key: damaged_key(pg) }))?;
                continue;
            };
            if p.installing_snapshot() {
                continue;
            }
            if p.is_leader() {
                self.hand_over(pg, now);
                continue;
            }
            let Some(leader) = p.leader_osd().filter(|l| *l != self.osd) else { continue };
            let last = p.acknowledged_bound();
            if last == u64::MAX {
                continue; // an install marker without its index: only a Raft snapshot can tell
            }
            let d = self.damaged.get_mut(&pg).expect("listed");
            if d.asking || d.asked_at.is_some_and(|t| now.duration_since(t) < ASK_EVERY) {
                continue;
            }
            d.asking = true;
            d.asked = Some(leader);
            d.asked_at = Some(now);
            self.ask_ticket(pg, leader, last);
        }
        Ok(())
    }

    /// Asks `leader` for a repair ticket covering this replica's log up to `last`.
    fn ask_ticket(&self, pg: PgId, leader: u32, last: u64) {
        let (events, map, osd) = (self.events.clone(), self.shared_map.clone(), self.osd);
        self.rt.spawn(async move {
            let result = async {
                let addr = map.read().osd(leader).map(|o| o.addr.clone()).ok_or_else(|| format!("osd {leader} is not in the map"))?;
                let mut rpc = Rpc::connect(&addr).await?;
                let req = Request { op: OpCode::Ticket, client: osd as u64, ..crate::snapshot::scan_request(pg, last, 0) };
                let data = rpc.call_within(req, TICKET_PATIENCE).await?;
                Snapshot::parse_from_bytes(&data).map_err(|e| format!("undecodable ticket: {e}"))
            }
            .await;
            let _ = events.send(Event::Ticket { pg, from: leader, result });
        });
    }

    /// The leader's answer to a ticket request. Accepted only if it covers every entry this
    /// replica holds ([`ticket_covers_log`]); then the peer goes, and the install runs.
    pub(super) fn on_ticket(&mut self, pg: PgId, from: u32, result: Result<Snapshot, String>) -> Result<(), OsdError> {
        let Some(d) = self.damaged.get_mut(&pg) else { return Ok(()) };
        d.asking = false;
        let snap = match result {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%pg, leader = from, "no repair ticket yet: {e}");
                return Ok(());
            }
        };
        // A refused ticket's pin is released by the leader when it idles out.
        let s = snap.get_metadata().index;
        let Some(p) = self.peers.get(&pg) else { return Ok(()) };
        if self.repairing.contains_key(&pg) || p.is_leader() || p.installing_snapshot() {
            return Ok(());
        }
        let last = p.acknowledged_bound();
        if !ticket_covers_log(s, last) {
            tracing::info!(%pg, index = s, last, "repair ticket does not cover this replica's log: asking again");
            return Ok(());
        }
        match Ticket::decode(&snap.data) {
            Ok(t) if t.source == from => {}
            _ => {
                tracing::warn!(%pg, from, "repair ticket does not name its sender as the source: ignored");
                return Ok(());
            }
        }
        let Some(addr) = self.map.osd(from).map(|o| o.addr.clone()) else { return Ok(()) };
        let mut peer = self.peers.remove(&pg).expect("checked above");
        let hard = peer.node.store().hard_state().clone();
        peer.abandon(self.map.epoch, Some(from));
        drop(peer);
        self.repairing.insert(pg, from);
        tracing::info!("repair of pg {pg} started from osd {from} at index {s}");
        let (engine, events, reads) = (self.engine.clone(), self.events.clone(), self.reads_in_flight.clone());
        let guard = self.install_guard(pg);
        self.rt.spawn(async move {
            let deadline = Instant::now() + READS_DRAIN;
            while reads.count(pg) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let result = crate::snapshot::install(engine, pg, hard, snap, addr, None, &guard).await;
            if result.as_ref().is_err_and(|e| e == crate::snapshot::WITHDRAWN) {
                tracing::info!(%pg, "repair withdrawn: the replica was dropped meanwhile");
                return;
            }
            let _ = events.send(Event::Repaired { pg, index: s, result });
        });
        Ok(())
    }

    /// A repair's install finished: the peer reopens from storage. After a failure the
    /// replica is left with the `installing` marker (its log empty, no votes) and still
    /// marked damaged: it asks for a ticket again (covering the marker's index), unless the
    /// leader's Raft snapshot completes the repair first.
    pub(super) fn on_repaired(&mut self, pg: PgId, index: u64, result: Result<u64, String>) -> Result<(), OsdError> {
        let source = self.repairing.remove(&pg).map_or_else(|| "?".to_string(), |s| s.to_string());
        self.installs.remove(&pg);
        match result {
            Ok(bytes) => {
                self.damaged.remove(&pg);
                self.counters.repairs += 1;
                tracing::info!(bytes, index, "repair of pg {pg} done (copied from osd {source})");
            }
            Err(e) => tracing::warn!(%pg, "repair of pg {pg} from osd {source} failed ({e}); trying again"),
        }
        self.open_peer(pg)
    }

    /// A completed Raft snapshot install replaced the whole PG (and deleted its mark).
    pub(super) fn install_repaired(&mut self, pg: PgId) {
        if self.damaged.remove(&pg).is_some() {
            self.counters.repairs += 1;
            tracing::info!("repair of pg {pg} done (by snapshot)");
        }
    }

    /// Leader side of [`OpCode::Ticket`]: the checks of `crate::repair` (step 3), then a
    /// snapshot of the durable applied state, verified block by block, on the blocking pool.
    pub(super) fn serve_ticket(&mut self, req: Request, reply: Reply) {
        let epoch = self.map.epoch;
        let pg = PgId::new(req.pg.pool, req.pg.index);
        let Ok(requester) = u32::try_from(req.client) else {
            return reply.error(Status::Invalid, epoch, "ticket requester is not an OSD id");
        };
        // Remembered whatever the answer: a damaged leader must not hand over to it.
        let now = Instant::now();
        self.repair_requests.insert((pg, requester), now);
        let Some(p) = self.peers.get(&pg) else {
            return reply.error(Status::NoPg, epoch, format!("osd {} has no replica of pg {pg}", self.osd));
        };
        if !p.is_leader() {
            return reply.not_leader(p.leader_osd(), epoch);
        }
        if self.damaged.contains_key(&pg) {
            return reply.error(Status::Retry, epoch, format!("the leader's copy of pg {pg} is damaged too"));
        }
        let raft = &p.node.raft;
        let cs = raft.prs().conf().to_conf_state();
        let rid = raft_id(requester);
        if !cs.voters.contains(&rid) && !cs.learners.contains(&rid) {
            return reply.error(Status::Invalid, epoch, format!("osd {requester} is not a member of pg {pg}"));
        }
        // A voter granted a ticket lately is about to leave (or has left) to reinstall, though
        // it still answers heartbeats: not active. So one repair per PG at a time (two voters
        // leaving together took the quorum with them, found in review).
        let granted = |id: u64| {
            osd_of(id).is_some_and(|o| {
                o != requester && self.tickets_granted.get(&(pg, o)).is_some_and(|t| now.duration_since(*t) < REPAIRING_FOR)
            })
        };
        let active = |id: u64| id == raft.id || (raft.prs().get(id).is_some_and(|pr| pr.recent_active) && !granted(id));
        if !cs.voters_outgoing.is_empty() || (cs.voters.contains(&rid) && !quorum_without(&cs.voters, rid, active)) {
            return reply.error(Status::Retry, epoch, format!("repairing osd {requester} now would leave pg {pg} without a quorum"));
        }
        self.tickets_granted.insert((pg, requester), now);
        let (engine, events, osd, need) = (self.engine.clone(), self.events.clone(), self.osd, req.seq);
        self.rt.spawn_blocking(move || {
            let answer = (|| -> Result<Bytes, (Status, String)> {
                let deadline = Instant::now() + APPLY_WAIT;
                loop {
                    match engine.applied_index(pg) {
                        Ok(a) if a >= need => break,
                        Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                        Ok(a) => return Err((Status::Retry, format!("pg {pg} applied only up to {a}, the replica holds {need}"))),
                        Err(e) => return Err((Status::Io, e.to_string())),
                    }
                }
                let snap = crate::snapshot::make(&engine, pg, osd).map_err(|e| (Status::Retry, e))?;
                let pin = Ticket::decode(&snap.data).map(|t| t.pin).unwrap_or_default();
                let checked = match crate::scrub::check_image(&engine, pg, pin) {
                    Ok(None) => snap.write_to_bytes().map_err(|e| (Status::Io, e.to_string())),
                    Ok(Some(bad)) => {
                        let what = bad.to_string();
                        let _ = events.send(Event::Damaged { pg, what: what.clone(), reply: None });
                        Err((Status::Retry, format!("the leader's copy of pg {pg} is damaged too: {what}")))
                    }
                    Err(e) => Err(e),
                };
                if checked.is_err() {
                    engine.unpin(pin);
                } else {
                    tracing::info!(%pg, to = requester, index = snap.get_metadata().index, "repair ticket sent");
                }
                checked.map(Bytes::from)
            })();
            match answer {
                Ok(b) => reply.send(Response::ok(epoch), b),
                Err((status, why)) => reply.error(status, epoch, why),
            }
        });
    }
}
