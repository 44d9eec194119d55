//! Results of a bench run and their two renderings: a markdown table and JSON.
//!
//! Contract: both renderings carry the same rows; latencies are microseconds, engine-only
//! columns (write amplification, fsyncs per op) are `None`/blank for fio rows and reads.

use super::args::{ApplyPolicy, Mode};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;
use tessera_engine::EngineStats;

/// Who served the operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Engine(Mode),
    /// fio with the named ioengine.
    Fio(&'static str),
}

impl Target {
    pub fn name(self) -> String {
        match self {
            Target::Engine(m) => format!("engine/{}", m.name()),
            Target::Fio(e) => format!("fio/{e}"),
        }
    }
}

/// What was run: always 4 KiB, random offsets over the working set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// Random writes; durable on return for the engine, not durable for fio.
    #[serde(rename = "randwrite")]
    Write,
    /// fio random writes each followed by fsync (durable, like the engine's writes).
    #[serde(rename = "randwrite_fsync")]
    WriteFsync,
    #[serde(rename = "randread")]
    Read,
}

impl Workload {
    fn order(self) -> u8 {
        match self {
            Workload::WriteFsync => 0,
            Workload::Write => 1,
            Workload::Read => 2,
        }
    }
}

/// Engine counter deltas over a measured window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineCounters {
    pub client_bytes: u64,
    pub device_bytes: u64,
    pub header_bytes: u64,
    pub batches: u64,
    pub syncs: u64,
    pub checkpoints: u64,
    pub relocated_blocks: u64,
    /// Gauges at the end of the window: referenced 4 KiB blocks, free and total segments.
    pub live_blocks_end: u64,
    pub free_segments_end: u64,
    pub total_segments: u64,
}

impl EngineCounters {
    pub fn between(a: &EngineStats, b: &EngineStats) -> Self {
        Self {
            client_bytes: b.client_bytes.saturating_sub(a.client_bytes),
            device_bytes: b.device_bytes.saturating_sub(a.device_bytes),
            header_bytes: b.header_bytes.saturating_sub(a.header_bytes),
            batches: b.batches.saturating_sub(a.batches),
            syncs: b.syncs.saturating_sub(a.syncs),
            checkpoints: b.checkpoints.saturating_sub(a.checkpoints),
            relocated_blocks: b.relocated_blocks.saturating_sub(a.relocated_blocks),
            live_blocks_end: b.live_blocks,
            free_segments_end: b.free_segments,
            total_segments: b.total_segments,
        }
    }
}

/// One measured phase.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub target: String,
    pub workload: Workload,
    /// Whether each write was durable when it completed (writes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<bool>,
    pub qd: usize,
    pub ops: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Device bytes written per client data byte (engine writes only).
    pub device_bytes_per_client_byte: Option<f64>,
    /// fsyncs (incl. checkpoint syncs) per client write (engine writes only).
    pub fsyncs_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineCounters>,
    #[serde(skip)]
    target_kind: Option<Target>,
}

impl Row {
    /// A row from the bench's own latency histogram (microseconds).
    pub fn from_histogram(
        target: Target,
        workload: Workload,
        qd: usize,
        ops: u64,
        window: Duration,
        h: &Histogram<u64>,
        counters: Option<EngineCounters>,
    ) -> Row {
        let secs = window.as_secs_f64();
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        Row {
            target: target.name(),
            workload,
            durable: (workload != Workload::Read).then_some(true),
            qd,
            ops,
            seconds: secs,
            iops: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50) as f64,
            p99_us: h.value_at_quantile(0.99) as f64,
            p999_us: h.value_at_quantile(0.999) as f64,
            device_bytes_per_client_byte: counters.as_ref().and_then(|c| ratio(c.device_bytes, c.client_bytes)),
            fsyncs_per_op: counters.as_ref().and_then(|c| ratio(c.syncs, ops)),
            engine: counters,
            target_kind: Some(target),
        }
    }

    /// A row from numbers fio reported.
    pub fn from_fio(target: Target, workload: Workload, qd: usize, r: &super::fio::FioResult) -> Row {
        Row {
            target: target.name(),
            workload,
            durable: match workload {
                Workload::Read => None,
                Workload::Write => Some(false),
                Workload::WriteFsync => Some(true),
            },
            qd,
            ops: r.ios,
            seconds: r.seconds,
            iops: r.iops,
            mean_us: r.mean_us,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            p999_us: r.p999_us,
            device_bytes_per_client_byte: None,
            fsyncs_per_op: None,
            engine: None,
            target_kind: Some(target),
        }
    }

    fn sort_key(&self) -> (usize, bool, u8, u8) {
        let is_fio = matches!(self.target_kind, Some(Target::Fio(_)));
        (self.qd, self.workload == Workload::Read, is_fio as u8, self.workload.order())
    }

    fn workload_label(&self) -> &'static str {
        match (self.workload, self.durable) {
            (Workload::Read, _) => "randread",
            (Workload::WriteFsync, _) => "randwrite fsync=1 (durable)",
            (Workload::Write, Some(true)) => "randwrite (durable)",
            (Workload::Write, _) => "randwrite (not durable)",
        }
    }
}

/// The engine side of the run.
#[derive(Clone, Debug, Serialize)]
pub struct EngineInfo {
    pub device: String,
    pub size_bytes: u64,
    pub working_set_bytes: u64,
    pub segment_size_bytes: u64,
    pub mode: Mode,
    pub apply: ApplyPolicy,
    pub pgs: u32,
    pub log_keep: u64,
    pub prefill_seconds: f64,
}

