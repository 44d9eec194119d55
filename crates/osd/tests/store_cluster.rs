//! In-process clusters of OSD stores (real engines on memory devices, real raft-rs, the
//! in-memory transport with partitions): replication, leader failover, restart catch-up.
//! The same paths over TCP between real processes are tested in `tests/cluster.rs` of the
//! `tessera` crate.

mod common;

use bytes::Bytes;
use common::*;
use std::time::{Duration, Instant};
use tessera_engine::{Engine, EngineConfig, ObjectKey, PgId};
use tessera_osd::store::Event;
use tessera_wire::{OpCode, Request, Status, WirePg};

#[test]
fn writes_replicate_to_every_replica_and_read_back_from_the_leader() {
    let mut c = Cluster::new(3);
    for pg in 0..PGS {
        c.write(pg, pg as u64, 0, block(pg as u8 * 10, 2));
    }
    for pg in 0..PGS {
        assert_eq!(c.read(pg, pg as u64, 0, 8192), block(pg as u8 * 10, 2), "pg {pg}");
    }
    // Let followers apply the last commit, then check each replica's engine directly.
    for pg in 0..PGS {
        c.wait_applied(&[0, 1, 2], pg);
    }
    for osd in 0..3 {
        c.stop(osd);
    }
    for osd in 0..3 {
        for pg in 0..PGS {
            assert_eq!(c.replica_bytes(osd, pg, pg as u64, 8192), block(pg as u8 * 10, 2), "osd {osd} pg {pg}");
        }
    }
}

#[test]
fn retried_write_with_the_same_seq_is_applied_once() {
    let mut c = Cluster::new(3);
    c.write(0, 1, 0, block(1, 1));
    let seq = c.seq;
    c.write(0, 1, 0, block(2, 1));
    // A late duplicate of the first write (same client and seq) must not undo the second.
    let req = request(OpCode::Write, 0, 1, 0, 4096, seq);
    let (resp, _, _) = c.routed(req, Bytes::from(block(1, 1)), Duration::from_secs(5));
    assert_eq!(resp.status, Status::Ok, "a duplicate is acknowledged");
    assert_eq!(c.read(0, 1, 0, 4096), block(2, 1));
}

#[test]
fn leader_crash_fails_over_and_the_old_leader_catches_up_on_restart() {
    let mut c = Cluster::new(3);
    let leader = c.write(0, 1, 0, block(1, 1));
    c.stop(leader);
    let t = Instant::now();
    let new_leader = c.write(0, 1, 4096, block(2, 1));
    let failover = t.elapsed();
    assert_ne!(new_leader, leader);
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
    eprintln!("failover (write acknowledged by the new leader) after {failover:?}");
    let mut both = block(1, 1);
    both.extend(block(2, 1));
    assert_eq!(c.read(0, 1, 0, 8192), both);
    // The old leader comes back, catches up from the log, and can lead again.
    c.start(leader);
    let others: Vec<u32> = (0..3).filter(|o| *o != leader).collect();
    c.wait_applied(&[leader], 0);
    c.stop(others[0]);
    assert_eq!(c.read(0, 1, 0, 8192), both, "served by a quorum that includes the restarted replica");
    c.write(0, 1, 8192, block(3, 1));
    // Acknowledged means durable in a majority's logs; wait until the restarted replica has
    // also applied it before reading its engine directly.
    c.wait_applied(&[leader], 0);
    for osd in 0..3 {
        c.stop(osd);
    }
    let got = c.replica_bytes(leader, 0, 1, 12288);
    let want = [both, block(3, 1)].concat();
    for b in 0..3 {
        let r = b * 4096..(b + 1) * 4096;
        assert!(
            got[r.clone()] == want[r.clone()],
            "block {b} of the restarted replica starts {:?}, want {:?}",
            &got[r.start..r.start + 4],
            &want[r.start..r.start + 4]
        );
    }
}

