//! Random clusters: placements are valid, deterministic, independent of input order and of
//! `up`, and fail exactly when there are too few failure domains.

mod common;
use common::*;

use std::collections::BTreeSet;

use proptest::prelude::*;
use tessera_placement::{diff, FailureDomain, OsdInfo, PlacementError, PoolRule, Topology};

/// A random cluster: up to 60 OSDs on up to 15 hosts in up to 5 racks, mixed weights, some
/// out, some down, some zero-weight.
fn arb_cluster() -> impl Strategy<Value = Vec<OsdInfo>> {
    (1u32..16, 1u32..6).prop_flat_map(|(hosts, racks)| {
        proptest::collection::vec((0u32..hosts, 0usize..6, any::<bool>(), proptest::bool::weighted(0.85)), 1..60).prop_map(move |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (host, w, up, in_))| OsdInfo {
                    id: i as u32 * 7 + 3,
                    weight: [0.0, 0.5, 1.0, 1.0, 2.0, 3.7][w],
                    host: format!("h{host}"),
                    rack: Some(format!("r{}", host % racks)),
                    up,
                    in_,
                })
                .collect()
        })
    })
}

fn arb_domain() -> impl Strategy<Value = FailureDomain> {
    prop_oneof![Just(FailureDomain::Osd), Just(FailureDomain::Host), Just(FailureDomain::Rack)]
}

/// Distinct failure domains among eligible OSDs, computed independently of the crate.
fn eligible_domains(osds: &[OsdInfo], level: FailureDomain) -> usize {
    osds.iter().filter(|o| o.in_ && o.weight > 0.0).map(|o| domain_of(o, level)).collect::<BTreeSet<_>>().len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn placements_respect_failure_domains(osds in arb_cluster(), replicas in 1usize..5, level in arb_domain(), pool_id in any::<u32>()) {
        let rule = PoolRule { pool_id, pg_count: 64, replicas, failure_domain: level };
        let topology = Topology::new(&osds).expect("generated clusters are valid");
        let available = eligible_domains(&osds, level);
        prop_assert_eq!(topology.domain_count(level), Ok(available));
        match topology.place_pool(&rule) {
            Ok(placement) => {
                prop_assert!(available >= replicas);
                assert_valid(&osds, &rule, &placement);
                for (pg, set) in placement.iter() {
                    prop_assert_eq!(topology.place_pg(&rule, pg).expect("pool placement succeeded"), set.to_vec());
                }
            }
            Err(err) => prop_assert_eq!(err, PlacementError::NotEnoughDomains { domain: level, needed: replicas, available }),
        }
    }

    #[test]
    fn placement_ignores_input_order_and_liveness(osds in arb_cluster(), level in arb_domain(), seed in any::<u64>()) {
        let rule = PoolRule { pool_id: 9, pg_count: 64, replicas: 2, failure_domain: level };
        let Ok(expected) = Topology::new(&osds).expect("valid").place_pool(&rule) else { return Ok(()) };
        // Reverse, rotate and flip every `up` flag: nothing may change.
        let mut shuffled: Vec<OsdInfo> = osds.iter().rev().cloned().map(|mut o| { o.up = !o.up; o }).collect();
        let len = shuffled.len();
        shuffled.rotate_left((seed % len as u64) as usize);
        let again = Topology::new(&shuffled).expect("valid").place_pool(&rule).expect("same cluster");
        prop_assert_eq!(&again, &expected);
        prop_assert_eq!(diff(&expected, &again).expect("same shape").moved_replicas, 0);
    }

    #[test]
    fn marking_one_osd_out_moves_only_its_replicas(osds in arb_cluster(), level in arb_domain(), victim in any::<prop::sample::Index>()) {
        let rule = PoolRule { pool_id: 3, pg_count: 128, replicas: 2, failure_domain: level };
        let Ok(before) = Topology::new(&osds).expect("valid").place_pool(&rule) else { return Ok(()) };
        let mut changed = osds.clone();
        let victim = victim.get(&changed).id;
        changed.iter_mut().filter(|o| o.id == victim).for_each(|o| o.in_ = false);
        let Ok(after) = Topology::new(&changed).expect("valid").place_pool(&rule) else { return Ok(()) };
        let stats = diff(&before, &after).expect("same shape");
        let held = before.replica_counts().get(&victim).copied().unwrap_or(0);
        prop_assert_eq!(stats.moved_replicas, held);
        prop_assert!(stats.lost.keys().all(|&id| id == victim));
        prop_assert!(!stats.gained.contains_key(&victim));
    }
}

