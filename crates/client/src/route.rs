//! One object request: routed to its PG's leader and retried until it succeeds, fails for
//! good, or the call's deadline passes.
//!
//! # Routing
//! `pg = object_to_pg(volume, object, pool.pg_count)`; the replicas are the PG table entry of
//! the current map. The first attempt goes to the cached leader of the PG if it is still a
//! replica or an up OSD of the map ([`crate::leaders::usable_leader`]), else to the entry's
//! first OSD that the map says is up (the first OSD when none is).
//!
//! # Retry rules (by the OSD's answer)
//! - `Ok`: done; the OSD is cached as the PG's leader.
//! - `NotLeader` naming a leader that is one of the replicas or an up OSD of the map: cache
//!   it and retry there at once (at most one round of such hops in a row; then it counts as a
//!   failed attempt). The leader of a PG that the map moves away from its OSD (`osd out`, a
//!   new OSD taking its place) keeps leading until the new replicas have copied the PG, so
//!   such a hint is followed even though the map no longer lists that OSD.
//! - `NotLeader` without a usable hint, `Retry`, a connection failure or an attempt timeout:
//!   try the next replica (preferring ones the map says are up); after every full round of
//!   failed attempts, pause (5 ms, doubling, at most 200 ms).
//! - `NoPg` is treated like `Retry`. With an epoch newer than the client's map it means the
//!   client routed by a stale map (see the next rule); otherwise the OSD is the stale one
//!   (it has not created the PG yet) and another replica may serve.
//! - Any retryable answer carrying an epoch newer than the client's map: first wait (at most
//!   1 s) for the map to reach that epoch, then route again under it.
//! - `Invalid`, `Io`, `NoSpace`: fail at once with the OSD's message.
//! - `StaleContext`: fail at once, carrying the PG's snapshot context; the volume handle
//!   re-issues the write with it (`volume.rs`).
//!
//! Every attempt of one request carries the same `(client, seq)`, so a write that reached
//! the PG before its answer was lost is applied once. Each attempt carries the epoch of the
//! map it was routed with and the client's current `floor`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_mon::model::ClusterMap;
use tessera_placement::object_to_pg;
use tessera_wire::{trace, OpCode, Request, Status, WirePg};

use crate::backoff::Backoff;
use crate::client::Inner;
use crate::conn::Reply;
use crate::error::{ClientError, Location, Result};
use crate::seq::SeqGuard;
use crate::BLOCK_SIZE;

/// First pause after a full round of failed attempts; it doubles up to [`BACKOFF_CAP`].
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_CAP: Duration = Duration::from_millis(200);
/// Longest wait for a newer map before routing again.
const MAP_WAIT: Duration = Duration::from_secs(1);

/// One request for one object, as a caller of [`crate::Client::request`] describes it; the
/// client adds the PG, the map epoch, and `client`/`seq`/`floor`.
///
/// `offset` and `len` are bytes within the object and multiples of 4096; a `Write` carries
/// exactly `len` bytes of data, other ops none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRequest {
    pub op: OpCode,
    pub pool: u32,
    pub volume: u64,
    pub object: u64,
    /// [`crate::SNAP_HEAD`] for the writable head.
    pub snap: u64,
    pub offset: u64,
    pub len: u64,
    /// Snapshot context of a write-class op: the volume's newest live snapshot id (0 =
    /// none); see [`tessera_wire::Request::snapc`]. For `Rollback`, the same.
    pub snapc: u64,
    /// PG-wide ops (`Usage`, `TrimVersions`, `DropVolume`, `Rollback`): the PG index to
    /// send to. `None`: the PG of `(volume, object)`.
    pub pg: Option<u32>,
}

impl ObjectRequest {
    /// A request for `len` bytes at `offset` of one object version, with no snapshot context.
    pub fn new(op: OpCode, pool: u32, volume: u64, object: u64, snap: u64, offset: u64, len: u64) -> Self {
        ObjectRequest { op, pool, volume, object, snap, offset, len, snapc: 0, pg: None }
    }

    pub(crate) fn location(&self, pg: Option<WirePg>) -> Location {
        Location { volume: self.volume, object: self.object, offset: self.offset, pg }
    }

