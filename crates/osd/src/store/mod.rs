//! The OSD's event loop: one thread that owns every PG replica ([`Peer`]) and drives them
//! in rounds.
//!
//! A round: feed the queued events (Raft messages, client requests, engine completions, map
//! changes) to the peers, tick them every [`TICK`], collect every peer's Raft output, send
//! messages (one batch per destination OSD), and submit every PG's log appends, hard states
//! and applies as **one** engine transaction: one `fdatasync` for all groups. Messages that
//! must follow persistence (votes, append acknowledgements) leave when the engine calls back.
//! Engine transactions complete in submission order, so confirmations are in order too.
//!
//! Submodules, one concept each: `rounds` (collect, submit, confirm), `messages` (Raft
//! batches in and out), `reads` (reads and snapshot-copy requests on the blocking pool),
//! `membership` (which replicas this OSD hosts), `install` (Raft snapshot installs),
//! `maintenance` (compaction, pins, cleaning), `status` (what is published every tick),
//! `scrub` (digests of a replica for comparison), `damage` (repair of a replica whose data
//! failed a checksum, see [`crate::repair`]), `fullness` (what a full device may take, and
//! how the store survives one).

mod damage;
mod fullness;
mod install;
mod maintenance;
mod membership;
mod messages;
mod reads;
mod rounds;
mod scrub;
mod status;

pub use status::{Counters, PgStatus, StoreStatus};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::Snapshot;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::{Engine, EngineError, MetaScope, PgId};
use tessera_mon::model::ClusterMap;
use tessera_wire::{OpCode, RaftItem, Request, Status};

use crate::error::OsdError;
use crate::peer::Peer;
use crate::reply::Reply;
use crate::transport::RaftTransport;
use rounds::InFlight;

/// Raft tick interval.
pub const TICK: Duration = Duration::from_millis(100);

/// Sends events to a store: from any thread, never blocking.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;
/// The store's end of its event queue.
pub type EventReceiver = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// A store's event queue.
pub fn event_channel() -> (EventSender, EventReceiver) {
    tokio::sync::mpsc::unbounded_channel()
}

