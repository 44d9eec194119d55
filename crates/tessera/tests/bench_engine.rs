//! Runs the built `tessera bench engine` on a tiny device and checks the shape and sanity of
//! its JSON report (no timing thresholds: only that every phase did work and that write
//! amplification is plausible).

use serde_json::Value;
use std::process::Command;

/// Runs `tessera bench engine --path <dir>/bench.dev <args>`.
fn bench(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "engine", "--path"])
        .arg(dir.join("bench.dev"))
        .args(args)
        .output()
        .expect("run tessera")
}

/// A quarter of the device as working set keeps the cleaner out of the way, so the write
/// amplification is that of the write path itself (data + batch headers + checkpoints).
const TINY: &[&str] =
    &["--size", "64M", "--segment-size", "1M", "--working-set", "16M", "--duration", "1s", "--ramp", "0s", "--no-fio", "--json"];

#[test]
fn tiny_engine_bench_reports_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), TINY);
    assert!(out.status.success(), "tessera failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");

    let rows = report["rows"].as_array().expect("rows");
    let phases: Vec<(String, u64)> =
        rows.iter().map(|r| (r["workload"].as_str().unwrap().to_string(), r["qd"].as_u64().unwrap())).collect();
    assert_eq!(
        phases,
        vec![("randwrite".into(), 1), ("randread".into(), 1), ("randwrite".into(), 32), ("randread".into(), 32)],
        "one write and one read phase per default queue depth"
    );
    for r in rows {
        assert_eq!(r["target"], "engine/raft");
        assert!(r["iops"].as_f64().unwrap() > 0.0, "no IOPS in {r}");
        assert!(r["ops"].as_u64().unwrap() > 0);
        assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap());
        if r["workload"] == "randwrite" {
            let wa = r["device_bytes_per_client_byte"].as_f64().expect("write amplification on write rows");
            assert!((1.0..=3.0).contains(&wa), "write amplification {wa} in {r}");
            let fsyncs = r["fsyncs_per_op"].as_f64().unwrap();
            assert!(fsyncs > 0.0, "{r}");
        } else {
            assert!(r["device_bytes_per_client_byte"].is_null());
        }
    }
    assert_eq!(report["fio"]["note"], "skipped (--no-fio)");
    assert!(!dir.path().join("bench.dev").exists(), "the device file is removed without --keep");
}

/// [`TINY`] with `flag` set to `value` (replaced if present, else added).
fn tiny_with(flag: &'static str, value: &'static str) -> Vec<&'static str> {
    let mut args = TINY.to_vec();
    match args.iter().position(|a| *a == flag) {
        Some(i) => args[i + 1] = value,
        None => args.extend([flag, value]),
    }
    args
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, expect) in [
        ("--qd", "1,0", "--qd 0 is out of range"),
        ("--duration", "10", "missing unit"),
        ("--size", "64X", "unknown unit"),
        ("--working-set", "64M", "must be smaller than --size"),
        ("--segment-size", "1000", "segment size 1000 must be a multiple of 4096"),
        ("--working-set", "60M", "Lower --working-set or raise --size"),
    ] {
        let out = bench(dir.path(), &tiny_with(flag, value));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} should fail");
        assert!(err.contains(expect), "{flag} {value}: expected `{expect}` in: {err}");
        assert!(!err.contains("panicked"), "{flag} {value}: {err}");
    }
    assert!(!dir.path().join("bench.dev").exists(), "no device file is left behind");
}
