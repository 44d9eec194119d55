//! The in-process cluster shared by the OSD's integration tests: OSD stores on memory
//! devices, real raft-rs, the in-memory Raft transport with partitions, and real TCP data
//! ports (snapshot copies, repairs and scrub digests use them).
#![allow(dead_code)]

use bytes::Bytes;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tessera_engine::{Engine, EngineConfig, FormatOptions, MemDevice, ObjectKey, PgId, SNAP_HEAD};
use tessera_mon::model::{ClusterMap, DomainLevel, OsdRecord, PgEntry, PgTable, PoolRecord};
use tessera_osd::reply::Reply;
use tessera_osd::store::EventSender as Sender;
use tessera_osd::store::{Event, Store, StoreConfig, StoreStatus};
use tessera_osd::transport::MemNetwork;
use tessera_wire::{OpCode, Request, Response, Status, WirePg};

pub const PGS: u32 = 4;

pub fn map(osds: &[u32], addrs: &[String], replicas: &[u32]) -> Arc<ClusterMap> {
    let osd = |id: u32| OsdRecord {
        id,
        uuid: format!("u{id}"),
        addr: addrs[id as usize].clone(),
        host: format!("h{id}"),
        rack: None,
        device: "mem".into(),
        capacity_bytes: 1 << 30,
        weight: 1.0,
        up: true,
        in_: true,
        out_reason: None,
        since_ms: 0,
    };
    Arc::new(ClusterMap {
        epoch: 2,
        osds: osds.iter().map(|i| osd(*i)).collect(),
        pools: vec![PoolRecord {
            id: 1,
            name: "p".into(),
            replicas: 3,
            pg_count: PGS,
            failure_domain: DomainLevel::Host,
            created_ms: 0,
            created_epoch: 2,
        }],
        pg_tables: vec![PgTable { pool_id: 1, pgs: (0..PGS).map(|_| PgEntry(2, replicas.to_vec())).collect() }],
        config: Default::default(),
    })
}

pub struct Node {
    pub dev: Arc<MemDevice>,
    pub tx: Option<Sender>,
    pub thread: Option<JoinHandle<()>>,
    pub status: Option<Arc<parking_lot::Mutex<StoreStatus>>>,
    /// Where the node's data port (a real TCP listener, used for snapshot copies) forwards.
    pub port_target: Arc<parking_lot::Mutex<Option<Sender>>>,
    /// While set, the data port swallows `ReadRaw` requests unanswered (a copy from this
    /// node stalls).
    pub drop_read_raw: Arc<std::sync::atomic::AtomicBool>,
    /// The running store's engine.
    pub engine: Option<Arc<Engine>>,
    /// The store's fault settings (none until a test sets some; kept across restarts).
    pub faults: Arc<tessera_engine::device::FaultControl>,
}

pub struct Cluster {
    pub rt: tokio::runtime::Runtime,
    pub net: MemNetwork,
    pub map: Arc<ClusterMap>,
    pub nodes: Vec<Node>,
    pub seq: u64,
    pub keep_entries: u64,
    /// Per node: whether its store checks free space before taking data (tests of the
    /// engine's own `NoSpace` turn it off).
    pub space_checks: Vec<bool>,
    /// Whether the stores serve reads under a leader lease (their default).
    pub lease_reads: bool,
}

impl Cluster {
    pub fn new(n: u32) -> Cluster {
        Cluster::with_replicas(n, &(0..n).collect::<Vec<_>>()).started()
    }

    /// `n` OSDs; every PG on `replicas`.
    pub fn with_replicas(n: u32, replicas: &[u32]) -> Cluster {
        Cluster::with_devices(n, replicas, 64 << 20, 1 << 20)
    }

    /// Like [`Cluster::with_replicas`] with `dev` byte devices of `seg` byte segments (a PG
    /// copy of many small objects needs segments above its 1 MiB install transactions).
    pub fn with_devices(n: u32, replicas: &[u32], dev: u64, seg: u64) -> Cluster {
        Cluster::with_sizes(&vec![dev; n as usize], replicas, seg)
    }

