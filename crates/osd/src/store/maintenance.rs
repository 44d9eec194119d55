//! Housekeeping between rounds: log compaction, release of idle pinned images, and the
//! cleaner while a full device refuses writes.

use tessera_engine::Op;

use super::Store;
use crate::peer::Round;

impl Store {
    /// While writes are refused, or a copy offered to this OSD waits only for free segments,
    /// runs the engine's cleaner to completion in the background (one run at a time): with
    /// no writes coming no batches pace it, and the free segment count only moves when it
    /// runs (garbage left by a dropped replica is reclaimed by cleaning and checkpoints, not
    /// by the drop itself). Whether the run freed any segment is kept for
    /// [`Store::reclaiming`]: a run that freed none means waiting will not help.
    pub(super) fn clean_when_short(&self) {
        use std::sync::atomic::Ordering;
        let short = !self.admits_writes() || self.copy_waits_for_segments;
        if !short || self.cleaning.swap(true, Ordering::AcqRel) {
            return;
        }
        let (engine, cleaning, fruitless, osd) = (self.engine.clone(), self.cleaning.clone(), self.clean_fruitless.clone(), self.osd);
        self.rt.spawn_blocking(move || {
            let before = engine.stats().cleaned_segments;
            if let Err(e) = engine.clean() {
                tracing::warn!(osd, "cleaning a full device failed: {e}");
            }
            fruitless.store(engine.stats().cleaned_segments == before, Ordering::Release);
            cleaning.store(false, Ordering::Release);
        });
    }

    pub(super) fn pressure(&self) -> crate::space::Pressure {
        let (free, total) = self.engine.segments();
        crate::space::pressure(self.space_used, free, total)
    }

    /// Queues log compactions (one engine transaction with the next round's work).
    pub(super) fn compact(&mut self) {
        let expired = self.engine.expire_pins(crate::snapshot::PIN_IDLE);
        if expired > 0 {
            tracing::info!(osd = self.osd, expired, "released idle pinned PG images");
        }
        let keep = crate::space::keep_entries(self.cfg.keep_entries, self.pressure());
        let full: Vec<u64> = self.peer_full.iter().filter(|(_, f)| **f).map(|(o, _)| crate::peer::raft_id(*o)).collect();
        let ops: Vec<Op> = self
            .peers
            .values_mut()
            .filter_map(|p| {
                p.compaction(keep).or_else(|| if full.is_empty() { None } else { p.compaction_for_full(|id| full.contains(&id)) })
            })
            .collect();
        if !ops.is_empty() {
            self.counters.compactions += ops.len() as u64;
            self.execute(Round { ops, ..Round::default() });
        }
    }
}
