//! The replicated data path end to end, as real processes on loopback: one mon, three
//! `tessera osd run` daemons, IO through `tessera-client`. Faults are real: kill -9 and
//! SIGSTOP of OSD processes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tessera_client::{Client, ClientOptions, Volume};
use tessera_testkit::cluster::{ClusterOptions, TestCluster};
use tessera_wire::WirePg;

mod common;

use common::{pg_states, tagged, wait_clean, BIN};
const VOLUME: u64 = 32 << 20;
const BLOCKS: u64 = VOLUME / 4096;

fn setup(name: &str) -> (tempfile::TempDir, TestCluster, tokio::runtime::Runtime, Client, Volume) {
    setup_with(name, ClusterOptions::default())
}

fn setup_with(name: &str, opts: ClusterOptions) -> (tempfile::TempDir, TestCluster, tokio::runtime::Runtime, Client, Volume) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(BIN, dir.path(), opts);
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", name, "--size", "32M", "--object-size", "1M"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opts = ClientOptions { op_timeout: Duration::from_secs(20), ..Default::default() };
    let (client, volume) = rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], opts).await.unwrap();
        let volume = client.open_volume(name).await.unwrap();
        (client, volume)
    });
    (dir, cluster, rt, client, volume)
}

/// Writes blocks one at a time (each acknowledged before the next is sent) for `dur`,
/// returning the model of acknowledged contents and the longest pause between two acks.
async fn write_stream(vol: &Volume, model: &mut HashMap<u64, u64>, next_write: &mut u64, dur: Duration) -> Duration {
    let start = Instant::now();
    let mut last_ack = Instant::now();
    let mut worst = Duration::ZERO;
    while start.elapsed() < dur {
        *next_write += 1;
        let block = (*next_write * 7919) % BLOCKS;
        vol.write(block * 4096, tagged(block, *next_write)).await.unwrap_or_else(|e| panic!("write {next_write} failed: {e}"));
        model.insert(block, *next_write);
        worst = worst.max(last_ack.elapsed());
        last_ack = Instant::now();
    }
    worst
}

async fn verify(vol: &Volume, model: &HashMap<u64, u64>) {
    let all = vol.read(0, VOLUME).await.unwrap();
    for block in 0..BLOCKS {
        let got = &all[(block * 4096) as usize..((block + 1) * 4096) as usize];
        match model.get(&block) {
            Some(w) => assert!(got == &tagged(block, *w)[..], "block {block}: acknowledged write {w} lost or stale"),
            None => assert!(got.iter().all(|b| *b == 0), "block {block} was never written but reads non-zero"),
        }
    }
}

/// Writes block 0 (so the client has met the leader of object 0's PG) and returns that PG.
fn pg_of_object0(rt: &tokio::runtime::Runtime, client: &Client, vol: &Volume, model: &mut HashMap<u64, u64>, w: &mut u64) -> WirePg {
    *w += 1;
    rt.block_on(vol.write(0, tagged(0, *w))).unwrap();
    model.insert(0, *w);
    pg_of(client, vol, 0)
}

fn pg_of(client: &Client, vol: &Volume, object: u64) -> WirePg {
    let map = client.map();
    let pool = map.pool(vol.record().pool_id).unwrap();
    WirePg { pool: pool.id, index: tessera_placement::object_to_pg(vol.id(), object, pool.pg_count).unwrap() }
}

