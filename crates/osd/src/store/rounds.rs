//! Rounds: collecting every peer's Raft output, sending what may leave now, submitting the
//! rest as engine transactions (split at [`TXN_BYTES`]), and confirming to the peers when
//! the engine made a round durable.

use raft::eraftpb::{Message, MessageType};
use tessera_engine::{Op, PgId, Txn};

use super::{Event, Store};
use crate::peer::Round;

/// Data bytes per engine transaction; a round with more is split (transactions complete in
/// order, so the split is invisible to the peers).
const TXN_BYTES: usize = 2 << 20;

/// A submitted round: what to confirm to the peers once the engine made it durable.
pub(super) struct InFlight {
    pub(super) id: u64,
    persisted: Vec<(PgId, u64)>,
    applied: Vec<(PgId, u64)>,
    after_persist: Vec<(PgId, Message)>,
    /// Sampled writes appended in this round (see [`tessera_wire::trace`]).
    traced: Vec<(u64, u64, PgId, u64)>,
}

/// Whether an op is one a replica redoes from its Raft log after a crash: the applies of
/// committed entries and the PG-scoped records written with them (applied index, commit
/// index, deduplication and snapshot-context tables, configuration). A round of nothing else
/// may be confirmed before an fsync (`Txn::unsynced`): a crash loses it whole, the applied
/// index stored with it included, and the replica replays those entries on open. Reads it
/// makes visible read data of committed entries, which are durable in the log (a majority's).
fn replayable(op: &Op) -> bool {
    matches!(
        op,
        Op::ApplyWrite { .. }
            | Op::Preserve { .. }
            | Op::WriteZeroes { .. }
            | Op::Delete { .. }
            | Op::TrimVersions { .. }
            | Op::DropVolume { .. }
            | Op::Rollback { .. }
            | Op::Promote { .. }
            | Op::MetaPut { scope: tessera_engine::MetaScope::Pg(_), .. }
            | Op::MetaDelete { scope: tessera_engine::MetaScope::Pg(_), .. }
    )
}

/// The `corrupt_appends` fault (tests only): flips one random bit in the payload of this
/// fraction of the log entries handed to the engine (this replica's copy only; what Raft
/// sends is untouched), as memory corruption between receipt and device would.
fn corrupt_payloads(ops: &mut [Op], p: f64) {
    for op in ops {
        let Op::LogAppend { pg, entries } = op else { continue };
        for e in entries.iter_mut().filter(|e| !e.data.is_empty()) {
            if rand::random::<f64>() < p {
                let mut data = e.data.to_vec();
                let bit = rand::random::<usize>() % (data.len() * 8);
                data[bit / 8] ^= 1 << (bit % 8);
                tracing::warn!(%pg, index = e.index, bit, "fault control: corrupting a log entry's payload before the engine");
                e.data = data.into();
            }
        }
    }
}

impl Store {
    /// Confirms a durable round to its peers and releases what waited on it.
    pub(super) fn finish(&mut self, done: InFlight) {
        if !done.traced.is_empty() {
            let ns = tessera_wire::trace::now_ns();
            for (client, seq, pg, index) in &done.traced {
                let at = tessera_wire::trace::At { node: Some(self.osd), entry: Some((pg.pool, pg.index, *index)) };
                tessera_wire::trace::record(tessera_wire::trace::stage::DURABLE, *client, *seq, at, ns);
            }
        }
        let mut out = Round::default();
        for (pg, number) in done.persisted {
            if let Some(p) = self.peers.get_mut(&pg) {
                p.persisted(number);
            }
        }
        for (pg, index) in done.applied {
            if let Some(p) = self.peers.get_mut(&pg) {
                p.on_applied(index, &mut out);
            }
        }
        self.send(done.after_persist);
        self.serve_reads(out.reads);
    }

    /// One collection pass over every peer; returns whether anything was produced.
    pub(super) fn round(&mut self) -> bool {
        if self.round_refused {
            return false; // nothing is submitted until the peers are reopened
        }
        // Fresh for the admission check of the requests this round proposes.
        self.space_used = crate::space::used_fraction(self.engine.live_blocks(), self.engine.capacity_bytes());
        let epoch = self.map.epoch;
        let mut r = Round::default();
        let mut installs = Vec::new();
        for p in self.peers.values_mut() {
            if let Some(snap) = p.collect(&mut r, epoch) {
                installs.push((p.pg, snap, p.node.store().hard_state().clone()));
            }
        }
        for (pg, snap, hard) in installs {
            if self.install_fits(pg, &snap) {
                self.start_install(pg, snap, hard);
            } else if let Err(e) = self.defer_install(pg) {
                tracing::error!(%pg, "cannot reopen the replica after deferring its copy: {e}");
            }
        }
        if r.is_empty() {
            return false;
        }
        self.execute(r);
        true
    }

