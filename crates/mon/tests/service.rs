//! The mon against both metastore backends (embedded redb and a real etcd), in-process:
//! map operations and their errors, concurrency (same-name creates from independent store
//! connections, as from several mons), the failure detector end to end over the HTTP API,
//! long polls, and leadership hand-over between two mons on one etcd.
//!
//! Every case is one generic async fn over a [`Backend`]; `both!` instantiates it per backend.

#[macro_use]
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{epoch, osd_req, pool_req, vol_req, Backend, Kind};
use tessera_mon::model::{ClusterMap, DomainLevel};
use tessera_mon::service::CreatePool;
use tessera_mon::{MonClient, MonConfig, MonError, Service};

mod cases {
    use super::*;

    pub async fn map_operations_and_their_errors(b: Backend) {
        let svc = Service::new(b.connect().await);
        assert_eq!(epoch(&svc).await, 0);
        // No OSDs: a pool cannot be placed.
        let e = svc.create_pool(&pool_req("p", 16)).await.unwrap_err();
        assert!(matches!(e, MonError::Placement { .. }), "{e}");
        assert_eq!(e.status(), 409);
        for i in 0..4 {
            let o = svc.register_osd(&osd_req(i, &format!("host{i}"))).await.unwrap();
            assert_eq!(o.id, i);
            assert!(!o.up && o.in_);
        }
        // Re-registration of the same device keeps its id and does not bump the epoch.
        let e0 = epoch(&svc).await;
        assert_eq!(e0, 4, "one epoch per change");
        assert_eq!(svc.register_osd(&osd_req(2, "host2")).await.unwrap().id, 2);
        assert_eq!(epoch(&svc).await, e0);

        let pool = svc.create_pool(&pool_req("p", 16)).await.unwrap();
        assert_eq!(epoch(&svc).await, e0 + 1);
        let map = svc.map().await.unwrap();
        let table = map.pg_table(pool.id).unwrap();
        assert_eq!(table.pgs.len(), 16);
        for pg in &table.pgs {
            assert_eq!(pg.epoch(), e0 + 1);
            let mut hosts: Vec<_> = pg.osds().iter().map(|id| map.osd(*id).unwrap().host.clone()).collect();
            hosts.sort();
            hosts.dedup();
            assert_eq!(hosts.len(), 3, "replicas on distinct hosts");
        }
        assert!(matches!(svc.create_pool(&pool_req("p", 16)).await, Err(MonError::PoolExists { .. })));
        let e = svc.create_pool(&CreatePool { name: "big".into(), replicas: 5, pg_count: 8, failure_domain: DomainLevel::Host }).await;
        assert!(matches!(e, Err(MonError::Placement { .. })), "5 replicas on 4 hosts: {e:?}");
        for bad in [pool_req("", 8), pool_req("a/b", 8), pool_req("ok", 0), pool_req("ok", 1 << 20)] {
            assert_eq!(svc.create_pool(&bad).await.unwrap_err().status(), 400, "{bad:?}");
        }

        let v = svc.create_volume(&vol_req("vol", "p", 10 << 30)).await.unwrap();
        assert_eq!((v.size, v.pool_id), (10 << 30, pool.id));
        assert!(matches!(svc.create_volume(&vol_req("vol", "p", 4096)).await, Err(MonError::VolumeExists { .. })));
        assert!(matches!(svc.create_volume(&vol_req("w", "nope", 4096)).await, Err(MonError::PoolNotFound { .. })));
        for size in [0, 4095, 10_000, (1 << 50) + 4096, u64::MAX] {
            assert_eq!(svc.create_volume(&vol_req("w", "p", size)).await.unwrap_err().status(), 400, "size {size}");
        }
        let v2 = svc.create_volume(&vol_req("w", "p", 4096)).await.unwrap();
        assert!(v2.id > v.id, "ids grow");
        assert_eq!(svc.list_volumes().await.unwrap().iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["vol", "w"]);

        // Resize: grow freely, shrink only when confirmed.
        assert_eq!(svc.resize_volume("vol", 20 << 30, false).await.unwrap().size, 20 << 30);
        assert!(matches!(svc.resize_volume("vol", 1 << 30, false).await, Err(MonError::ShrinkNotConfirmed { .. })));
        assert_eq!(svc.resize_volume("vol", 1 << 30, true).await.unwrap().size, 1 << 30);
        assert_eq!(svc.volume("vol").await.unwrap().size, 1 << 30);
        assert!(matches!(svc.resize_volume("ghost", 4096, false).await, Err(MonError::VolumeNotFound { .. })));

        // A pool with volumes cannot be deleted; ids are never reused after deletes.
        assert!(matches!(svc.delete_pool("p").await, Err(MonError::PoolNotEmpty { volumes: 2, .. })));
        for name in ["vol", "w"] {
            svc.delete_volume(name).await.unwrap();
            svc.purge_volume(name).await.unwrap();
        }
        assert!(matches!(svc.purge_volume("w").await, Err(MonError::VolumeNotFound { .. })));
        let v3 = svc.create_volume(&vol_req("vol", "p", 4096)).await.unwrap();
        assert!(v3.id > v2.id, "a recreated name gets a fresh id");
        svc.delete_volume("vol").await.unwrap();
        let e = svc.delete_pool("p").await;
        assert!(matches!(e, Err(MonError::PoolNotEmpty { volumes: 1, .. })), "a volume being deleted still holds its pool: {e:?}");
        svc.purge_volume("vol").await.unwrap();
        svc.delete_pool("p").await.unwrap();
        assert!(svc.map().await.unwrap().pools.is_empty());
        assert!(matches!(svc.delete_pool("p").await, Err(MonError::PoolNotFound { .. })));
        let p2 = svc.create_pool(&pool_req("p", 16)).await.unwrap();
        assert!(p2.id > pool.id, "pool ids are never reused");

        // Admin out/in: only the PGs that held the OSD move, and they get the new epoch.
        let before = svc.map().await.unwrap();
        let out = svc.set_osd_in(1, false).await.unwrap();
        assert!(!out.in_);
        let after = svc.map().await.unwrap();
        assert_eq!(after.epoch, before.epoch + 1);
        let (t0, t1) = (before.pg_table(p2.id).unwrap(), after.pg_table(p2.id).unwrap());
        for (a, b) in t0.pgs.iter().zip(&t1.pgs) {
            if a.osds().contains(&1) {
                assert!(!b.osds().contains(&1));
                assert_eq!(b.epoch(), after.epoch);
            } else {
                assert_eq!(a, b);
            }
        }
        assert!(matches!(svc.set_osd_in(99, false).await, Err(MonError::OsdNotFound { id: 99 })));
    }