#[test]
fn leader_kill9_mid_stream_resumes_and_loses_nothing_then_restarted_osd_catches_up() {
    let (_dir, mut cluster, rt, client, vol) = setup("v");
    let mut model = HashMap::new();
    let mut w = 0;
    rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(1)));
    rt.block_on(verify(&vol, &model));

    // Kill -9 the leader of object 0's PG while the stream runs.
    let pg = pg_of_object0(&rt, &client, &vol, &mut model, &mut w);
    let leader_id = client.leader_hint(pg).expect("a leader answered for object 0");
    let victim = cluster.index_of(leader_id).expect("leader is one of our processes");
    let killer = std::thread::spawn({
        let mut daemon_pid = cluster.osds[victim].daemon.pid();
        move || {
            std::thread::sleep(Duration::from_millis(500));
            if let Some(pid) = daemon_pid.take() {
                // SAFETY: SIGKILL to our own child (the fixture reaps it below).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    });
    let stall = rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(5)));
    killer.join().unwrap();
    cluster.kill9(victim);
    eprintln!("longest pause between acknowledged writes across the leader kill: {stall:?}");
    assert!(stall < Duration::from_secs(10), "IO stalled {stall:?} after the leader was killed (target < 3 s)");
    assert_ne!(client.leader_hint(pg), Some(leader_id), "the dead OSD cannot still lead");
    rt.block_on(verify(&vol, &model));

    // The killed OSD restarts, catches up from the log, and then must carry the quorum:
    // with another OSD paused, every read and write needs it.
    cluster.restart(victim);
    cluster.wait_osds_up(3, Duration::from_secs(20));
    wait_clean(&cluster, Duration::from_secs(30), |_| true);
    let other = (0..3).find(|i| *i != victim).unwrap();
    cluster.pause(other);
    rt.block_on(async {
        verify(&vol, &model).await;
        write_stream(&vol, &mut model, &mut w, Duration::from_millis(500)).await;
        verify(&vol, &model).await;
    });
    cluster.resume(other);
}

#[test]
fn paused_follower_does_not_block_io_and_catches_up_after_resume() {
    let (_dir, mut cluster, rt, client, vol) = setup("p");
    let mut model = HashMap::new();
    let mut w = 0;
    rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_millis(500)));
    let pg = pg_of_object0(&rt, &client, &vol, &mut model, &mut w);
    let leader = cluster.index_of(client.leader_hint(pg).unwrap()).unwrap();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    cluster.pause(follower);
    let stall = rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(2)));
    eprintln!("longest pause with one OSD SIGSTOPped (it leads some PGs: those wait for an election): {stall:?}");
    cluster.resume(follower);
    wait_clean(&cluster, Duration::from_secs(30), |_| true);
    // Now the other follower stops: the resumed one must have caught up to form a quorum.
    let third = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    cluster.pause(third);
    rt.block_on(async {
        write_stream(&vol, &mut model, &mut w, Duration::from_millis(500)).await;
        verify(&vol, &model).await;
    });
    cluster.resume(third);
}

