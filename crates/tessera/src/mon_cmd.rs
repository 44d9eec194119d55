//! `tessera mon`: runs the control-plane daemon until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_metastore::{EmbeddedStore, EtcdOptions, EtcdStore, MetaStore};
use tessera_mon::MonConfig;

const LONG_ABOUT: &str = "Run the control plane: the cluster map (OSDs, pools, PG map, volumes), \
failure detection from OSD heartbeats, and the REST/JSON admin API with Prometheus /metrics.

Storage backends:
  embedded:PATH         one redb file; one mon; no other process needed (default choice for one machine)
  etcd:URL[,URL...]     an etcd cluster; run several mons on it: one is elected active (it takes
                        heartbeats and marks OSDs down/out), the others serve the API and take
                        over within about --lease-ttl when it dies

Every mon serves the whole API (changes are compare-and-swap transactions in the store).";

const EXAMPLES: &str = "Examples:
  tessera mon --store embedded:/var/lib/tessera/mon.redb
  tessera mon --store etcd:http://10.0.0.1:2379,http://10.0.0.2:2379 --listen 0.0.0.0:7480 \\
      --advertise http://10.0.0.5:7480
  tessera cluster status --mon 127.0.0.1:7480";

#[derive(Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct MonCmd {
    /// Where the cluster map lives: embedded:PATH or etcd:URL[,URL...].
    #[arg(long)]
    pub store: String,
    /// Key prefix inside etcd (several clusters can share one etcd).
    #[arg(long, default_value = "/tessera/")]
    pub etcd_prefix: String,
    /// Address the API listens on.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// URL other processes reach this mon at (default: http://<listen address>).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Mark an up OSD down after this long without a heartbeat.
    #[arg(long, default_value = "4s", value_parser = crate::size::parse_duration)]
    pub down_after: Duration,
    /// Mark a down OSD out (re-placing its PGs) after it has been down this long.
    #[arg(long, default_value = "10m", value_parser = crate::size::parse_duration)]
    pub out_after: Duration,
    /// Flap damping: an OSD marked down this many times within 10 minutes must heartbeat
    /// without a gap for a hold time before it is marked up again (it settles as down
    /// instead of moving leaders and PG states back and forth).
    #[arg(long, default_value_t = 3)]
    pub flap_threshold: usize,
    /// The first hold time of a flapping OSD; it doubles with every further down.
    #[arg(long, default_value = "10s", value_parser = crate::size::parse_duration)]
    pub flap_hold: Duration,
    /// The longest hold time.
    #[arg(long, default_value = "5m", value_parser = crate::size::parse_duration)]
    pub flap_hold_max: Duration,
    /// With etcd: how long after the active mon dies until a standby takes over.
    #[arg(long, default_value = "3s", value_parser = crate::size::parse_duration)]
    pub lease_ttl: Duration,
}

async fn open_store(cmd: &MonCmd) -> Result<Arc<dyn MetaStore>> {
    if let Some(path) = cmd.store.strip_prefix("embedded:") {
        if path.is_empty() {
            bail!("--store embedded: needs a file path, e.g. embedded:/var/lib/tessera/mon.redb");
        }
        if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let store = EmbeddedStore::open(path).await.with_context(|| format!("opening the embedded store {path}"))?;
        return Ok(Arc::new(store));
    }
    if let Some(urls) = cmd.store.strip_prefix("etcd:") {
        let endpoints: Vec<String> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
        if endpoints.is_empty() {
            bail!("--store etcd: needs at least one URL, e.g. etcd:http://127.0.0.1:2379");
        }
        let store = EtcdStore::connect(EtcdOptions::new(endpoints, cmd.etcd_prefix.as_bytes().to_vec()))
            .await
            .with_context(|| format!("connecting to etcd at {urls}"))?;
        return Ok(Arc::new(store));
    }
    bail!("unknown --store {:?}: use embedded:PATH or etcd:URL[,URL...]", cmd.store)
}

pub fn run(cmd: MonCmd) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let store = open_store(&cmd).await?;
        let mut cfg = MonConfig::new(cmd.listen);
        cfg.advertise = cmd.advertise.clone();
        cfg.detector.down_after = cmd.down_after;
        cfg.detector.out_after = cmd.out_after;
        cfg.detector.flap_threshold = cmd.flap_threshold;
        cfg.detector.flap_hold = cmd.flap_hold;
        cfg.detector.flap_hold_max = cmd.flap_hold_max.max(cmd.flap_hold);
        cfg.lease_ttl = cmd.lease_ttl;
        let mut mon = tessera_mon::start(store, cfg).await.with_context(|| format!("starting the mon on {}", cmd.listen))?;
        eprintln!("tessera mon: API on http://{} (store {})", mon.addr, cmd.store);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            r = mon.wait() => { r.context("the API server stopped")?; bail!("the API server stopped unexpectedly") }
        }
        eprintln!("tessera mon: shutting down");
        mon.shutdown().await;
        Ok(())
    })
}
