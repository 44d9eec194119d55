//! One conformance suite, run against both backends: every case in `cases` is a generic
//! async fn over `Arc<dyn MetaStore>`, and `conformance!` instantiates it once per backend.
//! The etcd instances run against a real `etcd` process (see `tessera_testkit::etcd`),
//! shared by all etcd tests of this binary, each test in its own key namespace.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_metastore::{
    Compare, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, MetaStore, MetaStoreError, Txn, TxnOp, Watch, WatchEvent,
};
use tessera_testkit::etcd::EtcdServer;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut Watch) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

async fn val(s: &dyn MetaStore, key: &str) -> Option<Bytes> {
    s.get(key.as_bytes()).await.unwrap().map(|v| v.value)
}

/// A put of `key=value` guarded by `fence` (how a leader writes).
fn fenced(fence: Compare, key: &str, value: &str) -> Txn {
    Txn { compares: vec![fence], success: vec![TxnOp::Put { key: key.as_bytes().to_vec(), value: b(value) }], failure: vec![] }
}

/// Waits (up to 5 s) until `key` is absent; releases after a drop happen in the background.
async fn wait_absent(s: &dyn MetaStore, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while val(s, key).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "key {key} still present after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Election TTL of the conformance cases: long enough never to expire during a case.
const TTL: Duration = Duration::from_secs(10);

/// Backend-independent cases.
mod cases {
    use super::*;

    pub async fn put_get_range_delete(s: Arc<dyn MetaStore>) {
        for (k, v) in [("c", "3"), ("b/2", "22"), ("a", "1"), ("b/1", "21"), ("bz", "x")] {
            assert!(s.txn(Txn::put(k, b(v))).await.unwrap().succeeded);
        }
        assert_eq!(val(&*s, "a").await, Some(b("1")));
        assert_eq!(val(&*s, "missing").await, None);
        let keys =
            |r: Vec<(Vec<u8>, tessera_metastore::Versioned)>| r.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
        assert_eq!(keys(s.range(b"b/").await.unwrap()), ["b/1", "b/2"]);
        assert_eq!(keys(s.range(b"").await.unwrap()), ["a", "b/1", "b/2", "bz", "c"]);
        assert_eq!(keys(s.range(b"nothing/").await.unwrap()), Vec::<String>::new());
        let range = s.range(b"b/").await.unwrap();
        assert_eq!(range[0].1.value, b("21"));
        assert!(s.txn(Txn::delete("b/1")).await.unwrap().succeeded);
        assert_eq!(val(&*s, "b/1").await, None);
        assert_eq!(keys(s.range(b"b").await.unwrap()), ["b/2", "bz"]);
        // Deleting an absent key is not an error and changes nothing.
        let before = s.get(b"b/2").await.unwrap();
        assert!(s.txn(Txn::delete("b/1")).await.unwrap().succeeded);
        assert_eq!(s.get(b"b/2").await.unwrap(), before);
        // Values are bytes, including empty and non-UTF-8.
        s.txn(Txn::put(vec![0xffu8, 0x00], Bytes::new())).await.unwrap();
        assert_eq!(s.get(&[0xff, 0x00]).await.unwrap().unwrap().value, Bytes::new());
        s.txn(Txn::put("bin", Bytes::from_static(&[0, 159, 255]))).await.unwrap();
        assert_eq!(val(&*s, "bin").await, Some(Bytes::from_static(&[0, 159, 255])));
    }

    pub async fn revisions_increase(s: Arc<dyn MetaStore>) {
        let r0 = s.current_revision().await.unwrap();
        let r1 = s.txn(Txn::put("k", b("1"))).await.unwrap().revision;
        assert!(r1 > r0, "{r1} > {r0}");
        assert_eq!(s.get(b"k").await.unwrap().unwrap().mod_revision, r1);
        let r2 = s.txn(Txn::put("k", b("2"))).await.unwrap().revision;
        assert!(r2 > r1);
        assert_eq!(s.get(b"k").await.unwrap().unwrap().mod_revision, r2);
        assert!(s.current_revision().await.unwrap() >= r2);
        // All changes of one txn share its revision.
        let t = Txn {
            compares: vec![],
            success: vec![TxnOp::Put { key: b"x".to_vec(), value: b("x") }, TxnOp::Put { key: b"y".to_vec(), value: b("y") }],
            failure: vec![],
        };
        let r3 = s.txn(t).await.unwrap().revision;
        assert!(r3 > r2);
        assert_eq!(s.get(b"x").await.unwrap().unwrap().mod_revision, r3);
        assert_eq!(s.get(b"y").await.unwrap().unwrap().mod_revision, r3);
        assert_eq!(s.get(b"k").await.unwrap().unwrap().mod_revision, r2, "untouched key keeps its mod_revision");
        // A txn that changes nothing does not move the revision backwards (other namespaces
        // may move it forward on a shared etcd).
        let r4 = s.txn(Txn::delete("never-existed")).await.unwrap().revision;
        assert!(r4 >= r3);
    }

    pub async fn cas_mod_revision(s: Arc<dyn MetaStore>) {
        let cas = |rev: u64, v: &str| Txn {
            compares: vec![Compare::ModRevision { key: b"k".to_vec(), revision: rev }],
            success: vec![TxnOp::Put { key: b"k".to_vec(), value: b(v) }],
            failure: vec![],
        };
        // revision 0 == absent
        let r1 = s.txn(cas(0, "v1")).await.unwrap();
        assert!(r1.succeeded);
        assert!(!s.txn(cas(0, "nope")).await.unwrap().succeeded, "0 must not match a present key");
        let r2 = s.txn(cas(r1.revision, "v2")).await.unwrap();
        assert!(r2.succeeded);
        let stale = s.txn(cas(r1.revision, "v3")).await.unwrap();
        assert!(!stale.succeeded, "stale mod_revision must fail");
        assert_eq!(val(&*s, "k").await, Some(b("v2")));
        assert!(s.txn(cas(r2.revision, "v3")).await.unwrap().succeeded);
        assert_eq!(val(&*s, "k").await, Some(b("v3")));
    }

    pub async fn cas_absent_and_value(s: Arc<dyn MetaStore>) {
        assert!(s.txn(Txn::create("vol/x", b("v1"))).await.unwrap().succeeded);
        assert!(!s.txn(Txn::create("vol/x", b("other"))).await.unwrap().succeeded);
        assert_eq!(val(&*s, "vol/x").await, Some(b("v1")));
        let if_value = |expect: &str, new: &str| Txn {
            compares: vec![Compare::ValueEquals { key: b"vol/x".to_vec(), value: b(expect) }],
            success: vec![TxnOp::Put { key: b"vol/x".to_vec(), value: b(new) }],
            failure: vec![],
        };
        assert!(!s.txn(if_value("zzz", "bad")).await.unwrap().succeeded);
        assert!(s.txn(if_value("v1", "v2")).await.unwrap().succeeded);
        assert_eq!(val(&*s, "vol/x").await, Some(b("v2")));
        // ValueEquals on an absent key is false, even for the empty value.
        let t = Txn {
            compares: vec![Compare::ValueEquals { key: b"absent".to_vec(), value: Bytes::new() }],
            success: vec![TxnOp::Put { key: b"absent".to_vec(), value: b("oops") }],
            failure: vec![],
        };
        assert!(!s.txn(t).await.unwrap().succeeded);
        assert_eq!(val(&*s, "absent").await, None);
        // After a delete the key is absent again and can be re-created.
        s.txn(Txn::delete("vol/x")).await.unwrap();
        assert!(s.txn(Txn::create("vol/x", b("again"))).await.unwrap().succeeded);
    }

    pub async fn txn_atomic_branches(s: Arc<dyn MetaStore>) {
        s.txn(Txn::put("b", b("actual"))).await.unwrap();
        let t = Txn {
            compares: vec![
                Compare::Absent { key: b"a".to_vec() },                            // holds
                Compare::ValueEquals { key: b"b".to_vec(), value: b("expected") }, // fails
            ],
            success: vec![TxnOp::Put { key: b"a".to_vec(), value: b("1") }, TxnOp::Put { key: b"c".to_vec(), value: b("1") }],
            failure: vec![TxnOp::Put { key: b"f".to_vec(), value: b("failed") }],
        };
        let before = s.current_revision().await.unwrap();
        let r = s.txn(t).await.unwrap();
        assert!(!r.succeeded);
        assert!(r.revision > before, "failure branch with a put is a change");
        assert_eq!(val(&*s, "a").await, None, "no partial effect of the success branch");
        assert_eq!(val(&*s, "c").await, None);
        assert_eq!(val(&*s, "f").await, Some(b("failed")));
        // Success branch mixing delete and put applies all of it at one revision.
        let t = Txn {
            compares: vec![Compare::ValueEquals { key: b"b".to_vec(), value: b("actual") }],
            success: vec![TxnOp::Delete { key: b"f".to_vec() }, TxnOp::Put { key: b"b".to_vec(), value: b("moved") }],
            failure: vec![],
        };
        let r = s.txn(t).await.unwrap();
        assert!(r.succeeded);
        assert_eq!(val(&*s, "f").await, None);
        assert_eq!(s.get(b"b").await.unwrap().unwrap().mod_revision, r.revision);
        // A failed compare with an empty failure branch changes nothing.
        let t = Txn {
            compares: vec![Compare::Absent { key: b"b".to_vec() }],
            success: vec![TxnOp::Delete { key: b"b".to_vec() }],
            failure: vec![],
        };
        assert!(!s.txn(t).await.unwrap().succeeded);
        assert_eq!(val(&*s, "b").await, Some(b("moved")));
    }

    pub async fn invalid_arguments_rejected(s: Arc<dyn MetaStore>) {
        fn invalid<T>(r: Result<T, MetaStoreError>) -> bool {
            matches!(r, Err(MetaStoreError::InvalidArgument(_)))
        }
        assert!(invalid(s.get(b"").await));
        assert!(invalid(s.txn(Txn::put("", b("v"))).await));
        let dup = Txn {
            compares: vec![],
            success: vec![TxnOp::Put { key: b"d".to_vec(), value: b("1") }, TxnOp::Delete { key: b"d".to_vec() }],
            failure: vec![],
        };
        assert!(invalid(s.txn(dup).await));
        let empty_cmp = Txn { compares: vec![Compare::Absent { key: vec![] }], success: vec![], failure: vec![] };
        assert!(invalid(s.txn(empty_cmp).await));
        assert_eq!(val(&*s, "d").await, None, "rejected txn applied nothing");
    }

    pub async fn concurrent_creators_exactly_one_wins(s: Arc<dyn MetaStore>) {
        for round in 0..3 {
            let key = format!("volumes/name-{round}");
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let s = s.clone();
                    let key = key.clone();
                    tokio::spawn(async move { (i, s.txn(Txn::create(key, Bytes::from(format!("creator-{i}")))).await.unwrap()) })
                })
                .collect();
            let mut winners = Vec::new();
            for t in tasks {
                let (i, r) = t.await.unwrap();
                if r.succeeded {
                    winners.push(i);
                }
            }
            assert_eq!(winners.len(), 1, "exactly one creator wins, got {winners:?}");
            assert_eq!(val(&*s, &key).await, Some(Bytes::from(format!("creator-{}", winners[0]))));
        }
    }

    pub async fn watch_replays_from_revision_in_order(s: Arc<dyn MetaStore>) {
        let start = s.txn(Txn::put("w/a", b("1"))).await.unwrap().revision;
        s.txn(Txn::put("w/b", b("2"))).await.unwrap();
        s.txn(Txn::put("other/x", b("not watched"))).await.unwrap();
        let del = s.txn(Txn::delete("w/a")).await.unwrap().revision;
        let multi = Txn {
            compares: vec![],
            success: vec![TxnOp::Put { key: b"w/c".to_vec(), value: b("3") }, TxnOp::Delete { key: b"w/b".to_vec() }],
            failure: vec![],
        };
        let multi_rev = s.txn(multi).await.unwrap().revision;

        let mut w = s.watch(b"w/", start + 1).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(next_event(&mut w).await);
        }
        assert!(matches!(&got[0], WatchEvent::Put { key, value, .. } if key == b"w/b" && value == "2"), "{got:?}");
        assert_eq!(got[1], WatchEvent::Delete { key: b"w/a".to_vec(), revision: del });
        assert_eq!(got[2], WatchEvent::Put { key: b"w/c".to_vec(), value: b("3"), mod_revision: multi_rev });
        assert_eq!(got[3], WatchEvent::Delete { key: b"w/b".to_vec(), revision: multi_rev });
        // Live events follow the replay without a gap.
        let live = s.txn(Txn::put("w/d", b("4"))).await.unwrap().revision;
        assert_eq!(next_event(&mut w).await, WatchEvent::Put { key: b"w/d".to_vec(), value: b("4"), mod_revision: live });
        for pair in got.windows(2) {
            assert!(pair[0].revision() <= pair[1].revision());
        }
    }

    pub async fn watch_from_now_sees_only_new_changes(s: Arc<dyn MetaStore>) {
        s.txn(Txn::put("n/old", b("old"))).await.unwrap();
        let mut w = s.watch(b"n/", 0).await.unwrap();
        let mut revs = Vec::new();
        for i in 0..20 {
            let r = s.txn(Txn::put(format!("n/{i:02}"), Bytes::from(i.to_string()))).await.unwrap().revision;
            revs.push(r);
        }
        for (i, r) in revs.iter().enumerate() {
            let ev = next_event(&mut w).await;
            assert_eq!(ev, WatchEvent::Put { key: format!("n/{i:02}").into_bytes(), value: Bytes::from(i.to_string()), mod_revision: *r });
        }
        // Dropping a watch must not disturb writers.
        drop(w);
        for _ in 0..5 {
            s.txn(Txn::put("n/after-drop", b("x"))).await.unwrap();
        }
    }

    pub async fn concurrent_writers_watch_has_no_gaps(s: Arc<dyn MetaStore>) {
        let from = s.current_revision().await.unwrap() + 1;
        let mut w = s.watch(b"g/", from).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut revs = Vec::new();
                    for i in 0..10 {
                        revs.push(s.txn(Txn::put(format!("g/{t}/{i}"), b("v"))).await.unwrap().revision);
                    }
                    revs
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        let mut seen = Vec::new();
        for _ in 0..all.len() {
            seen.push(next_event(&mut w).await.revision());
        }
        assert_eq!(seen, all, "every change exactly once, in revision order");
    }

    pub async fn election_first_campaign_wins(s: Arc<dyn MetaStore>) {
        let mut l = tokio::time::timeout(Duration::from_secs(5), s.campaign(b"leader", b("node-a"), TTL))
            .await
            .expect("an uncontested campaign wins at once")
            .unwrap();
        assert_eq!(l.key(), b"leader");
        assert!(!l.is_lost());
        let v = s.get(b"leader").await.unwrap().expect("the key holds the leader's value");
        assert_eq!(v.value, b("node-a"));
        assert_eq!(v.mod_revision, l.revision());
        assert_eq!(l.fence(), Compare::ModRevision { key: b"leader".to_vec(), revision: l.revision() });
        // The leader's fenced writes go through, again and again.
        assert!(s.txn(fenced(l.fence(), "state", "1")).await.unwrap().succeeded);
        assert!(s.txn(fenced(l.fence(), "state", "2")).await.unwrap().succeeded);
        assert_eq!(val(&*s, "state").await, Some(b("2")));
        // Not lost while held; other election keys are independent.
        assert!(tokio::time::timeout(Duration::from_millis(300), l.lost()).await.is_err(), "lost() resolved while leading");
        let other = tokio::time::timeout(Duration::from_secs(5), s.campaign(b"leader-of-other", b("node-a"), TTL)).await.unwrap().unwrap();
        other.resign().await.unwrap();
        assert!(!l.is_lost());
        let fence = l.fence();
        l.resign().await.unwrap();
        assert_eq!(val(&*s, "leader").await, None, "resign deletes the key at once");
        assert!(!s.txn(fenced(fence, "state", "3")).await.unwrap().succeeded, "fence fails after resign");
        assert!(matches!(s.campaign(b"", b("x"), TTL).await, Err(MetaStoreError::InvalidArgument(_))));
    }

    pub async fn election_second_waits_until_first_resigns(s: Arc<dyn MetaStore>) {
        let first = s.campaign(b"leader", b("a"), TTL).await.unwrap();
        let old_fence = first.fence();
        let s2 = s.clone();
        let second = tokio::spawn(async move { s2.campaign(b"leader", b("b"), TTL).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "a second campaign must wait while the first leader holds");
        assert_eq!(val(&*s, "leader").await, Some(b("a")));
        first.resign().await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("the waiting candidate wins promptly after the leader resigns")
            .unwrap()
            .unwrap();
        assert_eq!(val(&*s, "leader").await, Some(b("b")));
        assert!(second.revision() > fence_revision(&old_fence));
        assert!(!s.txn(fenced(old_fence, "state", "stale")).await.unwrap().succeeded, "the old leader's fence must fail");
        assert_eq!(val(&*s, "state").await, None);
        assert!(s.txn(fenced(second.fence(), "state", "fresh")).await.unwrap().succeeded);
        second.resign().await.unwrap();
        assert_eq!(val(&*s, "leader").await, None);
    }

    fn fence_revision(fence: &Compare) -> u64 {
        match fence {
            Compare::ModRevision { revision, .. } => *revision,
            other => panic!("a fence is a ModRevision compare, got {other:?}"),
        }
    }

    pub async fn election_one_leader_at_a_time(s: Arc<dyn MetaStore>) {
        let leaders = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let (s, leaders) = (s.clone(), leaders.clone());
                tokio::spawn(async move {
                    let me = format!("candidate-{i}");
                    let l = s.campaign(b"leader", Bytes::from(me.clone()), TTL).await.unwrap();
                    assert_eq!(leaders.fetch_add(1, Ordering::SeqCst), 0, "two leaders at once");
                    assert_eq!(val(&*s, "leader").await, Some(Bytes::from(me.clone())));
                    assert!(s.txn(fenced(l.fence(), "owner", &me)).await.unwrap().succeeded, "the leader's fence holds");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    assert!(!l.is_lost());
                    leaders.fetch_sub(1, Ordering::SeqCst);
                    l.resign().await.unwrap();
                    i
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(tokio::time::timeout(Duration::from_secs(30), t).await.expect("every candidate wins eventually").unwrap());
        }
        done.sort_unstable();
        assert_eq!(done, [0, 1, 2]);
        assert_eq!(val(&*s, "leader").await, None);
    }

    pub async fn election_drop_leaves_no_key(s: Arc<dyn MetaStore>) {
        // A campaign dropped while waiting must not win later.
        let first = s.campaign(b"leader", b("a"), TTL).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), s.campaign(b"leader", b("dropped"), TTL)).await.is_err());
        first.resign().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(val(&*s, "leader").await, None, "a dropped campaign won after all");
        // Dropping the Leadership releases the key, and the next campaign wins.
        let l = s.campaign(b"leader", b("b"), TTL).await.unwrap();
        drop(l);
        wait_absent(&*s, "leader").await;
        let l = tokio::time::timeout(Duration::from_secs(5), s.campaign(b"leader", b("c"), TTL)).await.unwrap().unwrap();
        l.resign().await.unwrap();
        // Campaigns dropped at any point (before, while, or right after winning) leave nothing.
        for micros in [0, 50, 200, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 20_000] {
            if let Ok(l) = tokio::time::timeout(Duration::from_micros(micros), s.campaign(b"race", b("x"), TTL)).await {
                drop(l.unwrap());
            }
            wait_absent(&*s, "race").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(val(&*s, "race").await, None);
        let l = tokio::time::timeout(Duration::from_secs(5), s.campaign(b"race", b("y"), TTL)).await.unwrap().unwrap();
        l.resign().await.unwrap();
    }

    pub async fn election_lost_when_key_deleted_or_replaced(s: Arc<dyn MetaStore>) {
        let mut l = s.campaign(b"leader", b("a"), TTL).await.unwrap();
        s.txn(Txn::delete("leader")).await.unwrap(); // e.g. an operator removes it
        tokio::time::timeout(Duration::from_secs(5), l.lost()).await.expect("lost() after the key was deleted");
        assert!(l.is_lost());
        tokio::time::timeout(Duration::from_secs(1), l.lost()).await.expect("lost() resolves again");
        assert!(!s.txn(fenced(l.fence(), "state", "x")).await.unwrap().succeeded);

        let mut l2 = s.campaign(b"leader", b("b"), TTL).await.unwrap();
        s.txn(Txn::put("leader", b("intruder"))).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), l2.lost()).await.expect("lost() after the key was overwritten");
        assert!(!s.txn(fenced(l2.fence(), "state", "x")).await.unwrap().succeeded);
        // Releasing a leadership that is no longer current leaves the key alone.
        drop(l2);
        l.resign().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(val(&*s, "leader").await, Some(b("intruder")));
    }
}

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