/// `(pg, state, voters, target)` of every PG, from `tessera cluster pgs --json`.
#[test]
fn wiped_follower_returns_as_a_new_osd_and_every_pg_heals_to_three_identical_replicas() {
    let opts = ClusterOptions { out_after: "3s".into(), ..Default::default() };
    let (_dir, mut cluster, rt, client, vol) = setup_with("w", opts);
    let mut model = HashMap::new();
    let mut w = 0;
    rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(1)));
    wait_clean(&cluster, Duration::from_secs(20), |_| true);
    let status = cluster.cli_ok(&["cluster", "status"]);
    assert!(status.contains("pg states:   8 active+clean"), "{status}");

    // A follower of object 0's PG loses its device.
    let pg = pg_of_object0(&rt, &client, &vol, &mut model, &mut w);
    let leader = cluster.index_of(client.leader_hint(pg).unwrap()).unwrap();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let old_id = cluster.osd_list().into_iter().find(|(_, a, _)| *a == format!("127.0.0.1:{}", cluster.osds[victim].port)).unwrap().0;
    cluster.wipe(victim);
    rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(2)));
    // Degraded once the mon marks the OSD down (2 s without heartbeats) or a leader reports
    // it lagging: poll, the moment depends on the machine's load.
    let t = Instant::now();
    let mut degraded = pg_states(&cluster);
    while !degraded.iter().any(|s| s.1.contains("degraded")) && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
        degraded = pg_states(&cluster);
    }
    assert!(degraded.iter().any(|s| s.1.contains("degraded")), "PGs with a dead replica show degraded: {degraded:?}");

    // It comes back empty, as a new OSD; the PGs re-replicate onto it by themselves.
    cluster.restart(victim);
    let healed = wait_clean(&cluster, Duration::from_secs(90), |states| states.iter().all(|s| !s.3.contains(&old_id) && s.2.len() == 3));
    eprintln!("all PGs active+clean on the new OSD {healed:?} after it started");
    rt.block_on(verify(&vol, &model));

    // Every replica of every PG holds the same objects with the same bytes. Followers apply
    // the last commit with the next heartbeat (200 ms); no report shows followers' applied
    // index, so give them a few heartbeats.
    std::thread::sleep(Duration::from_secs(1));
    let states = pg_states(&cluster);
    let index_of: HashMap<u32, usize> = cluster.osd_list().iter().filter_map(|(id, _, _)| Some((*id, cluster.index_of(*id)?))).collect();
    for i in 0..3 {
        cluster.kill9(i);
    }
    let engines: HashMap<usize, tessera_engine::Engine> = (0..3)
        .map(|i| {
            let dev = tessera_engine::FileDevice::open(&cluster.osds[i].data).unwrap();
            (i, tessera_engine::Engine::open(std::sync::Arc::new(dev), Default::default()).unwrap())
        })
        .collect();
    let mut objects = 0;
    for (name, _, voters, _) in &states {
        let (pool, index) = name.split_once('.').unwrap();
        let pgid = tessera_engine::PgId::new(pool.parse().unwrap(), u32::from_str_radix(index, 16).unwrap());
        let contents: Vec<Vec<(tessera_engine::ObjectKey, Vec<u8>)>> = voters
            .iter()
            .map(|v| {
                let e = &engines[&index_of[v]];
                e.list_objects(pgid).into_iter().map(|(k, info)| (k, e.read(pgid, k, 0, info.extent_end).unwrap())).collect()
            })
            .collect();
        objects += contents[0].len();
        for (n, c) in contents.iter().enumerate().skip(1) {
            assert!(c == &contents[0], "pg {name}: replica on osd {} differs from osd {}", voters[n], voters[0]);
        }
    }
    assert!(objects > 0, "the check compared real objects");
    eprintln!("{objects} objects identical on all three replicas of {} PGs", states.len());
}

#[test]
fn osd_data_port_closes_connections_on_garbage_answers_bad_requests_and_keeps_serving() {
    use std::io::{Read, Write};
    let (_dir, cluster, rt, _client, vol) = setup("g");
    let port = cluster.osds[0].port;
    let closed = |mut s: std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    };
    // Garbage, a truncated header with a bad magic, and a frame of an unknown kind.
    for bad in [vec![0xffu8; 100], b"TSW2\x01".to_vec(), {
        let h = tessera_wire::FrameHeader::new(99, 0, 1, b"", &[]);
        h.0.to_vec()
    }] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&bad).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        assert!(closed(s), "connection closed after {bad:?}");
    }
    // A well-formed but invalid request (unaligned) gets an Invalid answer, not a crash.
    let req = tessera_wire::Request {
        op: tessera_wire::OpCode::Write,
        pg: WirePg { pool: vol.record().pool_id, index: 0 },
        epoch: 0,
        volume: 1,
        object: 0,
        snap: u64::MAX,
        offset: 7,
        len: 4096,
        client: 1,
        seq: 1,
        floor: 0,
        snapc: 0,
    };
    let meta = req.encode();
    let data = vec![0u8; 4096];
    let h = tessera_wire::FrameHeader::new(tessera_wire::kind::REQUEST, 0, 42, &meta, &[&data]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[&h.0[..], &meta, &data].concat()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut dec = tessera_wire::FrameDecoder::new(4096, 1 << 20);
    let frame = loop {
        if let Some(f) = dec.decode(&mut buf).unwrap() {
            break f;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "OSD closed the connection instead of answering");
        buf.extend_from_slice(&chunk[..n]);
    };
    let resp = tessera_wire::Response::decode(&frame.meta).unwrap();
    assert_eq!(frame.request_id, 42);
    assert_eq!(resp.status, tessera_wire::Status::Invalid, "{resp:?}");
    assert!(resp.message.contains("multiple of 4096"), "{resp:?}");
    // Everyone else is still served.
    rt.block_on(async {
        vol.write(0, tagged(0, 1)).await.unwrap();
        assert_eq!(vol.read(0, 4096).await.unwrap(), tagged(0, 1));
    });
    assert!(cluster.osd_list().iter().all(|(_, _, up)| *up), "no OSD went down");
}

