//! One PG replica: its Raft node, the proposals and reads waiting on it, and how its Raft
//! output becomes engine ops.
//!
//! Sans-IO: a peer never touches the network or waits on the engine. It turns requests and
//! Raft messages into [`Round`] contents (engine ops, messages, replies), and the store's
//! event loop executes a round for all peers at once.
//!
//! # When a write is acknowledged
//! When its entry appears in Raft's committed entries: the entry is then durable (fsynced) in
//! the logs of a majority of the PG's replicas, this one included (raft-rs hands out only
//! committed entries that are locally persisted). Its apply (pointing the object at the
//! entry's data) is queued in the same round and replayed from the log after a crash, since
//! the applied index is stored with the applies; a round of applies only is therefore
//! written without an fsync of its own (`Round::must_sync`). Reads wait until the engine
//! has taken the applies up to their read index, so an acknowledged write is visible to
//! every later read.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, ReadState, StateRole};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tessera_engine::{pgmeta, MetaScope, ObjectKey, Op, PgId, BLOCK, SNAP_HEAD, SNAP_STAGING};
use tessera_wire::{trace, OpCode, Request, Status};

use crate::cmd::Command;
use crate::contexts::{Contexts, Verdict};
use crate::dedup::{Dedup, Seen};

/// Answer for a retried write whose pair the dedup table had to trim.
const UNKNOWN_OUTCOME: &str = "this retried write may or may not have been applied earlier (too many newer writes from this client)";
use crate::reply::Reply;
use crate::storage::{put_conf_state, put_hard_state, to_log_entry, PgStorage};

/// Index (and term) at which a bootstrapped PG's log starts. Replicas created empty later
/// are behind it and therefore receive their state from the leader as a snapshot, which
/// carries the configuration.
pub const BOOTSTRAP_INDEX: u64 = 5;
/// Largest single read or write (the client library splits larger ones).
pub const MAX_IO: u64 = 1 << 20;
/// Largest object offset served (the largest object size a pool may have).
pub const MAX_OBJECT: u64 = 64 << 20;
/// Default number of applied entries kept in the log for followers that fall briefly behind
/// (they catch up from the log; further behind, by snapshot) and for rebuilding write
/// deduplication after a restart.
pub const KEEP_ENTRIES: u64 = 10_000;
/// A learner this close to the commit index counts as caught up (under steady writes it is
/// always a few entries behind).
const CATCHUP_SLACK: u64 = 64;
/// How long a leader waits for a follower to install a snapshot before sending a new one.
pub const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(30);
/// A read or proposal not answered within this time is answered `Retry`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a leader may serve reads on its own after it *sent* a heartbeat round that a
/// quorum answered (lease reads; `CLOCK_BOOTTIME`). A follower votes for another candidate
/// only after `election_tick` (10) ticks of at least [`crate::store::TICK`] (100 ms) without
/// hearing from its leader, so no other leader can be elected within 900 ms of that round's
/// send; 700 ms leaves 200 ms for clock-rate drift between two hosts (22%) and scheduling.
/// Transfers (which skip that wait) end lease reads for the rest of the term; a restarted
/// replica (which forgot when it last heard from its leader) refuses votes for
/// [`VOTE_GUARD`]. See ARCHITECTURE.md, "Lease reads".
pub const LEASE: Duration = Duration::from_millis(700);
/// A replica with lease reads on refuses votes for this long after it opens, so its restart
/// cannot help elect a leader while an old leader's lease (which its last answer may have
/// extended) still runs.
pub const VOTE_GUARD: Duration = Duration::from_secs(1);
/// Read contexts with this bit set are lease renewals, not client reads.
const RENEWAL: u64 = 1 << 63;

/// Largest snapshot id a request may name as its context (ids come from the mon's counter;
/// far below the engine's reserved versions `SNAP_STAGING` and `SNAP_HEAD`).
pub const MAX_SNAP_ID: u64 = 1 << 62;

/// Raft ids are OSD ids plus one (raft-rs reserves id 0).
pub fn raft_id(osd: u32) -> u64 {
    osd as u64 + 1
}
/// The OSD of a Raft id (`None` for raft-rs's "no one").
pub fn osd_of(id: u64) -> Option<u32> {
    id.checked_sub(1).map(|v| v as u32)
}

/// A read that may be served once the PG has applied up to its read index.
#[derive(Debug)]
pub struct ReadJob {
    /// `Read` or `Usage`.
    pub op: OpCode,
    pub pg: PgId,
    pub key: ObjectKey,
    pub offset: u64,
    pub len: u64,
    pub reply: Reply,
    pub since: Instant,
    /// `CLOCK_BOOTTIME` when the read index was asked for (the heartbeat round confirming it
    /// was sent after it: its answer extends the lease from here).
    pub asked: Duration,
    /// The request's `(client, seq)` (for the sampled latency trace).
    pub client: u64,
    pub seq: u64,
}

struct Pending {
    term: u64,
    reply: Reply,
    since: Instant,
}

/// Everything one pass of the event loop produced for all peers.
#[derive(Default)]
pub struct Round {
    /// Engine ops: log appends, hard states, applies. One transaction, one fsync.
    pub ops: Vec<Op>,
    /// Ready numbers to confirm to each peer once `ops` are durable.
    pub persisted: Vec<(PgId, u64)>,
    /// Applied index each peer reaches once `ops` are durable.
    pub applied: Vec<(PgId, u64)>,
    /// Messages that may leave now (a leader's appends and heartbeats).
    pub messages: Vec<(PgId, Message)>,
    /// Messages that may leave only after `ops` are durable (votes, append responses).
    pub after_persist: Vec<(PgId, Message)>,
    /// Reads that may be served now.
    pub reads: Vec<ReadJob>,
    /// Sampled writes whose entries `ops` append: `(client, seq, pg, index)`, traced as
    /// durable once `ops` are (see [`tessera_wire::trace`]).
    pub traced: Vec<(u64, u64, PgId, u64)>,
    /// Something in `ops` must be durable before it is confirmed: log entries, a new term
    /// or vote, or a message sent after persistence that promises them. Without it the
    /// round holds only what the log replays after a crash (applies, the commit index), and
    /// its transaction is written without an fsync of its own (`Txn::unsynced`).
    pub must_sync: bool,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.persisted.is_empty() && self.messages.is_empty() && self.reads.is_empty()
    }
}