#[test]
fn isolated_leader_cannot_serve_reads_or_writes() {
    let mut c = Cluster::new(3);
    let leader = c.write(0, 1, 0, block(1, 1));
    for o in 0..3 {
        if o != leader {
            c.net.cut(leader, o);
        }
    }
    // The rest elect a new leader and accept a write.
    let t = Instant::now();
    loop {
        let new_leader = c.write(0, 1, 0, block(2, 1));
        if new_leader != leader {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the isolated leader kept acknowledging writes");
    }
    // The old leader must not answer a read with the old data (ReadIndex needs a quorum).
    let req = request(OpCode::Read, 0, 1, 0, 4096, 0);
    let (resp, data) = c.call(leader, req, Bytes::new());
    assert!(resp.status != Status::Ok || data == block(2, 1), "stale read from an isolated leader: {resp:?}");
    c.net.heal();
    assert_eq!(c.read(0, 1, 0, 4096), block(2, 1));
}

#[test]
fn replacing_a_replica_copies_the_pg_by_snapshot_and_the_new_set_serves_alone() {
    // OSD 3 holds nothing; every PG lives on 0, 1, 2.
    let mut c = Cluster::with_replicas(4, &[0, 1, 2]).started();
    for pg in 0..PGS {
        for obj in 0..3u64 {
            c.write(pg, obj, 0, block(pg as u8 + obj as u8, 3));
        }
    }
    // The map moves every PG from {0, 1, 2} to {0, 1, 3}.
    c.move_pgs(&[0, 1, 3]);
    let t = Instant::now();
    loop {
        if c.all_groups_are(&[0, 1, 3]) {
            break;
        }
        // IO continues during the change.
        c.write(0, 9, 0, block(9, 1));
        assert!(t.elapsed() < Duration::from_secs(30), "groups did not move to {{0, 1, 3}}: {:?}", c.status(0).pgs);
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("all {PGS} groups moved to {{0, 1, 3}} in {:?}", t.elapsed());
    let copied: u64 = (0..4u32).map(|o| c.status(o).counters.snapshots_installed).sum();
    assert!(copied >= PGS as u64, "OSD 3 joined every PG by snapshot ({copied})");
    // The removed OSD is told so (its elections reach the leader) and drops its replicas.
    let t = Instant::now();
    while !c.status(2).pgs.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(15), "removed OSD 2 kept {:?}", c.status(2).pgs);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The removed OSD and one old member stop: 0 and 3 alone must hold everything.
    c.stop(2);
    c.stop(1);
    for pg in 0..PGS {
        for obj in 0..3u64 {
            assert_eq!(c.read(pg, obj, 0, 3 * 4096), block(pg as u8 + obj as u8, 3), "pg {pg} obj {obj}");
        }
    }
    assert_eq!(c.read(0, 9, 0, 4096), block(9, 1));
    c.write(1, 5, 0, block(5, 1));
    assert_eq!(c.read(1, 5, 0, 4096), block(5, 1));
    // The snapshot carried the write-deduplication table: OSD 3 remembers the same
    // (client, seq) pairs as OSD 0, including those applied before it joined.
    for pg in 0..PGS {
        c.wait_applied(&[0, 3], pg);
    }
    c.stop(0);
    c.stop(3);
    for pg in 0..PGS {
        let (t0, t3) = (c.dedup_records(0, pg), c.dedup_records(3, pg));
        assert!(!t0.is_empty(), "pg {pg} has a table");
        assert_eq!(t0, t3, "pg {pg}: the table of the replica that joined by snapshot differs");
    }
}

#[test]
fn a_replica_down_briefly_catches_up_from_the_log_without_a_snapshot() {
    let mut c = Cluster::new(3);
    let leader = c.write(0, 1, 0, block(1, 1));
    let follower = (0..3).find(|o| *o != leader).unwrap();
    c.stop(follower);
    for i in 0..20u64 {
        c.write(0, 1, i * 4096, block(i as u8, 1));
    }
    let sent_before = c.status(leader).counters.entries_sent;
    c.start(follower);
    let t = Instant::now();
    loop {
        let st = c.status(leader);
        let pg0 = st.pgs.iter().find(|p| p.pg == PgId::new(1, 0)).unwrap().clone();
        if pg0.matched.iter().all(|(_, m)| *m >= pg0.commit) && pg0.role == "leader" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "follower did not catch up: {pg0:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = c.status(leader);
    assert_eq!(st.counters.snapshots_sent, 0, "catch-up needed no snapshot");
    assert!(st.counters.entries_sent > sent_before, "catch-up went through log entries");
    eprintln!("log entries sent for the catch-up: {}", st.counters.entries_sent - sent_before);
}

#[test]
fn a_replica_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut c = Cluster::with_replicas(3, &[0, 1, 2]);
    c.keep_entries = 20;
    let mut c = c.started();
    let leader = c.write(0, 1, 0, block(1, 1));
    let follower = (0..3).find(|o| *o != leader).unwrap();
    c.stop(follower);
    for i in 0..60u64 {
        c.write(0, 2, (i % 8) * 4096, block(i as u8, 1));
    }
    // Compaction runs every few ticks; wait until the leader has compacted past the follower.
    let t = Instant::now();
    while c.status(leader).counters.compactions == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the leader never compacted its log");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.start(follower);
    let t = Instant::now();
    while c.status(leader).counters.snapshots_sent == 0 || c.status(follower).counters.snapshots_installed == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "no snapshot reached the follower");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The follower must now carry the quorum with the data of the compacted entries.
    c.wait_applied(&[follower], 0);
    let third = (0..3).find(|o| *o != leader && *o != follower).unwrap();
    c.stop(third);
    // Slot k last got write i = 56 + k (k < 4) or 48 + k.
    let expect: Vec<u8> = (0..8u64).map(|k| block(if k < 4 { 56 + k } else { 48 + k } as u8, 1)).collect::<Vec<_>>().concat();
    assert!(c.read(0, 2, 0, 8 * 4096) == expect, "object 2 differs from the last writes");
    assert!(c.read(0, 1, 0, 4096) == block(1, 1), "object 1 differs");
}

