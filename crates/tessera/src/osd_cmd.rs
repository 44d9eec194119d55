//! `tessera osd run`: runs one OSD daemon until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
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
        };
        let osd = tessera_osd::start(cfg).await.with_context(|| format!("starting the OSD on {}", args.data.display()))?;
        eprintln!("tessera osd: osd {} serving on {} (device {})", osd.id, osd.addr, args.data.display());
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
