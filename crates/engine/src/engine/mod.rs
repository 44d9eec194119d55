//! The engine: one per OSD device. See the crate docs for the durability contract.

mod cleaner;
mod committer;
mod maintenance;
mod recovery;

pub use recovery::{format, FormatOptions};

use crate::device::{AlignedBuf, Device};
use crate::error::{EngineError, Result};
use crate::ids::{MetaScope, ObjectKey, PgId, BLOCK, BLOCK_SIZE};
use crate::state::{BlockRef, LogBounds, ObjectInfo, State};
use crate::txn::{prepare, LogEntry, PreparedTxn, Txn};
use bytes::Bytes;
use committer::Committer;
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Runtime tunables (the on-disk layout is fixed by [`FormatOptions`]).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Write a checkpoint after this many bytes of log; bounds replay time after a crash.
    pub checkpoint_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { checkpoint_bytes: 256 << 20 }
    }
}

/// Called exactly once with the outcome of a transaction, on the commit thread: `Ok` only
/// after the transaction is durable. It must not block and must not drop the engine.
pub type Callback = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) enum Request {
    Txn(PreparedTxn, Callback),
    /// A transaction refused by `submit` itself: called back in its turn.
    Rejected(EngineError, Callback),
    Checkpoint(Callback),
    Clean(Callback),
}

#[derive(Default)]
pub(crate) struct Queue {
    items: Vec<Request>,
    shutdown: bool,
}

#[derive(Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    syncs: AtomicU64,
    device_bytes: AtomicU64,
    header_bytes: AtomicU64,
    client_bytes: AtomicU64,
    checkpoints: AtomicU64,
    relocated_blocks: AtomicU64,
    cleaned_segments: AtomicU64,
    corrupt_relocated: AtomicU64,
    apply_errors: AtomicU64,
    free_segments: AtomicU64,
}

/// Counters since the engine was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Group commits (each one write + one fdatasync).
    pub batches: u64,
    pub syncs: u64,
    /// Every byte the engine wrote to the device: batches, checkpoints, slots.
    pub device_bytes: u64,
    /// Of which batch headers.
    pub header_bytes: u64,
    /// Data bytes submitted by callers (log entry data and object writes).
    pub client_bytes: u64,
    pub checkpoints: u64,
    pub relocated_blocks: u64,
    pub cleaned_segments: u64,
    pub corrupt_relocated: u64,
    /// Durable ops the state rejected on apply; always 0 unless there is a bug.
    pub apply_errors: u64,
    pub free_segments: u64,
    pub total_segments: u64,
    pub live_blocks: u64,
    /// Batches replayed by recovery when the engine was opened.
    pub replayed_batches: u64,
}

pub(crate) struct Shared {
    dev: Arc<dyn Device>,
    uuid: u128,
    cfg: EngineConfig,
    state: RwLock<State>,
    /// Readers hold it shared from looking up block locations until their read completes;
    /// the committer takes it exclusively before reusing a freed segment.
    reuse: RwLock<()>,
    queue: Mutex<Queue>,
    cv: Condvar,
    failed: Mutex<Option<String>>,
    stats: Stats,
    /// Last pin id handed out by [`Engine::pin_pg`].
    next_pin: std::sync::atomic::AtomicU64,
    /// When each pin was last used (for [`Engine::expire_pins`]).
    pin_used: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
}

/// A storage engine open on one device.
pub struct Engine {
    sh: Arc<Shared>,
    seg_blocks: u64,
    seg_count: u32,
    replayed: u64,
    thread: Option<JoinHandle<()>>,
}

/// The block range of a read of `len` bytes at `offset`: both multiples of 4096, within
/// the 16 TiB object limit.
/// The CRC32C of a 4 KiB block of zeros: the checksum of a hole.
pub fn zero_block_crc() -> u32 {
    static CRC: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CRC.get_or_init(|| crc32c::crc32c(&[0u8; BLOCK_SIZE]))
}

fn read_range(pg: PgId, offset: u64, len: u64) -> Result<(u32, u32)> {
    if !offset.is_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
        return Err(EngineError::Unaligned { what: "read", offset, len });
    }
    if offset.checked_add(len).is_none_or(|end| end / BLOCK > u32::MAX as u64) {
        return Err(EngineError::Invalid { pg, why: format!("read {offset}+{len} beyond the 16 TiB object limit") });
    }
    Ok(((offset / BLOCK) as u32, (len / BLOCK) as u32))
}

