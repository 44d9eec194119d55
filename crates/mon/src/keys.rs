//! Key layout of the cluster map in the metastore. Values are JSON of the [`crate::model`]
//! records.
//!
//! ```text
//! map/head                  Head (epoch, id counters)          every change rewrites it
//! map/osd/<id:010>          OsdRecord
//! map/osd-uuid/<uuid>       OSD id (decimal): registration is idempotent per device
//! map/pool/<id:010>         PoolRecord
//! map/pool-name/<name>      pool id (decimal): names are unique
//! map/pg/<pool id:010>      PgTable
//! map/config                ClusterConfig (space ratios)
//! vol/id/<id:020>           VolumeRecord
//! vol/name/<name>           volume id (decimal): names are unique
//! snap/<volume id:020>/<snapshot id:020>   SnapshotRecord
//! sess/<client id:020>      SessionRecord (not part of the map: no epoch change)
//! election/mon              the active mon's address while it leads (leased)
//! ```
//!
//! Everything under `map/` is read in one consistent `range` to build a
//! [`crate::model::ClusterMap`]. Every write transaction compares `map/head`'s mod revision
//! (and rewrites it with the next epoch), which serializes all changes of the map: a change
//! computed from a stale read fails its compare and is recomputed. Sessions are the exception:
//! they are client liveness, not map state, and are written with plain puts and deletes.

pub const MAP_PREFIX: &str = "map/";
pub const HEAD: &str = "map/head";
pub const OSD_PREFIX: &str = "map/osd/";
pub const POOL_PREFIX: &str = "map/pool/";
pub const PG_PREFIX: &str = "map/pg/";
pub const CONFIG: &str = "map/config";
pub const VOLUME_PREFIX: &str = "vol/id/";
pub const SESSION_PREFIX: &str = "sess/";
pub const ELECTION: &str = "election/mon";

pub fn osd(id: u32) -> String {
    format!("map/osd/{id:010}")
}
pub fn osd_uuid(uuid: &str) -> String {
    format!("map/osd-uuid/{uuid}")
}
pub fn pool(id: u32) -> String {
    format!("map/pool/{id:010}")
}
pub fn pool_name(name: &str) -> String {
    format!("map/pool-name/{name}")
}
pub fn pg_table(pool_id: u32) -> String {
    format!("map/pg/{pool_id:010}")
}
pub fn volume(id: u64) -> String {
    format!("vol/id/{id:020}")
}
pub fn volume_name(name: &str) -> String {
    format!("vol/name/{name}")
}
pub fn snapshot_prefix(volume_id: u64) -> String {
    format!("snap/{volume_id:020}/")
}
pub fn snapshot(volume_id: u64, snapshot_id: u64) -> String {
    format!("snap/{volume_id:020}/{snapshot_id:020}")
}
pub fn session(client: u64) -> String {
    format!("sess/{client:020}")
}
