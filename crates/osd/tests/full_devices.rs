//! Full devices never stop an OSD (issue 14), in process: stores on memory devices of
//! different sizes, real raft-rs. A full follower refuses appends that carry data and keeps
//! running while its leader commits with the others; writes get `NoSpace` only when no
//! majority has room; a full leader hands over; trims give space back and the full replica
//! catches up by itself; and if the engine itself runs out, the store reopens its replicas
//! instead of stopping.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tessera_wire::{OpCode, Status};

const MIB: u64 = 1 << 20;
/// 256 KiB writes (one log entry must fit in one 1 MiB segment).
const PIECE: u64 = 256 << 10;

impl Cluster {
    fn refuses(&self, osd: u32) -> bool {
        self.status(osd).refuses_data
    }

    /// Whether `osd`'s store thread is still running.
    fn alive(&self, osd: u32) -> bool {
        self.nodes[osd as usize].thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn put(&mut self, object: u64) -> Status {
        self.try_write(OpCode::Write, object as u32 % PGS, object, 0, block(object as u8, 64), PIECE)
    }

    fn trim(&mut self, object: u64) -> Status {
        self.try_write(OpCode::WriteZeroes, object as u32 % PGS, object, 0, Vec::new(), PIECE)
    }
}

#[test]
fn a_full_follower_keeps_running_the_others_commit_and_it_catches_up_after_trims() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    // OSD 2's device is a third of the others' (with enough segments that the full ratio,
    // not the last free segments, is what stops it).
    let mut c = Cluster::with_sizes(&[288 * MIB, 288 * MIB, 96 * MIB], &[0, 1, 2], MIB).started();
    for pg in 0..PGS {
        c.make_leader(pg, 0);
    }
    let mut written = 0u64;
    while !c.refuses(2) {
        assert!(written < 600, "osd 2 never filled");
        assert_eq!(c.put(written), Status::Ok, "write {written}");
        written += 1;
    }
    eprintln!("osd 2 full after {written} writes of 256 KiB ({:.2} live)", c.status(2).space_used);
    // A third more writes than osd 2 holds: all acknowledged by 0 and 1, and osd 2 is not
    // made any fuller (its leaders hold back data for it).
    let mut fullest = 0f64;
    for _ in 0..written / 3 {
        assert_eq!(c.put(written), Status::Ok, "write {written} with osd 2 full");
        written += 1;
        fullest = fullest.max(c.status(2).space_used);
    }
    eprintln!("osd 2 at most {fullest:.3} live while full");
    assert!(fullest < 0.92, "the full osd 2 was filled further, to {fullest:.3} (full ratio 0.9)");
    assert!(c.alive(2), "osd 2's store stopped");
    assert_eq!(c.status(2).counters.no_space_rounds, 0, "the engine never had to refuse a round");
    assert!(c.status(2).space_used < 1.0);
    for o in 0..written {
        assert_eq!(c.read(o as u32 % PGS, o, 0, 4096), block(o as u8, 1), "object {o}");
    }
    // Trims give the space back; osd 2 then catches up by itself (by snapshot: the log
    // could bring it the trims only behind the data it refuses).
    for o in 0..written {
        assert_eq!(c.trim(o), Status::Ok);
    }
    wait_until("osd 2 takes data again", Duration::from_secs(60), || !c.refuses(2));
    let probe = written + 1000;
    assert_eq!(c.put(probe), Status::Ok);
    for pg in 0..PGS {
        c.wait_applied(&[2], pg);
    }
    // Now osd 2 must carry the quorum: with osd 1 stopped, every PG needs it.
    c.stop(1);
    assert_eq!(c.read(probe as u32 % PGS, probe, 0, 4096), block(probe as u8, 1));
    assert_eq!(c.put(probe + 4), Status::Ok);
    assert!(c.alive(0) && c.alive(2));
}

