//! The mon's one error enum, and its one mapping to HTTP status codes ([`MonError::status`]).
//! Every message names the object and the value at fault, so the CLI can print it as is.

use tessera_metastore::MetaStoreError;
use tessera_placement::PlacementError;

pub type Result<T, E = MonError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum MonError {
    /// The request body or query could not be decoded (malformed JSON, wrong types, unknown
    /// fields, numbers out of range).
    #[error("bad request: {0}")]
    BadRequest(String),

    /// A field is well-formed but its value is not allowed.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    #[error("no such API endpoint; see GET /api/v1/openapi.yaml")]
    NotFoundRoute,
    #[error("method {method} is not allowed on this endpoint; see GET /api/v1/openapi.yaml")]
    MethodNotAllowed { method: String },
    #[error("no volume named {name:?}")]
    VolumeNotFound { name: String },
    #[error("no pool named {name:?}")]
    PoolNotFound { name: String },
    #[error("no OSD with id {id}")]
    OsdNotFound { id: u32 },
    /// `tessera osd rm` of an OSD that is still needed (`why`: in, up, or PGs that still
    /// count it as a member or whose state is unknown).
    #[error("osd {id} cannot be removed: {why}")]
    OsdInUse { id: u32, why: String },
    /// A device that belonged to an OSD removed with `tessera osd rm` tried to register.
    #[error(
        "this device (uuid {uuid}) belonged to osd {id}, which was removed with `tessera osd rm`; wipe it (or use another device) to add it as a new OSD"
    )]
    OsdRemoved { id: u32, uuid: String },
    #[error("a volume named {name:?} already exists")]
    VolumeExists { name: String },
    #[error("a pool named {name:?} already exists")]
    PoolExists { name: String },
    #[error("pool {pool:?} still holds {volumes} volume(s); delete them first")]
    PoolNotEmpty { pool: String, volumes: usize },
    #[error("volume {name:?} has {snapshots} snapshot(s); delete them first")]
    VolumeHasSnapshots { name: String, snapshots: usize },
    #[error("volume {volume:?} has no snapshot named {snapshot:?}")]
    SnapshotNotFound { volume: String, snapshot: String },
    #[error("volume {volume:?} already has a snapshot named {snapshot:?}; choose another name")]
    SnapshotExists { volume: String, snapshot: String },
    #[error(
        "snapshot {snapshot:?} of volume {volume:?} is the parent of clone(s) {}; run `tessera volume flatten <clone>` for each (or delete them) to free it",
        quoted_list(clones)
    )]
    SnapshotHasClones { volume: String, snapshot: String, clones: Vec<String> },
    #[error("volume {name:?} is open by {sessions} client(s) (NBD connections); disconnect them first")]
    VolumeInUse { name: String, sessions: usize },
    /// Live sessions hold the snapshot open read-only (`VOL@SNAP` exports).
    #[error(
        "snapshot {snapshot:?} of volume {volume:?} is open read-only by {sessions} client(s); disconnect the readers of {volume}@{snapshot} first"
    )]
    SnapshotInUse { volume: String, snapshot: String, sessions: usize },
    /// `flatten-done` of a clone that has snapshots of its own: they read through to the
    /// parent too, so the clone cannot be detached from it yet.
    #[error(
        "clone {name:?} has {snapshots} snapshot(s), which still read through to its parent snapshot; delete the clone's snapshots first, then flatten it"
    )]
    CloneHasSnapshots { name: String, snapshots: usize },
    /// A snapshot create or delete is committed, but the snapshot fence ran out (session TTL
    /// plus slack) with `clients` live sessions still not acknowledging it.
    #[error(
        "snapshot {snapshot:?} of volume {volume:?} is recorded, but {clients} client(s) did not confirm the new snapshot context in time; writes they make meanwhile may land in the snapshot (check `GET /api/v1/sessions`)"
    )]
    FenceTimeout { volume: String, snapshot: String, clients: usize },
    /// The volume is in the middle of a rollback or a delete (`state` as in the API).
    #[error("{}", busy_message(name, state))]
    VolumeBusy { name: String, state: String },
    #[error("volume {volume:?} has {limit} snapshots, the most a volume may have; delete one first")]
    TooManySnapshots { volume: String, limit: usize },
    #[error(
        "shrinking volume {name:?} from {from} to {to} bytes discards data beyond {to}; pass allow_shrink (CLI: --allow-shrink) to confirm"
    )]
    ShrinkNotConfirmed { name: String, from: u64, to: u64 },

    /// The pool cannot be placed on the OSDs that are in (too few failure domains, missing
    /// racks, ...).
    #[error("pool {pool:?} cannot be placed: {source}")]
    Placement {
        pool: String,
        #[source]
        source: PlacementError,
    },

    /// Only the active mon takes heartbeats and runs failure detection.
    #[error("this mon is not the active one{}", leader.as_deref().map(|l| format!("; the active mon is at {l}")).unwrap_or_else(|| "; no mon is active right now, retry shortly".into()))]
    NotLeader { leader: Option<String> },

    /// This mon lost its leadership while applying a change; nothing was applied.
    #[error("leadership lost while applying a change; nothing was applied, retry")]
    Fenced,

    /// Too many concurrent writers raced this change; nothing was applied.
    #[error("the cluster map changed concurrently {attempts} times; nothing was applied, retry")]
    Contended { attempts: u32 },

    #[error(transparent)]
    Store(#[from] MetaStoreError),

    /// A stored record could not be decoded.
    #[error("cluster map record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// `"a", "b"` (Debug-quoted, comma-separated).
fn quoted_list(items: &[String]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

/// The message of [`MonError::VolumeBusy`]: what the volume is doing and how to get past it.
fn busy_message(name: &str, state: &str) -> String {
    match state {
        "rolling_back" => format!(
            "volume {name:?} is being rolled back to a snapshot; re-run the rollback to finish it (the rollback resumes), then retry"
        ),
        "deleting" => format!("volume {name:?} is being deleted; re-run the delete to finish it (the delete resumes)"),
        other => format!("volume {name:?} is {other}; this operation needs an active volume"),
    }
}

impl MonError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        MonError::Invalid { field, reason: reason.into() }
    }

    /// The HTTP status this error is answered with. 4xx: the request is at fault and
    /// retrying it unchanged fails again; 5xx: the mon or its store is, retry later.
    /// Exception: `503 fence_timeout` reports a change that *is* committed (retrying it
    /// answers `snapshot_exists` / `snapshot_not_found`).
    pub fn status(&self) -> u16 {
        match self {
            MonError::BadRequest(_) | MonError::Invalid { .. } => 400,
            MonError::NotFoundRoute
            | MonError::VolumeNotFound { .. }
            | MonError::PoolNotFound { .. }
            | MonError::OsdNotFound { .. }
            | MonError::SnapshotNotFound { .. } => 404,
            MonError::MethodNotAllowed { .. } => 405,
            MonError::VolumeExists { .. }
            | MonError::PoolExists { .. }
            | MonError::PoolNotEmpty { .. }
            | MonError::VolumeHasSnapshots { .. }
            | MonError::ShrinkNotConfirmed { .. }
            | MonError::SnapshotExists { .. }
            | MonError::SnapshotHasClones { .. }
            | MonError::VolumeInUse { .. }
            | MonError::SnapshotInUse { .. }
            | MonError::CloneHasSnapshots { .. }
            | MonError::VolumeBusy { .. }
            | MonError::TooManySnapshots { .. }
            | MonError::OsdInUse { .. }
            | MonError::OsdRemoved { .. }
            | MonError::Placement { .. } => 409,
            MonError::NotLeader { .. } => 421,
            MonError::Fenced | MonError::Contended { .. } | MonError::FenceTimeout { .. } => 503,
            MonError::Store(MetaStoreError::Unavailable { .. }) => 503,
            MonError::Store(_) | MonError::Corrupt { .. } => 500,
        }
    }

    /// A stable machine-readable code, for scripts (`"volume_not_found"`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            MonError::BadRequest(_) => "bad_request",
            MonError::Invalid { .. } => "invalid_argument",
            MonError::NotFoundRoute => "no_such_endpoint",
            MonError::MethodNotAllowed { .. } => "method_not_allowed",
            MonError::VolumeNotFound { .. } => "volume_not_found",
            MonError::PoolNotFound { .. } => "pool_not_found",
            MonError::OsdNotFound { .. } => "osd_not_found",
            MonError::OsdInUse { .. } => "osd_in_use",
            MonError::OsdRemoved { .. } => "osd_removed",
            MonError::VolumeExists { .. } => "volume_exists",
            MonError::PoolExists { .. } => "pool_exists",
            MonError::PoolNotEmpty { .. } => "pool_not_empty",
            MonError::VolumeHasSnapshots { .. } => "volume_has_snapshots",
            MonError::ShrinkNotConfirmed { .. } => "shrink_not_confirmed",
            MonError::SnapshotNotFound { .. } => "snapshot_not_found",
            MonError::SnapshotExists { .. } => "snapshot_exists",
            MonError::SnapshotHasClones { .. } => "snapshot_has_clones",
            MonError::VolumeInUse { .. } => "volume_in_use",
            MonError::SnapshotInUse { .. } => "snapshot_in_use",
            MonError::CloneHasSnapshots { .. } => "clone_has_snapshots",
            MonError::FenceTimeout { .. } => "fence_timeout",
            MonError::VolumeBusy { .. } => "volume_busy",
            MonError::TooManySnapshots { .. } => "too_many_snapshots",
            MonError::Placement { .. } => "placement_impossible",
            MonError::NotLeader { .. } => "not_leader",
            MonError::Fenced => "fenced",
            MonError::Contended { .. } => "contended",
            MonError::Store(MetaStoreError::Unavailable { .. }) => "store_unavailable",
            MonError::Store(_) => "store_error",
            MonError::Corrupt { .. } => "corrupt",
        }
    }
}
