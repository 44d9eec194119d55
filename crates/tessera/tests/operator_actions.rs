//! Operator actions under load, as real processes on loopback (one mon, `tessera osd run`
//! daemons, IO through the real client library): a new OSD joins, the OSD that leads a PG
//! holding 1 GiB goes `out` (so the PG is backfilled onto another OSD while its leader's
//! OSD leaves), comes back `in`, and an OSD is removed for good with `tessera osd rm`.
//!
//! The bound: no single client request of a QD1 probe (alternating 4 KiB writes and reads,
//! every read checked against what was acknowledged) may wait longer than
//! [`OPERATOR_BOUND`]. A crash costs an election (1-2 s of raft-rs election timeout plus the
//! client's retry); an operator action must not cost more than that plus 1 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::{Client, ClientOptions, Volume};
use tessera_testkit::cluster::{ClusterOptions, TestCluster};
use tessera_wire::WirePg;

mod common;

use common::{pg_states, tagged, wait_clean, BIN};

/// Longest single request allowed while an operator action runs: the cost of an actual
/// failure (an election: at most 2 s of election timeout, plus the client's retry pause)
/// plus 1 s.
const OPERATOR_BOUND: Duration = Duration::from_millis(3_500);

/// The bulk the moved PG holds.
const BULK: u64 = 1 << 30;
/// The probe's blocks, past the bulk data.
const PROBE_BLOCKS: u64 = 256;

/// What the probe saw.
#[derive(Default, Debug)]
struct ProbeReport {
    writes: u64,
    reads: u64,
    /// Longest single request, and what it was.
    worst: Duration,
    worst_what: String,
    /// When the longest request started.
    worst_at: Option<Instant>,
    /// Acknowledged contents of the probe's blocks (block -> write id).
    model: HashMap<u64, u64>,
}

/// QD1 probe: writes a block, reads another one back and checks it against the model, until
/// `stop`. Any error or wrong byte fails the test at once.
async fn probe(vol: Volume, stop: Arc<AtomicBool>) -> ProbeReport {
    let mut r = ProbeReport::default();
    let base = BULK / 4096;
    let mut w = 0u64;
    while !stop.load(Ordering::Relaxed) {
        w += 1;
        let block = base + (w * 7919) % PROBE_BLOCKS;
        let t = Instant::now();
        vol.write(block * 4096, tagged(block, w)).await.unwrap_or_else(|e| panic!("probe write {w} failed after {:?}: {e}", t.elapsed()));
        let took = t.elapsed();
        if took > r.worst {
            (r.worst, r.worst_at) = (took, Some(t));
            r.worst_what = format!("write {w} of block {block}");
        }
        r.model.insert(block, w);
        r.writes += 1;
        let check = base + (w * 104_729) % PROBE_BLOCKS;
        let t = Instant::now();
        let got = vol
            .read(check * 4096, 4096)
            .await
            .unwrap_or_else(|e| panic!("probe read of block {check} failed after {:?}: {e}", t.elapsed()));
        let took = t.elapsed();
        if took > r.worst {
            (r.worst, r.worst_at) = (took, Some(t));
            r.worst_what = format!("read of block {check} after write {w}");
        }
        match r.model.get(&check) {
            Some(v) => assert!(got == tagged(check, *v), "block {check}: read does not return acknowledged write {v}"),
            None => assert!(got.iter().all(|b| *b == 0), "block {check} never written but reads non-zero"),
        }
        r.reads += 1;
    }
    r
}