pub enum Event {
    Raft {
        from: u32,
        items: Vec<RaftItem>,
    },
    Request {
        req: Request,
        data: Bytes,
        /// The client's checksum of each 4 KiB block of `data` (a frame's table, see
        /// [`tessera_wire::FLAG_BLOCK_CRCS`], verified on receipt), or empty.
        crcs: Bytes,
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
    /// A block of this replica's data of `pg` failed its checksum (`what` says where). The
    /// store marks the PG damaged and answers `reply` (a client read that hit it).
    Damaged {
        pg: PgId,
        what: String,
        reply: Option<Reply>,
    },
    /// The leader's answer to this damaged replica's ticket request (see [`crate::repair`]).
    Ticket {
        pg: PgId,
        from: u32,
        result: Result<Snapshot, String>,
    },
    /// A repair's reinstall of `pg` at `index` finished (`Ok`: bytes copied).
    Repaired {
        pg: PgId,
        index: u64,
        result: Result<u64, String>,
    },
    /// Hands `pg`'s leadership to OSD `to` if this OSD leads it (tools and tests).
    TransferLeader {
        pg: PgId,
        to: u32,
    },
    /// Testing: the event loop stalls this long, as a process stopped by a long GC-like
    /// pause, SIGSTOP or an overloaded host would (events queue up meanwhile).
    Stall(Duration),
    Stop,
}

pub struct Store {
    osd: u32,
    engine: Arc<Engine>,
    peers: BTreeMap<PgId, Peer>,
    map: Arc<ClusterMap>,
    events: EventSender,
    transport: Box<dyn RaftTransport>,
    rt: tokio::runtime::Handle,
    inflight: VecDeque<InFlight>,
    next_round: u64,
    status: Arc<Mutex<StoreStatus>>,
    counters: Counters,
    /// Fraction of the device held by live blocks, refreshed every round.
    space_used: f64,
    /// Set while a cleaning run started because writes are refused (or a copy waits for
    /// free segments) is under way.
    cleaning: Arc<std::sync::atomic::AtomicBool>,
    /// A copy offered to this OSD fits under its backfillfull ratio but not in the free
    /// segments as they are: the cleaner runs until it fits (see `Store::install_fits`).
    copy_waits_for_segments: bool,
    /// The install (Raft snapshot or repair) under way per PG: withdrawn before the replica
    /// is dropped, so none of its transactions lands after the drop.
    installs: HashMap<PgId, crate::snapshot::InstallGuard>,
    /// The last such run freed no segment (see `Store::reclaiming`).
    clean_fruitless: Arc<std::sync::atomic::AtomicBool>,
    ticks: u64,
    cfg: StoreConfig,
    /// The current map, for background tasks (snapshot copies look up sources in it).
    shared_map: Arc<parking_lot::RwLock<Arc<ClusterMap>>>,
    /// PGs whose replica here holds corrupt data (marked `damaged/<pg>`), and their repair.
    damaged: BTreeMap<PgId, damage::Damage>,
    /// PGs being reinstalled from their leader's image, with the source OSD: no peer
    /// meanwhile, and Raft messages for them are ignored.
    repairing: BTreeMap<PgId, u32>,
    /// Followers that asked this OSD, as leader, for a repair ticket, and when.
    repair_requests: HashMap<(PgId, u32), Instant>,
    /// Followers this OSD, as leader, granted a repair ticket, and when (one at a time).
    tickets_granted: HashMap<(PgId, u32), Instant>,
    /// Client reads on the blocking pool, per PG.
    reads_in_flight: Arc<reads::ReadsInFlight>,
    /// Pinned images of digests in progress.
    digest_pins: Arc<scrub::DigestPins>,
    /// Whether each peer OSD said its device refuses new data (its latest space item).
    peer_full: HashMap<u32, bool>,
    /// Peers whose last space word said they refuse data only while their cleaner reclaims
    /// garbage, and since when they have said so (see `fullness.rs`).
    peer_reclaiming: HashMap<u32, Instant>,
    /// Since when this OSD has been reclaiming (refusing data only for free segments).
    reclaiming_since: Option<Instant>,
    /// PGs whose copy onto this OSD waits for room.
    backfill_waiting: BTreeMap<PgId, fullness::Waiting>,
    /// The engine refused a round (for lack of space, or a payload that no longer matched
    /// its end-to-end checksums); peers are reopened once the rounds in flight are back (see
    /// `fullness.rs`).
    round_refused: bool,
}

/// Tunables of the event loop.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Applied log entries kept per PG (see [`crate::peer::KEEP_ENTRIES`]).
    pub keep_entries: u64,
    /// Whether the store checks its free space before taking data (always, but in tests of
    /// what happens when the engine itself runs out: `fullness.rs`, the safety net).
    pub space_checks: bool,
    /// The fault control file's settings (`tessera osd run --fault-control`; tests only):
    /// `retry_writes` makes the store answer `Retry` to every client write.
    pub faults: Option<Arc<tessera_engine::device::FaultControl>>,
    /// Leaders serve reads under a lease instead of a heartbeat round per read
    /// ([`crate::peer::LEASE`]; `tessera osd run --no-lease-reads` turns it off).
    pub lease_reads: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { keep_entries: crate::peer::KEEP_ENTRIES, space_checks: true, faults: None, lease_reads: true }
    }
}

/// Leaders compare their group with the map every this many ticks.
const RECONCILE_TICKS: u64 = 5;

