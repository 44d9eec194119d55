//! Volume lifecycle commands that need the data path as well as the mon:
//! `tessera snapshot create|list|delete|rollback`, `tessera volume clone|flatten`, and the
//! data side of `volume delete` (drop every object), `volume resize` (discard a shrunk
//! tail) and `volume info` (space used).
//!
//! Each command first records the change on the mon, then runs one replicated op per PG.
//! Every step is idempotent: an interrupted command is finished by running it again.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tessera_client::{admin, Client, ClientOptions};
use tessera_mon::api::VolumeView;
use tessera_mon::model::SnapshotRecord;

use super::{block_on, print_json, table, Connect};
use crate::size::human;

#[derive(Args, Debug)]
#[command(after_long_help = SNAPSHOT_HELP)]
pub struct SnapshotCmd {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub cmd: SnapshotSub,
}

const SNAPSHOT_HELP: &str = "\
How snapshots work:
  A snapshot copies nothing: the first write to each object after it keeps the old version
  (copy-on-write per object, blocks shared). It is crash-consistent across the whole volume:
  `snapshot create` returns only once every PG of the volume's pool knows the new snapshot
  context: a write acknowledged before the command started is in the snapshot, and from the
  moment it returns the snapshot never changes (a write still built with the old context,
  however late it arrives, is refused by its PG and re-issued with the new one).

Examples:
  tessera snapshot create vol1@before-upgrade
  tessera snapshot list vol1
  nbdinfo nbd://127.0.0.1:10809/vol1@before-upgrade     # read-only export of the snapshot
  tessera snapshot rollback vol1@before-upgrade         # disconnect NBD clients first
  tessera volume clone vol1@before-upgrade vol1-test    # instant writable copy
  tessera snapshot delete vol1@before-upgrade           # frees the space only it holds";

#[derive(Subcommand, Debug)]
pub enum SnapshotSub {
    /// Take a snapshot: `VOLUME@NAME`. Instant, whatever the volume's size.
    Create { spec: String },
    /// A volume's snapshots, oldest first.
    List { volume: String },
    /// Delete a snapshot and free the space only it holds (refused while clones use it).
    Delete { spec: String },
    /// Make the volume read as the snapshot again (refused while the volume is open).
    /// Newer snapshots are kept.
    Rollback { spec: String },
}

fn split_spec(spec: &str) -> Result<(&str, &str)> {
    match spec.split_once('@') {
        Some((v, s)) if !v.is_empty() && !s.is_empty() => Ok((v, s)),
        _ => bail!("expected VOLUME@SNAPSHOT, got {spec:?}"),
    }
}

/// A data-path client for one command.
async fn data_client(c: &Connect) -> Result<Client> {
    let opts = ClientOptions { op_timeout: Duration::from_secs(60), ..Default::default() };
    Client::connect(std::slice::from_ref(&c.mon), opts).await.context("connecting to the cluster")
}

fn snapshot_rows(snaps: &[SnapshotRecord]) -> Vec<Vec<String>> {
    snaps.iter().map(|s| vec![s.id.to_string(), s.name.clone(), human(s.size), created(s.created_ms)]).collect()
}

fn created(ms: u64) -> String {
    let age = tessera_mon::model::now_ms().saturating_sub(ms) / 1000;
    match age {
        0..60 => format!("{age}s ago"),
        60..3600 => format!("{}m ago", age / 60),
        3600..86400 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86400),
    }
}

pub fn run_snapshot(c: SnapshotCmd) -> Result<()> {
    block_on(async move {
        let mon = c.connect.client()?;
        match c.cmd {
            SnapshotSub::Create { spec } => {
                let (vol, name) = split_spec(&spec)?;
                let t = Instant::now();
                let data = data_client(&c.connect).await?;
                let (s, late) =
                    admin::create_snapshot(&data, vol, name).await.context("snapshot create (if interrupted, run it again to finish)")?;
                if c.connect.json {
                    return print_json(&s);
                }
                println!("snapshot {vol}@{} created (id {}, {}) in {} ms", s.name, s.id, human(s.size), t.elapsed().as_millis());
                if late {
                    println!("note: some clients did not confirm the new snapshot context in time; their PGs refuse their older writes, which they re-issue");
                }
            }
            SnapshotSub::List { volume } => {
                let snaps = mon.snapshots(&volume).await?;
                if c.connect.json {
                    return print_json(&snaps);
                }
                print!("{}", table::render(&["ID", "NAME", "SIZE", "CREATED"], &snapshot_rows(&snaps)));
            }
            SnapshotSub::Delete { spec } => {
                let (vol, name) = split_spec(&spec)?;
                let data = data_client(&c.connect).await?;
                let s = admin::delete_snapshot(&data, vol, name).await?;
                if c.connect.json {
                    return print_json(&s);
                }
                match s {
                    Some(s) => println!("snapshot {vol}@{} deleted; its space is freed", s.name),
                    None => println!("snapshot {vol}@{name} was already deleted; its space is freed"),
                }
            }
            SnapshotSub::Rollback { spec } => {
                let (vol, name) = split_spec(&spec)?;
                let data = data_client(&c.connect).await?;
                let r = admin::rollback_volume(&data, vol, name).await.context("rollback (if interrupted, run it again to finish)")?;
                let v = mon.volume(vol).await?;
                if c.connect.json {
                    return print_json(&v);
                }
                println!("volume {vol} rolled back to snapshot {} ({})", r.snapshot.name, human(v.volume.size));
            }
        }
        Ok(())
    })
}

