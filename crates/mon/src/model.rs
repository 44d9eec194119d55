//! The cluster map's records, as stored in the metastore and served by the API (JSON).
//!
//! Versioning: every change to any record bumps [`Head::epoch`] in the same metastore
//! transaction, so the epoch names one exact state of the whole map. A PG's
//! [`PgEntry::epoch`] is the map epoch at which its OSD set last changed: an OSD or client
//! holding a PG map of an older epoch for that PG is stale and must refetch.

use serde::{Deserialize, Serialize};
use tessera_placement::FailureDomain;

/// Cluster-wide counters, stored once. Ids are never reused: a deleted volume's objects may
/// still sit on OSDs, and a new volume must never be mistaken for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Map epoch: advanced by exactly one by every change of the map.
    pub epoch: u64,
    pub next_osd_id: u32,
    pub next_pool_id: u32,
    pub next_volume_id: u64,
    pub next_snapshot_id: u64,
    /// Wall-clock time of the last change (unix milliseconds), for operators only.
    pub changed_ms: u64,
}

/// Why an OSD is out of the data distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutReason {
    /// `tessera osd out`: stays out until `tessera osd in`.
    Admin,
    /// Marked out by the failure detector after being down for the out grace period;
    /// marked in again automatically once it is back up (and stable).
    Down,
}

/// One OSD (one device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OsdRecord {
    pub id: u32,
    /// Identity of the device (from the OSD's superblock): re-registering the same uuid
    /// returns the same id.
    pub uuid: String,
    /// Where the OSD serves its data protocol (`host:port`).
    pub addr: String,
    /// Failure domain at host level (machine name).
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// The device or file path on its host, for operators.
    pub device: String,
    pub capacity_bytes: u64,
    /// Placement weight (default: capacity in TiB, at least 2^-16).
    pub weight: f64,
    /// Heartbeating within the down grace period.
    pub up: bool,
    /// Part of the data distribution (placement only considers `in` OSDs).
    #[serde(rename = "in")]
    pub in_: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_reason: Option<OutReason>,
    /// Unix ms of the last up/down change.
    pub since_ms: u64,
}

/// The failure-domain level, as spelled in the API (`osd`, `host`, `rack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainLevel {
    Osd,
    #[default]
    Host,
    Rack,
}

impl From<DomainLevel> for FailureDomain {
    fn from(d: DomainLevel) -> Self {
        match d {
            DomainLevel::Osd => FailureDomain::Osd,
            DomainLevel::Host => FailureDomain::Host,
            DomainLevel::Rack => FailureDomain::Rack,
        }
    }
}

impl std::fmt::Display for DomainLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DomainLevel::Osd => "osd",
            DomainLevel::Host => "host",
            DomainLevel::Rack => "rack",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub id: u32,
    pub name: String,
    /// Replicas per PG (each PG is one Raft group of this many members).
    pub replicas: u32,
    pub pg_count: u32,
    pub failure_domain: DomainLevel,
    pub created_ms: u64,
    /// The map epoch that created the pool. A PG whose entry still carries this epoch has
    /// never moved: its replicas bootstrap its Raft group together; replicas added later
    /// join through the group's leader.
    #[serde(default)]
    pub created_epoch: u64,
}

/// One PG's placement: `(epoch, osds)`, serialized as a two-element array to keep large
/// PG tables small. `osds[0]` is the preferred primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgEntry(pub u64, pub Vec<u32>);

impl PgEntry {
    /// Map epoch at which this PG's OSD set last changed.
    pub fn epoch(&self) -> u64 {
        self.0
    }
    pub fn osds(&self) -> &[u32] {
        &self.1
    }
}

/// All PGs of one pool, indexed by PG number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgTable {
    pub pool_id: u32,
    pub pgs: Vec<PgEntry>,
}

/// A snapshot a clone was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub volume_id: u64,
    pub snapshot_id: u64,
    /// How many bytes of the clone (from offset 0) still read through to the parent
    /// snapshot where the clone has not written. Data past `overlap` that the clone has not
    /// written reads as zeros, never as the parent's. Set to the snapshot's size by a clone;
    /// lowered by a shrink below it (in the same map change), never raised again (growing
    /// the clone back leaves it). Records written before this field existed read as
    /// [`u64::MAX`] (everything reads through, bounded by the parent snapshot's size).
    #[serde(default = "overlap_unknown")]
    pub overlap: u64,
}

/// [`ParentRef::overlap`] of records written before it existed: no limit.
fn overlap_unknown() -> u64 {
    u64::MAX
}

