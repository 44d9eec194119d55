//! The write path of a Raft PG replica, reduced to its storage calls: append the entry to the
//! PG's log and wait until it is durable, apply it to the object (pointing the object at the
//! entry's blocks, no data copied), and compact the log now and then.
//!
//! Contract: many writers may write to the same PG. Per PG, log indexes are allocated and
//! appends submitted under one lock, so appends reach the engine in index order; a
//! compaction never covers an entry whose apply has not been submitted yet; every apply is
//! submitted by the time its writer is dropped.

use super::args::ApplyPolicy;
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use tessera_engine::{Engine, EngineError, LogEntry, ObjectKey, Op, PgId, Txn};

/// Term of every entry the bench appends (there are no elections).
const TERM: u64 = 1;
/// Applied entries beyond `keep` that accumulate before one `LogCompact` drops them.
pub const COMPACT_STEP: u64 = 64;

/// Per-PG log bookkeeping shared by the bench's writers.
pub struct RaftLogs<'e> {
    engine: &'e Engine,
    pgs: Vec<Mutex<PgLog>>,
    keep: u64,
    policy: ApplyPolicy,
    /// First error reported by an apply or compaction nobody waited for.
    async_error: Arc<Mutex<Option<String>>>,
}

struct PgLog {
    id: PgId,
    /// Index the next append gets.
    next: u64,
    /// Entries appended whose apply has not been submitted yet.
    unapplied: BTreeSet<u64>,
    compacted: u64,
}

/// An appended, durable entry whose apply is still to be submitted.
struct Pending {
    pg: usize,
    index: u64,
    apply: Op,
}

/// One client's writer: owns the apply it carries into its next append.
pub struct RaftWriter<'a, 'e> {
    logs: &'a RaftLogs<'e>,
    carry: Option<Pending>,
}

impl<'e> RaftLogs<'e> {
    /// Bookkeeping for `pgs`, continuing each PG's log where the engine has it.
    pub fn new(engine: &'e Engine, pgs: &[PgId], keep: u64, policy: ApplyPolicy) -> Self {
        let pgs = pgs
            .iter()
            .map(|&id| {
                let (compacted, last) = engine.log_bounds(id).map_or((0, 0), |b| (b.compacted, b.last));
                Mutex::new(PgLog { id, next: last + 1, unapplied: BTreeSet::new(), compacted })
            })
            .collect();
        Self { engine, pgs, keep, policy, async_error: Arc::new(Mutex::new(None)) }
    }

    pub fn writer(&self) -> RaftWriter<'_, 'e> {
        RaftWriter { logs: self, carry: None }
    }

    /// The first failure of an apply or compaction, if any.
    pub fn check(&self) -> Result<()> {
        match self.async_error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(e) => Err(anyhow!("an apply or log compaction failed: {e}")),
            None => Ok(()),
        }
    }

    fn lock(&self, pg: usize) -> MutexGuard<'_, PgLog> {
        self.pgs[pg].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A callback that records the first failure of an operation nobody waits for.
    fn report_to(&self) -> impl FnOnce(tessera_engine::Result<()>) + Send + 'static {
        let slot = self.async_error.clone();
        move |r| {
            if let Err(e) = r {
                slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
            }
        }
    }

    /// Records that the apply of `p` was submitted, and compacts the PG's log when enough
    /// applied entries beyond `keep` accumulated (submitted under the PG lock, so one PG's
    /// compactions reach the engine in increasing order).
    fn applied(&self, p: &Pending) {
        let mut log = self.lock(p.pg);
        log.unapplied.remove(&p.index);
        let applied = log.unapplied.first().map_or(log.next - 1, |u| u - 1);
        let upto = applied.min((log.next - 1).saturating_sub(self.keep));
        if upto >= log.compacted + COMPACT_STEP {
            self.engine.submit(Txn::new().with(Op::LogCompact { pg: log.id, upto, term: TERM }), self.report_to());
            log.compacted = upto;
        }
    }
}

impl RaftWriter<'_, '_> {
    /// One client write of `data` to `key` at `offset` through PG number `pg` (an index into
    /// the PGs given to [`RaftLogs::new`]). Returns once the log entry is durable. With
    /// [`ApplyPolicy::Separate`] the apply is then submitted on its own (not waited for);
    /// with [`ApplyPolicy::Piggyback`] it goes into this writer's next append transaction.
    pub fn write(&mut self, pg: usize, key: ObjectKey, offset: u64, data: Bytes) -> Result<()> {
        let logs = self.logs;
        logs.check()?;
        let len = data.len() as u64;
        let mut txn = Txn::new();
        let carried = self.carry.take();
        if let Some(p) = &carried {
            txn.push(p.apply.clone());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (id, index) = {
            let mut log = logs.lock(pg);
            let index = log.next;
            log.next += 1;
            log.unapplied.insert(index);
            let entry = LogEntry { index, term: TERM, meta: command_header(key, offset, len), data, crcs: Vec::new() };
            txn.push(Op::LogAppend { pg: log.id, entries: vec![entry] });
            logs.engine.submit(txn, move |r| {
                let _ = tx.send(r);
            });
            (log.id, index)
        };
        if let Some(p) = carried {
            logs.applied(&p);
        }
        rx.recv().unwrap_or(Err(EngineError::Closed)).with_context(|| format!("log append of entry {index} to pg {id}"))?;

        let pending = Pending { pg, index, apply: Op::ApplyWrite { pg: id, key, offset, entry: index, entry_offset: 0, len } };
        match logs.policy {
            ApplyPolicy::Piggyback => self.carry = Some(pending),
            ApplyPolicy::Separate => {
                logs.engine.submit(Txn::new().with(pending.apply.clone()), logs.report_to());
                logs.applied(&pending);
            }
        }
        Ok(())
    }
}

impl Drop for RaftWriter<'_, '_> {
    /// Submits the carried apply, if any, and waits for it so reads see the write.
    fn drop(&mut self) {
        if let Some(p) = self.carry.take() {
            let r = self.logs.engine.commit(Txn::new().with(p.apply.clone()));
            self.logs.report_to()(r);
            self.logs.applied(&p);
        }
    }
}

/// The command header a replica stores with each entry (24 bytes): which object range the
/// entry's data is for.
fn command_header(key: ObjectKey, offset: u64, len: u64) -> Bytes {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&key.object.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    Bytes::from(b)
}