/// Fills `[0, BULK)` with non-zero data, 1 MiB writes, 8 in flight.
async fn fill(vol: &Volume) {
    let chunk = 1u64 << 20;
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for i in 0..BULK / chunk {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let vol = vol.clone();
        tasks.push(tokio::spawn(async move {
            let data = Bytes::from(vec![(i as u8) | 1; chunk as usize]);
            vol.write(i * chunk, data).await.unwrap_or_else(|e| panic!("bulk write {i} failed: {e}"));
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The pool's one PG.
fn pg0(vol: &Volume) -> WirePg {
    WirePg { pool: vol.record().pool_id, index: 0 }
}

/// Whether every PG's Raft voters are exactly its map entry's OSDs (in any order).
fn settled(states: &[(String, String, Vec<u32>, Vec<u32>)]) -> bool {
    states.iter().all(|p| {
        let (mut v, mut t) = (p.2.clone(), p.3.clone());
        v.sort();
        t.sort();
        v == t
    })
}

fn id_of(cluster: &TestCluster, i: usize) -> u32 {
    let addr = cluster.osd_addr(i);
    cluster.osd_list().into_iter().find(|(_, a, _)| *a == addr).unwrap_or_else(|| panic!("osd process {i} is not registered")).0
}

#[test]
fn a_joining_osd_and_out_in_of_the_leader_of_a_1_gib_pg_keep_every_request_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { osd_size: "3G".into(), ..Default::default() };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    cluster.cli_ok(&["pool", "create", "p", "--pg-count", "1"]);
    cluster.cli_ok(&["volume", "create", "v", "--pool", "p", "--size", "1040M"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let copts = ClientOptions { op_timeout: Duration::from_secs(60), ..Default::default() };
    let (client, vol) = rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], copts).await.unwrap();
        let vol = client.open_volume("v").await.unwrap();
        (client, vol)
    });
    let t = Instant::now();
    rt.block_on(fill(&vol));
    eprintln!("filled {} MiB in {:?}", BULK >> 20, t.elapsed());
    wait_clean(&cluster, Duration::from_secs(60), |_| true);

    let start = Instant::now();
    let at = |t: Instant| format!("{:.2?}", t.duration_since(start));
    let stop = Arc::new(AtomicBool::new(false));
    let probe_task = rt.spawn(probe(vol.clone(), stop.clone()));
    let pg = pg0(&vol);

    // A 4th OSD joins: the PG may move onto it (a backfill of 1 GiB).
    let t = Instant::now();
    eprintln!("{}: a 4th OSD joins", at(t));
    let new = cluster.add_osd();
    cluster.wait_osds_up(4, Duration::from_secs(30));
    let new_id = id_of(&cluster, new);
    let took = wait_clean(&cluster, Duration::from_secs(300), settled);
    eprintln!("osd {new_id} joined; PGs clean again after {:?} ({:?} since it started)", took, t.elapsed());

    // The OSD leading the PG goes out: the PG is backfilled onto the other three while its
    // leader's OSD leaves the group.
    std::thread::sleep(Duration::from_millis(500));
    let leader = client.leader_hint(pg).expect("the probe met the PG's leader");
    let t = Instant::now();
    eprintln!("{}: osd {leader} out", at(t));
    cluster.cli_ok(&["osd", "out", &leader.to_string()]);
    let took = wait_clean(&cluster, Duration::from_secs(300), |s| settled(s) && s.iter().all(|p| !p.2.contains(&leader)));
    eprintln!("osd {leader} (the PG's leader) out: PG moved and clean after {took:?} ({:?})", t.elapsed());
    let states = pg_states(&cluster);

    // And back in.
    eprintln!("{}: osd {leader} in", at(Instant::now()));
    cluster.cli_ok(&["osd", "in", &leader.to_string()]);
    let took = wait_clean(&cluster, Duration::from_secs(300), settled);
    eprintln!("osd {leader} in again: clean after {took:?}");

    stop.store(true, Ordering::Relaxed);
    let report = rt.block_on(probe_task).unwrap();
    eprintln!(
        "probe: {} writes, {} reads; longest request {:?} ({}, started at {}); states after the out: {states:?}",
        report.writes,
        report.reads,
        report.worst,
        report.worst_what,
        report.worst_at.map_or("-".into(), at)
    );
    assert!(report.writes > 100, "the probe ran throughout");
    assert!(
        report.worst <= OPERATOR_BOUND,
        "a request waited {:?} ({}) during the operator actions; the bound is {OPERATOR_BOUND:?}\n{}",
        report.worst,
        report.worst_what,
        cluster.logs()
    );
    // Everything acknowledged is there, also the bulk.
    rt.block_on(async {
        for (block, w) in &report.model {
            assert!(vol.read(block * 4096, 4096).await.unwrap() == tagged(*block, *w), "block {block} lost write {w}");
        }
        for i in (0..BULK >> 20).step_by(97) {
            let got = vol.read(i << 20, 1 << 20).await.unwrap();
            assert!(got.iter().all(|b| *b == (i as u8) | 1), "bulk MiB {i} changed");
        }
    });
}

fn cli_err(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.cli(args);
    assert!(!out.status.success(), "tessera {args:?} should have been refused: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_down(cluster: &TestCluster, id: u32) {
    let t = Instant::now();
    while cluster.osd_list().iter().any(|(i, _, up)| *i == id && *up) {
        assert!(t.elapsed() < Duration::from_secs(20), "osd {id} never marked down");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tessera osd rm` removes an OSD for good, and only once nothing can need it: refused while
/// it is in, while it is up, while a PG still counts it as a member (the copy to its
/// replacement is held up), and then the removed device cannot register again.
#[test]
fn osd_rm_is_refused_while_anything_may_need_the_osd_and_a_removed_device_stays_out() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { osds: 4, ..Default::default() };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    cluster.cli_ok(&["pool", "create", "p", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", "v", "--pool", "p", "--size", "32M", "--object-size", "1M"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let copts = ClientOptions { op_timeout: Duration::from_secs(30), ..Default::default() };
    let vol = rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], copts).await.unwrap();
        let vol = client.open_volume("v").await.unwrap();
        for block in 0..64u64 {
            vol.write(block * (512 << 10), tagged(block, 1)).await.unwrap();
        }
        vol
    });
    wait_clean(&cluster, Duration::from_secs(60), settled);
    // The victim holds replicas of most PGs (8 PGs x 3 replicas on 4 OSDs).
    let victim = 0;
    let id = id_of(&cluster, victim);
    let held = pg_states(&cluster).iter().filter(|p| p.2.contains(&id)).count();
    assert!(held > 0, "osd {id} holds PGs");
    assert!(cli_err(&cluster, &["osd", "rm", &id.to_string()]).contains("it is in"), "refused while in");
    assert!(cli_err(&cluster, &["osd", "rm", "99"]).contains("no OSD with id 99"));

    // The OSD that would take its place is hung, so its PGs cannot move yet.
    let spare = (0..4).find(|i| *i != victim).unwrap();
    let out = cluster.cli(&["osd", "out", &id.to_string()]);
    assert!(out.status.success());
    let err = cli_err(&cluster, &["osd", "rm", &id.to_string()]);
    assert!(err.contains("it is up"), "refused while its daemon runs: {err}");
    cluster.pause(spare);
    cluster.kill9(victim);
    wait_down(&cluster, id);
    let err = cli_err(&cluster, &["osd", "rm", &id.to_string()]);
    assert!(err.contains("still count it as a member") || err.contains("no active leader"), "refused while PGs need it: {err}");
    assert!(cluster.osd_list().iter().any(|(i, _, _)| *i == id), "still registered");

    // Once every PG has moved off it, it goes.
    cluster.resume(spare);
    wait_clean(&cluster, Duration::from_secs(90), |s| settled(s) && s.iter().all(|p| !p.2.contains(&id)));
    let done = cluster.cli_ok(&["osd", "rm", &id.to_string()]);
    assert!(done.contains(&format!("osd {id} removed")), "{done}");
    assert!(cluster.osd_list().iter().all(|(i, _, _)| *i != id), "gone from the map");
    assert!(cli_err(&cluster, &["osd", "rm", &id.to_string()]).contains(&format!("no OSD with id {id}")));

    // Its device cannot come back, neither as the removed OSD nor as a new one.
    cluster.osds[victim].daemon.restart();
    let t = Instant::now();
    while cluster.osds[victim].daemon.is_running() {
        assert!(t.elapsed() < Duration::from_secs(20), "the removed device's daemon keeps running:\n{}", cluster.osds[victim].daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = cluster.osds[victim].daemon.log();
    assert!(log.contains("removed with `tessera osd rm`"), "it says why it stopped:\n{log}");
    assert_eq!(cluster.osd_list().len(), 3, "no new OSD registered");
    rt.block_on(async {
        for block in 0..64u64 {
            assert!(vol.read(block * (512 << 10), 4096).await.unwrap() == tagged(block, 1), "block {block}");
        }
    });
}
