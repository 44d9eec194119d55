//! `tessera nbd`: serves every volume of the cluster over NBD until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_client::{Client, ClientOptions};
use tessera_nbd::volume::VolumeCatalog;
use tessera_nbd::{NbdServer, ServerConfig};

pub const LONG_ABOUT: &str = "Serve the cluster's volumes over NBD (export name = volume name).

Stateless: it keeps no data and no cache, so several servers may export the same volume and
clients may use several connections (CAN_MULTI_CONN). A write is answered only once it is
fsynced in the logs of a majority of its placement group's replicas, so FLUSH and FUA add
nothing; FLUSH still waits for every write sent before it on its connection.

Requests may be any byte range when --min-block-size is 1 (the default): partial 4 KiB
blocks are read-modify-written (serialized within this server, not across servers; a
partial write racing an overlapping aligned write of the same block may undo it). With
512 or 4096, unaligned requests are refused with EINVAL, clients must ask for the block
sizes (NBD_OPT_GO with NBD_INFO_BLOCK_SIZE; NBD_OPT_EXPORT_NAME is refused), and they align
themselves.";

pub const EXAMPLES: &str = "Examples:
  tessera nbd --mon 127.0.0.1:7480
  nbdinfo nbd://127.0.0.1:10809/vol1
  qemu-img convert -n -O raw disk.img nbd://127.0.0.1:10809/vol1
  fio --name=t --ioengine=nbd --uri=nbd://127.0.0.1:10809/vol1 --rw=randwrite --bs=4k --iodepth=32 \\
      --size=1G --runtime=20 --time_based";

#[derive(Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct NbdCmd {
    /// Mon address(es): host:port or http://host:port, comma-separated.
    #[arg(long, env = "TESSERA_MON", default_value = "127.0.0.1:7480")]
    pub mon: String,
    /// Address to listen on (10809 is NBD's registered port).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: SocketAddr,
    /// Volume served to clients that ask for the empty export name (`nbd://host/`).
    #[arg(long)]
    pub default_export: Option<String>,
    /// Minimum block size advertised and enforced: 1, 512 or 4096.
    #[arg(long, default_value = "1", value_parser = ["1", "512", "4096"])]
    pub min_block_size: String,
}

impl NbdCmd {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            min_block: self.min_block_size.parse().expect("clap allows only 1, 512 and 4096"),
            default_export: self.default_export.clone(),
            ..ServerConfig::default()
        }
    }
}

/// Starts an NBD server for every volume known to the mons at `mon` (comma-separated).
pub async fn start(mon: &str, listen: SocketAddr, cfg: ServerConfig) -> Result<NbdServer> {
    let mons: Vec<String> = mon.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect();
    if mons.is_empty() {
        bail!("--mon needs at least one address");
    }
    let client = Client::connect(&mons, ClientOptions::default()).await.with_context(|| format!("connecting to the mon at {mon}"))?;
    let catalog = Arc::new(VolumeCatalog::new(client));
    NbdServer::start(listen, catalog, cfg).await.with_context(|| format!("listening on {listen}"))
}

pub fn run(cmd: NbdCmd) -> Result<()> {
    // One thread: a request read off an NBD connection, the client library's frame to the
    // OSD and its answer pass between tasks of one thread, with no cross-thread wake-up per
    // hop (measured with scripts/bench-trace.sh; the blocking pool stays for blocking work).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let server = start(&cmd.mon, cmd.listen, cmd.config()).await?;
        eprintln!("tessera nbd: serving volumes of {} on nbd://{}/<volume>", cmd.mon, server.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("tessera nbd: shutting down (answering requests in flight)");
        if tokio::time::timeout(Duration::from_secs(35), server.shutdown()).await.is_err() {
            bail!("requests still in flight after 35 s; exiting anyway");
        }
        Ok(())
    })
}
