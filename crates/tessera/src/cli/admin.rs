//! `tessera cluster status`, `tessera osd list/out/in/rm`, `tessera pool create/list/delete`,
//! `tessera volume create/list/info/resize/delete/clone/flatten` (the data-path halves are
//! in `lifecycle.rs`).

use anyhow::Result;
use clap::{Args, Subcommand};
use tessera_mon::api::OsdView;
use tessera_mon::model::{DomainLevel, PoolRecord};
use tessera_mon::service::{CreatePool, CreateVolume};

use super::{block_on, print_json, table, Connect};
use crate::size::{human, parse_size};

#[derive(Args, Debug)]
pub struct ClusterCmd {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub cmd: ClusterSub,
}

#[derive(Subcommand, Debug)]
pub enum ClusterSub {
    /// Map epoch, OSDs up/in, PG health and states, volumes and capacity, the active mon.
    Status,
    /// Every PG's state (active+clean, degraded, recovering with progress, remapped,
    /// backfill_toofull, damaged), its Raft leader and members, as reported by the PG
    /// leaders, and the OSDs holding a damaged replica (being rebuilt from a healthy one).
    Pgs,
    /// Show the cluster-wide settings, or change them with the flags. The space ratios are
    /// fractions of each OSD's capacity held by live data: at `nearfull` it is flagged, at
    /// `backfillfull` no PG is copied onto it that would take it further, at `full` it takes
    /// no new data (writes get "no space"; trims and deletes still work and free space).
    #[command(after_help = "Example: tessera cluster config --nearfull-ratio 0.75 --full-ratio 0.9")]
    Config {
        #[arg(long)]
        nearfull_ratio: Option<f64>,
        #[arg(long)]
        backfillfull_ratio: Option<f64>,
        #[arg(long)]
        full_ratio: Option<f64>,
    },
}

#[derive(Args, Debug)]
pub struct OsdCmd {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub cmd: OsdSub,
}

#[derive(Subcommand, Debug)]
pub enum OsdSub {
    /// Every OSD with its address, host, capacity, weight, up/down and in/out.
    List,
    /// Take an OSD out of the data distribution: its PGs move to other OSDs. It stays out
    /// (even when up) until `tessera osd in`.
    Out { id: u32 },
    /// Put an OSD back into the data distribution.
    In { id: u32 },
    /// Remove an OSD for good. Refused unless it is out, its daemon is stopped (down), and
    /// no PG counts it as a member any more (so it cannot hold the only copy of anything):
    /// `tessera osd out ID`, wait until `tessera cluster pgs` shows every PG active+clean
    /// without it, stop the daemon, then `tessera osd rm ID`. The device is refused if it
    /// registers again; wipe it to reuse it as a new OSD.
    Rm { id: u32 },
    /// Run an OSD daemon on a device (see `tessera osd run --help`).
    #[command(long_about = crate::osd_cmd::LONG_ABOUT, after_long_help = crate::osd_cmd::EXAMPLES)]
    Run(crate::osd_cmd::OsdRunArgs),
    /// List where a STOPPED OSD's object data blocks are on its device (offline; for
    /// corruption tests). `--json` for scripts.
    #[command(long_about = crate::osd_cmd::BLOCKS_ABOUT)]
    Blocks(crate::osd_cmd::OsdBlocksArgs),
}

#[derive(Args, Debug)]
pub struct PoolCmd {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub cmd: PoolSub,
}

#[derive(Subcommand, Debug)]
pub enum PoolSub {
    /// Create a pool: its PGs are placed on the OSDs that are in, replicas in distinct
    /// failure domains.
    Create {
        name: String,
        /// Replicas per PG (each PG is a Raft group of this many OSDs).
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Number of PGs (1..=16384); roughly 100 PG replicas per OSD is a good target.
        #[arg(long, default_value_t = 128)]
        pg_count: u32,
        /// No two replicas of a PG share one of these: osd, host or rack.
        #[arg(long, default_value = "host", value_parser = parse_domain)]
        failure_domain: DomainLevel,
    },
    /// Every pool.
    List,
    /// Delete a pool; refused while it holds volumes.
    Delete { name: String },
}

fn parse_domain(s: &str) -> Result<DomainLevel, String> {
    match s {
        "osd" => Ok(DomainLevel::Osd),
        "host" => Ok(DomainLevel::Host),
        "rack" => Ok(DomainLevel::Rack),
        _ => Err(format!("unknown failure domain `{s}`: use osd, host or rack")),
    }
}