impl ParentRef {
    /// Whether this names snapshot `snapshot_id` of volume `volume_id` (whatever the overlap).
    pub fn is_snapshot(&self, volume_id: u64, snapshot_id: u64) -> bool {
        self.volume_id == volume_id && self.snapshot_id == snapshot_id
    }

    /// This parent ref after the clone's size became `size`: the overlap never exceeds a
    /// size the clone has had since it was made (lowered by a shrink, kept by a growth).
    pub fn shrunk_to(self, size: u64) -> Self {
        ParentRef { overlap: self.overlap.min(size), ..self }
    }
}

/// Where a volume is in its lifecycle. Only an `Active` volume takes IO and map changes
/// (resize, snapshots); the other states are resumable multi-step operations driven by a
/// client (the CLI), which re-runs the operation to resume it after a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    #[default]
    Active,
    /// The volume's data is being replaced by a snapshot's (see [`VolumeRecord::rollback_to`]);
    /// no client may have it open.
    RollingBack,
    /// The volume's objects are being dropped from the OSDs; the record (and so the name)
    /// goes away when that is done (`purge`).
    Deleting,
}

impl VolumeState {
    /// The state as spelled in the API (`active`, `rolling_back`, `deleting`).
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Active => "active",
            VolumeState::RollingBack => "rolling_back",
            VolumeState::Deleting => "deleting",
        }
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: u64,
    pub name: String,
    pub pool_id: u32,
    /// Bytes; a multiple of 4096.
    pub size: u64,
    /// Bytes per object; a power of two.
    pub object_size: u64,
    pub created_ms: u64,
    /// The snapshot this volume was cloned from, until it is flattened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Id of the volume's newest live snapshot (0: none). Writers send it with every write
    /// as their snapshot context; it changes when a snapshot is created or deleted (then it
    /// is the greatest remaining snapshot id).
    #[serde(default)]
    pub snap_seq: u64,
    /// The map epoch at which `snap_seq` last changed: PGs keep the context pushed with the
    /// highest one (`tessera_wire::OpCode::SnapSeq`), so pushes cannot go back in time.
    #[serde(default)]
    pub snap_epoch: u64,
    #[serde(default)]
    pub state: VolumeState,
    /// The snapshot being rolled back to, while `state == RollingBack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// From the cluster-wide snapshot counter: unique across volumes, never reused, >= 1.
    pub id: u64,
    pub volume_id: u64,
    pub name: String,
    /// Volume size when the snapshot was taken.
    pub size: u64,
    pub created_ms: u64,
    /// For a snapshot of a clone: the clone's parent overlap when it was taken (reads of the
    /// snapshot go through to the parent up to it, whatever the clone's overlap is now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<u64>,
}

/// A client that has volumes open for IO (an NBD gateway, ...), kept alive by renewing it
/// before `expires_ms`. Not part of the map: changing it does not advance the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Chosen by the client; unique per client process.
    pub client: u64,
    /// The newest map epoch the client has acted on: it writes with the `snap_seq` of its
    /// volumes as of this epoch (or newer).
    pub epoch: u64,
    /// Ids of the volumes the client has open.
    pub volumes: Vec<u64>,
    /// Ids of the snapshots the client has open read-only (`VOL@SNAP` exports). Empty in
    /// records written before this field existed.
    #[serde(default)]
    pub snapshots: Vec<u64>,
    /// What the client is, for operators (e.g. `nbd@host1`).
    pub agent: String,
    /// Unix ms after which the session is dead; the client must have stopped writing by then.
    pub expires_ms: u64,
}

impl SessionRecord {
    /// Holds volume `volume_id` open (liveness is the mon's judgement, `Service::sessions`).
    pub fn holds(&self, volume_id: u64) -> bool {
        self.volumes.contains(&volume_id)
    }

    /// Holds snapshot `snapshot_id` open read-only.
    pub fn reads(&self, snapshot_id: u64) -> bool {
        self.snapshots.contains(&snapshot_id)
    }
}

/// The part of the map OSDs and clients need to route IO: OSDs, pools, PG tables, at one
/// epoch. Volumes are looked up by name separately (there may be many).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub epoch: u64,
    pub osds: Vec<OsdRecord>,
    pub pools: Vec<PoolRecord>,
    pub pg_tables: Vec<PgTable>,
    /// Cluster-wide settings OSDs act on (stored at `map/config`).
    #[serde(default)]
    pub config: ClusterConfig,
}

/// Cluster-wide settings in the map (`tessera cluster config`), so every OSD acts on the same
/// values and learns a change with the next map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub space: SpaceRatios,
}

