//! Helpers shared by the process-level tests: PG states, client tools, `tessera nbd`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tessera_testkit::cluster::TestCluster;
use tessera_testkit::free_loopback_port;
use tessera_testkit::process::Daemon;

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// `(pg, state, voters, target)` of every PG, from `tessera cluster pgs --json` (empty
/// while the mon cannot answer).
pub fn pg_states(cluster: &TestCluster) -> Vec<(String, String, Vec<u32>, Vec<u32>)> {
    let out = cluster.cli(&["cluster", "pgs", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = |x: &serde_json::Value| x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect::<Vec<_>>();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pg"].as_str().unwrap().to_string(), p["state"].as_str().unwrap().to_string(), ids(&p["voters"]), ids(&p["target"])))
        .collect()
}

/// Waits until every PG is `active+clean` and `ok` holds for the states; returns the time.
pub fn wait_clean(cluster: &TestCluster, timeout: Duration, ok: impl Fn(&[(String, String, Vec<u32>, Vec<u32>)]) -> bool) -> Duration {
    wait_clean_with(cluster, timeout, ok, || cluster.logs())
}

/// [`wait_clean`] with `logs()` in the failure message instead of every daemon's whole log.
pub fn wait_clean_with(
    cluster: &TestCluster,
    timeout: Duration,
    ok: impl Fn(&[(String, String, Vec<u32>, Vec<u32>)]) -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    let t = Instant::now();
    loop {
        let states = pg_states(cluster);
        if !states.is_empty() && states.iter().all(|s| s.1 == "active+clean") && ok(&states) {
            return t.elapsed();
        }
        assert!(t.elapsed() < timeout, "PGs not clean after {timeout:?}: {states:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A 4 KiB block that names its block number and the write that produced it (every 16
/// bytes), so a misplaced, stale or torn block is told apart from the right one.
pub fn tagged(block: u64, write: u64) -> bytes::Bytes {
    let mut b = vec![0u8; 4096];
    for (i, chunk) in b.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&block.to_le_bytes());
        chunk[8..16].copy_from_slice(&(write ^ i as u64).to_le_bytes());
    }
    bytes::Bytes::from(b)
}

/// Runs a client tool (CI installs libnbd-bin, qemu-utils and fio; a missing tool fails).
pub fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

pub fn run_ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// Deterministic image content: pseudo-random 64 KiB runs with zero runs in between.
pub fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(65536).enumerate() {
        if i % 5 == 3 {
            continue;
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    out
}

pub fn start_nbd(cluster: &TestCluster, dir: &Path, extra: &[&str]) -> (Daemon, u16) {
    let port = free_loopback_port();
    let mut args = vec!["nbd".to_string(), "--mon".into(), cluster.mon_addr(), "--listen".into(), format!("127.0.0.1:{port}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = Daemon::start("nbd", BIN, args, vec![("RUST_LOG".into(), "info".into())], dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tessera nbd did not listen:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, port)
}
