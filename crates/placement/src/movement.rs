//! How much data a placement change moves.

use std::collections::BTreeMap;

use crate::error::PlacementError;
use crate::placement::PoolPlacement;

/// The difference between two placements of the same pool.
///
/// A replica "moves" when a PG's new set contains an OSD its old set did not (the new OSD
/// must backfill a full copy); reordering a set moves no data but may change the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MovementStats {
    pub pgs: u64,
    /// `pgs * replicas`.
    pub total_replicas: u64,
    /// Replicas placed on an OSD that did not hold that PG before.
    pub moved_replicas: u64,
    /// PGs whose set (ignoring order) changed.
    pub pgs_changed: u64,
    /// PGs whose first replica (preferred leader) changed, including by reordering alone.
    pub primary_changes: u64,
    /// Per OSD: replicas it gains (sums to `moved_replicas`).
    pub gained: BTreeMap<u32, u64>,
    /// Per OSD: replicas it loses (sums to `moved_replicas`).
    pub lost: BTreeMap<u32, u64>,
}

impl MovementStats {
    /// `moved_replicas / total_replicas` (0 for an empty pool).
    pub fn moved_fraction(&self) -> f64 {
        if self.total_replicas == 0 {
            0.0
        } else {
            self.moved_replicas as f64 / self.total_replicas as f64
        }
    }
}

/// Compares `old` and `new` PG by PG.
///
/// Errors: [`PlacementError::ShapeMismatch`] unless both have the same PG and replica counts.
pub fn diff(old: &PoolPlacement, new: &PoolPlacement) -> Result<MovementStats, PlacementError> {
    if old.pg_count() != new.pg_count() || old.replicas() != new.replicas() {
        return Err(PlacementError::ShapeMismatch {
            old_pgs: old.pg_count(),
            old_replicas: old.replicas(),
            new_pgs: new.pg_count(),
            new_replicas: new.replicas(),
        });
    }
    let mut stats = MovementStats {
        pgs: u64::from(old.pg_count()),
        total_replicas: u64::from(old.pg_count()) * old.replicas() as u64,
        ..MovementStats::default()
    };
    for ((_, a), (_, b)) in old.iter().zip(new.iter()) {
        let mut changed = false;
        for osd in b.iter().filter(|osd| !a.contains(osd)) {
            *stats.gained.entry(*osd).or_insert(0) += 1;
            stats.moved_replicas += 1;
            changed = true;
        }
        for osd in a.iter().filter(|osd| !b.contains(osd)) {
            *stats.lost.entry(*osd).or_insert(0) += 1;
        }
        stats.pgs_changed += u64::from(changed);
        stats.primary_changes += u64::from(a.first() != b.first());
    }
    Ok(stats)
}
