//! Object → PG.
//!
//! `pg = stable_mod(XXH64(le64(volume_id) ‖ le64(object_index), OBJECT_SEED), pg_count)`.
//!
//! `stable_mod` (as in Ceph) takes the hash's low `k` bits, `2^k = pg_count.next_power_of_two()`,
//! and falls back to the low `k - 1` bits when that value is `>= pg_count`. Unlike a plain
//! `hash % pg_count`, growing `pg_count` one PG at a time only *splits* PGs: going from `n` to
//! `n + 1` PGs moves about half of the objects of exactly one parent PG into the new PG `n`, and
//! no other object changes PG. A split is therefore local to one Raft group (the child can
//! start on the parent's OSDs and be rebalanced later), and doubling `pg_count` splits every PG
//! in two.
//!
//! Balance: when `pg_count` is a power of two all PGs receive equal shares of objects. Between
//! powers of two, `2^(k-1) < pg_count < 2^k`, the PGs `pg_count - 2^(k-1) .. 2^(k-1)` have not
//! split yet and receive twice the share of the others; prefer powers of two.

use crate::error::PlacementError;
use crate::hash::{xxh64_pair, OBJECT_SEED};

/// The PG (in `0..pg_count`) that stores object `object_index` of volume `volume_id`.
/// A pure function of its arguments, pinned forever (see [`crate::hash`]).
///
/// Errors: [`PlacementError::InvalidRule`] if `pg_count == 0`.
pub fn object_to_pg(volume_id: u64, object_index: u64, pg_count: u32) -> Result<u32, PlacementError> {
    if pg_count == 0 {
        return Err(PlacementError::InvalidRule { reason: "pg_count must be at least 1" });
    }
    Ok(stable_mod(xxh64_pair(volume_id, object_index, OBJECT_SEED), pg_count))
}

/// `hash` reduced to `0..n` for `n >= 1` such that raising `n` by one only moves values from
/// one bucket into the new bucket `n`.
fn stable_mod(hash: u64, n: u32) -> u32 {
    let mask = u64::from(n).next_power_of_two() - 1;
    let low = hash & mask;
    let pg = if low < u64::from(n) { low } else { hash & (mask >> 1) };
    pg as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_by_one_only_splits_one_parent() {
        for n in 1u32..200 {
            let mut parent = None;
            for i in 0..2_000u64 {
                let h = xxh64_pair(7, i, OBJECT_SEED);
                let (before, after) = (stable_mod(h, n), stable_mod(h, n + 1));
                assert!(before < n && after < n + 1);
                if before != after {
                    assert_eq!(after, n, "n={n}: an object moved between old PGs");
                    assert_eq!(*parent.get_or_insert(before), before, "n={n}: objects moved out of two parents");
                }
            }
        }
    }
}
