//! `tessera bench`: measure a component on this machine next to a well-known peer.
//!
//! `tessera bench engine` runs the storage engine on a file and fio on a raw file of the same
//! size, in one run, and prints one table (see [`args::LONG_ABOUT`]). `tessera bench client`
//! drives a running cluster through the client library (`scripts/bench-cluster.sh`).

mod args;
mod client;
mod engine;
mod fio;
mod phase;
mod raft;
mod report;
mod scratch;
mod trace;

pub use args::EngineBenchArgs;

use anyhow::Result;
use clap::{Args, Subcommand};
use report::{EngineInfo, FioInfo, Report, Row, Target, Workload};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchCmd {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Storage engine vs fio: 4 KiB random writes (durable) and reads at several queue depths.
    #[command(long_about = args::LONG_ABOUT, after_long_help = args::EXAMPLES)]
    Engine(EngineBenchArgs),
    /// A running cluster through the client library: 4 KiB random writes (durable on a
    /// majority) and reads at several queue depths.
    #[command(long_about = client::LONG_ABOUT, after_long_help = client::EXAMPLES)]
    Client(client::ClientBenchArgs),
    /// The per-stage latency breakdown of sampled requests, from the trace files of
    /// processes started with TESSERA_TRACE=<dir>.
    #[command(long_about = trace::LONG_ABOUT, after_long_help = trace::EXAMPLES)]
    Trace(trace::TraceArgs),
    /// Prints the trace clock (CLOCK_MONOTONIC, ns), to cut a job's window out of traces.
    Clock,
}

/// Runs one `tessera bench` subcommand and prints its report on stdout.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd.target {
        BenchTarget::Engine(a) => run_engine(&a),
        BenchTarget::Client(a) => client::run(&a),
        BenchTarget::Trace(a) => trace::run(&a),
        BenchTarget::Clock => {
            println!("{}", tessera_wire::trace::now_ns());
            Ok(())
        }
    }
}

fn run_engine(a: &EngineBenchArgs) -> Result<()> {
    let plan = a.plan()?;
    let scratch = scratch::Scratch::new(a.path.as_deref(), a.keep)?;

    let bench = engine::EngineBench::create(&scratch.engine_file, &plan)?;
    eprintln!("engine: {}", bench.device);
    let prefill = bench.prefill()?;
    let mut rows = Vec::new();
    for &qd in &plan.qds {
        progress("engine", "randwrite", qd, &plan.ramp, &plan.duration);
        rows.push(bench.random_writes(qd)?);
        progress("engine", "randread", qd, &plan.ramp, &plan.duration);
        rows.push(bench.random_reads(qd)?);
    }
    let engine_info = EngineInfo {
        device: bench.device.clone(),
        size_bytes: plan.size,
        working_set_bytes: plan.working_set,
        segment_size_bytes: plan.segment_size,
        mode: plan.mode,
        apply: plan.apply,
        pgs: plan.pgs,
        log_keep: plan.log_keep,
        prefill_seconds: prefill.as_secs_f64(),
    };
    bench.close();
    // The engine file is no longer needed; free its space before fio writes its own.
    if !a.keep {
        let _ = std::fs::remove_file(&scratch.engine_file);
    }

    let fio_info = if a.no_fio { skipped_fio("skipped (--no-fio)".into()) } else { run_fio(a, &plan, &scratch.fio_file, &mut rows)? };

    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ramp_seconds: plan.ramp.as_secs_f64(),
        duration_seconds: plan.duration.as_secs_f64(),
        engine: engine_info,
        fio: fio_info,
        rows,
    };
    report.sort_rows();
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(())
}

fn skipped_fio(note: String) -> FioInfo {
    FioInfo { version: None, ioengine: None, file: None, prefill_seconds: None, commands: Vec::new(), note: Some(note) }
}

/// Runs the fio peer jobs, appending their rows; a missing fio is reported, not an error.
fn run_fio(a: &EngineBenchArgs, plan: &args::Plan, file: &std::path::Path, rows: &mut Vec<Row>) -> Result<FioInfo> {
    let Some(mut fio) = fio::Fio::detect(&a.fio_bin)? else {
        let note = format!("skipped: `{}` not found (install fio, or pass --no-fio)", a.fio_bin.display());
        eprintln!("fio: {note}");
        return Ok(skipped_fio(note));
    };
    eprintln!("fio: {} prefilling {} MiB", fio.version, plan.size >> 20);
    let prefill = fio.prefill(file, plan.size)?;
    if let Some(n) = &fio.note {
        eprintln!("fio: {n}");
    }
    for &qd in &plan.qds {
        for workload in [Workload::Write, Workload::WriteFsync, Workload::Read] {
            let name = match workload {
                Workload::Write => "randwrite",
                Workload::WriteFsync => "randwrite fsync=1",
                Workload::Read => "randread",
            };
            progress("fio", name, qd, &plan.ramp, &plan.duration);
            let job = fio::Job { workload, qd, file, region: plan.working_set, ramp: plan.ramp, duration: plan.duration };
            let r = fio.run(&job)?;
            rows.push(Row::from_fio(Target::Fio(fio.ioengine), workload, qd, &r));
        }
    }
    Ok(FioInfo {
        version: Some(fio.version),
        ioengine: Some(fio.ioengine.to_string()),
        file: Some(file.display().to_string()),
        prefill_seconds: Some(prefill.as_secs_f64()),
        commands: fio.commands,
        note: fio.note,
    })
}

fn progress(target: &str, workload: &str, qd: usize, ramp: &Duration, duration: &Duration) {
    eprintln!("{target}: {workload} QD{qd} ({:.1} s ramp + {:.1} s)", ramp.as_secs_f64(), duration.as_secs_f64());
}