/// One PG replica hosted by this OSD.
pub struct Peer {
    pub pg: PgId,
    pub node: RawNode<PgStorage>,
    /// With a log entry that cannot be read (`PgStorage::log_damage`), raft-rs keeps
    /// reporting a ready (the entry stays to be applied): collected at most every 100 ms
    /// then, until the rebuild replaces this replica.
    damaged_ready_at: Option<Instant>,
    pending: BTreeMap<u64, Pending>,
    reads_wait_index: HashMap<u64, ReadJob>,
    reads_wait_apply: Vec<(u64, ReadJob)>,
    next_read_ctx: u64,
    /// Applied index whose applies the engine has taken: written and visible to reads, durable
    /// with the engine's next fsync or, if a crash comes first, replayed from the log (the
    /// entries are durable; see `store/rounds.rs::replayable`).
    pub durable_applied: u64,
    dedup: Dedup,
    /// Snapshot contexts per volume (see `contexts.rs`), updated in log order like `dedup`.
    contexts: Contexts,
    /// The leader last seen (raft id; 0 = none), for logging changes.
    last_leader: u64,
    /// Since when this replica leads (`None`: it does not).
    pub leading_since: Option<Instant>,
    /// Leader only: the commit index last seen and since when it has not moved while later
    /// entries waited (see [`Peer::commit_stalled_for`]).
    commit_stall: Option<(u64, Instant)>,
    /// When this leader last stepped aside for a follower (see [`Peer::step_aside`]).
    pub stepped_aside: Option<Instant>,
    /// Since when each follower has been waiting for a snapshot (leader only).
    snapshot_waits: HashMap<u64, Instant>,
    /// A ready whose snapshot is being installed.
    installing: Option<raft::Ready>,
    /// Whether reads may be served under a leader lease ([`LEASE`]); set by the store.
    pub lease_reads: bool,
    lease: Lease,
    /// Reads served under the lease, waiting to be handed to the store.
    ready_reads: Vec<ReadJob>,
    /// `CLOCK_BOOTTIME` when this replica was opened (see [`VOTE_GUARD`]).
    opened: Duration,
    /// Snapshot index to mark applied once its ready is confirmed.
    installed_at: Option<u64>,
}

/// A leader's lease: until when (`CLOCK_BOOTTIME`) it may serve reads alone, in which term.
#[derive(Default, Debug)]
struct Lease {
    until: Duration,
    term: u64,
    /// A leadership transfer began in this term: no lease reads until the next one (the
    /// transferee's election skips the followers' wait the lease relies on).
    transfer_term: u64,
    /// A renewal round in flight: its read context and when it was asked for.
    renewal: Option<(u64, Duration)>,
}

/// raft-rs configuration shared by every PG: 100 ms ticks, elections after 1-2 s without a
/// leader, heartbeats every 200 ms, check-quorum and pre-vote (a partitioned replica cannot
/// disturb the group when it returns), ReadIndex reads (one heartbeat round, no lease
/// assumptions about clocks).
pub fn raft_config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    }
}

fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Peer {
    /// Opens (or creates, uninitialized) the replica of `pg` on this OSD.
    pub fn open(pg: PgId, osd: u32, storage: PgStorage, applied: u64) -> Result<Peer, raft::Error> {
        let dedup = Self::stored_dedup(pg, &storage);
        let contexts = Self::stored_contexts(pg, &storage);
        let node = RawNode::new(&raft_config(raft_id(osd), applied), storage, &discard_logger())?;
        Ok(Peer {
            pg,
            node,
            pending: BTreeMap::new(),
            reads_wait_index: HashMap::new(),
            reads_wait_apply: Vec::new(),
            next_read_ctx: 1,
            durable_applied: applied,
            dedup,
            contexts,
            installing: None,
            damaged_ready_at: None,
            installed_at: None,
            lease_reads: false,
            lease: Lease::default(),
            ready_reads: Vec::new(),
            opened: tessera_wire::clock::boottime(),
            last_leader: 0,
            leading_since: None,
            commit_stall: None,
            stepped_aside: None,
            snapshot_waits: HashMap::new(),
        })
    }

    /// The engine ops that create a new PG replica with the given voters (all replicas of a
    /// new PG bootstrap identically: an empty log compacted at [`BOOTSTRAP_INDEX`]).
    pub fn bootstrap_ops(pg: PgId, voters: &[u32]) -> (Vec<Op>, ConfState) {
        let cs = ConfState { voters: voters.iter().map(|o| raft_id(*o)).collect(), ..Default::default() };
        let hs = raft::eraftpb::HardState { term: BOOTSTRAP_INDEX, commit: BOOTSTRAP_INDEX, ..Default::default() };
        let ops = vec![
            Op::LogCompact { pg, upto: BOOTSTRAP_INDEX, term: BOOTSTRAP_INDEX },
            put_hard_state(pg, &hs),
            put_conf_state(pg, &cs),
            pgmeta::put_applied(pg, BOOTSTRAP_INDEX),
        ];
        (ops, cs)
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_osd(&self) -> Option<u32> {
        osd_of(self.node.raft.leader_id)
    }

    /// Whether a Raft snapshot is being installed, or an interrupted install left the log
    /// empty (the replica waits for a new snapshot): either way its objects are partial.
    pub fn installing(&self) -> bool {
        self.installing.is_some() || self.node.store().no_votes
    }

    /// Whether a Raft snapshot is being installed right now.
    pub fn installing_snapshot(&self) -> bool {
        self.installing.is_some()
    }

    /// The highest log index at which this replica may have acknowledged an entry that can
    /// count towards a commit: its last index, or, after an interrupted install emptied the
    /// log, that install's snapshot index (a repair ticket is accepted only if it covers the
    /// log; raft-rs restores a snapshot only over entries that conflict with it, which can
    /// never commit).
    pub fn acknowledged_bound(&self) -> u64 {
        let st = self.node.store();
        self.node.raft.raft_log.last_index().max(if st.no_votes { st.install_index.unwrap_or(u64::MAX) } else { 0 })
    }

    /// Advances the replica's clock (not while a snapshot is being installed).
    pub fn tick(&mut self) {
        if self.installing.is_none() {
            self.node.tick();
        }
        // A transfer raft-rs started on its own (a peer's MsgTransferLeader) ends lease reads
        // too; it lasts at least an election timeout, so a tick sees it.
        if self.node.raft.lead_transferee.is_some() {
            self.lease.transfer_term = self.node.raft.term;
        }
    }

    /// The deduplication table as stored with the applies (see `dedup.rs`).
    fn stored_contexts(pg: PgId, storage: &PgStorage) -> Contexts {
        let records = storage.meta_with_prefix(crate::contexts::KEY_PREFIX);
        Contexts::load(records.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap_or_else(|e| {
            tracing::error!(%pg, "stored snapshot contexts unreadable ({e}); starting empty");
            Contexts::default()
        })
    }

    fn stored_dedup(pg: PgId, storage: &PgStorage) -> Dedup {
        let records = storage.meta_with_prefix(crate::dedup::KEY_PREFIX);
        Dedup::load(records.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap_or_else(|e| {
            tracing::error!(%pg, "stored deduplication table unreadable ({e}); starting empty");
            Dedup::default()
        })
    }

    /// Handles a client request addressed to this PG.
    pub fn on_request(&mut self, req: Request, data: Bytes, crcs: Bytes, reply: Reply, epoch: u64, now: Instant) {
        if let Err(why) = check_request(&req, &data) {
            return reply.error(Status::Invalid, epoch, why);
        }
        if !crcs.is_empty() && req.op != OpCode::Write {
            return reply.error(Status::Invalid, epoch, format!("only writes carry block checksums, not {:?}", req.op));
        }
        if !self.is_leader() {
            return reply.not_leader(self.leader_osd(), epoch);
        }
        let key = ObjectKey { volume: req.volume, object: req.object, snap: req.snap };
        if req.op.is_read() {
            if !self.node.raft.commit_to_current_term() {
                return reply.error(Status::Retry, epoch, "new leader has not committed in its term yet");
            }
            let asked = tessera_wire::clock::boottime();
            let job = ReadJob {
                op: req.op,
                pg: self.pg,
                key,
                offset: req.offset,
                len: req.len,
                reply,
                since: now,
                asked,
                client: req.client,
                seq: req.seq,
            };
            if self.lease_holds(asked) {
                // Every write acknowledged before this read arrived is committed here (the
                // leader acknowledges only what it saw committed, and it has committed in its
                // term), and no other leader can exist yet: the commit index is a safe read index.
                let index = self.node.raft.raft_log.committed;
                if self.durable_applied >= index {
                    trace_read_ready(&job, self.trace_at(None));
                    self.ready_reads.push(job);
                } else {
                    self.reads_wait_apply.push((index, job));
                }
                if self.lease.until.saturating_sub(asked) < LEASE / 2 && self.lease.renewal.is_none() {
                    let ctx = RENEWAL | self.next_read_ctx;
                    self.next_read_ctx += 1;
                    self.lease.renewal = Some((ctx, asked));
                    self.node.read_index(ctx.to_le_bytes().to_vec());
                }
                return;
            }
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            self.reads_wait_index.insert(ctx, job);
            self.node.read_index(ctx.to_le_bytes().to_vec());
            return;
        }
        match self.dedup.check(req.client, req.seq) {
            Seen::Applied => return reply.ok(epoch),
            Seen::Unknown => return reply.error(Status::Io, epoch, UNKNOWN_OUTCOME),
            Seen::New => {}
        }
        let cmd = Command {
            op: req.op,
            key,
            offset: req.offset,
            len: req.len,
            client: req.client,
            seq: req.seq,
            floor: req.floor,
            snapc: req.snapc,
        };
        // The client's block checksums (checked against the data on receipt) go into the
        // entry, so every replica's engine checks the payload against them and stores them.
        match self.node.propose(vec![], cmd.encode(&data, tessera_wire::table_crcs(&crcs))) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                let term = self.node.raft.term;
                if trace::sampled(req.client, req.seq) {
                    trace::record(trace::stage::PROPOSE, req.client, req.seq, self.trace_at(Some(index)), trace::now_ns());
                }
                self.pending.insert(index, Pending { term, reply, since: now });
            }
            Err(e) => reply.error(Status::Retry, epoch, format!("proposal dropped: {e}")),
        }
    }

    /// Collects this peer's Raft output into `round`. A ready carrying a snapshot is kept
    /// aside and the snapshot returned: the caller installs it and then calls
    /// [`Peer::installed`]; until then this peer produces nothing.
    pub fn collect(&mut self, round: &mut Round, epoch: u64) -> Option<Snapshot> {
        if self.installing.is_some() || !self.node.has_ready() {
            return None;
        }
        if self.node.store().log_damage().is_some() {
            let now = Instant::now();
            if self.damaged_ready_at.is_some_and(|t| now.duration_since(t) < Duration::from_millis(100)) {
                return None;
            }
            self.damaged_ready_at = Some(now);
        }
        let rd = self.node.ready();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            tracing::info!(pg = %self.pg, index = snap.get_metadata().index, "installing a snapshot");
            self.installing = Some(rd);
            return Some(snap);
        }
        self.process(rd, round, epoch);
        None
    }

    /// The snapshot kept aside by [`Peer::collect`] is installed (log, configuration, hard
    /// state and objects are durable): the rest of its ready goes into `round`.
    pub fn installed(&mut self, snap: &Snapshot, round: &mut Round, epoch: u64) {
        let Some(rd) = self.installing.take() else { return };
        let meta = snap.get_metadata();
        let mut hs = self.node.store().hard_state().clone();
        hs.commit = meta.index;
        hs.term = hs.term.max(meta.term);
        self.node.mut_store().installed(meta.get_conf_state().clone(), hs);
        self.durable_applied = meta.index;
        self.dedup = Self::stored_dedup(self.pg, self.node.store());
        self.contexts = Self::stored_contexts(self.pg, self.node.store());
        self.installed_at = Some(meta.index);
        self.process(rd, round, epoch);
    }

    fn process(&mut self, mut rd: raft::Ready, round: &mut Round, epoch: u64) {
        if let Some(ss) = rd.ss() {
            if ss.leader_id != self.last_leader {
                self.last_leader = ss.leader_id;
                tracing::info!(pg = %self.pg, leader = ?osd_of(ss.leader_id), term = self.node.raft.term, "pg leader changed");
            }
            if ss.raft_state != StateRole::Leader {
                let hint = osd_of(ss.leader_id);
                self.fail_all(epoch, hint);
                self.leading_since = None;
            } else if self.leading_since.is_none() {
                self.leading_since = Some(Instant::now());
            }
        }
        round.messages.extend(rd.take_messages().into_iter().map(|m| (self.pg, m)));
        // Engine op order per PG: appends, then the hard state, then applies. Any prefix of
        // them (a round may be split into several transactions) leaves
        // applied <= commit <= last index on the device.
        let number = rd.number();
        let entries = rd.take_entries();
        if !entries.is_empty() {
            round.must_sync = true;
            if trace::enabled() {
                self.trace_entries(&entries, trace::stage::APPEND, Some(&mut round.traced));
            }
            round.ops.push(Op::LogAppend { pg: self.pg, entries: entries.iter().map(to_log_entry).collect() });
            self.node.mut_store().cache_append(&entries, number);
        }
        if let Some(hs) = rd.hs() {
            let old = self.node.store().hard_state();
            round.must_sync |= hs.term != old.term || hs.vote != old.vote;
            round.ops.push(put_hard_state(self.pg, hs));
            self.node.mut_store().set_hard_state(hs);
        }
        let after_persist = rd.take_persisted_messages();
        // A heartbeat's answer promises nothing about this replica's disk; any other message
        // held for persistence (append and vote answers) does.
        round.must_sync |= after_persist.iter().any(|m| m.get_msg_type() != MessageType::MsgHeartbeatResponse);
        round.after_persist.extend(after_persist.into_iter().map(|m| (self.pg, m)));
        let committed = rd.take_committed_entries();
        let read_states = rd.take_read_states();
        round.persisted.push((self.pg, number));
        // Advance before applying: applying a joint configuration makes raft-rs append the
        // leave-joint entry, which must not happen while this ready is outstanding.
        self.node.advance_append_async(rd);
        self.apply(committed, round, epoch);
        for rs in read_states {
            self.on_read_state(rs, round);
        }
    }

    /// After the engine confirmed readies up to `number`.
    pub fn persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        self.node.mut_store().persisted(number);
        if let Some(index) = self.installed_at.take() {
            self.node.advance_apply_to(index);
        }
    }

    fn apply(&mut self, committed: Vec<Entry>, round: &mut Round, epoch: u64) {
        let Some(last) = committed.last().map(|e| e.index) else { return };
        for e in committed {
            self.dedup.on_applied(e.index);
            let mut seen = Seen::New;
            let mut verdict = Verdict::Ok;
            let mut traced = None;
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Ok((c, payload)) => {
                        if trace::sampled(c.client, c.seq) {
                            traced = Some((c.client, c.seq));
                        }
                        // Refused ops are not recorded as seen: the client re-issues them.
                        if context_checked(&c) {
                            verdict = self.contexts.check(c.key.volume, c.snapc);
                            if verdict != Verdict::Ok {
                                tracing::debug!(pg = %self.pg, index = e.index, volume = c.key.volume, snapc = c.snapc, ?verdict, "write refused: stale snapshot context");
                            }
                        }
                        if verdict == Verdict::Ok {
                            seen = self.dedup.admit(c.client, c.seq, c.floor, e.index);
                        }
                        if verdict == Verdict::Ok && seen == Seen::New {
                            apply_ops(self.pg, &c, &payload, e.index, &mut round.ops);
                            match c.op {
                                OpCode::SnapSeq => {
                                    tracing::info!(pg = %self.pg, volume = c.key.volume, seq = c.snapc, epoch = c.key.snap, "snapshot context set");
                                    self.contexts.set(c.key.volume, c.snapc, c.key.snap)
                                }
                                OpCode::DropVolume => self.contexts.drop_volume(c.key.volume),
                                _ => {}
                            }
                        }
                    }
                    Err(err) => tracing::error!(pg = %self.pg, index = e.index, "skipping undecodable entry: {err}"),
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cs = self.apply_conf_change(&e);
                    round.ops.push(put_conf_state(self.pg, &cs));
                    self.node.mut_store().set_conf_state(cs);
                }
            }
            // Answer the proposal at this index: ours if the term matches, else it was lost.
            if let Some(p) = self.pending.remove(&e.index) {
                if p.term == e.term && verdict != Verdict::Ok {
                    match verdict {
                        Verdict::Stale(seq) => p.reply.stale_context(seq, epoch),
                        _ => p.reply.error(Status::Invalid, epoch, "the volume was deleted"),
                    }
                } else if p.term == e.term && seen == Seen::Unknown {
                    p.reply.error(Status::Io, epoch, UNKNOWN_OUTCOME);
                } else if p.term == e.term {
                    if let Some((client, seq)) = traced {
                        trace::record(trace::stage::COMMIT, client, seq, self.trace_at(Some(e.index)), trace::now_ns());
                    }
                    p.reply.ok(epoch);
                } else {
                    p.reply.error(Status::Retry, epoch, "proposal lost in a leader change");
                }
            }
        }
        for (key, value) in self.contexts.take_changes() {
            round.ops.push(Op::MetaPut { scope: MetaScope::Pg(self.pg), key, value });
        }
        let (puts, dels) = self.dedup.take_changes();
        for (key, value) in puts {
            round.ops.push(Op::MetaPut { scope: MetaScope::Pg(self.pg), key, value });
        }
        for key in dels {
            round.ops.push(Op::MetaDelete { scope: MetaScope::Pg(self.pg), key });
        }
        round.ops.push(pgmeta::put_applied(self.pg, last));
        round.applied.push((self.pg, last));
        self.node.advance_apply_to(last);
    }

    fn apply_conf_change(&mut self, e: &Entry) -> ConfState {
        let result = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_carllerche_bytes(&e.data)
                .map_err(|x| x.to_string())
                .and_then(|cc| self.node.apply_conf_change(&cc).map_err(|x| x.to_string()))
        } else {
            ConfChange::parse_from_carllerche_bytes(&e.data)
                .map_err(|x| x.to_string())
                .and_then(|cc| self.node.apply_conf_change(&cc).map_err(|x| x.to_string()))
        };
        match result {
            Ok(cs) => {
                tracing::info!(pg = %self.pg, index = e.index, voters = ?cs.voters, learners = ?cs.learners, "configuration changed");
                cs
            }
            Err(err) => {
                tracing::error!(pg = %self.pg, index = e.index, "configuration change not applied: {err}");
                self.node.store().conf_state().clone()
            }
        }
    }

    /// Whether this leader's lease covers a read at `now` (`CLOCK_BOOTTIME`).
    fn lease_holds(&mut self, now: Duration) -> bool {
        let r = &self.node.raft;
        if r.lead_transferee.is_some() {
            self.lease.transfer_term = r.term;
        }
        self.lease_reads
            && r.state == StateRole::Leader
            && self.lease.term == r.term
            && self.lease.transfer_term != r.term
            && now < self.lease.until
    }

    /// A heartbeat round asked for at `asked` was answered by a quorum: the lease runs until
    /// `asked + LEASE`.
    fn extend_lease(&mut self, asked: Duration) {
        let term = self.node.raft.term;
        if self.lease.term != term {
            self.lease = Lease { term, transfer_term: self.lease.transfer_term, ..Lease::default() };
        }
        self.lease.until = self.lease.until.max(asked + LEASE);
    }

    /// Hands leadership to `to` (raft id); lease reads stop for the rest of this term.
    pub fn transfer_leader(&mut self, to: u64) {
        self.lease.transfer_term = self.node.raft.term;
        self.node.transfer_leader(to);
    }

    /// Leader only: how long the commit index has stood still while entries after it waited
    /// (zero when none wait, or on a follower). Called once per tick.
    pub fn commit_stalled_for(&mut self, now: Instant) -> Duration {
        let (last, committed) = (self.node.raft.raft_log.last_index(), self.node.raft.raft_log.committed);
        if !self.is_leader() || last <= committed {
            self.commit_stall = None;
            return Duration::ZERO;
        }
        match self.commit_stall {
            Some((c, since)) if c == committed => now.saturating_duration_since(since),
            _ => {
                self.commit_stall = Some((committed, now));
                Duration::ZERO
            }
        }
    }

    /// Leader only: makes voter `to` campaign at once (raft-rs's `MsgTimeoutNow`, as at the
    /// end of a transfer) even though it lacks this leader's last entries, so that its log,
    /// not this one, continues the group: the entries after `to`'s last are overwritten
    /// unless they reached a majority. It wins with the votes of the voters whose logs are
    /// no longer than its own; this leader refuses its vote but steps down on the request.
    /// Lease reads end for the rest of this term, as for a transfer.
    pub fn step_aside(&mut self, to: u64, now: Instant) {
        self.lease.transfer_term = self.node.raft.term;
        self.stepped_aside = Some(now);
        self.node.raft.send_timeout_now(to);
    }

    /// Reads the lease let this leader serve at once (see [`Peer::on_request`]).
    pub fn take_ready_reads(&mut self) -> Vec<ReadJob> {
        std::mem::take(&mut self.ready_reads)
    }

    fn on_read_state(&mut self, rs: ReadState, round: &mut Round) {
        let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) else { return };
        let ctx = u64::from_le_bytes(ctx);
        if ctx & RENEWAL != 0 {
            if let Some((c, asked)) = self.lease.renewal {
                if c == ctx {
                    self.lease.renewal = None;
                    self.extend_lease(asked);
                }
            }
            return;
        }
        let Some(job) = self.reads_wait_index.remove(&ctx) else { return };
        self.extend_lease(job.asked);
        if self.durable_applied >= rs.index {
            trace_read_ready(&job, self.trace_at(None));
            round.reads.push(job);
        } else {
            self.reads_wait_apply.push((rs.index, job));
        }
    }

    /// The engine made this peer's applies up to `index` durable: reads waiting for it go.
    pub fn on_applied(&mut self, index: u64, round: &mut Round) {
        self.durable_applied = self.durable_applied.max(index);
        let applied = self.durable_applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_wait_apply).into_iter().partition(|(i, _)| *i <= applied);
        self.reads_wait_apply = waiting;
        let at = self.trace_at(None);
        round.reads.extend(ready.into_iter().map(|(_, j)| {
            trace_read_ready(&j, at);
            j
        }));
    }

    /// Answers `Retry` to everything waiting longer than [`REQUEST_TIMEOUT`].
    pub fn expire(&mut self, now: Instant, epoch: u64) {
        let old = |since: Instant| now.duration_since(since) > REQUEST_TIMEOUT;
        let stale: Vec<u64> = self.pending.iter().filter(|(_, p)| old(p.since)).map(|(i, _)| *i).collect();
        for i in stale {
            let p = self.pending.remove(&i).expect("listed");
            p.reply.error(Status::Retry, epoch, "write not committed in time");
        }
        let stale: Vec<u64> = self.reads_wait_index.iter().filter(|(_, j)| old(j.since)).map(|(c, _)| *c).collect();
        for c in stale {
            let j = self.reads_wait_index.remove(&c).expect("listed");
            j.reply.error(Status::Retry, epoch, "read index not confirmed in time");
        }
        if self.lease.renewal.is_some_and(|(_, asked)| tessera_wire::clock::boottime().saturating_sub(asked) > REQUEST_TIMEOUT) {
            self.lease.renewal = None; // unanswered (no quorum): the next lease read asks again
        }
        let (stale, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_wait_apply).into_iter().partition(|(_, j)| old(j.since));
        self.reads_wait_apply = keep;
        for (_, j) in stale {
            j.reply.error(Status::Retry, epoch, "read waited too long for the apply");
        }
    }

    /// The replica is being destroyed (or reinstalled): everything waiting is redirected,
    /// to `leader` if known.
    pub fn abandon(&mut self, epoch: u64, leader: Option<u32>) {
        self.fail_all(epoch, leader);
    }

    /// Leadership lost: everything waiting is told to go to the new leader. Writes already
    /// proposed may still commit; a client retry is deduplicated.
    fn fail_all(&mut self, epoch: u64, leader: Option<u32>) {
        for (_, p) in std::mem::take(&mut self.pending) {
            p.reply.not_leader(leader, epoch);
        }
        for (_, j) in self.reads_wait_index.drain() {
            j.reply.not_leader(leader, epoch);
        }
        for (_, j) in self.reads_wait_apply.drain(..) {
            j.reply.not_leader(leader, epoch);
        }
        self.lease.renewal = None;
    }

    /// Moves the group's configuration one step towards the map's replica set `target`
    /// (leader only, one configuration change in flight at a time):
    /// 1. replicas in `target` but not in the group join as learners (they catch up by
    ///    snapshot and log while IO continues);
    /// 2. once every such learner has caught up, one joint-consensus change promotes them and
    ///    removes the members `target` no longer lists (a leader that would be removed hands
    ///    leadership to a caught-up member first);
    /// 3. a joint configuration left behind by a leader change is left.
    ///
    /// The voter count never drops below `min(current, target)` voters.
    pub fn reconcile(&mut self, target: &[u32]) {
        if !self.is_leader() || target.is_empty() {
            return;
        }
        let raft = &self.node.raft;
        if raft.pending_conf_index > raft.raft_log.applied {
            return;
        }
        let cs = raft.prs().conf().to_conf_state();
        if !cs.voters_outgoing.is_empty() {
            self.propose_conf(ConfChangeV2::default(), "leave joint configuration");
            return;
        }
        let want: Vec<u64> = target.iter().map(|o| raft_id(*o)).collect();
        let committed = raft.raft_log.committed;
        // Past any snapshot, holding some log, and close to the commit index. Without the
        // first two checks a brand-new learner (matched 0) of a young group would pass the
        // slack. (An idle group's learner may stay in Probe state once matched: not required.)
        let caught_up = |id: &u64| {
            raft.prs()
                .get(*id)
                .is_some_and(|p| p.state != raft::ProgressState::Snapshot && p.matched > 0 && p.matched + CATCHUP_SLACK >= committed)
        };
        // A leader the map moves away hands leadership to a voter that stays *first*, before
        // any new replica copies the PG: the copy can take minutes, and clients route by the
        // map, which no longer lists this OSD. The new leader then runs the move; this
        // replica stays a voter until the new members have caught up, so the group never has
        // fewer voters meanwhile. (Without a staying voter the leader runs the move itself
        // and leaves last, below.)
        if !want.contains(&raft.id) {
            if let Some(to) = want.iter().copied().find(|id| cs.voters.contains(id) && caught_up(id)) {
                if raft.lead_transferee != Some(to) {
                    tracing::info!(pg = %self.pg, to = ?osd_of(to), "the map moves this replica away: handing leadership over before the move");
                    self.transfer_leader(to);
                }
                return;
            }
        }
        let missing: Vec<u64> = want.iter().copied().filter(|id| !cs.voters.contains(id) && !cs.learners.contains(id)).collect();
        if !missing.is_empty() {
            let changes = missing.iter().map(|id| conf_single(ConfChangeType::AddLearnerNode, *id)).collect();
            self.propose_conf(ConfChangeV2 { changes, ..Default::default() }, "add learners");
            return;
        }
        let promote: Vec<u64> = cs.learners.iter().copied().filter(|id| want.contains(id)).collect();
        if !promote.iter().all(caught_up) {
            return; // wait for every new member before changing voters
        }
        let remove: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().filter(|id| !want.contains(id)).collect();
        if promote.is_empty() && remove.is_empty() {
            return;
        }
        let new_voters = cs.voters.iter().filter(|id| want.contains(id)).count() + promote.len();
        if new_voters < cs.voters.len().min(want.len()) {
            return;
        }
        if remove.contains(&raft.id) {
            // The leader leaves last: first make the new members voters, then hand over.
            if !promote.is_empty() {
                let changes = promote.iter().map(|id| conf_single(ConfChangeType::AddNode, *id)).collect();
                let mut cc = ConfChangeV2 { changes, ..Default::default() };
                cc.set_transition(ConfChangeTransition::Auto);
                self.propose_conf(cc, "promote learners before the leader leaves");
            } else if let Some(to) = want.iter().copied().find(|id| cs.voters.contains(id) && caught_up(id)) {
                tracing::info!(pg = %self.pg, to = ?osd_of(to), "handing leadership over before leaving the group");
                self.transfer_leader(to);
            }
            return;
        }
        let mut changes: Vec<ConfChangeSingle> = promote.iter().map(|id| conf_single(ConfChangeType::AddNode, *id)).collect();
        changes.extend(remove.iter().map(|id| conf_single(ConfChangeType::RemoveNode, *id)));
        let mut cc = ConfChangeV2 { changes: changes.into(), ..Default::default() };
        cc.set_transition(ConfChangeTransition::Auto);
        self.propose_conf(cc, "promote learners and remove old members");
    }

    /// A follower waiting for a snapshot longer than [`SNAPSHOT_PATIENCE`] gets a new
    /// ticket (the old one may have been lost; a follower still copying drops the new one).
    pub fn retry_stuck_snapshots(&mut self, now: Instant) {
        let waiting: Vec<u64> =
            self.node.raft.prs().iter().filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot).map(|(id, _)| *id).collect();
        self.snapshot_waits.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let since = *self.snapshot_waits.entry(id).or_insert(now);
            if now.duration_since(since) > SNAPSHOT_PATIENCE {
                tracing::info!(pg = %self.pg, to = ?osd_of(id), "snapshot not installed in time: sending a new ticket");
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
                self.snapshot_waits.remove(&id);
            }
        }
    }

    fn propose_conf(&mut self, cc: ConfChangeV2, what: &str) {
        tracing::info!(pg = %self.pg, changes = ?cc.changes.iter().map(|c| (c.get_change_type(), osd_of(c.node_id))).collect::<Vec<_>>(), "proposing: {what}");
        if let Err(e) = self.node.propose_conf_change(vec![], cc) {
            tracing::warn!(pg = %self.pg, "configuration change refused: {e}");
        }
    }

    /// The op that discards applied entries beyond the `keep` most recent, if that frees at
    /// least `keep / 10` entries. Applied entries' data stays where objects still point at
    /// it (blocks are reference-counted by the engine).
    pub fn compaction(&mut self, keep: u64) -> Option<Op> {
        if self.installing.is_some() {
            return None;
        }
        let upto = self.durable_applied.saturating_sub(keep);
        let first = self.node.store().first_index_now();
        if upto == 0 || upto < first + keep / 10 {
            return None;
        }
        let term = self.node.store().term_now(upto)?;
        self.node.mut_store().cache_compact(upto, term);
        Some(Op::LogCompact { pg: self.pg, upto, term })
    }

    /// Leader only: the op that compacts the log just past the entries a member whose device
    /// is full (`full(raft id)`) still lacks, so that it is sent a snapshot instead. A full
    /// member drops appends that carry data, so the log could never bring it the trims and
    /// deletes queued behind them that would give its space back; a snapshot of the PG as it
    /// is now (after those trims) replaces its old copy and fits if the PG shrank (the
    /// receiver checks, `store/fullness.rs`). Entries every other member still lacks are kept.
    pub fn compaction_for_full(&mut self, full: impl Fn(u64) -> bool) -> Option<Op> {
        if self.installing.is_some() || !self.is_leader() {
            return None;
        }
        let r = &self.node.raft;
        let me = r.id;
        let last = r.raft_log.last_index();
        let lagging_full =
            r.prs().iter().filter(|(id, pr)| **id != me && full(**id) && pr.matched < last).map(|(_, pr)| pr.matched).min()?;
        let others = r.prs().iter().filter(|(id, _)| **id != me && !full(**id)).map(|(_, pr)| pr.matched).min().unwrap_or(u64::MAX);
        let upto = (lagging_full + 1).min(others).min(self.durable_applied);
        if upto <= self.node.store().first_index_now() {
            return None;
        }
        let term = self.node.store().term_now(upto)?;
        self.node.mut_store().cache_compact(upto, term);
        Some(Op::LogCompact { pg: self.pg, upto, term })
    }

    /// Where this replica records trace stages (entry `index`, if any).
    fn trace_at(&self, index: Option<u64>) -> trace::At {
        trace::At { node: osd_of(self.node.raft.id), entry: index.map(|i| (self.pg.pool, self.pg.index, i)) }
    }

    /// Records `stage` for every sampled write among `entries` (tracing on only), and lists
    /// them in `traced` to be recorded as durable later.
    pub fn trace_entries(&self, entries: &[Entry], stage: &str, mut traced: Option<&mut Vec<(u64, u64, PgId, u64)>>) {
        let ns = trace::now_ns();
        for e in entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty()) {
            let Ok((c, _)) = Command::decode(&e.data) else { continue };
            if trace::sampled(c.client, c.seq) {
                trace::record(stage, c.client, c.seq, self.trace_at(Some(e.index)), ns);
                if let Some(t) = traced.as_deref_mut() {
                    t.push((c.client, c.seq, self.pg, e.index));
                }
            }
        }
    }

    /// Steps a message from a peer OSD. Dropped while a snapshot is being installed (the
    /// sender retransmits), and votes are refused while an interrupted install left the log
    /// empty.
    pub fn step(&mut self, mut m: Message) {
        if self.installing.is_some() {
            return;
        }
        // A leader that remembers this replica further along than its log now is (an
        // interrupted snapshot install emptied it) sends a commit index past our last entry,
        // on which raft-rs panics. Entries we hold are a prefix of the leader's, so clamping
        // is safe.
        if m.get_msg_type() == MessageType::MsgHeartbeat {
            m.commit = m.commit.min(self.node.raft.raft_log.last_index());
        }
        let vote = matches!(m.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if vote && self.node.store().no_votes {
            return;
        }
        if vote && self.lease_reads && tessera_wire::clock::boottime().saturating_sub(self.opened) < VOTE_GUARD {
            return; // see VOTE_GUARD: an old leader's lease may still count on this replica
        }
        if let Err(e) = self.node.step(m) {
            tracing::debug!(pg = %self.pg, "raft step: {e}");
        }
    }
}

