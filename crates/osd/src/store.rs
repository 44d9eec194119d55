//! The OSD's event loop: one thread that owns every PG replica ([`Peer`]) and drives them
//! in rounds.
//!
//! A round: feed the queued events (Raft messages, client requests, engine completions, map
//! changes) to the peers, tick them every [`TICK`], collect every peer's Raft output, send
//! messages (one batch per destination OSD), and submit every PG's log appends, hard states
//! and applies as **one** engine transaction: one `fdatasync` for all groups. Messages that
//! must follow persistence (votes, append acknowledgements) leave when the engine calls back.
//! Engine transactions complete in submission order, so confirmations are in order too.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{HardState, Message, MessageType, Snapshot};
use raft::StateRole;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::{Engine, EngineError, MetaScope, Op, PgId, Txn};
use tessera_mon::model::ClusterMap;
use tessera_wire::msg::{decode_heartbeats, decode_tombstones, encode_heartbeats, encode_tombstones, HEARTBEATS_POOL, TOMBSTONES_POOL};
use tessera_wire::{Heartbeat, OpCode, RaftItem, Request, Response, Status, UsageEntry, WirePg};

use crate::error::{status_of, OsdError};
use crate::peer::{osd_of, Peer, ReadJob, Round};
use crate::reply::Reply;
use crate::snapshot::Ticket;
use crate::storage::PgStorage;
use crate::transport::RaftTransport;

/// Raft tick interval.
pub const TICK: Duration = Duration::from_millis(100);
/// Data bytes per engine transaction; a round with more is split (transactions complete in
/// order, so the split is invisible to the peers).
const TXN_BYTES: usize = 2 << 20;
const PG_KEY_PREFIX: &str = "pg/";

pub enum Event {
    Raft {
        from: u32,
        items: Vec<RaftItem>,
    },
    Request {
        req: Request,
        data: Bytes,
        reply: Reply,
    },
    /// The engine finished round `round` (all of its transactions).
    Durable {
        round: u64,
        result: Result<(), EngineError>,
    },
    Map(Arc<ClusterMap>),
    Unreachable(u32),
    /// A snapshot install finished (`Ok`: bytes copied).
    Installed {
        pg: PgId,
        snap: Snapshot,
        result: Result<u64, String>,
    },
    Stop,
}

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
}

struct InFlight {
    id: u64,
    persisted: Vec<(PgId, u64)>,
    applied: Vec<(PgId, u64)>,
    after_persist: Vec<(PgId, Message)>,
}

pub struct Store {
    osd: u32,
    engine: Arc<Engine>,
    peers: BTreeMap<PgId, Peer>,
    map: Arc<ClusterMap>,
    events: Sender<Event>,
    transport: Box<dyn RaftTransport>,
    rt: tokio::runtime::Handle,
    inflight: VecDeque<InFlight>,
    next_round: u64,
    status: Arc<Mutex<StoreStatus>>,
    counters: Counters,
    /// Fraction of the device held by live blocks, refreshed every round.
    space_used: f64,
    /// Set while a cleaning run started because writes are refused is under way.
    cleaning: Arc<std::sync::atomic::AtomicBool>,
    ticks: u64,
    cfg: StoreConfig,
    /// The current map, for background tasks (snapshot copies look up sources in it).
    shared_map: Arc<parking_lot::RwLock<Arc<ClusterMap>>>,
}

/// Tunables of the event loop.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Applied log entries kept per PG (see [`crate::peer::KEEP_ENTRIES`]).
    pub keep_entries: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { keep_entries: crate::peer::KEEP_ENTRIES }
    }
}

/// Leaders compare their group with the map every this many ticks.
const RECONCILE_TICKS: u64 = 5;

/// Largest batch data per frame: well under the receiver's `MAX_DATA` (one Raft message is
/// at most `max_size_per_msg` plus one entry).
const FRAME_ITEMS_BYTES: usize = 8 << 20;

/// Cuts a destination's encoded items into frames of at most [`FRAME_ITEMS_BYTES`] (a single
/// larger item travels alone), at item boundaries.
fn split_items(items: Bytes) -> Vec<Bytes> {
    if items.len() <= FRAME_ITEMS_BYTES {
        return vec![items];
    }
    let mut out = Vec::new();
    let (mut start, mut pos) = (0usize, 0usize);
    while pos < items.len() {
        let len = u32::from_le_bytes(items[pos + 8..pos + 12].try_into().expect("4 bytes")) as usize;
        let end = pos + 12 + len;
        if end - start > FRAME_ITEMS_BYTES && pos > start {
            out.push(items.slice(start..pos));
            start = pos;
        }
        pos = end;
    }
    out.push(items.slice(start..));
    out
}

