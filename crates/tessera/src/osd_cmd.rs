//! `tessera osd run`: runs one OSD daemon until SIGINT/SIGTERM. `tessera osd blocks`: lists
//! where a stopped OSD's object data blocks are on its device (for corruption tests).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_engine::{Engine, EngineConfig, FileDevice, SNAP_HEAD, SNAP_STAGING};
use tessera_osd::OsdConfig;

pub const LONG_ABOUT: &str = "Run an OSD: one storage device (a file or a block device), one Raft group per \
PG replica the cluster map assigns to it, serving client reads and writes on its data port.

On first start the device file is created with --size bytes and formatted; later starts
recover it (replaying the log after the last checkpoint). The OSD registers with the mon
under the device's uuid: a restarted OSD keeps its id, a wiped device joins as a new OSD.

Durability: a write is acknowledged once it is fsynced in the logs of a majority of its
PG's replicas (2 of 3).";

pub const EXAMPLES: &str = "Examples:
  tessera osd run --mon 127.0.0.1:7480 --data /var/lib/tessera/osd0.dev --size 100G --listen 0.0.0.0:7500 \\
      --advertise 10.0.0.5:7500
  tessera osd run --data ./osd1.dev --size 2G --listen 127.0.0.1:7501";

#[derive(Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct OsdRunArgs {
    /// The device: a file (created with --size if absent) or a block device.
    #[arg(long)]
    pub data: PathBuf,
    /// Size of the device file to create (ignored when it exists), e.g. 2G.
    #[arg(long, default_value = "4G", value_parser = crate::size::parse_size)]
    pub size: u64,
    /// Address of the data port (clients and peer OSDs).
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub listen: SocketAddr,
    /// host:port others reach the data port at (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Failure-domain host name (default: this machine's hostname).
    #[arg(long)]
    pub host: Option<String>,
    /// Heartbeat interval to the mon (the mon marks the OSD down after its --down-after).
    #[arg(long, default_value = "1s", value_parser = crate::size::parse_duration)]
    pub heartbeat: Duration,
    /// FOR TESTING ONLY: simulate a misbehaving disk, controlled by FILE (see --help).
    ///
    /// The device runs behind a simulated volatile write cache: unsynced writes are held in
    /// this process's memory and reach the device only at fsync, so kill -9 loses every
    /// unsynced write, like a power cut. FILE (created empty if absent, re-read within
    /// 100 ms of a change) holds key=value lines; `#` starts a comment, an empty file means
    /// no faults, a bad line is logged and ignored:
    ///   read_error=P    fail this fraction (0 to 1) of reads with an I/O error
    ///   write_error=P   fail this fraction of writes (nothing of the write is stored)
    ///   sync_error=P    fail this fraction of fsyncs (nothing is made durable)
    ///   delay_ms=N      sleep N ms before every read, write and fsync (a slow disk)
    ///   torn=P          for this fraction of writes, also write a random subset of their
    ///                   512-byte sectors to the device at once (torn writes after a crash)
    ///   retry_writes=1  answer every client write with "retry" (a PG that cannot take
    ///                   writes for a while; the client keeps retrying the same request)
    ///   space_full=1    behave as if the device were full (no new data taken)
    ///   corrupt_appends=P  flip a bit in this fraction of the log entry payloads handed
    ///                   to the engine (memory corruption; the end-to-end checksums
    ///                   make the engine refuse them and Raft sends them again)
    ///   corrupt_reads=P flip a bit in this fraction of read answers after the engine
    ///                   checked them (the client refuses them and reads again)
    /// A failed write or fsync stops the OSD with an error (exit status 1), and so does a
    /// failed read during recovery or of the Raft log; a failed object read fails that
    /// client read with an I/O error.
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    pub fault_control: Option<PathBuf>,
    /// Serve every read with a heartbeat round to the followers (ReadIndex) instead of
    /// under the leader's lease.
    ///
    /// By default a PG leader whose followers answered a heartbeat round in the last 700 ms
    /// serves reads on its own: no other leader can be elected that soon (followers wait at
    /// least 900 ms without hearing from their leader before they vote), which holds as long
    /// as the clocks of two OSD hosts do not run more than 20% apart in rate. Turn leases
    /// off if that cannot be trusted; reads then cost one more network round trip.
    #[arg(long)]
    pub no_lease_reads: bool,
}

pub const BLOCKS_ABOUT: &str = "List where the object data blocks of a STOPPED OSD are on its device: \
one line per 4 KiB block of every stored object version, with its PG, volume, object index, \
version (head, a frozen snapshot id, or staging), byte offset within the object and byte \
offset on the device.