/// Every OSD loses power at the same moment (kill -9 of all three with the volatile write
/// cache device: whatever was written since each one's last fsync is gone, torn or kept at
/// random). Rounds of applies only are written without an fsync of their own
/// (`osd/src/store/rounds.rs::replayable`), so the cut loses recent applies on every replica;
/// they must come back from the Raft logs, and no acknowledged write may be missing.
#[test]
fn a_power_cut_of_every_osd_at_once_loses_no_acknowledged_write() {
    let opts = ClusterOptions { osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()], ..Default::default() };
    let (_dir, mut cluster, rt, _client, vol) = setup_with("v", opts);
    let mut model = HashMap::new();
    let mut w = 0;
    for round in 0..3 {
        rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_millis(1500)));
        for i in 0..3 {
            cluster.kill9(i);
        }
        for i in 0..3 {
            cluster.restart(i);
        }
        cluster.wait_osds_up(3, Duration::from_secs(30));
        rt.block_on(verify(&vol, &model));
        eprintln!("power cut {round}: {} acknowledged writes, all there", model.len());
    }
}

/// End-to-end checksums on writes: every OSD flips a bit in some of the log entry payloads
/// it hands to its engine (`corrupt_appends`, memory corruption between receipt and disk).
/// The client's block checksums travel in the entry, each replica's engine checks the
/// payload against them and refuses the round, and the entry comes again from Raft: no
/// write is lost and no replica stores a changed block (scrub compares them all).
#[test]
fn a_payload_changed_inside_an_osd_is_refused_by_the_end_to_end_checksums_and_never_stored() {
    let opts = ClusterOptions { osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()], ..Default::default() };
    let (_dir, cluster, rt, _client, vol) = setup_with("v", opts);
    let set = |text: &str| {
        for i in 0..3 {
            std::fs::write(cluster.dir.join(format!("osd{i}.faults")), text).unwrap();
        }
    };
    let mut model = HashMap::new();
    let mut w = 0;
    set("corrupt_appends=0.05\n");
    std::thread::sleep(Duration::from_millis(300)); // the OSDs look at the file every 100 ms
    rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(4)));
    set("");
    let logs = cluster.logs();
    let corrupted = logs.matches("corrupting a log entry's payload").count();
    let refused = logs.matches("does not match the checksum it came with").count();
    eprintln!("{w} writes, {corrupted} payloads corrupted, {refused} rounds refused");
    assert!(corrupted > 0 && refused > 0, "the fault must have been injected and caught:\n{logs}");
    wait_clean(&cluster, Duration::from_secs(60), |_| true);
    rt.block_on(verify(&vol, &model));
    let out = cluster.cli(&["scrub"]);
    assert!(
        out.status.success(),
        "replicas differ after corrupted payloads:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// End-to-end checksums on reads: every OSD flips a bit in some read answers after its
/// engine verified them (`corrupt_reads`). The answer carries the checksums the blocks were
/// stored with, so the client refuses the changed block (closing that connection) and reads
/// again: every read returns exactly what was written.
#[test]
fn a_read_changed_inside_an_osd_is_caught_by_the_client() {
    let opts = ClusterOptions { osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()], ..Default::default() };
    let (_dir, cluster, rt, _client, vol) = setup_with("v", opts);
    let mut model = HashMap::new();
    let mut w = 0;
    rt.block_on(write_stream(&vol, &mut model, &mut w, Duration::from_secs(2)));
    for i in 0..3 {
        std::fs::write(cluster.dir.join(format!("osd{i}.faults")), "corrupt_reads=0.1\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        rt.block_on(verify(&vol, &model));
    }
    let corrupted = cluster.logs().matches("corrupting a read's data").count();
    eprintln!("{corrupted} read answers corrupted, all caught");
    assert!(corrupted > 0, "the fault must have been injected");
}