struct EmbeddedHarness {
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

impl EmbeddedHarness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("meta.redb")).await.unwrap();
        EmbeddedHarness { store, _dir: dir }
    }
}

fn etcd_namespace(case: &str) -> String {
    format!("tessera-test/{case}/{}/{}/", std::process::id(), NS_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A connection to the shared etcd in namespace `ns`.
async fn etcd_store_in(ns: &str) -> EtcdStore {
    let server = EtcdServer::shared();
    EtcdStore::connect(EtcdOptions::new([server.endpoint.clone()], ns)).await.unwrap()
}

async fn etcd_store(case: &str) -> EtcdStore {
    etcd_store_in(&etcd_namespace(case)).await
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = super::EmbeddedHarness::new().await;
                    super::cases::$case(std::sync::Arc::new(h.store.clone())).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let s = super::etcd_store(stringify!($case)).await;
                    super::cases::$case(std::sync::Arc::new(s)).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_range_delete,
    revisions_increase,
    cas_mod_revision,
    cas_absent_and_value,
    txn_atomic_branches,
    invalid_arguments_rejected,
    concurrent_creators_exactly_one_wins,
    watch_replays_from_revision_in_order,
    watch_from_now_sees_only_new_changes,
    concurrent_writers_watch_has_no_gaps,
    election_first_campaign_wins,
    election_second_waits_until_first_resigns,
    election_one_leader_at_a_time,
    election_drop_leaves_no_key,
    election_lost_when_key_deleted_or_replaced,
);

// ---- embedded-only ----

#[tokio::test]
async fn embedded_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let (rev, k_rev) = {
        let s = EmbeddedStore::open(&path).await.unwrap();
        let k_rev = s.txn(Txn::put("k", b("durable"))).await.unwrap().revision;
        s.txn(Txn::put("gone", b("x"))).await.unwrap();
        let rev = s.txn(Txn::delete("gone")).await.unwrap().revision;
        (rev, k_rev)
    };
    let s = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(s.current_revision().await.unwrap(), rev);
    let v = s.get(b"k").await.unwrap().unwrap();
    assert_eq!((v.value, v.mod_revision), (b("durable"), k_rev));
    assert_eq!(s.get(b"gone").await.unwrap(), None);
    assert_eq!(s.txn(Txn::put("k", b("next"))).await.unwrap().revision, rev + 1);
}

#[tokio::test]
async fn embedded_second_open_of_same_file_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let _s = EmbeddedStore::open(&path).await.unwrap();
    match EmbeddedStore::open(&path).await {
        Err(MetaStoreError::Unavailable { .. }) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("a second open of a locked file must fail"),
    }
}