Opens the device like `tessera osd run` does (recovery replays the log after the last \
checkpoint). Every listed block is checked against its CRC32C on each read, so a corruption \
test can flip bits at a listed device offset and expect a checksum error for that object. \
Log entries, metadata, checkpoints and batch headers are not listed; a block shared by \
several versions (snapshots) is listed once per version. A listed block may also hold the \
payload of a Raft log entry still in the PG's log (an applied write points at it): reading \
that entry, to catch up a follower, then fails too, which stops the OSD. Do not run this \
while the OSD runs.

Blocks written since the last checkpoint are also verified by recovery, which takes a batch \
with a bad data block for a torn write and ends the log there: corrupting such a block makes \
the OSD forget that batch and everything after it. --checkpoint writes a checkpoint first \
(the only write this command ever makes), so that recovery replays none of the listed \
blocks; without it nothing is written.";

#[derive(Args, Debug)]
pub struct OsdBlocksArgs {
    /// The device file (or block device) of a stopped OSD.
    #[arg(long, value_name = "DEV")]
    pub data: PathBuf,
    /// Write a checkpoint first, so that recovery replays none of the listed blocks (see
    /// --help).
    #[arg(long)]
    pub checkpoint: bool,
}

/// One listed block (`--json` prints an array of these).
#[derive(serde::Serialize)]
struct BlockRow {
    pg: String,
    pool: u32,
    pg_index: u32,
    volume: u64,
    object: u64,
    /// "head", "staging", or the snapshot id of a frozen version.
    version: String,
    /// The snapshot id of a frozen version, else null.
    snap: Option<u64>,
    offset: u64,
    device_offset: u64,
}

/// `tessera osd blocks`.
pub fn blocks(args: OsdBlocksArgs, json: bool) -> Result<()> {
    let dev = FileDevice::open(&args.data).with_context(|| format!("opening {}", args.data.display()))?;
    let engine = Engine::open(Arc::new(dev), EngineConfig::default())
        .with_context(|| format!("opening the storage engine on {}", args.data.display()))?;
    if args.checkpoint {
        engine.checkpoint().with_context(|| format!("writing a checkpoint on {}", args.data.display()))?;
    }
    let rows: Vec<BlockRow> = engine
        .data_blocks()
        .into_iter()
        .map(|b| {
            let (version, snap) = match b.key.snap {
                SNAP_HEAD => ("head".to_string(), None),
                SNAP_STAGING => ("staging".to_string(), None),
                s => (s.to_string(), Some(s)),
            };
            BlockRow {
                pg: b.pg.to_string(),
                pool: b.pg.pool,
                pg_index: b.pg.index,
                volume: b.key.volume,
                object: b.key.object,
                version,
                snap,
                offset: b.offset,
                device_offset: b.device_offset,
            }
        })
        .collect();
    engine.close();
    if json {
        return crate::cli::print_json(&rows);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "{:<10} {:>8} {:>10} {:>20} {:>14} {:>14}", "PG", "VOLUME", "OBJECT", "VERSION", "OFFSET", "DEVICE_OFFSET")?;
    for r in &rows {
        writeln!(out, "{:<10} {:>8} {:>10} {:>20} {:>14} {:>14}", r.pg, r.volume, r.object, r.version, r.offset, r.device_offset)?;
    }
    out.flush()?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn run(mon: &str, args: OsdRunArgs) -> Result<()> {
    if args.listen.port() == 0 && args.advertise.is_none() {
        bail!("--listen with port 0 needs --advertise (peers must know the port before the OSD registers)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let cfg = OsdConfig {
            mon: vec![mon.to_string()],
            data: args.data.clone(),
            size: args.size,
            listen: args.listen,
            advertise: args.advertise.clone(),
            host: args.host.clone().unwrap_or_else(hostname),
            heartbeat: args.heartbeat,
            fault_control: args.fault_control.clone(),
            lease_reads: !args.no_lease_reads,
        };
        let osd = tessera_osd::start(cfg).await.with_context(|| format!("starting the OSD on {}", args.data.display()))?;
        eprintln!("tessera osd: osd {} serving on {} (device {})", osd.id, osd.addr, args.data.display());
        if let Some(f) = &args.fault_control {
            eprintln!("tessera osd: WARNING: fault injection from {} (testing only; unsynced writes are lost on kill -9)", f.display());
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = osd.stopper();
        let wait = osd.wait();
        tokio::pin!(wait);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            r = &mut wait => { r.context("the OSD stopped")?; bail!("the OSD stopped unexpectedly") }
        }
        eprintln!("tessera osd: shutting down");
        stop();
        wait.await.context("stopping the OSD")?;
        Ok(())
    })
}
