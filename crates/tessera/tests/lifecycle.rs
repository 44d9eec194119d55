//! Volume lifecycle end to end with real clients: a mon and three OSDs as processes,
//! `tessera nbd` as a process, qemu-io/nbdinfo over NBD and the admin CLI for snapshots,
//! clones, rollback, flatten, resize and delete.

mod common;

use std::time::{Duration, Instant};

use common::{run, run_ok, start_nbd, wait_clean, BIN};
use tessera_nbd::raw_client::RawClient;
use tessera_testkit::cluster::TestCluster;
use tessera_wire::ScanEntry;

const MIB: u64 = 1 << 20;

/// Runs qemu-io commands on an export; every `read -P` must verify.
fn qio(uri: &str, read_only: bool, cmds: &[&str]) {
    let mut args: Vec<&str> = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run_ok("qemu-io", &args);
    assert!(!out.contains("failed") && !out.contains("error"), "qemu-io {cmds:?} on {uri}:\n{out}");
}

/// `(used_bytes, head_bytes)` from `tessera volume info --json`.
fn usage(cluster: &TestCluster, vol: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&cluster.cli_ok(&["volume", "info", vol, "--json"])).unwrap();
    (v["used_bytes"].as_u64().unwrap(), v["head_bytes"].as_u64().unwrap())
}

fn volume_id(cluster: &TestCluster, vol: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&cluster.cli_ok(&["volume", "info", vol, "--json"])).unwrap();
    v["id"].as_u64().unwrap()
}