#[tokio::test]
async fn embedded_watch_before_open_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let s = EmbeddedStore::open(&path).await.unwrap();
        s.txn(Txn::put("k", b("1"))).await.unwrap();
        s.txn(Txn::put("k", b("2"))).await.unwrap();
    }
    let s = EmbeddedStore::open(&path).await.unwrap();
    match s.watch(b"", 1).await {
        Err(MetaStoreError::Compacted { revision }) => assert_eq!(revision, 3),
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("history from before open is not kept"),
    }
    // From the next revision on it works.
    let mut w = s.watch(b"", 3).await.unwrap();
    s.txn(Txn::put("k", b("3"))).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 3);
}

#[tokio::test]
async fn embedded_history_window_and_lagging_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions { watch_history: 4, watch_buffer: 2 };
    let s = EmbeddedStore::open_with(dir.path().join("meta.redb"), opts).await.unwrap();
    let mut slow = s.watch(b"", 0).await.unwrap();
    for i in 0..10 {
        s.txn(Txn::put("k", Bytes::from(i.to_string()))).await.unwrap();
    }
    // Only revisions 7..=10 are still in the window.
    assert!(matches!(s.watch(b"", 6).await, Err(MetaStoreError::Compacted { revision: 7 })));
    let mut w = s.watch(b"", 7).await.unwrap();
    for rev in 7..=10 {
        assert_eq!(next_event(&mut w).await.revision(), rev);
    }
    // The slow watcher got its 2 buffered events, then is told it lost the rest.
    assert_eq!(next_event(&mut slow).await.revision(), 1);
    assert_eq!(next_event(&mut slow).await.revision(), 2);
    assert!(matches!(slow.next().await, Some(Err(MetaStoreError::Compacted { .. }))));
    assert!(slow.next().await.is_none());
}