#[derive(Args, Debug)]
pub struct VolumeCmd {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub cmd: VolumeSub,
}

#[derive(Subcommand, Debug)]
pub enum VolumeSub {
    /// Create a thin volume (no space is used until it is written).
    Create {
        name: String,
        /// Size, e.g. 10G or 512M (binary units; a multiple of 4 KiB).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = "default")]
        pool: String,
        /// Object size: a power of two from 64K to 64M.
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        object_size: u64,
    },
    /// Every volume.
    List,
    /// One volume's details.
    Info { name: String },
    /// Grow a volume online (NBD clients see the new size when they reconnect), or with
    /// --allow-shrink, shrink it: data past the new size is discarded on the OSDs.
    Resize {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Confirm that data past the new size is discarded.
        #[arg(long)]
        allow_shrink: bool,
    },
    /// Delete a volume and free all its objects on every replica (refused while it has
    /// snapshots or is open). An OSD that is down meanwhile drops them when it returns.
    Delete { name: String },
    /// Make a writable volume from a snapshot, instantly: `tessera volume clone VOL@SNAP NEW`.
    /// It reads through to the snapshot until it writes (copy-on-write per object).
    Clone {
        /// The parent snapshot, VOLUME@SNAPSHOT.
        snapshot: String,
        /// The new volume's name.
        name: String,
    },
    /// Copy into a clone the data it still reads from its parent snapshot, so that it no
    /// longer depends on it (then the parent snapshot can be deleted). Shows progress.
    Flatten { name: String },
}

fn yes_no(b: bool, yes: &str, no: &str) -> String {
    if b { yes } else { no }.to_string()
}

fn osd_rows(osds: &[OsdView]) -> Vec<Vec<String>> {
    osds.iter()
        .map(|v| {
            let o = &v.osd;
            let in_ = match (o.in_, o.out_reason) {
                (true, _) => "in".to_string(),
                (false, Some(r)) => format!("out ({})", if r == tessera_mon::model::OutReason::Admin { "admin" } else { "down" }),
                (false, None) => "out".to_string(),
            };
            vec![
                o.id.to_string(),
                o.host.clone(),
                o.addr.clone(),
                yes_no(o.up, "up", "down"),
                in_,
                format!("{:.4}", o.weight),
                human(o.capacity_bytes),
                v.used_bytes.map_or("-".into(), |u| format!("{} ({:.0}%)", human(u), 100.0 * u as f64 / o.capacity_bytes.max(1) as f64)),
                v.space.map_or("-".into(), |s| s.as_str().to_string()),
                o.device.clone(),
            ]
        })
        .collect()
}

fn pool_rows(pools: &[PoolRecord]) -> Vec<Vec<String>> {
    pools
        .iter()
        .map(|p| vec![p.id.to_string(), p.name.clone(), p.replicas.to_string(), p.pg_count.to_string(), p.failure_domain.to_string()])
        .collect()
}

