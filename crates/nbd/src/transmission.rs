//! The transmission runtime of one connection.
//!
//! The reader (this task) parses requests in order and starts each as its own task; replies
//! go to a writer task in completion order, so they may be out of order (the cookie matches
//! them). Backpressure: a request reserves budget (one unit plus one per 64 KiB of payload,
//! [`crate::server::ServerConfig::max_in_flight_units`]) before its payload is read, and
//! releases it once its reply is written.
//!
//! Ordering: FLUSH waits for every write (WRITE, TRIM, WRITE_ZEROES) received before it to
//! finish, then calls the export's `flush`; so everything sent before an acknowledged FLUSH
//! is durable, which is stronger than the protocol asks (writes replied to before it).
//! FUA writes call `flush` after the write. NBD_CMD_DISC stops reading; the connection
//! closes once every started request has been answered.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

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
    _budget: OwnedSemaphorePermit,
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

pub(crate) async fn serve<R, W>(mut rd: R, wr: W, export: Arc<dyn Export>, shared: Arc<Shared>) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let lim = Limits { size: export.size(), min_block: shared.cfg.min_block, read_only: export.read_only() };
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx));
    let units = shared.cfg.max_in_flight_units.max(1);
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
        let h = match request::parse_header(&hdr) {
            Ok(h) => h,
            Err(e) => break Err(e),
        };
        let payload_len = match request::write_payload_len(&h) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let cost = (1 + payload_len.max(if h.kind == proto::CMD_READ { h.len as usize } else { 0 }) / UNIT_BYTES).min(units);
        let permit = budget.clone().acquire_many_owned(cost as u32).await.expect("the budget semaphore is never closed");
        let mut payload = BytesMut::zeroed(payload_len);
        if let Err(e) = rd.read_exact(&mut payload).await {
            break Err(e.into());
        }
        let cmd = match request::classify(&h, &lim) {
            Ok(Command::Disconnect) => break Ok(()),
            Ok(cmd) => cmd,
            Err(errno) => {
                Stats::add(&shared.stats.errors, 1);
                tracing::debug!(cookie = h.cookie, kind = h.kind, offset = h.offset, len = h.len, errno, "request refused");
                let _ = tx.send(Reply { header: request::simple_reply(errno, h.cookie), data: None, _budget: permit });
                continue;
            }
        };
        let write_id = match cmd {
            Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. } => {
                let id = next_write;
                next_write += 1;
                writes.ids.lock().unwrap().insert(id);
                Some(id)
            }
            _ => None,
        };
        let (export, shared, tx, writes, barrier) = (export.clone(), shared.clone(), tx.clone(), writes.clone(), next_write);
        let payload = payload.freeze();
        tasks.spawn(async move {
            if matches!(cmd, Command::Flush) {
                writes.wait_below(barrier).await;
            }
            let outcome = execute(&*export, cmd, payload, &shared.stats).await;
            if let Some(id) = write_id {
                writes.finish(id);
            }
            let (errno, data) = match outcome {
                Ok(data) => (0, data),
                Err(e) => {
                    Stats::add(&shared.stats.errors, 1);
                    match e.errno() {
                        proto::EIO => tracing::warn!(export = export.name(), ?cmd, "command failed: {e}"),
                        errno => tracing::debug!(export = export.name(), ?cmd, errno, "command failed: {e}"),
                    }
                    (e.errno(), None)
                }
            };
            let _ = tx.send(Reply { header: request::simple_reply(errno, h.cookie), data, _budget: permit });
        });
    };
    // Answer everything already started, then let the writer drain and close.
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let written = writer.await.map_err(|e| ConnError::Protocol(format!("reply writer: {e}")))?;
    result.and(written)
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

async fn write_replies<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::UnboundedReceiver<Reply>) -> Result<(), ConnError> {
    let mut out = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(r) = rx.recv().await {
        out.write_all(&r.header).await?;
        if let Some(d) = &r.data {
            out.write_all(d).await?;
        }
        drop(r);
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await?;
    out.shutdown().await?;
    Ok(())
}
