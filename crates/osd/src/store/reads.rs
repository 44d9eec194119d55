//! Serving reads off the event loop: client reads and `Usage` once their read index is
//! applied, and the snapshot-copy requests (`Scan`, `ReadRaw`) of other OSDs.
//!
//! A block that fails its checksum is never returned: the store is told (the PG is marked
//! damaged and repaired, see [`crate::repair`]) and decides the client's answer. A device
//! read error is retried once; failing again, it is handled the same way, so a client reads
//! from a healthy replica instead of getting `EIO` (issue 16).

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tessera_engine::device::FaultControl;
use tessera_engine::{Engine, EngineError, PgId};
use tessera_wire::{OpCode, Request, Response, Status, UsageEntry};

use super::{Event, EventSender, Store};
use crate::error::status_of;
use crate::peer::ReadJob;
use crate::reply::Reply;

/// Client reads on the blocking pool, per PG: a repair drops a PG's data only once the
/// reads dispatched while this replica led it are done.
#[derive(Default)]
pub(super) struct ReadsInFlight(Mutex<HashMap<PgId, usize>>);

impl ReadsInFlight {
    fn enter(self: &Arc<Self>, pg: PgId) -> ReadGuard {
        *self.0.lock().entry(pg).or_default() += 1;
        ReadGuard { reads: self.clone(), pg }
    }
    pub(super) fn count(&self, pg: PgId) -> usize {
        self.0.lock().get(&pg).copied().unwrap_or(0)
    }
}

struct ReadGuard {
    reads: Arc<ReadsInFlight>,
    pg: PgId,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut m = self.reads.0.lock();
        if let Some(n) = m.get_mut(&self.pg) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.pg);
            }
        }
    }
}

/// Serves one read (a client `Read` or `Usage`) from the engine and answers it.
fn serve_read(engine: &Engine, events: &EventSender, osd: u32, epoch: u64, job: ReadJob, faults: Option<&FaultControl>) {
    if job.op == OpCode::Usage {
        let mut out = Vec::new();
        for (volume, u) in engine.volume_usage(job.pg) {
            let e = UsageEntry { volume, objects: u.objects, head_blocks: u.head_blocks, unique_blocks: u.unique_blocks };
            e.put(&mut out);
        }
        return job.reply.send(Response::ok(epoch), Bytes::from(out));
    }
    // The stored checksums each block was verified against (the writer's, end to end) go
    // back with the data: this OSD computes none, the client checks every block.
    let mut crcs = Vec::with_capacity((job.len / tessera_engine::BLOCK) as usize);
    let mut result = engine.read_version_with_crcs(job.pg, job.key, job.offset, job.len, &mut crcs);
    if let Err(e @ EngineError::Device(_)) = &result {
        // Once more: a device that fails the same read twice is treated as one holding
        // corrupt data (below), a one-off error costs only this retry.
        tracing::warn!(pg = %job.pg, key = %job.key, offset = job.offset, "{e}; reading once more");
        crcs.clear();
        result = engine.read_version_with_crcs(job.pg, job.key, job.offset, job.len, &mut crcs);
    }
    if tessera_wire::trace::sampled(job.client, job.seq) {
        let at = tessera_wire::trace::At { node: Some(osd), entry: None };
        tessera_wire::trace::record(tessera_wire::trace::stage::READ_DONE, job.client, job.seq, at, tessera_wire::trace::now_ns());
    }
    match result {
        Ok(Some(mut data)) => {
            if let Some(p) = faults.map(|f| f.settings().corrupt_reads).filter(|p| *p > 0.0 && rand::random::<f64>() < *p) {
                let bit = rand::random::<usize>() % (data.len() * 8).max(1);
                if let Some(b) = data.get_mut(bit / 8) {
                    *b ^= 1 << (bit % 8);
                    tracing::warn!(pg = %job.pg, bit, p, "fault control: corrupting a read's data after the engine");
                }
            }
            let table: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
            job.reply.send_blocks(Response::ok(epoch), Bytes::from(data), Bytes::from(table))
        }
        Ok(None) => job.reply.send(Response::error(Status::Absent, epoch, ""), Bytes::new()),
        // Corrupt data, or a device that failed the read twice: never an error to the
        // client while a healthy replica can serve it. The replica is marked damaged (and
        // rebuilt), leadership moves, and the client is told to retry (see `on_damaged`).
        Err(e @ (EngineError::Checksum { .. } | EngineError::Device(_))) => {
            let what = match &e {
                EngineError::Device(_) => format!("reading pg {} {} at byte offset {} failed twice: {e}", job.pg, job.key, job.offset),
                _ => e.to_string(),
            };
            let pg = job.pg;
            if let Err(tokio::sync::mpsc::error::SendError(Event::Damaged { reply: Some(r), .. })) =
                events.send(Event::Damaged { pg, what, reply: Some(job.reply) })
            {
                r.error(Status::Retry, epoch, "the OSD is stopping");
            }
        }
        Err(e) => job.reply.error(status_of(&e), epoch, e.to_string()),
    }
}

impl Store {
    /// Serves reads whose read index is applied, on the blocking pool, where the device
    /// works on several at once. (Serving a lone 4 KiB read on the event loop's thread saved
    /// 12 µs at QD1 and cost a quarter of the IOPS at QD32, where reads then queued behind
    /// each other on that thread: measured with scripts/bench-trace.sh.)
    pub(super) fn serve_reads(&self, reads: Vec<ReadJob>) {
        let epoch = self.map.epoch;
        let osd = self.osd;
        for job in reads {
            let engine = self.engine.clone();
            let events = self.events.clone();
            let faults = self.cfg.faults.clone();
            let guard = self.reads_in_flight.enter(job.pg);
            self.rt.spawn_blocking(move || {
                let _guard = guard;
                serve_read(&engine, &events, osd, epoch, job, faults.as_deref());
            });
        }
    }

    /// `Scan` and `ReadRaw` of a snapshot copy, served from the engine (pinned images) on the
    /// blocking pool.
    pub(super) fn serve_snapshot_request(&self, req: Request, reply: Reply) {
        let epoch = self.map.epoch;
        let (engine, events) = (self.engine.clone(), self.events.clone());
        self.rt.spawn_blocking(move || {
            let pg = PgId::new(req.pg.pool, req.pg.index);
            let on_corrupt = |e: &EngineError| {
                let _ = events.send(Event::Damaged { pg, what: format!("{e}; found by a copy to another replica"), reply: None });
            };
            match crate::snapshot::serve(&engine, &req, on_corrupt) {
                Ok(data) => reply.send(Response::ok(epoch), data),
                Err((status, why)) => reply.error(status, epoch, why),
            }
        });
    }
}
