//! [`Client`]: the handle shared by every task of a process that does IO on tessera volumes.
//!
//! It owns the cluster map (kept current from the mon by a background long poll, or fixed
//! for tests), one multiplexed connection per OSD, the per-PG leader cache, and the request
//! sequencer (a random client id and a seq counter) that makes retries idempotent.
//! Cloning is cheap (one `Arc`); the background task stops when the last clone is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_mon::model::{ClusterMap, VolumeRecord};
use tessera_mon::MonClient;
use tessera_wire::Response;
use tokio::task::JoinHandle;

use crate::conns::Connections;
use crate::error::{ClientError, Result};
use crate::leaders::Leaders;
use crate::map::MapCell;
use crate::options::ClientOptions;
use crate::rmw::BlockLocks;
use crate::route::ObjectRequest;
use crate::seq::Sequencer;
use crate::session::Session;
use crate::volume::Volume;

/// Timeout of one mon API exchange (long polls add their wait to it).
const MON_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) opts: ClientOptions,
    pub(crate) map: Arc<MapCell>,
    pub(crate) mon: Option<Arc<MonClient>>,
    pub(crate) conns: Connections,
    pub(crate) leaders: Leaders,
    pub(crate) seqs: Arc<Sequencer>,
    pub(crate) rmw: BlockLocks,
    /// Serializes a clone's copy-up per object (separate from `rmw`: a read-modify-write
    /// holds its stripe while the write copies up).
    pub(crate) copyups: BlockLocks,
    /// Requests in flight, at most [`MAX_IN_FLIGHT`].
    pub(crate) in_flight: tokio::sync::Semaphore,
    refresher: Option<JoinHandle<()>>,
    pub(crate) session: Option<Arc<Session>>,
    session_task: Option<JoinHandle<()>>,
}

/// Most object requests one client has in flight (well under the 4,096 pairs per client an
/// OSD's dedup table keeps above the client's floor).
pub const MAX_IN_FLIGHT: usize = 1024;

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = &self.refresher {
            t.abort();
        }
        if let Some(t) = &self.session_task {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id()).field("epoch", &self.map().epoch).finish_non_exhaustive()
    }
}

impl Client {
    /// Fetches the cluster map from the mons (`host:port` or `http://host:port`, failing over
    /// between them) and starts keeping it current in the background. Must be called inside
    /// a tokio runtime.
    pub async fn connect(mon_endpoints: &[String], opts: ClientOptions) -> Result<Client> {
        let mon = MonClient::new(mon_endpoints, MON_TIMEOUT).map_err(|source| ClientError::Mon { what: "mon endpoints".into(), source })?;
        let mon = Arc::new(mon);
        let first =
            mon.map(None, Duration::ZERO).await.map_err(|source| ClientError::Mon { what: "fetch the cluster map".into(), source })?;
        let map = Arc::new(MapCell::new(first));
        let refresher = crate::refresh::spawn(mon.clone(), map.clone());
        Ok(Client::build(opts, map, Some(mon), Some(refresher)))
    }

    /// Ends this client's session on the mon (its volumes no longer count as open there).
    /// Call before dropping a client that opened volumes; otherwise the session lapses
    /// after its lease.
    pub async fn close_session(&self) {
        if let Some(s) = &self.inner.session {
            s.end().await;
        }
    }

    /// A client with a fixed map and no mon (tests, tools): the map changes only through
    /// [`Client::install_map`], and [`Client::open_volume`] is unavailable.
    pub fn with_map(map: ClusterMap, opts: ClientOptions) -> Client {
        Client::build(opts, Arc::new(MapCell::new(map)), None, None)
    }

    fn build(opts: ClientOptions, map: Arc<MapCell>, mon: Option<Arc<MonClient>>, refresher: Option<JoinHandle<()>>) -> Client {
        let seqs = Arc::new(Sequencer::new(rand::random()));
        let session = mon.as_ref().map(|m| Session::new(seqs.client(), format!("pid {}", std::process::id()), m.clone(), map.clone()));
        let session_task = session.as_ref().map(|s| s.spawn());
        let inner = Inner {
            session,
            session_task,
            opts,
            map,
            mon,
            conns: Connections::default(),
            leaders: Leaders::default(),
            seqs,
            rmw: BlockLocks::default(),
            copyups: BlockLocks::default(),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            refresher,
        };
        Client { inner: Arc::new(inner) }
    }

