//! The OSD's testing tools, through the real binary: `tessera osd blocks` (where a stopped
//! OSD's object data blocks are) and `tessera osd run --fault-control` (a misbehaving disk).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_client::{Client, ClientOptions};
use tessera_engine::*;
use tessera_testkit::cluster::{ClusterOptions, TestCluster};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const PG: PgId = PgId::new(1, 3);

fn tagged(tag: u8, blocks: usize) -> Bytes {
    Bytes::from((0..blocks * BLOCK_SIZE).map(|i| tag ^ (i % 251) as u8).collect::<Vec<u8>>())
}

/// A formatted device file with a head object of 2 blocks and a frozen version (snapshot 3)
/// sharing one of them, not checkpointed; the engine is closed again, as on a stopped OSD.
fn stopped_osd_device(path: &Path) {
    let dev = Arc::new(FileDevice::create(path, 32 << 20).unwrap());
    let e = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    e.commit(Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(5, 9), offset: 0, data: tagged(1, 2) })).unwrap();
    e.commit(Txn::new().with(Op::Preserve { pg: PG, volume: 5, object: 9, snap: 3 }).with(Op::Write {
        pg: PG,
        key: ObjectKey::head(5, 9),
        offset: BLOCK,
        data: tagged(2, 1),
    }))
    .unwrap();
    e.close();
}

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn osd_blocks_lists_object_data_blocks_where_a_bit_flip_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osd0.dev");
    stopped_osd_device(&path);
    let data = path.to_str().unwrap();

    // --checkpoint: no listed block is in the log recovery replays.
    let out = tessera(&["osd", "blocks", "--data", data, "--json", "--checkpoint"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<(String, u64, u64, String, Option<u64>, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["pg"].as_str().unwrap().to_string(),
                r["volume"].as_u64().unwrap(),
                r["object"].as_u64().unwrap(),
                r["version"].as_str().unwrap().to_string(),
                r["snap"].as_u64(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let pg = PG.to_string();
    let want = vec![
        (pg.clone(), 5, 9, "3".to_string(), Some(3), 0),
        (pg.clone(), 5, 9, "3".to_string(), Some(3), BLOCK),
        (pg.clone(), 5, 9, "head".to_string(), None, 0),
        (pg.clone(), 5, 9, "head".to_string(), None, BLOCK),
    ];
    assert_eq!(got, want);

    // The table: a header, then one line per block.
    let out = tessera(&["osd", "blocks", "--data", data]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].split_whitespace().eq(["PG", "VOLUME", "OBJECT", "VERSION", "OFFSET", "DEVICE_OFFSET"]), "{text}");

    // Flip a bit of the head's second block (not shared with the snapshot) in the file.
    let target = rows.iter().find(|r| r["version"] == "head" && r["offset"] == BLOCK).unwrap()["device_offset"].as_u64().unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, target + 17).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, target + 17).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let e = Engine::open(Arc::new(FileDevice::open(&path).unwrap()), EngineConfig::default()).unwrap();
    match e.read(PG, ObjectKey::head(5, 9), 0, 2 * BLOCK) {
        Err(EngineError::Checksum { key, offset, phys, .. }) => {
            assert_eq!((key, offset, phys * BLOCK), (ObjectKey::head(5, 9), BLOCK, target));
        }
        other => panic!("expected a checksum error, got {:?}", other.map(|v| v.len())),
    }
    assert_eq!(e.read(PG, ObjectKey::at_snap(5, 9, 3), 0, 2 * BLOCK).unwrap(), tagged(1, 2)[..]);
}

