//! fio as the benchmark's peer: running it on a raw file and reading its JSON output.
//!
//! Contract: [`Fio::detect`] returns `None` only when the executable does not exist; every
//! other failure (fio exits non-zero, the job reports an error, the JSON lacks a field) is an
//! error naming the command. Latencies are converted from fio's nanoseconds to microseconds.

use super::report::Workload;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Numbers fio reported for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct FioResult {
    pub iops: f64,
    pub ios: u64,
    pub seconds: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// One random 4 KiB job.
pub struct Job<'a> {
    pub workload: Workload,
    pub qd: usize,
    pub file: &'a Path,
    /// Bytes from the start of the file the offsets are drawn from.
    pub region: u64,
    pub ramp: Duration,
    pub duration: Duration,
}

/// A fio executable and the ioengine that works on this machine.
pub struct Fio {
    bin: PathBuf,
    pub version: String,
    /// `io_uring`, or `libaio` when io_uring is unavailable.
    pub ioengine: &'static str,
    /// Set when the preferred ioengine did not work.
    pub note: Option<String>,
    /// Every command run so far, shell-quoted.
    pub commands: Vec<String>,
}

impl Fio {
    /// Runs `<bin> --version`; `Ok(None)` if there is no such executable.
    pub fn detect(bin: &Path) -> Result<Option<Fio>> {
        let out = match Command::new(bin).arg("--version").output() {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("running {} --version", bin.display())),
        };
        if !out.status.success() {
            bail!("{} --version failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Some(Fio { bin: bin.to_owned(), version, ioengine: "io_uring", note: None, commands: Vec::new() }))
    }

    /// Writes all `size` bytes of `file` once (sequential 1 MiB, O_DIRECT) so reads never hit
    /// holes. Picks the ioengine: io_uring, or libaio if fio cannot use io_uring here.
    pub fn prefill(&mut self, file: &Path, size: u64) -> Result<Duration> {
        // A sparse file of the right size keeps fio from laying it out (writing it) first.
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(file);
        f.and_then(|f| f.set_len(size)).with_context(|| format!("creating fio file {}", file.display()))?;
        let started = Instant::now();
        match self.prefill_with(file, size, "io_uring") {
            Ok(()) => Ok(started.elapsed()),
            Err(uring) => {
                let started = Instant::now();
                self.prefill_with(file, size, "libaio").with_context(|| format!("fio failed with io_uring ({uring:#}) and with libaio"))?;
                self.ioengine = "libaio";
                self.note = Some(format!("io_uring unavailable, using libaio: {}", first_line(&format!("{uring:#}"))));
                Ok(started.elapsed())
            }
        }
    }

    fn prefill_with(&mut self, file: &Path, size: u64, ioengine: &str) -> Result<()> {
        let args = vec![
            "--name=prefill".to_string(),
            format!("--filename={}", file.display()),
            format!("--size={size}"),
            "--rw=write".into(),
            "--bs=1M".into(),
            "--direct=1".into(),
            format!("--ioengine={ioengine}"),
            "--iodepth=4".into(),
            "--output-format=json".into(),
        ];
        let json = self.run_raw(&args)?;
        parse_output(&json, Workload::Write).map(|_| ()).map_err(anyhow::Error::msg)
    }

    /// Runs one measured job.
    pub fn run(&mut self, job: &Job) -> Result<FioResult> {
        let rw = match job.workload {
            Workload::Read => "randread",
            Workload::Write | Workload::WriteFsync => "randwrite",
        };
        let name = if job.workload == Workload::WriteFsync { "randwrite-fsync" } else { rw };
        let mut args = vec![
            format!("--name={name}-qd{}", job.qd),
            format!("--filename={}", job.file.display()),
            format!("--size={}", job.region),
            format!("--rw={rw}"),
            "--bs=4k".into(),
            "--direct=1".into(),
            format!("--ioengine={}", self.ioengine),
            format!("--iodepth={}", job.qd),
            "--time_based".into(),
            format!("--runtime={}ms", job.duration.as_millis()),
            format!("--ramp_time={}ms", job.ramp.as_millis()),
            "--norandommap".into(),
            "--randrepeat=0".into(),
            "--lat_percentiles=1".into(),
            "--percentile_list=50:99:99.9".into(),
            "--output-format=json".into(),
        ];
        if job.workload == Workload::WriteFsync {
            args.push("--fsync=1".into());
        }
        let json = self.run_raw(&args)?;
        parse_output(&json, job.workload).map_err(|e| anyhow::anyhow!("fio {rw} at iodepth {}: {e}", job.qd))
    }

    /// Runs fio with `args`, records the command, returns its stdout.
    fn run_raw(&mut self, args: &[String]) -> Result<String> {
        let line = std::iter::once(self.bin.display().to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
        self.commands.push(line.clone());
        let out = Command::new(&self.bin).args(args).output().with_context(|| format!("running {line}"))?;
        if !out.status.success() {
            bail!("`{line}` exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

/// Reads the first job of fio's `--output-format=json` output. For writes with fsync the
/// latency is write + fsync: means add exactly; percentiles are added as an approximation.
/// Prefers `lat_ns` (submission to completion) and falls back to `clat_ns` where `lat_ns`
/// has no value (fio emits percentiles for `lat_ns` only with `--lat_percentiles=1`).
pub fn parse_output(text: &str, workload: Workload) -> Result<FioResult, String> {
    // fio may print warnings before the JSON document.
    let start = text.find('{').ok_or("no JSON object in fio output")?;
    let doc: Value = serde_json::from_str(&text[start..]).map_err(|e| format!("fio output is not valid JSON: {e}"))?;
    let job = doc.get("jobs").and_then(|j| j.get(0)).ok_or("fio output has no jobs[0]")?;
    let err = job.get("error").and_then(Value::as_i64).unwrap_or(0);
    if err != 0 {
        return Err(format!("fio job reported error {err}"));
    }
    let dir_name = if workload == Workload::Read { "read" } else { "write" };
    let dir = job.get(dir_name).ok_or_else(|| format!("fio output has no jobs[0].{dir_name}"))?;
    let num = |v: &Value, path: &str| -> Result<f64, String> {
        path.split('.').try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64).ok_or_else(|| format!("fio output lacks {dir_name}.{path}"))
    };
    let iops = num(dir, "iops")?;
    let ios = num(dir, "total_ios")? as u64;
    let seconds = num(dir, "runtime")? / 1000.0;
    let mut lat = Latency::of(dir).ok_or_else(|| format!("fio output lacks {dir_name}.lat_ns/clat_ns mean and percentiles"))?;
    if workload == Workload::WriteFsync {
        let sync = job.get("sync").and_then(Latency::of).ok_or("fio output lacks sync.lat_ns (was --fsync=1 given?)")?;
        lat = lat.plus(&sync);
    }
    Ok(FioResult {
        iops,
        ios,
        seconds,
        mean_us: lat.mean_ns / 1000.0,
        p50_us: lat.p[0] / 1000.0,
        p99_us: lat.p[1] / 1000.0,
        p999_us: lat.p[2] / 1000.0,
    })
}

/// Mean and p50/p99/p99.9 in nanoseconds of one fio latency section.
struct Latency {
    mean_ns: f64,
    p: [f64; 3],
}

impl Latency {
    const QUANTILES: [f64; 3] = [50.0, 99.0, 99.9];

    /// From `section.lat_ns`, else `section.clat_ns`, field by field.
    fn of(section: &Value) -> Option<Latency> {
        let lat = section.get("lat_ns");
        let clat = section.get("clat_ns");
        let pick = |f: &dyn Fn(&Value) -> Option<f64>| lat.and_then(f).or_else(|| clat.and_then(f));
        let mean_ns = pick(&|s: &Value| s.get("mean").and_then(Value::as_f64))?;
        let mut p = [0.0; 3];
        for (slot, q) in p.iter_mut().zip(Self::QUANTILES) {
            *slot = pick(&|s: &Value| percentile(s, q))?;
        }
        Some(Latency { mean_ns, p })
    }

    fn plus(&self, o: &Latency) -> Latency {
        Latency { mean_ns: self.mean_ns + o.mean_ns, p: [self.p[0] + o.p[0], self.p[1] + o.p[1], self.p[2] + o.p[2]] }
    }
}

/// The value of percentile `q` in a section's `"percentile"` map, whose keys are formatted
/// like `"99.000000"`.
fn percentile(section: &Value, q: f64) -> Option<f64> {
    section.get("percentile")?.as_object()?.iter().find(|(k, _)| k.parse::<f64>().is_ok_and(|k| (k - q).abs() < 1e-6))?.1.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made document with the fields fio documents for `--output-format=json`:
    /// write with clat percentiles only and a sync section, read with lat percentiles.
    const SAMPLE: &str = r#"fio: some warning printed before the document
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "sample",
      "error" : 0,
      "read" : {
        "iops" : 2500.5,
        "total_ios" : 25005,
        "runtime" : 10000,
        "clat_ns" : { "mean" : 390000.0, "percentile" : { "50.000000" : 380000, "99.000000" : 700000, "99.900000" : 900000 } },
        "lat_ns" : { "mean" : 400000.0, "percentile" : { "50.000000" : 390000, "99.000000" : 710000, "99.900000" : 910000 } }
      },
      "write" : {
        "iops" : 1000.0,
        "total_ios" : 10000,
        "runtime" : 10000,
        "clat_ns" : { "mean" : 90000.0, "percentile" : { "1.000000" : 10, "50.000000" : 80000, "99.000000" : 200000, "99.900000" : 500000 } },
        "lat_ns" : { "mean" : 100000.0 }
      },
      "sync" : {
        "total_ios" : 10000,
        "lat_ns" : { "mean" : 300000.0, "percentile" : { "50.000000" : 250000, "99.000000" : 800000, "99.900000" : 1000000 } }
      }
    }
  ]
}"#;

    #[test]
    fn write_uses_lat_mean_and_clat_percentiles() {
        let r = parse_output(SAMPLE, Workload::Write).unwrap();
        assert_eq!(r, FioResult { iops: 1000.0, ios: 10000, seconds: 10.0, mean_us: 100.0, p50_us: 80.0, p99_us: 200.0, p999_us: 500.0 });
    }

    #[test]
    fn write_with_fsync_adds_sync_latency() {
        let r = parse_output(SAMPLE, Workload::WriteFsync).unwrap();
        assert_eq!((r.mean_us, r.p50_us, r.p99_us, r.p999_us), (400.0, 330.0, 1000.0, 1500.0));
        assert_eq!(r.iops, 1000.0);
    }

    #[test]
    fn read_prefers_lat_percentiles() {
        let r = parse_output(SAMPLE, Workload::Read).unwrap();
        assert_eq!((r.iops, r.ios, r.mean_us, r.p50_us, r.p99_us, r.p999_us), (2500.5, 25005, 400.0, 390.0, 710.0, 910.0));
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        assert!(parse_output("", Workload::Read).unwrap_err().contains("no JSON"));
        assert!(parse_output("{ not json", Workload::Read).unwrap_err().contains("not valid JSON"));
        assert!(parse_output(r#"{"jobs": []}"#, Workload::Read).unwrap_err().contains("jobs[0]"));
        assert!(parse_output(r#"{"jobs": [{"error": 5}]}"#, Workload::Read).unwrap_err().contains("error 5"));
        assert!(parse_output(r#"{"jobs": [{"read": {"iops": 1}}]}"#, Workload::Read).unwrap_err().contains("total_ios"));
        let no_sync = SAMPLE.replace("\"sync\"", "\"nosync\"");
        assert!(parse_output(&no_sync, Workload::WriteFsync).unwrap_err().contains("sync.lat_ns"));
        let no_pct = SAMPLE.replace("\"99.900000\" : 500000", "\"98.000000\" : 1");
        assert!(parse_output(&no_pct, Workload::Write).unwrap_err().contains("percentiles"));
    }
}
