//! The commit thread: the engine's only writer.
//!
//! Each round it takes every queued transaction, validates each against the durable state
//! plus the batch built so far, lays the survivors out as one batch (one header, then all
//! their data blocks), writes it with one `write`, makes it durable with one `fdatasync`,
//! applies it to the in-memory state and only then calls every transaction's callback.
//! While it is busy, new transactions queue up and form the next batch: group commit.
//!
//! If a write or sync fails the engine stops accepting writes ("fsyncgate": after a failed
//! fsync the kernel may have dropped the dirty data, so nothing written since the last good
//! sync can be trusted). Reopening the device runs recovery, which decides from the device.

use super::recovery::LogHead;
use super::{Callback, Request, Shared};
use crate::device::AlignedBuf;
use crate::error::{EngineError, Result};
use crate::format::batch::{encode_header, BatchOp, FIXED_LEN};
use crate::ids::{BLOCK, BLOCK_SIZE};
use crate::segments::{Geometry, SegState, SegmentTable};
use crate::state::{apply_batch, Overlay};
use crate::txn::{rebase, PreparedTxn};
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Internal writes (relocation, checkpoints) may use these last free segments; user batches
/// may not, so the cleaner always has room to make room.
pub(crate) const RESERVED_SEGMENTS: usize = 2;

/// Smallest relocation chunk added to a user batch (1 MiB): amortizes the index scan that
/// applying a `Relocate` op costs.
const MIN_RELOCATE_BLOCKS: u64 = 256;

pub(crate) struct Committer {
    pub sh: Arc<Shared>,
    pub geo: Geometry,
    pub table: SegmentTable,
    pub head: LogHead,
    pub gen: u64,
    pub ckpt_segs: Vec<u32>,
    pub bytes_since_ckpt: u64,
    pub buf: AlignedBuf,
    /// Segments filled since open; with `fruitless_clean_at`, keeps the automatic cleaner from
    /// retrying before anything changed.
    pub segments_filled: u64,
    pub fruitless_clean_at: Option<u64>,
    pub clean_job: Option<super::cleaner::CleanJob>,
    /// Relocation blocks the pacing has granted but not yet spent.
    pub clean_credit: u64,
}

/// A batch being assembled.
#[derive(Default)]
pub(crate) struct Batch {
    pub ops: Vec<BatchOp>,
    pub data: Vec<Bytes>,
    pub crcs: Vec<u32>,
    pub ops_len: usize,
    /// In submission order; a transaction refused before the write carries its error.
    pub callbacks: Vec<(Callback, Option<EngineError>)>,
    /// Blocks moved by the cleaner in this batch.
    pub relocated: u64,
    /// Transactions that asked for no sync of their own ([`crate::Txn::unsynced`]), and the
    /// others: the batch skips its `fdatasync` only if it holds nothing else.
    pub unsynced_txns: usize,
    pub synced_txns: usize,
}

impl Batch {
    pub fn header_len(&self) -> usize {
        FIXED_LEN + 4 + 4 * self.crcs.len() + 4 + self.ops_len
    }
    pub fn blocks(&self) -> u64 {
        self.header_len().div_ceil(BLOCK_SIZE) as u64 + self.crcs.len() as u64
    }
    fn blocks_with(&self, t: &PreparedTxn) -> u64 {
        (self.header_len() + 4 * t.crcs.len() + t.ops_len).div_ceil(BLOCK_SIZE) as u64 + (self.crcs.len() + t.crcs.len()) as u64
    }
    fn add(&mut self, mut t: PreparedTxn, cb: Callback) {
        let base = self.crcs.len() as u32;
        if t.unsynced {
            self.unsynced_txns += 1;
        } else {
            self.synced_txns += 1;
        }
        t.ops.iter_mut().for_each(|op| rebase(op, base));
        self.ops.append(&mut t.ops);
        self.data.append(&mut t.data);
        self.crcs.append(&mut t.crcs);
        self.ops_len += t.ops_len;
        self.callbacks.push((cb, None));
    }
    /// A transaction refused before the write: called back with `e` in its turn, after the
    /// transactions submitted before it (callbacks keep submission order).
    fn reject(&mut self, cb: Callback, e: EngineError) {
        self.callbacks.push((cb, Some(e)));
    }
    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty() && self.ops.is_empty()
    }
    /// Whether the batch needs an `fdatasync`: all but batches of unsynced transactions
    /// only, without data blocks (any batch built outside [`Batch::add`] syncs).
    pub fn needs_sync(&self) -> bool {
        self.synced_txns > 0 || self.unsynced_txns == 0 || !self.crcs.is_empty() || self.relocated > 0
    }
}