pub fn run_cluster(c: ClusterCmd) -> Result<()> {
    block_on(async move {
        let client = c.connect.client()?;
        match c.cmd {
            ClusterSub::Status => {
                let s = client.status().await?;
                if c.connect.json {
                    return print_json(&s);
                }
                println!("map epoch:   {}", s.epoch);
                println!("active mon:  {}", s.active_mon.as_deref().unwrap_or("none (no mon is active; failure detection is paused)"));
                let space = match &s.osds_by_space {
                    Some(by) => {
                        let flagged: Vec<String> = by.iter().filter(|(k, _)| *k != "ok").map(|(k, v)| format!("{v} {k}")).collect();
                        if flagged.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", flagged.join(", "))
                        }
                    }
                    None => String::new(),
                };
                println!("osds:        {} total, {} up, {} in{space}", s.osds_total, s.osds_up, s.osds_in);
                let health: Vec<String> = s.pgs_by_health.iter().map(|(k, v)| format!("{v} {k}")).collect();
                println!("pools:       {}", s.pools);
                println!("pgs:         {} total: {}", s.pgs_total, health.join(", "));
                if let Some(states) = &s.pgs_by_state {
                    let states: Vec<String> = states.iter().map(|(k, v)| format!("{v} {k}")).collect();
                    println!("pg states:   {}", states.join(", "));
                }
                let vols = client.volumes().await?;
                let used = super::lifecycle::usage(&c.connect, &vols).await.map(|u| u.values().map(|u| u.used_bytes).sum::<u64>());
                let used = used.map_or("unknown".into(), human);
                println!("volumes:     {} ({} provisioned, {used} used per replica)", s.volumes, human(s.provisioned_bytes));
                println!("raw space:   {} on in OSDs", human(s.raw_capacity_bytes));
                Ok(())
            }
            ClusterSub::Pgs => {
                let pgs = client.pgs().await?;
                if c.connect.json {
                    return print_json(&pgs);
                }
                let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                let rows: Vec<Vec<String>> = pgs
                    .iter()
                    .map(|p| {
                        vec![
                            p.pg.clone(),
                            p.state.clone(),
                            p.leader.map_or("-".into(), |l| l.to_string()),
                            ids(&p.voters),
                            ids(&p.learners),
                            ids(&p.target),
                            format!("{:.0}%", p.progress * 100.0),
                            if p.damaged.is_empty() { "-".into() } else { ids(&p.damaged) },
                        ]
                    })
                    .collect();
                print!("{}", table::render(&["PG", "STATE", "LEADER", "VOTERS", "LEARNERS", "MAP", "PROGRESS", "DAMAGED ON"], &rows));
                Ok(())
            }
            ClusterSub::Config { nearfull_ratio, backfillfull_ratio, full_ratio } => {
                let mut cfg = client.config().await?;
                if nearfull_ratio.is_some() || backfillfull_ratio.is_some() || full_ratio.is_some() {
                    let sp = &mut cfg.space;
                    sp.nearfull = nearfull_ratio.unwrap_or(sp.nearfull);
                    sp.backfillfull = backfillfull_ratio.unwrap_or(sp.backfillfull);
                    sp.full = full_ratio.unwrap_or(sp.full);
                    cfg = client.set_config(&cfg).await?;
                }
                if c.connect.json {
                    return print_json(&cfg);
                }
                println!("nearfull ratio:      {}", cfg.space.nearfull);
                println!("backfillfull ratio:  {}", cfg.space.backfillfull);
                println!("full ratio:          {}", cfg.space.full);
                Ok(())
            }
        }
    })
}

pub fn run_osd(c: OsdCmd) -> Result<()> {
    let c = match c.cmd {
        OsdSub::Run(args) => return crate::osd_cmd::run(&c.connect.mon, args),
        OsdSub::Blocks(args) => return crate::osd_cmd::blocks(args, c.connect.json),
        cmd => OsdCmd { cmd, ..c },
    };
    block_on(async move {
        let client = c.connect.client()?;
        let header = ["ID", "HOST", "ADDR", "UP", "IN", "WEIGHT", "CAPACITY", "USED", "SPACE", "DEVICE"];
        let osd = match c.cmd {
            OsdSub::List => {
                let osds = client.osds().await?;
                if c.connect.json {
                    return print_json(&osds);
                }
                print!("{}", table::render(&header, &osd_rows(&osds)));
                return Ok(());
            }
            OsdSub::Out { id } => client.set_osd_in(id, false).await?,
            OsdSub::In { id } => client.set_osd_in(id, true).await?,
            OsdSub::Rm { id } => {
                let osd = client.remove_osd(id).await?;
                if c.connect.json {
                    return print_json(&osd);
                }
                println!("osd {id} removed (it was {} on host {}, device {})", osd.addr, osd.host, osd.device);
                return Ok(());
            }
            OsdSub::Run(_) | OsdSub::Blocks(_) => unreachable!("handled above"),
        };
        if c.connect.json {
            return print_json(&osd);
        }
        print!("{}", table::render(&header, &osd_rows(&[OsdView { osd, used_bytes: None, space: None }])));
        Ok(())
    })
}

pub fn run_pool(c: PoolCmd) -> Result<()> {
    block_on(async move {
        let client = c.connect.client()?;
        let header = ["ID", "NAME", "REPLICAS", "PGS", "FAILURE_DOMAIN"];
        let (pool, verb) = match c.cmd {
            PoolSub::List => {
                let pools = client.pools().await?;
                if c.connect.json {
                    return print_json(&pools);
                }
                print!("{}", table::render(&header, &pool_rows(&pools)));
                return Ok(());
            }
            PoolSub::Create { name, replicas, pg_count, failure_domain } => {
                (client.create_pool(&CreatePool { name, replicas, pg_count, failure_domain }).await?, "created")
            }
            PoolSub::Delete { name } => (client.delete_pool(&name).await?, "deleted"),
        };
        if c.connect.json {
            return print_json(&pool);
        }
        println!("pool {} {verb}", pool.name);
        print!("{}", table::render(&header, &pool_rows(std::slice::from_ref(&pool))));
        Ok(())
    })
}