#[test]
fn too_few_hosts_is_an_error_naming_the_numbers() {
    let osds = cluster(2, 4, 1, 1.0);
    let err = Topology::new(&osds).expect("valid").place_pool(&rule(8, 3, FailureDomain::Host)).expect_err("only 2 hosts");
    assert_eq!(err, PlacementError::NotEnoughDomains { domain: FailureDomain::Host, needed: 3, available: 2 });
    assert_eq!(err.to_string(), "pool needs 3 hosts with in OSDs of non-zero weight, cluster has 2");
    // Out and zero-weight OSDs do not count: 3 hosts, but one has only an out OSD and one only
    // a zero-weight OSD.
    let mut osds = cluster(3, 1, 1, 1.0);
    osds[1].in_ = false;
    osds[2].weight = 0.0;
    let err = Topology::new(&osds).expect("valid").place_pg(&rule(8, 2, FailureDomain::Host), 0).expect_err("one usable host");
    assert_eq!(err, PlacementError::NotEnoughDomains { domain: FailureDomain::Host, needed: 2, available: 1 });
    // Racks: 6 hosts in 2 racks cannot hold 3 rack-disjoint replicas, but can hold 3 host-disjoint ones.
    let osds = cluster(6, 2, 2, 1.0);
    let topology = Topology::new(&osds).expect("valid");
    assert!(matches!(topology.place_pg(&rule(8, 3, FailureDomain::Rack), 0), Err(PlacementError::NotEnoughDomains { available: 2, .. })));
    assert!(topology.place_pg(&rule(8, 3, FailureDomain::Host), 0).is_ok());
}

#[test]
fn empty_or_all_out_cluster_is_an_error() {
    let topology = Topology::new(&[]).expect("empty is valid");
    assert_eq!(
        topology.place_pool(&rule(8, 1, FailureDomain::Osd)),
        Err(PlacementError::NotEnoughDomains { domain: FailureDomain::Osd, needed: 1, available: 0 })
    );
    let mut osds = cluster(4, 2, 1, 0.0);
    osds[0].weight = 1.0;
    osds[0].in_ = false;
    let topology = Topology::new(&osds).expect("zero weights are valid");
    assert_eq!(topology.eligible_osd_count(), 0);
    assert!(matches!(topology.place_pg(&rule(8, 1, FailureDomain::Host), 0), Err(PlacementError::NotEnoughDomains { available: 0, .. })));
}

#[test]
fn invalid_topologies_are_rejected() {
    let base = cluster(3, 2, 1, 1.0);
    let with = |f: &dyn Fn(&mut Vec<OsdInfo>)| {
        let mut osds = base.clone();
        f(&mut osds);
        Topology::new(&osds).map(|_| ())
    };
    assert_eq!(with(&|o| o[5].id = 2), Err(PlacementError::DuplicateOsd { id: 2 }));
    for bad in [f64::NAN, f64::INFINITY, -1.0, -0.5, 1e12] {
        match with(&|o| o[1].weight = bad) {
            Err(PlacementError::InvalidWeight { osd: 1, weight }) => assert!(weight.is_nan() || weight == bad),
            other => panic!("weight {bad}: {other:?}"),
        }
    }
    // Invalid weights are rejected even on out OSDs.
    assert!(matches!(
        with(&|o| {
            o[1].in_ = false;
            o[1].weight = f64::NAN
        }),
        Err(PlacementError::InvalidWeight { osd: 1, .. })
    ));
    assert_eq!(with(&|o| o[3].host.clear()), Err(PlacementError::EmptyHost { osd: 3 }));
    assert_eq!(
        with(&|o| o[1].rack = Some("elsewhere".into())),
        Err(PlacementError::HostInTwoRacks { host: "h0".into(), first: Some("r0".into()), second: Some("elsewhere".into()) })
    );
    assert!(matches!(with(&|o| o[1].rack = None), Err(PlacementError::HostInTwoRacks { .. })));
}

