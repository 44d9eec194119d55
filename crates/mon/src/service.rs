//! The cluster map's read-modify-write operations on a [`MetaStore`].
//!
//! Concurrency contract: every change is one metastore transaction that compares the mod
//! revision of `map/head` as it was read and rewrites it with the next epoch. Since every
//! change rewrites `map/head`, a change planned on a stale read fails its compare and is
//! re-planned on fresh state (optimistic concurrency). This holds across any number of mon
//! processes on one etcd: of two concurrent creates of the same volume name, exactly one
//! commits and the other re-plans, sees the name taken and gets `VolumeExists`.
//!
//! Durability: a call returns `Ok` only after its transaction is durable in the store
//! (embedded: fsynced by redb; etcd: committed by a quorum).
//!
//! Changes made by the failure detector carry the leader's fence (see
//! [`tessera_metastore::Leadership::fence`]): a mon that lost its leadership cannot apply them.
//!
//! Client sessions ([`Service::put_session`]) are not map changes: plain puts and deletes
//! that leave the epoch alone. They tell the mon which clients have which volumes open and
//! which map epoch each has acted on. Snapshot create and delete use them as a fence: they
//! return only once every client writing to the volume has acknowledged the new snapshot
//! context (or its session has expired), which makes a snapshot point-in-time; if that takes
//! longer than the session TTL plus [`FENCE_SLACK`], they fail with `FenceTimeout` (the change
//! itself stays committed).
//!
//! Sessions also keep volumes from being rolled back or deleted under a client, through a
//! store-then-load fence on both sides: a client opening a volume first puts its session,
//! then reads the volume record and refuses unless it is `active`; [`Service::begin_rollback`]
//! and [`Service::delete_volume`] first commit the new state, then read the sessions (and
//! revert if one holds the volume). With a linearizable store at least one of the two sees
//! the other's write, so a client never writes to a volume being rolled back or deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_metastore::{Compare, MetaStore, Txn, TxnOp};

use crate::detector::{Change, Decision};
use crate::error::{MonError, Result};
use crate::keys;
use crate::model::{
    now_ms, ClusterConfig, ClusterMap, DomainLevel, Head, OsdRecord, OutReason, ParentRef, PoolRecord, SessionRecord, SnapshotRecord,
    VolumeRecord, VolumeState,
};
use crate::pgmap::{self, Replan};
use crate::validate;

/// How often a change is re-planned after losing a race before giving up with `Contended`.
const MAX_ATTEMPTS: u32 = 64;

/// How long a client session lives without renewal (the default of [`Service::new`]).
pub const SESSION_TTL: Duration = Duration::from_secs(15);
/// How much longer than the session TTL the snapshot fence waits before giving up.
pub const FENCE_SLACK: Duration = Duration::from_secs(2);
/// How often the snapshot fence re-reads the sessions.
const FENCE_POLL: Duration = Duration::from_millis(20);

/// The map as read in one consistent `range` of `map/`, plus `map/head`'s mod revision (the
/// compare every change is made against).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub head: Head,
    pub head_rev: u64,
    pub map: ClusterMap,
    /// OSD uuid -> id.
    pub osd_uuids: BTreeMap<String, u32>,
}

/// What a planned change writes (besides `map/head`, which `commit` adds).
#[derive(Default)]
struct Plan {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

impl Plan {
    fn put<T: Serialize>(&mut self, key: String, value: &T) -> Result<()> {
        self.ops.push(TxnOp::Put { key: key.into_bytes(), value: json(value)? });
        Ok(())
    }
    fn delete(&mut self, key: String) {
        self.ops.push(TxnOp::Delete { key: key.into_bytes() });
    }
}

fn json<T: Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|e| MonError::Corrupt { key: "<encode>".into(), reason: e.to_string() })
}

fn parse<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| MonError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

/// A registration (or re-registration at boot) of one OSD.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterOsd {
    pub uuid: String,
    pub addr: String,
    pub host: String,
    #[serde(default)]
    pub rack: Option<String>,
    pub device: String,
    pub capacity_bytes: u64,
    /// Default: capacity in TiB (at least 1/65536).
    #[serde(default)]
    pub weight: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default = "default_pg_count")]
    pub pg_count: u32,
    #[serde(default)]
    pub failure_domain: DomainLevel,
}

fn default_replicas() -> u32 {
    3
}
fn default_pg_count() -> u32 {
    128
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    pub pool: String,
    /// Bytes, a multiple of 4096.
    pub size: u64,
    #[serde(default = "default_object_size")]
    pub object_size: u64,
}

fn default_object_size() -> u64 {
    validate::DEFAULT_OBJECT_SIZE
}

/// Body of `PUT /api/v1/sessions/{client}`: creates or renews a client's session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionUpdate {
    /// The newest map epoch the client acts on (it writes with its volumes' `snap_seq` as of
    /// this epoch or newer).
    pub epoch: u64,
    /// Ids of the volumes the client has open (at most [`validate::MAX_SESSION_VOLUMES`]).
    pub volumes: Vec<u64>,
    /// Ids of the snapshots the client has open read-only (`VOL@SNAP` exports; at most
    /// [`validate::MAX_SESSION_SNAPSHOTS`]). A live session listing a snapshot keeps it from
    /// being deleted (`SnapshotInUse`).
    #[serde(default)]
    pub snapshots: Vec<u64>,
    /// What the client is, for operators: 1 to 128 printable ASCII characters.
    pub agent: String,
}

/// The answer to a session put. The client must renew before `ttl_ms` has passed since it
/// sent the put (counted on its own clock), and stop writing if it could not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct SessionLease {
    pub ttl_ms: u64,
    /// Unix ms (mon clock) at which the mon considers the session dead.
    pub expires_ms: u64,
}

/// Summary for `tessera cluster status`.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, Serialize)]
pub struct ClusterStatus {
    pub epoch: u64,
    pub osds_total: usize,
    pub osds_up: usize,
    pub osds_in: usize,
    pub pools: usize,
    pub pgs_total: usize,
    /// PG count by health (`healthy`, `degraded`, `unavailable`).
    pub pgs_by_health: BTreeMap<String, usize>,
    pub volumes: usize,
    /// Volumes being deleted (counted in `volumes` too): their objects are being dropped.
    #[serde(default)]
    pub volumes_deleting: usize,
    /// The id the next snapshot will get (ids start at 1 and only grow): a snapshot trim's
    /// horizon.
    #[serde(default)]
    pub next_snapshot_id: u64,
    pub provisioned_bytes: u64,
    pub raw_capacity_bytes: u64,
    /// Address of the active mon, if one is elected.
    pub active_mon: Option<String>,
    /// PG count by state (`active+clean`, ...; see `pgstate`) from the PG leaders'
    /// reports; only the active mon has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgs_by_state: Option<BTreeMap<String, usize>>,
    /// OSD count by fullness (`ok`, `nearfull`, `backfillfull`, `full`) from the OSDs'
    /// heartbeats; only the active mon has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub osds_by_space: Option<BTreeMap<String, usize>>,
}

