//! A full device never stops an OSD (issue 14), as real processes: one OSD's device is a
//! quarter of the others'; another pool fills it while a writer on a first pool (through the
//! real client library) keeps going, and must never see an error. The mon shows the OSD's
//! fullness (`osd list`, `cluster status`, `/metrics`) against ratios set with `tessera
//! cluster config`; when no majority has room an NBD client gets `ENOSPC`; deleting the
//! filling volume gives the space back and writes resume by themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::{Client, ClientOptions, Volume};
use tessera_testkit::cluster::{ClusterOptions, TestCluster};

mod common;

use common::{run, start_nbd, wait_clean, wait_clean_with, BIN};

fn space_of(cluster: &TestCluster, id: u32) -> String {
    let v: serde_json::Value = serde_json::from_str(&cluster.cli_ok(&["osd", "list", "--json"])).unwrap();
    v.as_array().unwrap().iter().find(|o| o["id"] == id).and_then(|o| o["space"].as_str()).unwrap_or("unknown").to_string()
}

/// Every daemon's log without the lines a waiting copy repeats every 2 s (counted instead).
fn quiet_logs(cluster: &TestCluster) -> String {
    let logs = cluster.logs();
    let repeats = logs.lines().filter(|l| l.contains("asking their leaders again")).count();
    let kept: Vec<&str> = logs.lines().filter(|l| !l.contains("asking their leaders again")).collect();
    format!("{}\n({repeats} lines \"room for waiting copies: asking their leaders again\" left out)", kept.join("\n"))
}

fn id_at(cluster: &TestCluster, i: usize) -> u32 {
    let addr = cluster.osd_addr(i);
    cluster.osd_list().into_iter().find(|(_, a, _)| *a == addr).unwrap().0
}

/// QD1 writes of 4 KiB over the first 16 MiB of `vol` until `stop`; any error fails.
async fn keep_writing(vol: Volume, stop: Arc<AtomicBool>) -> (u64, Duration) {
    let mut n = 0u64;
    let mut worst = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let block = (n * 7919) % 4096;
        vol.write(block * 4096, Bytes::from(vec![(n as u8) | 1; 4096])).await.unwrap_or_else(|e| panic!("write {n} failed: {e}"));
        worst = worst.max(t.elapsed());
        n += 1;
    }
    (n, worst)
}