fn pg_key(pg: PgId) -> String {
    format!("{PG_KEY_PREFIX}{}.{}", pg.pool, pg.index)
}

fn parse_pg_key(k: &[u8]) -> Option<PgId> {
    let s = std::str::from_utf8(k).ok()?.strip_prefix(PG_KEY_PREFIX)?;
    let (a, b) = s.split_once('.')?;
    Some(PgId::new(a.parse().ok()?, b.parse().ok()?))
}

impl Store {
    /// Opens every PG replica the engine holds. `events` must be the sender of the channel
    /// [`Store::run`] will receive from.
    pub fn open(
        osd: u32,
        engine: Arc<Engine>,
        events: Sender<Event>,
        transport: Box<dyn RaftTransport>,
        rt: tokio::runtime::Handle,
        cfg: StoreConfig,
    ) -> Result<Store, OsdError> {
        let mut store = Store {
            osd,
            engine,
            peers: BTreeMap::new(),
            map: Arc::new(ClusterMap::default()),
            events,
            transport,
            rt,
            inflight: VecDeque::new(),
            next_round: 1,
            status: Arc::new(Mutex::new(StoreStatus::default())),
            counters: Counters::default(),
            space_used: 0.0,
            cleaning: Arc::default(),
            ticks: 0,
            cfg,
            shared_map: Arc::default(),
        };
        let pgs: Vec<PgId> = store.engine.meta_scan(MetaScope::Global).iter().filter_map(|(k, _)| parse_pg_key(k)).collect();
        for pg in pgs {
            store.open_peer(pg)?;
        }
        tracing::info!(osd, pgs = store.peers.len(), "store opened");
        Ok(store)
    }

    pub fn status_handle(&self) -> Arc<Mutex<StoreStatus>> {
        self.status.clone()
    }

    fn open_peer(&mut self, pg: PgId) -> Result<(), OsdError> {
        let storage = PgStorage::open(self.engine.clone(), pg, self.osd)?;
        // Never past the stored commit index (raft-rs refuses to start otherwise); applies
        // are idempotent, so replaying a few is harmless.
        let commit = storage.hard_state().commit;
        let applied = self.engine.applied_index(pg).map_err(EngineError::from)?.min(commit);
        let peer = Peer::open(pg, self.osd, storage, applied).map_err(|source| OsdError::Raft { pg, source })?;
        self.peers.insert(pg, peer);
        Ok(())
    }

    /// Creates the replica of a PG the map assigns to this OSD. A PG that never moved since
    /// its pool was created is bootstrapped with its initial replicas as voters; otherwise
    /// the replica starts empty and waits for the group's leader.
    fn create_peer(&mut self, pg: PgId, voters: Option<&[u32]>) -> Result<(), OsdError> {
        self.create_peers(vec![(pg, voters.map(<[u32]>::to_vec))])
    }

