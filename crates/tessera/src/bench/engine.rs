//! The engine workload: format the engine on a file, prefill the working set, then timed
//! phases of 4 KiB random writes (raft or direct path) and 4 KiB random reads.
//!
//! Layout of the working set: one volume cut into 4 MiB objects; byte `o` of the working set
//! is object `o / 4 MiB` at offset `o % 4 MiB`, in PG `object % pgs`.

use super::args::{Mode, Plan, OBJECT_SIZE};
use super::phase::{self, Measured};
use super::raft::RaftLogs;
use super::report::{EngineCounters, Row, Target, Workload};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::{Engine, EngineConfig, EngineStats, FileDevice, FormatOptions, ObjectKey, Op, PgId, Txn, BLOCK};

/// Volume id of the bench's objects.
const VOLUME: u64 = 1;
/// Pool id of the bench's PGs.
const POOL: u32 = 1;
/// Random bytes the writes take their 4 KiB payloads from (sliced, not copied).
const PAYLOAD_POOL: usize = 1 << 20;
/// Prefill transactions in flight at once (a batch holds at most this many).
const PREFILL_IN_FLIGHT: usize = 4;

/// A formatted engine on a file, and the workload's geometry.
pub struct EngineBench {
    engine: Engine,
    plan: Plan,
    pgs: Vec<PgId>,
    payload: Bytes,
    pub device: String,
}

impl EngineBench {
    /// Creates the file (`plan.size` bytes, preallocated), formats and opens the engine, and
    /// checks that the working set fits.
    pub fn create(path: &Path, plan: &Plan) -> Result<Self> {
        let dev = FileDevice::create(path, plan.size).with_context(|| format!("creating engine device file {}", path.display()))?;
        let dev: Arc<dyn tessera_engine::Device> = Arc::new(dev);
        let device = dev.describe();
        let engine = Engine::create(dev, FormatOptions { segment_size: plan.segment_size }, EngineConfig::default())
            .with_context(|| format!("formatting the engine on {device} (--size / --segment-size)"))?;
        if let Some(w) = plan.check_capacity(engine.capacity_bytes())? {
            eprintln!("warning: {w}");
        }
        let mut payload = vec![0u8; PAYLOAD_POOL];
        StdRng::seed_from_u64(0x7e55e7a).fill_bytes(&mut payload);
        let pgs = (0..plan.pgs).map(|i| PgId::new(POOL, i)).collect();
        Ok(Self { engine, plan: plan.clone(), pgs, payload: Bytes::from(payload), device })
    }

    /// Where byte `offset` of the working set lives: (PG number, object key, offset in object).
    fn locate(&self, offset: u64) -> (usize, ObjectKey, u64) {
        let object = offset / OBJECT_SIZE;
        ((object % self.plan.pgs as u64) as usize, ObjectKey::head(VOLUME, object), offset % OBJECT_SIZE)
    }

    /// `len` bytes of payload starting at a pseudo-random block-aligned place in the pool.
    fn payload(&self, rng: &mut impl Rng, len: usize) -> Bytes {
        let blocks = (PAYLOAD_POOL - len) / BLOCK as usize;
        let at = rng.gen_range(0..=blocks) * BLOCK as usize;
        self.payload.slice(at..at + len)
    }

    /// Writes the whole working set once, sequentially in large direct writes with several in
    /// flight, printing progress on stderr. Returns the time it took.
    pub fn prefill(&self) -> Result<Duration> {
        let started = Instant::now();
        let chunk = prefill_chunk(self.plan.segment_size);
        let total = self.plan.working_set;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut rng = StdRng::seed_from_u64(1);
        let (mut submitted, mut done, mut in_flight, mut shown) = (0u64, 0u64, 0usize, None);
        let tty = std::io::stderr().is_terminal();
        while done < total {
            while in_flight < PREFILL_IN_FLIGHT && submitted < total {
                let len = chunk.min(total - submitted);
                let (pg, key, offset) = self.locate(submitted);
                let data = self.payload(&mut rng, len as usize);
                let tx = tx.clone();
                self.engine.submit(Txn::new().with(Op::Write { pg: self.pgs[pg], key, offset, data }), move |r| {
                    let _ = tx.send((len, r));
                });
                submitted += len;
                in_flight += 1;
            }
            let (len, r) = rx.recv().map_err(|_| anyhow!("engine stopped during prefill"))?;
            r.context("prefill write")?;
            in_flight -= 1;
            done += len;
            // Every percent in place on a terminal, every 10% as lines in a log.
            let pct = done * 100 / total;
            let step = if tty { pct } else { pct / 10 * 10 };
            if shown != Some(step) {
                shown = Some(step);
                if tty {
                    eprint!("\rprefill: {pct:3}% of {} MiB", total >> 20);
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("prefill: {pct:3}% of {} MiB", total >> 20);
                }
            }
        }
        if tty {
            eprintln!();
        }
        Ok(started.elapsed())
    }

