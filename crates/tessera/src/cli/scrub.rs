//! `tessera scrub`: compare the replicas of PGs (see `tessera_client::scrub`) and report
//! every PG that is not clean.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tessera_client::scrub::{self, Corruption, PgScrub, ScrubOptions, Verdict, WirePg};
use tessera_client::{Client, ClientOptions};
use tessera_mon::model::ClusterMap;

use super::{block_on, print_json, Connect};

#[derive(Args, Debug)]
#[command(after_long_help = SCRUB_HELP)]
pub struct ScrubCmd {
    #[command(flatten)]
    pub connect: Connect,
    /// Only this pool (name or id).
    #[arg(long, conflicts_with = "pg")]
    pub pool: Option<String>,
    /// Only this PG: POOL.INDEX (pool name or id), e.g. `rbd.7` or `1.7`.
    #[arg(long)]
    pub pg: Option<String>,
}

const SCRUB_HELP: &str = "\
What is compared:
  Every replica the map lists for a PG digests its copy: for each object version (heads,
  snapshot versions, absent-at-snapshot markers, clone staging copies) its length and an
  XXH64 of its content, read with every 4 KiB block's CRC32C verified.

When:
  At a quiescent point: replicas are compared only when all of them report the same applied
  Raft index, each from one point-in-time image of the PG. While writes move the indexes
  the digests are fetched again (30 rounds over about 6 s); a PG that never settles is
  reported `busy` (scrub it again when it is quieter).

Results per PG:
  clean        identical replicas
  mismatch     same index, different content: the versions and the OSDs outside the majority
  corrupt      a replica found blocks failing their checksums. That replica marks the PG
               damaged and repairs itself automatically: it hands over leadership if it leads,
               then reinstalls the PG from a healthy replica's image. Nothing to do; scrub
               again to confirm. (If every replica of a block is corrupt nothing can repair it
               and reads of that block fail with an I/O error.)
  busy         no quiescent point found, or a replica is repairing / receiving a copy
  unreachable  a replica did not answer

Exit status: 0 only if every scrubbed PG is clean; 1 if any is not (mismatch, corrupt,
busy or unreachable), after one line per problem and the totals.

Examples:
  tessera scrub                      # every pool
  tessera scrub --pool rbd
  tessera scrub --pg rbd.7 --json";

/// The PGs the command covers.
fn selected(map: &ClusterMap, cmd: &ScrubCmd) -> Result<Vec<WirePg>> {
    let pool_id = |s: &str| -> Result<u32> {
        map.pools
            .iter()
            .find(|p| p.name == s || s.parse::<u32>().ok() == Some(p.id))
            .map(|p| p.id)
            .with_context(|| format!("no pool {s:?} in map epoch {}", map.epoch))
    };
    if let Some(spec) = &cmd.pg {
        let Some((pool, index)) = spec.rsplit_once('.') else { bail!("expected --pg POOL.INDEX, got {spec:?}") };
        let pool = pool_id(pool)?;
        let index: u32 = index.parse().with_context(|| format!("PG index in {spec:?}"))?;
        let count = map.pool(pool).map_or(0, |p| p.pg_count);
        if index >= count {
            bail!("pool {pool} has {count} PGs, no PG {index}");
        }
        return Ok(vec![WirePg { pool, index }]);
    }
    let pools: Vec<u32> = match &cmd.pool {
        Some(p) => vec![pool_id(p)?],
        None => map.pools.iter().map(|p| p.id).collect(),
    };
    Ok(pools.into_iter().flat_map(|p| (0..map.pool(p).map_or(0, |r| r.pg_count)).map(move |index| WirePg { pool: p, index })).collect())
}

fn corruption_text(c: &Corruption) -> String {
    match (&c.key, c.offset) {
        (Some(k), Some(off)) => format!("osd {}: {k}, block at offset {off} fails its checksum", c.osd),
        (Some(k), None) => format!("osd {}: {k}", c.osd),
        _ => format!("osd {}: marked damaged earlier", c.osd),
    }
}