fn trace_read_ready(job: &ReadJob, at: trace::At) {
    if trace::sampled(job.client, job.seq) {
        trace::record(trace::stage::READ_READY, job.client, job.seq, at, trace::now_ns());
    }
}

fn conf_single(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    let mut c = ConfChangeSingle { node_id, ..Default::default() };
    c.set_change_type(change_type);
    c
}

fn check_request(req: &Request, data: &[u8]) -> Result<(), String> {
    let data_len = data.len();
    match req.op {
        OpCode::Usage | OpCode::DropVolume | OpCode::Rollback | OpCode::TrimVersions | OpCode::Promote | OpCode::SnapSeq => {
            if req.offset != 0 || req.len != 0 {
                return Err(format!("{:?} takes no range", req.op));
            }
            if req.op == OpCode::TrimVersions {
                return tessera_wire::decode_keep(data).map(drop).map_err(|e| e.to_string());
            }
            if data_len != 0 {
                return Err("only writes carry data".into());
            }
            if req.op == OpCode::Rollback && (req.snap == SNAP_HEAD || req.snap == 0) {
                return Err("rollback needs a snapshot id".into());
            }
            if req.op == OpCode::SnapSeq && req.snap == SNAP_HEAD {
                return Err("a snapshot context push needs the map epoch it was set at".into());
            }
            if req.snapc > MAX_SNAP_ID || (req.op == OpCode::Rollback && req.snap > MAX_SNAP_ID) {
                return Err(format!("snapshot id {} / {} out of range", req.snap, req.snapc));
            }
            return Ok(());
        }
        _ => {}
    }
    if req.snapc > MAX_SNAP_ID {
        return Err(format!("snapshot context {} out of range", req.snapc));
    }
    let aligned = req.offset.is_multiple_of(BLOCK) && req.len.is_multiple_of(BLOCK);
    match req.op {
        OpCode::Read | OpCode::Write | OpCode::WriteZeroes if !aligned => {
            return Err(format!("offset {} / length {} not a multiple of 4096", req.offset, req.len))
        }
        OpCode::Read | OpCode::Write if req.len > MAX_IO => return Err(format!("{} bytes is more than the {MAX_IO} per request", req.len)),
        _ => {}
    }
    if req.op != OpCode::Delete && req.offset.checked_add(req.len).is_none_or(|end| end > MAX_OBJECT) {
        return Err(format!("range {}+{} beyond the largest object size {MAX_OBJECT}", req.offset, req.len));
    }
    if req.op == OpCode::Write && data_len as u64 != req.len {
        return Err(format!("write of {} bytes carries {data_len} bytes", req.len));
    }
    if req.op != OpCode::Write && data_len != 0 {
        return Err("only writes carry data".into());
    }
    let staging = req.op == OpCode::Write && req.snap == SNAP_STAGING;
    if req.op.is_write() && req.snap != SNAP_HEAD && !staging {
        return Err("snapshots are read-only".into());
    }
    Ok(())
}