#[tokio::test]
async fn embedded_reopen_deletes_keys_of_dead_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let rev_at_crash = {
        let s = EmbeddedStore::open(&path).await.unwrap();
        s.txn(Txn::put("other", b("kept"))).await.unwrap();
        let crashed = s.campaign(b"leader", b("crashed"), TTL).await.unwrap();
        // A leadership whose key was overwritten since: that key is no longer the election's.
        let mut replaced = s.campaign(b"leader2", b("replaced"), TTL).await.unwrap();
        s.txn(Txn::put("leader2", b("plain"))).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), replaced.lost()).await.unwrap();
        // "Crash": the holders never resign nor drop; the process's store goes away.
        std::mem::forget(crashed);
        std::mem::forget(replaced);
        s.current_revision().await.unwrap()
    };
    let s = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(s.get(b"leader").await.unwrap(), None, "the dead leader's key is deleted at open");
    assert_eq!(val(&s, "leader2").await, Some(b("plain")), "a key overwritten since it was won is kept");
    assert_eq!(val(&s, "other").await, Some(b("kept")));
    assert_eq!(s.current_revision().await.unwrap(), rev_at_crash + 1, "the cleanup is one change");
    let l = tokio::time::timeout(Duration::from_secs(1), s.campaign(b"leader", b("new"), TTL))
        .await
        .expect("a new campaign wins at once")
        .unwrap();
    assert_eq!(val(&s, "leader").await, Some(b("new")));
    l.resign().await.unwrap();
    let rev = s.current_revision().await.unwrap();
    drop(s);
    // Nothing held any more: the next open changes nothing.
    let s = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(s.current_revision().await.unwrap(), rev);
    assert_eq!(s.get(b"leader").await.unwrap(), None);
}