impl Engine {
    /// Recovers the engine from a formatted device and starts its commit thread.
    pub fn open(dev: Arc<dyn Device>, cfg: EngineConfig) -> Result<Engine> {
        let r = recovery::recover(&*dev)?;
        let sh = Arc::new(Shared {
            dev,
            uuid: r.sb.uuid,
            cfg,
            state: RwLock::new(r.state),
            reuse: RwLock::new(()),
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            failed: Mutex::new(None),
            stats: Stats::default(),
            next_pin: Default::default(),
            pin_used: Default::default(),
        });
        sh.stats.free_segments.store(r.table.free_count() as u64, Relaxed);
        let committer = Committer {
            sh: sh.clone(),
            geo: r.geo,
            table: r.table,
            head: r.head,
            gen: r.gen,
            ckpt_segs: r.ckpt_segs,
            bytes_since_ckpt: 0,
            buf: AlignedBuf::zeroed(64 * BLOCK_SIZE),
            segments_filled: 0,
            fruitless_clean_at: None,
            clean_job: None,
            clean_credit: 0,
        };
        let thread = std::thread::Builder::new()
            .name("tessera-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| EngineError::Failed(format!("cannot start commit thread: {e}")))?;
        Ok(Engine { sh, seg_blocks: r.geo.seg_blocks, seg_count: r.geo.seg_count, replayed: r.replayed, thread: Some(thread) })
    }

    /// Formats `dev` and opens it.
    pub fn create(dev: Arc<dyn Device>, opts: FormatOptions, cfg: EngineConfig) -> Result<Engine> {
        format(&*dev, opts)?;
        Self::open(dev, cfg)
    }

    fn enqueue(&self, r: Request) {
        let mut q = self.sh.queue.lock();
        if q.shutdown {
            drop(q);
            let cb = match r {
                Request::Txn(_, cb) | Request::Rejected(_, cb) | Request::Checkpoint(cb) | Request::Clean(cb) => cb,
            };
            cb(Err(EngineError::Closed));
            return;
        }
        q.items.push(r);
        drop(q);
        self.sh.cv.notify_one();
    }

    /// Queues `txn`; `done` is called once, with `Ok` only after every op of the transaction
    /// is durable (its batch was written and `fdatasync` returned) and visible to reads
    /// (unless [`Txn::unsynced`]). Transactions submitted from one thread are applied, and
    /// called back, in submission order, refused ones included (an invalid or too large
    /// transaction, one the state refuses, or any after a write failure): a caller may match
    /// completions to submissions by order alone.
    pub fn submit(&self, txn: Txn, done: impl FnOnce(Result<()>) + Send + 'static) {
        let prepared = match prepare(txn) {
            Ok(p) => p,
            Err(e) => return self.enqueue(Request::Rejected(e, Box::new(done))),
        };
        let max_blocks = self.seg_blocks - 1;
        if prepared.data_blocks() as u64 + (prepared.ops_len as u64).div_ceil(BLOCK) + 1 > max_blocks {
            let e = EngineError::TooLarge { bytes: prepared.data_blocks() as u64 * BLOCK, max: (max_blocks - 1) * BLOCK };
            return self.enqueue(Request::Rejected(e, Box::new(done)));
        }
        self.sh.stats.client_bytes.fetch_add(prepared.data_blocks() as u64 * BLOCK, Relaxed);
        self.enqueue(Request::Txn(prepared, Box::new(done)));
    }

    /// Bytes of one segment: no transaction's data and ops may exceed it (less a header
    /// block), or it is refused with [`EngineError::TooLarge`].
    pub fn segment_bytes(&self) -> u64 {
        self.seg_blocks * BLOCK
    }

    /// Submits and waits for durability.
    pub fn commit(&self, txn: Txn) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(txn, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(EngineError::Closed))
    }