    /// This client's random id, sent as `client` with every request.
    pub fn id(&self) -> u64 {
        self.inner.seqs.client()
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The OSD this client believes leads `pg` (it answered last, or was named by a
    /// replica), if any. For tools and tests; routing never trusts it blindly.
    pub fn leader_hint(&self, pg: tessera_wire::WirePg) -> Option<u32> {
        let map = self.map();
        let replicas = map.pg_table(pg.pool).and_then(|t| t.pgs.get(pg.index as usize)).map(|e| e.osds().to_vec()).unwrap_or_default();
        self.inner.leaders.get(pg, &replicas, &map)
    }

    /// The mon API client this client fetches maps and volumes with (`None` for a client
    /// built with [`Client::with_map`]).
    pub fn mon(&self) -> Option<Arc<MonClient>> {
        self.inner.mon.clone()
    }

    /// The current cluster map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.inner.map.current()
    }

    /// The first map with an epoch greater than `epoch` (at once if the current one is), or
    /// `None` if none arrives within `timeout`.
    pub async fn wait_for_map_newer_than(&self, epoch: u64, timeout: Duration) -> Option<Arc<ClusterMap>> {
        self.inner.map.newer_than(epoch, timeout).await
    }

    /// Installs `map` if it is newer than the current one (returns whether it was). Maps from
    /// the mon are installed by the background refresher; this is for clients built with
    /// [`Client::with_map`] and for callers that learnt of a newer map elsewhere.
    pub fn install_map(&self, map: ClusterMap) -> bool {
        self.inner.map.install(map)
    }

    /// Looks the volume up on the mon and registers it in this client's session (see
    /// `session.rs`: snapshot contexts and size changes are followed while it is open).
    /// `name` may be `VOLUME@SNAPSHOT` for a read-only view of a snapshot. A clone reads
    /// through to its parent snapshots. Errors: [`ClientError::Mon`] (the source's `status()`
    /// is 404 for an unknown volume or snapshot), [`ClientError::NoMon`],
    /// [`ClientError::NoPool`], [`ClientError::BadVolume`], [`ClientError::Busy`] (being
    /// rolled back or deleted).
    pub async fn open_volume(&self, name: &str) -> Result<Volume> {
        let (vol_name, snap_name) = match name.split_once('@') {
            Some((v, s)) => (v, Some(s)),
            None => (name, None),
        };
        let what = || format!("look up volume {name:?}");
        let mon = self.inner.mon.as_ref().ok_or_else(|| ClientError::NoMon { what: what() })?;
        let view = mon.volume(vol_name).await.map_err(|source| ClientError::Mon { what: what(), source })?;
        let rec = view.volume;
        if rec.state != tessera_mon::model::VolumeState::Active {
            return Err(ClientError::Busy {
                volume: rec.id,
                why: format!("volume {vol_name:?} is {:?}; it cannot be opened now", rec.state),
            });
        }
        self.ensure_pool(mon, rec.pool_id, rec.id).await?;
        let mut snap_overlap = None;
        let snap = match snap_name {
            Some(s) => {
                let snaps = mon.snapshots(vol_name).await.map_err(|source| ClientError::Mon { what: what(), source })?;
                let found = snaps.into_iter().find(|x| x.name == s).ok_or_else(|| ClientError::Mon {
                    what: what(),
                    source: tessera_mon::ClientError::Api {
                        status: 404,
                        code: "snapshot_not_found".into(),
                        message: format!("volume {vol_name:?} has no snapshot {s:?}"),
                        leader: None,
                    },
                })?;
                snap_overlap = found.overlap;
                Some((found.id, found.size))
            }
            None => None,
        };
        // A snapshot of a clone reads through as far as the clone did when it was taken.
        let link = rec.parent.map(|p| tessera_mon::model::ParentRef { overlap: snap_overlap.unwrap_or(p.overlap), ..p });
        let parents = self.parent_chain(mon, rec.id, rec.object_size, link).await?;
        let (session, guard) = match (&self.inner.session, snap) {
            (Some(s), None) => {
                let live = s.open(rec.clone()).await.map_err(|e| match e {
                    crate::session::OpenError::Mon(source) => ClientError::Mon { what: "open a session on the mon".into(), source },
                    crate::session::OpenError::Busy(why) => ClientError::Busy { volume: rec.id, why },
                })?;
                (Some((s.clone(), live)), None)
            }
            (Some(s), Some((snap_id, _))) => {
                let g = s
                    .open_snapshot(snap_id)
                    .await
                    .map_err(|source| ClientError::Mon { what: "open a session on the mon".into(), source })?;
                (None, Some(g))
            }
            _ => (None, None),
        };
        Volume::with_view(self.clone(), rec, snap, parents, session, guard)
    }

    async fn ensure_pool(&self, mon: &MonClient, pool: u32, volume: u64) -> Result<()> {
        if self.map().pool(pool).is_none() {
            // The pool is newer than our map: fetch the map now rather than waiting for the
            // long poll.
            let map =
                mon.map(None, Duration::ZERO).await.map_err(|source| ClientError::Mon { what: "fetch the cluster map".into(), source })?;
            self.install_map(map);
        }
        let map = self.map();
        if map.pool(pool).is_none() {
            return Err(ClientError::NoPool { volume, pool, epoch: map.epoch });
        }
        Ok(())
    }

    /// The snapshots a clone reads through to, nearest first (a clone of a clone's snapshot
    /// reads its parent, then the grandparent...). At most 64 levels.
    /// `link` is the first parent reference (its overlap as seen by the view being opened).
    async fn parent_chain(
        &self,
        mon: &MonClient,
        id: u64,
        object_size: u64,
        link: Option<tessera_mon::model::ParentRef>,
    ) -> Result<Vec<crate::Layer>> {
        let rec_id = id;
        let mut out = Vec::new();
        let mut next = link;
        let mut size_cap = u64::MAX;
        while let Some(p) = next {
            if out.len() >= 64 {
                return Err(ClientError::BadVolume { volume: rec_id, why: "more than 64 levels of clones".into() });
            }
            let what = || format!("look up parent volume {} of volume {}", p.volume_id, rec_id);
            let all = mon.volumes().await.map_err(|source| ClientError::Mon { what: what(), source })?;
            let parent = all
                .into_iter()
                .find(|v| v.volume.id == p.volume_id)
                .map(|v| v.volume)
                .ok_or_else(|| ClientError::BadVolume { volume: rec_id, why: format!("parent volume {} is gone", p.volume_id) })?;
            let snaps = mon.snapshots(&parent.name).await.map_err(|source| ClientError::Mon { what: what(), source })?;
            let snap = snaps.into_iter().find(|s| s.id == p.snapshot_id).ok_or_else(|| ClientError::BadVolume {
                volume: rec_id,
                why: format!("parent snapshot {} of volume {} is gone", p.snapshot_id, parent.name),
            })?;
            if parent.object_size != object_size {
                return Err(ClientError::BadVolume { volume: rec_id, why: "parent has another object size".into() });
            }
            self.ensure_pool(mon, parent.pool_id, parent.id).await?;
            size_cap = size_cap.min(snap.size).min(p.overlap);
            out.push(crate::Layer { pool: parent.pool_id, volume: parent.id, snap: snap.id, size: size_cap });
            // The parent's snapshot read through as far as the parent did when it was taken.
            next = parent.parent.map(|pp| tessera_mon::model::ParentRef { overlap: snap.overlap.unwrap_or(pp.overlap), ..pp });
        }
        Ok(out)
    }

    /// A [`Volume`] from its record, without asking the mon (tests, callers that already
    /// hold the record). Errors: [`ClientError::BadVolume`] when the object size is not a
    /// power of two of at least 4096 or the size is not a multiple of 4096.
    pub fn volume(&self, record: VolumeRecord) -> Result<Volume> {
        Volume::new(self.clone(), record)
    }

    /// Sends one object request, routed and retried as described in the crate docs, bounded
    /// by `op_timeout`; the client fills in the PG, map epoch, `client`, `seq` and `floor`.
    /// Returns the OSD's `Ok` response and its data (for a read, exactly `len` bytes), or
    /// its `Absent` response with no data (a read of an object version that does not exist).
    /// A request breaking the contract of [`ObjectRequest`] fails with
    /// [`ClientError::BadRequest`] before anything is sent.
    pub async fn request(&self, req: ObjectRequest, data: Bytes) -> Result<(Response, Bytes)> {
        req.check(&data, self.inner.opts.request_bytes())?;
        self.inner.execute(&req, data, Instant::now() + self.inner.opts.op_timeout).await
    }
}
