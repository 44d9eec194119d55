//! The transmission runtime of one connection.
//!
//! The reader (this task) parses requests in order and starts each as its own task; replies
//! go to a writer task in completion order, so they may be out of order (the cookie matches
//! them). Backpressure: a request reserves budget (one unit plus one per 64 KiB of payload,
//! [`crate::server::ServerConfig::max_in_flight_units`]) before its payload is read, and
//! releases it once its reply is written; the server-wide budget
//! ([`crate::server::ServerConfig::max_in_flight_units_total`]) is taken the same way. A
//! client that stops reading replies is dropped after `reply_timeout`.
//!
//! Ordering: FLUSH waits for every write (WRITE, TRIM, WRITE_ZEROES) received before it to
//! finish, then calls the export's `flush`; so everything sent before an acknowledged FLUSH
//! is durable, which is stronger than the protocol asks (writes replied to before it).
//! FUA writes call `flush` after the write. NBD_CMD_DISC stops reading; the connection
//! closes once every started request has been answered (at server shutdown, within
//! `shutdown_grace`; then it is dropped). Every started request is answered exactly once,
//! with `EIO` if its export call panicked ([`Answer`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::error::{ConnError, ExportError};
use crate::export::Export;
use crate::proto;
use crate::request::{self, Command, Limits, REQUEST_LEN};
use crate::server::Shared;
use crate::stats::Stats;

/// One unit of in-flight budget per this many payload bytes (plus one per request).
const UNIT_BYTES: usize = 64 * 1024;

struct Reply {
    header: [u8; request::REPLY_LEN],
    data: Option<Bytes>,
    _budget: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Writes received and not yet finished, by arrival number.
#[derive(Default)]
struct WritesInFlight {
    ids: Mutex<BTreeSet<u64>>,
    done: Notify,
}

impl WritesInFlight {
    fn finish(&self, id: u64) {
        self.ids.lock().unwrap().remove(&id);
        self.done.notify_waiters();
    }

    /// Returns once no write numbered below `barrier` is in flight.
    async fn wait_below(&self, barrier: u64) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ids.lock().unwrap().first().is_none_or(|first| *first >= barrier) {
                return;
            }
            notified.await;
        }
    }
}

/// Answers one request exactly once: with [`Answer::send`], or, if the task ends without
/// it (the export panicked, or the task was aborted at shutdown), with `EIO` on drop. Also
/// marks the request's write finished for the FLUSH barrier either way.
struct Answer {
    tx: mpsc::UnboundedSender<Reply>,
    cookie: u64,
    budget: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    write: Option<(Arc<WritesInFlight>, u64)>,
}

impl Answer {
    fn send(mut self, errno: u32, data: Option<Bytes>) {
        self.reply(errno, data);
    }

