//! Minimal movement: a change to one OSD (or host) moves only replicas to or from it, and
//! about its share of weight.

mod common;
use common::*;

use tessera_placement::{FailureDomain, OsdInfo};

const PGS: u32 = 20_000;

/// (hosts, OSDs per host): N = 10, 30 and 100 OSDs.
const SHAPES: [(u32, u32); 3] = [(10, 1), (10, 3), (20, 5)];

#[test]
fn adding_one_osd_to_an_existing_host_moves_only_to_it() {
    for (hosts, per_host) in SHAPES {
        let n = hosts * per_host;
        let before = cluster(hosts, per_host, 1, 1.0);
        let mut after = before.clone();
        after.push(OsdInfo::new(n, 1.0, "h0").with_rack("r0"));
        let (old, new, stats) = movement(&before, &after, &rule(PGS, 3, FailureDomain::Host));
        assert_moves_only_to(&old, &new, &stats, &[n]);
        assert_eq!(stats.pgs_changed, stats.moved_replicas, "a PG gains the new OSD at most once");
        assert_near_ideal(&format!("add OSD to host, N={n}"), &stats, 1.0 / f64::from(n + 1));
    }
}

#[test]
fn adding_one_osd_on_a_new_host_moves_only_to_it() {
    for (hosts, per_host) in SHAPES {
        let n = hosts * per_host;
        let before = cluster(hosts, per_host, 1, 1.0);
        let mut after = before.clone();
        after.push(OsdInfo::new(n, 1.0, "new-host").with_rack("r0"));
        let (old, new, stats) = movement(&before, &after, &rule(PGS, 3, FailureDomain::Host));
        assert_moves_only_to(&old, &new, &stats, &[n]);
        assert_near_ideal(&format!("add OSD on new host, N={n}"), &stats, 1.0 / f64::from(n + 1));
    }
}

#[test]
fn marking_one_osd_out_moves_exactly_its_replicas() {
    for (hosts, per_host) in SHAPES {
        let n = hosts * per_host;
        let before = cluster(hosts, per_host, 1, 1.0);
        let victim = n / 2;
        let mut after = before.clone();
        after[victim as usize].in_ = false;
        let (old, new, stats) = movement(&before, &after, &rule(PGS, 3, FailureDomain::Host));
        assert_moves_only_from(&old, &new, &stats, &[victim]);
        assert_near_ideal(&format!("mark OSD out, N={n}"), &stats, 1.0 / f64::from(n));

        // Removing the OSD from the map, or setting its weight to 0, is the same as marking it out.
        let removed: Vec<OsdInfo> = before.iter().filter(|o| o.id != victim).cloned().collect();
        assert_eq!(place(&removed, &rule(PGS, 3, FailureDomain::Host)), new);
        let mut zero = before.clone();
        zero[victim as usize].weight = 0.0;
        assert_eq!(place(&zero, &rule(PGS, 3, FailureDomain::Host)), new);
    }
}

#[test]
fn down_but_in_osds_keep_their_replicas_until_marked_out() {
    let before = cluster(10, 3, 1, 1.0);
    let rule = rule(PGS, 3, FailureDomain::Host);
    let mut down = before.clone();
    down.iter_mut().filter(|o| o.host == "h4").for_each(|o| o.up = false);
    let (_, _, stats) = movement(&before, &down, &rule);
    assert_eq!(stats.moved_replicas, 0);
    assert_eq!(stats.primary_changes, 0);
    let mut out = down.clone();
    out.iter_mut().filter(|o| o.host == "h4").for_each(|o| o.in_ = false);
    let (old, new, stats) = movement(&down, &out, &rule);
    assert_moves_only_from(&old, &new, &stats, &[12, 13, 14]);
}

#[test]
fn adding_and_removing_a_host_moves_only_its_share() {
    for (hosts, per_host) in SHAPES {
        let n = hosts * per_host;
        let rule = rule(PGS, 3, FailureDomain::Host);
        let before = cluster(hosts, per_host, 1, 1.0);
        let mut after = before.clone();
        let new_ids: Vec<u32> = (n..n + per_host).collect();
        after.extend(new_ids.iter().map(|&id| OsdInfo::new(id, 1.0, "new-host").with_rack("r0")));
        let (old, new, stats) = movement(&before, &after, &rule);
        assert_moves_only_to(&old, &new, &stats, &new_ids);
        assert_near_ideal(&format!("add host, N={n}"), &stats, f64::from(per_host) / f64::from(n + per_host));

        let mut out = before.clone();
        out.iter_mut().filter(|o| o.host == "h1").for_each(|o| o.in_ = false);
        let host_ids: Vec<u32> = (per_host..2 * per_host).collect();
        let (old, new, stats) = movement(&before, &out, &rule);
        assert_moves_only_from(&old, &new, &stats, &host_ids);
        assert_near_ideal(&format!("mark host out, N={n}"), &stats, f64::from(per_host) / f64::from(n));
    }
}

#[test]
fn reweighting_one_osd_moves_only_to_or_from_it() {
    let before = cluster(20, 5, 1, 1.0);
    let rule = rule(PGS, 3, FailureDomain::Host);
    let mut heavier = before.clone();
    heavier[7].weight = 2.0;
    let (_, _, stats) = movement(&before, &heavier, &rule);
    assert!(stats.gained.keys().all(|&id| id == 7) && !stats.lost.contains_key(&7), "{stats:?}");
    assert!(stats.moved_replicas > 0);
    // Gaining weight 1 of 101 total: about 1/101 of replicas.
    assert_near_ideal("reweight 1 -> 2", &stats, 1.0 / 101.0);
    let mut lighter = before.clone();
    lighter[7].weight = 0.5;
    let (_, _, stats) = movement(&before, &lighter, &rule);
    assert!(stats.lost.keys().all(|&id| id == 7) && !stats.gained.contains_key(&7), "{stats:?}");
    assert!(stats.moved_replicas > 0);
}

#[test]
fn rack_rules_move_minimally_too() {
    let before = cluster(24, 4, 6, 1.0);
    let rule = rule(PGS, 3, FailureDomain::Rack);
    let mut after = before.clone();
    after.push(OsdInfo::new(96, 1.0, "h5").with_rack("r5"));
    let (old, new, stats) = movement(&before, &after, &rule);
    assert_moves_only_to(&old, &new, &stats, &[96]);
    // 6 racks of 16 OSDs and 3 replicas: every rack holds half the PGs, so one rack's extra
    // OSD gets less than a full 1/97 share (the rack cannot be chosen more than once per PG).
    assert!(stats.moved_replicas > 0 && stats.moved_fraction() <= 1.5 / 97.0, "{stats:?}");

    let mut out = before.clone();
    out[10].in_ = false;
    let (old, new, stats) = movement(&before, &out, &rule);
    assert_moves_only_from(&old, &new, &stats, &[10]);
}
