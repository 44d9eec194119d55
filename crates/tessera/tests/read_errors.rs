//! A read error on a PG leader is served from another replica (issue 16, part 1), as real
//! processes: the leader's device fails every read (its fault control file), a client
//! reads through the real client library and must get the right bytes, never `EIO`; the
//! failing replica shows in `tessera cluster pgs` (`+damaged`, naming the OSD) and in the
//! mon's `/metrics`; once the device reads again the replica is rebuilt and every PG is
//! clean with the data intact.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::{Client, ClientOptions};
use tessera_testkit::cluster::{ClusterOptions, TestCluster};

mod common;

use common::{pg_states, BIN};

/// The PG's state, leader and damaged OSDs from `tessera cluster pgs --json`.
fn pg_view(cluster: &TestCluster) -> Option<(String, Option<u32>, Vec<u32>)> {
    let out = cluster.cli(&["cluster", "pgs", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let p = v.as_array()?.first()?.clone();
    let damaged = p["damaged"].as_array().map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect()).unwrap_or_default();
    Some((p["state"].as_str()?.to_string(), p["leader"].as_u64().map(|l| l as u32), damaged))
}

#[test]
fn a_leader_whose_device_fails_reads_serves_them_from_another_replica_and_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()], ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "1"]);
    cluster.cli_ok(&["volume", "create", "v", "--size", "16M", "--object-size", "1M"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let copts = ClientOptions { op_timeout: Duration::from_secs(30), ..Default::default() };
    let (client, vol) = rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], copts).await.unwrap();
        let vol = client.open_volume("v").await.unwrap();
        (client, vol)
    });
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    rt.block_on(vol.write(0, Bytes::from(data.clone()))).unwrap();
    common::wait_clean(&cluster, Duration::from_secs(60), |_| true);
    let leader = pg_view(&cluster).and_then(|v| v.1).expect("the PG has a leader");
    let i = cluster.index_of(leader).expect("the leader's process");

    // Every read of the leader's device fails from now on; every I/O of it is also slow,
    // so its rebuild (a few engine transactions) outlasts a heartbeat and the mon sees it.
    let control = dir.path().join(format!("osd{i}.faults"));
    std::fs::write(&control, "read_error=1\ndelay_ms=400\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let got = rt
        .block_on(vol.read(0, 4 << 20))
        .unwrap_or_else(|e| panic!("a read failed while two healthy replicas hold the data: {e}\n{}", cluster.logs()));
    eprintln!("read served in {:?} with osd {leader}'s device failing every read", t.elapsed());
    assert!(got[..] == data[..], "the read returned wrong bytes");
    let log = cluster.osds[i].daemon.log();
    assert!(log.contains("failed twice") && log.contains("damaged on osd"), "no log line names the failing replica:\n{log}");

    // The failing replica is reported until it is rebuilt.
    let t = Instant::now();
    loop {
        let view = pg_view(&cluster);
        if let Some((state, _, damaged)) = &view {
            if state.ends_with("+damaged") && damaged == &vec![leader] {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "cluster pgs never showed osd {leader} damaged: {view:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = cluster.cli_ok(&["cluster", "pgs"]);
    assert!(table.contains("DAMAGED ON") && table.contains("+damaged"), "{table}");
    let (code, metrics) = tessera_testkit::process::http(cluster.mon_port, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("tessera_osd_damaged_pgs{{osd=\"{leader}\"}} 1")), "{metrics}");

    // The device reads again: the replica is rebuilt and the PG is clean (not damaged).
    std::fs::write(&control, "").unwrap();
    if !cluster.osds[i].daemon.is_running() {
        cluster.restart(i);
    }
    let t = Instant::now();
    loop {
        let states = pg_states(&cluster);
        let damaged = pg_view(&cluster).map(|v| v.2);
        if states.iter().all(|s| s.1 == "active+clean") && damaged == Some(vec![]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "not clean after the fault: {states:?} {damaged:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
    let (code, metrics) = tessera_testkit::process::http(cluster.mon_port, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("tessera_osd_damaged_pgs{{osd=\"{leader}\"}} 0")), "{metrics}");
    let got = rt.block_on(vol.read(0, 4 << 20)).unwrap();
    assert!(got[..] == data[..], "wrong bytes after the rebuild");
    rt.block_on(client.close_session());
}
