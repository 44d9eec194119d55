//! Sans-IO PG-map planning: which OSDs serve each PG of a pool, given the OSD records.
//! Pure functions over the map records; the service stores what they return.

use tessera_placement::{OsdInfo, PlacementError, PoolRule, Topology};

use crate::model::{OsdRecord, PgEntry, PgTable, PoolRecord};

/// The placement input for the current OSD records (only `in` and `weight` matter).
pub fn topology(osds: &[OsdRecord]) -> Result<Topology, PlacementError> {
    let infos: Vec<OsdInfo> = osds
        .iter()
        .map(|o| OsdInfo { id: o.id, weight: o.weight, host: o.host.clone(), rack: o.rack.clone(), up: o.up, in_: o.in_ })
        .collect();
    Topology::new(&infos)
}

pub fn rule(pool: &PoolRecord) -> PoolRule {
    PoolRule { pool_id: pool.id, pg_count: pool.pg_count, replicas: pool.replicas as usize, failure_domain: pool.failure_domain.into() }
}

/// The PG table of a new pool, every PG stamped with `epoch`.
pub fn initial_table(pool: &PoolRecord, topology: &Topology, epoch: u64) -> Result<PgTable, PlacementError> {
    let placement = topology.place_pool(&rule(pool))?;
    Ok(PgTable { pool_id: pool.id, pgs: placement.iter().map(|(_, osds)| PgEntry(epoch, osds.to_vec())).collect() })
}

/// Outcome of re-placing an existing pool.
#[derive(Debug)]
pub enum Replan {
    /// Every PG keeps its OSD set.
    Unchanged,
    /// Some PGs got new OSD sets (stamped with the new epoch); `moved` counts replicas that
    /// changed OSD.
    Changed { table: PgTable, moved: usize },
    /// The pool cannot be placed on the OSDs now in (e.g. too few hosts left). The old table
    /// stays: its PGs keep their members and run degraded until enough OSDs are in again.
    Impossible(PlacementError),
}

/// Re-places `pool` after an OSD change. PGs whose set is unchanged keep their epoch, so
/// OSDs and clients only need to act on the PGs that moved.
pub fn replan(pool: &PoolRecord, topology: &Topology, old: &PgTable, epoch: u64) -> Replan {
    let placement = match topology.place_pool(&rule(pool)) {
        Ok(p) => p,
        Err(e) => return Replan::Impossible(e),
    };
    let mut moved = 0;
    let pgs: Vec<PgEntry> = placement
        .iter()
        .map(|(pg, osds)| match old.pgs.get(pg as usize) {
            Some(prev) if prev.osds() == osds => prev.clone(),
            Some(prev) => {
                moved += osds.iter().filter(|o| !prev.osds().contains(o)).count();
                PgEntry(epoch, osds.to_vec())
            }
            None => {
                moved += osds.len();
                PgEntry(epoch, osds.to_vec())
            }
        })
        .collect();
    if moved == 0 && pgs == old.pgs {
        Replan::Unchanged
    } else {
        Replan::Changed { table: PgTable { pool_id: pool.id, pgs }, moved }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DomainLevel;

    fn osd(id: u32, host: &str) -> OsdRecord {
        OsdRecord {
            id,
            uuid: format!("u{id}"),
            addr: format!("127.0.0.1:{}", 7000 + id),
            host: host.into(),
            rack: None,
            device: "/dev/x".into(),
            capacity_bytes: 1 << 40,
            weight: 1.0,
            up: true,
            in_: true,
            out_reason: None,
            since_ms: 0,
        }
    }

    fn pool() -> PoolRecord {
        PoolRecord {
            id: 1,
            name: "p".into(),
            replicas: 3,
            pg_count: 64,
            failure_domain: DomainLevel::Host,
            created_ms: 0,
            created_epoch: 0,
        }
    }

    #[test]
    fn out_osd_moves_only_its_replicas_and_bumps_only_those_pgs() {
        let mut osds: Vec<_> = (0..6).map(|i| osd(i, &format!("h{i}"))).collect();
        let t0 = initial_table(&pool(), &topology(&osds).unwrap(), 5).unwrap();
        assert!(t0.pgs.iter().all(|e| e.epoch() == 5 && e.osds().len() == 3));
        osds[2].in_ = false;
        let Replan::Changed { table, moved } = replan(&pool(), &topology(&osds).unwrap(), &t0, 6) else { panic!("expected change") };
        let held = t0.pgs.iter().filter(|e| e.osds().contains(&2)).count();
        assert_eq!(moved, held);
        for (old, new) in t0.pgs.iter().zip(&table.pgs) {
            if old.osds().contains(&2) {
                assert_eq!(new.epoch(), 6);
                assert!(!new.osds().contains(&2));
                // Exactly one member differs.
                assert_eq!(new.osds().iter().filter(|o| !old.osds().contains(o)).count(), 1);
            } else {
                assert_eq!(new, old);
            }
        }
        // Marking it in again restores the original placement.
        osds[2].in_ = true;
        let Replan::Changed { table: back, .. } = replan(&pool(), &topology(&osds).unwrap(), &table, 7) else { panic!() };
        for (a, b) in back.pgs.iter().zip(&t0.pgs) {
            assert_eq!(a.osds(), b.osds());
        }
        assert!(matches!(replan(&pool(), &topology(&osds).unwrap(), &back, 8), Replan::Unchanged));
    }

    #[test]
    fn too_few_domains_keeps_the_old_table() {
        let mut osds: Vec<_> = (0..3).map(|i| osd(i, &format!("h{i}"))).collect();
        let t0 = initial_table(&pool(), &topology(&osds).unwrap(), 1).unwrap();
        osds[0].in_ = false;
        assert!(matches!(replan(&pool(), &topology(&osds).unwrap(), &t0, 2), Replan::Impossible(PlacementError::NotEnoughDomains { .. })));
    }
}