/// `tessera volume clone VOL@SNAP NEW`.
pub async fn clone(c: &Connect, spec: &str, new_name: &str) -> Result<VolumeView> {
    let (vol, snap) = split_spec(spec)?;
    Ok(c.client()?.clone_snapshot(vol, snap, new_name).await?)
}

/// `tessera volume flatten NAME`, with progress.
pub async fn flatten(c: &Connect, name: &str) -> Result<VolumeView> {
    let data = data_client(c).await?;
    let t = Instant::now();
    let mut last = Instant::now();
    admin::flatten_volume(&data, name, |done, total| {
        if last.elapsed() > Duration::from_secs(1) || done == total {
            eprintln!("flatten {name}: {done}/{total} objects ({:.0}%)", done as f64 * 100.0 / total.max(1) as f64);
            last = Instant::now();
        }
    })
    .await
    .context("flatten (if interrupted, run it again to resume)")?;
    data.close_session().await;
    eprintln!("flatten {name}: done in {:.1}s", t.elapsed().as_secs_f64());
    Ok(c.client()?.volume(name).await?)
}

/// `tessera volume delete NAME`.
pub async fn delete(c: &Connect, name: &str) -> Result<VolumeView> {
    let mon = c.client()?;
    let before = mon.volume(name).await?;
    let data = data_client(c).await?;
    admin::delete_volume(&data, name).await.context("delete (if interrupted, run it again to finish)")?;
    Ok(before)
}

/// `tessera volume resize`.
pub async fn resize(c: &Connect, name: &str, size: u64, allow_shrink: bool) -> Result<VolumeView> {
    let data = data_client(c).await?;
    admin::resize_volume(&data, name, size, allow_shrink).await.context(
        "resize (a shrink interrupted after the new size was recorded leaves the cut tail's data on the OSDs until the volume is deleted)",
    )?;
    Ok(c.client()?.volume(name).await?)
}

/// How long `volume list/info` and `cluster status` wait for the OSDs' space figures.
const USAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Space used per volume id (one replica's worth), over every pool of `vols`; `None` (with
/// a warning on stderr) when the OSDs cannot tell within [`USAGE_TIMEOUT`]: the listing
/// itself must work while the data path does not.
pub async fn usage(c: &Connect, vols: &[VolumeView]) -> Option<std::collections::BTreeMap<u64, admin::Usage>> {
    let get = async {
        if vols.is_empty() {
            return Ok(Default::default());
        }
        let opts = ClientOptions { op_timeout: USAGE_TIMEOUT, ..Default::default() };
        let data = Client::connect(std::slice::from_ref(&c.mon), opts).await.context("connecting to the cluster")?;
        let mut pools: Vec<u32> = vols.iter().map(|v| v.volume.pool_id).collect();
        pools.sort_unstable();
        pools.dedup();
        let mut out = std::collections::BTreeMap::new();
        for p in pools {
            out.extend(admin::pool_usage(&data, p).await?);
        }
        anyhow::Ok(out)
    };
    match tokio::time::timeout(USAGE_TIMEOUT * 2, get).await {
        Ok(Ok(u)) => Some(u),
        Ok(Err(e)) => {
            eprintln!("warning: space used is unknown (the OSDs did not answer: {e:#})");
            None
        }
        Err(_) => {
            eprintln!("warning: space used is unknown (the OSDs did not answer within {:?})", USAGE_TIMEOUT * 2);
            None
        }
    }
}
