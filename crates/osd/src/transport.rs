//! Delivery of Raft batches between OSDs.
//!
//! [`RaftTransport`] is the store's only way out to other OSDs: one call per destination per
//! event-loop round, carrying every message of every PG for that OSD (so heartbeats of all
//! groups between two OSDs cost one frame). Delivery is best effort, in order per
//! destination; Raft retransmits what is lost. Implementations: [`TcpTransport`] (one
//! long-lived connection per peer OSD) and [`MemTransport`] (in-process, with a fault
//! filter for partition tests).

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tessera_wire::{kind, FrameHeader, RaftBatch};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::store::{Event, EventSender};

pub trait RaftTransport: Send + Sync + 'static {
    /// The current addresses of every OSD (from the cluster map).
    fn set_peers(&self, addrs: &HashMap<u32, String>);
    /// Queues one batch (encoded [`tessera_wire::RaftItem`]s) for `to`; never blocks.
    fn send(&self, to: u32, items: Bytes);
}

/// One TCP connection per destination OSD, dialled lazily and re-dialled after errors.
/// When a destination cannot be reached its queued batches are dropped and the store is
/// told (`Event::Unreachable`) so Raft probes it gently instead of streaming to it.
pub struct TcpTransport {
    me: u32,
    rt: tokio::runtime::Handle,
    events: EventSender,
    conns: Mutex<HashMap<u32, (String, mpsc::UnboundedSender<Bytes>)>>,
}

impl TcpTransport {
    pub fn new(me: u32, rt: tokio::runtime::Handle, events: EventSender) -> Self {
        Self { me, rt, events, conns: Mutex::new(HashMap::new()) }
    }

    fn spawn(&self, to: u32, addr: String) -> mpsc::UnboundedSender<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        let meta = RaftBatch { from: self.me, to }.encode();
        self.rt.spawn(peer_writer(to, addr, meta, rx, self.events.clone()));
        tx
    }
}

impl RaftTransport for TcpTransport {
    fn set_peers(&self, addrs: &HashMap<u32, String>) {
        let mut conns = self.conns.lock();
        conns.retain(|id, (addr, _)| addrs.get(id) == Some(addr));
        for (id, addr) in addrs {
            if *id != self.me && !conns.contains_key(id) {
                let tx = self.spawn(*id, addr.clone());
                conns.insert(*id, (addr.clone(), tx));
            }
        }
    }

    fn send(&self, to: u32, items: Bytes) {
        if let Some((_, tx)) = self.conns.lock().get(&to) {
            let _ = tx.send(items);
        }
    }
}

async fn peer_writer(to: u32, addr: String, meta: [u8; 9], mut rx: mpsc::UnboundedReceiver<Bytes>, events: EventSender) {
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
        let mut buf = Vec::with_capacity(64 << 10);
        loop {
            let Some(first) = rx.recv().await else { return };
            buf.clear();
            let mut next = Some(first);
            while let Some(items) = next.take() {
                let header = FrameHeader::new(kind::RAFT, 0, 0, &meta, &[&items]);
                buf.extend_from_slice(&header.0);
                buf.extend_from_slice(&meta);
                buf.extend_from_slice(&items);
                if buf.len() < (4 << 20) {
                    next = rx.try_recv().ok();
                }
            }
            if let Err(e) = stream.write_all(&buf).await {
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
    fn send(&self, to: u32, items: Bytes) {
        let i = self.net.inner.lock();
        if i.cut.contains(&(self.me, to)) {
            return;
        }
        if let (Some(dst), Ok(items)) = (i.stores.get(&to), tessera_wire::msg::decode_raft_items(&items)) {
            let _ = dst.send(Event::Raft { from: self.me, items });
        }
    }
}
