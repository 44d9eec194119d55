//! Pre-write validation. The committer checks each transaction against the durable state
//! plus the effects of the transactions already placed in the same batch (the overlay), so
//! that no op that would be rejected at apply time ever reaches the device. Only log ops can
//! be rejected by state; every other op is total.

use super::State;
use crate::error::{EngineError, Result};
use crate::format::batch::BatchOp;
use crate::ids::PgId;
use std::collections::HashMap;

/// One PG's log as it will be after the ops validated so far: durable entries up to
/// `base_last`, then `appended` (term, data blocks) from `base_last + 1`.
#[derive(Clone, Debug)]
struct LogView {
    compacted: u64,
    base_last: u64,
    appended: Vec<(u64, u32)>,
}

impl LogView {
    fn of(state: &State, pg: PgId) -> Self {
        let l = state.pgs.get(&pg).map(|p| &p.log);
        let (compacted, last) = l.map_or((0, 0), |l| (l.compacted, l.last()));
        Self { compacted, base_last: last, appended: Vec::new() }
    }
    fn last(&self) -> u64 {
        self.base_last + self.appended.len() as u64
    }
    /// (term, data blocks) of entry `i` if present.
    fn entry(&self, state: &State, pg: PgId, i: u64) -> Option<(u64, u32)> {
        if i <= self.compacted || i > self.last() {
            None
        } else if i <= self.base_last {
            state.log_entry(pg, i).map(|e| (e.term, e.data.len() as u32))
        } else {
            self.appended.get((i - self.base_last - 1) as usize).copied()
        }
    }
    fn truncate(&mut self, from: u64) {
        if from <= self.base_last {
            self.base_last = from - 1;
            self.appended.clear();
        } else {
            self.appended.truncate((from - self.base_last - 1) as usize);
        }
    }
}

/// Log views of the PGs touched by the batch being built.
#[derive(Default)]
pub(crate) struct Overlay {
    views: HashMap<PgId, LogView>,
}

impl Overlay {
    /// Validates all ops of one transaction; on success their effects join the overlay, on
    /// error the overlay is unchanged.
    pub fn admit(&mut self, state: &State, ops: &[BatchOp]) -> Result<()> {
        let mut scratch: HashMap<PgId, LogView> = HashMap::new();
        for op in ops {
            let pg = match op {
                BatchOp::LogAppend { pg, .. }
                | BatchOp::LogTruncate { pg, .. }
                | BatchOp::LogCompact { pg, .. }
                | BatchOp::ApplyWrite { pg, .. }
                | BatchOp::DropPg { pg } => *pg,
                _ => continue,
            };
            let v = scratch.entry(pg).or_insert_with(|| self.views.get(&pg).cloned().unwrap_or_else(|| LogView::of(state, pg)));
            check(state, pg, v, op)?;
        }
        self.views.extend(scratch);
        Ok(())
    }
}

fn invalid(pg: PgId, why: String) -> EngineError {
    EngineError::Invalid { pg, why }
}

fn check(state: &State, pg: PgId, v: &mut LogView, op: &BatchOp) -> Result<()> {
    match op {
        BatchOp::LogAppend { entries, .. } => {
            let first = entries.first().map_or(0, |e| e.index);
            if first <= v.compacted || first > v.last() + 1 {
                return Err(invalid(pg, format!("append at {first} but log holds {}+1..={}", v.compacted, v.last())));
            }
            v.truncate(first);
            v.appended.extend(entries.iter().map(|e| (e.term, e.data.n)));
        }
        BatchOp::LogTruncate { from, .. } => {
            if *from <= v.compacted {
                return Err(invalid(pg, format!("truncate from {from} at or below compacted {}", v.compacted)));
            }
            if *from <= v.last() {
                v.truncate(*from);
            }
        }
        BatchOp::LogCompact { upto, term, .. } => {
            if *upto < v.compacted {
                return Err(invalid(pg, format!("compact to {upto} below compacted {}", v.compacted)));
            }
            if let Some((t, _)) = v.entry(state, pg, *upto) {
                if t != *term {
                    return Err(invalid(pg, format!("compact to {upto} with term {term}, entry has term {t}")));
                }
            }
            if *upto >= v.last() {
                v.appended.clear();
                v.base_last = *upto;
            } else if *upto > v.base_last {
                v.appended.drain(..(*upto - v.base_last) as usize);
                v.base_last = *upto;
            }
            v.compacted = *upto;
        }
        BatchOp::ApplyWrite { entry, entry_block, n, block, .. } => {
            let Some((_, blocks)) = v.entry(state, pg, *entry) else {
                return Err(EngineError::LogUnavailable { pg, index: *entry });
            };
            if *entry_block as u64 + *n as u64 > blocks as u64 || *block as u64 + *n as u64 > u32::MAX as u64 {
                return Err(invalid(pg, format!("apply of entry {entry} blocks {entry_block}+{n}: entry has {blocks} blocks")));
            }
        }
        BatchOp::DropPg { .. } => *v = LogView { compacted: 0, base_last: 0, appended: Vec::new() },
        _ => {}
    }
    Ok(())
}
