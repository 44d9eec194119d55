//! A FAKE OSD for testing the client library's logic. It is not an OSD: no Raft, no engine,
//! no persistence. It speaks the real wire protocol on 127.0.0.1, and all fake OSDs of one
//! [`FakeCluster`] share one in-memory object store (so whichever replica serves a request,
//! the data is the same, as with a healthy replicated PG).
//!
//! What it checks on every request (answering `Invalid` otherwise): offsets and lengths are
//! multiples of 4096, a range stays inside one object, a write carries exactly `len` bytes,
//! the PG index named in the request is `object_to_pg(volume, object, pg_count)`, and the
//! floor is not above the seq.
//!
//! What it can be told to do, per OSD ([`Mode`]): serve, answer `NotLeader` (with or
//! without a hint), `Retry`, `NoPg`, drop the connection (before or after applying a write),
//! delay, or answer with a response that does not decode. Every request it receives is
//! logged ([`Seen`]); writes are deduplicated by `(client, seq)` like a real PG.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tessera_mon::model::{ClusterMap, OsdRecord, PgEntry, PgTable, PoolRecord, VolumeRecord};
use tessera_wire::msg::{MAX_DATA, MAX_META};
use tessera_wire::{kind, Frame, FrameDecoder, OpCode, Request, Response, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

pub const POOL: u32 = 1;
pub const VOLUME: u64 = 7;

/// How a fake OSD treats the next request.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Serve,
    NotLeader(Option<u32>),
    Retry,
    /// Answer `NoPg` carrying this map epoch.
    NoPg(u64),
    /// Close the connection without answering (and without applying).
    Drop,
    /// Apply the request, then close the connection without answering.
    ApplyThenDrop,
    /// Serve after this delay (other requests on the connection are not held up).
    Delay(Duration),
    /// Answer with a response frame whose meta does not decode.
    Garbage,
    /// Answer with this status and message.
    Fail(Status, &'static str),
}

/// One request as a fake OSD received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub osd: u32,
    pub req: Request,
    pub data_len: usize,
}

/// The state all fake OSDs of a cluster share.
#[derive(Default)]
pub struct Store {
    objects: Mutex<HashMap<(u64, u64), Vec<u8>>>,
    applied: Mutex<HashSet<(u64, u64)>>,
    log: Mutex<Vec<Seen>>,
    /// Writes that arrived again with an already applied `(client, seq)`.
    pub duplicates: AtomicUsize,
}

struct Config {
    object_size: u64,
    pg_count: u32,
}

pub struct FakeOsd {
    pub id: u32,
    pub addr: String,
    mode: Arc<Mutex<Mode>>,
    script: Arc<Mutex<VecDeque<Mode>>>,
    epoch: Arc<Mutex<u64>>,
    accepted: Arc<AtomicUsize>,
    task: AbortHandle,
}