    /// Measures 4 KiB random writes at queue depth `qd` on the plan's write path.
    pub fn random_writes(&self, qd: usize) -> Result<Row> {
        let raft = RaftLogs::new(&self.engine, &self.pgs, self.plan.log_keep, self.plan.apply);
        let blocks = self.plan.working_set / BLOCK;
        let m = phase::run(
            qd,
            self.plan.ramp,
            self.plan.duration,
            || self.engine.stats(),
            |i| {
                let mut rng = StdRng::seed_from_u64(0xa11ce + i as u64);
                let mut writer = raft.writer();
                move || {
                    let (pg, key, offset) = self.locate(rng.gen_range(0..blocks) * BLOCK);
                    let data = self.payload(&mut rng, BLOCK as usize);
                    match self.plan.mode {
                        Mode::Raft => writer.write(pg, key, offset, data),
                        Mode::Direct => {
                            self.engine.commit(Txn::new().with(Op::Write { pg: self.pgs[pg], key, offset, data }))?;
                            Ok(())
                        }
                    }
                }
            },
        )
        .with_context(|| format!("engine random writes at QD {qd}"))?;
        raft.check()?;
        self.check_apply_errors()?;
        Ok(self.row(Workload::Write, qd, &m, true))
    }

    /// Measures 4 KiB random reads at queue depth `qd` (synchronous reads on each thread).
    pub fn random_reads(&self, qd: usize) -> Result<Row> {
        let blocks = self.plan.working_set / BLOCK;
        let m = phase::run(
            qd,
            self.plan.ramp,
            self.plan.duration,
            || self.engine.stats(),
            |i| {
                let mut rng = StdRng::seed_from_u64(0xbeef + i as u64);
                move || {
                    let (pg, key, offset) = self.locate(rng.gen_range(0..blocks) * BLOCK);
                    let data = self.engine.read(self.pgs[pg], key, offset, BLOCK)?;
                    if data.len() != BLOCK as usize {
                        bail!("read of {key} at {offset} returned {} bytes", data.len());
                    }
                    Ok(())
                }
            },
        )
        .with_context(|| format!("engine random reads at QD {qd}"))?;
        Ok(self.row(Workload::Read, qd, &m, false))
    }

    /// A durable op rejected at apply is an engine bug; the numbers would be meaningless.
    fn check_apply_errors(&self) -> Result<()> {
        let n = self.engine.stats().apply_errors;
        if n > 0 {
            bail!("the engine rejected {n} durable ops at apply (an engine bug; see the error log)");
        }
        Ok(())
    }

    fn row(&self, workload: Workload, qd: usize, m: &Measured<EngineStats>, writes: bool) -> Row {
        let counters = writes.then(|| EngineCounters::between(&m.before, &m.after));
        Row::from_histogram(Target::Engine(self.plan.mode), workload, qd, m.ops, m.window, &m.latency_us, counters)
    }

    /// Stops the engine after every queued transaction finished.
    pub fn close(self) {
        self.engine.close();
    }
}

/// Bytes per prefill transaction: the largest power of two up to 1 MiB and up to 1/32 of a
/// segment, so a batch of [`PREFILL_IN_FLIGHT`] of them stays under 1/8 segment. (A batch
/// never spans segments: when it does not fit, the rest of the segment stays unused, so
/// large batches would leave the prefilled segments partly empty.)
fn prefill_chunk(segment_size: u64) -> u64 {
    let mut c = 1 << 20;
    while c > BLOCK && c > segment_size / 32 {
        c /= 2;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_chunks_fit_in_a_segment_and_divide_objects() {
        assert_eq!(prefill_chunk(64 << 20), 1 << 20);
        assert_eq!(prefill_chunk(16 << 20), 512 << 10);
        assert_eq!(prefill_chunk(1 << 20), 32 << 10);
        assert_eq!(prefill_chunk(12 << 20), 256 << 10);
        assert_eq!(prefill_chunk(64 << 10), 4096);
        for seg in [1 << 20, 3 << 20, 16 << 20, 100 << 20] {
            let c = prefill_chunk(seg);
            assert!(c * PREFILL_IN_FLIGHT as u64 <= seg / 8 && OBJECT_SIZE.is_multiple_of(c), "{seg}: {c}");
        }
    }
}