fn list(osds: &[u32]) -> String {
    osds.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// One line per problem of a PG (nothing for a clean one).
fn problem_lines(r: &PgScrub) -> Vec<String> {
    let pg = format!("pg {}.{}", r.pg.pool, r.pg.index);
    match &r.verdict {
        Verdict::Clean { .. } => Vec::new(),
        Verdict::Mismatch { applied, differences } => differences
            .iter()
            .map(|d| {
                let views: Vec<String> = d.views.iter().map(|(h, o)| format!("osd {}: {h}", list(o))).collect();
                format!("{pg}: MISMATCH at index {applied}: {} differs on osd {} ({})", d.key, list(&d.suspects), views.join("; "))
            })
            .collect(),
        Verdict::Corrupt { found } => {
            found.iter().map(|c| format!("{pg}: CORRUPT {} (repairing itself from a healthy replica)", corruption_text(c))).collect()
        }
        Verdict::Busy { why } => vec![format!("{pg}: BUSY {why}")],
        Verdict::Unreachable { osds } => osds.iter().map(|(o, why)| format!("{pg}: UNREACHABLE osd {o}: {why}")).collect(),
    }
}

fn to_json(r: &PgScrub) -> Value {
    let detail = match &r.verdict {
        Verdict::Clean { applied, versions } => json!({ "applied": applied, "versions": versions }),
        Verdict::Mismatch { applied, differences } => json!({
            "applied": applied,
            "differences": differences.iter().map(|d| json!({
                "volume": d.key.volume, "object": d.key.object, "snap": d.key.snap,
                "osds": d.suspects,
                "views": d.views.iter().map(|(h, o)| json!({ "holding": h.to_string(), "osds": o })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Verdict::Corrupt { found } => json!({
            "found": found.iter().map(|c| json!({
                "osd": c.osd,
                "volume": c.key.map(|k| k.volume), "object": c.key.map(|k| k.object), "snap": c.key.map(|k| k.snap),
                "offset": c.offset,
            })).collect::<Vec<_>>(),
        }),
        Verdict::Busy { why } => json!({ "why": why }),
        Verdict::Unreachable { osds } => json!({ "osds": osds.iter().map(|(o, why)| json!({ "osd": o, "why": why })).collect::<Vec<_>>() }),
    };
    json!({
        "pg": format!("{}.{}", r.pg.pool, r.pg.index),
        "replicas": r.replicas,
        "result": r.verdict.name(),
        "attempts": r.attempts,
        "detail": detail,
    })
}

pub fn run_scrub(cmd: ScrubCmd) -> Result<()> {
    block_on(async move {
        let opts = ClientOptions { op_timeout: Duration::from_secs(60), ..Default::default() };
        let client = Client::connect(std::slice::from_ref(&cmd.connect.mon), opts).await.context("connecting to the cluster")?;
        let pgs = selected(&client.map(), &cmd)?;
        let show_progress = !cmd.connect.json && std::io::stderr().is_terminal();
        let results = scrub::scrub_pgs(&client, pgs, &ScrubOptions::default(), |r, done, total| {
            if !cmd.connect.json {
                for line in problem_lines(r) {
                    if show_progress {
                        eprint!("\r\x1b[K");
                    }
                    println!("{line}");
                }
            }
            if show_progress {
                eprint!("\r\x1b[Kscrubbed {done}/{total} PGs");
            }
        })
        .await;
        if show_progress {
            eprint!("\r\x1b[K");
        }
        let count = |name: &str| results.iter().filter(|r| r.verdict.name() == name).count();
        let names = ["clean", "mismatch", "corrupt", "busy", "unreachable"];
        if cmd.connect.json {
            let totals: serde_json::Map<String, Value> = names.iter().map(|n| (n.to_string(), json!(count(n)))).collect();
            print_json(&json!({ "pgs": results.iter().map(to_json).collect::<Vec<_>>(), "totals": totals }))?;
        } else {
            let parts: Vec<String> = names.iter().map(|n| format!("{} {n}", count(n))).collect();
            println!("scrubbed {} PGs: {}", results.len(), parts.join(", "));
        }
        let bad = results.len() - count("clean");
        if bad > 0 {
            bail!("{bad} of {} PGs are not clean", results.len());
        }
        Ok(())
    })
}
