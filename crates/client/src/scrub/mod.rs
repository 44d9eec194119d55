//! Scrub: compare the replicas of PGs.
//!
//! For one PG, every replica the map lists is asked for a digest of its copy
//! ([`tessera_wire::OpCode::Digest`]: per object version its length and an XXH64 of its
//! content, read with checksum verification, all from one point-in-time image taken with
//! the replica's applied index). Replicas are comparable only at a *quiescent point*: the
//! same applied index on every replica (then they must hold identical state, since replicated
//! state is a function of the applied log). Writes in flight move the indexes, so the
//! digests are fetched again, up to [`ScrubOptions::attempts`] times
//! [`ScrubOptions::interval`] apart, until they agree; if they never do, the PG is `busy`.
//!
//! Verdicts ([`Verdict`]): `clean`; `mismatch` (same index, different content: the versions
//! and the OSDs outside the majority); `corrupt` (a replica found blocks failing their
//! checksums: it marks itself damaged and repairs itself from a healthy replica, see the
//! OSD's `repair.rs`; this wins over everything else, whenever it is seen); `busy`;
//! `unreachable`.

mod verdict;

pub use tessera_wire::WirePg;
pub use verdict::{corruption, judge, Corruption, Difference, Holding, ReplicaDigest, Verdict, VersionKey};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_wire::{DigestPage, OpCode, Request, Status};

use crate::client::Client;

/// How hard a scrub tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Digest rounds per PG before it is reported `busy` (default 30).
    pub attempts: u32,
    /// Pause between rounds (default 200 ms: 30 rounds span about 6 s).
    pub interval: Duration,
    /// Connecting to a replica (default 2 s).
    pub connect_timeout: Duration,
    /// One digest page (a replica reads up to 128 MiB for one; default 120 s).
    pub page_timeout: Duration,
    /// PGs scrubbed at once by [`scrub_pgs`] (default 4).
    pub parallel: usize,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            attempts: 30,
            interval: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            page_timeout: Duration::from_secs(120),
            parallel: 4,
        }
    }
}

/// The scrub of one PG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgScrub {
    pub pg: WirePg,
    /// The replicas the map listed (the ones compared).
    pub replicas: Vec<u32>,
    pub verdict: Verdict,
    /// Digest rounds it took.
    pub attempts: u32,
}

/// Why one replica gave no digest.
#[derive(Debug)]
enum Failed {
    /// It answered, but cannot give one now (repairing, installing, not the PG's replica
    /// yet, its image expired).
    Busy(String),
    Unreachable(String),
}

/// Consecutive rounds a replica may be unreachable before the PG is reported so.
const UNREACHABLE_ROUNDS: u32 = 3;

/// All pages of `osd`'s digest of `pg`.
async fn fetch(client: &Client, osd: u32, pg: WirePg, opts: &ScrubOptions) -> Result<ReplicaDigest, Failed> {
    let inner = &client.inner;
    let mut out = ReplicaDigest::default();
    let mut pin = 0;
    let mut next = (0, 0, 0);
    loop {
        let map = inner.map.current();
        let addr = map.osd(osd).map(|o| o.addr.clone()).ok_or_else(|| Failed::Unreachable(format!("not in map epoch {}", map.epoch)))?;
        let conn = tokio::time::timeout(opts.connect_timeout, inner.conns.get(osd, &addr))
            .await
            .map_err(|_| Failed::Unreachable(format!("no connection to {addr} within {:?}", opts.connect_timeout)))?
            .map_err(Failed::Unreachable)?;
        let req = Request {
            op: OpCode::Digest,
            pg,
            epoch: map.epoch,
            volume: next.0,
            object: next.1,
            snap: next.2,
            offset: 0,
            len: 0,
            client: client.id(),
            seq: 0,
            floor: 0,
            snapc: pin,
        };
        let (resp, data) = tokio::time::timeout(opts.page_timeout, conn.call(Bytes::copy_from_slice(&req.encode()), Bytes::new()))
            .await
            .map_err(|_| Failed::Unreachable(format!("no digest within {:?}", opts.page_timeout)))?
            .map_err(Failed::Unreachable)?;
        if resp.status != Status::Ok {
            return Err(Failed::Busy(format!("{:?}: {}", resp.status, resp.message)));
        }
        let page = DigestPage::decode(&data).map_err(|e| Failed::Busy(format!("undecodable digest: {e}")))?;
        if pin != 0 && (page.pin != pin || page.applied != out.applied) {
            return Err(Failed::Busy("digest pages of different images".into()));
        }
        (pin, out.applied) = (page.pin, page.applied);
        out.damaged |= page.damaged;
        out.entries.extend(page.entries);
        match page.next {
            Some(n) => next = n,
            None => return Ok(out),
        }
    }
}

