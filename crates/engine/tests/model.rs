//! Model-based property test of the whole engine (object store + PG logs + metadata) against
//! a plain in-memory model, with random crash/recover cycles on the fault-injecting device.
//!
//! Crash points covered: after an acknowledged commit (must match the model exactly), during
//! a batch's sync or write (the in-flight transaction is either wholly present or wholly
//! absent), and during a checkpoint or cleaning (logical state unchanged).

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_engine::*;

const PGS: u32 = 2;
const KEYS: u64 = 3;
const BLOCKS: u32 = 8;

#[derive(Clone, Debug)]
enum Step {
    Write { pg: u32, key: u8, block: u32, n: u32 },
    Zero { pg: u32, key: u8, block: u32, n: u32 },
    Delete { pg: u32, key: u8 },
    Clone { pg: u32, src: u8, dst: u8 },
    Append { pg: u32, back: u64, count: u64, blocks: u32, term: u64 },
    Truncate { pg: u32, back: u64 },
    Compact { pg: u32, back: u64 },
    Apply { pg: u32, back: u64, key: u8, block: u32 },
    MetaPut { pg: Option<u32>, key: u8 },
    MetaDel { pg: Option<u32>, key: u8 },
    DropPg { pg: u32 },
    Checkpoint,
    Clean,
    Reopen,
    CrashAfterAck,
    CrashDuringSync(Box<Step>),
    CrashDuringWrite(Box<Step>),
    CrashDuringCheckpoint,
}

fn key_of(k: u8) -> ObjectKey {
    if k as u64 >= KEYS {
        ObjectKey::at_snap(1, (k as u64) % KEYS, 7)
    } else {
        ObjectKey::head(1, k as u64)
    }
}

fn data_step() -> impl Strategy<Value = Step> {
    let pg = 0..PGS;
    let key = 0u8..(KEYS as u8 * 2);
    prop_oneof![
        4 => (pg.clone(), key.clone(), 0..BLOCKS, 1u32..4).prop_map(|(pg, key, block, n)| Step::Write { pg, key, block, n }),
        1 => (pg.clone(), key.clone(), 0..BLOCKS, 1u32..4).prop_map(|(pg, key, block, n)| Step::Zero { pg, key, block, n }),
        1 => (pg.clone(), key.clone()).prop_map(|(pg, key)| Step::Delete { pg, key }),
        1 => (pg.clone(), key.clone(), key.clone()).prop_map(|(pg, src, dst)| Step::Clone { pg, src, dst }),
        4 => (pg.clone(), 0u64..3, 1u64..4, 0u32..3, 1u64..4).prop_map(|(pg, back, count, blocks, term)| Step::Append { pg, back, count, blocks, term }),
        1 => (pg.clone(), 0u64..4).prop_map(|(pg, back)| Step::Truncate { pg, back }),
        1 => (pg.clone(), 0u64..5).prop_map(|(pg, back)| Step::Compact { pg, back }),
        3 => (pg.clone(), 0u64..4, key.clone(), 0..BLOCKS).prop_map(|(pg, back, key, block)| Step::Apply { pg, back, key, block }),
        1 => (proptest::option::of(pg.clone()), 0u8..3).prop_map(|(pg, key)| Step::MetaPut { pg, key }),
        1 => (proptest::option::of(pg.clone()), 0u8..3).prop_map(|(pg, key)| Step::MetaDel { pg, key }),
        1 => pg.prop_map(|pg| Step::DropPg { pg }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => data_step(),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Clean),
        1 => Just(Step::Reopen),
        1 => Just(Step::CrashAfterAck),
        1 => data_step().prop_map(|s| Step::CrashDuringSync(Box::new(s))),
        1 => data_step().prop_map(|s| Step::CrashDuringWrite(Box::new(s))),
        1 => Just(Step::CrashDuringCheckpoint),
    ]
}

/// The model: what the engine must contain.
#[derive(Clone, Debug, Default, PartialEq)]
struct Log {
    compacted: u64,
    compacted_term: u64,
    entries: Vec<(u64, Bytes, Vec<u8>)>,
}