impl Store {
    /// Opens every PG replica the engine holds. `events` must be the sender of the channel
    /// [`Store::run`] will receive from.
    pub fn open(
        osd: u32,
        engine: Arc<Engine>,
        events: EventSender,
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
            copy_waits_for_segments: false,
            installs: HashMap::new(),
            clean_fruitless: Arc::default(),
            ticks: 0,
            cfg,
            shared_map: Arc::default(),
            damaged: BTreeMap::new(),
            repairing: BTreeMap::new(),
            repair_requests: HashMap::new(),
            tickets_granted: HashMap::new(),
            reads_in_flight: Arc::default(),
            digest_pins: Arc::default(),
            peer_full: HashMap::new(),
            peer_reclaiming: HashMap::new(),
            reclaiming_since: None,
            backfill_waiting: BTreeMap::new(),
            round_refused: false,
        };
        let pgs: Vec<PgId> = store.engine.meta_scan(MetaScope::Global).iter().filter_map(|(k, _)| membership::parse_pg_key(k)).collect();
        for pg in pgs {
            store.open_peer(pg)?;
        }
        store.load_damage()?;
        tracing::info!(osd, pgs = store.peers.len(), "store opened");
        Ok(store)
    }

    pub fn status_handle(&self) -> Arc<Mutex<StoreStatus>> {
        self.status.clone()
    }

    /// Runs on this thread until `Event::Stop`, the channel closing, or a fatal engine error
    /// (a current-thread runtime of its own; see [`Store::run_async`]).
    pub fn run(self, rx: EventReceiver) -> Result<(), OsdError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OsdError::Stopped(format!("cannot start the event loop's runtime: {e}")))?;
        rt.block_on(self.run_async(rx))
    }

    /// The event loop as a task. The OSD runs it on one thread together with its data port
    /// and its Raft connections (a current-thread runtime): a request read off a socket, the
    /// round it joins and the frames that round sends pass between tasks of one thread,
    /// never through another thread's wake-up. After every pass it yields, so those tasks
    /// send what the pass produced and read what arrived meanwhile.
    pub async fn run_async(mut self, mut rx: EventReceiver) -> Result<(), OsdError> {
        let mut next_tick = Instant::now() + TICK;
        loop {
            match tokio::time::timeout_at(tokio::time::Instant::from_std(next_tick), rx.recv()).await {
                Ok(Some(ev)) => {
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
                Err(_) => {} // the tick is due
                Ok(None) => return Ok(()),
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
                if self.ticks.is_multiple_of(RECONCILE_TICKS)
                    || crate::space::compact_eagerly(self.pressure())
                    || self.peer_full.values().any(|f| *f)
                {
                    self.compact();
                }
                self.clean_when_short();
                self.mark_log_damage()?;
                self.note_reclaiming(now);
                self.hand_over_full_leaders(now);
                self.step_aside_when_data_cannot_commit(now);
                self.ask_again_when_room(now);
                self.drive_repairs(now)?;
                self.publish_status();
            }
            for _ in 0..4 {
                if !self.round() {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Returns `false` to stop.
    fn handle(&mut self, ev: Event) -> Result<bool, OsdError> {
        let epoch = self.map.epoch;
        match ev {
            Event::Raft { from, items } => self.on_raft(from, items)?,
            Event::Request { req, reply, .. } if matches!(req.op, OpCode::Scan | OpCode::ReadRaw) => {
                self.serve_snapshot_request(req, reply)
            }
            Event::Request { req, reply, .. } if req.op == OpCode::Digest => self.serve_digest(req, reply),
            Event::Request { req, reply, .. } if req.op == OpCode::Ticket => self.serve_ticket(req, reply),
            Event::Request { req, reply, .. } if self.round_refused => {
                reply.error(Status::Retry, epoch, format!("osd {} is reopening its PG replicas after a refused round", self.osd));
                let _ = req;
            }
            Event::Request { req, reply, .. }
                if req.op == OpCode::Write && self.cfg.faults.as_ref().is_some_and(|f| f.settings().retry_writes) =>
            {
                reply.error(Status::Retry, epoch, "client writes held back by the fault control file (retry_writes=1)");
            }
            Event::Request { req, data, crcs, reply } => {
                if let Some((status, why)) = self.refuse_write(&req) {
                    reply.error(status, epoch, why);
                    return Ok(true);
                }
                let pg = PgId::new(req.pg.pool, req.pg.index);
                match self.peers.get_mut(&pg) {
                    Some(peer) => {
                        peer.on_request(req, data, crcs, reply, epoch, Instant::now());
                        let reads = peer.take_ready_reads();
                        if !reads.is_empty() {
                            self.serve_reads(reads);
                        }
                    }
                    None => match self.repairing.get(&pg) {
                        Some(source) => reply.not_leader(Some(*source), epoch),
                        None => reply.error(Status::NoPg, epoch, format!("osd {} has no replica of pg {pg}", self.osd)),
                    },
                }
            }
            Event::Durable { round, result } => {
                let done = self.inflight.pop_front().ok_or_else(|| OsdError::Stopped("completion of an unknown round".into()))?;
                // The engine calls back in submission order (refused transactions included);
                // confirming another round's readies would break Raft's persistence contract.
                if done.id != round {
                    return Err(OsdError::Stopped(format!(
                        "engine completion of round {round} while round {} was the oldest in flight",
                        done.id
                    )));
                }
                match result {
                    // After a refused round, later rounds' confirmations may rest on it: none
                    // is given (what they wrote is durable and seen when the peers reopen).
                    _ if self.round_refused => self.reopen_if_drained()?,
                    Ok(()) => self.finish(done),
                    Err(e @ EngineError::NoSpace { .. }) => self.on_round_without_space(&e)?,
                    Err(e @ EngineError::PayloadChecksum { .. }) => self.on_round_with_bad_payload(&e)?,
                    Err(e) => return Err(e.into()),
                }
            }
            Event::Installed { pg, snap, result } => self.on_installed(pg, snap, result)?,
            Event::Damaged { pg, what, reply } => self.on_damaged(pg, what, reply)?,
            Event::Ticket { pg, from, result } => self.on_ticket(pg, from, result)?,
            Event::Repaired { pg, index, result } => self.on_repaired(pg, index, result)?,
            Event::TransferLeader { pg, to } => {
                if let Some(p) = self.peers.get_mut(&pg).filter(|p| p.is_leader()) {
                    p.transfer_leader(crate::peer::raft_id(to));
                }
            }
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
            Event::Stall(d) => std::thread::sleep(d),
            Event::Stop => return Ok(false),
        }
        Ok(true)
    }
}