#[tokio::test]
async fn embedded_leadership_is_lost_when_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let s = EmbeddedStore::open(&path).await.unwrap();
    let mut l = s.campaign(b"leader", b("a"), TTL).await.unwrap();
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), l.lost()).await.expect("lost() once the store is closed");
    // The leadership does not keep the file open, and its key is deleted at the next open.
    let s = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(s.get(b"leader").await.unwrap(), None);
    assert!(l.resign().await.is_err(), "nothing to resign in a closed store");
}

// ---- etcd-only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_whose_keep_alives_stop_expires() {
    let ns = etcd_namespace("election_expiry");
    let (leader_store, standby_store) = (etcd_store_in(&ns).await, etcd_store_in(&ns).await);
    let ttl = Duration::from_secs(2); // etcd's minimum with default settings
    let mut leader = leader_store.campaign(b"leader", b("a"), ttl).await.unwrap();
    let standby = tokio::spawn(async move { standby_store.campaign(b"leader", b("b"), ttl).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!standby.is_finished());
    let frozen_at = std::time::Instant::now();
    leader.freeze_for_test();
    let new_leader = tokio::time::timeout(ttl + Duration::from_secs(2), standby)
        .await
        .expect("the standby takes over within ttl + 2 s of the leader's last keep-alive")
        .unwrap()
        .unwrap();
    let took = frozen_at.elapsed();
    assert!(took >= ttl / 2, "took over after {took:?}: before the lease could have expired");
    tokio::time::timeout(Duration::from_secs(1), leader.lost()).await.expect("the expired leader's lost() resolves");
    assert!(leader.is_lost());
    assert!(!leader_store.txn(fenced(leader.fence(), "state", "stale")).await.unwrap().succeeded, "the expired leader is fenced off");
    assert_eq!(val(&leader_store, "leader").await, Some(b("b")));
    assert!(leader_store.txn(fenced(new_leader.fence(), "state", "fresh")).await.unwrap().succeeded);
    // Dropping the expired leadership (revoking a lease that is gone) harms nobody.
    drop(leader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(val(&leader_store, "leader").await, Some(b("b")));
    assert!(!new_leader.is_lost());
    new_leader.resign().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keep_alives_hold_leadership_past_ttl() {
    let s = etcd_store("election_keepalive").await;
    // Rounded up to whole seconds and to etcd's minimum TTL; kept alive well past it.
    let mut l = s.campaign(b"leader", b("a"), Duration::from_millis(100)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), l.lost()).await.is_err(), "leadership lost despite keep-alives");
    let v = s.get(b"leader").await.unwrap().expect("key still there");
    assert_eq!(v.mod_revision, l.revision());
    assert!(s.txn(fenced(l.fence(), "state", "1")).await.unwrap().succeeded);
    l.resign().await.unwrap();
    assert_eq!(val(&s, "leader").await, None);
}

