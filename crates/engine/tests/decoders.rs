//! Every on-disk decoder, fed arbitrary and mutated bytes: errors, never panics. (The same
//! decoders have cargo-fuzz targets in `fuzz/` for deeper runs.)

use proptest::prelude::*;
use tessera_engine::format::batch::{decode_header, decode_prelude, encode_header, BatchOp, DataRange, EncEntry};
use tessera_engine::format::checkpoint::{LogPos, Slot};
use tessera_engine::format::superblock::Superblock;
use tessera_engine::segments::Geometry;
use tessera_engine::*;

const GEO: Geometry = Geometry { seg_blocks: 16, seg_count: 8 };

fn sample_header() -> Vec<u8> {
    let pg = PgId::new(1, 2);
    let ops = vec![
        BatchOp::LogAppend {
            pg,
            entries: vec![EncEntry { index: 1, term: 1, meta: bytes::Bytes::from_static(b"meta"), data: DataRange { start: 0, n: 1 } }],
        },
        BatchOp::Write { pg, key: ObjectKey::head(1, 1), block: 0, data: DataRange { start: 1, n: 1 } },
        BatchOp::ApplyWrite { pg, key: ObjectKey::head(1, 2), block: 3, entry: 1, entry_block: 0, n: 1 },
    ];
    encode_header(7, 42, 3, &[1, 2], &ops)
}

fn sample_state() -> Vec<u8> {
    let dev = std::sync::Arc::new(MemDevice::new(65536 + 8 * 65536));
    let e = Engine::create(dev, FormatOptions { segment_size: 65536 }, EngineConfig::default()).unwrap();
    let pg = PgId::new(0, 1);
    let entry = LogEntry { index: 1, term: 2, meta: bytes::Bytes::from_static(b"m"), data: vec![3; 4096].into(), crcs: Vec::new() };
    e.commit(
        Txn::new()
            .with(Op::LogAppend { pg, entries: vec![entry] })
            .with(Op::Write { pg, key: ObjectKey::head(1, 1), offset: 0, data: vec![1; 8192].into() })
            .with(Op::MetaPut { scope: MetaScope::Pg(pg), key: "k".into(), value: "v".into() }),
    )
    .unwrap();
    e.state_snapshot().encode()
}

fn decode_all(b: &[u8]) {
    let _ = decode_prelude(b, 42);
    let _ = decode_header(b, 42);
    let _ = Superblock::decode(b);
    let _ = Slot::decode(b, 42);
    if let Ok(st) = State::decode(b, GEO) {
        // Whatever decodes must re-encode to something that decodes to the same state.
        assert_eq!(State::decode(&st.encode(), GEO).unwrap(), st);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&b);
    }

    #[test]
    fn mutated_valid_structures_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let slot = Slot { uuid: 42, gen: 1, seq: 2, head: LogPos { seg: 1, off: 0 }, next_seg: 2, blob_len: 10, blob_crc: 1, blob_segs: vec![0] }.encode();
        let sb = Superblock { uuid: 42, segment_size: 65536, segment_count: 8 }.encode();
        for base in [sample_header(), sample_state(), slot, sb] {
            let mut b = base.clone();
            for (i, v) in &flips {
                let i = i.index(b.len());
                b[i] ^= v | 1;
            }
            decode_all(&b);
            decode_all(&b[..cut.index(b.len() + 1)]);
            decode_all(&base[..cut.index(base.len() + 1)]);
        }
    }
}

#[test]
fn state_blob_round_trips() {
    let b = sample_state();
    let geo = Geometry { seg_blocks: 16, seg_count: 8 };
    let st = State::decode(&b, geo).unwrap();
    assert_eq!(st.encode(), b);
}

#[test]
fn state_blob_with_block_outside_device_is_rejected() {
    let b = sample_state();
    let tiny = Geometry { seg_blocks: 16, seg_count: 1 };
    assert!(State::decode(&b, tiny).is_err(), "references into segments the device does not have");
}

/// Writes one valid encoding per decoder into `$TESSERA_WRITE_FUZZ_SEEDS/<target>/` so the
/// fuzzers start from the current format (run by `scripts/fuzz.sh`); a no-op otherwise.
#[test]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("TESSERA_WRITE_FUZZ_SEEDS") else { return };
    let slot =
        Slot { uuid: 42, gen: 1, seq: 2, head: LogPos { seg: 1, off: 0 }, next_seg: 2, blob_len: 10, blob_crc: 1, blob_segs: vec![0] };
    let seeds = [
        ("batch_header", sample_header()),
        ("checkpoint_slot", slot.encode()),
        ("superblock", Superblock { uuid: 42, segment_size: 65536, segment_count: 8 }.encode()),
        ("state_blob", sample_state()),
    ];
    for (target, bytes) in seeds {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("seed-valid"), bytes).unwrap();
    }
}