    /// Several independent connections (as several mons) create the same name at once:
    /// exactly one wins; different names all succeed with distinct ids.
    pub async fn concurrent_creates_same_name_exactly_one_wins(b: Backend) {
        let setup = Service::new(b.connect().await);
        for i in 0..3 {
            setup.register_osd(&osd_req(i, &format!("h{i}"))).await.unwrap();
        }
        setup.create_pool(&pool_req("p", 8)).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let svc = Service::new(b.connect().await);
            tasks.push(tokio::spawn(async move {
                let same = svc.create_volume(&vol_req("dup", "p", 4096)).await;
                let own = svc.create_volume(&vol_req(&format!("own{i}"), "p", 4096)).await;
                (same, own)
            }));
        }
        let mut wins = 0;
        let mut ids = Vec::new();
        for t in tasks {
            let (same, own) = t.await.unwrap();
            match same {
                Ok(v) => {
                    wins += 1;
                    ids.push(v.id);
                }
                Err(MonError::VolumeExists { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
            ids.push(own.unwrap().id);
        }
        assert_eq!(wins, 1, "exactly one create of the same name wins");
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "ids are unique");
        assert_eq!(setup.list_volumes().await.unwrap().len(), 9);
        assert_eq!(setup.map().await.unwrap().epoch, 3 + 1 + 9, "one epoch per committed change");
    }

    /// Real HTTP, real timing: an OSD that stops heartbeating is marked down within
    /// down_after + a tick, then out after out_after (its PGs re-placed), then up and in
    /// again when it returns. Long polls wake up on each change.
    pub async fn failure_detector_marks_down_out_and_back(b: Backend) {
        let mut cfg = MonConfig::new("127.0.0.1:0".parse().unwrap());
        cfg.detector.down_after = Duration::from_millis(1200);
        cfg.detector.out_after = Duration::from_secs(2);
        cfg.tick = Duration::from_millis(100);
        let mon = tessera_mon::start(b.connect().await, cfg).await.unwrap();
        let client = Arc::new(MonClient::new(&[format!("http://{}", mon.addr)], Duration::from_secs(5)).unwrap());
        for i in 0..4 {
            client.register_osd(&osd_req(i, &format!("h{i}"))).await.unwrap();
        }
        let pool = client.create_pool(&pool_req("p", 32)).await.unwrap();
        // Heartbeat OSDs 0..4 every 200 ms; OSD 3 stops when told to.
        let alive3 = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hb = {
            let (client, alive3) = (client.clone(), alive3.clone());
            tokio::spawn(async move {
                loop {
                    for i in 0..4 {
                        if i < 3 || alive3.load(Ordering::Relaxed) {
                            // The mon may still be campaigning at the very start.
                            let _ = client.heartbeat(i, 0).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let wait_for = |pred: Box<dyn Fn(&ClusterMap) -> bool + Send>, limit: Duration| {
            let client = client.clone();
            async move {
                let start = Instant::now();
                let mut map = client.map(None, Duration::ZERO).await.unwrap();
                while !pred(&map) {
                    assert!(start.elapsed() < limit, "condition not reached within {limit:?}; map: {map:#?}");
                    map = client.map(Some(map.epoch), Duration::from_millis(500)).await.unwrap();
                }
                (map, start.elapsed())
            }
        };
        let (healthy, _) = wait_for(Box::new(|m| m.osds.iter().all(|o| o.up)), Duration::from_secs(10)).await;

        alive3.store(false, Ordering::Relaxed);
        let (down, took) = wait_for(Box::new(|m| !m.osd(3).unwrap().up), Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(3), "marked down after {took:?}");
        assert!(down.osd(3).unwrap().in_, "down is not out yet");
        assert_eq!(down.pg_table(pool.id), healthy.pg_table(pool.id), "down alone moves no PG");

        let (out, _) = wait_for(Box::new(|m| !m.osd(3).unwrap().in_), Duration::from_secs(6)).await;
        let (t0, t1) = (healthy.pg_table(pool.id).unwrap(), out.pg_table(pool.id).unwrap());
        assert!(t0.pgs.iter().any(|e| e.osds().contains(&3)));
        for (a, b) in t0.pgs.iter().zip(&t1.pgs) {
            assert!(!b.osds().contains(&3));
            if !a.osds().contains(&3) {
                assert_eq!(a, b, "PGs without OSD 3 keep set and epoch");
            } else {
                assert!(b.epoch() > a.epoch());
            }
        }

        alive3.store(true, Ordering::Relaxed);
        let (back, _) = wait_for(Box::new(|m| m.osd(3).unwrap().up && m.osd(3).unwrap().in_), Duration::from_secs(6)).await;
        for (a, b) in t0.pgs.iter().zip(&back.pg_table(pool.id).unwrap().pgs) {
            assert_eq!(a.osds(), b.osds(), "placement returns to the original");
        }
        hb.abort();
        mon.shutdown().await;
    }

    /// A long poll for a newer map returns as soon as the map changes (not at its timeout),
    /// and returns the current map at the timeout when nothing changed.
    pub async fn long_poll_wakes_on_change(b: Backend) {
        let mon = tessera_mon::start(b.connect().await, MonConfig::new("127.0.0.1:0".parse().unwrap())).await.unwrap();
        let client = Arc::new(MonClient::new(&[format!("http://{}", mon.addr)], Duration::from_secs(5)).unwrap());
        let e0 = client.map(None, Duration::ZERO).await.unwrap().epoch;
        let start = Instant::now();
        let idle = client.map(Some(e0), Duration::from_millis(300)).await.unwrap();
        assert_eq!(idle.epoch, e0);
        assert!(start.elapsed() >= Duration::from_millis(300), "waited for the timeout");
        let poll = {
            let client = client.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let m = client.map(Some(e0), Duration::from_secs(20)).await.unwrap();
                (m, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.register_osd(&osd_req(0, "h0")).await.unwrap();
        let (m, took) = poll.await.unwrap();
        assert_eq!(m.epoch, e0 + 1);
        assert_eq!(m.osds.len(), 1);
        assert!(took < Duration::from_secs(5), "long poll answered after {took:?}, not on the change");
        mon.shutdown().await;
    }
}

both!(
    map_operations_and_their_errors,
    concurrent_creates_same_name_exactly_one_wins,
    failure_detector_marks_down_out_and_back,
    long_poll_wakes_on_change,
);

/// Two mons on one etcd: exactly one is active; heartbeats sent to the standby are
/// redirected (421 + leader URL, followed by the client); when the active one shuts down,
/// the standby takes over and keeps the OSDs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_mon_takes_over_heartbeats_when_active_stops() {
    let b = Backend::new(Kind::Etcd, "takeover").await;
    let mut cfg = MonConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.tick = Duration::from_millis(100);
    let a = tessera_mon::start(b.connect().await, cfg.clone()).await.unwrap();
    // Let `a` win the election before `b` starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.shared.is_active() {
        assert!(Instant::now() < deadline, "first mon never became active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bm = tessera_mon::start(b.connect().await, cfg).await.unwrap();
    let (url_a, url_b) = (format!("http://{}", a.addr), format!("http://{}", bm.addr));
    let to_b = MonClient::new(std::slice::from_ref(&url_b), Duration::from_secs(5)).unwrap();
    let osd = to_b.register_osd(&osd_req(0, "h0")).await.unwrap();
    assert_eq!(to_b.status().await.unwrap().active_mon.as_deref(), Some(url_a.as_str()));
    // Heartbeat via the standby: redirected to the active mon.
    to_b.heartbeat(osd.id, 0).await.unwrap();
    assert!(!bm.shared.is_active());

    let stopped = Instant::now();
    a.shutdown().await;
    loop {
        if to_b.heartbeat(osd.id, 0).await.is_ok() && bm.shared.is_active() {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(5), "standby did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(to_b.status().await.unwrap().active_mon.as_deref(), Some(url_b.as_str()));
    bm.shutdown().await;
}