#[tokio::test]
async fn etcd_namespaces_are_isolated() {
    let a = etcd_store("ns_a").await;
    let c = etcd_store("ns_c").await;
    a.txn(Txn::put("k", b("a"))).await.unwrap();
    c.txn(Txn::put("k", b("c"))).await.unwrap();
    assert_eq!(val(&a, "k").await, Some(b("a")));
    assert_eq!(val(&c, "k").await, Some(b("c")));
    let r = a.range(b"").await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, b"k");
}

#[tokio::test]
async fn etcd_watch_of_compacted_revision_fails() {
    // Own server: compaction would break the other tests' watches on the shared one.
    let server = EtcdServer::start();
    let s = EtcdStore::connect(EtcdOptions::new([server.endpoint.clone()], "compacted/")).await.unwrap();
    for i in 0..3 {
        s.txn(Txn::put("k", Bytes::from(i.to_string()))).await.unwrap();
    }
    let rev = s.current_revision().await.unwrap();
    let mut client = etcd_client::Client::connect([server.endpoint.clone()], None).await.unwrap();
    client.compact(i64::try_from(rev).unwrap(), None).await.unwrap();
    match s.watch(b"k", 1).await {
        Err(MetaStoreError::Compacted { revision }) => assert!(revision >= rev),
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(mut w) => match w.next().await {
            Some(Err(MetaStoreError::Compacted { .. })) => {}
            other => panic!("expected Compacted through the stream, got {other:?}"),
        },
    }
}

#[tokio::test]
async fn etcd_unreachable_endpoint_is_unavailable() {
    // A loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut opts = EtcdOptions::new([format!("http://127.0.0.1:{port}")], "x/");
    opts.connect_timeout = Duration::from_secs(2);
    opts.request_timeout = Duration::from_secs(2);
    match EtcdStore::connect(opts).await {
        Err(MetaStoreError::Unavailable { endpoint, .. }) => assert!(endpoint.contains(&port.to_string())),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[test]
fn etcd_fixture_kills_server_on_drop() {
    let mut server = EtcdServer::start();
    assert!(server.is_running());
    let port = server.client_port;
    drop(server);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "etcd port still open after drop");
}
