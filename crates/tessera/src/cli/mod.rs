//! The admin CLI: `tessera cluster|osd|pool|volume|snapshot|scrub ...`, a client of the mon's REST API
//! (and of the OSDs' data ports for the commands that touch data).
//! Human tables by default, the API's JSON with `--json`.

mod admin;
mod lifecycle;
mod scrub;
mod table;

pub use admin::{run_cluster, run_osd, run_pool, run_volume, ClusterCmd, OsdCmd, OsdSub, PoolCmd, VolumeCmd};
pub use lifecycle::{run_snapshot, SnapshotCmd};
pub use scrub::{run_scrub, ScrubCmd};

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tessera_mon::MonClient;

/// Options shared by every admin command.
#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Mon address(es): host:port or http://host:port, comma-separated; the CLI fails over
    /// between them.
    #[arg(long, global = true, env = "TESSERA_MON", default_value = "127.0.0.1:7480")]
    pub mon: String,
    /// Print the API's JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a mon after this long.
    #[arg(long, global = true, default_value = "10s", value_parser = crate::size::parse_duration)]
    pub timeout: Duration,
}

impl Connect {
    pub fn client(&self) -> Result<MonClient> {
        MonClient::new(std::slice::from_ref(&self.mon), self.timeout).context("invalid --mon")
    }
}

/// Runs an async admin command on a small runtime.
pub fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?.block_on(f)
}

pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
