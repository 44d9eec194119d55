//! Straw2 draws in exact integer arithmetic.
//!
//! A candidate OSD with weight `w` draws `log2(u) / w`, where `u ∈ (0, 1)` comes from the
//! 64-bit hash of (PG, OSD); the highest draw wins. Since `-ln(u)` is exponentially
//! distributed, `-log2(u) / w` is an exponential "arrival time" with rate proportional to `w`,
//! so the winner of any candidate set is chosen with probability proportional to weight, and
//! the winner's identity is independent of the winning value (this is what makes per-host
//! winners exactly weight-proportional inside a host).
//!
//! Determinism: `log2(u)` is a fixed-point value (32 fractional bits) from a table built at
//! compile time with integer arithmetic plus linear interpolation, and draws are compared as
//! exact rationals (`l1 * w2` vs `l2 * w1` in `i128`), so no floating point (and no platform
//! `libm`) is involved. Ties are broken by the larger hash, then the smaller OSD id.

use std::cmp::Ordering;

/// Fractional bits of the fixed-point weights used in draws: `round(weight * 2^16)`.
pub(crate) const WEIGHT_FRAC_BITS: u32 = 16;

const TABLE_BITS: u32 = 8;
const TABLE_LEN: usize = 1 << TABLE_BITS;

/// `LOG2_TABLE[i] = floor(log2(1 + i / 256) * 2^32)` (up to one unit), `LOG2_TABLE[256] = 2^32`.
static LOG2_TABLE: [u64; TABLE_LEN + 1] = build_log2_table();

/// `log2(x) * 2^32` for `x ∈ [1, 2)` given in Q62 fixed point, by repeated squaring: each
/// squaring yields one bit of the logarithm. Integer-only, so the table is the same everywhere.
const fn log2_q32(mut x: u128) -> u64 {
    let mut result = 0u64;
    let mut bit = 0;
    while bit < 32 {
        x = (x * x) >> 62;
        result <<= 1;
        if x >= (2u128 << 62) {
            x >>= 1;
            result |= 1;
        }
        bit += 1;
    }
    result
}

const fn build_log2_table() -> [u64; TABLE_LEN + 1] {
    let mut table = [0u64; TABLE_LEN + 1];
    let mut i = 0;
    while i < TABLE_LEN {
        table[i] = log2_q32((1u128 << 62) + ((i as u128) << (62 - TABLE_BITS)));
        i += 1;
    }
    table[TABLE_LEN] = 1 << 32;
    table
}

/// `log2(max(hash, 1) / 2^64)` in fixed point with 32 fractional bits: a value in
/// `[-64 * 2^32, 0)`, monotonically non-decreasing in `hash` (so comparing hashes of
/// equal-weight candidates gives the same winner as comparing their draws).
#[inline]
pub(crate) fn log2_unit(hash: u64) -> i64 {
    let x = hash.max(1);
    let lz = x.leading_zeros();
    let m = x << lz; // top bit set: m / 2^63 ∈ [1, 2)
    let idx = ((m >> (63 - TABLE_BITS)) as usize) & (TABLE_LEN - 1);
    let t = (m >> (63 - TABLE_BITS - 32)) & 0xFFFF_FFFF;
    let (lo, hi) = (LOG2_TABLE[idx], LOG2_TABLE[idx + 1]);
    let frac = lo + (((hi - lo) * t) >> 32);
    frac as i64 - ((i64::from(lz) + 1) << 32)
}

/// One candidate's draw for one PG: `log2_unit(hash) / weight`, higher is better.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Draw {
    pub hash: u64,
    /// Fixed-point weight, `0 < weight <= 2^48`.
    pub weight: u64,
    pub id: u32,
}

impl Draw {
    /// True iff `self` wins against `other`: larger `log2_unit(hash) / weight` (compared
    /// exactly), then larger hash, then smaller id. A strict total order on candidates with
    /// distinct ids.
    #[inline]
    pub(crate) fn beats(&self, other: &Draw) -> bool {
        if self.weight != other.weight {
            match compare_weighted(self, other) {
                Ordering::Greater => return true,
                Ordering::Less => return false,
                Ordering::Equal => {}
            }
        }
        // Equal weights: log2_unit is monotone in the hash, so comparing hashes gives the same
        // order as comparing draws (and then hashes) without computing a logarithm.
        if self.hash != other.hash {
            return self.hash > other.hash;
        }
        self.id < other.id
    }
}

/// `a`'s draw vs `b`'s draw, exactly. Not inlined: otherwise the compiler computes both
/// logarithms speculatively even when the weights are equal (the common case).
#[inline(never)]
fn compare_weighted(a: &Draw, b: &Draw) -> Ordering {
    // |log| <= 2^38 and weight <= 2^48, so both products fit comfortably in i128.
    let lhs = i128::from(log2_unit(a.hash)) * i128::from(b.weight);
    let rhs = i128::from(log2_unit(b.hash)) * i128::from(a.weight);
    lhs.cmp(&rhs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_float_log2() {
        for (i, &v) in LOG2_TABLE.iter().enumerate() {
            let exact = (1.0 + i as f64 / TABLE_LEN as f64).log2() * 4_294_967_296.0;
            assert!((v as f64 - exact).abs() <= 2.0, "entry {i}: {v} vs {exact}");
        }
        assert!(LOG2_TABLE.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn log2_unit_is_accurate() {
        let mut h = 1u64;
        for _ in 0..10_000 {
            h = h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let exact = ((h.max(1)) as f64 / 18_446_744_073_709_551_616.0).log2();
            let got = log2_unit(h) as f64 / 4_294_967_296.0;
            assert!((got - exact).abs() < 1e-5, "hash {h:#x}: {got} vs {exact}");
        }
    }

    #[test]
    fn log2_unit_is_monotone() {
        // Around every table boundary and every power of two, plus the extremes.
        let mut points = vec![0u64, 1, 2, 3, u64::MAX - 1, u64::MAX];
        for shift in 0..64 {
            let base = 1u64 << shift;
            for idx in 0..TABLE_LEN as u64 {
                let p = base.wrapping_add(idx.wrapping_mul(base >> TABLE_BITS));
                for d in [0u64, 1, 2] {
                    points.push(p.wrapping_sub(d));
                    points.push(p.wrapping_add(d));
                }
            }
        }
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            assert!(log2_unit(w[0]) <= log2_unit(w[1]), "{:#x} -> {}, {:#x} -> {}", w[0], log2_unit(w[0]), w[1], log2_unit(w[1]));
        }
        assert!(log2_unit(u64::MAX) < 0);
        assert_eq!(log2_unit(0), -(64 << 32));
    }

    #[test]
    fn heavier_weight_wins_at_equal_hash() {
        let light = Draw { hash: 1 << 63, weight: 1 << WEIGHT_FRAC_BITS, id: 1 };
        let heavy = Draw { hash: 1 << 63, weight: 2 << WEIGHT_FRAC_BITS, id: 2 };
        assert!(heavy.beats(&light));
        assert!(!light.beats(&heavy));
        // Twice the weight beats a hash whose log2(u) is less than twice as negative.
        let light = Draw { hash: 1 << 62, ..light }; // log2(u) = -2
        let heavy = Draw { hash: 1 << 61, ..heavy }; // log2(u) = -3, draw -1.5
        assert!(heavy.beats(&light));
    }
}
