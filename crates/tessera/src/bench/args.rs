//! The flags of `tessera bench engine` and their validation into a [`Plan`].
//!
//! Contract: [`EngineBenchArgs::plan`] rejects every value the run could not honour (zero
//! duration, unaligned sizes, a working set that cannot fit) with a message naming the flag,
//! before any file is created.

use crate::size::{human, parse_duration, parse_size};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Long help of `tessera bench engine`: what is measured and how to read it.
pub const LONG_ABOUT: &str = "\
Benchmark the storage engine on a real file, side by side with fio on a raw file of the same
size, in one run.

Steps: format the engine on --path (a fresh file), prefill the whole --working-set once, then
for each queue depth in --qd run 4 KiB random writes and then 4 KiB random reads over the
working set: --ramp first (discarded), then --duration measured. Each of the QD threads keeps
exactly one operation in flight, so QD operations are in flight at all times.

Writes follow the path of a Raft PG replica (--mode raft, the default): append the 4 KiB
entry to the PG's log and wait until it is durable (fdatasync), then apply it to the object
(no data copied; by default the apply rides in the writer's next append transaction, see
--apply) and periodically compact the log. A write's latency is the time until its log entry
is durable. --mode direct writes the object with one op and no log instead. The prefill uses
large direct writes in both modes.

Reported per phase: IOPS, latency (mean, p50, p99, p99.9 in microseconds), device bytes
written per client byte (write amplification: batch headers, checkpoints, cleaner
relocation) and fsyncs per client write (below 1 when group commit merges writes).

Then fio (unless --no-fio or fio is missing) on <path>.fio-peer with io_uring (libaio when
io_uring is unavailable), O_DIRECT, 4 KiB: randwrite without and with --fsync=1 (only the
latter is durable like the engine's writes) and randread, at the same depths, ramp and
duration, over the same working set.

Output: a markdown table on stdout (or JSON with --json); progress on stderr.";

/// Examples shown at the end of `--help`.
pub const EXAMPLES: &str = "\
Examples:
  tessera bench engine --size 1G --duration 10s
      engine vs fio on 1 GiB files in a scratch directory under the current directory
  tessera bench engine --path /mnt/nvme/bench.dev --size 8G --qd 1,4,32 --keep
      on a chosen filesystem, three queue depths, keep both files afterwards
  tessera bench engine --size 64M --segment-size 1M --duration 1s --ramp 0s --no-fio --json
      a quick smoke run, engine only, machine-readable";

/// The write path the bench drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Raft replica path: LogAppend, wait for durability, ApplyWrite, periodic LogCompact.
    Raft,
    /// One Op::Write per client write, no log (for comparison).
    Direct,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Raft => "raft",
            Mode::Direct => "direct",
        }
    }
}

/// When the raft path submits a write's `ApplyWrite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyPolicy {
    /// In the same writer's next log-append transaction (as a Raft Ready that persists new
    /// entries and applies committed ones in one go).
    Piggyback,
    /// In its own transaction right after the append is durable, not waited for. With few
    /// writes in flight this costs a batch (header block + fdatasync) of its own.
    Separate,
}

impl ApplyPolicy {
    pub fn name(self) -> &'static str {
        match self {
            ApplyPolicy::Piggyback => "piggyback",
            ApplyPolicy::Separate => "separate",
        }
    }
}

// Later occurrences of a flag override earlier ones, so wrapper scripts can set
// defaults that a user's own flags replace.
#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct EngineBenchArgs {
    /// Engine device file (regular file): absent, empty, or an earlier tessera device, which is
    /// reformatted. fio uses <FILE>.fio-peer beside it. Default: both in a new scratch
    /// directory under the current directory. Both files are removed at the end unless --keep.
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,

    /// Size of the engine file and of fio's file, e.g. 1G, 512M (binary units, multiple of 4K).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub size: u64,

    /// Bytes of object data the workload writes and reads, prefilled once before the phases.
    /// Default: half of --size (the log needs free room to clean into). E.g. --working-set 256M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub working_set: Option<u64>,

    /// Measured time of each phase, e.g. 10s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Warm-up before each phase's measurement; its results are discarded. 0s disables it.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub ramp: Duration,

    /// Engine segment size given to format, e.g. 16M; bounds the largest transaction and the
    /// cleaner's unit of work. Must be a multiple of 4K and at least 64K.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub segment_size: u64,

    /// Queue depths to run, comma-separated, e.g. --qd 1,4,32. Each phase runs with that many
    /// operations in flight.
    #[arg(long, value_name = "LIST", default_value = "1,32", value_delimiter = ',')]
    pub qd: Vec<usize>,

    /// Write path: raft (log append + apply, what a PG replica does) or direct (one write op).
    #[arg(long, value_enum, default_value_t = Mode::Raft)]
    pub mode: Mode,

    /// Raft mode: when each write's apply is submitted: piggyback (in the writer's next
    /// append transaction) or separate (its own transaction right after the append is durable).
    #[arg(long, value_enum, default_value_t = ApplyPolicy::Piggyback)]
    pub apply: ApplyPolicy,

    /// Number of PGs the objects are spread over (object % pgs). Each PG has its own log.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub pgs: u32,

    /// Raft mode: applied log entries each PG keeps after compaction (a real replica keeps
    /// some for lagging followers). Retained entries can pin overwritten blocks.
    #[arg(long, value_name = "ENTRIES", default_value_t = 1000)]
    pub log_keep: u64,

    /// Skip the fio peer runs.
    #[arg(long)]
    pub no_fio: bool,

    /// fio executable to use as the peer.
    #[arg(long, value_name = "PATH", default_value = "fio")]
    pub fio_bin: PathBuf,

    /// Keep the engine and fio files (and scratch directory) after the run.
    #[arg(long)]
    pub keep: bool,

    /// Print the results as JSON on stdout instead of a markdown table.
    #[arg(long)]
    pub json: bool,
}