/// Trims `object` through its PG's leader; if no final answer comes within 10 s, fails
/// with what every store reports (segments, space, the PG's commit and match indexes).
fn trim_or_explain(c: &mut Cluster, object: u64) {
    c.seq += 1;
    let req = request(OpCode::WriteZeroes, object as u32 % PGS, object, 0, PIECE, c.seq);
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < Duration::from_secs(10) {
        for osd in 0..3u32 {
            let (resp, _) = c.call(osd, req, bytes::Bytes::new());
            match resp.status {
                Status::Ok => return,
                Status::NotLeader | Status::Retry => last = Some(resp),
                other => panic!("trim {object} got {other:?}: {resp:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pg = object as u32 % PGS;
    let states: Vec<String> = (0..3u32)
        .map(|o| {
            let s = c.status(o);
            let p = s.pgs.iter().find(|p| p.pg.index == pg);
            format!("osd {o}: segments {:?} used {:.3} counters {:?}\n  pg: {p:?}", s.segments, s.space_used, s.counters)
        })
        .collect();
    panic!("trim {object} (pg {pg}) not done in 10 s, last {last:?}\n{}", states.join("\n"));
}

/// Writes until both (small) followers are full, then trims everything. The trims used to
/// stall in about 1 run of 4-8: writes the leader admitted before it heard that its
/// followers filled up were dropped by them (below the floor), so those entries never
/// committed and the trims queued behind them never applied. Now the leader steps aside
/// (see `store/fullness.rs`); the deterministic version of that race is
/// [`trims_go_through_when_both_followers_fill_up_under_an_admitted_write`].
#[test]
fn writes_get_no_space_when_no_majority_has_room_and_resume_by_themselves_after_trims() {
    // The leader has room; both followers are small (but hold enough segments that the
    // full ratio, not the last free segments, is what stops them).
    let mut c = Cluster::with_sizes(&[256 * MIB, 96 * MIB, 96 * MIB], &[0, 1, 2], MIB).started();
    for pg in 0..PGS {
        c.make_leader(pg, 0);
    }
    let mut written = 0u64;
    let refused = loop {
        assert!(written < 500, "the followers never filled");
        c.seq += 1;
        let req = request(OpCode::Write, written as u32 % PGS, written, 0, PIECE, c.seq);
        let (resp, _, _) = c.routed_final(req, bytes::Bytes::from(block(written as u8, 64)), Duration::from_secs(10));
        match resp.status {
            Status::Ok => written += 1,
            Status::NoSpace => {
                // Refused by the leader, which has room, because both followers said they
                // have none (at the full ratio, or out of free segments until their cleaner
                // catches up).
                assert!(
                    resp.message.contains("no majority") && resp.message.contains("osd 1") && resp.message.contains("osd 2"),
                    "{}",
                    resp.message
                );
                break written;
            }
            other => panic!("write {written} got {other:?} instead of NoSpace"),
        }
    };
    eprintln!("NoSpace after {refused} writes of 256 KiB");
    assert!(!c.refuses(0), "the leader has room");
    assert!((0..3).all(|o| c.alive(o)), "every store keeps running");
    // Reads still work; trims are taken and free the space; writes come back by themselves.
    assert_eq!(c.read(0, 0, 0, 4096), block(0, 1));
    for o in 0..refused {
        trim_or_explain(&mut c, o);
    }
    let t = Instant::now();
    loop {
        match c.put(5000) {
            Status::Ok => break,
            Status::NoSpace if t.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("after the trims a write still gets {other:?}"),
        }
    }
    eprintln!("writes admitted again {:?} after the trims", t.elapsed());
    assert_eq!(c.read(5000 % PGS, 5000, 0, 4096), block(5000u32 as u8, 1));
}

/// Regression (issue 14): both followers fill up just as the leader admits a write. They
/// drop its entry, which can then never commit; the trim queued behind it (the only thing
/// that frees space) must still go through: the leader steps aside for a follower whose log
/// ends at the commit index, the new leader's log overwrites the entry (its write was never
/// acknowledged; the client's retry gets `NoSpace`), and the trim commits.
#[test]
fn trims_go_through_when_both_followers_fill_up_under_an_admitted_write() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let mut c = Cluster::with_sizes(&[256 * MIB; 3], &[0, 1, 2], MIB).started();
    let pg = 0u32;
    c.make_leader(pg, 0);
    let object = |i: u64| i * PGS as u64 + pg as u64; // objects of PG 0
    assert_eq!(c.put(object(0)), Status::Ok);
    assert_eq!(c.put(object(1)), Status::Ok);
    let full = tessera_engine::device::FaultSettings { space_full: true, ..Default::default() };
    // The write must reach the leader before any Raft batch tells it the followers are full
    // (they say so in their next answer, within a heartbeat): retry the race if it is lost.
    let mut admitted = None;
    for attempt in 0..20 {
        c.nodes[1].faults.set(full);
        c.nodes[2].faults.set(full);
        c.seq += 1;
        let req = request(OpCode::Write, pg, object(1), 0, PIECE, c.seq);
        let data = bytes::Bytes::from(block(99, 64));
        let mut rx = submit(c.nodes[0].tx.as_ref().unwrap(), req, data.clone());
        std::thread::sleep(Duration::from_millis(500));
        match rx.try_recv() {
            Err(_) => {
                admitted = Some((rx, req, data));
                break;
            }
            Ok(o) => {
                assert_eq!(o.resp.status, Status::NoSpace, "attempt {attempt}: {:?}", o.resp);
                c.nodes[1].faults.set(Default::default());
                c.nodes[2].faults.set(Default::default());
                wait_until("the followers take data again", Duration::from_secs(10), || !c.refuses(1) && !c.refuses(2));
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    let (mut rx, req, data) = admitted.expect("a write admitted before the leader heard, in 20 attempts");
    // The trim behind it goes through while both followers stay full.
    let t = Instant::now();
    trim_or_explain(&mut c, object(0));
    eprintln!("trim done {:?} after the stalled write", t.elapsed());
    assert!(c.refuses(1) && c.refuses(2), "the followers are still full");
    assert!(c.status(0).counters.step_asides >= 1, "osd 0 stepped aside: {:?}", c.status(0).counters);
    // The stalled write was never acknowledged: its client hears to go elsewhere (or to
    // retry), and the retry is refused for lack of room.
    let (resp, _) = answer(&mut rx, Duration::from_secs(10));
    assert!(matches!(resp.status, Status::NotLeader | Status::Retry), "the stalled write: {resp:?}");
    let (resp, _, _) = c.routed_final(req, data, Duration::from_secs(10));
    assert_eq!(resp.status, Status::NoSpace, "{resp:?}");
    assert_eq!(c.read(pg, object(1), 0, 4096), block(object(1) as u8, 1), "the unacknowledged write left nothing");
    assert_eq!(c.read(pg, object(0), 0, 4096), vec![0u8; 4096], "the trim applied");
    // Room comes back: writes go on.
    c.nodes[1].faults.set(Default::default());
    c.nodes[2].faults.set(Default::default());
    wait_until("the followers take data again", Duration::from_secs(10), || !c.refuses(1) && !c.refuses(2));
    assert_eq!(c.put(object(2)), Status::Ok);
}

#[test]
fn a_full_leader_hands_its_pgs_to_replicas_with_room_and_writes_go_on() {
    let mut c = Cluster::with_sizes(&[24 * MIB, 96 * MIB, 96 * MIB], &[0, 1, 2], MIB).started();
    for pg in 0..PGS {
        c.make_leader(pg, 0);
    }
    let mut written = 0u64;
    while !c.refuses(0) {
        assert!(written < 200, "osd 0 never filled");
        assert_eq!(c.put(written), Status::Ok, "write {written}");
        written += 1;
    }
    // Writes keep succeeding: osd 0 gives up leadership to 1 or 2, which have room.
    for _ in 0..60 {
        assert_eq!(c.put(written), Status::Ok, "write {written} with the leader's device full");
        written += 1;
    }
    for pg in 0..PGS {
        assert_ne!(c.role(0, pg), "leader", "pg {pg}: the full osd still leads");
    }
    assert!(c.alive(0));
}

/// The safety net: with the store's own space checks off on osd 2, its engine itself runs
/// out of space under the leader's appends. The store used to stop there (and stop again
/// after every restart); it now reopens its replicas and keeps running.
#[test]
fn an_engine_out_of_space_makes_the_store_reopen_its_replicas_not_stop() {
    let mut c = Cluster::with_sizes(&[72 * MIB, 72 * MIB, 24 * MIB], &[0, 1, 2], MIB);
    c.space_checks[2] = false;
    let mut c = c.started();
    for pg in 0..PGS {
        c.make_leader(pg, 0);
    }
    let mut written = 0u64;
    while c.status(2).counters.no_space_rounds == 0 {
        assert!(written < 300, "osd 2's engine never ran out of space");
        assert_eq!(c.put(written), Status::Ok, "write {written}");
        written += 1;
    }
    for _ in 0..20 {
        assert_eq!(c.put(written), Status::Ok);
        written += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.alive(2), "osd 2's store stopped on NoSpace from its engine");
    let before = c.status(2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.status(2).pgs.len(), PGS as usize, "osd 2 still hosts and reports its replicas");
    assert!(c.status(2).counters.no_space_rounds >= before.counters.no_space_rounds);
    for o in (0..written).step_by(7) {
        assert_eq!(c.read(o as u32 % PGS, o, 0, 4096), block(o as u8, 1), "object {o}");
    }
}
