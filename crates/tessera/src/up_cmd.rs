//! `tessera up`: a whole local cluster in one process, for trying tessera on one machine.
//!
//! Runs, in this process: a mon on an embedded store, three OSDs on files, and an NBD server;
//! creates a default pool (3 replicas) and a volume on first start; prints how to use them;
//! then shows a live status line until Ctrl-C, which stops everything cleanly (requests in
//! flight are answered, OSD logs are flushed). Everything lives under `--data`, so running
//! the command again brings the same cluster and data back. Logs go to `<data>/tessera.log`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_metastore::EmbeddedStore;
use tessera_mon::model::DomainLevel;
use tessera_mon::service::{CreatePool, CreateVolume};
use tessera_mon::{MonClient, MonConfig};
use tessera_nbd::{NbdServer, ServerConfig, StatsSnapshot};
use tessera_osd::OsdConfig;

const LONG_ABOUT: &str = "Bring up a complete tessera cluster on this machine, in one process:

  - a mon (cluster map and admin API) on an embedded store,
  - three OSDs, each on a device file (zero-filled on first start: 3 x --osd-size of disk),
  - a pool `default` with 3 replicas per placement group,
  - a volume (created on first start),
  - an NBD server exporting every volume (the created one is also the default export).

Every write is acknowledged once it is fsynced on 2 of the 3 OSDs. Everything is kept in
--data: stop with Ctrl-C and run the same command again to get the same data back. The
three OSDs share this machine's disk, so this shows the system working, not a real
cluster's fault tolerance or speed.";

const EXAMPLES: &str = "Examples:
  tessera up
  tessera up --data /tmp/tessera --osd-size 8G --volume-size 20G
  # in another terminal:
  nbdinfo nbd://127.0.0.1:10809/vol1
  tessera cluster status";

#[derive(Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct UpCmd {
    /// Directory for the mon's store, the OSD device files and the log.
    #[arg(long, default_value = "./tessera-data")]
    pub data: PathBuf,
    /// Size of each OSD device file (written with zeros on first start, so it takes this
    /// much disk; each OSD holds a replica of everything).
    #[arg(long, default_value = "2G", value_parser = crate::size::parse_size)]
    pub osd_size: u64,
    /// Name of the volume created on first start.
    #[arg(long, default_value = "vol1")]
    pub volume: String,
    /// Size of that volume (thin: it uses space only where written).
    #[arg(long, default_value = "1G", value_parser = crate::size::parse_size)]
    pub volume_size: u64,
    /// Address of the mon's admin API (`tessera ... --mon` and `/metrics`).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub mon_listen: SocketAddr,
    /// First OSD data port; the three OSDs use this port and the next two.
    #[arg(long, default_value = "7501")]
    pub osd_port: u16,
    /// Address of the NBD server.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: SocketAddr,
    /// Placement groups of the default pool (on first start).
    #[arg(long, default_value = "32")]
    pub pg_count: u32,
    /// Status line interval; with a non-terminal stdout a line is printed each interval.
    #[arg(long, default_value = "1s", value_parser = crate::size::parse_duration)]
    pub status_every: Duration,
}

const OSDS: u16 = 3;
const POOL: &str = "default";

/// Opens `<data>/tessera.log` for the process's logs (created with the directory).
pub fn open_log(data: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(data).with_context(|| format!("creating the data directory {}", data.display()))?;
    let path = data.join("tessera.log");
    std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))
}

/// One OSD of this process: id, its stop function, and the task waiting for it to end.
type RunningOsd = (u32, Box<dyn Fn() + Send>, tokio::task::JoinHandle<Result<(), tessera_osd::OsdError>>);

struct Running {
    mon: tessera_mon::MonHandle,
    osds: Vec<RunningOsd>,
    nbd: NbdServer,
}