    fn control(&self, make: fn(Callback) -> Request) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(make(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.recv().unwrap_or(Err(EngineError::Closed))
    }

    /// Writes a checkpoint now (normally automatic every `checkpoint_bytes` of log).
    pub fn checkpoint(&self) -> Result<()> {
        self.control(Request::Checkpoint)
    }

    /// Runs the segment cleaner now (normally automatic when free segments run low).
    pub fn clean(&self) -> Result<()> {
        self.control(Request::Clean)
    }

    /// Reads `len` bytes of object `key` at `offset` (both multiples of 4096). Unallocated
    /// ranges and absent objects read as zeros. Every block is checked against its CRC32C;
    /// a mismatch is an error naming the object and offset, never returned as data.
    pub fn read(&self, pg: PgId, key: ObjectKey, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (block, n) = read_range(pg, offset, len)?;
        let _g = self.sh.reuse.read();
        let refs = self.sh.state.read().object_blocks(pg, &key, block, n);
        let mut out = vec![0u8; len as usize];
        self.read_refs(&refs, &mut out, |i, phys| EngineError::Checksum { pg, key, offset: offset + i as u64 * BLOCK, phys })?;
        Ok(out)
    }

    /// Reads `len` bytes at `offset` of the version a read of `key` sees (`key.snap` is a
    /// snapshot id or `SNAP_HEAD`; see [`crate::Resolved`]), resolved and looked up under one
    /// state lock. `Ok(None)`: the object is absent at that version (a clone's reader then
    /// reads through to its parent). Checksums are verified as in [`Engine::read`].
    pub fn read_version(&self, pg: PgId, key: ObjectKey, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        self.read_version_with_crcs(pg, key, offset, len, &mut Vec::new())
    }

    /// [`Engine::read_version`] that also pushes onto `crcs` the stored checksum of every
    /// block read (the one each was verified against; [`zero_block_crc`] for a hole): the
    /// checksums a writer sent with the data come back with it, end to end.
    pub fn read_version_with_crcs(&self, pg: PgId, key: ObjectKey, offset: u64, len: u64, crcs: &mut Vec<u32>) -> Result<Option<Vec<u8>>> {
        let (block, n) = read_range(pg, offset, len)?;
        let _g = self.sh.reuse.read();
        let (found, refs) = {
            let st = self.sh.state.read();
            match st.resolve(pg, key) {
                crate::Resolved::Absent => return Ok(None),
                crate::Resolved::Version(found) => (found, st.object_blocks(pg, &found, block, n)),
            }
        };
        let mut out = vec![0u8; len as usize];
        self.read_refs(&refs, &mut out, |i, phys| EngineError::Checksum { pg, key: found, offset: offset + i as u64 * BLOCK, phys })?;
        crcs.extend(refs.iter().map(|r| r.map_or_else(zero_block_crc, |r| r.crc)));
        Ok(Some(out))
    }

    /// Takes a point-in-time image of the PG (objects and markers, blocks shared, nothing
    /// copied) together with the applied index stored at that instant. The image holds its
    /// blocks until [`Engine::unpin`]; it lives in memory only (gone after a restart).
    /// Returns `(pin id, applied index)`.
    pub fn pin_pg(&self, pg: PgId) -> Result<(u64, u64)> {
        let id = self.sh.next_pin.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut st = self.sh.state.write();
        let applied = match st.meta_get(MetaScope::Pg(pg), crate::pgmeta::APPLIED_KEY) {
            None => 0,
            Some(b) => u64::from_le_bytes(
                b[..].try_into().map_err(|_| EngineError::Invalid { pg, why: format!("applied index of {} bytes", b.len()) })?,
            ),
        };
        st.pin(pg, id, applied);
        self.sh.pin_used.lock().insert(id, std::time::Instant::now());
        Ok((id, applied))
    }

    /// Releases a pin (no-op if already gone).
    pub fn unpin(&self, pin: u64) {
        self.sh.pin_used.lock().remove(&pin);
        self.sh.state.write().unpin(pin);
    }

    /// Releases every pin not used (listed or read) for `idle`; returns how many.
    pub fn expire_pins(&self, idle: std::time::Duration) -> usize {
        let old: Vec<u64> = self.sh.pin_used.lock().iter().filter(|(_, t)| t.elapsed() > idle).map(|(id, _)| *id).collect();
        for id in &old {
            self.unpin(*id);
        }
        old.len()
    }

    fn touch_pin(&self, pin: u64) {
        if let Some(t) = self.sh.pin_used.lock().get_mut(&pin) {
            *t = std::time::Instant::now();
        }
    }

    /// Pins currently held: `(pin id, pg, applied index)`.
    pub fn pins(&self) -> Vec<(u64, PgId, u64)> {
        self.sh.state.read().pins.iter().map(|(id, p)| (*id, p.pg, p.applied)).collect()
    }

    /// The pinned image's object versions with their sizes, then its markers (`None`: no
    /// such pin).
    pub fn pinned_objects(&self, pin: u64) -> Option<Vec<(ObjectKey, ObjectInfo)>> {
        self.touch_pin(pin);
        let st = self.sh.state.read();
        let p = st.pins.get(&pin)?;
        Some(p.objects.iter().map(|(k, o)| (*k, crate::state::info_of_pub(o))).collect())
    }

    /// Markers of a pinned image (`None`: no such pin).
    pub fn pinned_markers(&self, pin: u64) -> Option<Vec<ObjectKey>> {
        Some(self.sh.state.read().pins.get(&pin)?.markers.iter().copied().collect())
    }

    /// Reads `len` bytes at `offset` of version `key` exactly as stored in the pinned image
    /// (no resolution; `Ok(None)`: the image has no such version). Checksums verified.
    pub fn read_pinned(&self, pin: u64, key: ObjectKey, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let (block, n) = read_range(PgId::default(), offset, len)?;
        self.touch_pin(pin);
        let _g = self.sh.reuse.read();
        let (pg, refs) = {
            let st = self.sh.state.read();
            let p = st.pins.get(&pin).ok_or(EngineError::Invalid { pg: PgId::default(), why: format!("no pin {pin} (expired?)") })?;
            let Some(o) = p.objects.get(&key) else { return Ok(None) };
            (p.pg, o.refs(block, n))
        };
        let mut out = vec![0u8; len as usize];
        self.read_refs(&refs, &mut out, |i, phys| EngineError::Checksum { pg, key, offset: offset + i as u64 * BLOCK, phys })?;
        Ok(Some(out))
    }

    /// Which stored version a read of `key` sees.
    pub fn resolve(&self, pg: PgId, key: ObjectKey) -> crate::Resolved {
        self.sh.state.read().resolve(pg, key)
    }

    /// Space per volume in the PG (per replica), volumes in id order.
    pub fn volume_usage(&self, pg: PgId) -> Vec<(u64, crate::VolumeUsage)> {
        self.sh.state.read().volume_usage(pg)
    }

    /// The PG's absent-version markers (see [`crate::Op::Mark`]).
    pub fn list_markers(&self, pg: PgId) -> Vec<ObjectKey> {
        self.sh.state.read().list_markers(pg)
    }

    /// Fills `out` block by block from `refs` (None = zeros), one device read per run of
    /// physically contiguous blocks, verifying each block's checksum.
    fn read_refs(&self, refs: &[Option<BlockRef>], out: &mut [u8], bad: impl Fn(usize, u64) -> EngineError) -> Result<()> {
        let mut i = 0;
        while i < refs.len() {
            let Some(first) = refs[i] else {
                i += 1;
                continue;
            };
            let mut n = 1;
            while i + n < refs.len() && refs[i + n].is_some_and(|r| r.phys == first.phys + n as u64) {
                n += 1;
            }
            let mut buf = AlignedBuf::zeroed(n * BLOCK_SIZE);
            self.sh.dev.read_at(first.phys * BLOCK, &mut buf)?;
            for j in 0..n {
                let block = &buf[j * BLOCK_SIZE..(j + 1) * BLOCK_SIZE];
                let r = refs[i + j].expect("run of present refs");
                if crc32c::crc32c(block) != r.crc {
                    return Err(bad(i + j, r.phys));
                }
                out[(i + j) * BLOCK_SIZE..(i + j + 1) * BLOCK_SIZE].copy_from_slice(block);
            }
            i += n;
        }
        Ok(())
    }

    /// Entries `lo..hi` of the PG's log with their data read back and checksum-verified.
    pub fn log_entries(&self, pg: PgId, lo: u64, hi: u64) -> Result<Vec<LogEntry>> {
        let _g = self.sh.reuse.read();
        let picked: Vec<(u64, u64, Bytes, Vec<BlockRef>)> = {
            let st = self.sh.state.read();
            (lo..hi)
                .map(|i| {
                    st.log_entry(pg, i)
                        .map(|e| (i, e.term, e.meta.clone(), e.data.clone()))
                        .ok_or(EngineError::LogUnavailable { pg, index: i })
                })
                .collect::<Result<_>>()?
        };
        picked
            .into_iter()
            .map(|(index, term, meta, blocks)| {
                let refs: Vec<Option<BlockRef>> = blocks.into_iter().map(Some).collect();
                let mut data = vec![0u8; refs.len() * BLOCK_SIZE];
                self.read_refs(&refs, &mut data, |_, phys| EngineError::LogChecksum { pg, index, phys })?;
                let crcs = refs.iter().flatten().map(|r| r.crc).collect();
                Ok(LogEntry { index, term, meta, data: Bytes::from(data), crcs })
            })
            .collect()
    }

    /// Term of entry `index` (also answers for the compaction point itself).
    pub fn log_term(&self, pg: PgId, index: u64) -> Result<u64> {
        let st = self.sh.state.read();
        if let Some(b) = st.log_bounds(pg) {
            if index == b.compacted {
                return Ok(b.compacted_term);
            }
        }
        st.log_entry(pg, index).map(|e| e.term).ok_or(EngineError::LogUnavailable { pg, index })
    }

    pub fn log_bounds(&self, pg: PgId) -> Option<LogBounds> {
        self.sh.state.read().log_bounds(pg)
    }

    pub fn object_info(&self, pg: PgId, key: ObjectKey) -> Option<ObjectInfo> {
        self.sh.state.read().object_info(pg, &key)
    }

    /// Every object version stored for the PG, in key order (for recovery and snapshots).
    pub fn list_objects(&self, pg: PgId) -> Vec<(ObjectKey, ObjectInfo)> {
        self.sh.state.read().list_objects(pg)
    }

    /// PGs that have any object or log state here.
    pub fn pgs(&self) -> Vec<PgId> {
        self.sh.state.read().pg_ids()
    }

    pub fn meta_get(&self, scope: MetaScope, key: &[u8]) -> Option<Bytes> {
        self.sh.state.read().meta_get(scope, key)
    }

    pub fn meta_scan(&self, scope: MetaScope) -> Vec<(Bytes, Bytes)> {
        self.sh.state.read().meta_scan(scope)
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.sh.stats;
        EngineStats {
            batches: s.batches.load(Relaxed),
            syncs: s.syncs.load(Relaxed),
            device_bytes: s.device_bytes.load(Relaxed),
            header_bytes: s.header_bytes.load(Relaxed),
            client_bytes: s.client_bytes.load(Relaxed),
            checkpoints: s.checkpoints.load(Relaxed),
            relocated_blocks: s.relocated_blocks.load(Relaxed),
            cleaned_segments: s.cleaned_segments.load(Relaxed),
            corrupt_relocated: s.corrupt_relocated.load(Relaxed),
            apply_errors: s.apply_errors.load(Relaxed),
            free_segments: s.free_segments.load(Relaxed),
            total_segments: self.seg_count as u64,
            live_blocks: self.sh.state.read().live_blocks(),
            replayed_batches: self.replayed,
        }
    }

    /// Where every stored object version's data blocks are on the device, as of the last
    /// durable batch (see [`State::data_blocks`]; read-only, for offline tools).
    pub fn data_blocks(&self) -> Vec<crate::state::DataBlock> {
        self.sh.state.read().data_blocks()
    }

    /// Distinct device blocks referenced by objects or log entries (what cleaning cannot
    /// reclaim), as of the last durable batch.
    pub fn live_blocks(&self) -> u64 {
        self.sh.state.read().live_blocks()
    }

    /// `(free, total)` segments as of the last written batch: when free segments run out
    /// (live data, or log not yet checkpointed, fills the rest) writes fail with `NoSpace`.
    pub fn segments(&self) -> (u64, u64) {
        (self.sh.stats.free_segments.load(Relaxed), self.seg_count as u64)
    }

    /// Capacity for data in bytes (segments minus the cleaner's reserve).
    pub fn capacity_bytes(&self) -> u64 {
        (self.seg_count as u64).saturating_sub(committer::RESERVED_SEGMENTS as u64 + 2) * self.seg_blocks * BLOCK
    }

    /// A copy of the in-memory state, for tests that compare it across recovery.
    #[doc(hidden)]
    pub fn state_snapshot(&self) -> State {
        self.sh.state.read().clone()
    }

    /// Stops after finishing every queued transaction. Dropping the engine does the same.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.sh.queue.lock().shutdown = true;
        self.sh.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
