//! Replicas (and primaries) are spread in proportion to weight.

mod common;
use common::*;

use tessera_placement::{FailureDomain, OsdInfo, PoolPlacement};

/// Mean replicas per OSD of weight 2 divided by mean replicas per OSD of weight 1.
fn heavy_to_light(osds: &[OsdInfo], counts: &std::collections::BTreeMap<u32, u64>) -> f64 {
    let mean = |w: f64| {
        let class: Vec<_> = osds.iter().filter(|o| o.weight == w).collect();
        class.iter().map(|o| counts.get(&o.id).copied().unwrap_or(0)).sum::<u64>() as f64 / class.len() as f64
    };
    mean(2.0) / mean(1.0)
}

fn assert_ratio(what: &str, ratio: f64) {
    assert!((1.8..=2.2).contains(&ratio), "{what}: weight-2 OSDs hold {ratio:.3}x the replicas of weight-1 OSDs, want 2 +- 10%");
}

fn check(osds: &[OsdInfo], level: FailureDomain, pgs: u32) -> PoolPlacement {
    let rule = rule(pgs, 3, level);
    let placement = place(osds, &rule);
    assert_valid(osds, &rule, &placement);
    assert_ratio(&format!("{level:?} replicas"), heavy_to_light(osds, &placement.replica_counts()));
    assert_ratio(&format!("{level:?} primaries"), heavy_to_light(osds, &placement.primary_counts()));
    placement
}

#[test]
fn mixed_weights_inside_hosts() {
    // 40 hosts x 6 OSDs, half of each host's OSDs weigh 2.
    let mut osds = cluster(40, 6, 4, 1.0);
    osds.iter_mut().filter(|o| o.id % 2 == 0).for_each(|o| o.weight = 2.0);
    check(&osds, FailureDomain::Host, 20_000);
    check(&osds, FailureDomain::Rack, 20_000);
}

#[test]
fn heavy_and_light_hosts() {
    // Every OSD of every other host weighs 2, so hosts weigh 4 or 8.
    let mut osds = cluster(40, 4, 4, 1.0);
    osds.iter_mut().filter(|o| (o.id / 4) % 2 == 0).for_each(|o| o.weight = 2.0);
    check(&osds, FailureDomain::Host, 20_000);
}

#[test]
fn weighted_osds_without_hosts_constraint() {
    let mut osds: Vec<OsdInfo> = (0..60).map(|id| OsdInfo::new(id, 1.0, format!("h{}", id % 3))).collect();
    osds.iter_mut().filter(|o| o.id % 3 == 1).for_each(|o| o.weight = 2.0);
    check(&osds, FailureDomain::Osd, 20_000);
}

#[test]
fn fractional_weights_are_proportional() {
    // Weights 0.25 and 0.5 behave like 1 and 2 (only ratios matter).
    let mut osds = cluster(30, 4, 1, 0.25);
    osds.iter_mut().filter(|o| o.id % 4 < 2).for_each(|o| o.weight = 0.5);
    let placement = place(&osds, &rule(20_000, 3, FailureDomain::Host));
    let counts = placement.replica_counts();
    let mean = |w: f64| {
        let class: Vec<_> = osds.iter().filter(|o| o.weight == w).collect();
        class.iter().map(|o| counts.get(&o.id).copied().unwrap_or(0)).sum::<u64>() as f64 / class.len() as f64
    };
    assert_ratio("fractional weights", mean(0.5) / mean(0.25));
}

#[test]
fn equal_weights_are_balanced() {
    let osds = cluster(50, 4, 5, 1.0);
    let placement = place(&osds, &rule(20_000, 3, FailureDomain::Host));
    let counts = placement.replica_counts();
    assert_eq!(counts.len(), 200, "every OSD holds something");
    let mean = 60_000.0 / 200.0;
    // Poisson-like spread: stddev ~17 around 300; 6 stddevs is far outside chance.
    for (&osd, &c) in &counts {
        assert!((c as f64 - mean).abs() < 6.0 * mean.sqrt(), "OSD {osd} holds {c} replicas, mean {mean}");
    }
}
