//! `Engine::data_blocks`: the object data blocks a corruption test may flip bits in. Every
//! listed block is checksummed on read, so a flipped bit there makes reads of exactly that
//! object version (and the versions sharing the block) fail with `EngineError::Checksum`.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use tessera_engine::state::DataBlock;
use tessera_engine::*;

const PG: PgId = PgId::new(2, 5);
const VOL: u64 = 11;

fn tagged(tag: u8, blocks: usize) -> Bytes {
    Bytes::from((0..blocks * BLOCK_SIZE).map(|i| tag ^ (i % 249) as u8).collect::<Vec<u8>>())
}

fn setup() -> (Arc<FaultDevice>, Engine) {
    let dev = Arc::new(FaultDevice::new(32 << 20, 9));
    let e = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    // Object 0: 3 blocks, then snapshot 4 frozen, then block 1 of the head overwritten.
    e.commit(Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(VOL, 0), offset: 0, data: tagged(1, 3) })).unwrap();
    e.commit(Txn::new().with(Op::Preserve { pg: PG, volume: VOL, object: 0, snap: 4 }).with(Op::Write {
        pg: PG,
        key: ObjectKey::head(VOL, 0),
        offset: BLOCK,
        data: tagged(2, 1),
    }))
    .unwrap();
    // Object 7 elsewhere in the object, in another PG; and metadata, which is never listed.
    let other = PgId::new(2, 6);
    e.commit(Txn::new().with(Op::Write { pg: other, key: ObjectKey::head(VOL, 7), offset: 8 * BLOCK, data: tagged(3, 1) })).unwrap();
    e.commit(Txn::new().with(Op::MetaPut { scope: MetaScope::Pg(PG), key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") }))
        .unwrap();
    (dev, e)
}

#[test]
fn lists_every_version_block_with_its_device_offset() {
    let (dev, e) = setup();
    let blocks = e.data_blocks();
    let head = ObjectKey::head(VOL, 0);
    let frozen = ObjectKey::at_snap(VOL, 0, 4);
    let got: Vec<(PgId, ObjectKey, u64)> = blocks.iter().map(|b| (b.pg, b.key, b.offset)).collect();
    let want = vec![
        (PG, head, 0),
        (PG, head, BLOCK),
        (PG, head, 2 * BLOCK),
        (PG, frozen, 0),
        (PG, frozen, BLOCK),
        (PG, frozen, 2 * BLOCK),
        (PgId::new(2, 6), ObjectKey::head(VOL, 7), 8 * BLOCK),
    ];
    let sorted: BTreeSet<_> = got.iter().copied().collect();
    assert_eq!(sorted.into_iter().collect::<Vec<_>>(), want.into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>());
    assert_eq!(got.len(), 7);
    let phys = |key, offset| blocks.iter().find(|b| b.key == key && b.offset == offset).unwrap().device_offset;
    // Snapshots share unchanged blocks; the overwritten one moved.
    assert_eq!(phys(head, 0), phys(frozen, 0));
    assert_eq!(phys(head, 2 * BLOCK), phys(frozen, 2 * BLOCK));
    assert_ne!(phys(head, BLOCK), phys(frozen, BLOCK));
    for b in &blocks {
        assert_eq!(b.device_offset % BLOCK, 0);
    }
    // Recovery (replay, then from a checkpoint) rebuilds the same listing.
    e.close();
    let e = Engine::open(dev.clone(), EngineConfig::default()).unwrap();
    assert_eq!(e.data_blocks(), blocks);
    e.checkpoint().unwrap();
    e.close();
    assert_eq!(Engine::open(dev, EngineConfig::default()).unwrap().data_blocks(), blocks);
}

#[test]
fn a_bit_flipped_at_a_listed_offset_fails_the_read_with_checksum() {
    let (dev, e) = setup();
    let blocks: Vec<DataBlock> = e.data_blocks();
    let head = ObjectKey::head(VOL, 0);
    let frozen = ObjectKey::at_snap(VOL, 0, 4);
    // The overwritten head block: only the head's read fails.
    let target = *blocks.iter().find(|b| b.key == head && b.offset == BLOCK).unwrap();
    dev.flip_bit(target.device_offset + 123, 3);
    match e.read(PG, head, 0, 3 * BLOCK) {
        Err(EngineError::Checksum { pg, key, offset, phys }) => {
            assert_eq!((pg, key, offset, phys * BLOCK), (PG, head, BLOCK, target.device_offset));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(e.read(PG, frozen, 0, 3 * BLOCK).unwrap(), tagged(1, 3)[..], "the snapshot does not share that block");
    // A shared block: both versions fail.
    let shared = *blocks.iter().find(|b| b.key == frozen && b.offset == 2 * BLOCK).unwrap();
    dev.flip_bit(shared.device_offset, 0);
    assert!(matches!(e.read(PG, frozen, 2 * BLOCK, BLOCK), Err(EngineError::Checksum { .. })));
    assert!(matches!(e.read(PG, head, 2 * BLOCK, BLOCK), Err(EngineError::Checksum { .. })));
    // Untouched blocks still read.
    assert_eq!(e.read(PG, head, 0, BLOCK).unwrap(), tagged(1, 3)[..BLOCK_SIZE]);
    // Every listed block is checked: flipping any of them is detected.
    let (dev, e) = setup();
    for b in e.data_blocks() {
        dev.flip_bit(b.device_offset + 4095, 7);
        let r = e.read(b.pg, b.key, b.offset, BLOCK);
        assert!(matches!(r, Err(EngineError::Checksum { .. })), "{b:?}: {r:?}");
        dev.flip_bit(b.device_offset + 4095, 7);
        assert!(e.read(b.pg, b.key, b.offset, BLOCK).is_ok());
    }
}

/// A bit flipped in a data block of a batch that recovery replays (written after the last
/// checkpoint) must not silently drop that batch and every later one (for a Raft replica:
/// entries and votes it acknowledged): a batch followed by a valid batch was synced, so
/// recovery replays it and reads of the bad block fail with `Checksum`.
#[test]
fn a_corrupt_block_in_the_replayed_log_does_not_drop_later_transactions() {
    let (dev, e) = setup();
    let later = ObjectKey::head(VOL, 99);
    e.commit(Txn::new().with(Op::Write { pg: PG, key: later, offset: 0, data: tagged(9, 1) })).unwrap();
    let target = *e.data_blocks().iter().find(|b| b.key == ObjectKey::head(VOL, 0) && b.offset == BLOCK).unwrap();
    e.close();
    dev.flip_bit(target.device_offset + 1, 1);
    let e = Engine::open(dev, EngineConfig::default()).expect("recovery keeps the log");
    assert!(e.read(PG, later, 0, BLOCK).unwrap() == tagged(9, 1)[..], "a later acknowledged write was dropped");
    assert!(matches!(e.read(PG, ObjectKey::head(VOL, 0), BLOCK, BLOCK), Err(EngineError::Checksum { .. })));
}