/// Whether the command changes a head under a snapshot context, so a stale context must be
/// refused (`contexts.rs`): writes (not a clone's staging copy), trims, deletes, copy-ups.
fn context_checked(c: &Command) -> bool {
    match c.op {
        OpCode::Write => c.key.snap != SNAP_STAGING,
        OpCode::WriteZeroes | OpCode::Delete | OpCode::Promote => true,
        _ => false,
    }
}

/// The engine ops applying one committed command. Every change of a head is preceded by
/// `Preserve` under the command's snapshot context (copy-on-write for snapshots); the
/// engine evaluates it against its state in log order, so every replica decides alike.
fn apply_ops(pg: PgId, c: &Command, payload: &[u8], index: u64, ops: &mut Vec<Op>) {
    let (volume, object) = (c.key.volume, c.key.object);
    let preserve = Op::Preserve { pg, volume, object, snap: c.snapc };
    match c.op {
        OpCode::Write if c.key.snap == SNAP_STAGING => {
            ops.push(Op::ApplyWrite { pg, key: c.key, offset: c.offset, entry: index, entry_offset: 0, len: c.len });
        }
        OpCode::Write => {
            ops.push(preserve);
            ops.push(Op::ApplyWrite { pg, key: c.key, offset: c.offset, entry: index, entry_offset: 0, len: c.len });
        }
        OpCode::WriteZeroes => {
            ops.push(preserve);
            ops.push(Op::WriteZeroes { pg, key: c.key, offset: c.offset, len: c.len });
        }
        OpCode::Delete => {
            ops.push(preserve);
            ops.push(Op::Delete { pg, key: c.key });
        }
        OpCode::TrimVersions => {
            // Validated when proposed and when decoded; an empty list would drop every
            // snapshot's data, so an undecodable one (impossible) trims nothing.
            match tessera_wire::decode_keep(payload) {
                Ok(keep) => ops.push(Op::TrimVersions { pg, volume, keep, horizon: c.key.snap }),
                Err(e) => tracing::error!(%pg, index, "trim with an undecodable keep list skipped: {e}"),
            }
        }
        OpCode::DropVolume => ops.push(Op::DropVolume { pg, volume }),
        OpCode::Rollback => ops.push(Op::Rollback { pg, volume, snap: c.key.snap, seq: c.snapc }),
        OpCode::Promote => ops.push(Op::Promote { pg, volume, object, snap: c.snapc }),
        OpCode::SnapSeq => {} // the PG's context table only (`contexts.rs`)
        OpCode::Read | OpCode::Usage | OpCode::Scan | OpCode::ReadRaw | OpCode::Digest | OpCode::Ticket => {
            tracing::error!(%pg, index, op = ?c.op, "read-class op in the log skipped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_engine::{Engine, EngineConfig, FormatOptions, MemDevice};

    /// With lease reads on, a replica that just opened (a restart: it forgot when it last
    /// heard from its leader) refuses votes for VOTE_GUARD, so it cannot help elect a new
    /// leader while the old one's lease, which its last answer may have extended, still runs.
    #[test]
    fn a_replica_refuses_votes_for_a_moment_after_it_opens_when_leases_are_on() {
        let dev = Arc::new(MemDevice::new(16 << 20));
        let engine = Arc::new(Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap());
        let pg = PgId::new(1, 0);
        let mut peer = Peer::open(pg, 0, PgStorage::open(engine, pg, 0).unwrap(), 0).unwrap();
        peer.lease_reads = true;
        let vote = |term: u64| {
            let mut m = Message { from: raft_id(1), to: raft_id(0), term, ..Default::default() };
            m.set_msg_type(MessageType::MsgRequestVote);
            m
        };
        let granted = |peer: &mut Peer| {
            let mut round = Round::default();
            peer.collect(&mut round, 1);
            round
                .after_persist
                .iter()
                .chain(&round.messages)
                .any(|(_, m)| m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject)
        };
        peer.step(vote(7));
        assert!(!granted(&mut peer), "no vote right after opening");
        assert_eq!(peer.node.raft.term, 0, "the request was not even looked at");
        std::thread::sleep(VOTE_GUARD + Duration::from_millis(50));
        peer.step(vote(8));
        assert!(granted(&mut peer), "votes again once the guard passed");
    }

    /// Regression: a replica whose log was emptied (interrupted snapshot install, or
    /// re-created empty) gets a heartbeat whose commit index the leader remembers from
    /// before; raft-rs panicked ("to_commit ... out of range") and took the OSD down.
    #[test]
    fn heartbeat_commit_beyond_an_empty_log_does_not_panic() {
        let dev = Arc::new(MemDevice::new(16 << 20));
        let engine = Arc::new(Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap());
        let pg = PgId::new(1, 0);
        let storage = PgStorage::open(engine, pg, 0).unwrap();
        let mut peer = Peer::open(pg, 0, storage, 0).unwrap();
        let mut m = Message { from: raft_id(1), to: raft_id(0), term: 7, commit: 20, ..Default::default() };
        m.set_msg_type(MessageType::MsgHeartbeat);
        peer.step(m);
        let mut round = Round::default();
        assert!(peer.collect(&mut round, 1).is_none());
        assert_eq!(peer.node.raft.raft_log.committed, 0);
        assert!(
            round.after_persist.iter().any(|(_, m)| m.get_msg_type() == MessageType::MsgHeartbeatResponse),
            "the heartbeat is answered"
        );
    }
}