/// Runs a caller's callback; a panicking callback is logged instead of killing the commit
/// thread (which would leave every later transaction waiting forever).
fn call(cb: Callback, r: Result<()>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(r))).is_err() {
        tracing::error!("a transaction callback panicked; the engine continues");
    }
}

/// Whether a write may use the reserved segments.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// User data: may not touch the reserve.
    User,
    /// A batch without data blocks (deletes, trims, log compaction, metadata): may use all
    /// but one reserved segment, so space can always be freed on a full device.
    Metadata,
    /// Relocation and checkpoints: may use every free segment.
    Internal,
}

impl Committer {
    pub fn run(mut self) {
        loop {
            let reqs = {
                let mut q = self.sh.queue.lock();
                while q.items.is_empty() && !q.shutdown {
                    self.sh.cv.wait(&mut q);
                }
                if q.items.is_empty() && q.shutdown {
                    break;
                }
                std::mem::take(&mut q.items)
            };
            let mut batch = Batch::default();
            let mut overlay = Overlay::default();
            for r in reqs {
                match r {
                    Request::Txn(t, cb) => {
                        if let Some(e) = self.failure() {
                            batch.reject(cb, e);
                            continue;
                        }
                        if batch.blocks_with(&t) > self.geo.seg_blocks {
                            self.flush(std::mem::take(&mut batch));
                            overlay = Overlay::default();
                        }
                        let admitted = overlay.admit(&self.sh.state.read(), &t.ops);
                        match admitted {
                            Ok(()) => batch.add(t, cb),
                            Err(e) => batch.reject(cb, e),
                        }
                    }
                    Request::Rejected(e, cb) => batch.reject(cb, e),
                    Request::Checkpoint(cb) => {
                        self.flush(std::mem::take(&mut batch));
                        overlay = Overlay::default();
                        call(cb, self.guarded(Self::checkpoint));
                    }
                    Request::Clean(cb) => {
                        self.flush(std::mem::take(&mut batch));
                        overlay = Overlay::default();
                        call(cb, self.guarded(Self::clean));
                    }
                }
            }
            self.flush(batch);
            if self.failure().is_none() {
                if let Err(e) = self.maintain() {
                    tracing::warn!(error = %e, "background maintenance failed");
                }
            }
        }
    }

    fn failure(&self) -> Option<EngineError> {
        self.sh.failed.lock().clone().map(EngineError::Failed)
    }