    /// Checks the request contract; `max_data` is the largest payload allowed.
    pub(crate) fn check(&self, data: &Bytes, max_data: u64) -> Result<()> {
        let bad = |why: String| Err(ClientError::BadRequest { at: self.location(None), why });
        if !self.offset.is_multiple_of(BLOCK_SIZE) || !self.len.is_multiple_of(BLOCK_SIZE) {
            return bad(format!("offset {} and length {} must be multiples of {BLOCK_SIZE}", self.offset, self.len));
        }
        if self.offset.checked_add(self.len).is_none() {
            return bad(format!("offset {} + length {} overflows", self.offset, self.len));
        }
        match self.op {
            OpCode::Write if data.len() as u64 != self.len => bad(format!("write of length {} carries {} bytes", self.len, data.len())),
            OpCode::Read | OpCode::Write if self.len > max_data => bad(format!("length {} exceeds the request limit {max_data}", self.len)),
            OpCode::TrimVersions => tessera_wire::decode_keep(data)
                .map(drop)
                .map_err(|e| ClientError::BadRequest { at: self.location(None), why: e.to_string() }),
            _ if self.op != OpCode::Write && !data.is_empty() => {
                bad(format!("{:?} carries {} bytes of data; only writes carry data", self.op, data.len()))
            }
            _ => Ok(()),
        }
    }
}

/// Where a request goes under one map.
struct Route {
    pg: WirePg,
    replicas: Vec<u32>,
}

/// The PG of `req` and its replicas under `map` (`Err`: why it cannot be routed).
fn resolve(map: &ClusterMap, req: &ObjectRequest) -> Result<Route, String> {
    let pool = map.pool(req.pool).ok_or_else(|| format!("pool {} is not in map epoch {}", req.pool, map.epoch))?;
    let index = match req.pg {
        Some(i) if i < pool.pg_count => i,
        Some(i) => return Err(format!("pool {} has {} PGs, no PG {i}", req.pool, pool.pg_count)),
        None => object_to_pg(req.volume, req.object, pool.pg_count).map_err(|e| format!("pool {}: {e}", req.pool))?,
    };
    let pg = WirePg { pool: req.pool, index };
    let replicas = map.pg_table(req.pool).and_then(|t| t.pgs.get(index as usize)).map(|e| e.osds().to_vec()).unwrap_or_default();
    Ok(Route { pg, replicas })
}

fn is_up(map: &ClusterMap, osd: u32) -> bool {
    map.osd(osd).is_some_and(|o| o.up)
}

/// The replica after `failed` in list order, preferring OSDs that are up.
fn next_replica(map: &ClusterMap, replicas: &[u32], failed: u32) -> u32 {
    let n = replicas.len();
    let pos = replicas.iter().position(|o| *o == failed).unwrap_or(n - 1);
    (1..=n).map(|k| replicas[(pos + k) % n]).find(|o| is_up(map, *o)).unwrap_or(replicas[(pos + 1) % n])
}

/// What to do after one attempt.
enum Next {
    Done(Reply),
    Fail(ClientError),
    /// Retry at once at this OSD (a leader hint).
    Redirect(u32),
    /// The attempted OSD failed: move on to the next replica.
    FailOver,
}

/// The OSD chosen for the next attempt, and why.
#[derive(Clone, Copy)]
enum Chosen {
    /// The next replica after a failure: used only while the map still lists it.
    Replica(u32),
    /// Named as leader by an OSD: used while it is a replica or up in the map.
    Hint(u32),
}

/// Per-request retry state.
struct Retry {
    last_error: String,
    /// The OSD the next attempt goes to, if decided (fail-over: a replica; or a leader hint,
    /// which may name an up OSD outside the replica list).
    next: Option<Chosen>,
    /// Failed attempts since the last pause.
    failures: usize,
    /// Leader hints followed in a row.
    hops: usize,
    backoff: Backoff,
}