/// Validated run parameters.
#[derive(Clone, Debug)]
pub struct Plan {
    pub size: u64,
    pub working_set: u64,
    pub duration: Duration,
    pub ramp: Duration,
    pub segment_size: u64,
    pub qds: Vec<usize>,
    pub mode: Mode,
    pub apply: ApplyPolicy,
    pub pgs: u32,
    pub log_keep: u64,
}

/// Most threads (= queue depth) one phase may start.
pub const MAX_QD: usize = 1024;
/// Bytes per object: a volume is cut into objects of this size.
pub const OBJECT_SIZE: u64 = 4 << 20;
const BLOCK: u64 = 4096;

impl EngineBenchArgs {
    /// Checks every flag that can be checked before the engine exists.
    pub fn plan(&self) -> Result<Plan> {
        if self.size == 0 || !self.size.is_multiple_of(BLOCK) {
            bail!("--size {} must be a positive multiple of 4K (e.g. 1G)", self.size);
        }
        let working_set = self.working_set.unwrap_or(self.size / 2 / BLOCK * BLOCK);
        if working_set == 0 || !working_set.is_multiple_of(BLOCK) {
            bail!("--working-set {} must be a positive multiple of 4K (e.g. 256M)", working_set);
        }
        if working_set >= self.size {
            bail!(
                "--working-set ({}) must be smaller than --size ({}): the log needs free room (default: half of --size)",
                human(working_set),
                human(self.size)
            );
        }
        tessera_engine::FormatOptions { segment_size: self.segment_size }
            .validate(self.size)
            .map_err(|e| anyhow::anyhow!("--segment-size {} with --size {}: {e}", human(self.segment_size), human(self.size)))?;
        if self.duration.is_zero() {
            bail!("--duration must be more than 0 (e.g. 10s); only --ramp may be 0s");
        }
        if self.qd.is_empty() {
            bail!("--qd needs at least one queue depth (e.g. 1,32)");
        }
        if let Some(bad) = self.qd.iter().find(|q| **q == 0 || **q > MAX_QD) {
            bail!("--qd {bad} is out of range: each queue depth must be 1..={MAX_QD}");
        }
        if self.pgs == 0 || self.pgs > 65536 {
            bail!("--pgs {} is out of range: 1..=65536", self.pgs);
        }
        Ok(Plan {
            size: self.size,
            working_set,
            duration: self.duration,
            ramp: self.ramp,
            segment_size: self.segment_size,
            qds: self.qd.clone(),
            mode: self.mode,
            apply: self.apply,
            pgs: self.pgs,
            log_keep: self.log_keep,
        })
    }
}

impl Plan {
    /// Objects the working set spans (the last one may be partial).
    pub fn objects(&self) -> u64 {
        self.working_set.div_ceil(OBJECT_SIZE)
    }

    /// PGs that hold at least one object of the working set.
    pub fn used_pgs(&self) -> u64 {
        self.objects().min(self.pgs as u64)
    }

    /// Upper bound of log bytes that retained (applied, not yet compacted) entries may pin
    /// beyond the working set: every retained entry's block overwritten since.
    pub fn log_retention_bytes(&self) -> u64 {
        match self.mode {
            Mode::Raft => self.used_pgs() * (self.log_keep + super::raft::COMPACT_STEP) * BLOCK,
            Mode::Direct => 0,
        }
    }

    /// Checks that the working set fits the engine's capacity with the cleaner's headroom
    /// (1/8 of the device, its low-water mark, stays free). Returns a warning when it fits
    /// only if fewer retained log entries pin overwritten blocks than the worst case.
    pub fn check_capacity(&self, capacity: u64) -> Result<Option<String>> {
        let usable = capacity / 8 * 7;
        if self.working_set > usable {
            bail!(
                "--working-set {} exceeds {} (7/8 of the engine's {} capacity; the cleaner needs the rest). \
                 Lower --working-set or raise --size",
                human(self.working_set),
                human(usable),
                human(capacity)
            );
        }
        let worst = self.working_set + self.log_retention_bytes();
        Ok((worst > usable).then(|| {
            format!(
                "working set {} + up to {} pinned by retained log entries ({} PGs x {} entries of 4 KiB) may exceed {} \
                 (7/8 of the engine's {} capacity) if most retained entries get overwritten; if the run fails with \
                 \"device full\", lower --log-keep or --working-set",
                human(self.working_set),
                human(self.log_retention_bytes()),
                self.used_pgs(),
                self.log_keep + super::raft::COMPACT_STEP,
                human(usable),
                human(capacity)
            )
        }))
    }
}
