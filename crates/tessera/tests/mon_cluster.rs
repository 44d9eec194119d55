//! `tessera mon` as real processes, driven by the real CLI: a real etcd with two mons (kill -9
//! the active one, the standby takes over, nothing acknowledged is lost; concurrent creates of
//! one name through both mons: exactly one wins), and the embedded store surviving kill -9.

use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::etcd::EtcdServer;
use tessera_testkit::free_loopback_port;
use tessera_testkit::process::{http, wait_http_ok, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn cli(mon: &str, args: &[&str]) -> Output {
    Command::new(BIN).args(args).args(["--mon", mon]).output().expect("run tessera CLI")
}

/// Runs a CLI command that must succeed; returns stdout.
fn cli_ok(mon: &str, args: &[&str]) -> String {
    let out = cli(mon, args);
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_json(mon: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&cli_ok(mon, &a)).expect("CLI --json prints JSON")
}

fn start_mon(name: &str, store: &str, prefix: &str, port: u16, dir: &Path) -> Daemon {
    let args = ["mon", "--store", store, "--etcd-prefix", prefix, "--listen", &format!("127.0.0.1:{port}"), "--lease-ttl", "2s"];
    let d = Daemon::start(name, BIN, args.iter().map(|s| s.to_string()).collect(), vec![("RUST_LOG".into(), "info".into())], dir);
    assert!(wait_http_ok(port, "/healthz", Duration::from_secs(20)), "{name} did not come up:\n{}", d.log());
    d
}

fn is_active(port: u16) -> bool {
    match http(port, "GET", "/healthz", None) {
        Ok((200, body)) => serde_json::from_str::<Value>(&body).is_ok_and(|v| v["active"] == Value::Bool(true)),
        _ => false,
    }
}

fn register_osds(port: u16, n: u32) {
    for i in 0..n {
        let body = format!(
            r#"{{"uuid":"osd-uuid-{i}","addr":"127.0.0.1:{}","host":"host{i}","device":"/dev/nvme{i}n1","capacity_bytes":1099511627776}}"#,
            9100 + i
        );
        let (status, resp) = http(port, "POST", "/api/v1/osds", Some(&body)).unwrap();
        assert_eq!(status, 200, "{resp}");
    }
}

/// Heartbeats OSDs 0..n to whichever mon is active, every 300 ms, until `stop` is set.
fn heartbeat_loop(ports: Vec<u16>, n: u32, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for i in 0..n {
                for &p in &ports {
                    if let Ok((200, _)) = http(p, "POST", &format!("/api/v1/osds/{i}/heartbeat"), Some("{}")) {
                        break;
                    }
                }
            }
            thread::sleep(Duration::from_millis(300));
        }
    })
}