#[test]
fn osd_blocks_fails_cleanly_on_a_missing_or_unformatted_device() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.dev");
    let out = tessera(&["osd", "blocks", "--data", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.dev"));
    let blank = dir.path().join("blank.dev");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let out = tessera(&["osd", "blocks", "--data", blank.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tessera device"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn osd_run_help_documents_fault_control() {
    let out = tessera(&["osd", "run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["--fault-control <FILE>", "FOR TESTING ONLY", "kill -9", "power cut"] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
    for key in tessera_engine::device::fault_control::KEYS {
        assert!(help.contains(&format!("{key}=")), "key {key} missing from:\n{help}");
    }
}

/// An injected fsync failure stops the OSD process: an error in its log, a non-zero exit
/// status, no hang, no panic. So does a read failure during recovery; without faults the
/// same device then recovers.
#[test]
fn an_injected_fsync_failure_stops_the_osd_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        ClusterOptions { osds: 1, osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()], ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    let control = dir.path().join("osd0.faults");
    assert!(control.exists(), "the control file is created empty");
    assert!(cluster.osds[0].daemon.log().contains("FAULT INJECTION ENABLED"), "{}", cluster.logs());
    std::fs::write(&control, "sync_error=1\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // New PGs make the OSD persist Raft state: its first fsync fails.
    cluster.cli_ok(&["pool", "create", "p", "--replicas", "1", "--pg-count", "4", "--failure-domain", "osd"]);
    let status = cluster.osds[0].daemon.signal_and_wait(0, Duration::from_secs(30));
    let log = cluster.osds[0].daemon.log();
    let status = status.unwrap_or_else(|| panic!("the OSD did not stop after a failed fsync:\n{log}"));
    assert!(!status.success(), "exit status {status:?}\n{log}");
    assert_eq!(status.code(), Some(1), "exited, not killed by a signal: {status:?}\n{log}");
    assert!(log.contains("injected fault"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Restarted with every read failing: recovery fails, the process exits with an error.
    std::fs::write(&control, "read_error=1\n").unwrap();
    cluster.restart(0);
    let status = cluster.osds[0].daemon.signal_and_wait(0, Duration::from_secs(30));
    let log = cluster.osds[0].daemon.log();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("injected fault: read error"), "{log}");

    // Faults cleared: the device recovers and the OSD runs again.
    std::fs::write(&control, "").unwrap();
    cluster.restart(0);
    std::thread::sleep(Duration::from_secs(3));
    assert!(cluster.osds[0].daemon.is_running(), "{}", cluster.osds[0].daemon.log());
    assert!(!cluster.osds[0].daemon.log().contains("panicked"));
}

/// A read error on the Raft log (a leader catching up a follower from entries no longer in
/// memory) happens inside raft-rs, which panics on any storage error it cannot handle: the
/// OSD contains that panic and stops with an error naming the cause and exit status 1.
#[test]
fn an_injected_raft_log_read_error_stops_the_osd_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()], ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "1"]);
    cluster.cli_ok(&["volume", "create", "v", "--size", "64M", "--object-size", "1M"]);
    cluster.kill9(2);
    // 48 MiB while osd2 is down: more than the 32 MiB of log entries a PG keeps in memory.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let opts = ClientOptions { op_timeout: Duration::from_secs(20), ..Default::default() };
        let client = Client::connect(&[cluster.mon_addr()], opts).await.unwrap();
        let vol = client.open_volume("v").await.unwrap();
        for i in 0..48u64 {
            vol.write(i << 20, Bytes::from(vec![i as u8 | 1; 1 << 20])).await.unwrap();
        }
    });
    for i in 0..2 {
        std::fs::write(dir.path().join(format!("osd{i}.faults")), "read_error=1\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    cluster.restart(2); // its leader must read the missing entries from the device
    let mut stopped = 0;
    for i in 0..2 {
        let Some(status) = cluster.osds[i].daemon.signal_and_wait(0, Duration::from_secs(20)) else { continue };
        let log = cluster.osds[i].daemon.log();
        assert_eq!(status.code(), Some(1), "osd{i}: {status:?}\n{log}");
        assert!(log.contains("store stopped") && log.contains("injected fault: read error"), "osd{i}:\n{log}");
        stopped += 1;
    }
    assert!(stopped > 0, "no OSD stopped on its log read error:\n{}", cluster.logs());
}
