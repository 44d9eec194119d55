//! A 1,000-OSD cluster (100 hosts x 10 OSDs, 10 racks): the placement and movement properties
//! at scale. 10,000 PGs in debug builds (about 0.5 s per placement), the full 100,000 in
//! release builds (`cargo test --release`). Timings: `examples/placement_bench.rs`.

mod common;
use common::*;

use std::sync::OnceLock;

use tessera_placement::{FailureDomain, OsdInfo, PoolPlacement, PoolRule};

const HOSTS: u32 = 100;
const PER_HOST: u32 = 10;
const N: u32 = HOSTS * PER_HOST;

fn pgs() -> u32 {
    if cfg!(debug_assertions) {
        10_000
    } else {
        100_000
    }
}

fn osds() -> Vec<OsdInfo> {
    cluster(HOSTS, PER_HOST, 10, 1.0)
}

fn host_rule() -> PoolRule {
    rule(pgs(), 3, FailureDomain::Host)
}

/// The base placement, computed once per test binary.
fn base() -> &'static PoolPlacement {
    static BASE: OnceLock<PoolPlacement> = OnceLock::new();
    BASE.get_or_init(|| place(&osds(), &host_rule()))
}

fn diff_from_base(after: &[OsdInfo]) -> (PoolPlacement, tessera_placement::MovementStats) {
    let new = place(after, &host_rule());
    assert_valid(after, &host_rule(), &new);
    let stats = tessera_placement::diff(base(), &new).expect("same shape");
    (new, stats)
}

#[test]
fn base_placement_is_valid_balanced_and_order_independent() {
    let osds = osds();
    assert_valid(&osds, &host_rule(), base());
    let reversed: Vec<OsdInfo> = osds.iter().rev().cloned().collect();
    assert_eq!(&place(&reversed, &host_rule()), base());

    let counts = base().replica_counts();
    assert_eq!(counts.len(), N as usize, "every OSD holds replicas");
    let mean = f64::from(pgs()) * 3.0 / f64::from(N);
    let var = counts.values().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / f64::from(N);
    // Random placement is Poisson-like: stddev ~ sqrt(mean). Allow 1.3x that.
    assert!(var.sqrt() < 1.3 * mean.sqrt(), "stddev {} vs mean {mean}", var.sqrt());
    let primaries = base().primary_counts();
    assert!(primaries.len() as f64 > 0.95 * f64::from(N), "only {} OSDs lead PGs", primaries.len());
}

#[test]
fn rack_rule_at_scale() {
    let osds = osds();
    let rule = rule(pgs(), 3, FailureDomain::Rack);
    assert_valid(&osds, &rule, &place(&osds, &rule));
}

#[test]
fn add_one_osd() {
    let mut after = osds();
    after.push(OsdInfo::new(N, 1.0, "h42").with_rack("r2"));
    let (new, stats) = diff_from_base(&after);
    assert_moves_only_to(base(), &new, &stats, &[N]);
    assert_near_ideal("add one OSD", &stats, 1.0 / f64::from(N + 1));
}

#[test]
fn add_one_host() {
    let mut after = osds();
    let ids: Vec<u32> = (N..N + PER_HOST).collect();
    after.extend(ids.iter().map(|&id| OsdInfo::new(id, 1.0, "h-new").with_rack("r-new")));
    let (new, stats) = diff_from_base(&after);
    assert_moves_only_to(base(), &new, &stats, &ids);
    assert_near_ideal("add one host", &stats, f64::from(PER_HOST) / f64::from(N + PER_HOST));
}

#[test]
fn mark_one_osd_out() {
    let mut after = osds();
    after[123].in_ = false;
    let (new, stats) = diff_from_base(&after);
    assert_moves_only_from(base(), &new, &stats, &[123]);
    assert_near_ideal("mark one OSD out", &stats, 1.0 / f64::from(N));
}

#[test]
fn mark_one_host_out_and_down() {
    let mut after = osds();
    after.iter_mut().filter(|o| o.host == "h7").for_each(|o| o.up = false);
    let (_, stats) = diff_from_base(&after);
    assert_eq!(stats.moved_replicas, 0, "down but in: nothing moves");
    after.iter_mut().filter(|o| o.host == "h7").for_each(|o| o.in_ = false);
    let (new, stats) = diff_from_base(&after);
    let ids: Vec<u32> = (70..80).collect();
    assert_moves_only_from(base(), &new, &stats, &ids);
    assert_near_ideal("mark one host out", &stats, f64::from(PER_HOST) / f64::from(N));
}