impl Inner {
    /// Executes `req` with payload `data`, retrying per the module docs until `deadline`.
    /// `Ok` carries the OSD's `Ok` response and its data (for reads exactly `len` bytes).
    pub(crate) async fn execute(&self, req: &ObjectRequest, data: Bytes, deadline: Instant) -> Result<Reply> {
        let started = Instant::now();
        // Bounded in flight per client: the PGs remember a bounded number of (client, seq)
        // pairs above the client's floor (see the OSD's dedup table).
        let _permit = self.in_flight.acquire().await.map_err(|_| ClientError::Timeout {
            at: req.location(None),
            elapsed: started.elapsed(),
            last_error: "client shut down".into(),
        })?;
        let seq = self.seqs.begin();
        let traced = trace::sampled(self.seqs.client(), seq.seq()).then(|| (self.seqs.client(), seq.seq()));
        if let Some((client, seq)) = traced {
            crate::trace::note(client, seq);
            trace::record(trace::stage::CLIENT_SEND, client, seq, trace::At::default(), trace::now_ns());
        }
        // End-to-end checksums: one CRC32C per 4 KiB block of a write, computed once here. The
        // OSD checks the data against them on receipt, every replica's engine checks them
        // again and stores them as the blocks' checksums, and reads bring them back.
        let crcs = match req.op == OpCode::Write && !data.is_empty() {
            true => Bytes::from(tessera_wire::block_crc_table(&data)),
            false => Bytes::new(),
        };
        let mut at = req.location(None);
        let mut st = Retry {
            last_error: "no attempt finished".into(),
            next: None,
            failures: 0,
            hops: 0,
            backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_CAP),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout { at, elapsed: now - started, last_error: st.last_error });
            }
            let map = self.map.current();
            let route = match resolve(&map, req) {
                Ok(r) if !r.replicas.is_empty() => r,
                Ok(r) => {
                    at.pg = Some(r.pg);
                    st.last_error = format!("pg {}.{} has no OSDs in map epoch {}", r.pg.pool, r.pg.index, map.epoch);
                    self.await_map(map.epoch, deadline).await;
                    continue;
                }
                Err(why) => {
                    st.last_error = why;
                    self.await_map(map.epoch, deadline).await;
                    continue;
                }
            };
            at.pg = Some(route.pg);
            let osd = st
                .next
                .take()
                .and_then(|n| match n {
                    Chosen::Replica(o) => route.replicas.contains(&o).then_some(o),
                    Chosen::Hint(o) => crate::leaders::usable_leader(&map, &route.replicas, o).then_some(o),
                })
                .or_else(|| self.leaders.get(route.pg, &route.replicas, &map))
                .unwrap_or_else(|| route.replicas.iter().copied().find(|o| is_up(&map, *o)).unwrap_or(route.replicas[0]));
            let next = match self.attempt(&map, osd, route.pg, req, (&data, &crcs), &seq, deadline).await {
                Ok(reply) => self.judge(&map, osd, &route, req, at, reply, &mut st, deadline).await,
                Err(e) => {
                    st.last_error = e;
                    Next::FailOver
                }
            };
            match next {
                Next::Done(reply) => {
                    if let Some((client, seq)) = traced {
                        trace::record(trace::stage::CLIENT_RECV, client, seq, trace::At::default(), trace::now_ns());
                    }
                    return Ok(reply);
                }
                Next::Fail(e) => return Err(e),
                Next::Redirect(leader) => {
                    st.hops += 1;
                    if st.hops <= route.replicas.len() {
                        st.next = Some(Chosen::Hint(leader));
                        continue;
                    }
                    self.fail_over(&map, &route, leader, &mut st, deadline).await;
                }
                Next::FailOver => self.fail_over(&map, &route, osd, &mut st, deadline).await,
            }
        }
    }

    /// Interprets one answer of `osd`.
    #[allow(clippy::too_many_arguments)]
    async fn judge(
        &self,
        map: &ClusterMap,
        osd: u32,
        route: &Route,
        req: &ObjectRequest,
        at: Location,
        (resp, payload): Reply,
        st: &mut Retry,
        deadline: Instant,
    ) -> Next {
        let message = resp.message.clone();
        match resp.status {
            Status::Ok if req.op == OpCode::Read && payload.len() as u64 != req.len => {
                let why = format!("read of {} bytes answered with {} bytes", req.len, payload.len());
                return Next::Fail(ClientError::Protocol { at, osd, why });
            }
            Status::Ok | Status::Absent => {
                self.leaders.set(route.pg, osd);
                return Next::Done((resp, payload));
            }
            Status::Invalid => return Next::Fail(ClientError::Invalid { at, osd, message }),
            Status::Io => return Next::Fail(ClientError::Io { at, osd, message }),
            Status::NoSpace => return Next::Fail(ClientError::NoSpace { at, osd, message }),
            Status::StaleContext => return Next::Fail(ClientError::StaleContext { at, osd, snapc: resp.snapc }),
            Status::NotLeader | Status::NoPg | Status::Retry => {}
        }
        st.last_error = format!("osd {osd} answered {:?} (its map epoch {}, ours {}): {message}", resp.status, resp.epoch, map.epoch);
        tracing::debug!(%at, osd, error = %st.last_error, "client: retrying");
        if resp.epoch > map.epoch {
            self.await_map(resp.epoch - 1, deadline).await;
        }
        match resp.leader {
            Some(l) if resp.status == Status::NotLeader && l != osd && crate::leaders::usable_leader(map, &route.replicas, l) => {
                self.leaders.set(route.pg, l);
                Next::Redirect(l)
            }
            _ => Next::FailOver,
        }
    }

    /// Moves on from the failed OSD `failed`; pauses after a full round of failures.
    async fn fail_over(&self, map: &ClusterMap, route: &Route, failed: u32, st: &mut Retry, deadline: Instant) {
        let next = next_replica(map, &route.replicas, failed);
        self.leaders.advance(route.pg, failed, next);
        st.next = Some(Chosen::Replica(next));
        st.hops = 0;
        st.failures += 1;
        if st.failures >= route.replicas.len() {
            st.failures = 0;
            let pause = st.backoff.next_pause().min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// Waits (at most [`MAP_WAIT`], never past `deadline`) for a map newer than `epoch`.
    async fn await_map(&self, epoch: u64, deadline: Instant) {
        let wait = MAP_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        self.map.newer_than(epoch, wait).await;
    }

    /// One attempt at `osd`, bounded by the attempt timeout and the deadline. `Err`: no
    /// answer (no address, dial or connection failure, timeout), with the reason.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        map: &ClusterMap,
        osd: u32,
        pg: WirePg,
        req: &ObjectRequest,
        (data, crcs): (&Bytes, &Bytes),
        seq: &SeqGuard,
        deadline: Instant,
    ) -> Result<Reply, String> {
        let addr = map.osd(osd).map(|o| o.addr.clone()).ok_or_else(|| format!("osd {osd} is not in map epoch {}", map.epoch))?;
        let budget = self.opts.attempt_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let once = async {
            let conn = self.conns.get(osd, &addr).await?;
            let wire = Request {
                op: req.op,
                pg,
                epoch: map.epoch,
                volume: req.volume,
                object: req.object,
                snap: req.snap,
                offset: req.offset,
                len: req.len,
                client: self.seqs.client(),
                seq: seq.seq(),
                floor: self.seqs.floor(),
                snapc: req.snapc,
            };
            conn.call_blocks(Bytes::copy_from_slice(&wire.encode()), data.clone(), crcs.clone()).await
        };
        match tokio::time::timeout(budget, once).await {
            Ok(r) => r,
            Err(_) => Err(format!("osd {osd} at {addr}: no answer within {budget:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_mon::model::OsdRecord;

    fn osd(id: u32, up: bool) -> OsdRecord {
        let v = serde_json::json!({
            "id": id, "uuid": "", "addr": "", "host": "", "device": "", "capacity_bytes": 0, "weight": 1.0, "up": up, "in": true, "since_ms": 0,
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn next_replica_rotates_and_skips_down_osds() {
        let map = ClusterMap { epoch: 1, osds: vec![osd(1, true), osd(2, false), osd(3, true)], ..Default::default() };
        assert_eq!(next_replica(&map, &[1, 2, 3], 1), 3, "2 is down");
        assert_eq!(next_replica(&map, &[1, 2, 3], 3), 1);
        assert_eq!(next_replica(&map, &[2], 2), 2, "nothing else to try");
        assert_eq!(next_replica(&map, &[1, 2, 3], 9), 1, "unknown: start at the front");
        let all_down = ClusterMap { epoch: 1, osds: vec![osd(1, false), osd(2, false)], ..Default::default() };
        assert_eq!(next_replica(&all_down, &[1, 2], 1), 2);
    }

    #[test]
    fn request_contract_is_checked() {
        let r = ObjectRequest::new(OpCode::Write, 1, 2, 3, crate::SNAP_HEAD, 4096, 4096);
        assert!(r.check(&Bytes::from(vec![0u8; 4096]), 1 << 20).is_ok());
        assert!(matches!(r.check(&Bytes::from(vec![0u8; 100]), 1 << 20), Err(ClientError::BadRequest { .. })));
        let unaligned = ObjectRequest { offset: 100, ..r };
        assert!(unaligned.check(&Bytes::from(vec![0u8; 4096]), 1 << 20).is_err());
        let read = ObjectRequest { op: OpCode::Read, len: 8192, ..r };
        assert!(read.check(&Bytes::new(), 4096).is_err(), "over the request limit");
        assert!(read.check(&Bytes::from_static(b"x"), 1 << 20).is_err(), "reads carry no data");
    }
}