impl Drop for FakeOsd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOsd {
    /// The mode of every request not covered by a script.
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
    /// Modes for the next requests, in order; then the persistent mode again.
    pub fn script(&self, modes: impl IntoIterator<Item = Mode>) {
        self.script.lock().unwrap().extend(modes);
    }
    /// The map epoch this OSD puts in its responses (default 1).
    pub fn set_epoch(&self, e: u64) {
        *self.epoch.lock().unwrap() = e;
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

pub struct FakeCluster {
    pub osds: Vec<FakeOsd>,
    pub store: Arc<Store>,
    pub object_size: u64,
    pub pg_count: u32,
}

impl FakeCluster {
    /// Starts `n` fake OSDs with ids `1..=n`.
    pub async fn start(n: u32, object_size: u64, pg_count: u32) -> FakeCluster {
        let store = Arc::new(Store::default());
        let cfg = Arc::new(Config { object_size, pg_count });
        let mut osds = Vec::new();
        for id in 1..=n {
            osds.push(start_osd(id, store.clone(), cfg.clone()).await);
        }
        FakeCluster { osds, store, object_size, pg_count }
    }

    pub fn osd(&self, id: u32) -> &FakeOsd {
        &self.osds[(id - 1) as usize]
    }

    /// A map at `epoch` whose pool [`POOL`] places PG `i` on `replicas(i)`.
    pub fn map_with(&self, epoch: u64, replicas: impl Fn(u32) -> Vec<u32>) -> ClusterMap {
        let osds = self.osds.iter().map(|o| osd_record(o.id, &o.addr)).collect();
        // Through JSON, so fields the mon adds with defaults need no change here.
        let pool =
            json!({ "id": POOL, "name": "fake", "replicas": 3, "pg_count": self.pg_count, "failure_domain": "osd", "created_ms": 0 });
        let pool: PoolRecord = serde_json::from_value(pool).unwrap();
        let pgs = (0..self.pg_count).map(|i| PgEntry(epoch, replicas(i))).collect();
        ClusterMap { epoch, osds, pools: vec![pool], pg_tables: vec![PgTable { pool_id: POOL, pgs }], ..Default::default() }
    }

    /// A map at epoch 1 where every PG's replicas are all OSDs in id order.
    pub fn map(&self) -> ClusterMap {
        let all: Vec<u32> = self.osds.iter().map(|o| o.id).collect();
        self.map_with(1, |_| all.clone())
    }

    /// A map at epoch 1 where PG `i`'s replica list is all OSDs rotated by `i`.
    pub fn rotated_map(&self) -> ClusterMap {
        let ids: Vec<u32> = self.osds.iter().map(|o| o.id).collect();
        self.map_with(1, |i| {
            let mut r = ids.clone();
            r.rotate_left(i as usize % ids.len());
            r
        })
    }

    pub fn volume(&self, size: u64) -> VolumeRecord {
        let v = json!({ "id": VOLUME, "name": "vol", "pool_id": POOL, "size": size, "object_size": self.object_size, "created_ms": 0 });
        serde_json::from_value(v).unwrap()
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<Seen> {
        self.store.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.store.log.lock().unwrap().clear();
    }

    pub fn accepted(&self) -> usize {
        self.osds.iter().map(|o| o.accepted()).sum()
    }
}

pub fn osd_record(id: u32, addr: &str) -> OsdRecord {
    let osd = json!({
        "id": id, "uuid": format!("fake-{id}"), "addr": addr, "host": format!("host-{id}"), "device": "fake",
        "capacity_bytes": 1u64 << 30, "weight": 1.0, "up": true, "in": true, "since_ms": 0,
    });
    serde_json::from_value(osd).unwrap()
}

async fn start_osd(id: u32, store: Arc<Store>, cfg: Arc<Config>) -> FakeOsd {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mode = Arc::new(Mutex::new(Mode::Serve));
    let script = Arc::new(Mutex::new(VecDeque::new()));
    let epoch = Arc::new(Mutex::new(1));
    let accepted = Arc::new(AtomicUsize::new(0));
    let osd = Osd { id, store, cfg, mode: mode.clone(), script: script.clone(), epoch: epoch.clone() };
    let osd = Arc::new(osd);
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            conns.spawn(osd.clone().serve(stream));
        }
    })
    .abort_handle();
    FakeOsd { id, addr, mode, script, epoch, accepted, task }
}

struct Osd {
    id: u32,
    store: Arc<Store>,
    cfg: Arc<Config>,
    mode: Arc<Mutex<Mode>>,
    script: Arc<Mutex<VecDeque<Mode>>>,
    epoch: Arc<Mutex<u64>>,
}

/// What a request handler sends back to its connection.
enum Out {
    Frame(Vec<u8>),
    Close,
}

