//! The crate's one error enum. Every variant names the ids or values needed to fix the input.

use crate::topology::FailureDomain;

/// Why a topology, a rule or a placement request was rejected. Nothing in this crate panics
/// on bad input; it returns one of these instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("duplicate OSD id {id}")]
    DuplicateOsd { id: u32 },
    #[error("OSD {osd} has invalid weight {weight}: weights must be finite, >= 0 and <= {max}", max = crate::MAX_WEIGHT)]
    InvalidWeight { osd: u32, weight: f64 },
    #[error("OSD {osd} has an empty host name")]
    EmptyHost { osd: u32 },
    #[error("host {host:?} is listed in two racks: {first:?} and {second:?}")]
    HostInTwoRacks { host: String, first: Option<String>, second: Option<String> },
    #[error("the rule's failure domain is rack but OSD {osd} (in, non-zero weight) has no rack")]
    MissingRack { osd: u32 },
    /// Also returned when every OSD is out or has zero weight (`available == 0`).
    #[error("pool needs {needed} {domain} with in OSDs of non-zero weight, cluster has {available}")]
    NotEnoughDomains { domain: FailureDomain, needed: usize, available: usize },
    #[error("invalid pool rule: {reason}")]
    InvalidRule { reason: &'static str },
    #[error("PG {pg} does not exist: the pool has {pg_count} PGs")]
    PgOutOfRange { pg: u32, pg_count: u32 },
    #[error("cannot diff placements of different shapes: {old_pgs} PGs x {old_replicas} vs {new_pgs} PGs x {new_replicas}")]
    ShapeMismatch { old_pgs: u32, old_replicas: usize, new_pgs: u32, new_replicas: usize },
}