pub fn run_volume(c: VolumeCmd) -> Result<()> {
    block_on(async move {
        let client = c.connect.client()?;
        let header = ["ID", "NAME", "POOL", "SIZE", "OBJECT_SIZE", "STATE", "PARENT"];
        let row = |v: &tessera_mon::api::VolumeView| {
            vec![
                v.volume.id.to_string(),
                v.volume.name.clone(),
                v.pool.clone(),
                human(v.volume.size),
                human(v.volume.object_size),
                format!("{:?}", v.volume.state).to_lowercase(),
                v.volume.parent.map_or("-".into(), |p| format!("{}@{}", p.volume_id, p.snapshot_id)),
            ]
        };
        let (vol, verb) = match c.cmd {
            VolumeSub::List => {
                let vols = client.volumes().await?;
                if c.connect.json {
                    return print_json(&vols);
                }
                let used = super::lifecycle::usage(&c.connect, &vols).await;
                let mut h = header.to_vec();
                h.push("USED");
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|v| {
                        let mut r = row(v);
                        r.push(used.as_ref().map_or("?".into(), |u| human(u.get(&v.volume.id).map_or(0, |u| u.used_bytes))));
                        r
                    })
                    .collect();
                print!("{}", table::render(&h, &rows));
                return Ok(());
            }
            VolumeSub::Info { name } => {
                let v = client.volume(&name).await?;
                let u = super::lifecycle::usage(&c.connect, std::slice::from_ref(&v))
                    .await
                    .map(|mut m| m.remove(&v.volume.id).unwrap_or_default());
                let snaps = client.snapshots(&name).await?;
                if c.connect.json {
                    let mut j = serde_json::to_value(&v)?;
                    if let Some(u) = u {
                        j["used_bytes"] = u.used_bytes.into();
                        j["head_bytes"] = u.head_bytes.into();
                        j["objects_written"] = u.objects.into();
                    }
                    j["snapshots"] = serde_json::to_value(&snaps)?;
                    return print_json(&j);
                }
                println!("name:         {}", v.volume.name);
                println!("id:           {}", v.volume.id);
                println!("pool:         {}", v.pool);
                println!("size:         {} ({} bytes)", human(v.volume.size), v.volume.size);
                println!("object size:  {}", human(v.volume.object_size));
                println!("objects:      {} (at most; thin)", v.volume.size.div_ceil(v.volume.object_size));
                println!("state:        {:?}", v.volume.state);
                println!("provisioned:  {}", human(v.volume.size));
                match u {
                    Some(u) => println!(
                        "used:         {} ({} in the current data, {} objects written; per replica)",
                        human(u.used_bytes),
                        human(u.head_bytes),
                        u.objects
                    ),
                    None => println!("used:         unknown (the OSDs did not answer)"),
                }
                println!("snapshots:    {}", snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "));
                if let Some(p) = v.volume.parent {
                    println!(
                        "parent:       volume {} snapshot {} (a clone; `tessera volume flatten` detaches it)",
                        p.volume_id, p.snapshot_id
                    );
                }
                return Ok(());
            }
            VolumeSub::Create { name, size, pool, object_size } => {
                (client.create_volume(&CreateVolume { name, pool, size, object_size }).await?, "created")
            }
            VolumeSub::Resize { name, size, allow_shrink } => {
                (super::lifecycle::resize(&c.connect, &name, size, allow_shrink).await?, "resized")
            }
            VolumeSub::Delete { name } => (super::lifecycle::delete(&c.connect, &name).await?, "deleted"),
            VolumeSub::Clone { snapshot, name } => (super::lifecycle::clone(&c.connect, &snapshot, &name).await?, "created"),
            VolumeSub::Flatten { name } => (super::lifecycle::flatten(&c.connect, &name).await?, "flattened"),
        };
        if c.connect.json {
            return print_json(&vol);
        }
        println!("volume {} {verb}", vol.volume.name);
        print!("{}", table::render(&header, &[row(&vol)]));
        Ok(())
    })
}