impl Osd {
    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::new(MAX_META, MAX_DATA);
        let mut handlers = tokio::task::JoinSet::new();
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let me = self.clone();
                        let tx = tx.clone();
                        handlers.spawn(async move { me.handle(frame, tx).await });
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                out = rx.recv() => match out {
                    Some(Out::Frame(bytes)) => {
                        if stream.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Out::Close) | None => return,
                },
            }
        }
    }

    fn next_mode(&self) -> Mode {
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.mode.lock().unwrap().clone())
    }

    async fn handle(&self, frame: Frame, tx: mpsc::UnboundedSender<Out>) {
        let epoch = *self.epoch.lock().unwrap();
        let Ok(req) = Request::decode(&frame.meta) else {
            let _ = tx.send(Out::Close);
            return;
        };
        assert_eq!(frame.kind, kind::REQUEST);
        self.store.log.lock().unwrap().push(Seen { osd: self.id, req, data_len: frame.data.len() });
        let reply = |resp: Response, data: Bytes| {
            let f = Frame {
                kind: kind::RESPONSE,
                flags: 0,
                request_id: frame.request_id,
                meta: Bytes::from(resp.encode()),
                data,
                block_crcs: Bytes::new(),
            };
            let _ = tx.send(Out::Frame(f.encode()));
        };
        let mut mode = self.next_mode();
        if let Mode::Delay(d) = mode {
            tokio::time::sleep(d).await;
            mode = Mode::Serve;
        }
        match mode {
            Mode::Serve => {
                let (resp, data) = self.apply(&req, frame.data, epoch);
                reply(resp, data);
            }
            Mode::ApplyThenDrop => {
                self.apply(&req, frame.data, epoch);
                let _ = tx.send(Out::Close);
            }
            Mode::Drop => {
                let _ = tx.send(Out::Close);
            }
            Mode::NotLeader(hint) => {
                let mut r = Response::error(Status::NotLeader, epoch, format!("osd {} is not the leader", self.id));
                r.leader = hint;
                reply(r, Bytes::new());
            }
            Mode::Retry => reply(Response::error(Status::Retry, epoch, "electing"), Bytes::new()),
            Mode::NoPg(e) => reply(Response::error(Status::NoPg, e, "no such pg here"), Bytes::new()),
            Mode::Fail(status, msg) => reply(Response::error(status, epoch, msg), Bytes::new()),
            Mode::Garbage => {
                let f = Frame {
                    kind: kind::RESPONSE,
                    flags: 0,
                    request_id: frame.request_id,
                    meta: Bytes::from_static(b"\x63junk"),
                    data: Bytes::new(),
                    block_crcs: Bytes::new(),
                };
                let _ = tx.send(Out::Frame(f.encode()));
            }
            Mode::Delay(_) => unreachable!(),
        }
    }

    /// Serves a request against the shared store.
    fn apply(&self, req: &Request, data: Bytes, epoch: u64) -> (Response, Bytes) {
        let invalid = |why: String| (Response::error(Status::Invalid, epoch, why), Bytes::new());
        if !req.offset.is_multiple_of(4096) || !req.len.is_multiple_of(4096) {
            return invalid(format!("unaligned offset {} len {}", req.offset, req.len));
        }
        if req.offset + req.len > self.cfg.object_size {
            return invalid(format!("range {}+{} crosses the object end {}", req.offset, req.len, self.cfg.object_size));
        }
        let pg = tessera_placement::object_to_pg(req.volume, req.object, self.cfg.pg_count).unwrap();
        if req.pg.index != pg {
            return invalid(format!("object {} is in pg {pg}, not {:?}", req.object, req.pg));
        }
        if req.floor > req.seq {
            return invalid(format!("floor {} above seq {}", req.floor, req.seq));
        }
        let (off, len) = (req.offset as usize, req.len as usize);
        let mut objects = self.store.objects.lock().unwrap();
        let obj = objects.entry((req.volume, req.object)).or_insert_with(|| vec![0u8; self.cfg.object_size as usize]);
        match req.op {
            OpCode::Read => {
                if !data.is_empty() {
                    return invalid("read with data".into());
                }
                (Response::ok(epoch), Bytes::copy_from_slice(&obj[off..off + len]))
            }
            OpCode::Write | OpCode::WriteZeroes | OpCode::Delete => {
                if req.op == OpCode::Write && data.len() != len {
                    return invalid(format!("write of {len} bytes carries {}", data.len()));
                }
                if !self.store.applied.lock().unwrap().insert((req.client, req.seq)) {
                    self.store.duplicates.fetch_add(1, Ordering::SeqCst);
                    return (Response::ok(epoch), Bytes::new());
                }
                match req.op {
                    OpCode::Write => obj[off..off + len].copy_from_slice(&data),
                    _ => obj[off..off + len].fill(0),
                }
                (Response::ok(epoch), Bytes::new())
            }
            OpCode::Scan | OpCode::ReadRaw | OpCode::Ticket => invalid("snapshot copy requests are between OSDs".into()),
            OpCode::Digest => invalid("scrub digests are not modelled by the fake OSD".into()),
            OpCode::TrimVersions | OpCode::DropVolume | OpCode::Rollback | OpCode::Usage | OpCode::Promote | OpCode::SnapSeq => {
                invalid("volume lifecycle ops are not modelled by the fake OSD".into())
            }
        }
    }
}