    /// Creates several replicas with one engine transaction (one fsync however many PGs a
    /// map change brings).
    fn create_peers(&mut self, new: Vec<(PgId, Option<Vec<u32>>)>) -> Result<(), OsdError> {
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

    fn apply_map(&mut self, map: Arc<ClusterMap>) -> Result<(), OsdError> {
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
                if !entry.osds().contains(&self.osd) || self.peers.contains_key(&pg) {
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
    fn adopt(&mut self, pg: PgId, kind: MessageType, from: u32) -> Result<bool, OsdError> {
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
    fn on_tombstone(&mut self, pg: PgId, term: u64, from: u32) -> Result<(), OsdError> {
        let listed = self.map.pg_table(pg.pool).and_then(|t| t.pgs.get(pg.index as usize)).is_some_and(|e| e.osds().contains(&self.osd));
        let newer = self.peers.get(&pg).is_some_and(|p| p.node.raft.term > term);
        if listed || newer || !self.peers.contains_key(&pg) {
            return Ok(());
        }
        let Some(mut peer) = self.peers.remove(&pg) else { return Ok(()) };
        peer.abandon(self.map.epoch);
        let txn = Txn::new().with(Op::DropPg { pg }).with(Op::MetaDelete { scope: MetaScope::Global, key: Bytes::from(pg_key(pg)) });
        self.engine.commit(txn)?;
        self.counters.replicas_dropped += 1;
        tracing::info!(%pg, leader = from, term, "replica removed from the group: dropped its data");
        Ok(())
    }

    /// Leaders move their groups towards the map's replica sets.
    fn reconcile(&mut self) {
        let map = self.map.clone();
        let now = Instant::now();
        for p in self.peers.values_mut().filter(|p| p.is_leader()) {
            p.retry_stuck_snapshots(now);
            if let Some(entry) = map.pg_table(p.pg.pool).and_then(|t| t.pgs.get(p.pg.index as usize)) {
                p.reconcile(entry.osds());
            }
        }
    }

    /// While writes are refused, runs the engine's cleaner to completion in the background
    /// (one run at a time): with writes refused no batches come to pace it, and the free
    /// segment count only moves when it runs.
    fn clean_if_refusing(&self) {
        use std::sync::atomic::Ordering;
        if self.admits_writes() || self.cleaning.swap(true, Ordering::AcqRel) {
            return;
        }
        let (engine, cleaning, osd) = (self.engine.clone(), self.cleaning.clone(), self.osd);
        self.rt.spawn_blocking(move || {
            if let Err(e) = engine.clean() {
                tracing::warn!(osd, "cleaning a full device failed: {e}");
            }
            cleaning.store(false, Ordering::Release);
        });
    }

    fn pressure(&self) -> crate::space::Pressure {
        let (free, total) = self.engine.segments();
        crate::space::pressure(self.space_used, free, total)
    }

    fn admits_writes(&self) -> bool {
        let (free, total) = self.engine.segments();
        crate::space::admits_writes(self.space_used, free, total)
    }

    /// Queues log compactions (one engine transaction with the next round's work).
    fn compact(&mut self) {
        let expired = self.engine.expire_pins(crate::snapshot::PIN_IDLE);
        if expired > 0 {
            tracing::info!(osd = self.osd, expired, "released idle pinned PG images");
        }
        let keep = crate::space::keep_entries(self.cfg.keep_entries, self.pressure());
        let ops: Vec<Op> = self.peers.values_mut().filter_map(|p| p.compaction(keep)).collect();
        if !ops.is_empty() {
            self.counters.compactions += ops.len() as u64;
            self.execute(Round { ops, ..Round::default() });
        }
    }

    /// Runs until `Event::Stop`, the channel closing, or a fatal engine error.
    pub fn run(mut self, rx: Receiver<Event>) -> Result<(), OsdError> {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    if !self.handle(ev)? {
                        return Ok(());
                    }
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(ev) => {
                                if !self.handle(ev)? {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                let epoch = self.map.epoch;
                for p in self.peers.values_mut() {
                    p.tick();
                    p.expire(now, epoch);
                }
                next_tick = now + TICK;
                self.ticks += 1;
                if self.ticks.is_multiple_of(RECONCILE_TICKS) {
                    self.reconcile();
                }
                if self.ticks.is_multiple_of(RECONCILE_TICKS) || crate::space::compact_eagerly(self.pressure()) {
                    self.compact();
                }
                self.clean_if_refusing();
                self.publish_status();
            }
            for _ in 0..4 {
                if !self.round() {
                    break;
                }
            }
        }
    }

    /// Returns `false` to stop.
    fn handle(&mut self, ev: Event) -> Result<bool, OsdError> {
        let epoch = self.map.epoch;
        match ev {
            Event::Raft { from, items } => {
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
                    let msgs = if item.pg.pool == HEARTBEATS_POOL {
                        match decode_heartbeats(&item.msg) {
                            Ok(hbs) => {
                                hbs.into_iter().map(|h| (PgId::new(h.pg.pool, h.pg.index), self.heartbeat_message(from, h))).collect()
                            }
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
                        if !self.peers.contains_key(&pg) && !self.adopt(pg, m.get_msg_type(), from)? {
                            continue;
                        }
                        let Some(peer) = self.peers.get_mut(&pg) else { continue };
                        // A leader answers members it no longer has with a tombstone.
                        if peer.is_leader() && peer.node.raft.prs().get(crate::peer::raft_id(from)).is_none() {
                            tombstones.push((WirePg { pool: pg.pool, index: pg.index }, peer.node.raft.term));
                            continue;
                        }
                        peer.step(m);
                    }
                }
                if !tombstones.is_empty() {
                    let mut buf = BytesMut::new();
                    tessera_wire::msg::put_raft_item(&mut buf, WirePg { pool: TOMBSTONES_POOL, index: 0 }, &encode_tombstones(&tombstones));
                    self.transport.send(from, buf.freeze());
                }
            }
            Event::Request { req, data: _, reply } if matches!(req.op, OpCode::Scan | OpCode::ReadRaw) => {
                let engine = self.engine.clone();
                self.rt.spawn_blocking(move || match crate::snapshot::serve(&engine, &req) {
                    Ok(data) => reply.send(Response::ok(epoch), data),
                    Err((status, why)) => reply.error(status, epoch, why),
                });
            }
            Event::Request { req, data: _, reply } if req.op == OpCode::Write && !self.admits_writes() => {
                let (free, total) = self.engine.segments();
                let why = format!(
                    "osd {} is full ({:.0}% live data, {free} of {total} segments free); writes are refused until space is freed",
                    self.osd,
                    self.space_used * 100.0
                );
                reply.error(Status::NoSpace, epoch, why);
            }
            Event::Request { req, data, reply } => {
                let pg = PgId::new(req.pg.pool, req.pg.index);
                match self.peers.get_mut(&pg) {
                    Some(peer) => peer.on_request(req, data, reply, epoch, Instant::now()),
                    None => reply.error(Status::NoPg, epoch, format!("osd {} has no replica of pg {pg}", self.osd)),
                }
            }
            Event::Durable { round, result } => {
                result?;
                let done = self.inflight.pop_front().ok_or_else(|| OsdError::Stopped("completion of an unknown round".into()))?;
                debug_assert_eq!(done.id, round);
                self.finish(done);
            }
            Event::Installed { pg, snap, result } => match result {
                Ok(bytes) => {
                    tracing::info!(%pg, index = snap.get_metadata().index, bytes, "snapshot installed");
                    self.counters.snapshots_installed += 1;
                    self.counters.snapshot_bytes += bytes;
                    let mut r = Round::default();
                    if let Some(p) = self.peers.get_mut(&pg) {
                        p.installed(&snap, &mut r, epoch);
                    }
                    self.execute(r);
                }
                // Unreachable today (the copy task retries until it succeeds); keep the replica.
                Err(e) => tracing::error!(%pg, "snapshot install failed: {e}"),
            },
            Event::Map(map) => self.apply_map(map)?,
            Event::Unreachable(osd) => {
                // Queued messages to it were dropped: a snapshot ticket among them is lost,
                // so leaders waiting on one send a new one later.
                let id = crate::peer::raft_id(osd);
                for p in self.peers.values_mut() {
                    p.node.report_unreachable(id);
                    let in_snapshot = p.node.raft.prs().get(id).is_some_and(|pr| pr.state == raft::ProgressState::Snapshot);
                    if p.is_leader() && in_snapshot {
                        p.node.report_snapshot(id, raft::SnapshotStatus::Failure);
                    }
                }
            }
            Event::Stop => return Ok(false),
        }
        Ok(true)
    }

    /// Confirms a durable round to its peers and releases what waited on it.
    fn finish(&mut self, done: InFlight) {
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
    fn round(&mut self) -> bool {
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
            self.start_install(pg, snap, hard);
        }
        if r.is_empty() {
            return false;
        }
        self.execute(r);
        true
    }

    /// Sends, serves and submits what a round collected.
    fn execute(&mut self, mut r: Round) {
        if r.is_empty() {
            return;
        }
        self.count(&r.messages);
        self.count(&r.after_persist);
        self.send(std::mem::take(&mut r.messages));
        self.serve_reads(std::mem::take(&mut r.reads));
        let id = self.next_round;
        self.next_round += 1;
        let flight = InFlight { id, persisted: r.persisted, applied: r.applied, after_persist: r.after_persist };
        if r.ops.is_empty() {
            // Nothing to write: confirm after what is already in flight, or now.
            match self.inflight.back_mut() {
                Some(last) => {
                    last.persisted.extend(flight.persisted);
                    last.after_persist.extend(flight.after_persist);
                }
                None => self.finish(flight),
            }
            return;
        }
        self.submit(id, r.ops);
        self.inflight.push_back(flight);
    }

    fn count(&mut self, msgs: &[(PgId, Message)]) {
        for (_, m) in msgs {
            match m.get_msg_type() {
                MessageType::MsgAppend => self.counters.entries_sent += m.entries.len() as u64,
                MessageType::MsgSnapshot => self.counters.snapshots_sent += 1,
                _ => {}
            }
        }
    }

    /// Copies the snapshot's objects in the background, from its source or, if that fails,
    /// from any other replica of its configuration, until one succeeds.
    fn start_install(&self, pg: PgId, snap: Snapshot, hard: HardState) {
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
            loop {
                // Addresses from the current map at every attempt (sources may move).
                let addr = sources.get(attempt % sources.len().max(1)).and_then(|o| map.read().osd(*o).map(|r| r.addr.clone()));
                let Some(addr) = addr else {
                    tracing::warn!(%pg, ?sources, "no address for any snapshot source yet");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                match crate::snapshot::install(engine.clone(), pg, hard.clone(), snap.clone(), addr.clone()).await {
                    Ok(bytes) => {
                        let _ = events.send(Event::Installed { pg, snap, result: Ok(bytes) });
                        return;
                    }
                    Err(e) => tracing::warn!(%pg, %addr, "snapshot copy failed, retrying: {e}"),
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt.min(10) as u64)).await;
            }
        });
    }

    fn submit(&self, id: u64, ops: Vec<Op>) {
        let mut chunks: Vec<Txn> = vec![Txn::new()];
        let mut bytes = 0usize;
        let mut add = |op: Op, size: usize, chunks: &mut Vec<Txn>| {
            if bytes + size > TXN_BYTES && !chunks.last().expect("non-empty").is_empty() {
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
                        if size + e.data.len() > TXN_BYTES && !part.is_empty() {
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
        let n = chunks.len();
        for (i, txn) in chunks.into_iter().enumerate() {
            let tx = self.events.clone();
            let last = i + 1 == n;
            self.engine.submit(txn, move |result| {
                if last || result.is_err() {
                    let _ = tx.send(Event::Durable { round: id, result });
                }
            });
        }
    }

    /// Sends messages grouped into one batch per destination OSD.
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
    /// answers) of all groups for one destination are merged into one compact item.
    fn send(&self, msgs: Vec<(PgId, Message)>) {
        let mut by_osd: HashMap<u32, BytesMut> = HashMap::new();
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
            let bytes = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(%pg, "raft message does not encode: {e}");
                    continue;
                }
            };
            let buf = by_osd.entry(to).or_default();
            tessera_wire::msg::put_raft_item(buf, WirePg { pool: pg.pool, index: pg.index }, &bytes);
        }
        for (to, hbs) in heartbeats {
            let buf = by_osd.entry(to).or_default();
            tessera_wire::msg::put_raft_item(buf, WirePg { pool: HEARTBEATS_POOL, index: 0 }, &encode_heartbeats(&hbs));
        }
        for (to, items) in by_osd {
            for frame in split_items(items.freeze()) {
                self.transport.send(to, frame);
            }
        }
    }

    /// Reads run on the blocking pool, off the event loop.
    fn serve_reads(&self, reads: Vec<ReadJob>) {
        let epoch = self.map.epoch;
        for job in reads {
            let engine = self.engine.clone();
            self.rt.spawn_blocking(move || {
                if job.op == OpCode::Usage {
                    let mut out = Vec::new();
                    for (volume, u) in engine.volume_usage(job.pg) {
                        let e = UsageEntry { volume, objects: u.objects, head_blocks: u.head_blocks, unique_blocks: u.unique_blocks };
                        e.put(&mut out);
                    }
                    return job.reply.send(Response::ok(epoch), Bytes::from(out));
                }
                match engine.read_version(job.pg, job.key, job.offset, job.len) {
                    Ok(Some(data)) => job.reply.send(Response::ok(epoch), Bytes::from(data)),
                    Ok(None) => job.reply.send(Response::error(Status::Absent, epoch, ""), Bytes::new()),
                    Err(e) => job.reply.error(status_of(&e), epoch, e.to_string()),
                }
            });
        }
    }

    fn publish_status(&self) {
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
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_frames_at_item_boundaries() {
        let mut buf = BytesMut::new();
        let big = vec![7u8; 3 << 20];
        for i in 0..7 {
            tessera_wire::msg::put_raft_item(&mut buf, WirePg { pool: 1, index: i }, &big);
        }
        tessera_wire::msg::put_raft_item(&mut buf, WirePg { pool: 1, index: 99 }, &vec![1u8; FRAME_ITEMS_BYTES + 1]);
        let all = buf.freeze();
        let frames = split_items(all.clone());
        assert!(frames.len() >= 4);
        let mut items = Vec::new();
        for f in &frames {
            let decoded = tessera_wire::msg::decode_raft_items(f).unwrap();
            assert!(f.len() <= FRAME_ITEMS_BYTES || decoded.len() == 1, "only a single oversized item may exceed the limit");
            assert!(f.len() <= tessera_wire::msg::MAX_DATA as usize);
            items.extend(decoded);
        }
        assert_eq!(items, tessera_wire::msg::decode_raft_items(&all).unwrap());
        assert_eq!(split_items(Bytes::from_static(b"")).len(), 1);
    }
}
