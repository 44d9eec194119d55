//! The hash is part of the on-disk format: these tests check it is standard XXH64 and pin the
//! values that placement derives from it, so an accidental change fails here.

mod common;
use common::*;

use rand::{Rng, SeedableRng};
use tessera_placement::hash::{xxh64, xxh64_pair, DRAW_SEED, OBJECT_SEED};
use tessera_placement::{object_to_pg, FailureDomain, Topology};

#[test]
fn xxh64_matches_reference_implementation() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for len in 0..=200 {
        for seed in [0u64, 1, DRAW_SEED, OBJECT_SEED, u64::MAX] {
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            assert_eq!(xxh64(&data, seed), xxhash_rust::xxh64::xxh64(&data, seed), "len {len} seed {seed:#x}");
        }
    }
    for _ in 0..1000 {
        let (a, b, seed): (u64, u64, u64) = (rng.gen(), rng.gen(), rng.gen());
        let bytes = [a.to_le_bytes(), b.to_le_bytes()].concat();
        assert_eq!(xxh64_pair(a, b, seed), xxhash_rust::xxh64::xxh64(&bytes, seed));
    }
}

#[test]
fn xxh64_known_answers() {
    assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
    assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
}

/// Pinned outputs. If this fails, the change remaps every object or moves most PGs of a
/// running cluster; only update the constants together with a data-migration plan.
#[test]
fn object_to_pg_is_pinned() {
    let got: Vec<u32> = [(0u64, 0u64), (1, 0), (1, 1), (42, 123_456_789), (u64::MAX, u64::MAX)]
        .iter()
        .map(|&(v, i)| object_to_pg(v, i, 1024).expect("pg_count > 0"))
        .collect();
    assert_eq!(got, PINNED_OBJECT_PGS);
}

#[test]
fn placement_is_pinned() {
    let osds = cluster(6, 3, 3, 1.0);
    let topology = Topology::new(&osds).expect("valid");
    let got: Vec<Vec<u32>> = (0..6).map(|pg| topology.place_pg(&rule(64, 3, FailureDomain::Host), pg).expect("enough hosts")).collect();
    assert_eq!(got, PINNED_PLACEMENT);
}

const PINNED_OBJECT_PGS: [u32; 5] = [110, 805, 624, 486, 335];
const PINNED_PLACEMENT: [[u32; 3]; 6] = [[17, 14, 10], [3, 17, 13], [14, 2, 4], [11, 4, 14], [3, 17, 13], [10, 15, 2]];