    fn guarded(&mut self, f: fn(&mut Self) -> Result<()>) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        f(self)
    }

    /// Marks the engine failed after a device error on the write path.
    pub fn fail(&self, e: &EngineError) {
        tracing::error!(error = %e, "engine write path failed; refusing further writes");
        self.sh.failed.lock().get_or_insert_with(|| e.to_string());
    }

    /// Writes the batch and calls back its transactions with the outcome.
    fn flush(&mut self, mut batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let cbs = std::mem::take(&mut batch.callbacks);
        if batch.ops.is_empty() && cbs.iter().all(|(_, e)| e.is_some()) {
            // Nothing admitted: nothing to write.
            for (cb, e) in cbs {
                call(cb, Err(e.expect("refused")));
            }
            return;
        }
        let purpose = if batch.crcs.is_empty() { Purpose::Metadata } else { Purpose::User };
        // The purpose is fixed by the user data alone: relocation added below never turns a
        // metadata batch (which may dip into the reserve) into a user-data batch.
        // A batch without a sync carries no relocation (its data blocks must be synced).
        let pace = if batch.needs_sync() { self.clean_pace(batch.crcs.len() as u64) } else { None };
        let own = (batch.ops.len(), batch.ops_len, batch.crcs.len(), batch.data.len());
        if let Some(pace) = pace {
            // Relocation shares this batch's write and fsync. Applying a Relocate op scans the
            // whole index, so the pace is saved up and spent in chunks of at least
            // MIN_RELOCATE_BLOCKS (or whatever finishes the job).
            self.clean_credit += pace;
            let remaining = self.clean_job.as_ref().map_or(0, |j| j.remaining() as u64);
            // Relocation fills the rest of the segment the batch lands in, and never makes a
            // batch that fits in the head segment's rest take a new segment: on a device
            // short of free segments that would refuse a batch that fits on its own.
            let (left, own) = (self.geo.seg_blocks - self.head.off_blocks, batch.blocks());
            let rest = if own <= left { left - own } else { self.geo.seg_blocks.saturating_sub(own) };
            let room = rest.saturating_sub(2) * BLOCK / (BLOCK + 20);
            let n = if self.clean_credit >= MIN_RELOCATE_BLOCKS.min(remaining) { self.clean_credit.min(room) } else { 0 };
            self.clean_credit -= n;
            if let Err(e) = self.relocate_into(&mut batch, n as usize, false) {
                tracing::warn!(error = %e, "cleaner read failed; dropping the cleaning job");
                self.abort_cleaning();
            }
        }
        let mut res = self.write_batch(&batch, purpose);
        if matches!(res, Err(EngineError::NoSpace { .. })) {
            // Make room and try once more, without the relocation this batch carried: the
            // job is dropped (its moved blocks stay moved, the others where they are) and
            // `clean` runs a new one to completion, whose victims may be the very segments
            // the dropped moves came from. Moves written after those segments were freed
            // could point at blocks written there since.
            if batch.relocated > 0 {
                (batch.relocated, batch.ops_len) = (0, own.1);
                batch.ops.truncate(own.0);
                batch.crcs.truncate(own.2);
                batch.data.truncate(own.3);
                self.abort_cleaning();
            }
            if let Err(e) = self.clean() {
                tracing::warn!(error = %e, "cleaning on a full device failed");
            }
            res = self.write_batch(&batch, purpose);
        }
        if res.is_err() && batch.relocated > 0 {
            self.abort_cleaning();
        }
        self.finish_cleaning();
        for (cb, refused) in cbs {
            call(cb, refused.map_or_else(|| res.clone(), Err));
        }
    }

    /// Takes a free segment for `st`, waiting for readers that may still be reading blocks
    /// of segments that became free since they looked them up.
    pub fn take_segment(&mut self, st: SegState, purpose: Purpose) -> Option<u32> {
        self.table.reclaim(self.sh.state.read().seg_live());
        let reserve = match purpose {
            Purpose::User => RESERVED_SEGMENTS,
            Purpose::Metadata => RESERVED_SEGMENTS - 1,
            Purpose::Internal => 0,
        };
        if self.table.free_count() <= reserve {
            return None;
        }
        let _quiesce = self.sh.reuse.write();
        self.table.take_free(st)
    }

    /// Places, writes, syncs and applies one batch. Calls back nobody.
    pub fn write_batch(&mut self, batch: &Batch, purpose: Purpose) -> Result<()> {
        let total = batch.blocks();
        if total > self.geo.seg_blocks {
            return Err(EngineError::TooLarge { bytes: total * BLOCK, max: self.geo.seg_bytes() });
        }
        if self.head.off_blocks + total > self.geo.seg_blocks {
            let Some(new_next) = self.take_segment(SegState::Next, purpose) else {
                return Err(EngineError::NoSpace { need_blocks: total, free_segments: self.table.free_count() });
            };
            self.table.set(self.head.seg, SegState::Chain);
            self.table.set(self.head.next_seg, SegState::Active);
            self.segments_filled += 1;
            (self.head.seg, self.head.off_blocks, self.head.next_seg) = (self.head.next_seg, 0, new_next);
        }
        let header = encode_header(self.head.seq, self.sh.uuid, self.head.next_seg, &batch.crcs, &batch.ops);
        let header_blocks = header.len().div_ceil(BLOCK_SIZE);
        debug_assert_eq!(header_blocks as u64 + batch.crcs.len() as u64, total);
        let len = total as usize * BLOCK_SIZE;
        if self.buf.capacity() < len {
            self.buf = AlignedBuf::zeroed(len);
        }
        self.buf.set_len(len);
        self.buf[..header.len()].copy_from_slice(&header);
        self.buf[header.len()..header_blocks * BLOCK_SIZE].fill(0);
        let mut at = header_blocks * BLOCK_SIZE;
        for d in &batch.data {
            self.buf[at..at + d.len()].copy_from_slice(d);
            at += d.len();
        }
        let offset = self.geo.seg_offset(self.head.seg) + self.head.off_blocks * BLOCK;
        let sync = batch.needs_sync();
        let io = self.sh.dev.write_at(offset, &self.buf).and_then(|_| if sync { self.sh.dev.sync() } else { Ok(()) });
        if let Err(e) = io {
            let e = EngineError::from(e);
            self.fail(&e);
            return Err(e);
        }
        let base = self.geo.block_of(self.head.seg, self.head.off_blocks + header_blocks as u64);
        let rejected = apply_batch(&mut self.sh.state.write(), &batch.ops, base, &batch.crcs);
        self.head.seq += 1;
        self.head.off_blocks += total;
        self.bytes_since_ckpt += len as u64;
        let s = &self.sh.stats;
        s.batches.fetch_add(1, Relaxed);
        s.syncs.fetch_add(u64::from(sync), Relaxed);
        s.device_bytes.fetch_add(len as u64, Relaxed);
        s.header_bytes.fetch_add((header_blocks * BLOCK_SIZE) as u64, Relaxed);
        s.apply_errors.fetch_add(rejected, Relaxed);
        s.relocated_blocks.fetch_add(batch.relocated, Relaxed);
        s.free_segments.store(self.table.free_count() as u64, Relaxed);
        Ok(())
    }
}