    fn reply(&mut self, errno: u32, data: Option<Bytes>) {
        if let Some((writes, id)) = self.write.take() {
            writes.finish(id);
        }
        if let Some(budget) = self.budget.take() {
            let _ = self.tx.send(Reply { header: request::simple_reply(errno, self.cookie), data, _budget: budget });
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.budget.is_some() {
            tracing::error!(cookie = self.cookie, "request ended without an answer (export panic or shutdown); answering EIO");
            self.reply(proto::EIO, None);
        }
    }
}

pub(crate) async fn serve<R, W>(mut rd: R, wr: W, export: Arc<dyn Export>, shared: Arc<Shared>) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let lim = Limits { size: export.size(), min_block: shared.cfg.min_block, read_only: export.read_only() };
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx, shared.cfg.reply_timeout));
    let writer_abort = writer.abort_handle();
    let units = shared.cfg.max_in_flight_units.clamp(1, shared.cfg.max_in_flight_units_total.max(1));
    let budget = Arc::new(Semaphore::new(units));
    let writes = Arc::new(WritesInFlight::default());
    let mut next_write = 0u64;
    let mut tasks = JoinSet::new();
    let mut stop = shared.stop.subscribe();
    let result = loop {
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        let mut hdr = [0u8; REQUEST_LEN];
        let read = tokio::select! {
            r = rd.read_exact(&mut hdr) => r,
            _ = crate::server::stopped(&mut stop) => break Ok(()),
        };
        match read {
            Ok(_) => {}
            // The client hung up between requests.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        let received = if tessera_wire::trace::enabled() { tessera_wire::trace::now_ns() } else { 0 };
        let h = match request::parse_header(&hdr) {
            Ok(h) => h,
            Err(e) => break Err(e),
        };
        let payload_len = match request::write_payload_len(&h) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let data_len = payload_len.max(if h.kind == proto::CMD_READ { h.len as usize } else { 0 });
        let cost = (1 + data_len / UNIT_BYTES).min(units) as u32;
        // This connection's budget, then the server's: both bound memory held by requests
        // whose replies are not written yet.
        let permits = async {
            let mine = budget.clone().acquire_many_owned(cost).await.expect("never closed");
            let all = shared.budget.clone().acquire_many_owned(cost).await.expect("never closed");
            (mine, all)
        };
        let permits = tokio::select! {
            p = permits => p,
            _ = crate::server::stopped(&mut stop) => break Ok(()),
        };
        let mut payload = BytesMut::zeroed(payload_len);
        let read = tokio::select! {
            r = rd.read_exact(&mut payload) => r,
            _ = crate::server::stopped(&mut stop) => break Ok(()),
        };
        if let Err(e) = read {
            break Err(e.into());
        }
        let mut answer = Answer { tx: tx.clone(), cookie: h.cookie, budget: Some(permits), write: None };
        let cmd = match request::classify(&h, &lim) {
            Ok(Command::Disconnect) => {
                // Not a request to answer.
                answer.budget = None;
                break Ok(());
            }
            Ok(cmd) => cmd,
            Err(errno) => {
                Stats::add(&shared.stats.errors, 1);
                tracing::debug!(cookie = h.cookie, kind = h.kind, offset = h.offset, len = h.len, errno, "request refused");
                answer.send(errno, None);
                continue;
            }
        };
        if matches!(cmd, Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }) {
            let id = next_write;
            next_write += 1;
            writes.ids.lock().unwrap().insert(id);
            answer.write = Some((writes.clone(), id));
        }
        let (export, shared, writes, barrier) = (export.clone(), shared.clone(), writes.clone(), next_write);
        let payload = payload.freeze();
        tasks.spawn(async move {
            if matches!(cmd, Command::Flush) {
                writes.wait_below(barrier).await;
            }
            let run = execute(&*export, cmd, payload, &shared.stats);
            let result = if received == 0 { run.await } else { crate::trace::RECEIVED.scope(received, run).await };
            match result {
                Ok(data) => answer.send(0, data),
                Err(e) => {
                    Stats::add(&shared.stats.errors, 1);
                    match e.errno() {
                        proto::EIO => tracing::warn!(export = export.name(), ?cmd, "command failed: {e}"),
                        errno => tracing::debug!(export = export.name(), ?cmd, errno, "command failed: {e}"),
                    }
                    answer.send(e.errno(), None);
                }
            }
        });
    };
    // Answer everything already started, then let the writer drain and close. When the
    // server shuts down this gets `shutdown_grace`; then the connection is dropped.
    let drain = async {
        while tasks.join_next().await.is_some() {}
        drop(tx);
        writer.await.map_err(|e| ConnError::Protocol(format!("reply writer: {e}")))?
    };
    let grace = shared.cfg.shutdown_grace;
    let deadline = async {
        crate::server::stopped(&mut stop).await;
        tokio::time::sleep(grace).await;
    };
    let drained = tokio::select! {
        r = drain => r,
        _ = deadline => {
            writer_abort.abort();
            Err(ConnError::Protocol(format!("requests still unanswered {grace:?} after shutdown began; connection dropped")))
        }
    };
    result.and(drained)
}

async fn execute(export: &dyn Export, cmd: Command, payload: Bytes, stats: &Stats) -> Result<Option<Bytes>, ExportError> {
    match cmd {
        Command::Read { offset, len } => {
            let data = if len == 0 { Bytes::new() } else { export.read(offset, len).await? };
            if data.len() != len as usize {
                return Err(ExportError::Io(format!("the export returned {} bytes for a read of {len}", data.len())));
            }
            Stats::add(&stats.reads, 1);
            Stats::add(&stats.read_bytes, len as u64);
            Ok(Some(data))
        }
        Command::Write { offset, len, fua } => {
            if len > 0 {
                export.write(offset, payload).await?;
            }
            if fua {
                export.flush().await?;
            }
            Stats::add(&stats.writes, 1);
            Stats::add(&stats.write_bytes, len as u64);
            Ok(None)
        }
        Command::Trim { offset, len, fua } | Command::WriteZeroes { offset, len, fua, punch: true } => {
            zeroes(export, offset, len, true, fua, stats).await
        }
        Command::WriteZeroes { offset, len, fua, punch: false } => zeroes(export, offset, len, false, fua, stats).await,
        Command::Flush => {
            export.flush().await?;
            Stats::add(&stats.flushes, 1);
            Ok(None)
        }
        Command::Disconnect => Ok(None),
    }
}

async fn zeroes(export: &dyn Export, offset: u64, len: u32, punch: bool, fua: bool, stats: &Stats) -> Result<Option<Bytes>, ExportError> {
    if len > 0 {
        export.write_zeroes(offset, len as u64, punch).await?;
    }
    if fua {
        export.flush().await?;
    }
    Stats::add(&stats.zeroes, 1);
    Ok(None)
}

/// Writes replies in the order they complete. A client that stops reading for longer than
/// `timeout` (one reply's write or flush cannot finish) loses its connection, so it cannot
/// hold the server's in-flight budget forever.
async fn write_replies<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::UnboundedReceiver<Reply>, timeout: Duration) -> Result<(), ConnError> {
    let mut out = BufWriter::with_capacity(256 * 1024, wr);
    let stalled = || ConnError::Protocol(format!("the client read no reply for {timeout:?}"));
    while let Some(r) = rx.recv().await {
        let write = async {
            out.write_all(&r.header).await?;
            if let Some(d) = &r.data {
                out.write_all(d).await?;
            }
            if rx.is_empty() {
                out.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(timeout, write).await.map_err(|_| stalled())??;
        drop(r);
    }
    tokio::time::timeout(timeout, out.flush()).await.map_err(|_| stalled())??;
    let _ = tokio::time::timeout(timeout, out.shutdown()).await;
    Ok(())
}