    /// One node per entry of `sizes` (its device size in bytes), segments of `seg` bytes.
    pub fn with_sizes(sizes: &[u64], replicas: &[u32], seg: u64) -> Cluster {
        let n = sizes.len() as u32;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let ids: Vec<u32> = (0..n).collect();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for size in sizes {
            let dev = Arc::new(MemDevice::new(*size));
            Engine::create(dev.clone(), FormatOptions { segment_size: seg }, EngineConfig::default()).unwrap().close();
            let port_target: Arc<parking_lot::Mutex<Option<Sender>>> = Arc::default();
            let (fwd_tx, mut fwd_rx) = tessera_osd::store::event_channel();
            let target = port_target.clone();
            let drop_read_raw: Arc<std::sync::atomic::AtomicBool> = Arc::default();
            let dropping = drop_read_raw.clone();
            std::thread::spawn(move || {
                while let Some(ev) = fwd_rx.blocking_recv() {
                    let raw = matches!(&ev, Event::Request { req, .. } if req.op == OpCode::ReadRaw);
                    if raw && dropping.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    if let Some(tx) = target.lock().as_ref() {
                        let _ = tx.send(ev);
                    }
                }
            });
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            let osd = nodes.len() as u32;
            rt.spawn(tessera_osd::server::serve(listener, osd, fwd_tx));
            let faults = Arc::new(tessera_engine::device::FaultControl::fixed(Default::default()));
            nodes.push(Node { dev, tx: None, thread: None, status: None, port_target, drop_read_raw, engine: None, faults });
        }
        Cluster {
            rt,
            net: MemNetwork::default(),
            map: map(&ids, &addrs, replicas),
            nodes,
            seq: 0,
            keep_entries: tessera_osd::peer::KEEP_ENTRIES,
            space_checks: vec![true; n as usize],
            lease_reads: true,
        }
    }

    /// Starts every node (after options were set).
    pub fn started(mut self) -> Cluster {
        for i in 0..self.nodes.len() as u32 {
            self.start(i);
        }
        self
    }

    /// Publishes a map in which every PG is placed on `replicas` (a new epoch).
    pub fn move_pgs(&mut self, replicas: &[u32]) {
        self.move_pgs_except(replicas, &[]);
    }

    /// Like `move_pgs`, but the OSDs in `late` do not get the new map (yet).
    pub fn move_pgs_except(&mut self, replicas: &[u32], late: &[u32]) {
        let mut m = (*self.map).clone();
        m.epoch += 1;
        for e in &mut m.pg_tables[0].pgs {
            *e = PgEntry(m.epoch, replicas.to_vec());
        }
        self.map = Arc::new(m);
        for (i, n) in self.nodes.iter().enumerate() {
            if late.contains(&(i as u32)) {
                continue;
            }
            if let Some(tx) = &n.tx {
                tx.send(Event::Map(self.map.clone())).unwrap();
            }
        }
    }