/// The fio side of the run, or why it was skipped.
#[derive(Clone, Debug, Serialize)]
pub struct FioInfo {
    pub version: Option<String>,
    pub ioengine: Option<String>,
    pub file: Option<String>,
    pub prefill_seconds: Option<f64>,
    /// Every fio command run, in order.
    pub commands: Vec<String>,
    /// Why fio was skipped or which fallback was taken.
    pub note: Option<String>,
}

/// Everything one `tessera bench engine` run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub ramp_seconds: f64,
    pub duration_seconds: f64,
    pub engine: EngineInfo,
    pub fio: FioInfo,
    pub rows: Vec<Row>,
}

impl Report {
    /// Orders rows for side-by-side reading: per QD, writes then reads, engine before fio.
    pub fn sort_rows(&mut self) {
        self.rows.sort_by_key(|r| r.sort_key());
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report fields are plain data")
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let e = &self.engine;
        let _ = writeln!(s, "## tessera bench engine\n");
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(
            s,
            "- engine: {}; working set {} MiB; segment {} MiB; mode {} ({} PGs{}); prefill {:.1} s",
            e.device,
            e.working_set_bytes >> 20,
            e.segment_size_bytes as f64 / (1 << 20) as f64,
            e.mode.name(),
            e.pgs,
            if e.mode == Mode::Raft {
                format!(", apply {}, log keeps {} entries per PG", e.apply.name(), e.log_keep)
            } else {
                String::new()
            },
            e.prefill_seconds
        );
        let f = &self.fio;
        match (&f.version, &f.ioengine) {
            (Some(v), Some(io)) => {
                let _ = writeln!(
                    s,
                    "- fio: {v}, ioengine {io}, file {}; prefill {:.1} s",
                    f.file.as_deref().unwrap_or("?"),
                    f.prefill_seconds.unwrap_or(0.0)
                );
            }
            _ => {
                let _ = writeln!(s, "- fio: not run");
            }
        }
        if let Some(n) = &f.note {
            let _ = writeln!(s, "- fio note: {n}");
        }
        let _ = writeln!(
            s,
            "- every phase: 4 KiB, random offsets, {:.1} s ramp (discarded), {:.1} s measured\n",
            self.ramp_seconds, self.duration_seconds
        );
        let _ = writeln!(s, "| target | workload | QD | IOPS | mean µs | p50 µs | p99 µs | p99.9 µs | device B / client B | fsyncs / op |");
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in &self.rows {
            let opt = |v: Option<f64>, prec: usize| v.map_or(String::new(), |v| format!("{v:.prec$}"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                r.target,
                r.workload_label(),
                r.qd,
                r.iops,
                r.mean_us,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                opt(r.device_bytes_per_client_byte, 2),
                opt(r.fsyncs_per_op, 3)
            );
        }
        let _ = writeln!(s);
        let windows: Vec<&Row> = self.rows.iter().filter(|r| r.engine.is_some()).collect();
        if !windows.is_empty() {
            let _ = writeln!(s, "Engine counters over each measured write window:\n");
            for r in windows {
                let c = r.engine.as_ref().expect("filtered on engine counters");
                let mib = |b: u64| b as f64 / (1 << 20) as f64;
                let _ = writeln!(
                    s,
                    "- QD{}: {} client writes, {} batches, {} fsyncs; written {:.0} MiB = client data {:.0} + batch headers {:.0} + \
                     cleaner relocation {:.0} ({} blocks) + checkpoints etc. {:.0} ({} checkpoints); at the end {} live blocks, \
                     {} of {} segments free",
                    r.qd,
                    r.ops,
                    c.batches,
                    c.syncs,
                    mib(c.device_bytes),
                    mib(c.client_bytes),
                    mib(c.header_bytes),
                    mib(c.relocated_blocks * 4096),
                    c.relocated_blocks,
                    mib(c.device_bytes.saturating_sub(c.client_bytes + c.header_bytes + c.relocated_blocks * 4096)),
                    c.checkpoints,
                    c.live_blocks_end,
                    c.free_segments_end,
                    c.total_segments
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "Notes:");
        if e.mode == Mode::Raft {
            let _ = writeln!(
                s,
                "- engine/raft randwrite: latency = log append until durable (write + fdatasync); the apply {} and \
                 log compactions are submitted without waiting.",
                match e.apply {
                    ApplyPolicy::Piggyback => "rides in the writer's next append transaction",
                    ApplyPolicy::Separate => "is its own transaction",
                }
            );
        }
        let _ = writeln!(
            s,
            "- device B / client B counts everything the engine wrote in the window (batch headers, checkpoints, \
             cleaner relocation); fsyncs / op below 1 means group commit merged writes."
        );
        if f.version.is_some() {
            let _ = writeln!(
                s,
                "- fio randwrite fsync=1: latency = write + its fsync (means added; percentiles are the sums of the two \
                 percentiles, an approximation). fio latencies are submission to completion (lat_ns)."
            );
            if !f.commands.is_empty() {
                let _ = writeln!(s, "\nfio commands:\n");
                for c in &f.commands {
                    let _ = writeln!(s, "    {c}");
                }
            }
        }
        s
    }
}
