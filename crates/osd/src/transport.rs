//! Delivery of Raft batches between OSDs.
//!
//! [`RaftTransport`] is the store's only way out to other OSDs: one call per destination per
//! event-loop round, carrying every message of every PG for that OSD (so heartbeats of all
//! groups between two OSDs cost one frame). Delivery is best effort, in order per
//! destination; Raft retransmits what is lost. Implementations: [`TcpTransport`] (one
//! long-lived connection per peer OSD) and [`MemTransport`] (in-process, with a fault
//! filter for partition tests).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_wire::{kind, FrameHeader, RaftBatch};
use tokio::sync::mpsc;

use crate::batch::Batch;
use crate::store::{Event, EventSender};
use crate::vectored::{write_parts, Parts};

pub trait RaftTransport: Send + Sync + 'static {
    /// The current addresses of every OSD (from the cluster map).
    fn set_peers(&self, addrs: &HashMap<u32, String>);
    /// Queues one batch (encoded [`tessera_wire::RaftItem`]s, one frame) for `to`; never
    /// blocks.
    fn send(&self, to: u32, batch: Batch);
}

/// Bytes queued for one peer OSD beyond which new batches are dropped, as a lossy network
/// would: Raft resends what a follower still needs, heartbeats go again next round. Bounds
/// the memory a slow or cut-off peer can hold here.
pub const MAX_QUEUED: usize = 64 << 20;
/// A write to a peer that cannot finish within this time ends the connection (the peer is
/// treated as unreachable and dialled again).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue of batches for one peer OSD, and how many bytes are in it.
struct PeerQueue {
    addr: String,
    tx: mpsc::UnboundedSender<Batch>,
    queued: Arc<AtomicUsize>,
}

/// One TCP connection per destination OSD, dialled lazily and re-dialled after errors.
/// When a destination cannot be reached its queued batches are dropped and the store is
/// told (`Event::Unreachable`) so Raft probes it gently instead of streaming to it. At most
/// [`MAX_QUEUED`] bytes wait for one destination.
pub struct TcpTransport {
    me: u32,
    rt: tokio::runtime::Handle,
    events: EventSender,
    conns: Mutex<HashMap<u32, PeerQueue>>,
}

impl TcpTransport {
    pub fn new(me: u32, rt: tokio::runtime::Handle, events: EventSender) -> Self {
        Self { me, rt, events, conns: Mutex::new(HashMap::new()) }
    }

    /// Bytes waiting to be written to `to`.
    pub fn queued(&self, to: u32) -> usize {
        self.conns.lock().get(&to).map_or(0, |q| q.queued.load(Ordering::Relaxed))
    }

    fn spawn(&self, to: u32, addr: String) -> PeerQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let meta = RaftBatch { from: self.me, to }.encode();
        let q = Queue { rx, queued: queued.clone() };
        self.rt.spawn(peer_writer(to, addr.clone(), meta, q, self.events.clone()));
        PeerQueue { addr, tx, queued }
    }
}

/// The writer's end of a [`PeerQueue`].
struct Queue {
    rx: mpsc::UnboundedReceiver<Batch>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    fn taken(&self, b: &Batch) {
        self.queued.fetch_sub(b.len(), Ordering::Relaxed);
    }
    async fn recv(&mut self) -> Option<Batch> {
        let b = self.rx.recv().await?;
        self.taken(&b);
        Some(b)
    }
    fn try_recv(&mut self) -> Result<Batch, mpsc::error::TryRecvError> {
        let b = self.rx.try_recv()?;
        self.taken(&b);
        Ok(b)
    }
}

impl RaftTransport for TcpTransport {
    fn set_peers(&self, addrs: &HashMap<u32, String>) {
        let mut conns = self.conns.lock();
        conns.retain(|id, q| addrs.get(id) == Some(&q.addr));
        for (id, addr) in addrs {
            if *id != self.me && !conns.contains_key(id) {
                let q = self.spawn(*id, addr.clone());
                conns.insert(*id, q);
            }
        }
    }