pub fn run(cmd: UpCmd) -> Result<()> {
    if cmd.osd_port > u16::MAX - OSDS {
        bail!("--osd-port {} leaves no room for {OSDS} ports", cmd.osd_port);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let started = Instant::now();
        let running = start(&cmd).await?;
        let api = format!("{}", running.mon.addr);
        banner(&cmd, &running, &api, started.elapsed());
        let mon = MonClient::new(std::slice::from_ref(&api), Duration::from_secs(5))?;
        // Registered once, before the loop, so a Ctrl-C during a status update is not lost.
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(cmd.status_every);
        let tty = std::io::stdout().is_terminal();
        let mut last = (Instant::now(), running.nbd.stats());
        let failed = loop {
            tokio::select! {
                _ = int.recv() => break None,
                _ = term.recv() => break None,
                _ = tick.tick() => {
                    if let Some((id, _, _)) = running.osds.iter().find(|(_, _, h)| h.is_finished()) {
                        break Some(format!("osd {id} stopped unexpectedly (see {})", cmd.data.join("tessera.log").display()));
                    }
                    let now = (Instant::now(), running.nbd.stats());
                    let line = status_line(&mon, &last, &now).await;
                    last = now;
                    if tty {
                        print!("\r\x1b[K{line}");
                    } else {
                        println!("{line}");
                    }
                    let _ = std::io::stdout().flush();
                }
            }
        };
        if tty {
            println!();
        }
        if let Some(why) = &failed {
            eprintln!("tessera up: {why}; stopping");
        }
        println!("stopping: NBD server (answering requests in flight), OSDs, mon ...");
        stop(running).await;
        println!("stopped. Data is kept in {}; run `tessera up --data {}` to bring it back.", cmd.data.display(), cmd.data.display());
        match failed {
            Some(why) => bail!(why),
            None => Ok(()),
        }
    })
}

async fn start(cmd: &UpCmd) -> Result<Running> {
    std::fs::create_dir_all(&cmd.data).with_context(|| format!("creating {}", cmd.data.display()))?;
    let store_path = cmd.data.join("mon.redb");
    let store = EmbeddedStore::open(&store_path)
        .await
        .with_context(|| format!("opening {} (is another `tessera up` using this directory?)", store_path.display()))?;
    let mon = tessera_mon::start(Arc::new(store), MonConfig::new(cmd.mon_listen))
        .await
        .with_context(|| format!("starting the mon on {} (is the port free? see --mon-listen)", cmd.mon_listen))?;
    let api = format!("{}", mon.addr);
    let mut osds = Vec::new();
    for i in 0..OSDS {
        let listen: SocketAddr = SocketAddr::new(cmd.mon_listen.ip(), cmd.osd_port + i);
        let data = cmd.data.join(format!("osd{i}.dev"));
        let cfg = OsdConfig {
            mon: vec![api.clone()],
            data: data.clone(),
            size: cmd.osd_size,
            listen,
            advertise: None,
            // One failure-domain host per OSD, so 3 replicas can be placed on one machine.
            host: format!("up-{i}"),
            heartbeat: Duration::from_secs(1),
            fault_control: None,
            lease_reads: true,
        };
        let osd = tessera_osd::start(cfg)
            .await
            .with_context(|| format!("starting OSD {i} on {} (port {listen}; see --osd-port)", data.display()))?;
        let stopper: Box<dyn Fn() + Send> = Box::new(osd.stopper());
        let id = osd.id;
        osds.push((id, stopper, tokio::spawn(osd.wait())));
    }
    let client = MonClient::new(std::slice::from_ref(&api), Duration::from_secs(10))?;
    if !client.pools().await?.iter().any(|p| p.name == POOL) {
        let req = CreatePool { name: POOL.into(), replicas: 3, pg_count: cmd.pg_count, failure_domain: DomainLevel::Host };
        client.create_pool(&req).await.context("creating the default pool")?;
    }
    match client.volume(&cmd.volume).await {
        Ok(_) => {}
        Err(e) if e.status() == Some(404) => {
            let req = CreateVolume {
                name: cmd.volume.clone(),
                pool: POOL.into(),
                size: cmd.volume_size,
                object_size: tessera_mon::validate::DEFAULT_OBJECT_SIZE,
            };
            client.create_volume(&req).await.with_context(|| format!("creating volume {}", cmd.volume))?;
        }
        Err(e) => return Err(e).context("looking up the volume"),
    }
    let cfg = ServerConfig { default_export: Some(cmd.volume.clone()), ..ServerConfig::default() };
    let nbd = crate::nbd_cmd::start(&api, cmd.nbd_listen, cfg).await.context("starting the NBD server (see --nbd-listen)")?;
    Ok(Running { mon, osds, nbd })
}