#[derive(Clone)]
pub struct Service {
    store: Arc<dyn MetaStore>,
    session_ttl: Duration,
    /// When this mon first saw each session key at its current mod revision, on its own
    /// monotonic clock: a session lives `session_ttl` past that (see [`Service::sessions`]).
    seen: Arc<std::sync::Mutex<SessionsSeen>>,
}

/// Session key -> (mod revision, when this mon first saw it at that revision).
type SessionsSeen = HashMap<Vec<u8>, (u64, std::time::Instant)>;

/// Refuses a volume that is being rolled back or deleted.
fn require_active(vol: &VolumeRecord) -> Result<()> {
    match vol.state {
        VolumeState::Active => Ok(()),
        state => Err(MonError::VolumeBusy { name: vol.name.clone(), state: state.to_string() }),
    }
}

/// The snapshot named `name` among `snaps` (those of `vol`).
fn find_snapshot(vol: &VolumeRecord, snaps: &[SnapshotRecord], name: &str) -> Result<SnapshotRecord> {
    snaps
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| MonError::SnapshotNotFound { volume: vol.name.clone(), snapshot: name.into() })
}

/// The clients of `sessions` alive at `now_ms` that hold volume `volume_id` open and have
/// not acknowledged map epoch `epoch` yet.
fn unacknowledged(sessions: &[SessionRecord], volume_id: u64, epoch: u64) -> Vec<u64> {
    sessions.iter().filter(|s| s.holds(volume_id) && s.epoch < epoch).map(|s| s.client).collect()
}

