//! The pre-write validator and apply must agree on every op: an op admitted into a batch must
//! apply cleanly (or a durable op would be skipped), and a rejected one must be rejected by
//! apply too (or validation is needlessly strict).

use super::apply::BatchData;
use super::{Overlay, State};
use crate::format::batch::{BatchOp, DataRange, EncEntry};
use crate::ids::{ObjectKey, PgId};
use crate::segments::Geometry;
use proptest::prelude::*;

fn op() -> impl Strategy<Value = (u32, u8, u64, u64, u32)> {
    (0u32..2, 0u8..5, 0u64..12, 1u64..4, 0u32..3)
}

fn build(pg: u32, kind: u8, idx: u64, count: u64, blocks: u32, term: u64) -> BatchOp {
    let pg = PgId::new(0, pg);
    match kind {
        0 => BatchOp::LogAppend {
            pg,
            entries: (0..count)
                .map(|i| EncEntry { index: idx + i, term, meta: Default::default(), data: DataRange { start: 0, n: blocks } })
                .collect(),
        },
        1 => BatchOp::LogTruncate { pg, from: idx },
        2 => BatchOp::LogCompact { pg, upto: idx, term: idx % 3 },
        3 => BatchOp::ApplyWrite { pg, key: ObjectKey::head(1, 1), block: 0, entry: idx, entry_block: blocks.saturating_sub(1), n: 1 },
        _ => BatchOp::DropPg { pg },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn overlay_admits_exactly_what_apply_accepts(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..8), 1..8)) {
        let mut state = State::new(Geometry { seg_blocks: 16, seg_count: 4 });
        let crcs = vec![0u32; 8];
        let data = BatchData { base: 1 << 40, crcs: &crcs };
        for batch in batches {
            let mut overlay = Overlay::default();
            let mut admitted = Vec::new();
            for (i, (pg, kind, idx, count, blocks)) in batch.into_iter().enumerate() {
                let op = build(pg, kind, idx, count, blocks, (i % 3) as u64);
                let ok = overlay.admit(&state, std::slice::from_ref(&op)).is_ok();
                // Apply to a copy in admission order to see what apply would say.
                let mut probe = state.clone();
                let mut applied_ok = true;
                for prev in &admitted {
                    probe.apply(prev, &data).expect("admitted ops apply");
                }
                if probe.apply(&op, &data).is_err() {
                    applied_ok = false;
                }
                prop_assert_eq!(ok, applied_ok, "op {:?}", op);
                if ok {
                    admitted.push(op);
                }
            }
            for op in &admitted {
                state.apply(op, &data).expect("admitted ops apply");
            }
        }
    }
}