#[test]
fn a_follower_filled_through_another_pool_never_stops_and_gives_room_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { osd_sizes: vec!["1G".into(), "1G".into(), "256M".into()], ..Default::default() };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    cluster.cli_ok(&["pool", "create", "a", "--pg-count", "4"]);
    cluster.cli_ok(&["pool", "create", "b", "--pg-count", "4"]);
    cluster.cli_ok(&["volume", "create", "va", "--pool", "a", "--size", "16M", "--object-size", "1M"]);
    cluster.cli_ok(&["volume", "create", "vb", "--pool", "b", "--size", "600M"]);
    let small = id_at(&cluster, 2);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let copts = ClientOptions { op_timeout: Duration::from_secs(30), ..Default::default() };
    let (client, va, vb) = rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], copts).await.unwrap();
        let va = client.open_volume("va").await.unwrap();
        let vb = client.open_volume("vb").await.unwrap();
        (client, va, vb)
    });
    // The small OSD is full by the full ratio (0.7 of its device) before its engine runs
    // short of free segments (around three quarters live): a device short of segments
    // reclaims garbage and takes data again, so the state the mon shows would come and go.
    cluster.cli_ok(&["cluster", "config", "--nearfull-ratio", "0.6", "--backfillfull-ratio", "0.65", "--full-ratio", "0.7"]);
    wait_clean(&cluster, Duration::from_secs(60), |_| true);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = rt.spawn(keep_writing(va.clone(), stop.clone()));

    // Fill vb (pool b) in 1 MiB writes until the mon reports the small OSD full. Pool b's
    // writes keep succeeding: the two large OSDs have room for a majority.
    let mut mib = 0u64;
    let t = Instant::now();
    while space_of(&cluster, small) != "full" {
        assert!(mib < 600, "osd {small} (256 MiB) never reported full after {mib} MiB");
        rt.block_on(async {
            for _ in 0..16 {
                vb.write(mib << 20, Bytes::from(vec![(mib as u8) | 1; 1 << 20]))
                    .await
                    .unwrap_or_else(|e| panic!("pool b write at {mib} MiB: {e}"));
                mib += 1;
            }
        });
    }
    eprintln!("osd {small} full after {mib} MiB into pool b ({:?})", t.elapsed());
    rt.block_on(async {
        for _ in 0..64 {
            vb.write(mib << 20, Bytes::from(vec![(mib as u8) | 1; 1 << 20]))
                .await
                .unwrap_or_else(|e| panic!("pool b write at {mib} MiB with osd {small} full: {e}"));
            mib += 1;
        }
    });
    assert!(cluster.osds[2].daemon.is_running(), "the full OSD's daemon stopped:\n{}", cluster.osds[2].daemon.log());
    let status = cluster.cli_ok(&["cluster", "status"]);
    assert!(status.contains("1 full"), "{status}");
    let list = cluster.cli_ok(&["osd", "list"]);
    assert!(list.contains("full"), "{list}");
    let (code, metrics) = tessera_testkit::process::http(cluster.mon_port, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("tessera_osds_space{state=\"full\"} 1"), "{metrics}");
    assert!(metrics.contains(&format!("tessera_osd_used_bytes{{osd=\"{small}\"}}")), "{metrics}");

    // The ratios are the cluster's: a low nearfull ratio flags the large OSDs too.
    cluster.cli_ok(&["cluster", "config", "--nearfull-ratio", "0.01"]);
    let t = Instant::now();
    while !cluster.cli_ok(&["cluster", "status"]).contains("2 nearfull") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", cluster.cli_ok(&["cluster", "status"]));
        std::thread::sleep(Duration::from_millis(200));
    }
    let bad = cluster.cli(&["cluster", "config", "--full-ratio", "0.99"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("at most 0.95"), "{bad:?}");
    cluster.cli_ok(&["cluster", "config", "--nearfull-ratio", "0.6"]);

    stop.store(true, Ordering::Relaxed);
    let (writes, worst) = rt.block_on(writer).unwrap();
    eprintln!("pool a writer: {writes} writes, none failed, longest {worst:?}");
    assert!(writes > 50);

    // No majority with room: a full ratio under what the large OSDs hold makes every OSD
    // full. An NBD client's write gets ENOSPC; reads still work.
    cluster.cli_ok(&["cluster", "config", "--nearfull-ratio", "0.01", "--backfillfull-ratio", "0.01", "--full-ratio", "0.01"]);
    let (_nbd, port) = start_nbd(&cluster, dir.path(), &[]);
    let uri = format!("nbd://127.0.0.1:{port}/va");
    let t = Instant::now();
    loop {
        let out = run("qemu-io", &["-f", "raw", "-c", "write -P 0x5a 0 4096", &uri]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if text.contains("No space left on device") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no ENOSPC with every OSD full:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4096", &uri]);
    assert!(out.status.success(), "{out:?}");
    cluster.cli_ok(&["cluster", "config", "--nearfull-ratio", "0.6", "--backfillfull-ratio", "0.65", "--full-ratio", "0.7"]);

    // Deleting the volume that filled the small OSD gives its room back; every PG heals
    // (the small OSD's replicas of pool b are rebuilt) and writes go on.
    rt.block_on(client.close_session());
    drop((va, vb));
    cluster.cli_ok(&["volume", "delete", "vb"]);
    let t = Instant::now();
    while space_of(&cluster, small) != "ok" {
        if t.elapsed() > Duration::from_secs(120) {
            let list = cluster.cli_ok(&["osd", "list", "--json"]);
            let status = cluster.cli_ok(&["cluster", "status"]);
            panic!("osd {small} still {} after the delete\n{list}\n{status}\n{}", space_of(&cluster, small), quiet_logs(&cluster));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let healed = wait_clean_with(&cluster, Duration::from_secs(120), |_| true, || quiet_logs(&cluster));
    eprintln!("osd {small} has room again {:?} after the delete; all PGs clean {healed:?} later", t.elapsed());
    let out = run("qemu-io", &["-f", "raw", "-c", "write -P 0x6b 0 4096", "-c", "read -P 0x6b 0 4096", &uri]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed"), "{out:?}");
    assert!(cluster.osds[2].daemon.is_running());
}
