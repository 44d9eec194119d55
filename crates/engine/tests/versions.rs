//! Model-based property test of object versions (snapshot copy-on-write, trimming deleted
//! snapshots, rollback, volume drop) against a model that copies whole objects per
//! snapshot, including checkpoint + reopen (markers survive the checkpoint codec and replay).

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_engine::pgmeta;
use tessera_engine::*;

const OBJECTS: u64 = 3;
const BLOCKS: u64 = 4;
const VOL: u64 = 7;
const PG: PgId = PgId::new(1, 0);

#[derive(Clone, Debug)]
enum Step {
    Write { obj: u64, block: u64, tag: u8 },
    Zero { obj: u64, block: u64 },
    Delete { obj: u64 },
    Snapshot,
    DeleteSnapshot(usize),
    Rollback(usize),
    Reopen,
    DropVolume,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..OBJECTS, 0..BLOCKS, 1u8..255).prop_map(|(obj, block, tag)| Step::Write { obj, block, tag }),
        1 => (0..OBJECTS, 0..BLOCKS).prop_map(|(obj, block)| Step::Zero { obj, block }),
        1 => (0..OBJECTS).prop_map(|obj| Step::Delete { obj }),
        2 => Just(Step::Snapshot),
        1 => (0usize..8).prop_map(Step::DeleteSnapshot),
        1 => (0usize..8).prop_map(Step::Rollback),
        1 => Just(Step::Reopen),
        1 => Just(Step::DropVolume),
    ]
}

/// One object: `None` absent, else a tag per block (0 = zeros).
type Obj = Option<Vec<u8>>;
type Heads = BTreeMap<u64, Obj>;

struct Model {
    heads: Heads,
    snaps: BTreeMap<u64, Heads>,
    next_id: u64,
}

impl Model {
    fn ctx(&self) -> u64 {
        self.snaps.keys().next_back().copied().unwrap_or(0)
    }
    fn pick(&self, i: usize) -> Option<u64> {
        let ids: Vec<u64> = self.snaps.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }
}

fn block_of(tag: u8) -> Bytes {
    Bytes::from(vec![tag; BLOCK_SIZE])
}

fn check(engine: &Engine, m: &Model) -> Result<(), TestCaseError> {
    let views = std::iter::once((SNAP_HEAD, &m.heads)).chain(m.snaps.iter().map(|(id, h)| (*id, h)));
    for (snap, heads) in views {
        for obj in 0..OBJECTS {
            let got = engine.read_version(PG, ObjectKey::at_snap(VOL, obj, snap), 0, BLOCKS * BLOCK).unwrap();
            let want = heads.get(&obj).cloned().flatten();
            match (got, want) {
                (None, None) => {}
                (Some(data), Some(tags)) => {
                    for (b, tag) in tags.iter().enumerate() {
                        let chunk = &data[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE];
                        prop_assert!(chunk.iter().all(|x| x == tag), "snap {snap:x} obj {obj} block {b}: want {tag}");
                    }
                }
                (got, want) => prop_assert!(false, "snap {snap:x} obj {obj}: present {} want present {}", got.is_some(), want.is_some()),
            }
        }
    }
    Ok(())
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let mut engine = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    let mut m = Model { heads: BTreeMap::new(), snaps: BTreeMap::new(), next_id: 1 };
    for s in steps {
        let ctx = m.ctx();
        let preserve = |obj| Op::Preserve { pg: PG, volume: VOL, object: obj, snap: ctx };
        match s {
            Step::Write { obj, block, tag } => {
                let key = ObjectKey::head(VOL, obj);
                engine
                    .commit(Txn::new().with(preserve(obj)).with(Op::Write { pg: PG, key, offset: block * BLOCK, data: block_of(tag) }))
                    .unwrap();
                m.heads.entry(obj).or_insert(None).get_or_insert_with(|| vec![0; BLOCKS as usize])[block as usize] = tag;
            }
            Step::Zero { obj, block } => {
                let key = ObjectKey::head(VOL, obj);
                engine
                    .commit(Txn::new().with(preserve(obj)).with(Op::WriteZeroes { pg: PG, key, offset: block * BLOCK, len: BLOCK }))
                    .unwrap();
                m.heads.entry(obj).or_insert(None).get_or_insert_with(|| vec![0; BLOCKS as usize])[block as usize] = 0;
            }
            Step::Delete { obj } => {
                engine.commit(Txn::new().with(preserve(obj)).with(Op::Delete { pg: PG, key: ObjectKey::head(VOL, obj) })).unwrap();
                m.heads.insert(obj, None);
            }
            Step::Snapshot => {
                m.snaps.insert(m.next_id, m.heads.clone());
                m.next_id += 1;
            }
            Step::DeleteSnapshot(i) => {
                let Some(id) = m.pick(i) else { continue };
                m.snaps.remove(&id);
                let keep: Vec<u64> = m.snaps.keys().copied().collect();
                engine.commit(Txn::new().with(Op::TrimVersions { pg: PG, volume: VOL, keep, horizon: m.next_id })).unwrap();
            }
            Step::Rollback(i) => {
                let Some(id) = m.pick(i) else { continue };
                engine.commit(Txn::new().with(Op::Rollback { pg: PG, volume: VOL, snap: id, seq: ctx })).unwrap();
                m.heads = m.snaps[&id].clone();
            }
            Step::Reopen => {
                engine.checkpoint().unwrap();
                drop(engine);
                engine = Engine::open(dev.clone(), EngineConfig::default()).unwrap();
            }
            Step::DropVolume => {
                engine.commit(Txn::new().with(Op::DropVolume { pg: PG, volume: VOL })).unwrap();
                m.heads.clear();
                m.snaps.clear();
            }
        }
        check(&engine, &m)?;
    }
    // Deleting every snapshot leaves only the heads' blocks referenced.
    engine.commit(Txn::new().with(Op::TrimVersions { pg: PG, volume: VOL, keep: vec![], horizon: u64::MAX })).unwrap();
    let usage: u64 = engine.volume_usage(PG).iter().map(|(_, u)| u.unique_blocks).sum();
    let head: u64 = engine.volume_usage(PG).iter().map(|(_, u)| u.head_blocks).sum();
    prop_assert_eq!(usage, head, "after trimming every snapshot only head blocks remain");
    prop_assert!(engine.list_markers(PG).is_empty(), "no markers without snapshots");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn versions_match_a_model_that_copies_every_snapshot(steps in prop::collection::vec(step(), 1..60)) {
        run(steps)?;
    }
}