    /// Sends, serves and submits what a round collected.
    pub(super) fn execute(&mut self, mut r: Round) {
        if r.is_empty() || self.round_refused {
            return;
        }
        let messages = self.hold_data_for_full(std::mem::take(&mut r.messages));
        self.count(&messages);
        self.count(&r.after_persist);
        self.send(messages);
        self.serve_reads(std::mem::take(&mut r.reads));
        let id = self.next_round;
        self.next_round += 1;
        let flight = InFlight { id, persisted: r.persisted, applied: r.applied, after_persist: r.after_persist, traced: r.traced };
        if r.ops.is_empty() {
            // Nothing to write: confirm after what is already in flight, or now.
            match self.inflight.back_mut() {
                Some(last) => {
                    last.persisted.extend(flight.persisted);
                    last.after_persist.extend(flight.after_persist);
                    last.traced.extend(flight.traced);
                }
                None => self.finish(flight),
            }
            return;
        }
        let sync = r.must_sync || !r.ops.iter().all(replayable);
        self.submit(id, r.ops, sync);
        self.inflight.push_back(flight);
    }

    pub(super) fn count(&mut self, msgs: &[(PgId, Message)]) {
        for (_, m) in msgs {
            match m.get_msg_type() {
                MessageType::MsgAppend => self.counters.entries_sent += m.entries.len() as u64,
                MessageType::MsgSnapshot => self.counters.snapshots_sent += 1,
                _ => {}
            }
        }
    }

    /// Submits a round's ops as engine transactions; `sync`: false for rounds of replayable
    /// ops only (see [`replayable`]), whose transactions skip their own fsync.
    fn submit(&self, id: u64, mut ops: Vec<Op>, sync: bool) {
        let corrupt = self.cfg.faults.as_ref().map_or(0.0, |f| f.settings().corrupt_appends);
        if corrupt > 0.0 {
            corrupt_payloads(&mut ops, corrupt);
        }
        // Half a segment at most: a transaction must fit in one with its ops (a catch-up
        // round of a replica on small segments carries many entries at once).
        let max = TXN_BYTES.min(self.engine.segment_bytes() as usize / 2);
        let mut chunks: Vec<Txn> = vec![Txn::new()];
        let mut bytes = 0usize;
        let mut add = |op: Op, size: usize, chunks: &mut Vec<Txn>| {
            if bytes + size > max && !chunks.last().expect("non-empty").is_empty() {
                chunks.push(Txn::new());
                bytes = 0;
            }
            bytes += size;
            chunks.last_mut().expect("non-empty").push(op);
        };
        for op in ops {
            match op {
                // A long append is cut into consecutive appends that each fit a transaction.
                Op::LogAppend { pg, entries } => {
                    let mut part = Vec::new();
                    let mut size = 0;
                    for e in entries {
                        if size + e.data.len() > max && !part.is_empty() {
                            add(Op::LogAppend { pg, entries: std::mem::take(&mut part) }, size, &mut chunks);
                            size = 0;
                        }
                        size += e.data.len();
                        part.push(e);
                    }
                    add(Op::LogAppend { pg, entries: part }, size, &mut chunks);
                }
                op => add(op, 0, &mut chunks),
            }
        }
        // Exactly one completion per round: the last transaction's (they complete in order),
        // carrying the first error of any of them.
        if !sync {
            chunks = chunks.into_iter().map(Txn::unsynced).collect();
        }
        let n = chunks.len();
        let first_error: std::sync::Arc<parking_lot::Mutex<Option<tessera_engine::EngineError>>> = Default::default();
        for (i, txn) in chunks.into_iter().enumerate() {
            let tx = self.events.clone();
            let last = i + 1 == n;
            let first_error = first_error.clone();
            self.engine.submit(txn, move |result| {
                if let Err(e) = &result {
                    first_error.lock().get_or_insert_with(|| e.clone());
                }
                if last {
                    let result = match first_error.lock().take() {
                        Some(e) => Err(e),
                        None => result,
                    };
                    let _ = tx.send(Event::Durable { round: id, result });
                }
            });
        }
    }
}