#[test]
fn a_new_replica_that_has_not_seen_the_new_map_yet_still_joins() {
    let mut c = Cluster::with_replicas(4, &[0, 1, 2]).started();
    c.write(0, 1, 0, block(1, 1));
    // OSD 3 misses the map: the leaders' snapshot tickets reach it before the map does.
    c.move_pgs_except(&[0, 1, 3], &[3]);
    let t = Instant::now();
    loop {
        if c.all_groups_are(&[0, 1, 3]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "OSD 3 never joined: {:?}", c.status(3).pgs);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A stale leader (term 1) tells OSD 3, whose map does not list it, that it left every
    // group: OSD 3 has seen newer terms and must keep its replicas.
    let stale: Vec<(WirePg, u64)> = (0..PGS).map(|i| (WirePg { pool: 1, index: i }, 1)).collect();
    let mut item = bytes::BytesMut::new();
    tessera_wire::msg::put_raft_item(
        &mut item,
        WirePg { pool: tessera_wire::msg::TOMBSTONES_POOL, index: 0 },
        &tessera_wire::msg::encode_tombstones(&stale),
    );
    let items = tessera_wire::msg::decode_raft_items(&item.freeze()).unwrap();
    c.senders()[3].as_ref().unwrap().send(Event::Raft { from: 2, items }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.status(3).counters.replicas_dropped, 0, "OSD 3 dropped replicas on a stale tombstone");
    c.stop(2);
    c.stop(1);
    assert!(c.read(0, 1, 0, 4096) == block(1, 1), "OSD 3 holds the data with OSD 0");
}

/// Regression: the log raft-rs reads must include entries submitted but not yet durable
/// (raft-rs forgets them on `advance_append_async`); otherwise concurrent proposals reuse
/// indexes and the event loop panics inside raft-rs. Also exercises applying a joint
/// configuration while writes are proposed (raft-rs then appends the leave-joint entry).
#[test]
fn concurrent_writes_during_a_membership_change_all_land_on_every_replica() {
    let mut c = Cluster::with_replicas(4, &[0, 1, 2]).started();
    c.write(0, 1, 0, block(1, 1));
    let senders = c.senders();
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let senders = senders.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..60u64 {
                    let seq = 1_000 + t * 1_000 + i;
                    let req = request(OpCode::Write, 0, 2, t * 4096, 4096, seq);
                    let data = Bytes::from(block((t * 60 + i) as u8, 1));
                    if routed_via(&senders, req, data, Duration::from_secs(10)).is_some() {
                        acked.push(i);
                    }
                    std::thread::sleep(Duration::from_micros(150));
                }
                (t, acked)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    c.move_pgs(&[0, 1, 3]);
    let results: Vec<(u64, Vec<u64>)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (t, acked) in &results {
        assert_eq!(acked.len(), 60, "writer {t}: every write acknowledged");
    }
    // Each writer's block holds its last write, read through the (possibly new) leader.
    for (t, _) in &results {
        assert!(c.read(0, 2, t * 4096, 4096) == block((t * 60 + 59) as u8, 1), "writer {t}'s last write");
    }
    // Every store is still running (a raft-rs panic would have killed its thread).
    for o in 0..4 {
        c.stop(o);
    }
}

/// Retained log entries pin their data: overwriting one region with 250 MiB of writes on
/// 64 MiB devices used to fill them (10,000 entries kept per PG) and stop every store with
/// "device full". Logs now shrink as the device fills.
#[test]
fn overwriting_far_more_than_the_device_holds_compacts_logs_instead_of_filling_it() {
    let mut c = Cluster::new(3);
    let chunk = 128 * 1024;
    for i in 0..2000u32 {
        let data = block(i as u8, chunk / 4096);
        c.write(0, 1, 0, data);
    }
    assert_eq!(c.read(0, 1, 0, chunk as u64), block(1999u32 as u8, chunk / 4096));
    for n in &c.nodes {
        let used = n.status.as_ref().unwrap().lock().space_used;
        assert!(used < tessera_mon::model::SpaceRatios::default().full, "a store is {used:.2} full");
    }
}

/// A device filling with live data refuses new writes with `NoSpace` (the store keeps
/// running and serving), and trims give the space back so writes are admitted again.
#[test]
fn a_nearly_full_device_refuses_writes_with_no_space_and_trims_give_space_back() {
    let mut c = Cluster::new(3);
    // 256 KiB writes: these devices have 1 MiB segments, and one log entry must fit in one.
    let piece = 256 * 1024;
    let mut written = 0u64;
    let refused = loop {
        assert!(written < 800, "64 MiB devices took {written} writes of 256 KiB without refusing");
        match c.try_write(OpCode::Write, written as u32 % PGS, written, 0, block(written as u8, 64), piece) {
            Status::Ok => written += 1,
            Status::NoSpace => break written,
            other => panic!("write {written} failed with {other:?} instead of NoSpace"),
        }
    };
    assert!(refused > 80, "refused after only {refused} writes of 256 KiB");
    // Still serving: the first object reads back.
    assert_eq!(c.read(0, 0, 0, 4096), block(0, 1));
    // Trim everything; compaction then releases the log's references and writes resume.
    for object in 0..refused {
        assert_eq!(c.try_write(OpCode::WriteZeroes, object as u32 % PGS, object, 0, Vec::new(), piece), Status::Ok);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.try_write(OpCode::Write, 0, 1000, 0, block(9, 64), piece) {
            Status::Ok => break,
            Status::NoSpace if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("after trimming, a write still gets {other:?}"),
        }
    }
}

impl Cluster {
    /// A write of `data` at offset 0 of `object` under snapshot context `snapc`.
    fn write_ctx(&mut self, pg: u32, object: u64, data: Vec<u8>, snapc: u64) {
        self.seq += 1;
        let req = Request { snapc, ..request(OpCode::Write, pg, object, 0, data.len() as u64, self.seq) };
        self.routed(req, Bytes::from(data), Duration::from_secs(10));
    }

    /// The first block of `(volume 7, object)` as snapshot `snap` reads it on `osd`'s
    /// device (the OSD must be stopped).
    fn replica_version(&self, osd: u32, pg: u32, object: u64, snap: u64) -> Option<u8> {
        let engine = Engine::open(self.nodes[osd as usize].dev.clone(), EngineConfig::default()).unwrap();
        let out = engine.read_version(PgId::new(1, pg), ObjectKey::at_snap(7, object, snap), 0, 4096).unwrap();
        engine.close();
        out.map(|d| d[0])
    }

    fn wait_groups(&self, voters: &[u32]) {
        let t = Instant::now();
        while !self.all_groups_are(voters) {
            assert!(t.elapsed() < Duration::from_secs(60), "groups never became {voters:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Regression (review): a PG copied to a new replica while writes freeze object versions
/// (first writes after a snapshot) must read every snapshot exactly like the old replicas.
/// The copy used to read each object as of "now" and replay the log over it, freezing
/// post-snapshot data; it now reads a pinned point-in-time image.
#[test]
fn a_pg_copied_while_writes_freeze_versions_reads_its_snapshots_like_the_old_replicas() {
    const N: u64 = 400;
    let mut c = Cluster::with_devices(4, &[0, 1, 2], 256 << 20, 4 << 20);
    c.keep_entries = 100;
    let mut c = c.started();
    for o in 0..N {
        c.write_ctx(0, o, vec![1u8; 4096], 0);
    }
    c.move_pgs(&[0, 1, 3]);
    for o in (0..N).rev() {
        c.write_ctx(0, o, vec![2u8; 4096], 5);
    }
    c.wait_groups(&[0, 1, 3]);
    c.wait_applied(&[0, 1, 3], 0);
    for o in 0..4 {
        c.stop(o);
    }
    for osd in [0, 1, 3] {
        let wrong: Vec<u64> = (0..N).filter(|o| c.replica_version(osd, 0, *o, 5) != Some(1)).collect();
        assert!(
            wrong.is_empty(),
            "osd {osd}: {} of {N} objects read post-snapshot data at snapshot 5: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

/// Regression (review): a version whose blocks hold zeros (a guest wrote zeros) is copied
/// to a new replica as an existing version, not dropped.
#[test]
fn a_version_of_zeros_survives_the_copy_to_a_new_replica() {
    let mut c = Cluster::with_devices(4, &[0, 1, 2], 256 << 20, 4 << 20).started();
    c.write_ctx(0, 1, vec![0u8; 4096], 0);
    c.write_ctx(0, 1, vec![7u8; 4096], 5);
    c.move_pgs(&[0, 1, 3]);
    c.wait_groups(&[0, 1, 3]);
    c.wait_applied(&[0, 3], 0);
    for o in 0..4 {
        c.stop(o);
    }
    assert_eq!(c.replica_version(0, 0, 1, 5), Some(0));
    assert_eq!(c.replica_version(3, 0, 1, 5), Some(0), "the copied replica reads snapshot 5 as the zeros written before it");
}

/// Regression (operator actions): when the map moves a PG away from its leader's OSD, the
/// leader hands leadership to a voter that stays *before* the new replica has copied the
/// PG. It used to lead until the copy was done, while clients (routing by the map, which no
/// longer lists it) could not reach the PG: minutes for a large PG.
#[test]
fn a_leader_the_map_moves_away_hands_over_before_the_new_replica_has_copied_the_pg() {
    let mut c = Cluster::with_replicas(4, &[0, 1, 2]).started();
    for pg in 0..PGS {
        c.write(pg, 1, 0, block(pg as u8, 2));
        c.make_leader(pg, 0);
    }
    // The copy onto OSD 3 stalls (its sources swallow ReadRaw): the move cannot finish.
    for n in &c.nodes {
        n.drop_read_raw.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    c.move_pgs(&[1, 2, 3]);
    let t = Instant::now();
    for pg in 0..PGS {
        wait_until(&format!("osd 0 hands pg {pg} over"), Duration::from_secs(5), || c.role(0, pg) == "follower");
    }
    eprintln!("osd 0 handed over every PG {:?} after the map moved them off it", t.elapsed());
    // The move is still under way: OSD 3 is not a voter, OSD 0 still is.
    for pg in 0..PGS {
        let leader = [1, 2].into_iter().find(|o| c.role(*o, pg) == "leader").expect("1 or 2 leads");
        let st = c.status(leader).pgs.into_iter().find(|p| p.pg == PgId::new(1, pg)).unwrap();
        assert!(st.voters.contains(&0) && !st.voters.contains(&3), "pg {pg}: {st:?}");
    }
    // IO goes on, served by the new leaders (the routing helper asks replicas of the map).
    for pg in 0..PGS {
        c.write(pg, 2, 0, block(9, 1));
    }
    // Once copies flow, the move completes: {1, 2, 3}.
    for n in &c.nodes {
        n.drop_read_raw.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    wait_until("every group is {1, 2, 3}", Duration::from_secs(60), || c.all_groups_are(&[1, 2, 3]));
    for pg in 0..PGS {
        assert_eq!(c.read(pg, 1, 0, 2 * 4096), block(pg as u8, 2));
        assert_eq!(c.read(pg, 2, 0, 4096), block(9, 1));
    }
}

/// Snapshot contexts (issue 14): after `SnapSeq(volume, 5)` went through a PG's log, every
/// replica refuses writes of the volume under an older context (`StaleContext` carrying 5,
/// nothing applied), also after a restart; a replica that joins by snapshot gets the table;
/// an older push cannot lower it; after `DropVolume` no write of the volume is taken.
#[test]
fn stale_snapshot_contexts_are_refused_in_log_order_after_restarts_and_by_copied_replicas() {
    let mut c = Cluster::with_replicas(4, &[0, 1, 2]).started();
    c.write_ctx(0, 1, block(1, 1), 0);
    let push = |c: &mut Cluster, seq: u64, epoch: u64| {
        c.seq += 1;
        let req = Request { snap: epoch, snapc: seq, ..request(OpCode::SnapSeq, 0, 0, 0, 0, c.seq) };
        c.routed(req, Bytes::new(), Duration::from_secs(10));
    };
    let try_ctx = |c: &mut Cluster, snapc: u64| {
        c.seq += 1;
        let req = Request { snapc, ..request(OpCode::Write, 0, 1, 0, 4096, c.seq) };
        let (resp, _, _) = c.routed_final(req, Bytes::from(block(snapc as u8 + 2, 1)), Duration::from_secs(10));
        resp
    };
    push(&mut c, 5, 10);
    let r = try_ctx(&mut c, 0);
    assert_eq!((r.status, r.snapc), (Status::StaleContext, 5), "{r:?}");
    assert_eq!(c.read(0, 1, 0, 4096), block(1, 1), "the refused write was not applied");
    assert_eq!(try_ctx(&mut c, 5).status, Status::Ok);
    assert_eq!(try_ctx(&mut c, 7).status, Status::Ok, "a newer context than the PG's is taken");
    push(&mut c, 2, 9);
    assert_eq!(try_ctx(&mut c, 4).status, Status::StaleContext, "a push from an older epoch arriving late does not go back");
    // Every replica holds the table durably.
    for o in 0..3 {
        c.stop(o);
    }
    for o in 0..3 {
        c.start(o);
    }
    assert_eq!(try_ctx(&mut c, 0).status, Status::StaleContext, "after a restart of every replica");
    // A replica that joins by snapshot has the table too.
    c.move_pgs(&[0, 1, 3]);
    c.wait_groups(&[0, 1, 3]);
    c.wait_applied(&[3], 0);
    c.stop(3);
    let e = Engine::open(c.nodes[3].dev.clone(), EngineConfig::default()).unwrap();
    let table = e.meta_scan(tessera_engine::MetaScope::Pg(PgId::new(1, 0)));
    e.close();
    assert!(
        table.iter().any(|(k, _)| k.starts_with(tessera_osd::contexts::KEY_PREFIX)),
        "the copied replica has no snapshot context table"
    );
    c.start(3);
    // Dropped: no write of the volume is taken any more, whatever its context.
    c.seq += 1;
    c.routed(request(OpCode::DropVolume, 0, 0, 0, 0, c.seq), Bytes::new(), Duration::from_secs(10));
    let r = try_ctx(&mut c, 50);
    assert_eq!(r.status, Status::Invalid, "{r:?}");
    assert!(r.message.contains("deleted"), "{r:?}");
}

/// A round of applies only (the commit of a write the leader already has in its log) is
/// written without an fsync of its own: at QD1 a write costs one fsync on the leader, not
/// two in series. (Crash safety of that: the applies replay from the log,
/// `tessera/tests/data_path.rs::a_power_cut_of_every_osd_at_once_loses_no_acknowledged_write`.)
#[test]
fn applying_committed_writes_costs_the_leader_no_extra_fsync() {
    let mut c = Cluster::new(3);
    let leader = c.write(0, 1, 0, block(1, 1));
    let before = c.engine(leader).stats();
    for i in 0..40u64 {
        c.write(0, 1 + i % 4, 0, block(i as u8, 1));
    }
    let after = c.engine(leader).stats();
    let (batches, syncs) = (after.batches - before.batches, after.syncs - before.syncs);
    eprintln!("40 writes at QD1: the leader wrote {batches} batches and synced {syncs} of them");
    assert!(syncs + 20 <= batches, "most apply batches skip their fsync ({syncs} syncs of {batches} batches)");
    assert!(syncs >= 40, "every write's log append is synced ({syncs} syncs)");
}

/// Lease reads: a leader serves reads alone only while its lease holds. Here the leader
/// stalls (a long pause) while cut off; the others elect a new leader and take a write; when
/// the old leader wakes up it still believes it leads (it has not ticked yet), but its lease
/// has run out, so the read that queued up meanwhile must not be answered with the old data.
#[test]
fn a_deposed_leader_whose_lease_ran_out_does_not_serve_a_stale_read() {
    let mut c = Cluster::new(3);
    let old = c.write(0, 1, 0, block(1, 1));
    assert_eq!(c.read(0, 1, 0, 4096), block(1, 1));
    // Within the lease the leader answers on its own.
    let t = Instant::now();
    let (resp, data) = c.call(old, request(OpCode::Read, 0, 1, 0, 4096, 0), Bytes::new());
    assert_eq!((resp.status, data.to_vec()), (Status::Ok, block(1, 1)));
    eprintln!("lease read answered in {:?}", t.elapsed());

    let others: Vec<u32> = (0..3).filter(|o| *o != old).collect();
    for o in &others {
        c.net.cut(old, *o);
    }
    let senders = c.senders();
    senders[old as usize].as_ref().unwrap().send(Event::Stall(Duration::from_secs(3))).unwrap();
    let mut rx = submit(senders[old as usize].as_ref().unwrap(), request(OpCode::Read, 0, 1, 0, 4096, 0), Bytes::new());

    let mut via = senders.clone();
    via[old as usize] = None;
    c.seq += 1;
    let req = request(OpCode::Write, 0, 1, 0, 4096, c.seq);
    let new = routed_via(&via, req, Bytes::from(block(2, 1)), Duration::from_secs(10)).expect("the others elect a leader and write");
    assert_ne!(new, old);

    let (resp, data) = answer(&mut rx, Duration::from_secs(15));
    assert!(
        resp.status != Status::Ok,
        "a deposed leader served a read after its lease ran out: {:?} (data {})",
        resp.status,
        if data.to_vec() == block(1, 1) { "stale" } else { "?" }
    );
    eprintln!("the stalled old leader answered {:?}: {}", resp.status, resp.message);
    c.net.heal();
    assert_eq!(c.read(0, 1, 0, 4096), block(2, 1));
}

/// Lease reads stop once the leader starts handing over: the transferee is elected at once,
/// without the wait the lease relies on. (C is cut off from the old leader, so the read
/// index round cannot succeed in the old term either: any `Ok` would come from the lease.)
#[test]
fn a_leader_handing_over_stops_serving_reads_under_its_lease() {
    let mut c = Cluster::new(3);
    let old = c.write(0, 1, 0, block(1, 1));
    assert_eq!(c.read(0, 1, 0, 4096), block(1, 1));
    let others: Vec<u32> = (0..3).filter(|o| *o != old).collect();
    let (to, cut) = (others[0], others[1]);
    c.net.cut(old, cut);
    let senders = c.senders();
    let tx_old = senders[old as usize].as_ref().unwrap();
    tx_old.send(Event::TransferLeader { pg: PgId::new(1, 0), to }).unwrap();
    let mut rx = submit(tx_old, request(OpCode::Read, 0, 1, 0, 4096, 0), Bytes::new());
    let (resp, _) = answer(&mut rx, Duration::from_secs(10));
    assert_ne!(resp.status, Status::Ok, "a read was served under the lease of a leader handing over");
    c.net.heal();
    assert_eq!(c.read(0, 1, 0, 4096), block(1, 1));
}

/// Issue 16, part 4: a replica its leader drops (tombstone) while its snapshot install is
/// still copying, then re-added, ends identical to the others. The old install writes
/// nothing after the drop: retried, it would drop the re-created replica's data and log, and
/// its last step would write back an older snapshot index, term and vote.
#[test]
fn a_replica_dropped_mid_install_and_re_added_converges_with_the_others() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let mut c = Cluster::with_replicas(3, &[0, 1, 2]);
    c.keep_entries = 20;
    let mut c = c.started();
    for pg in 0..PGS {
        c.write(pg, 1, 0, block(pg as u8 + 1, 4));
        c.make_leader(pg, 0);
    }
    c.stop(2);
    for i in 0..60u64 {
        c.write(0, 2, (i % 8) * 4096, block(i as u8, 1));
    }
    wait_until("the leader compacted past osd 2", Duration::from_secs(10), || c.status(0).counters.compactions > 0);
    // OSD 2 comes back behind the log: its snapshot copy stalls (sources swallow ReadRaw).
    for n in &c.nodes {
        n.drop_read_raw.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let sent = c.status(0).counters.snapshots_sent;
    c.start(2);
    wait_until("a snapshot goes to osd 2", Duration::from_secs(10), || c.status(0).counters.snapshots_sent > sent);
    std::thread::sleep(Duration::from_millis(500));
    // The map drops OSD 2 while it copies: the leader removes it from the group and
    // answers its next message with a tombstone (delivered here as the leader sends it: an
    // installing replica sends nothing of its own until its install is done).
    c.move_pgs(&[0, 1]);
    wait_until("the leader removed osd 2", Duration::from_secs(20), || {
        c.status(0).pgs.iter().any(|p| p.pg == PgId::new(1, 0) && p.role == "leader" && !p.voters.contains(&2) && !p.learners.contains(&2))
    });
    let term = c.status(0).pgs.iter().find(|p| p.pg == PgId::new(1, 0)).unwrap().term;
    let pg0 = WirePg { pool: 1, index: 0 };
    let tombstone = tessera_wire::msg::encode_tombstones(&[(pg0, term)]);
    let item =
        tessera_wire::msg::RaftItem { pg: WirePg { pool: tessera_wire::msg::TOMBSTONES_POOL, index: 0 }, msg: Bytes::from(tombstone) };
    c.senders()[2].as_ref().unwrap().send(Event::Raft { from: 0, items: vec![item] }).unwrap();
    wait_until("osd 2 dropped its replica of pg 0", Duration::from_secs(10), || !c.status(2).pgs.iter().any(|p| p.pg == PgId::new(1, 0)));
    // Re-added: a new install starts (stalled at first, then the copies flow).
    c.move_pgs(&[0, 1, 2]);
    for pg in 0..PGS {
        c.write(pg, 3, 0, block(0x40 + pg as u8, 2));
    }
    for n in &c.nodes {
        n.drop_read_raw.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    wait_until("every group is {0, 1, 2}", Duration::from_secs(60), || c.all_groups_are(&[0, 1, 2]));
    // A stalled attempt of the dropped install times out (10 s) and would retry now.
    std::thread::sleep(Duration::from_secs(12));
    for pg in 0..PGS {
        c.write(pg, 4, 0, block(0x60 + pg as u8, 1));
    }
    let expect: Vec<u8> = (0..8u64).map(|k| block(if k < 4 { 56 + k } else { 48 + k } as u8, 1)).collect::<Vec<_>>().concat();
    for pg in 0..PGS {
        c.wait_applied(&[0, 1, 2], pg);
        assert_eq!(c.replica_bytes(2, pg, 1, 4 * 4096), block(pg as u8 + 1, 4), "pg {pg} object 1 on osd 2");
        assert_eq!(c.replica_bytes(2, pg, 3, 2 * 4096), block(0x40 + pg as u8, 2), "pg {pg} object 3 on osd 2");
        assert_eq!(c.replica_bytes(2, pg, 4, 4096), block(0x60 + pg as u8, 1), "pg {pg} object 4 on osd 2");
        if pg == 0 {
            assert!(c.replica_bytes(2, 0, 2, 8 * 4096) == expect, "pg 0 object 2 on osd 2");
        }
        let r = c.scrub(pg);
        assert!(matches!(r.verdict, tessera_client::scrub::Verdict::Clean { .. }), "pg {pg}: {r:?}");
    }
    assert!(c.status(2).damaged.is_empty());
}