    fn send(&self, to: u32, batch: Batch) {
        if let Some(q) = self.conns.lock().get(&to) {
            let len = batch.len();
            if q.queued.load(Ordering::Relaxed) + len > MAX_QUEUED {
                tracing::debug!(to, queued = q.queued.load(Ordering::Relaxed), "raft queue to the peer full: batch dropped");
                return;
            }
            q.queued.fetch_add(len, Ordering::Relaxed);
            if q.tx.send(batch).is_err() {
                q.queued.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }
}

async fn peer_writer(to: u32, addr: String, meta: [u8; 9], mut rx: Queue, events: EventSender) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let conn = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&addr)).await;
        let mut stream = match conn {
            Ok(Ok(s)) => s,
            _ => {
                // Drop what queued up meanwhile; Raft resends from its own state.
                loop {
                    match rx.try_recv() {
                        Ok(_) => continue,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                let _ = events.send(Event::Unreachable(to));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        backoff = Duration::from_millis(50);
        // Frame headers and small parts are copied together; payloads are sent from their
        // own buffers (vectored writes).
        let mut out = Parts::default();
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut next = Some(first);
            while let Some(batch) = next.take() {
                let parts: Vec<&[u8]> = batch.parts.iter().map(|p| &p[..]).collect();
                let header = FrameHeader::new(kind::RAFT, 0, 0, &meta, &parts);
                out.copy(&header.0);
                out.copy(&meta);
                for p in batch.parts {
                    out.push(p);
                }
                if out.len() < (4 << 20) {
                    next = rx.try_recv().ok();
                }
            }
            let written = match tokio::time::timeout(WRITE_TIMEOUT, write_parts(&mut out, &mut stream)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no progress for {WRITE_TIMEOUT:?}")),
            };
            if let Err(e) = written {
                tracing::debug!(to, %addr, "raft connection lost: {e}");
                let _ = events.send(Event::Unreachable(to));
                break;
            }
        }
    }
}

/// In-process delivery between stores of one test, with a filter that drops traffic
/// between chosen OSDs (a partition) in either direction.
#[derive(Clone, Default)]
pub struct MemNetwork {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    stores: HashMap<u32, EventSender>,
    cut: HashSet<(u32, u32)>,
}

impl MemNetwork {
    pub fn register(&self, osd: u32, events: EventSender) {
        self.inner.lock().stores.insert(osd, events);
    }
    /// Drops all traffic between `a` and `b` until [`MemNetwork::heal`].
    pub fn cut(&self, a: u32, b: u32) {
        let mut i = self.inner.lock();
        i.cut.insert((a, b));
        i.cut.insert((b, a));
    }
    pub fn heal(&self) {
        self.inner.lock().cut.clear();
    }
    pub fn transport(&self, me: u32) -> MemTransport {
        MemTransport { me, net: self.clone() }
    }
}

pub struct MemTransport {
    me: u32,
    net: MemNetwork,
}

impl RaftTransport for MemTransport {
    fn set_peers(&self, _addrs: &HashMap<u32, String>) {}
    fn send(&self, to: u32, batch: Batch) {
        let i = self.net.inner.lock();
        if i.cut.contains(&(self.me, to)) {
            return;
        }
        if let (Some(dst), Ok(items)) = (i.stores.get(&to), tessera_wire::msg::decode_raft_items(&batch.to_bytes())) {
            let _ = dst.send(Event::Raft { from: self.me, items });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A peer that accepts and never reads: the queue for it stops growing at MAX_QUEUED
    /// (batches beyond are dropped) and the stalled connection is given up after
    /// WRITE_TIMEOUT, the store hearing that the peer is unreachable.
    #[test]
    fn a_peer_that_stops_reading_holds_bounded_memory_and_is_given_up() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = rt.spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let (tx, mut rx) = crate::store::event_channel();
        let t = TcpTransport::new(0, rt.handle().clone(), tx);
        t.set_peers(&HashMap::from([(1u32, addr)]));
        let batch = Batch::from_bytes(Bytes::from(vec![0u8; 1 << 20]));
        for _ in 0..200 {
            t.send(1, batch.clone());
            assert!(t.queued(1) <= MAX_QUEUED, "{} bytes queued", t.queued(1));
        }
        assert!(t.queued(1) >= MAX_QUEUED - (8 << 20), "the queue fills up to its bound ({} bytes)", t.queued(1));
        let deadline = std::time::Instant::now() + WRITE_TIMEOUT + Duration::from_secs(5);
        loop {
            match rx.try_recv() {
                Ok(Event::Unreachable(1)) => break,
                _ if std::time::Instant::now() > deadline => panic!("the stalled peer was never given up"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        held.abort();
    }
}
