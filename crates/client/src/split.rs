//! Cutting a volume byte range into object pieces (sans-IO).
//!
//! Object `i` covers volume bytes `[i * object_size, (i + 1) * object_size)`. A piece lies in
//! one object and is at most `max_len` bytes long; pieces are returned in volume order and
//! cover the range exactly.

/// One object request's share of a volume range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) object: u64,
    /// Byte offset within the object.
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// Byte offset within the volume (`object * object_size + offset`).
    pub(crate) vol_offset: u64,
}

/// The pieces of the volume range `[start, end)`. `object_size` and `max_len` must be
/// non-zero; with 4096-aligned `start`, `end`, `object_size` and `max_len` every piece is
/// 4096-aligned.
pub(crate) fn pieces(start: u64, end: u64, object_size: u64, max_len: u64) -> Vec<Piece> {
    debug_assert!(object_size > 0 && max_len > 0);
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let object = at / object_size;
        let offset = at % object_size;
        let len = (object_size - offset).min(max_len).min(end - at);
        out.push(Piece { object, offset, len, vol_offset: at });
        at += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_at_object_boundaries_and_max_len() {
        let p = pieces(4096, 3 * 65536 + 8192, 65536, 32768);
        let got: Vec<(u64, u64, u64)> = p.iter().map(|p| (p.object, p.offset, p.len)).collect();
        assert_eq!(
            got,
            [(0, 4096, 32768), (0, 36864, 28672), (1, 0, 32768), (1, 32768, 32768), (2, 0, 32768), (2, 32768, 32768), (3, 0, 8192)]
        );
        assert!(pieces(100, 100, 4096, 4096).is_empty());
    }

    proptest! {
        #[test]
        fn pieces_tile_the_range(start in 0u64..1 << 24, len in 0u64..1 << 22, obj_shift in 12u32..20, max in 1u64..1 << 20) {
            let object_size = 1u64 << obj_shift;
            let end = start + len;
            let p = pieces(start, end, object_size, max);
            let mut at = start;
            for piece in &p {
                prop_assert_eq!(piece.vol_offset, at);
                prop_assert!(piece.len > 0 && piece.len <= max);
                prop_assert!(piece.offset + piece.len <= object_size);
                prop_assert_eq!(piece.object * object_size + piece.offset, piece.vol_offset);
                at += piece.len;
            }
            prop_assert_eq!(at, end);
        }
    }
}
