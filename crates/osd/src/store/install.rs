//! Installing a Raft snapshot: the objects are copied in the background from the ticket's
//! source (or another replica), then the peer's kept-aside ready is processed.

use raft::eraftpb::{HardState, Snapshot};
use std::time::Duration;
use tessera_engine::PgId;

use super::{Event, Store};
use crate::error::OsdError;
use crate::peer::{osd_of, Round};
use crate::snapshot::Ticket;

impl Store {
    /// Copies the snapshot's objects in the background, from its source or, if that fails,
    /// from any other replica of its configuration, until one succeeds.
    pub(super) fn start_install(&mut self, pg: PgId, snap: Snapshot, hard: HardState) {
        let guard = self.install_guard(pg);
        // The copy must fit (after the old copy's room is reclaimed, see `install`).
        let room = self.cfg.space_checks.then_some(self.map.config.space.backfillfull);
        let mut sources: Vec<u32> = Vec::new();
        if let Ok(t) = Ticket::decode(&snap.data) {
            sources.push(t.source);
        }
        let cs = snap.get_metadata().get_conf_state();
        for o in cs.voters.iter().chain(&cs.voters_outgoing).filter_map(|v| osd_of(*v)) {
            if o != self.osd && !sources.contains(&o) {
                sources.push(o);
            }
        }
        let (engine, events, map) = (self.engine.clone(), self.events.clone(), self.shared_map.clone());
        self.rt.spawn(async move {
            let mut attempt = 0usize;
            let mut gone = 0usize;
            loop {
                // Addresses from the current map at every attempt (sources may move).
                let addr = sources.get(attempt % sources.len().max(1)).and_then(|o| map.read().osd(*o).map(|r| r.addr.clone()));
                let Some(addr) = addr else {
                    tracing::warn!(%pg, ?sources, "no address for any snapshot source yet");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                match crate::snapshot::install(engine.clone(), pg, hard.clone(), snap.clone(), addr.clone(), room, &guard).await {
                    Ok(bytes) => {
                        let _ = events.send(Event::Installed { pg, snap, result: Ok(bytes) });
                        return;
                    }
                    Err(e) if e.starts_with(crate::snapshot::NO_ROOM) => {
                        let _ = events.send(Event::Installed { pg, snap, result: Err(e) });
                        return;
                    }
                    Err(e) if e == crate::snapshot::WITHDRAWN => {
                        tracing::info!(%pg, "snapshot install withdrawn: the replica was dropped meanwhile");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%pg, %addr, "snapshot copy failed, retrying: {e}");
                        // The ticket's image is pinned on its source only: once the source
                        // says it is gone (expired, restarted) and no other replica can serve
                        // it either, this ticket can never complete.
                        if e.contains("is gone") {
                            gone += 1;
                        }
                        if gone >= 2 && attempt + 1 >= 2 * sources.len() {
                            let _ = events.send(Event::Installed { pg, snap, result: Err(e) });
                            return;
                        }
                    }
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt.min(10) as u64)).await;
            }
        });
    }

    /// A snapshot install finished (`Ok`: bytes copied), or gave up because its ticket's
    /// image is gone. Then the replica is in the state a crash mid-install leaves (log empty,
    /// `installing` marker, no votes): the peer is reopened from storage in that state and the
    /// PG marked damaged, so it asks its leader for a new image (`store/damage.rs`); the
    /// leader also sends a new snapshot when this one is overdue. The raft-rs ready kept aside
    /// is dropped unpersisted, which is what a crash does to it.
    pub(super) fn on_installed(&mut self, pg: PgId, snap: Snapshot, result: Result<u64, String>) -> Result<(), OsdError> {
        let epoch = self.map.epoch;
        self.installs.remove(&pg);
        match result {
            Ok(bytes) => {
                tracing::info!(%pg, index = snap.get_metadata().index, bytes, "snapshot installed");
                self.backfill_waiting.remove(&pg);
                self.counters.snapshots_installed += 1;
                self.counters.snapshot_bytes += bytes;
                let mut r = Round::default();
                if let Some(p) = self.peers.get_mut(&pg) {
                    p.installed(&snap, &mut r, epoch);
                }
                self.execute(r);
                self.install_repaired(pg);
            }
            Err(e) if e.starts_with(crate::snapshot::NO_ROOM) => {
                // Emptied, waiting for room: the leader sends a new snapshot (its copy is
                // checked again first); nothing here is damaged.
                tracing::warn!(%pg, "snapshot install stopped: {e}; the replica waits empty for room");
                let leader = self.peers.get(&pg).and_then(|p| p.leader_osd());
                let incoming = crate::snapshot::Ticket::decode(&snap.data).map_or(0, |t| t.blocks) * tessera_engine::BLOCK;
                self.wait_for_room(pg, incoming, leader);
                if let Some(mut peer) = self.peers.remove(&pg) {
                    peer.abandon(epoch, None);
                }
                self.open_peer(pg)?;
            }
            Err(e) => {
                tracing::warn!(%pg, index = snap.get_metadata().index, "snapshot install gave up ({e}); asking the leader for a new image");
                if let Some(mut peer) = self.peers.remove(&pg) {
                    peer.abandon(epoch, None);
                }
                self.open_peer(pg)?;
                self.on_damaged(pg, format!("snapshot install could not complete: {e}"), None)?;
            }
        }
        Ok(())
    }

    /// A new guard for an install of `pg` (any earlier one is withdrawn).
    pub(super) fn install_guard(&mut self, pg: PgId) -> crate::snapshot::InstallGuard {
        let guard = crate::snapshot::InstallGuard::new();
        if let Some(old) = self.installs.insert(pg, guard.clone()) {
            old.withdraw();
        }
        guard
    }

    /// Withdraws `pg`'s install under way, if any: it writes nothing from now on.
    pub(super) fn withdraw_install(&mut self, pg: PgId) {
        if let Some(g) = self.installs.remove(&pg) {
            g.withdraw();
        }
    }
}
