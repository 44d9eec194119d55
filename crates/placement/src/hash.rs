//! The one hash function placement depends on: XXH64 (Yann Collet's xxHash, 64-bit variant),
//! implemented here so its output is owned by this crate and cannot change with a dependency
//! upgrade.
//!
//! # Stability contract
//! Every PG → OSD draw and every object → PG mapping is a pure function of XXH64 outputs,
//! the seeds below and little-endian encodings of the inputs. The algorithm uses only
//! wrapping integer arithmetic, so it gives the same bits on every platform and Rust version.
//! **Changing anything in this file (algorithm, seeds, input encoding) remaps every object and
//! moves almost every PG, i.e. it rewrites the whole cluster's data.** The tests pin
//! reference outputs (`tests/hash.rs`) so such a change cannot go unnoticed.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// Seed of the PG → OSD draws: `XXH64(le64(pg_key) ‖ le64(osd_id), DRAW_SEED)`.
pub const DRAW_SEED: u64 = 0x7465_7373_6572_6170; // "tessera" + 'p'
/// Seed of the object → PG hash: `XXH64(le64(volume_id) ‖ le64(object_index), OBJECT_SEED)`.
pub const OBJECT_SEED: u64 = 0x7465_7373_6572_616f; // "tessera" + 'o'

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

#[inline(always)]
fn merge(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// Absorbs one 8-byte lane of the short-input tail; `lane_round` is `round(0, lane)`.
#[inline(always)]
fn absorb_lane(h: u64, lane_round: u64) -> u64 {
    (h ^ lane_round).rotate_left(27).wrapping_mul(P1).wrapping_add(P4)
}

#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

/// XXH64 of `data` with `seed`: bit-identical to the reference xxHash implementation.
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len = data.len() as u64;
    let mut rest = data;
    let mut h = if rest.len() >= 32 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, read_u64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h =
            v[0].rotate_left(1).wrapping_add(v[1].rotate_left(7)).wrapping_add(v[2].rotate_left(12)).wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = merge(h, acc);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while rest.len() >= 8 {
        h = absorb_lane(h, round(0, read_u64(rest)));
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    avalanche(h)
}

/// `XXH64(le64(a) ‖ le64(b), seed)` without building the 16-byte buffer.
pub fn xxh64_pair(a: u64, b: u64, seed: u64) -> u64 {
    PairHasher::new(a, seed).finish(lane(b))
}

/// Pre-processed second word of [`PairHasher::finish`]: `lane(b)` depends only on `b`, so
/// the topology computes it once per OSD.
#[inline(always)]
pub(crate) fn lane(b: u64) -> u64 {
    round(0, b)
}

/// `XXH64(le64(a) ‖ le64(b), seed)` split so the part that depends only on the first word
/// (the PG) is computed once and each draw costs one lane absorb plus the avalanche.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairHasher {
    state: u64,
}

impl PairHasher {
    #[inline(always)]
    pub(crate) fn new(a: u64, seed: u64) -> Self {
        let h = seed.wrapping_add(P5).wrapping_add(16);
        Self { state: absorb_lane(h, round(0, a)) }
    }

    /// The full hash, given `lane(b)` for the second word `b`.
    #[inline(always)]
    pub(crate) fn finish(self, lane_b: u64) -> u64 {
        avalanche(absorb_lane(self.state, lane_b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_matches_byte_form() {
        for (a, b, seed) in [(0u64, 0u64, 0u64), (1, 2, 3), (u64::MAX, 7, DRAW_SEED), (0xdead_beef, u64::MAX, OBJECT_SEED)] {
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(&a.to_le_bytes());
            buf[8..].copy_from_slice(&b.to_le_bytes());
            assert_eq!(xxh64_pair(a, b, seed), xxh64(&buf, seed));
        }
    }
}