async fn stop(r: Running) {
    if tokio::time::timeout(Duration::from_secs(35), r.nbd.shutdown()).await.is_err() {
        eprintln!("NBD requests still in flight after 35 s; stopping anyway");
    }
    for (_, stop, _) in &r.osds {
        stop();
    }
    for (id, _, h) in r.osds {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("osd {id}: {e}"),
            Err(e) => eprintln!("osd {id}: {e}"),
        }
    }
    r.mon.shutdown().await;
}

fn banner(cmd: &UpCmd, r: &Running, api: &str, took: Duration) {
    let nbd = r.nbd.addr;
    let uri = format!("nbd://{nbd}/{}", cmd.volume);
    let ids: Vec<String> = r.osds.iter().map(|(id, _, _)| id.to_string()).collect();
    println!("tessera is up ({:.1} s), data in {}:", took.as_secs_f64(), cmd.data.display());
    println!("  mon     http://{api}   (admin API, /metrics; log: {})", cmd.data.join("tessera.log").display());
    println!("  osds    {} on ports {}-{}, {} each", ids.join(", "), cmd.osd_port, cmd.osd_port + OSDS - 1, human(cmd.osd_size));
    println!("  pool    {POOL}: 3 replicas; a write is acknowledged once fsynced on 2 of 3 OSDs");
    println!("  volume  {} ({}), exported as {uri}", cmd.volume, human(cmd.volume_size));
    println!();
    println!("Try it (from another terminal):");
    println!("  nbdinfo {uri}");
    println!("  qemu-img convert -n -f raw -O raw disk.img {uri}      # copy an image in");
    println!("  nbdcopy {uri} copy.raw                                # and back out");
    println!("  fio --name=t --ioengine=nbd --uri={uri} --rw=randwrite --bs=4k --iodepth=32 --size=256M --runtime=20 --time_based");
    println!("  tessera cluster status --mon {api}");
    println!("  tessera volume create vol2 --size 10G --mon {api}      # then nbd://{nbd}/vol2");
    println!();
    println!("Ctrl-C stops everything cleanly.");
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn rate(n: u64, secs: f64) -> String {
    let r = n as f64 / secs.max(1e-3);
    if r >= 10_000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

async fn status_line(mon: &MonClient, last: &(Instant, StatsSnapshot), now: &(Instant, StatsSnapshot)) -> String {
    let secs = now.0.duration_since(last.0).as_secs_f64();
    let (a, b) = (&last.1, &now.1);
    let io = format!(
        "nbd {} conn | {} r/s {} w/s | in {}/s out {}/s",
        b.connections_open,
        rate(b.reads - a.reads, secs),
        rate(b.writes + b.zeroes - a.writes - a.zeroes, secs),
        human(((b.write_bytes - a.write_bytes) as f64 / secs.max(1e-3)) as u64),
        human(((b.read_bytes - a.read_bytes) as f64 / secs.max(1e-3)) as u64),
    );
    let cluster = match mon.status().await {
        Ok(s) => {
            let pgs = match &s.pgs_by_state {
                Some(states) if !states.is_empty() => states.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", "),
                _ => format!("{} (no reports yet)", s.pgs_total),
            };
            format!("osds {}/{} up | pgs {pgs}", s.osds_up, s.osds_total)
        }
        Err(e) => format!("mon: {e}"),
    };
    let t = chrono_free_clock();
    format!("[{t}] {cluster} | {io}")
}

/// `HH:MM:SS` (UTC) without a date library.
fn chrono_free_clock() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}