#[test]
fn snapshot_space_is_shared_until_overwritten_and_freed_when_trimmed() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let engine = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    let key = ObjectKey::head(VOL, 0);
    let usage = |e: &Engine| e.volume_usage(PG)[0].1;
    engine.commit(Txn::new().with(Op::Write { pg: PG, key, offset: 0, data: Bytes::from(vec![1u8; 4 * BLOCK_SIZE]) })).unwrap();
    assert_eq!(usage(&engine).unique_blocks, 4);
    // Snapshot 5: the first overwrite freezes the head (shares its 4 blocks) and adds one.
    let pre = Op::Preserve { pg: PG, volume: VOL, object: 0, snap: 5 };
    engine.commit(Txn::new().with(pre).with(Op::Write { pg: PG, key, offset: 0, data: block_of(2) })).unwrap();
    assert_eq!(usage(&engine), VolumeUsage { objects: 1, head_blocks: 4, unique_blocks: 5 });
    // A second write under the same context does not freeze again.
    let pre = Op::Preserve { pg: PG, volume: VOL, object: 0, snap: 5 };
    engine.commit(Txn::new().with(pre).with(Op::Write { pg: PG, key, offset: BLOCK, data: block_of(3) })).unwrap();
    assert_eq!(usage(&engine).unique_blocks, 6);
    assert_eq!(engine.read_version(PG, ObjectKey::at_snap(VOL, 0, 5), 0, BLOCK).unwrap().unwrap()[0], 1);
    assert_eq!(engine.read_version(PG, ObjectKey::at_snap(VOL, 0, 3), 0, BLOCK).unwrap().unwrap()[0], 1, "older snapshots read it too");
    // Deleting snapshot 5 frees the two blocks only it held.
    engine.commit(Txn::new().with(Op::TrimVersions { pg: PG, volume: VOL, keep: vec![], horizon: u64::MAX })).unwrap();
    assert_eq!(usage(&engine).unique_blocks, 4);
    engine.commit(Txn::new().with(Op::DropVolume { pg: PG, volume: VOL })).unwrap();
    assert!(engine.volume_usage(PG).is_empty());
    assert_eq!(engine.live_blocks(), 0);
}

/// Regression (review): a trim whose keep list was read before a newer snapshot was taken
/// must not drop that snapshot's versions.
#[test]
fn a_trim_with_a_stale_keep_list_keeps_versions_past_its_horizon() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let engine = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    let key = ObjectKey::head(VOL, 0);
    let write = |snap, tag| {
        let pre = Op::Preserve { pg: PG, volume: VOL, object: 0, snap };
        engine.commit(Txn::new().with(pre).with(Op::Write { pg: PG, key, offset: 0, data: block_of(tag) })).unwrap();
    };
    write(0, 1);
    write(5, 2); // version 5 = tag 1
                 // Snapshot 9 is taken after the deleter read keep = [3] (next id then: 6).
    write(9, 3); // version 9 = tag 2
    engine.commit(Txn::new().with(Op::TrimVersions { pg: PG, volume: VOL, keep: vec![3], horizon: 6 })).unwrap();
    assert_eq!(engine.read_version(PG, ObjectKey::at_snap(VOL, 0, 9), 0, BLOCK).unwrap().unwrap()[0], 2);
    assert_eq!(engine.read_version(PG, ObjectKey::at_snap(VOL, 0, 3), 0, BLOCK).unwrap().unwrap()[0], 1);
}

/// A pinned image keeps reading the state it was taken at while the PG changes.
#[test]
fn a_pin_reads_the_state_at_its_index_while_the_pg_changes() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let engine = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    let key = ObjectKey::head(VOL, 0);
    engine.commit(Txn::new().with(Op::Write { pg: PG, key, offset: 0, data: block_of(1) }).with(pgmeta::put_applied(PG, 7))).unwrap();
    let (pin, applied) = engine.pin_pg(PG).unwrap();
    assert_eq!(applied, 7);
    let pre = Op::Preserve { pg: PG, volume: VOL, object: 0, snap: 4 };
    engine.commit(Txn::new().with(pre).with(Op::Write { pg: PG, key, offset: 0, data: block_of(2) })).unwrap();
    engine.commit(Txn::new().with(Op::Delete { pg: PG, key })).unwrap();
    engine.clean().unwrap();
    let listed = engine.pinned_objects(pin).unwrap();
    assert_eq!(listed.len(), 1, "the frozen version made after the pin is not in it");
    assert_eq!(engine.read_pinned(pin, key, 0, BLOCK).unwrap().unwrap()[0], 1);
    engine.unpin(pin);
    assert!(engine.pinned_objects(pin).is_none());
    assert!(engine.read_pinned(pin, key, 0, BLOCK).is_err());
}