    /// Waits until each of `osds` has applied PG `pg` up to the highest commit any running
    /// node reports.
    pub fn wait_applied(&self, osds: &[u32], pg: u32) {
        // Statuses are published every tick: let them catch up with what was just acknowledged.
        std::thread::sleep(Duration::from_millis(250));
        let t = Instant::now();
        loop {
            let of = |o: u32| self.status(o).pgs.into_iter().find(|p| p.pg == PgId::new(1, pg));
            let commit = (0..self.nodes.len() as u32).filter_map(of).map(|p| p.commit).max().unwrap_or(0);
            if osds.iter().all(|o| of(*o).is_some_and(|p| p.applied >= commit)) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "osds {osds:?} did not apply pg {pg} up to {commit}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every PG's current leader (the highest term claiming it: published statuses
    /// can be stale) reports exactly `voters`, no learners and no joint configuration.
    pub fn all_groups_are(&self, voters: &[u32]) -> bool {
        let mut leaders: std::collections::HashMap<PgId, tessera_osd::store::PgStatus> = Default::default();
        for p in (0..self.nodes.len() as u32).filter(|o| self.nodes[*o as usize].tx.is_some()).flat_map(|o| self.status(o).pgs) {
            if p.role == "leader" && leaders.get(&p.pg).is_none_or(|q| q.term < p.term) {
                leaders.insert(p.pg, p);
            }
        }
        leaders.len() == PGS as usize
            && leaders.values().all(|p| {
                let mut v = p.voters.clone();
                v.sort();
                v == voters && p.learners.is_empty() && p.outgoing.is_empty()
            })
    }

    /// The status the node's store last published.
    pub fn status(&self, osd: u32) -> StoreStatus {
        self.nodes[osd as usize].status.as_ref().map(|s| s.lock().clone()).unwrap_or_default()
    }

    pub fn start(&mut self, osd: u32) {
        let node = &mut self.nodes[osd as usize];
        let engine = Arc::new(Engine::open(node.dev.clone(), EngineConfig::default()).unwrap());
        let (tx, rx) = tessera_osd::store::event_channel();
        self.net.register(osd, tx.clone());
        let cfg = StoreConfig {
            keep_entries: self.keep_entries,
            space_checks: self.space_checks[osd as usize],
            faults: Some(node.faults.clone()),
            lease_reads: self.lease_reads,
        };
        node.engine = Some(engine.clone());
        let store = Store::open(osd, engine, tx.clone(), Box::new(self.net.transport(osd)), self.rt.handle().clone(), cfg).unwrap();
        tx.send(Event::Map(self.map.clone())).unwrap();
        node.status = Some(store.status_handle());
        node.thread = Some(std::thread::spawn(move || store.run(rx).unwrap()));
        *node.port_target.lock() = Some(tx.clone());
        node.tx = Some(tx);
    }

    /// Stops the store as a crash would leave it: only what the engine made durable remains
    /// (the store never writes outside engine transactions).
    pub fn stop(&mut self, osd: u32) {
        let node = &mut self.nodes[osd as usize];
        *node.port_target.lock() = None;
        if let Some(tx) = node.tx.take() {
            let _ = tx.send(Event::Stop);
        }
        if let Some(t) = node.thread.take() {
            t.join().unwrap();
        }
        node.engine = None;
    }

    /// Event senders of every node, for threads that send requests concurrently.
    pub fn senders(&self) -> Vec<Option<Sender>> {
        self.nodes.iter().map(|n| n.tx.clone()).collect()
    }

    pub fn call(&self, osd: u32, req: Request, data: Bytes) -> (Response, Bytes) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let Some(events) = &self.nodes[osd as usize].tx else {
            return (Response::error(Status::Retry, 0, "stopped"), Bytes::new());
        };
        events.send(Event::Request { req, crcs: crcs_of(&req, &data), data, reply: Reply::new(tx, 1) }).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match rx.try_recv() {
                Ok(o) => return (o.resp, o.data),
                Err(_) if Instant::now() > deadline => panic!("osd {osd} did not answer"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Sends the request to whichever OSD leads the PG, following hints, until `deadline`.
    /// Sends `req` to the PG's leader (following hints, retrying elsewhere) until it gets a
    /// final answer: `Ok`, `NoSpace`, `Io` or `Invalid`.
    pub fn routed_final(&mut self, mut req: Request, data: Bytes, within: Duration) -> (Response, Bytes, u32) {
        let deadline = Instant::now() + within;
        let mut target = 0u32;
        loop {
            let (resp, out) = self.call(target, req, data.clone());
            match resp.status {
                Status::Ok | Status::Invalid | Status::Io | Status::NoSpace | Status::StaleContext => return (resp, out, target),
                _ if Instant::now() > deadline => panic!("no answer within {within:?}: last {resp:?}"),
                Status::NotLeader if resp.leader.is_some() && resp.leader != Some(target) => target = resp.leader.unwrap(),
                _ => {
                    target = (target + 1) % self.nodes.len() as u32;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            req.epoch = self.map.epoch;
        }
    }

    /// Like `routed_final`, panicking unless the answer is `Ok`.
    pub fn routed(&mut self, req: Request, data: Bytes, within: Duration) -> (Response, Bytes, u32) {
        let (resp, out, target) = self.routed_final(req, data, within);
        assert_eq!(resp.status, Status::Ok, "request failed: {resp:?}");
        (resp, out, target)
    }

    /// A write (or other op) answered finally; returns its status.
    pub fn try_write(&mut self, op: OpCode, pg: u32, object: u64, offset: u64, data: Vec<u8>, len: u64) -> Status {
        self.seq += 1;
        let req = request(op, pg, object, offset, len, self.seq);
        self.routed_final(req, Bytes::from(data), Duration::from_secs(10)).0.status
    }

    pub fn write(&mut self, pg: u32, object: u64, offset: u64, data: Vec<u8>) -> u32 {
        self.seq += 1;
        let req = request(OpCode::Write, pg, object, offset, data.len() as u64, self.seq);
        self.routed(req, Bytes::from(data), Duration::from_secs(10)).2
    }

    pub fn read(&mut self, pg: u32, object: u64, offset: u64, len: u64) -> Vec<u8> {
        let req = request(OpCode::Read, pg, object, offset, len, 0);
        self.routed(req, Bytes::new(), Duration::from_secs(10)).1.to_vec()
    }

    /// The PG's stored write-deduplication records on one OSD (after its store stopped).
    pub fn dedup_records(&self, osd: u32, pg: u32) -> Vec<(Bytes, Bytes)> {
        let engine = Engine::open(self.nodes[osd as usize].dev.clone(), EngineConfig::default()).unwrap();
        let out = engine
            .meta_scan(tessera_engine::MetaScope::Pg(PgId::new(1, pg)))
            .into_iter()
            .filter(|(k, _)| k.starts_with(b"dedup/"))
            .collect();
        engine.close();
        out
    }

    /// The object as stored on one OSD's engine (reopened read-only from its device after
    /// the store stopped).
    pub fn replica_bytes(&self, osd: u32, pg: u32, object: u64, len: u64) -> Vec<u8> {
        let engine = Engine::open(self.nodes[osd as usize].dev.clone(), EngineConfig::default()).unwrap();
        let out = engine.read(PgId::new(1, pg), ObjectKey::head(7, object), 0, len).unwrap();
        engine.close();
        out
    }
}

/// A request of client 99 for object `object` of volume 7 in PG `pg` of pool 1.
pub fn request(op: OpCode, pg: u32, object: u64, offset: u64, len: u64, seq: u64) -> Request {
    Request {
        op,
        pg: WirePg { pool: 1, index: pg },
        epoch: 2,
        volume: 7,
        object,
        snap: SNAP_HEAD,
        offset,
        len,
        client: 99,
        seq,
        floor: 0,
        snapc: 0,
    }
}

pub fn block(tag: u8, n: usize) -> Vec<u8> {
    (0..n * 4096).map(|i| tag.wrapping_add((i / 4096) as u8)).collect()
}

/// Sends `req` to a store without waiting: its answer comes on the returned receiver (see
/// [`answer`]).
pub fn submit(events: &Sender, req: Request, data: Bytes) -> tokio::sync::mpsc::UnboundedReceiver<tessera_osd::reply::Outgoing> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    events.send(Event::Request { req, crcs: crcs_of(&req, &data), data, reply: Reply::new(tx, 1) }).expect("the store runs");
    rx
}

/// The answer to a [`submit`], waiting at most `within` (panics if none came).
pub fn answer(rx: &mut tokio::sync::mpsc::UnboundedReceiver<tessera_osd::reply::Outgoing>, within: Duration) -> (Response, Bytes) {
    let deadline = Instant::now() + within;
    loop {
        match rx.try_recv() {
            Ok(o) => return (o.resp, o.data),
            Err(_) if Instant::now() > deadline => panic!("no answer within {within:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Sends `req` to the PG's leader through `senders`, following hints; `None` on timeout.
pub fn routed_via(senders: &[Option<Sender>], req: Request, data: Bytes, within: Duration) -> Option<u32> {
    let deadline = Instant::now() + within;
    let mut target = 0u32;
    while Instant::now() < deadline {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(events) = &senders[target as usize] {
            let _ = events.send(Event::Request { req, data: data.clone(), crcs: crcs_of(&req, &data), reply: Reply::new(tx, 1) });
            let wait = Instant::now() + Duration::from_secs(4);
            let resp = loop {
                match rx.try_recv() {
                    Ok(o) => break Some(o.resp),
                    Err(_) if Instant::now() > wait => break None,
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            };
            match resp {
                Some(r) if r.status == Status::Ok => return Some(target),
                Some(r) if r.status == Status::NotLeader && r.leader.is_some_and(|l| l != target) => {
                    target = r.leader.unwrap();
                    continue;
                }
                _ => {}
            }
        }
        target = (target + 1) % senders.len() as u32;
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Corruption, scrubs and leadership, for the scrub and repair tests.
impl Cluster {
    /// The running store's engine on `osd`.
    pub fn engine(&self, osd: u32) -> Arc<Engine> {
        self.nodes[osd as usize].engine.clone().expect("the osd is running")
    }

    /// Flips one bit in every data block of version `key` of PG `pg` on `osd`'s device, as
    /// silent media corruption would (the engine is not told). Returns the blocks flipped.
    pub fn corrupt(&self, osd: u32, pg: u32, key: ObjectKey) -> usize {
        let engine = self.engine(osd);
        corrupt_blocks(&engine, &self.nodes[osd as usize].dev, PgId::new(1, pg), key)
    }

    /// The role `osd` reports for PG `pg` ("leader", "follower", ...; "" if it has none).
    pub fn role(&self, osd: u32, pg: u32) -> &'static str {
        self.status(osd).pgs.iter().find(|p| p.pg == PgId::new(1, pg)).map_or("", |p| p.role)
    }

    /// Makes `to` the leader of PG `pg` (asks the current leader to hand over, until it did).
    pub fn make_leader(&self, pg: u32, to: u32) {
        let t = Instant::now();
        while self.role(to, pg) != "leader" {
            assert!(t.elapsed() < Duration::from_secs(20), "osd {to} never became the leader of pg {pg}");
            for n in self.nodes.iter().filter_map(|n| n.tx.as_ref()) {
                let _ = n.send(Event::TransferLeader { pg: PgId::new(1, pg), to });
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Scrubs PG `pg` of pool 1 with the client library, over the nodes' data ports.
    pub fn scrub(&self, pg: u32) -> tessera_client::scrub::PgScrub {
        let map = (*self.map).clone();
        self.rt.block_on(async move {
            let client = tessera_client::Client::with_map(map, tessera_client::ClientOptions::default());
            tessera_client::scrub::scrub_pg(&client, 1, pg, &tessera_client::scrub::ScrubOptions::default()).await
        })
    }
}

/// Flips a bit in every data block of `key` on `dev` (under `engine`'s feet).
pub fn corrupt_blocks(engine: &Engine, dev: &MemDevice, pg: PgId, key: ObjectKey) -> usize {
    use tessera_engine::Device as _;
    let blocks: Vec<u64> = engine.data_blocks().into_iter().filter(|b| b.pg == pg && b.key == key).map(|b| b.device_offset).collect();
    for off in &blocks {
        let mut buf = tessera_engine::AlignedBuf::zeroed(4096);
        dev.read_at(*off, &mut buf).unwrap();
        buf[1234] ^= 0x10;
        dev.write_at(*off, &buf).unwrap();
    }
    blocks.len()
}

/// Waits until `cond` holds (polling), or panics naming `what`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "timed out after {within:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A write's block checksums as a client sends them (end to end); none for other requests.
pub fn crcs_of(req: &Request, data: &Bytes) -> Bytes {
    match req.op == OpCode::Write && !data.is_empty() {
        true => Bytes::from(tessera_wire::block_crc_table(data)),
        false => Bytes::new(),
    }
}