fn cli_err(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.cli(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should have been refused:\n{text}");
    text
}

/// Object versions of `volume` stored on the OSD at `addr` (one replica), over `pgs` PGs
/// of pool 0. Read with `Scan`, which any replica answers from its own engine.
fn versions_on(rt: &tokio::runtime::Runtime, addr: &str, pgs: u32, volume: u64) -> Result<Vec<ScanEntry>, String> {
    rt.block_on(async {
        let mut rpc = tessera_osd::snapshot::Rpc::connect(addr).await?;
        let mut found = Vec::new();
        for index in 0..pgs {
            let req = tessera_osd::snapshot::scan_request(tessera_engine::PgId::new(0, index), 0, 0);
            match rpc.call(req).await {
                Ok(data) => found.extend(ScanEntry::decode_all(&data).unwrap().into_iter().filter(|e| e.volume == volume)),
                Err(e) if e.starts_with("NoPg") => {} // no replica of this PG here
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    })
}

#[test]
fn snapshots_clones_rollback_and_delete_over_nbd_with_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(BIN, dir.path(), Default::default());
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", "base", "--size", "16M", "--object-size", "1M"]);
    let (_nbd, port) = start_nbd(&cluster, dir.path(), &[]);
    let uri = |name: &str| format!("nbd://127.0.0.1:{port}/{name}");

    // Pattern A, then snapshot s1, then pattern B over part of it.
    qio(&uri("base"), false, &["write -P 0xa1 0 2M"]);
    assert_eq!(usage(&cluster, "base"), (2 * MIB, 2 * MIB), "thin: only written objects use space");
    let made = cluster.cli_ok(&["snapshot", "create", "base@s1"]);
    assert!(made.contains("snapshot base@s1 created"), "{made}");
    qio(&uri("base"), false, &["write -P 0xb2 512k 1M"]);
    qio(&uri("base@s1"), true, &["read -P 0xa1 0 2M", "read -P 0 2M 14M"]);
    qio(&uri("base"), false, &["read -P 0xa1 0 512k", "read -P 0xb2 512k 1M", "read -P 0xa1 1536k 512k"]);
    // Copy-on-write per object: the two touched objects keep their old blocks (shared with
    // the snapshot), B adds 1 MiB.
    assert_eq!(usage(&cluster, "base"), (3 * MIB, 2 * MIB));

    // The snapshot export is read-only.
    let info = run_ok("nbdinfo", &["--json", &uri("base@s1")]);
    assert!(info.contains("\"is_read_only\": true"), "{info}");
    let w = run("qemu-io", &["-f", "raw", "-c", "write -P 0x11 0 4k", &uri("base@s1")]);
    let text = String::from_utf8_lossy(&w.stdout).into_owned() + &String::from_utf8_lossy(&w.stderr);
    assert!(
        !w.status.success() || text.contains("Operation not permitted") || text.contains("read-only") || text.contains("Read-only"),
        "{text}"
    );
    qio(&uri("base@s1"), true, &["read -P 0xa1 0 2M"]);

    // Clone of the snapshot reads A; writes to it leave the parent alone. Chains: a clone of
    // a snapshot of a clone of a snapshot of a clone.
    cluster.cli_ok(&["volume", "clone", "base@s1", "c1"]);
    qio(&uri("c1"), false, &["read -P 0xa1 0 2M", "write -P 0xc3 0 64k", "read -P 0xc3 0 64k", "read -P 0xa1 64k 1984k"]);
    qio(&uri("base@s1"), true, &["read -P 0xa1 0 2M"]);
    cluster.cli_ok(&["snapshot", "create", "c1@s2"]);
    cluster.cli_ok(&["volume", "clone", "c1@s2", "c2"]);
    qio(&uri("c2"), false, &["write -P 0xd4 1M 64k"]);
    cluster.cli_ok(&["snapshot", "create", "c2@s3"]);
    cluster.cli_ok(&["volume", "clone", "c2@s3", "c3"]);
    qio(&uri("c3"), false, &["write -P 0xe5 2M 4k"]);
    let c2_view = ["read -P 0xc3 0 64k", "read -P 0xa1 64k 960k", "read -P 0xd4 1M 64k", "read -P 0xa1 1088k 960k", "read -P 0 2M 4k"];
    qio(&uri("c2"), false, &c2_view);
    qio(&uri("c3"), false, &["read -P 0xc3 0 64k", "read -P 0xd4 1M 64k", "read -P 0xa1 1088k 960k", "read -P 0xe5 2M 4k"]);
    qio(&uri("c1"), false, &["read -P 0xc3 0 64k", "read -P 0xa1 64k 1984k"]);

    // The parent snapshot cannot go while clones use it.
    let refused = cli_err(&cluster, &["snapshot", "delete", "base@s1"]);
    assert!(refused.contains("c1") && refused.contains("flatten"), "{refused}");

    // Rollback is refused while the volume is open (an NBD connection holds it)...
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let held = rt.block_on(RawClient::connect(([127, 0, 0, 1], port).into(), "base")).expect("open base over NBD");
    let refused = cli_err(&cluster, &["snapshot", "rollback", "base@s1"]);
    assert!(refused.contains("open"), "{refused}");
    rt.block_on(async move { drop(held) });
    // ...and goes through once it is closed (the gateway's session drops it promptly).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cluster.cli(&["snapshot", "rollback", "base@s1"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "rollback still refused: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    qio(&uri("base"), false, &["read -P 0xa1 0 2M"]);
    assert_eq!(usage(&cluster, "base"), (2 * MIB, 2 * MIB), "B's blocks are freed by the rollback");

    // Trim gives the head's space back; the snapshot still holds its blocks.
    qio(&uri("base"), false, &["discard 0 1M", "read -P 0 0 1M"]);
    assert_eq!(usage(&cluster, "base"), (2 * MIB, MIB));
    qio(&uri("base@s1"), true, &["read -P 0xa1 0 2M"]);

    // Flatten the chain from the leaves, deleting each snapshot once free; then base@s1.
    cluster.cli_ok(&["volume", "flatten", "c3"]);
    cluster.cli_ok(&["snapshot", "delete", "c2@s3"]);
    cluster.cli_ok(&["volume", "flatten", "c2"]);
    cluster.cli_ok(&["snapshot", "delete", "c1@s2"]);
    cluster.cli_ok(&["volume", "flatten", "c1"]);
    cluster.cli_ok(&["snapshot", "delete", "base@s1"]);
    assert_eq!(usage(&cluster, "base"), (MIB, MIB), "the deleted snapshot's space is reclaimed");
    qio(&uri("c2"), false, &c2_view);
    qio(&uri("c3"), false, &["read -P 0xc3 0 64k", "read -P 0xd4 1M 64k", "read -P 0xa1 1088k 960k", "read -P 0xe5 2M 4k"]);
    let (c1_used, _) = usage(&cluster, "c1");
    assert_eq!(c1_used, 2 * MIB, "a flattened clone holds its own copy of everything it reads");

    // Resize: grow online (a new connection sees it), shrink only when confirmed, the
    // discarded tail reads zeros after growing again.
    cluster.cli_ok(&["volume", "resize", "c1", "--size", "32M"]);
    assert!(run_ok("nbdinfo", &["--json", &uri("c1")]).contains("\"export-size\": 33554432"));
    let refused = cli_err(&cluster, &["volume", "resize", "c1", "--size", "1M"]);
    assert!(refused.contains("allow-shrink"), "{refused}");
    cluster.cli_ok(&["volume", "resize", "c1", "--size", "1M", "--allow-shrink"]);
    cluster.cli_ok(&["volume", "resize", "c1", "--size", "16M"]);
    qio(&uri("c1"), false, &["read -P 0xc3 0 64k", "read -P 0xa1 64k 960k", "read -P 0 1M 1M"]);
    assert_eq!(usage(&cluster, "c1").0, MIB, "the shrunk tail's space is freed");

    // Delete while an OSD is down: the returning OSD drops the objects too.
    let c3 = volume_id(&cluster, "c3");
    let addrs: Vec<String> = cluster.osd_list().into_iter().map(|(_, addr, _)| addr).collect();
    let before: usize = addrs.iter().map(|a| versions_on(&rt, a, 8, c3).unwrap().len()).sum();
    assert!(before >= 3, "c3's objects are on every replica before the delete ({before} versions)");
    cluster.kill9(0);
    cluster.cli_ok(&["volume", "delete", "c3"]);
    assert!(!cluster.cli_ok(&["volume", "list"]).contains("c3"));
    cluster.restart(0);
    cluster.wait_osds_up(3, Duration::from_secs(30));
    wait_clean(&cluster, Duration::from_secs(60), |_| true);
    // The returning replica learns the delete from its PGs' logs; until it has caught up
    // it may still hold the objects (or not answer yet).
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in &addrs {
        loop {
            let left = versions_on(&rt, a, 8, c3);
            if left.as_ref().is_ok_and(|l| l.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "osd {a} still holds versions of deleted volume c3: {left:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A 4 KiB block that names its index (every 8 bytes).
fn tagged(i: u64) -> bytes::Bytes {
    let mut b = vec![0u8; 4096];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&(i + 1).to_le_bytes());
    }
    bytes::Bytes::from(b)
}

#[test]
fn a_snapshot_under_write_load_with_an_osd_killed_is_a_prefix_of_the_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const N: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(BIN, dir.path(), Default::default());
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", "vol", "--size", "16M", "--object-size", "1M"]);
    cluster.cli_ok(&["volume", "create", "fio", "--size", "32M"]);
    let (_nbd, port) = start_nbd(&cluster, dir.path(), &[]);

    // fio over NBD on another volume, writing and then verifying, for the whole test.
    let fio = std::process::Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri=nbd://127.0.0.1:{port}/fio"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=8M",
            "--verify=crc32c",
            "--do_verify=1",
            "--loops=3",
            "--verify_state_save=0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fio");

    // One writer, one write at a time: block i gets tag i, in order.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opts = tessera_client::ClientOptions { op_timeout: Duration::from_secs(30), ..Default::default() };
    let client = rt.block_on(tessera_client::Client::connect(&[cluster.mon_addr()], opts)).unwrap();
    let vol = rt.block_on(client.open_volume("vol")).unwrap();
    let (issued, acked, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let writer = {
        let (vol, issued, acked, stop) = (vol.clone(), issued.clone(), acked.clone(), stop.clone());
        rt.spawn(async move {
            for i in 0..N {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                issued.store(i + 1, Ordering::SeqCst);
                vol.write(i * 4096, tagged(i)).await.unwrap_or_else(|e| panic!("write {i}: {e}"));
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let wait_for = |n: u64| {
        let t = Instant::now();
        while acked.load(Ordering::SeqCst) < n {
            assert!(t.elapsed() < Duration::from_secs(60), "writer stalled at {}", acked.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(300);
    cluster.kill9(1);
    wait_for(acked.load(Ordering::SeqCst) + 50); // writes go on with two replicas
    let before = acked.load(Ordering::SeqCst);
    cluster.cli_ok(&["snapshot", "create", "vol@s"]);
    let after = issued.load(Ordering::SeqCst);
    cluster.restart(1);
    wait_for(after + 200);
    stop.store(true, Ordering::SeqCst);
    rt.block_on(writer).unwrap();
    let written = acked.load(Ordering::SeqCst);

    // The snapshot holds exactly blocks 0..j with their tags for some j between the writes
    // acknowledged before the command and those issued before it returned, and nothing else.
    let snap = rt.block_on(client.open_volume("vol@s")).unwrap();
    let data = rt.block_on(snap.read(0, N * 4096)).unwrap();
    let holds = |i: u64| data[(i * 4096) as usize..((i + 1) * 4096) as usize] == tagged(i)[..];
    let zero = |i: u64| data[(i * 4096) as usize..((i + 1) * 4096) as usize].iter().all(|b| *b == 0);
    let j = (0..N).find(|i| !holds(*i)).unwrap_or(N);
    assert!((j..N).all(zero), "snapshot is not a prefix: block {j} missing but a later one present");
    assert!(j >= before, "snapshot lacks acknowledged writes: prefix {j}, {before} acknowledged before the command");
    assert!(j <= after, "snapshot holds writes issued after the command returned: prefix {j}, {after} issued by then");
    // The volume itself has every acknowledged write.
    let head = rt.block_on(vol.read(0, N * 4096)).unwrap();
    for i in 0..written {
        assert!(head[(i * 4096) as usize..((i + 1) * 4096) as usize] == tagged(i)[..], "acknowledged write {i} lost");
    }
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("verify: bad"), "fio under the OSD kill and snapshot:\n{text}");
    eprintln!("snapshot prefix {j} (acknowledged before: {before}, issued by the return: {after}); {written} writes in all");
}