#[test]
fn etcd_two_mons_kill9_active_standby_takes_over_nothing_lost() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("etcd:{}", etcd.endpoint);
    let (pa, pb) = (free_loopback_port(), free_loopback_port());
    let mut a = start_mon("mon-a", &store, "/failover/", pa, dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_active(pa) {
        assert!(Instant::now() < deadline, "mon-a never became active:\n{}", a.log());
        thread::sleep(Duration::from_millis(50));
    }
    let b = start_mon("mon-b", &store, "/failover/", pb, dir.path());
    let mons = format!("127.0.0.1:{pa},127.0.0.1:{pb}");
    assert!(!is_active(pb), "exactly one mon is active");

    register_osds(pb, 4);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hb = heartbeat_loop(vec![pa, pb], 4, stop.clone());
    cli_ok(&mons, &["pool", "create", "rbd", "--pg-count", "64"]);
    for i in 0..10 {
        cli_ok(&mons, &["volume", "create", &format!("vol{i}"), "--pool", "rbd", "--size", &format!("{}G", i + 1)]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli_json(&mons, &["cluster", "status"])["osds_up"] != 4 {
        assert!(Instant::now() < deadline, "OSDs never came up:\n{}", a.log());
        thread::sleep(Duration::from_millis(100));
    }
    let before = cli_json(&mons, &["volume", "list"]);
    let map_before: Value = serde_json::from_str(&http(pb, "GET", "/api/v1/map", None).unwrap().1).unwrap();

    // kill -9 the active mon: no resign, its lease must expire.
    let killed = Instant::now();
    a.kill9();
    while !is_active(pb) {
        assert!(killed.elapsed() < Duration::from_secs(8), "standby did not take over:\n{}", b.log());
        thread::sleep(Duration::from_millis(50));
    }
    let takeover = killed.elapsed();
    eprintln!("standby took over {takeover:?} after kill -9 (lease ttl 2 s)");

    // The CLI fails over to the live mon; everything acknowledged is still there.
    assert_eq!(cli_json(&mons, &["volume", "list"]), before);
    let map_after: Value = serde_json::from_str(&http(pb, "GET", "/api/v1/map", None).unwrap().1).unwrap();
    assert_eq!(map_after["pools"], map_before["pools"]);
    assert_eq!(map_after["pg_tables"], map_before["pg_tables"]);
    let status = cli_json(&mons, &["cluster", "status"]);
    assert_eq!(status["active_mon"], format!("http://127.0.0.1:{pb}"));
    cli_ok(&mons, &["volume", "create", "after-failover", "--pool", "rbd", "--size", "1G"]);
    // The new leader gave the OSDs a grace period and keeps receiving their heartbeats.
    thread::sleep(Duration::from_secs(5));
    assert_eq!(cli_json(&mons, &["cluster", "status"])["osds_up"], 4, "heartbeats reach the new active mon:\n{}", b.log());

    // The old mon comes back as a standby.
    a.restart();
    assert!(wait_http_ok(pa, "/healthz", Duration::from_secs(20)));
    thread::sleep(Duration::from_millis(500));
    assert!(is_active(pb) && !is_active(pa), "exactly one active mon after the restart");
    assert_eq!(cli_json(&format!("127.0.0.1:{pa}"), &["volume", "info", "after-failover"])["size"], 1u64 << 30);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hb.join().unwrap();
}

#[test]
fn etcd_concurrent_cli_creates_of_one_name_through_two_mons_exactly_one_wins() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("etcd:{}", etcd.endpoint);
    let (pa, pb) = (free_loopback_port(), free_loopback_port());
    let _a = start_mon("mon-a", &store, "/race/", pa, dir.path());
    let _b = start_mon("mon-b", &store, "/race/", pb, dir.path());
    register_osds(pa, 3);
    cli_ok(&format!("127.0.0.1:{pa}"), &["pool", "create", "rbd", "--pg-count", "16"]);
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mon = format!("127.0.0.1:{}", if i % 2 == 0 { pa } else { pb });
            Command::new(BIN)
                .args(["volume", "create", "contested", "--pool", "rbd", "--size", &format!("{}G", i + 1), "--mon", &mon])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let winners: Vec<usize> = outs.iter().enumerate().filter(|(_, o)| o.status.success()).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "exactly one create wins: {outs:#?}");
    for (i, o) in outs.iter().enumerate() {
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("already exists") && err.contains("409"), "loser {i}: {err}");
        }
    }
    // The stored volume is the winner's.
    let info = cli_json(&format!("127.0.0.1:{pb}"), &["volume", "info", "contested"]);
    assert_eq!(info["size"], ((winners[0] as u64) + 1) << 30);
}

#[test]
fn embedded_mon_survives_kill9_and_cli_reports_errors_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("mon/mon.redb").display());
    let port = free_loopback_port();
    let mon = format!("127.0.0.1:{port}");
    let mut d = start_mon("mon", &store, "/", port, dir.path());
    register_osds(port, 3);
    let out = cli_ok(&mon, &["pool", "create", "default", "--pg-count", "32"]);
    assert!(out.contains("pool default created") && out.contains("REPLICAS"), "{out}");
    cli_ok(&mon, &["volume", "create", "v", "--size", "10G"]);
    let listed = cli_ok(&mon, &["volume", "list"]);
    assert!(listed.lines().next().unwrap().starts_with("ID") && listed.contains("10.0 GiB"), "{listed}");

    d.kill9();
    d.restart();
    assert!(wait_http_ok(port, "/healthz", Duration::from_secs(20)), "{}", d.log());
    assert_eq!(cli_json(&mon, &["volume", "info", "v"])["size"], 10u64 << 30);
    assert_eq!(cli_json(&mon, &["pool", "list"])[0]["pg_count"], 32);
    assert_eq!(cli_json(&mon, &["osd", "list"]).as_array().unwrap().len(), 3);

    // Errors: non-zero exit, one line naming the problem, no panic.
    for (args, expect) in [
        (&["volume", "create", "v", "--size", "1G"][..], "already exists"),
        (&["volume", "create", "w", "--size", "1000"][..], "not a multiple of 4096"),
        (&["volume", "create", "w", "--size", "1G", "--pool", "nope"][..], "no pool named"),
        (&["volume", "info", "ghost"][..], "no volume named"),
        (&["volume", "resize", "v", "--size", "1G"][..], "allow-shrink"),
        (&["osd", "out", "77"][..], "no OSD with id 77"),
        (&["pool", "delete", "default"][..], "still holds 1 volume"),
        (&["volume", "create", "w", "--size", "5X"][..], "unknown unit"),
    ] {
        let out = cli(&mon, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "tessera {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = cli("127.0.0.1:1", &["cluster", "status"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no mon reachable"));
}
