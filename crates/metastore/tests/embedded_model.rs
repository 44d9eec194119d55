//! Property test: the embedded backend behaves like a trivial in-memory model for random
//! sequences of small transactions (results, revisions, full contents, watch history, and
//! contents after reopen).

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use tessera_metastore::{Compare, EmbeddedStore, MetaStore, MetaStoreError, Txn, TxnOp, WatchEvent};

const KEYS: [&[u8]; 4] = [b"a", b"ab", b"b", b"c"];
const VALUES: [&[u8]; 3] = [b"", b"x", b"yy"];

#[derive(Clone, Debug)]
enum GenCompare {
    /// ModRevision against the key's current mod_revision in the model (so it holds).
    ModRevCurrent(usize),
    ModRev(usize, u64),
    Absent(usize),
    ValueEquals(usize, usize),
}

#[derive(Clone, Debug)]
struct GenTxn {
    compares: Vec<GenCompare>,
    success: Vec<(usize, Option<usize>)>,
    failure: Vec<(usize, Option<usize>)>,
}

fn gen_txn() -> impl Strategy<Value = GenTxn> {
    let cmp = prop_oneof![
        (0..KEYS.len()).prop_map(GenCompare::ModRevCurrent),
        (0..KEYS.len(), 0u64..6).prop_map(|(k, r)| GenCompare::ModRev(k, r)),
        (0..KEYS.len()).prop_map(GenCompare::Absent),
        (0..KEYS.len(), 0..VALUES.len()).prop_map(|(k, v)| GenCompare::ValueEquals(k, v)),
    ];
    let op = (0..KEYS.len(), proptest::option::weighted(0.7, 0..VALUES.len()));
    (prop::collection::vec(cmp, 0..3), prop::collection::vec(op.clone(), 0..4), prop::collection::vec(op, 0..3))
        .prop_map(|(compares, success, failure)| GenTxn { compares, success, failure })
}

#[derive(Default)]
struct Model {
    kv: BTreeMap<Vec<u8>, (Bytes, u64)>,
    revision: u64,
    events: Vec<WatchEvent>,
}

fn to_ops(ops: &[(usize, Option<usize>)]) -> Vec<TxnOp> {
    ops.iter()
        .map(|&(k, v)| match v {
            Some(v) => TxnOp::Put { key: KEYS[k].to_vec(), value: Bytes::from_static(VALUES[v]) },
            None => TxnOp::Delete { key: KEYS[k].to_vec() },
        })
        .collect()
}

fn has_dup(ops: &[(usize, Option<usize>)]) -> bool {
    let mut keys: Vec<usize> = ops.iter().map(|o| o.0).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

impl Model {
    fn materialize(&self, g: &GenTxn) -> Txn {
        let compares = g
            .compares
            .iter()
            .map(|c| match *c {
                GenCompare::ModRevCurrent(k) => {
                    Compare::ModRevision { key: KEYS[k].to_vec(), revision: self.kv.get(KEYS[k]).map_or(0, |e| e.1) }
                }
                GenCompare::ModRev(k, r) => Compare::ModRevision { key: KEYS[k].to_vec(), revision: r },
                GenCompare::Absent(k) => Compare::Absent { key: KEYS[k].to_vec() },
                GenCompare::ValueEquals(k, v) => Compare::ValueEquals { key: KEYS[k].to_vec(), value: Bytes::from_static(VALUES[v]) },
            })
            .collect();
        Txn { compares, success: to_ops(&g.success), failure: to_ops(&g.failure) }
    }

    /// Returns (succeeded, revision) or None if the txn is invalid.
    fn apply(&mut self, t: &Txn, g: &GenTxn) -> Option<(bool, u64)> {
        if has_dup(&g.success) || has_dup(&g.failure) {
            return None;
        }
        let holds = t.compares.iter().all(|c| match c {
            Compare::ModRevision { key, revision } => self.kv.get(key).map_or(0, |e| e.1) == *revision,
            Compare::Absent { key } => !self.kv.contains_key(key),
            Compare::ValueEquals { key, value } => self.kv.get(key).is_some_and(|e| e.0 == *value),
        });
        let rev = self.revision + 1;
        let mut changed = false;
        for op in if holds { &t.success } else { &t.failure } {
            match op {
                TxnOp::Put { key, value } => {
                    self.kv.insert(key.clone(), (value.clone(), rev));
                    self.events.push(WatchEvent::Put { key: key.clone(), value: value.clone(), mod_revision: rev });
                    changed = true;
                }
                TxnOp::Delete { key } => {
                    if self.kv.remove(key).is_some() {
                        self.events.push(WatchEvent::Delete { key: key.clone(), revision: rev });
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.revision = rev;
        }
        Some((holds, self.revision))
    }

    fn contents(&self) -> Vec<(Vec<u8>, Bytes, u64)> {
        self.kv.iter().map(|(k, (v, r))| (k.clone(), v.clone(), *r)).collect()
    }
}

async fn contents(s: &EmbeddedStore) -> Vec<(Vec<u8>, Bytes, u64)> {
    s.range(b"").await.unwrap().into_iter().map(|(k, v)| (k, v.value, v.mod_revision)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn embedded_matches_model(txns in prop::collection::vec(gen_txn(), 1..16)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("meta.redb");
            let s = EmbeddedStore::open(&path).await.unwrap();
            let mut watch = s.watch(b"", 1).await.unwrap();
            let mut model = Model::default();
            for g in &txns {
                let t = model.materialize(g);
                let got = s.txn(t.clone()).await;
                match (model.apply(&t, g), got) {
                    (None, Err(MetaStoreError::InvalidArgument(_))) => {}
                    (Some((ok, rev)), Ok(r)) => {
                        assert_eq!((r.succeeded, r.revision), (ok, rev), "txn {t:?}");
                    }
                    (want, got) => panic!("txn {t:?}: model {want:?}, store {got:?}"),
                }
                assert_eq!(contents(&s).await, model.contents());
                assert_eq!(s.current_revision().await.unwrap(), model.revision);
            }
            for want in &model.events {
                let got = watch.next().await.unwrap().unwrap();
                assert_eq!(&got, want);
            }
            drop(watch);
            drop(s);
            let s = EmbeddedStore::open(&path).await.unwrap();
            assert_eq!(contents(&s).await, model.contents());
            assert_eq!(s.current_revision().await.unwrap(), model.revision);
            // Prefix ranges agree with the model too.
            let a: Vec<_> = contents(&s).await.into_iter().filter(|(k, _, _)| k.starts_with(b"a")).collect();
            let got: Vec<_> = s.range(b"a").await.unwrap().into_iter().map(|(k, v)| (k, v.value, v.mod_revision)).collect();
            assert_eq!(got, a);
        });
    }
}
