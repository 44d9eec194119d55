//! Raft messages between OSDs: incoming batches (with merged heartbeats and tombstones)
//! stepped into the peers, outgoing messages grouped into one batch per destination OSD.

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use tessera_engine::PgId;
use tessera_wire::msg::{
    decode_heartbeats, decode_space, decode_tombstones, encode_heartbeats, encode_space, encode_tombstones, HEARTBEATS_POOL, SPACE_POOL,
    TOMBSTONES_POOL,
};
use tessera_wire::{Heartbeat, RaftItem, WirePg};

use super::Store;
use crate::batch::BatchBuilder;
use crate::error::OsdError;
use crate::peer::osd_of;

impl Store {
    /// Steps a batch of Raft items from OSD `from` into the peers (creating a replica a
    /// leader asks for), and answers members a leader no longer has with tombstones.
    pub(super) fn on_raft(&mut self, from: u32, items: Vec<RaftItem>) -> Result<(), OsdError> {
        let mut tombstones = Vec::new();
        for item in items {
            let pg = PgId::new(item.pg.pool, item.pg.index);
            if item.pg.pool == TOMBSTONES_POOL {
                match decode_tombstones(&item.msg) {
                    Ok(t) => {
                        for (pg, term) in t {
                            self.on_tombstone(PgId::new(pg.pool, pg.index), term, from)?;
                        }
                    }
                    Err(e) => tracing::warn!(from, "undecodable tombstones: {e}"),
                }
                continue;
            }
            if item.pg.pool == SPACE_POOL {
                match decode_space(&item.msg) {
                    Ok(word) => self.on_space_item(from, word),
                    Err(e) => tracing::warn!(from, "undecodable space item: {e}"),
                }
                continue;
            }
            let msgs = if item.pg.pool == HEARTBEATS_POOL {
                match decode_heartbeats(&item.msg) {
                    Ok(hbs) => hbs.into_iter().map(|h| (PgId::new(h.pg.pool, h.pg.index), self.heartbeat_message(from, h))).collect(),
                    Err(e) => {
                        tracing::warn!(from, "undecodable merged heartbeats: {e}");
                        continue;
                    }
                }
            } else {
                match Message::parse_from_carllerche_bytes(&item.msg) {
                    Ok(m) => vec![(pg, m)],
                    Err(e) => {
                        tracing::warn!(%pg, from, "undecodable raft message: {e}");
                        continue;
                    }
                }
            };
            for (pg, m) in msgs {
                if m.get_msg_type() == MessageType::MsgSnapStatus {
                    self.on_snapshot_refused(pg, from);
                    continue;
                }
                // A replica being repaired has no peer and must not be re-created; while a
                // damaged one waits for its ticket it takes no new entries (`repair.rs`).
                let entries = matches!(m.get_msg_type(), MessageType::MsgAppend | MessageType::MsgSnapshot);
                if let Some(d) = self.damaged.get_mut(&pg).filter(|d| d.asking && entries) {
                    if d.asked == Some(from) {
                        continue;
                    }
                    // Another leader: the asked one hangs or lost its leadership. Take its
                    // entries (the survivors need this replica for a quorum) and ask again
                    // later; a late ticket is still checked against the log then.
                    tracing::info!(%pg, asked = ?d.asked, leader = from, "entries from a new leader: no longer waiting for a repair ticket");
                    d.asking = false;
                }
                if self.repairing.contains_key(&pg) {
                    continue;
                }
                if !self.peers.contains_key(&pg) && !self.adopt(pg, m.get_msg_type(), from)? {
                    continue;
                }
                let Some(peer) = self.peers.get_mut(&pg) else { continue };
                // A leader answers members it no longer has with a tombstone.
                if peer.is_leader() && peer.node.raft.prs().get(crate::peer::raft_id(from)).is_none() {
                    tombstones.push((WirePg { pool: pg.pool, index: pg.index }, peer.node.raft.term));
                    continue;
                }
                let Some(m) = self.filter_append(m) else { continue };
                let Some(peer) = self.peers.get_mut(&pg) else { continue };
                if tessera_wire::trace::enabled() && m.get_msg_type() == MessageType::MsgAppend {
                    peer.trace_entries(&m.entries, tessera_wire::trace::stage::RAFT_RECV, None);
                }
                peer.step(m);
            }
        }
        if !tombstones.is_empty() {
            let mut b = BatchBuilder::default();
            b.put_item(WirePg { pool: TOMBSTONES_POOL, index: 0 }, &encode_tombstones(&tombstones));
            for batch in b.finish() {
                self.transport.send(from, batch);
            }
        }
        Ok(())
    }

    /// Rebuilds a group's heartbeat (or answer) from its merged form.
    fn heartbeat_message(&self, from: u32, h: Heartbeat) -> Message {
        let mut m = Message {
            to: crate::peer::raft_id(self.osd),
            from: crate::peer::raft_id(from),
            term: h.term,
            commit: h.commit,
            context: h.context,
            ..Default::default()
        };
        m.set_msg_type(if h.response { MessageType::MsgHeartbeatResponse } else { MessageType::MsgHeartbeat });
        m
    }

    /// Sends messages grouped into one batch per destination OSD; the heartbeats (and their
    /// answers) of all groups for one destination are merged into one compact item, and every
    /// batch carries this OSD's space state (one byte: whether it refuses new data). Entry
    /// payloads go by reference (see `batch.rs`).
    pub(super) fn send(&self, msgs: Vec<(PgId, Message)>) {
        let mut batches: HashMap<u32, BatchBuilder> = HashMap::new();
        let mut heartbeats: HashMap<u32, Vec<Heartbeat>> = HashMap::new();
        for (pg, m) in msgs {
            let Some(to) = osd_of(m.to) else { continue };
            let kind = m.get_msg_type();
            if matches!(kind, MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse) && m.context.len() <= u16::MAX as usize {
                heartbeats.entry(to).or_default().push(Heartbeat {
                    pg: WirePg { pool: pg.pool, index: pg.index },
                    response: kind == MessageType::MsgHeartbeatResponse,
                    term: m.term,
                    commit: m.commit,
                    context: m.context,
                });
                continue;
            }
            if let Err(e) = batches.entry(to).or_default().put_message(WirePg { pool: pg.pool, index: pg.index }, m) {
                tracing::error!(%pg, "raft message does not encode: {e}");
            }
        }
        for (to, hbs) in heartbeats {
            batches.entry(to).or_default().put_item(WirePg { pool: HEARTBEATS_POOL, index: 0 }, &encode_heartbeats(&hbs));
        }
        let space = encode_space(self.space_word());
        for (to, mut b) in batches {
            b.put_item(WirePg { pool: SPACE_POOL, index: 0 }, &space);
            for batch in b.finish() {
                self.transport.send(to, batch);
            }
        }
    }
}