#[test]
fn missing_rack_only_matters_for_rack_rules() {
    let mut osds = cluster(4, 2, 2, 1.0);
    for o in osds.iter_mut().filter(|o| o.host == "h3") {
        o.rack = None;
    }
    let topology = Topology::new(&osds).expect("valid");
    assert!(topology.place_pg(&rule(8, 3, FailureDomain::Host), 0).is_ok());
    assert_eq!(topology.place_pg(&rule(8, 2, FailureDomain::Rack), 0), Err(PlacementError::MissingRack { osd: 6 }));
    // Once that host's OSDs are out, the rack rule works again.
    for o in osds.iter_mut().filter(|o| o.host == "h3") {
        o.in_ = false;
    }
    assert!(Topology::new(&osds).expect("valid").place_pg(&rule(8, 2, FailureDomain::Rack), 0).is_ok());
}

#[test]
fn invalid_rules_and_pgs_are_rejected() {
    let topology = Topology::new(&cluster(4, 1, 1, 1.0)).expect("valid");
    assert!(matches!(topology.place_pool(&rule(8, 0, FailureDomain::Host)), Err(PlacementError::InvalidRule { .. })));
    assert!(matches!(topology.place_pool(&rule(0, 3, FailureDomain::Host)), Err(PlacementError::InvalidRule { .. })));
    assert!(matches!(
        topology.place_pool(&rule(tessera_placement::MAX_PG_COUNT + 1, 3, FailureDomain::Host)),
        Err(PlacementError::InvalidRule { .. })
    ));
    assert_eq!(topology.place_pg(&rule(8, 3, FailureDomain::Host), 8), Err(PlacementError::PgOutOfRange { pg: 8, pg_count: 8 }));
    assert!(matches!(tessera_placement::object_to_pg(1, 2, 0), Err(PlacementError::InvalidRule { .. })));
    let a = topology.place_pool(&rule(8, 3, FailureDomain::Host)).expect("ok");
    let b = topology.place_pool(&rule(16, 3, FailureDomain::Host)).expect("ok");
    let c = topology.place_pool(&rule(8, 2, FailureDomain::Host)).expect("ok");
    assert!(matches!(diff(&a, &b), Err(PlacementError::ShapeMismatch { .. })));
    assert!(matches!(diff(&a, &c), Err(PlacementError::ShapeMismatch { .. })));
}

#[test]
fn pools_are_placed_independently() {
    let osds = cluster(20, 4, 1, 1.0);
    let a = place(&osds, &PoolRule { pool_id: 1, ..rule(256, 3, FailureDomain::Host) });
    let b = place(&osds, &PoolRule { pool_id: 2, ..rule(256, 3, FailureDomain::Host) });
    let same = a.iter().zip(b.iter()).filter(|((_, x), (_, y))| x == y).count();
    assert!(same < 5, "{same} of 256 PGs have identical sets in two pools");
}

#[test]
fn object_to_pg_is_in_range_and_balanced() {
    for pg_count in [1u32, 2, 3, 100, 1000, 1024, u32::MAX] {
        for i in 0..1000 {
            assert!(tessera_placement::object_to_pg(5, i, pg_count).expect("pg_count > 0") < pg_count);
        }
    }
    let pg_count = 64;
    let mut counts = vec![0u32; pg_count as usize];
    for i in 0..64_000 {
        counts[tessera_placement::object_to_pg(77, i, pg_count).expect("ok") as usize] += 1;
    }
    // 1000 expected per PG, stddev ~32.
    assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
}