impl Log {
    fn last(&self) -> u64 {
        self.compacted + self.entries.len() as u64
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    objects: BTreeMap<(u32, ObjectKey), BTreeMap<u32, Vec<u8>>>,
    logs: BTreeMap<u32, Log>,
    meta: BTreeMap<(Option<u32>, u8), Vec<u8>>,
}

fn scope(pg: Option<u32>) -> MetaScope {
    pg.map_or(MetaScope::Global, |p| MetaScope::Pg(PgId::new(0, p)))
}

/// Translates a step into a transaction and applies it to the model; `None` when the model
/// says the engine must reject it (the model is then unchanged).
fn plan(m: &mut Model, s: &Step, stamp: &mut u8) -> (Txn, bool) {
    let mut fill = |n: u32| -> Vec<u8> {
        *stamp = stamp.wrapping_add(1).max(1);
        (0..n as usize * BLOCK_SIZE).map(|i| stamp.wrapping_add((i / BLOCK_SIZE) as u8 * 31)).collect()
    };
    let pgid = |p: u32| PgId::new(0, p);
    match s {
        Step::Write { pg, key, block, n } => {
            let data = fill(*n);
            let o = m.objects.entry((*pg, key_of(*key))).or_default();
            for i in 0..*n {
                o.insert(block + i, data[i as usize * BLOCK_SIZE..(i as usize + 1) * BLOCK_SIZE].to_vec());
            }
            (Txn::new().with(Op::Write { pg: pgid(*pg), key: key_of(*key), offset: *block as u64 * BLOCK, data: data.into() }), true)
        }
        Step::Zero { pg, key, block, n } => {
            let o = m.objects.entry((*pg, key_of(*key))).or_default();
            for i in 0..*n {
                o.remove(&(block + i));
            }
            (
                Txn::new().with(Op::WriteZeroes {
                    pg: pgid(*pg),
                    key: key_of(*key),
                    offset: *block as u64 * BLOCK,
                    len: *n as u64 * BLOCK,
                }),
                true,
            )
        }
        Step::Delete { pg, key } => {
            m.objects.remove(&(*pg, key_of(*key)));
            (Txn::new().with(Op::Delete { pg: pgid(*pg), key: key_of(*key) }), true)
        }
        Step::Clone { pg, src, dst } => {
            match m.objects.get(&(*pg, key_of(*src))).cloned() {
                Some(o) => m.objects.insert((*pg, key_of(*dst)), o),
                None => m.objects.remove(&(*pg, key_of(*dst))),
            };
            (Txn::new().with(Op::Clone { pg: pgid(*pg), src: key_of(*src), dst: key_of(*dst) }), true)
        }
        Step::Append { pg, back, count, blocks, term } => {
            let log = m.logs.entry(*pg).or_default();
            let first = (log.last() + 1).saturating_sub(*back);
            let entries: Vec<LogEntry> = (0..*count)
                .map(|i| {
                    let data: Bytes = fill(*blocks).into();
                    // Every other entry comes with its writer's checksums (end to end).
                    let crcs = match i % 2 {
                        0 => data.chunks(BLOCK_SIZE).map(crc32c::crc32c).collect(),
                        _ => Vec::new(),
                    };
                    LogEntry { index: first + i, term: *term, meta: Bytes::from(vec![first as u8; (i % 3) as usize]), data, crcs }
                })
                .collect();
            let ok = first > log.compacted && first >= 1;
            if ok {
                log.entries.truncate((first - log.compacted - 1) as usize);
                log.entries.extend(entries.iter().map(|e| (e.term, e.meta.clone(), e.data.to_vec())));
            }
            (Txn::new().with(Op::LogAppend { pg: pgid(*pg), entries }), ok)
        }
        Step::Truncate { pg, back } => {
            let log = m.logs.entry(*pg).or_default();
            let from = (log.last() + 1).saturating_sub(*back);
            let ok = from > log.compacted;
            if ok {
                log.entries.truncate((from - log.compacted - 1) as usize);
            }
            (Txn::new().with(Op::LogTruncate { pg: pgid(*pg), from }), ok)
        }
        Step::Compact { pg, back } => {
            let log = m.logs.entry(*pg).or_default();
            // back 0 compacts one past the end (snapshot install), others inside the log.
            let upto = (log.last() + 1).saturating_sub(*back);
            let term = if upto > log.compacted && upto <= log.last() { log.entries[(upto - log.compacted - 1) as usize].0 } else { 9 };
            let ok = upto >= log.compacted;
            if ok {
                let n = ((upto - log.compacted) as usize).min(log.entries.len());
                log.entries.drain(..n);
                log.compacted = upto;
                log.compacted_term = term;
            }
            (Txn::new().with(Op::LogCompact { pg: pgid(*pg), upto, term }), ok)
        }
        Step::Apply { pg, back, key, block } => {
            let log = m.logs.entry(*pg).or_default();
            let idx = log.last().saturating_sub(*back);
            let entry = if idx > log.compacted { log.entries.get((idx - log.compacted - 1) as usize).cloned() } else { None };
            let nblocks = entry.as_ref().map_or(1, |e| (e.2.len() / BLOCK_SIZE).max(1)) as u32;
            let ok = entry.as_ref().is_some_and(|e| !e.2.is_empty());
            if let (true, Some(e)) = (ok, &entry) {
                let o = m.objects.entry((*pg, key_of(*key))).or_default();
                for i in 0..nblocks {
                    o.insert(block + i, e.2[i as usize * BLOCK_SIZE..(i as usize + 1) * BLOCK_SIZE].to_vec());
                }
            }
            let op = Op::ApplyWrite {
                pg: pgid(*pg),
                key: key_of(*key),
                offset: *block as u64 * BLOCK,
                entry: idx,
                entry_offset: 0,
                len: nblocks as u64 * BLOCK,
            };
            (Txn::new().with(op), ok)
        }
        Step::MetaPut { pg, key } => {
            let v = fill(0);
            let v = vec![*stamp; (*stamp % 5) as usize + v.len()];
            m.meta.insert((*pg, *key), v.clone());
            (Txn::new().with(Op::MetaPut { scope: scope(*pg), key: Bytes::from(vec![*key]), value: v.into() }), true)
        }
        Step::MetaDel { pg, key } => {
            m.meta.remove(&(*pg, *key));
            (Txn::new().with(Op::MetaDelete { scope: scope(*pg), key: Bytes::from(vec![*key]) }), true)
        }
        Step::DropPg { pg } => {
            m.objects.retain(|(p, _), _| p != pg);
            m.logs.remove(pg);
            m.meta.retain(|(p, _), _| *p != Some(*pg));
            (Txn::new().with(Op::DropPg { pg: pgid(*pg) }), true)
        }
        _ => unreachable!("control steps are not planned"),
    }
}

fn check(e: &Engine, m: &Model) -> Result<(), TestCaseError> {
    for pg in 0..PGS {
        let id = PgId::new(0, pg);
        let listed: Vec<ObjectKey> = e.list_objects(id).into_iter().map(|(k, _)| k).collect();
        let expect: Vec<ObjectKey> = m.objects.keys().filter(|(p, _)| *p == pg).map(|(_, k)| *k).collect();
        prop_assert_eq!(&listed, &expect, "objects of pg {}", pg);
        for k in &expect {
            let o = &m.objects[&(pg, *k)];
            let got = e.read(id, *k, 0, (BLOCKS + 4) as u64 * BLOCK).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for b in 0..BLOCKS + 4 {
                let want = o.get(&b).cloned().unwrap_or_else(|| vec![0; BLOCK_SIZE]);
                prop_assert!(got[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE] == want[..], "pg {} {} block {}", pg, k, b);
            }
            prop_assert_eq!(e.object_info(id, *k).map(|i| i.allocated_blocks), Some(o.len() as u64));
        }
        let log = m.logs.get(&pg).cloned().unwrap_or_default();
        match e.log_bounds(id) {
            None => prop_assert!(log == Log::default(), "pg {} log missing", pg),
            Some(b) => {
                prop_assert_eq!((b.compacted, b.last), (log.compacted, log.last()), "bounds of pg {}", pg);
                prop_assert_eq!(b.compacted_term, log.compacted_term);
                let got = e.log_entries(id, log.compacted + 1, log.last() + 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (g, w) in got.iter().zip(&log.entries) {
                    prop_assert_eq!((g.term, &g.meta, &g.data[..]), (w.0, &w.1, &w.2[..]));
                }
            }
        }
    }
    for pg in [None, Some(0), Some(1)] {
        let got: Vec<(Bytes, Bytes)> = e.meta_scan(scope(pg));
        let want: Vec<(Bytes, Bytes)> =
            m.meta.iter().filter(|((p, _), _)| *p == pg).map(|((_, k), v)| (Bytes::from(vec![*k]), Bytes::from(v.clone()))).collect();
        prop_assert_eq!(got, want, "meta of {:?}", pg);
    }
    prop_assert_eq!(e.stats().apply_errors, 0);
    Ok(())
}

fn reopen(dev: &Arc<FaultDevice>) -> Engine {
    Engine::open(dev.clone(), cfg()).expect("recovery must succeed after any crash")
}

fn cfg() -> EngineConfig {
    EngineConfig { checkpoint_bytes: 256 << 10 }
}

fn run(steps: Vec<Step>, seed: u64) -> Result<(), TestCaseError> {
    let dev = Arc::new(FaultDevice::new(65536 + 48 * 65536, seed));
    let mut e = Engine::create(dev.clone(), FormatOptions { segment_size: 65536 }, cfg()).unwrap();
    let mut m = Model::default();
    let mut stamp = 0u8;
    for s in &steps {
        match s {
            Step::Checkpoint => e.checkpoint().map_err(|x| TestCaseError::fail(x.to_string()))?,
            Step::Clean => {
                // A checkpoint first makes all written segments eligible for cleaning.
                e.checkpoint().map_err(|x| TestCaseError::fail(x.to_string()))?;
                e.clean().map_err(|x| TestCaseError::fail(x.to_string()))?
            }
            Step::Reopen => {
                drop(e);
                e = reopen(&dev);
            }
            Step::CrashAfterAck => {
                dev.power_cut();
                drop(e);
                dev.restart();
                e = reopen(&dev);
            }
            Step::CrashDuringCheckpoint => {
                dev.fail_next_sync();
                prop_assert!(e.checkpoint().is_err());
                dev.power_cut();
                drop(e);
                dev.restart();
                e = reopen(&dev);
            }
            Step::CrashDuringSync(inner) | Step::CrashDuringWrite(inner) => {
                let before = m.clone();
                let (txn, ok) = plan(&mut m, inner, &mut stamp);
                if !ok {
                    // Rejected before it reaches the device: nothing to crash in.
                    prop_assert!(e.commit(txn).is_err());
                    m = before;
                    check(&e, &m)?;
                    continue;
                }
                if matches!(s, Step::CrashDuringSync(_)) {
                    dev.fail_next_sync()
                } else {
                    dev.fail_next_write()
                }
                let r = e.commit(txn);
                prop_assert!(r.is_err(), "commit must fail when its write or sync fails");
                // The engine refuses writes from now on.
                let refused = e.commit(Txn::new().with(Op::DropPg { pg: PgId::new(9, 9) }));
                prop_assert!(matches!(refused, Err(EngineError::Failed(_))), "after a failed batch: {:?}", refused);
                dev.power_cut();
                drop(e);
                dev.restart();
                e = reopen(&dev);
                // The unacknowledged transaction is all there or not at all.
                let with = m.clone();
                if check(&e, &with).is_err() {
                    check(&e, &before)?;
                    m = before;
                } else {
                    m = with;
                }
            }
            data => {
                let before = m.clone();
                let (txn, ok) = plan(&mut m, data, &mut stamp);
                let r = e.commit(txn);
                prop_assert_eq!(r.is_ok(), ok, "step {:?}: engine said {:?}", data, r);
                if !ok {
                    m = before;
                }
            }
        }
        check(&e, &m)?;
    }
    // Everything acknowledged survives one more clean restart.
    drop(e);
    let e = reopen(&dev);
    check(&e, &m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_model_across_crashes(steps in proptest::collection::vec(step(), 1..60), seed in any::<u64>()) {
        run(steps, seed)?;
    }
}

/// Long sequence with tiny segments: forces segment switches, automatic checkpoints and the
/// cleaner; acknowledged data must survive every crash.
#[test]
fn long_random_run_exercises_cleaner_and_checkpoints() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e55e7a);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let steps: Vec<Step> = (0..600)
        .map(|_| {
            if rng.gen_ratio(1, 60) {
                Step::CrashDuringSync(Box::new(Step::Write { pg: 0, key: 0, block: 0, n: 2 }))
            } else {
                step().new_tree(&mut runner).unwrap().current()
            }
        })
        .collect();
    run(steps, 99).unwrap();
}