impl Service {
    /// A service with the default session TTL ([`SESSION_TTL`]).
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self::with_session_ttl(store, SESSION_TTL)
    }

    /// A service whose client sessions live `ttl` without renewal (tests use short ones).
    pub fn with_session_ttl(store: Arc<dyn MetaStore>, ttl: Duration) -> Self {
        Service { store, session_ttl: ttl, seen: Default::default() }
    }

    /// How long a client session lives without renewal.
    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    /// The whole map as of one point in time.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let rows = self.store.range(keys::MAP_PREFIX.as_bytes()).await?;
        let mut snap = Snapshot { head: Head::default(), head_rev: 0, map: ClusterMap::default(), osd_uuids: BTreeMap::new() };
        for (key, v) in rows {
            let k =
                std::str::from_utf8(&key).map_err(|_| MonError::Corrupt { key: format!("{key:?}"), reason: "key is not UTF-8".into() })?;
            if k == keys::HEAD {
                snap.head = parse(&key, &v.value)?;
                snap.head_rev = v.mod_revision;
            } else if k.starts_with(keys::OSD_PREFIX) {
                snap.map.osds.push(parse(&key, &v.value)?);
            } else if let Some(uuid) = k.strip_prefix("map/osd-uuid/") {
                snap.osd_uuids.insert(uuid.to_string(), parse(&key, &v.value)?);
            } else if k.starts_with(keys::POOL_PREFIX) {
                snap.map.pools.push(parse(&key, &v.value)?);
            } else if k.starts_with(keys::PG_PREFIX) {
                snap.map.pg_tables.push(parse(&key, &v.value)?);
            } else if k == keys::CONFIG {
                snap.map.config = parse(&key, &v.value)?;
            }
        }
        snap.map.epoch = snap.head.epoch;
        Ok(snap)
    }

    pub async fn map(&self) -> Result<ClusterMap> {
        Ok(self.snapshot().await?.map)
    }

    /// Commits `plan` against `snap` with the next epoch; `head` is `snap.head` with any id
    /// counter the plan consumed advanced (the epoch is set here). `Ok(None)`: the map changed
    /// since `snap` was read (re-plan). `fence`: the leader's fence, for detector changes.
    async fn commit(&self, snap: &Snapshot, mut head: Head, mut plan: Plan, fence: Option<&Compare>) -> Result<Option<u64>> {
        head.epoch = snap.head.epoch + 1;
        head.changed_ms = now_ms();
        plan.compares.push(Compare::ModRevision { key: keys::HEAD.into(), revision: snap.head_rev });
        if let Some(f) = fence {
            plan.compares.push(f.clone());
        }
        plan.ops.push(TxnOp::Put { key: keys::HEAD.into(), value: json(&head)? });
        let res = self.store.txn(Txn { compares: plan.compares, success: plan.ops, failure: vec![] }).await?;
        if res.succeeded {
            return Ok(Some(head.epoch));
        }
        if let Some(Compare::ModRevision { key, revision }) = fence {
            let current = self.store.get(key).await?.map_or(0, |v| v.mod_revision);
            if current != *revision {
                return Err(MonError::Fenced);
            }
        }
        Ok(None)
    }

    /// Re-places every pool on `osds`, adding the changed PG tables to `plan`.
    fn replan_pools(snap: &Snapshot, osds: &[OsdRecord], epoch: u64, plan: &mut Plan) -> Result<()> {
        let topology = match pgmap::topology(osds) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "OSD map cannot be used for placement; PG tables unchanged");
                return Ok(());
            }
        };
        for pool in &snap.map.pools {
            let Some(old) = snap.map.pg_table(pool.id) else { continue };
            match pgmap::replan(pool, &topology, old, epoch) {
                Replan::Unchanged => {}
                Replan::Changed { table, moved } => {
                    tracing::info!(pool = %pool.name, epoch, moved_replicas = moved, "PGs re-placed");
                    plan.put(keys::pg_table(pool.id), &table)?;
                }
                Replan::Impossible(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "pool cannot be fully re-placed; its PGs keep their OSDs and run degraded");
                }
            }
        }
        Ok(())
    }

    /// Registers an OSD, or updates its address and device facts at re-registration (same
    /// uuid: same id, up/in state kept). A new OSD starts down and in; its first heartbeat
    /// marks it up.
    pub async fn register_osd(&self, req: &RegisterOsd) -> Result<OsdRecord> {
        for (field, v) in [("uuid", &req.uuid), ("addr", &req.addr), ("host", &req.host), ("device", &req.device)] {
            validate::label(field, v)?;
        }
        if let Some(r) = &req.rack {
            validate::label("rack", r)?;
        }
        if let Some(w) = req.weight {
            validate::weight(w)?;
        }
        let default_weight = (req.capacity_bytes as f64 / (1u64 << 40) as f64).max(1.0 / 65536.0);
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            if let Some(id) = snap.osd_uuids.get(&req.uuid).filter(|id| snap.map.osd(**id).is_none()) {
                return Err(MonError::OsdRemoved { id: *id, uuid: req.uuid.clone() });
            }
            let existing = snap.osd_uuids.get(&req.uuid).and_then(|id| snap.map.osd(*id)).cloned();
            let epoch = snap.head.epoch + 1;
            let mut plan = Plan::default();
            let rec = match existing {
                Some(old) => {
                    let rec = OsdRecord {
                        addr: req.addr.clone(),
                        host: req.host.clone(),
                        rack: req.rack.clone(),
                        device: req.device.clone(),
                        capacity_bytes: req.capacity_bytes,
                        weight: req.weight.unwrap_or(old.weight),
                        ..old.clone()
                    };
                    if rec == old {
                        return Ok(rec);
                    }
                    rec
                }
                None => OsdRecord {
                    id: snap.head.next_osd_id,
                    uuid: req.uuid.clone(),
                    addr: req.addr.clone(),
                    host: req.host.clone(),
                    rack: req.rack.clone(),
                    device: req.device.clone(),
                    capacity_bytes: req.capacity_bytes,
                    weight: req.weight.unwrap_or(default_weight),
                    up: false,
                    in_: true,
                    out_reason: None,
                    since_ms: now_ms(),
                },
            };
            let mut osds: Vec<OsdRecord> = snap.map.osds.iter().filter(|o| o.id != rec.id).cloned().collect();
            osds.push(rec.clone());
            plan.put(keys::osd(rec.id), &rec)?;
            plan.put(keys::osd_uuid(&rec.uuid), &rec.id)?;
            Self::replan_pools(&snap, &osds, epoch, &mut plan)?;
            let mut head = snap.head.clone();
            if rec.id == head.next_osd_id {
                head.next_osd_id += 1;
            }
            if self.commit(&snap, head, plan, None).await?.is_some() {
                tracing::info!(osd = rec.id, addr = %rec.addr, host = %rec.host, epoch, "OSD registered");
                return Ok(rec);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// `tessera osd in/out`. Out (admin) sticks until set in again; returns the new record.
    pub async fn set_osd_in(&self, id: u32, in_: bool) -> Result<OsdRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let old = snap.map.osd(id).ok_or(MonError::OsdNotFound { id })?;
            let rec = OsdRecord { in_, out_reason: if in_ { None } else { Some(OutReason::Admin) }, ..old.clone() };
            if rec == *old {
                return Ok(rec);
            }
            let epoch = snap.head.epoch + 1;
            let mut plan = Plan::default();
            plan.put(keys::osd(id), &rec)?;
            let osds: Vec<OsdRecord> = snap.map.osds.iter().map(|o| if o.id == id { rec.clone() } else { o.clone() }).collect();
            Self::replan_pools(&snap, &osds, epoch, &mut plan)?;
            if self.commit(&snap, snap.head.clone(), plan, None).await?.is_some() {
                tracing::info!(osd = id, in_, epoch, "OSD marked {} by an operator", if in_ { "in" } else { "out" });
                return Ok(rec);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// `tessera cluster config`: sets the cluster-wide settings (a new map epoch, so every
    /// OSD acts on them with its next map). Unchanged settings write nothing.
    pub async fn set_config(&self, config: &ClusterConfig) -> Result<ClusterConfig> {
        config.space.check().map_err(|why| MonError::invalid("space ratios", why))?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            if snap.map.config == *config {
                return Ok(*config);
            }
            let mut plan = Plan::default();
            plan.put(keys::CONFIG.into(), config)?;
            if self.commit(&snap, snap.head.clone(), plan, None).await?.is_some() {
                tracing::info!(?config, "cluster configuration changed");
                return Ok(*config);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// `tessera osd rm`: removes an OSD from the map for good. Refused unless it is out and
    /// down (its daemon stopped) and no PG table lists it; `still_members` are the PGs whose
    /// group still counts it as a member, or whose state is unknown, as the active mon's PG
    /// reports tell (the caller computes them, [`crate::pgstate::still_needing`]): while
    /// there is any, it may hold the only up-to-date copy of something. The device's uuid
    /// stays mapped to the removed id, so the device is refused if it registers again
    /// ([`MonError::OsdRemoved`]) until it is wiped.
    pub async fn remove_osd(&self, id: u32, still_members: &[String]) -> Result<OsdRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let rec = snap.map.osd(id).ok_or(MonError::OsdNotFound { id })?.clone();
            let refuse = |why: String| Err(MonError::OsdInUse { id, why });
            if rec.in_ {
                return refuse(format!("it is in; run `tessera osd out {id}` and wait until its PGs have moved (`tessera cluster pgs`)"));
            }
            if rec.up {
                return refuse("it is up; stop its daemon first (its PGs must have moved off it: `tessera cluster pgs`)".into());
            }
            let listed: Vec<String> = snap
                .map
                .pg_tables
                .iter()
                .flat_map(|t| t.pgs.iter().enumerate().filter(|(_, e)| e.osds().contains(&id)).map(|(i, _)| format!("{}.{i:x}", t.pool_id)))
                .collect();
            if !listed.is_empty() {
                return refuse(format!("the map still places PG(s) {} on it (its pool cannot be placed without it)", short_list(&listed)));
            }
            if !still_members.is_empty() {
                return refuse(format!(
                    "PG(s) {} still count it as a member or have no active leader to tell; wait until they are active+clean without it (`tessera cluster pgs`)",
                    short_list(still_members)
                ));
            }
            let mut plan = Plan::default();
            plan.delete(keys::osd(id));
            if self.commit(&snap, snap.head.clone(), plan, None).await?.is_some() {
                tracing::info!(osd = id, uuid = %rec.uuid, "OSD removed by an operator");
                return Ok(rec);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Applies one tick of failure-detector decisions in one transaction (one epoch),
    /// fenced by the leader's lease. Decisions that no longer apply are skipped. Returns the
    /// new epoch, or `None` if nothing changed.
    pub async fn apply_decisions(&self, decisions: &[Decision], fence: &Compare) -> Result<Option<u64>> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let mut osds = snap.map.osds.clone();
            let mut changed_ids = Vec::new();
            let mut placement_changed = false;
            for d in decisions {
                let Some(o) = osds.iter_mut().find(|o| o.id == d.osd) else { continue };
                let before = o.clone();
                match d.change {
                    Change::Down if o.up => o.up = false,
                    Change::Up if !o.up => o.up = true,
                    Change::Out if o.in_ && !o.up => {
                        o.in_ = false;
                        o.out_reason = Some(OutReason::Down);
                    }
                    Change::In if !o.in_ && o.out_reason == Some(OutReason::Down) => {
                        o.in_ = true;
                        o.out_reason = None;
                    }
                    _ => continue,
                }
                if before.up != o.up {
                    o.since_ms = now_ms();
                }
                placement_changed |= before.in_ != o.in_;
                changed_ids.push(o.id);
            }
            if changed_ids.is_empty() {
                return Ok(None);
            }
            let epoch = snap.head.epoch + 1;
            let mut plan = Plan::default();
            for o in osds.iter().filter(|o| changed_ids.contains(&o.id)) {
                plan.put(keys::osd(o.id), o)?;
            }
            if placement_changed {
                Self::replan_pools(&snap, &osds, epoch, &mut plan)?;
            }
            if let Some(epoch) = self.commit(&snap, snap.head.clone(), plan, Some(fence)).await? {
                for o in osds.iter().filter(|o| changed_ids.contains(&o.id)) {
                    tracing::info!(osd = o.id, up = o.up, in_ = o.in_, epoch, "OSD state changed by the failure detector");
                }
                return Ok(Some(epoch));
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    pub async fn create_pool(&self, req: &CreatePool) -> Result<PoolRecord> {
        validate::name("pool name", &req.name)?;
        validate::pool_shape(req.replicas, req.pg_count)?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            if snap.map.pool_by_name(&req.name).is_some() {
                return Err(MonError::PoolExists { name: req.name.clone() });
            }
            let pool = PoolRecord {
                id: snap.head.next_pool_id,
                name: req.name.clone(),
                replicas: req.replicas,
                pg_count: req.pg_count,
                failure_domain: req.failure_domain,
                created_ms: now_ms(),
                created_epoch: snap.head.epoch + 1,
            };
            let epoch = pool.created_epoch;
            let placement_err = |source| MonError::Placement { pool: req.name.clone(), source };
            let topology = pgmap::topology(&snap.map.osds).map_err(placement_err)?;
            let table = pgmap::initial_table(&pool, &topology, epoch).map_err(placement_err)?;
            let mut plan = Plan::default();
            plan.compares.push(Compare::Absent { key: keys::pool_name(&pool.name).into_bytes() });
            plan.put(keys::pool(pool.id), &pool)?;
            plan.put(keys::pool_name(&pool.name), &pool.id)?;
            plan.put(keys::pg_table(pool.id), &table)?;
            let head = Head { next_pool_id: snap.head.next_pool_id + 1, ..snap.head.clone() };
            if self.commit(&snap, head, plan, None).await?.is_some() {
                tracing::info!(pool = %pool.name, id = pool.id, pgs = pool.pg_count, replicas = pool.replicas, epoch, "pool created");
                return Ok(pool);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Deletes an empty pool (one without volumes).
    pub async fn delete_pool(&self, name: &str) -> Result<PoolRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let pool = snap.map.pool_by_name(name).cloned().ok_or_else(|| MonError::PoolNotFound { name: name.into() })?;
            let volumes = self.list_volumes().await?.into_iter().filter(|v| v.pool_id == pool.id).count();
            if volumes > 0 {
                return Err(MonError::PoolNotEmpty { pool: name.into(), volumes });
            }
            let mut plan = Plan::default();
            plan.delete(keys::pool(pool.id));
            plan.delete(keys::pool_name(&pool.name));
            plan.delete(keys::pg_table(pool.id));
            if let Some(epoch) = self.commit(&snap, snap.head.clone(), plan, None).await? {
                tracing::info!(pool = %pool.name, id = pool.id, epoch, "pool deleted");
                return Ok(pool);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    pub async fn list_volumes(&self) -> Result<Vec<VolumeRecord>> {
        let rows = self.store.range(keys::VOLUME_PREFIX.as_bytes()).await?;
        let mut vols: Vec<VolumeRecord> = rows.iter().map(|(k, v)| parse(k, &v.value)).collect::<Result<_>>()?;
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vols)
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeRecord> {
        let not_found = || MonError::VolumeNotFound { name: name.into() };
        if validate::name("volume name", name).is_err() {
            return Err(not_found());
        }
        let Some(id) = self.store.get(keys::volume_name(name).as_bytes()).await? else { return Err(not_found()) };
        let id: u64 = parse(keys::volume_name(name).as_bytes(), &id.value)?;
        let key = keys::volume(id);
        let v = self.store.get(key.as_bytes()).await?.ok_or_else(not_found)?;
        parse(key.as_bytes(), &v.value)
    }

    pub async fn create_volume(&self, req: &CreateVolume) -> Result<VolumeRecord> {
        validate::name("volume name", &req.name)?;
        validate::volume_size(req.size)?;
        validate::object_size(req.object_size)?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let pool = snap.map.pool_by_name(&req.pool).ok_or_else(|| MonError::PoolNotFound { name: req.pool.clone() })?;
            let vol = VolumeRecord {
                id: snap.head.next_volume_id,
                name: req.name.clone(),
                pool_id: pool.id,
                size: req.size,
                object_size: req.object_size,
                created_ms: now_ms(),
                parent: None,
                snap_seq: 0,
                snap_epoch: 0,
                state: VolumeState::Active,
                rollback_to: None,
            };
            if let Some(epoch) = self.add_volume(&snap, &vol).await? {
                tracing::info!(volume = %vol.name, id = vol.id, size = vol.size, pool = %req.pool, epoch, "volume created");
                return Ok(vol);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Commits a new volume record `vol` (whose id is `snap.head.next_volume_id`) against
    /// `snap`. `VolumeExists` if its name is taken; `Ok(None)`: re-plan (see `commit`).
    async fn add_volume(&self, snap: &Snapshot, vol: &VolumeRecord) -> Result<Option<u64>> {
        if self.store.get(keys::volume_name(&vol.name).as_bytes()).await?.is_some() {
            return Err(MonError::VolumeExists { name: vol.name.clone() });
        }
        let mut plan = Plan::default();
        plan.compares.push(Compare::Absent { key: keys::volume_name(&vol.name).into_bytes() });
        plan.put(keys::volume(vol.id), vol)?;
        plan.put(keys::volume_name(&vol.name), &vol.id)?;
        let head = Head { next_volume_id: vol.id + 1, ..snap.head.clone() };
        self.commit(snap, head, plan, None).await
    }

    /// Commits `vol` (an updated existing volume record) against `snap`. `Ok(None)`: re-plan.
    async fn update_volume(&self, snap: &Snapshot, vol: &VolumeRecord) -> Result<Option<u64>> {
        let mut plan = Plan::default();
        plan.put(keys::volume(vol.id), vol)?;
        self.commit(snap, snap.head.clone(), plan, None).await
    }

    /// Changes an active volume's size. Shrinking needs `allow_shrink` (data past the new end
    /// is gone for good once OSDs trim it). Shrinking a clone below its parent overlap lowers
    /// the overlap to the new size in the same change, so the discarded range reads zeros
    /// if the clone grows again, not the parent's data; growing never raises the overlap
    /// (see [`ParentRef::overlap`]).
    pub async fn resize_volume(&self, name: &str, size: u64, allow_shrink: bool) -> Result<VolumeRecord> {
        validate::volume_size(size)?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let old = self.volume(name).await?;
            require_active(&old)?;
            if size < old.size && !allow_shrink {
                return Err(MonError::ShrinkNotConfirmed { name: name.into(), from: old.size, to: size });
            }
            if size == old.size {
                return Ok(old);
            }
            let vol = VolumeRecord { size, parent: old.parent.map(|p| p.shrunk_to(size)), ..old.clone() };
            if let Some(epoch) = self.update_volume(&snap, &vol).await? {
                tracing::info!(volume = %name, from = old.size, to = size, epoch, "volume resized");
                return Ok(vol);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Starts deleting a volume: marks it `Deleting` (no more IO or changes; its name stays
    /// taken) and returns the record. The caller then drops the volume's objects on the OSDs
    /// and calls [`Service::purge_volume`]. Refused while the volume is being rolled back
    /// (`VolumeBusy`), has snapshots (`VolumeHasSnapshots`) or is open by a live session
    /// (`VolumeInUse`).
    ///
    /// Ordering against a client opening the volume (which puts its session, then reads the
    /// volume and refuses unless it is `active`): `Deleting` is committed *first*, the
    /// sessions are read *after*. Either the client's read follows the commit (it sees
    /// `deleting` and refuses) or its put precedes the session read here (this sees it), so
    /// no client opens a volume this goes on to delete. Had the sessions been checked before
    /// the commit, a client could slip in between. If a live session lists the volume, the
    /// change is reverted in a second CAS commit (the volume is `Active` again, as before)
    /// and `VolumeInUse` is returned; so a refusal advances the epoch by two. The client may
    /// have refused too (it saw `deleting` before the revert): both back off.
    ///
    /// A volume already `Deleting` is returned as is, nothing written (the delete resumes),
    /// unless a live session lists it (a client registered while an earlier attempt failed
    /// between its commit and its check): then `VolumeInUse` and the volume stays `Deleting`;
    /// rerun once that client is disconnected.
    pub async fn delete_volume(&self, name: &str) -> Result<VolumeRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let old = self.volume(name).await?;
            if old.state == VolumeState::Deleting {
                self.refuse_if_open(&old).await?;
                return Ok(old);
            }
            require_active(&old)?;
            let snapshots = self.snapshots(old.id).await?.len();
            if snapshots > 0 {
                return Err(MonError::VolumeHasSnapshots { name: name.into(), snapshots });
            }
            let vol = VolumeRecord { state: VolumeState::Deleting, ..old.clone() };
            let Some(epoch) = self.update_volume(&snap, &vol).await? else { continue };
            tracing::info!(volume = %name, id = vol.id, epoch, "volume marked for deletion");
            self.revert_if_open(&vol, &old).await?;
            return Ok(vol);
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Removes the records of a volume being deleted (its name becomes free; its id is never
    /// reused) and returns its last record. The caller has dropped the volume's objects on
    /// the OSDs before. Refused unless the volume is `Deleting` (see [`Service::delete_volume`]).
    pub async fn purge_volume(&self, name: &str) -> Result<VolumeRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let vol = self.volume(name).await?;
            match vol.state {
                VolumeState::Deleting => {}
                VolumeState::Active => {
                    return Err(MonError::invalid(
                        "state",
                        format!(
                            "volume {name:?} is active, not being deleted; delete it first (DELETE /api/v1/volumes/{name}), then purge it"
                        ),
                    ))
                }
                VolumeState::RollingBack => require_active(&vol)?,
            }
            let mut plan = Plan::default();
            plan.delete(keys::volume(vol.id));
            plan.delete(keys::volume_name(&vol.name));
            if let Some(epoch) = self.commit(&snap, snap.head.clone(), plan, None).await? {
                tracing::info!(volume = %name, id = vol.id, epoch, "volume purged");
                return Ok(vol);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// The snapshots of volume `volume_id`, by id.
    pub async fn snapshots(&self, volume_id: u64) -> Result<Vec<SnapshotRecord>> {
        let rows = self.store.range(keys::snapshot_prefix(volume_id).as_bytes()).await?;
        let mut snaps: Vec<SnapshotRecord> = rows.iter().map(|(k, v)| parse(k, &v.value)).collect::<Result<_>>()?;
        snaps.sort_by_key(|s| s.id);
        Ok(snaps)
    }

    /// Volume `volume` and its snapshot named `snapshot` (`VolumeNotFound`, `SnapshotNotFound`).
    pub async fn snapshot_by_name(&self, volume: &str, snapshot: &str) -> Result<(VolumeRecord, SnapshotRecord)> {
        let vol = self.volume(volume).await?;
        let snaps = self.snapshots(vol.id).await?;
        let rec = find_snapshot(&vol, &snaps, snapshot)?;
        Ok((vol, rec))
    }

    /// Takes snapshot `name` of an active volume: records it with the next snapshot id (the
    /// volume's current size) and makes that id the volume's `snap_seq`, in one map change;
    /// then waits for the snapshot fence. Once this returns `Ok`, every
    /// write still to land carries the new snapshot context, so the snapshot holds exactly
    /// the writes acknowledged before the call (and maybe some of those in flight during it).
    /// Names are unique per volume; at most [`validate::MAX_SNAPSHOTS`] per volume.
    ///
    /// `FenceTimeout` if live sessions still had not acknowledged after the session TTL plus
    /// [`FENCE_SLACK`]: the snapshot is recorded nonetheless (it is not rolled back), but it
    /// is not known to be point-in-time.
    pub async fn create_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotRecord> {
        validate::name("snapshot name", name)?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let vol = self.volume(volume).await?;
            require_active(&vol)?;
            let snaps = self.snapshots(vol.id).await?;
            if snaps.iter().any(|s| s.name == name) {
                return Err(MonError::SnapshotExists { volume: volume.into(), snapshot: name.into() });
            }
            if snaps.len() >= validate::MAX_SNAPSHOTS {
                return Err(MonError::TooManySnapshots { volume: volume.into(), limit: validate::MAX_SNAPSHOTS });
            }
            // Ids start at 1: a `snap_seq` of 0 means "no snapshot".
            let id = snap.head.next_snapshot_id.max(1);
            let overlap = vol.parent.map(|p| p.overlap);
            let rec = SnapshotRecord { id, volume_id: vol.id, name: name.into(), size: vol.size, created_ms: now_ms(), overlap };
            let vol = VolumeRecord { snap_seq: id, snap_epoch: snap.head.epoch + 1, ..vol };
            let mut plan = Plan::default();
            plan.put(keys::snapshot(vol.id, id), &rec)?;
            plan.put(keys::volume(vol.id), &vol)?;
            let head = Head { next_snapshot_id: id + 1, ..snap.head.clone() };
            if let Some(epoch) = self.commit(&snap, head, plan, None).await? {
                tracing::info!(volume = %volume, snapshot = %name, id, epoch, "snapshot created");
                self.fence(&vol, name, epoch).await?;
                return Ok(rec);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Deletes snapshot `name` of an active volume and sets the volume's `snap_seq` to its
    /// greatest remaining snapshot id (0 if none), in one map change; then waits for the
    /// snapshot fence, as [`Service::create_snapshot`] (`FenceTimeout` likewise: the snapshot
    /// is deleted nonetheless). Refused with `SnapshotHasClones` while a volume was cloned
    /// from it and not yet flattened, and with `SnapshotInUse` while a live session lists it
    /// among its read-only `snapshots`.
    ///
    /// The readers are checked *before* the commit, by a plain read (unlike the
    /// commit-then-check of [`Service::delete_volume`]): a client that puts its session
    /// listing the snapshot just after that read and reads the snapshot record just before
    /// the commit opens a view of a snapshot that is deleted right away (its reads may then
    /// see the snapshot's data being trimmed). The window is one store round trip wide, and
    /// only opens when an operator deletes a snapshot while exporting it.
    pub async fn delete_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let vol = self.volume(volume).await?;
            let snaps = self.snapshots(vol.id).await?;
            let rec = find_snapshot(&vol, &snaps, name)?;
            require_active(&vol)?;
            let clones: Vec<String> = self
                .list_volumes()
                .await?
                .into_iter()
                .filter(|v| v.parent.is_some_and(|p| p.is_snapshot(vol.id, rec.id)))
                .map(|v| v.name)
                .collect();
            if !clones.is_empty() {
                return Err(MonError::SnapshotHasClones { volume: volume.into(), snapshot: name.into(), clones });
            }
            let readers = self.sessions().await?.iter().filter(|s| s.reads(rec.id)).count();
            if readers > 0 {
                return Err(MonError::SnapshotInUse { volume: volume.into(), snapshot: name.into(), sessions: readers });
            }
            let snap_seq = snaps.iter().filter(|s| s.id != rec.id).map(|s| s.id).max().unwrap_or(0);
            let snap_epoch = if snap_seq == vol.snap_seq { vol.snap_epoch } else { snap.head.epoch + 1 };
            let vol = VolumeRecord { snap_seq, snap_epoch, ..vol };
            let mut plan = Plan::default();
            plan.delete(keys::snapshot(vol.id, rec.id));
            plan.put(keys::volume(vol.id), &vol)?;
            if let Some(epoch) = self.commit(&snap, snap.head.clone(), plan, None).await? {
                tracing::info!(volume = %volume, snapshot = %name, id = rec.id, snap_seq, epoch, "snapshot deleted");
                self.fence(&vol, name, epoch).await?;
                return Ok(rec);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Starts rolling volume `volume` back to its snapshot `snapshot`: the volume becomes
    /// `RollingBack` with `rollback_to` = the snapshot's id and the snapshot's size (a clone's
    /// parent overlap becomes the one the snapshot was taken with, capped by its size). The caller
    /// then copies the snapshot's data over the volume's and calls
    /// [`Service::finish_rollback`]. Returns the updated volume and the snapshot. The volume
    /// must be active (`VolumeBusy`) and open by no live session (`VolumeInUse`).
    ///
    /// Ordering against a client opening the volume (which puts its session, then reads the
    /// volume and refuses unless it is `active`): `RollingBack` is committed *first*, the
    /// sessions are read *after*. Either the client's read follows the commit (it sees
    /// `rolling_back` and refuses) or its put precedes the session read here (this sees it),
    /// so no client has the volume open while its data is replaced. Had the sessions been
    /// checked before the commit, a client could slip in between. If a live session lists
    /// the volume, the change is reverted in a second CAS commit (`Active` again,
    /// `rollback_to` cleared, the old size and overlap) and `VolumeInUse` is returned; so a
    /// refusal advances the epoch by two. The client may have refused too (it saw
    /// `rolling_back` before the revert): both back off.
    ///
    /// If the volume is already rolling back to this snapshot, returns them as they are,
    /// nothing written (resume), unless a live session lists the volume (a client
    /// registered while an earlier attempt failed between its commit and its check): then
    /// `VolumeInUse` and the volume stays `RollingBack`; rerun once that client is
    /// disconnected.
    pub async fn begin_rollback(&self, volume: &str, snapshot: &str) -> Result<(VolumeRecord, SnapshotRecord)> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let (old, rec) = self.snapshot_by_name(volume, snapshot).await?;
            if old.state == VolumeState::RollingBack && old.rollback_to == Some(rec.id) {
                self.refuse_if_open(&old).await?;
                return Ok((old, rec));
            }
            require_active(&old)?;
            let vol = VolumeRecord {
                state: VolumeState::RollingBack,
                rollback_to: Some(rec.id),
                size: rec.size,
                // The heads become the snapshot's versions: what read through to the parent
                // then reads through again, up to the overlap the snapshot had.
                parent: old.parent.map(|p| ParentRef { overlap: rec.overlap.unwrap_or(p.overlap).min(rec.size), ..p }),
                ..old.clone()
            };
            let Some(epoch) = self.update_volume(&snap, &vol).await? else { continue };
            tracing::info!(volume = %volume, snapshot = %snapshot, id = rec.id, epoch, "volume rollback started");
            self.revert_if_open(&vol, &old).await?;
            return Ok((vol, rec));
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Ends a rollback (the caller has copied the snapshot's data): the volume becomes
    /// active again. Refused unless the volume is `RollingBack`.
    pub async fn finish_rollback(&self, volume: &str) -> Result<VolumeRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let vol = self.volume(volume).await?;
            match vol.state {
                VolumeState::RollingBack => {}
                VolumeState::Active => {
                    return Err(MonError::invalid(
                        "state",
                        format!("volume {volume:?} is active, not being rolled back; start a rollback first (POST /api/v1/volumes/{volume}/snapshots/<snapshot>/rollback)"),
                    ))
                }
                VolumeState::Deleting => require_active(&vol)?,
            }
            let vol = VolumeRecord { state: VolumeState::Active, rollback_to: None, ..vol };
            if let Some(epoch) = self.update_volume(&snap, &vol).await? {
                tracing::info!(volume = %volume, epoch, "volume rollback finished");
                return Ok(vol);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Creates volume `new_name` as a clone of snapshot `snapshot` of volume `volume`: same
    /// pool and object size, the snapshot's size, `parent` naming the snapshot with
    /// `overlap` = the snapshot's size (reads of data the clone has not written yet go to
    /// it, up to the overlap). Names are unique (`VolumeExists`).
    pub async fn clone_snapshot(&self, volume: &str, snapshot: &str, new_name: &str) -> Result<VolumeRecord> {
        validate::name("volume name", new_name)?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let (src, rec) = self.snapshot_by_name(volume, snapshot).await?;
            let vol = VolumeRecord {
                id: snap.head.next_volume_id,
                name: new_name.into(),
                pool_id: src.pool_id,
                size: rec.size,
                object_size: src.object_size,
                created_ms: now_ms(),
                parent: Some(ParentRef { volume_id: src.id, snapshot_id: rec.id, overlap: rec.size }),
                snap_seq: 0,
                snap_epoch: 0,
                state: VolumeState::Active,
                rollback_to: None,
            };
            if let Some(epoch) = self.add_volume(&snap, &vol).await? {
                tracing::info!(volume = %new_name, id = vol.id, parent = %volume, snapshot = %snapshot, epoch, "volume cloned");
                return Ok(vol);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Records that a clone no longer needs its parent snapshot (the caller has copied the
    /// parent's data into it): clears `parent`. A volume without a parent is returned as is.
    /// Refused with `CloneHasSnapshots` while the clone has snapshots of its own: they read
    /// what the clone had not written through to the parent too, and the copy fills only
    /// the clone's head. The snapshots are read after `map/head`, and the commit compares
    /// it, so a snapshot created concurrently makes this re-plan and refuse.
    pub async fn flatten_done(&self, volume: &str) -> Result<VolumeRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let vol = self.volume(volume).await?;
            if vol.parent.is_none() {
                return Ok(vol);
            }
            let snapshots = self.snapshots(vol.id).await?.len();
            if snapshots > 0 {
                return Err(MonError::CloneHasSnapshots { name: volume.into(), snapshots });
            }
            let vol = VolumeRecord { parent: None, ..vol };
            if let Some(epoch) = self.update_volume(&snap, &vol).await? {
                tracing::info!(volume = %volume, epoch, "volume flattened");
                return Ok(vol);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Creates or renews `client`'s session: it lives the session TTL from now. Not a map
    /// change (the epoch stays). A put with a newer `epoch` is how a client acknowledges a
    /// new snapshot context (see `Service::fence`).
    pub async fn put_session(&self, client: u64, upd: &SessionUpdate) -> Result<SessionLease> {
        validate::agent(&upd.agent)?;
        if upd.volumes.len() > validate::MAX_SESSION_VOLUMES {
            return Err(MonError::invalid(
                "volumes",
                format!("{} volumes in one session; the limit is {}", upd.volumes.len(), validate::MAX_SESSION_VOLUMES),
            ));
        }
        if upd.snapshots.len() > validate::MAX_SESSION_SNAPSHOTS {
            return Err(MonError::invalid(
                "snapshots",
                format!("{} snapshots in one session; the limit is {}", upd.snapshots.len(), validate::MAX_SESSION_SNAPSHOTS),
            ));
        }
        let ttl_ms = u64::try_from(self.session_ttl.as_millis()).unwrap_or(u64::MAX);
        let rec = SessionRecord {
            client,
            epoch: upd.epoch,
            volumes: upd.volumes.clone(),
            snapshots: upd.snapshots.clone(),
            agent: upd.agent.clone(),
            expires_ms: now_ms().saturating_add(ttl_ms),
        };
        let key = keys::session(client);
        let res = self.store.txn(Txn::put(key.clone(), json(&rec)?)).await?;
        // Its lifetime on this mon counts from now (`sessions`).
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(key.into_bytes(), (res.revision, std::time::Instant::now()));
        Ok(SessionLease { ttl_ms, expires_ms: rec.expires_ms })
    }

    /// Ends `client`'s session. Idempotent: `Ok(false)` if it had none.
    pub async fn delete_session(&self, client: u64) -> Result<bool> {
        let key = keys::session(client);
        let existed = self.store.get(key.as_bytes()).await?.is_some();
        self.store.txn(Txn::delete(key)).await?;
        Ok(existed)
    }

    /// The live sessions, by client id. Expired ones are deleted on the way, each only if it
    /// was not renewed meanwhile.
    ///
    /// Liveness is judged on this mon's monotonic clock, never by comparing another
    /// machine's wall clock: a session lives `session_ttl` past the moment this mon first
    /// saw its record at its current revision (its own puts count from the put). A mon that
    /// has just started, or that was away, therefore sees every session live for a full TTL,
    /// which only errs on the side of "still open". `expires_ms` in the record is for
    /// operators only.
    pub async fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let rows = self.store.range(keys::SESSION_PREFIX.as_bytes()).await?;
        let now = std::time::Instant::now();
        let mut live = Vec::new();
        let mut expired = Vec::new();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|k, _| rows.iter().any(|(key, _)| key == k));
            for (key, v) in rows {
                let since = match seen.get(&key) {
                    Some((rev, t)) if *rev == v.mod_revision => *t,
                    _ => {
                        seen.insert(key.clone(), (v.mod_revision, now));
                        now
                    }
                };
                if now.duration_since(since) < self.session_ttl {
                    live.push(parse::<SessionRecord>(&key, &v.value)?);
                } else {
                    expired.push((key, v.mod_revision));
                }
            }
        }
        for (key, revision) in expired {
            let unchanged = Compare::ModRevision { key: key.clone(), revision };
            self.store.txn(Txn { compares: vec![unchanged], success: vec![TxnOp::Delete { key }], failure: vec![] }).await?;
        }
        Ok(live)
    }

    /// How many live sessions hold volume `volume_id` open.
    async fn open_sessions(&self, volume_id: u64) -> Result<usize> {
        Ok(self.sessions().await?.iter().filter(|s| s.holds(volume_id)).count())
    }

    /// Refuses with `VolumeInUse` while a live session holds `vol` open.
    async fn refuse_if_open(&self, vol: &VolumeRecord) -> Result<()> {
        match self.open_sessions(vol.id).await? {
            0 => Ok(()),
            sessions => Err(MonError::VolumeInUse { name: vol.name.clone(), sessions }),
        }
    }

    /// The mon's half of the store-then-load fence of [`Service::begin_rollback`] and
    /// [`Service::delete_volume`], run after `committed` (the volume leaving `Active`) was
    /// committed: reads the live sessions and, if one holds the volume open, puts `old` back
    /// in a second CAS commit and returns `VolumeInUse`. The revert is planned on a fresh
    /// read and only applied while the volume's record is still exactly `committed` (if
    /// another change moved it on meanwhile, that one stands). `Contended` if the revert
    /// itself lost too many races (the volume then stays as committed; rerunning the
    /// operation resumes it and refuses while the session lives).
    async fn revert_if_open(&self, committed: &VolumeRecord, old: &VolumeRecord) -> Result<()> {
        let sessions = self.open_sessions(committed.id).await?;
        if sessions == 0 {
            return Ok(());
        }
        let in_use = MonError::VolumeInUse { name: committed.name.clone(), sessions };
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let key = keys::volume(committed.id);
            let current: Option<VolumeRecord> = match self.store.get(key.as_bytes()).await? {
                Some(v) => Some(parse(key.as_bytes(), &v.value)?),
                None => None,
            };
            if current.as_ref() != Some(committed) {
                tracing::warn!(volume = %committed.name, "a client opened the volume, but its record changed before it could be reverted");
                return Err(in_use);
            }
            if let Some(epoch) = self.update_volume(&snap, old).await? {
                tracing::info!(volume = %old.name, state = %committed.state, sessions, epoch, "a client opened the volume meanwhile; change reverted");
                return Err(in_use);
            }
        }
        Err(MonError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// The snapshot fence, after a change of `vol`'s snapshot context committed at map
    /// `epoch`: waits until every live session holding `vol` has acknowledged an epoch
    /// `>= epoch` (put itself with it) or has expired. A client acknowledges once it writes
    /// with the new context, and one that cannot renew its session stops writing before it
    /// expires; so when the fence passes, no write with the old context can still land.
    ///
    /// Polls the sessions every 20 ms. Gives up after the session TTL + [`FENCE_SLACK`] with
    /// `FenceTimeout` naming how many clients are still pending (by then every session that
    /// has not acknowledged should have expired; one still live renews without acknowledging,
    /// a client bug, and its writes may still carry the old context). A store error while
    /// polling is retried until then, and returned if the last poll failed too. The change
    /// itself (`snapshot`, created or deleted) is committed either way.
    async fn fence(&self, vol: &VolumeRecord, snapshot: &str, epoch: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.session_ttl + FENCE_SLACK;
        loop {
            let pending = self.sessions().await.map(|sessions| unacknowledged(&sessions, vol.id, epoch));
            if pending.as_ref().is_ok_and(Vec::is_empty) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let clients = pending?;
                tracing::warn!(volume = %vol.name, snapshot, epoch, ?clients, "clients did not acknowledge the new snapshot context before their sessions should have expired");
                return Err(MonError::FenceTimeout { volume: vol.name.clone(), snapshot: snapshot.into(), clients: clients.len() });
            }
            tokio::time::sleep(FENCE_POLL).await;
        }
    }

    /// The active mon's published address, if any.
    pub async fn active_mon(&self) -> Result<Option<String>> {
        Ok(self.store.get(keys::ELECTION.as_bytes()).await?.map(|v| String::from_utf8_lossy(&v.value).into_owned()))
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        let snapshot = self.snapshot().await?;
        let next_snapshot_id = snapshot.head.next_snapshot_id.max(1);
        let map = snapshot.map;
        let volumes = self.list_volumes().await?;
        let mut pgs_by_health = BTreeMap::new();
        for h in ["healthy", "degraded", "unavailable"] {
            pgs_by_health.insert(h.to_string(), 0);
        }
        let mut pgs_total = 0;
        for t in &map.pg_tables {
            for e in &t.pgs {
                pgs_total += 1;
                *pgs_by_health.entry(crate::model::PgHealth::of(e, &map).as_str().to_string()).or_insert(0) += 1;
            }
        }
        Ok(ClusterStatus {
            epoch: map.epoch,
            next_snapshot_id,
            osds_total: map.osds.len(),
            osds_up: map.osds.iter().filter(|o| o.up).count(),
            osds_in: map.osds.iter().filter(|o| o.in_).count(),
            pools: map.pools.len(),
            pgs_total,
            pgs_by_health,
            volumes: volumes.len(),
            volumes_deleting: volumes.iter().filter(|v| v.state == VolumeState::Deleting).count(),
            provisioned_bytes: volumes.iter().map(|v| v.size).sum(),
            raw_capacity_bytes: map.osds.iter().filter(|o| o.in_).map(|o| o.capacity_bytes).sum(),
            active_mon: self.active_mon().await?,
            pgs_by_state: None,
            osds_by_space: None,
        })
    }
}

/// At most 8 names, then how many more.
fn short_list(items: &[String]) -> String {
    let mut s = items.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 8 {
        s.push_str(&format!(" and {} more", items.len() - 8));
    }
    s
}
