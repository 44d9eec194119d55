//! One multiplexed TCP connection to one OSD.
//!
//! Any number of requests are in flight on it at once. A writer task sends the frames queued
//! by callers (everything queued at the moment goes out in one vectored write); a reader task
//! decodes response frames and hands each to the caller waiting on its `request_id`, in
//! whatever order they arrive.
//!
//! # Contract
//! - Any failure (dial, write, read, end of stream, a frame or response that fails to
//!   decode, a frame that is not a response) closes the connection: every request waiting on
//!   it fails with the reason, later calls fail at once, and [`Connection::is_closed`] tells
//!   the owner to dial a new one. Nothing is retried here.
//! - A caller that stops waiting (timeout, cancellation) forgets its request; a late answer
//!   to it is dropped.
//! - Dropping the last handle stops both tasks and closes the socket.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tessera_wire::msg::{MAX_DATA, MAX_META};
use tessera_wire::{kind, Frame, FrameDecoder, FrameHeader, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// A response and its data (the read payload).
pub(crate) type Reply = (Response, Bytes);

/// Frames queued for the writer before callers wait for room.
const QUEUE: usize = 256;
/// One vectored write gathers queued frames up to about this many bytes...
const BATCH_BYTES: usize = 4 << 20;
/// ...and this many buffers.
const BATCH_SLICES: usize = 192;
/// Free room kept in the read buffer before each read.
const READ_CHUNK: usize = 64 << 10;

struct Outgoing {
    header: FrameHeader,
    meta: Bytes,
    /// Empty, or the checksum table of `data` (sent between meta and data).
    crcs: Bytes,
    data: Bytes,
}

#[derive(Default)]
struct Pending {
    /// Why the connection closed; set once, never cleared.
    closed: Option<String>,
    waiters: HashMap<u64, oneshot::Sender<Result<Reply, String>>>,
}

/// What the tasks and the handle share.
struct Shared {
    osd: u32,
    addr: String,
    pending: Mutex<Pending>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection closed and fails every waiting request with `reason`.
    fn close(&self, reason: String) {
        let waiters = {
            let mut p = self.lock();
            if p.closed.is_some() {
                return;
            }
            tracing::debug!(osd = self.osd, addr = %self.addr, %reason, "client: connection closed");
            p.closed = Some(reason.clone());
            std::mem::take(&mut p.waiters)
        };
        for (_, w) in waiters {
            let _ = w.send(Err(reason.clone()));
        }
        self.shutdown.send_replace(true);
    }

    /// Hands a received frame to its waiter. `Err`: the frame breaks the protocol.
    fn complete(&self, frame: Frame) -> Result<(), String> {
        if frame.kind != kind::RESPONSE {
            return Err(format!("frame of kind {} (request {}) where a response was expected", frame.kind, frame.request_id));
        }
        let resp = Response::decode(&frame.meta).map_err(|e| format!("undecodable response to request {}: {e}", frame.request_id))?;
        let waiter = self.lock().waiters.remove(&frame.request_id);
        if let Some(w) = waiter {
            let _ = w.send(Ok((resp, frame.data)));
        }
        Ok(())
    }
}

/// Removes a request's waiter when its caller stops waiting.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiters.remove(&self.id);
    }
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
    next_id: AtomicU64,
    tasks: [AbortHandle; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Connection {
    /// Connects to the OSD at `addr` (`host:port`) with TCP_NODELAY and starts its tasks.
    /// The caller bounds the time this takes.
    pub(crate) async fn dial(osd: u32, addr: &str) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("osd {osd}: connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("osd {osd}: set TCP_NODELAY on {addr}: {e}"))?;
        let (r, w) = stream.into_split();
        let shared =
            Arc::new(Shared { osd, addr: addr.to_string(), pending: Mutex::new(Pending::default()), shutdown: watch::Sender::new(false) });
        let (tx, rx) = mpsc::channel(QUEUE);
        let reader = tokio::spawn(read_loop(r, shared.clone())).abort_handle();
        let writer = tokio::spawn(write_loop(w, rx, shared.clone())).abort_handle();
        Ok(Connection { shared, tx, next_id: AtomicU64::new(1), tasks: [reader, writer] })
    }

    pub(crate) fn addr(&self) -> &str {
        &self.shared.addr
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Sends one request frame (`meta`, `data`) and waits for its response. `Err` is a
    /// connection failure, with the reason.
    pub(crate) async fn call(&self, meta: Bytes, data: Bytes) -> Result<Reply, String> {
        self.call_blocks(meta, data, Bytes::new()).await
    }

    /// [`Connection::call`] for block data with its checksum table `crcs` (see
    /// [`tessera_wire::FLAG_BLOCK_CRCS`]; empty: a plain frame).
    pub(crate) async fn call_blocks(&self, meta: Bytes, data: Bytes, crcs: Bytes) -> Result<Reply, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.lock();
            if let Some(reason) = &p.closed {
                return Err(reason.clone());
            }
            p.waiters.insert(id, tx);
        }
        let _guard = WaiterGuard { shared: &self.shared, id };
        let header = FrameHeader::for_data(kind::REQUEST, 0, id, &meta, &crcs, &data);
        if self.tx.send(Outgoing { header, meta, crcs, data }).await.is_err() {
            return Err(self.closed_reason());
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.closed_reason()),
        }
    }

    fn closed_reason(&self) -> String {
        let p = self.shared.lock();
        p.closed.clone().unwrap_or_else(|| format!("osd {}: connection to {} closed", self.shared.osd, self.shared.addr))
    }
}

async fn read_loop(mut r: OwnedReadHalf, shared: Arc<Shared>) {
    let who = format!("osd {} at {}", shared.osd, shared.addr);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut decoder = FrameDecoder::new(MAX_META, MAX_DATA);
    let reason = 'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(e) = shared.complete(frame) {
                        break 'conn format!("{who}: {e}");
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn format!("{who}: bad frame: {e}"),
            }
        }
        buf.reserve(READ_CHUNK);
        match r.read_buf(&mut buf).await {
            Ok(0) => break format!("{who}: connection closed by the osd"),
            Ok(_) => {}
            Err(e) => break format!("{who}: read: {e}"),
        }
    };
    shared.close(reason);
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = shutdown.wait_for(|closed| *closed) => return,
        };
        let mut bytes = push(&mut chunks, first);
        while bytes < BATCH_BYTES && chunks.len() + 4 <= BATCH_SLICES {
            match rx.try_recv() {
                Ok(m) => bytes += push(&mut chunks, m),
                Err(_) => break,
            }
        }
        if let Err(e) = write_all(&mut w, &mut chunks).await {
            shared.close(format!("osd {} at {}: write: {e}", shared.osd, shared.addr));
            return;
        }
    }
}

/// Queues one frame's parts; returns its length.
fn push(chunks: &mut VecDeque<Bytes>, m: Outgoing) -> usize {
    let len = m.header.0.len() + m.meta.len() + m.crcs.len() + m.data.len();
    chunks.push_back(Bytes::copy_from_slice(&m.header.0));
    chunks.push_back(m.meta);
    if !m.crcs.is_empty() {
        chunks.push_back(m.crcs);
    }
    if !m.data.is_empty() {
        chunks.push_back(m.data);
    }
    len
}

/// Writes every chunk with vectored writes, consuming them.
async fn write_all(w: &mut OwnedWriteHalf, chunks: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !chunks.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        tessera_wire::consume_chunks(chunks, n);
    }
    Ok(())
}