/// Device fullness thresholds, as fractions of an OSD's capacity held by live data (Ceph's
/// `nearfull`, `backfillfull` and `full` ratios):
/// - `nearfull`: a warning in `cluster status`, `osd list` and `/metrics`; nothing changes;
/// - `backfillfull`: the OSD copies in no PG (backfill, recovery onto it) that would take it
///   past this; such a move waits (`+backfill_toofull`) until there is room;
/// - `full`: the OSD takes no new data: client writes to PGs it leads are refused with
///   `NoSpace` (NBD `ENOSPC`) unless it can hand leadership to a replica with room, and as a
///   follower it stops accepting log entries that carry data (its leader commits with the
///   other replicas; when fewer than a majority have room, writes get `NoSpace`). Trims and
///   deletes are still taken everywhere, so space can be given back.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceRatios {
    pub nearfull: f64,
    pub backfillfull: f64,
    pub full: f64,
}

impl Default for SpaceRatios {
    fn default() -> Self {
        SpaceRatios { nearfull: 0.80, backfillfull: 0.85, full: 0.90 }
    }
}

/// Highest `full` ratio allowed: the log-structured engine needs free segments to clean.
pub const MAX_FULL_RATIO: f64 = 0.95;

impl SpaceRatios {
    /// `0 < nearfull <= backfillfull <= full <= MAX_FULL_RATIO`.
    pub fn check(&self) -> Result<(), String> {
        let ok = |r: f64| r.is_finite() && r > 0.0;
        if !(ok(self.nearfull) && ok(self.backfillfull) && ok(self.full)) {
            return Err("every ratio must be a number above 0".into());
        }
        if !(self.nearfull <= self.backfillfull && self.backfillfull <= self.full) {
            return Err(format!("need nearfull <= backfillfull <= full, got {} / {} / {}", self.nearfull, self.backfillfull, self.full));
        }
        if self.full > MAX_FULL_RATIO {
            return Err(format!("full may be at most {MAX_FULL_RATIO} (the storage engine needs free space to clean), got {}", self.full));
        }
        Ok(())
    }

    /// How full a device with this fraction of live data is.
    pub fn classify(&self, used: f64) -> SpaceState {
        if used >= self.full {
            SpaceState::Full
        } else if used >= self.backfillfull {
            SpaceState::Backfillfull
        } else if used >= self.nearfull {
            SpaceState::Nearfull
        } else {
            SpaceState::Ok
        }
    }
}

/// An OSD's fullness, as `osd list`, `cluster status`, the API and `/metrics` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpaceState {
    Ok,
    Nearfull,
    Backfillfull,
    Full,
}

impl SpaceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SpaceState::Ok => "ok",
            SpaceState::Nearfull => "nearfull",
            SpaceState::Backfillfull => "backfillfull",
            SpaceState::Full => "full",
        }
    }
}

impl ClusterMap {
    pub fn osd(&self, id: u32) -> Option<&OsdRecord> {
        self.osds.iter().find(|o| o.id == id)
    }
    pub fn pool_by_name(&self, name: &str) -> Option<&PoolRecord> {
        self.pools.iter().find(|p| p.name == name)
    }
    pub fn pool(&self, id: u32) -> Option<&PoolRecord> {
        self.pools.iter().find(|p| p.id == id)
    }
    pub fn pg_table(&self, pool_id: u32) -> Option<&PgTable> {
        self.pg_tables.iter().find(|t| t.pool_id == pool_id)
    }
}

/// Health of one PG as far as the mon can tell from OSD liveness alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgHealth {
    /// Every replica's OSD is up.
    Healthy,
    /// A majority is up: the Raft group can serve IO, with less redundancy.
    Degraded,
    /// No majority up: the PG cannot serve IO.
    Unavailable,
}

impl PgHealth {
    pub fn of(entry: &PgEntry, map: &ClusterMap) -> PgHealth {
        let up = entry.osds().iter().filter(|id| map.osd(**id).is_some_and(|o| o.up)).count();
        let n = entry.osds().len();
        if up == n {
            PgHealth::Healthy
        } else if up * 2 > n {
            PgHealth::Degraded
        } else {
            PgHealth::Unavailable
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PgHealth::Healthy => "healthy",
            PgHealth::Degraded => "degraded",
            PgHealth::Unavailable => "unavailable",
        }
    }
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    real.saturating_add_signed(clock_skew_ms())
}

/// Testing only: `TESSERA_MON_CLOCK_SKEW_MS` (signed milliseconds, read once) shifts this
/// process's wall clock, to show that no correctness decision depends on two machines'
/// clocks agreeing (`tessera/tests/snapshot_context.rs`).
fn clock_skew_ms() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| std::env::var("TESSERA_MON_CLOCK_SKEW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}
