//! Cluster builders and placement checks shared by the integration tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use tessera_placement::{diff, FailureDomain, MovementStats, OsdInfo, PoolPlacement, PoolRule, Topology};

/// `hosts * per_host` OSDs of `weight`, ids `0..`, host `h{id / per_host}`, rack `r{host % racks}`.
pub fn cluster(hosts: u32, per_host: u32, racks: u32, weight: f64) -> Vec<OsdInfo> {
    (0..hosts * per_host)
        .map(|id| {
            let host = id / per_host;
            OsdInfo::new(id, weight, format!("h{host}")).with_rack(format!("r{}", host % racks))
        })
        .collect()
}

pub fn rule(pg_count: u32, replicas: usize, failure_domain: FailureDomain) -> PoolRule {
    PoolRule { pool_id: 1, pg_count, replicas, failure_domain }
}

pub fn place(osds: &[OsdInfo], rule: &PoolRule) -> PoolPlacement {
    Topology::new(osds).expect("valid topology").place_pool(rule).expect("placement succeeds")
}

/// The failure-domain key of `osd` at `level`.
pub fn domain_of(osd: &OsdInfo, level: FailureDomain) -> String {
    match level {
        FailureDomain::Osd => format!("osd.{}", osd.id),
        FailureDomain::Host => osd.host.clone(),
        FailureDomain::Rack => osd.rack.clone().unwrap_or_default(),
    }
}

/// Asserts every PG has `replicas` distinct, eligible OSDs in distinct failure domains.
pub fn assert_valid(osds: &[OsdInfo], rule: &PoolRule, placement: &PoolPlacement) {
    let by_id: BTreeMap<u32, &OsdInfo> = osds.iter().map(|o| (o.id, o)).collect();
    assert_eq!(placement.pg_count(), rule.pg_count);
    assert_eq!(placement.replicas(), rule.replicas);
    for (pg, set) in placement.iter() {
        assert_eq!(set.len(), rule.replicas, "pg {pg}");
        let mut domains = BTreeSet::new();
        for id in set {
            let osd = by_id.get(id).unwrap_or_else(|| panic!("pg {pg}: unknown OSD {id}"));
            assert!(osd.in_ && osd.weight > 0.0, "pg {pg}: OSD {id} is out or has zero weight");
            assert!(domains.insert(domain_of(osd, rule.failure_domain)), "pg {pg}: two replicas in one {:?}: {set:?}", rule.failure_domain);
        }
    }
}

/// Movement from `before` to `after` under `rule`, with both placements checked for validity.
pub fn movement(before: &[OsdInfo], after: &[OsdInfo], rule: &PoolRule) -> (PoolPlacement, PoolPlacement, MovementStats) {
    let (old, new) = (place(before, rule), place(after, rule));
    assert_valid(after, rule, &new);
    let stats = diff(&old, &new).expect("same shape");
    (old, new, stats)
}

/// Asserts that every moved replica moved to one of `targets`, and that each PG changed by
/// at most `per_pg` replicas and changed leader only if it changed set or a target became leader.
pub fn assert_moves_only_to(old: &PoolPlacement, new: &PoolPlacement, stats: &MovementStats, targets: &[u32]) {
    assert!(stats.gained.keys().all(|id| targets.contains(id)), "replicas moved to non-target OSDs: {:?}", stats.gained);
    assert!(stats.lost.keys().all(|id| !targets.contains(id)), "target OSDs lost replicas: {:?}", stats.lost);
    for ((pg, a), (_, b)) in old.iter().zip(new.iter()) {
        if a[0] != b[0] {
            assert!(targets.contains(&b[0]), "pg {pg}: leader changed from {} to non-target {} ({a:?} -> {b:?})", a[0], b[0]);
        }
    }
}

/// Asserts that exactly the replicas held by `sources` moved, and nothing else.
pub fn assert_moves_only_from(old: &PoolPlacement, new: &PoolPlacement, stats: &MovementStats, sources: &[u32]) {
    let counts = old.replica_counts();
    let held: u64 = sources.iter().map(|id| counts.get(id).copied().unwrap_or(0)).sum();
    assert_eq!(stats.moved_replicas, held, "moved replicas vs replicas held by {sources:?}");
    assert!(stats.lost.keys().all(|id| sources.contains(id)), "replicas moved off non-source OSDs: {:?}", stats.lost);
    assert!(stats.gained.keys().all(|id| !sources.contains(id)), "source OSDs gained replicas: {:?}", stats.gained);
    for ((pg, a), (_, b)) in old.iter().zip(new.iter()) {
        if a[0] != b[0] {
            assert!(sources.contains(&a[0]), "pg {pg}: leader {} changed although it stayed ({a:?} -> {b:?})", a[0]);
        }
    }
}

/// Asserts `moved` is within `[0.5, 1.5] * ideal` plus a slack of 4 standard deviations of a
/// Poisson count (and 5 replicas), where `ideal = ideal_fraction * total`.
pub fn assert_near_ideal(what: &str, stats: &MovementStats, ideal_fraction: f64) {
    let ideal = ideal_fraction * stats.total_replicas as f64;
    let slack = 4.0 * ideal.sqrt() + 5.0;
    let moved = stats.moved_replicas as f64;
    assert!(
        moved <= 1.5 * ideal + slack && moved >= 0.5 * ideal - slack,
        "{what}: moved {moved} of {} replicas, ideal {ideal:.1} (allowed {:.1}..={:.1})",
        stats.total_replicas,
        0.5 * ideal - slack,
        1.5 * ideal + slack
    );
}