/// Scrubs PG `index` of pool `pool`: see the module docs.
pub async fn scrub_pg(client: &Client, pool: u32, index: u32, opts: &ScrubOptions) -> PgScrub {
    let pg = WirePg { pool, index };
    let mut found: BTreeSet<Corruption> = BTreeSet::new();
    let mut unreachable_rounds: BTreeMap<u32, u32> = BTreeMap::new();
    let mut replicas = Vec::new();
    let mut why_busy = String::from("no attempt made");
    let done = |replicas: Vec<u32>, verdict, attempts| PgScrub { pg, replicas, verdict, attempts };
    for attempt in 1..=opts.attempts.max(1) {
        let started = Instant::now();
        let map = client.map();
        replicas = map.pg_table(pool).and_then(|t| t.pgs.get(index as usize)).map(|e| e.osds().to_vec()).unwrap_or_default();
        if replicas.is_empty() {
            return done(replicas, Verdict::Busy { why: format!("pg {pool}.{index} has no replicas in map epoch {}", map.epoch) }, attempt);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for osd in replicas.clone() {
            let (client, opts) = (client.clone(), opts.clone());
            tasks.spawn(async move { (osd, fetch(&client, osd, pg, &opts).await) });
        }
        let mut digests = Vec::new();
        let mut busy = Vec::new();
        let mut unreachable = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((osd, Ok(d))) => {
                    unreachable_rounds.remove(&osd);
                    digests.push((osd, d));
                }
                Ok((osd, Err(Failed::Busy(why)))) => {
                    unreachable_rounds.remove(&osd);
                    busy.push(format!("osd {osd}: {why}"));
                }
                Ok((osd, Err(Failed::Unreachable(why)))) => {
                    *unreachable_rounds.entry(osd).or_default() += 1;
                    unreachable.push((osd, why));
                }
                Err(e) => busy.push(format!("digest task failed: {e}")),
            }
        }
        digests.sort_by_key(|(osd, _)| *osd);
        found.extend(corruption(&digests));
        if !found.is_empty() {
            return done(replicas, Verdict::Corrupt { found: found.into_iter().collect() }, attempt);
        }
        if digests.len() == replicas.len() {
            if let Some(v) = judge(&digests) {
                return done(replicas, v, attempt);
            }
            let indexes: Vec<String> = digests.iter().map(|(o, d)| format!("osd {o}: {}", d.applied)).collect();
            why_busy = format!("replicas kept moving (applied indexes {})", indexes.join(", "));
        } else if !busy.is_empty() {
            why_busy = busy.join("; ");
        }
        if unreachable_rounds.values().any(|n| *n >= UNREACHABLE_ROUNDS) || (attempt == opts.attempts && !unreachable.is_empty()) {
            unreachable.sort();
            return done(replicas, Verdict::Unreachable { osds: unreachable }, attempt);
        }
        if attempt < opts.attempts {
            tokio::time::sleep(opts.interval.saturating_sub(started.elapsed())).await;
        }
    }
    done(replicas, Verdict::Busy { why: why_busy }, opts.attempts)
}

/// Scrubs `pgs`, [`ScrubOptions::parallel`] at a time; `progress(result, done, total)` is
/// called as each finishes. Results come back in `pgs` order.
pub async fn scrub_pgs(
    client: &Client,
    pgs: Vec<WirePg>,
    opts: &ScrubOptions,
    mut progress: impl FnMut(&PgScrub, usize, usize),
) -> Vec<PgScrub> {
    let total = pgs.len();
    let mut results: Vec<Option<PgScrub>> = vec![None; total];
    let mut todo = pgs.into_iter().enumerate();
    let mut tasks = tokio::task::JoinSet::new();
    let mut finished = 0;
    loop {
        while tasks.len() < opts.parallel.max(1) {
            let Some((i, pg)) = todo.next() else { break };
            let (client, opts) = (client.clone(), opts.clone());
            tasks.spawn(async move { (i, scrub_pg(&client, pg.pool, pg.index, &opts).await) });
        }
        let Some(joined) = tasks.join_next().await else { break };
        let (i, r) = match joined {
            Ok(x) => x,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a scrub task was cancelled (runtime shutting down?): {e}"),
        };
        finished += 1;
        progress(&r, finished, total);
        results[i] = Some(r);
    }
    results.into_iter().flatten().collect()
}

/// The PGs of `pool` in the current map (empty if the pool is not in it).
pub fn pool_pgs(client: &Client, pool: u32) -> Vec<WirePg> {
    let n = client.map().pool(pool).map_or(0, |p| p.pg_count);
    (0..n).map(|index| WirePg { pool, index }).collect()
}

/// Scrubs every PG of `pool`.
pub async fn scrub_pool(client: &Client, pool: u32, opts: &ScrubOptions, progress: impl FnMut(&PgScrub, usize, usize)) -> Vec<PgScrub> {
    scrub_pgs(client, pool_pgs(client, pool), opts, progress).await
}

/// Scrubs every PG of every pool.
pub async fn scrub_all(client: &Client, opts: &ScrubOptions, progress: impl FnMut(&PgScrub, usize, usize)) -> Vec<PgScrub> {
    let pgs = client.map().pools.iter().flat_map(|p| pool_pgs(client, p.id)).collect();
    scrub_pgs(client, pgs, opts, progress).await
}
