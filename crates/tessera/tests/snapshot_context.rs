//! A snapshot never changes after `snapshot create` returns (issue 14), as real processes:
//! a write is issued before the snapshot and held back by every OSD (`retry_writes=1` in
//! their fault control files: they answer `Retry`, so the client keeps retrying the same
//! request, built with the old snapshot context) for about 5 s; the snapshot is created in
//! that window and read; then the OSDs take writes again and the held write lands. The
//! snapshot must read the same bytes before and after. It used to read the late write: the
//! session fence does not wait for requests in flight, and the PG applied the old context.
//! A variant runs two mons on etcd whose clocks differ by 10 s (the snapshot is created
//! through the one ahead, which may judge the writer's session expired): the same holds.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::{Client, ClientOptions};
use tessera_testkit::cluster::{ClusterOptions, TestCluster};

mod common;

use common::{wait_clean, BIN};

fn set_retry_writes(cluster: &TestCluster, on: bool) {
    for i in 0..cluster.osds.len() {
        std::fs::write(cluster.dir.join(format!("osd{i}.faults")), format!("retry_writes={}\n", u8::from(on))).unwrap();
    }
    // Control files are re-read at most every 100 ms, on the next request.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_write_held_back_across_snapshot_create_never_changes_the_snapshot() {
    held_write_across_create(ClusterOptions::default(), None);
}

#[test]
fn the_same_with_two_mons_whose_clocks_differ_by_10_s() {
    let opts = ClusterOptions {
        etcd: true,
        mons: 2,
        mon_env: vec![(1, "TESSERA_MON_CLOCK_SKEW_MS".into(), "10000".into())],
        ..Default::default()
    };
    held_write_across_create(opts, Some(1));
}

/// The test; `create_via`: the mon (index) the snapshot is created through (default: all).
fn held_write_across_create(opts: ClusterOptions, create_via: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions {
        osd_args: vec!["--fault-control".into(), "{dir}/osd{i}.faults".into()],
        log: "info,tessera_osd::peer=debug".into(),
        ..opts
    };
    let mut cluster = TestCluster::start(BIN, dir.path(), opts);
    let create_mon = create_via.map(|k| format!("{}:{}", cluster.node_ip(tessera_testkit::cluster::MON_NODE), cluster.mon_mut(k).1));
    cluster.cli_ok(&["pool", "create", "p", "--pg-count", "4"]);
    cluster.cli_ok(&["volume", "create", "v", "--pool", "p", "--size", "8M", "--object-size", "1M"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let copts = ClientOptions { op_timeout: Duration::from_secs(60), ..Default::default() };
    let (client, vol) = rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], copts).await.unwrap();
        let vol = client.open_volume("v").await.unwrap();
        vol.write(0, Bytes::from(vec![0xaa; 4096])).await.unwrap();
        vol.write(1 << 20, Bytes::from(vec![0xcc; 4096])).await.unwrap();
        (client, vol)
    });
    wait_clean(&cluster, Duration::from_secs(30), |_| true);

    // The write of B to block 0 is sent now, with the volume's current (empty) snapshot
    // context, and retried while the OSDs hold writes back.
    set_retry_writes(&cluster, true);
    let late = rt.spawn({
        let vol = vol.clone();
        async move {
            let t = Instant::now();
            vol.write(0, Bytes::from(vec![0xbb; 4096])).await.unwrap();
            t.elapsed()
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!late.is_finished(), "the write must still be held back");
    let t = Instant::now();
    let out = match &create_mon {
        None => cluster.cli_ok(&["snapshot", "create", "v@s"]),
        Some(mon) => {
            let out = std::process::Command::new(BIN).args(["snapshot", "create", "v@s", "--mon", mon]).output().unwrap();
            assert!(out.status.success(), "snapshot create via {mon}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    eprintln!("{} ({:?}, the held write still retrying)", out.trim(), t.elapsed());
    let (snap_before, other) = rt.block_on(async {
        let s = client.open_volume("v@s").await.unwrap();
        (s.read(0, 4096).await.unwrap(), s.read(1 << 20, 4096).await.unwrap())
    });
    assert!(snap_before.iter().all(|b| *b == 0xaa), "the snapshot holds what was acknowledged before it");
    assert!(other.iter().all(|b| *b == 0xcc));
    std::thread::sleep(Duration::from_millis(3000)); // the write is held about 5 s in all
    set_retry_writes(&cluster, false);
    let took = rt.block_on(late).unwrap();
    eprintln!("the held write was acknowledged after {took:?}");

    rt.block_on(async {
        let head = vol.read(0, 4096).await.unwrap();
        assert!(head.iter().all(|b| *b == 0xbb), "the late write is in the volume");
        let s = client.open_volume("v@s").await.unwrap();
        let snap_after = s.read(0, 4096).await.unwrap();
        assert!(
            snap_after == snap_before,
            "the snapshot changed after `snapshot create` returned: block 0 reads {:#x}\n{}",
            snap_after[0],
            cluster.logs()
        );
    });
    // The client now writes with the new context; later writes never reach the snapshot.
    rt.block_on(async {
        vol.write(1 << 20, Bytes::from(vec![0xdd; 4096])).await.unwrap();
        let s = client.open_volume("v@s").await.unwrap();
        assert!(s.read(1 << 20, 4096).await.unwrap().iter().all(|b| *b == 0xcc));
    });
}
