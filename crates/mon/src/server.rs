//! The `tessera mon` runtime: serves the API, keeps a cached copy of the map for long polls
//! and metrics, campaigns for leadership, and while active runs the failure detector.
//!
//! Every mon serves the whole API: reads come from the store, and every change is a CAS
//! transaction in the store (see [`crate::service`]), so it is safe from any mon. Only the
//! active mon (the election winner, see [`tessera_metastore::MetaStore::campaign`]) takes
//! heartbeats and applies failure-detector decisions, fenced by its lease.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_metastore::{MetaStore, MetaStoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::detector::{Detector, DetectorConfig};
use crate::error::{MonError, Result};
use crate::keys;
use crate::metrics::ApiMetrics;
use crate::model::ClusterMap;
use crate::model::SpaceState;
use crate::pgstate::{PgReport, PgStateView};
use crate::service::Service;
use crate::space::SpaceReport;

#[derive(Clone, Debug)]
pub struct MonConfig {
    pub listen: SocketAddr,
    /// URL other processes reach this mon at (published while it is active). Default:
    /// `http://<bound listen address>`.
    pub advertise: Option<String>,
    pub detector: DetectorConfig,
    /// How long after the active mon dies until a standby may take over.
    pub lease_ttl: Duration,
    /// Failure-detector period.
    pub tick: Duration,
}

impl MonConfig {
    pub fn new(listen: SocketAddr) -> Self {
        MonConfig {
            listen,
            advertise: None,
            detector: DetectorConfig::default(),
            lease_ttl: Duration::from_secs(3),
            tick: Duration::from_millis(250),
        }
    }
}

pub(crate) struct LeaderSlot {
    detector: Option<Detector>,
    /// Epoch of the map the detector was last synced with: sync only forward, so a lagging
    /// cache never replays an old state (which would double-count flaps).
    synced_epoch: u64,
}

/// State shared by the API handlers and the background tasks.
/// Latest report per PG `(pool, index)`: the report, the reporting OSD, when (mon uptime).
type PgReports = HashMap<(u32, u32), (PgReport, u32, Duration)>;

pub struct Shared {
    pub(crate) service: Service,
    pub(crate) map_rx: watch::Receiver<Arc<ClusterMap>>,
    pub(crate) metrics: ApiMetrics,
    leader: Mutex<LeaderSlot>,
    started: Instant,
    /// Latest report per PG `(pool, index)`: the report, the reporting OSD, when.
    pg_reports: Mutex<PgReports>,
    /// Latest space report per OSD, and when.
    space_reports: Mutex<HashMap<u32, (SpaceReport, Duration)>>,
    /// Latest list of damaged PG replicas per OSD (`pool.index`), and when.
    damage_reports: Mutex<HashMap<u32, (Vec<String>, Duration)>>,
    /// Reports older than this are ignored (the leader stopped reporting).
    report_ttl: Duration,
}

/// One OSD's fullness as the active mon knows it (fresh reports only).
#[derive(Clone, Debug, PartialEq)]
pub struct OsdSpace {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub state: SpaceState,
    pub backfill_waiting: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The map service this mon serves the API with.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Whether this mon currently leads (takes heartbeats, runs the failure detector).
    pub fn is_active(&self) -> bool {
        lock(&self.leader).detector.is_some()
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Keeps the PG reports of a heartbeat taken from `osd`.
    pub(crate) fn record_reports(&self, osd: u32, reports: Vec<PgReport>) {
        let now = self.now();
        let mut all = lock(&self.pg_reports);
        for r in reports {
            all.insert((r.pool, r.index), (r, osd, now));
        }
    }

    /// Keeps the space report of a heartbeat taken from `osd`.
    pub(crate) fn record_space(&self, osd: u32, report: SpaceReport) {
        let now = self.now();
        lock(&self.space_reports).insert(osd, (report, now));
    }

    /// Keeps the damaged PG replicas a heartbeat from `osd` named (an empty list clears them).
    pub(crate) fn record_damage(&self, osd: u32, damaged: Vec<String>) {
        let now = self.now();
        lock(&self.damage_reports).insert(osd, (damaged, now));
    }

    /// Every OSD of `map` whose fresh heartbeat named damaged PG replicas, with their PGs.
    pub fn osd_damage(&self, map: &ClusterMap) -> HashMap<u32, Vec<String>> {
        let now = self.now();
        let reports = lock(&self.damage_reports);
        map.osds
            .iter()
            .filter_map(|o| {
                let (pgs, at) = reports.get(&o.id)?;
                (!pgs.is_empty() && now.saturating_sub(*at) <= self.report_ttl).then(|| (o.id, pgs.clone()))
            })
            .collect()
    }

    /// Every OSD of `map` with a fresh space report, classified by the map's ratios.
    pub fn osd_space(&self, map: &ClusterMap) -> HashMap<u32, OsdSpace> {
        let now = self.now();
        let reports = lock(&self.space_reports);
        map.osds
            .iter()
            .filter_map(|o| {
                let (r, at) = reports.get(&o.id)?;
                let space = OsdSpace {
                    used_bytes: r.used_bytes,
                    capacity_bytes: r.capacity_bytes,
                    state: r.state(&map.config.space),
                    backfill_waiting: r.backfill_waiting.clone(),
                };
                (now.saturating_sub(*at) <= self.report_ttl).then_some((o.id, space))
            })
            .collect()
    }

    /// The state of every PG of `map` from the fresh reports (meaningful on the active mon,
    /// which takes the heartbeats). A PG whose copy onto some OSD waits for room there gets
    /// `+backfill_toofull`. A PG with a replica marked damaged gets `+damaged` and names
    /// the OSDs in `damaged` (until the repair is done: the PG is not clean meanwhile).
    pub fn pg_states(&self, map: &ClusterMap) -> Vec<PgStateView> {
        let waiting: std::collections::HashSet<String> = self.osd_space(map).into_values().flat_map(|s| s.backfill_waiting).collect();
        let mut damaged: HashMap<String, Vec<u32>> = HashMap::new();
        for (osd, pgs) in self.osd_damage(map) {
            for pg in pgs {
                damaged.entry(pg).or_default().push(osd);
            }
        }
        let now = self.now();
        let reports = lock(&self.pg_reports);
        let mut out = Vec::new();
        for table in &map.pg_tables {
            let Some(pool) = map.pool(table.pool_id) else { continue };
            for (i, entry) in table.pgs.iter().enumerate() {
                let r = reports
                    .get(&(table.pool_id, i as u32))
                    .filter(|(_, _, at)| now.saturating_sub(*at) <= self.report_ttl)
                    .map(|(r, osd, _)| (r, *osd));
                let mut view = crate::pgstate::classify(pool, i as u32, entry, map, r);
                // Only while the PG is still short of a healthy replica (a waiting copy is
                // reported for a while after it has caught up some other way).
                if view.state != "inactive" && view.state != "active+clean" && waiting.contains(&view.pg) {
                    view.state.push_str("+backfill_toofull");
                }
                if let Some(mut osds) = damaged.remove(&view.pg).filter(|_| view.state != "inactive") {
                    osds.sort_unstable();
                    view.state.push_str("+damaged");
                    view.damaged = osds;
                }
                out.push(view);
            }
        }
        out
    }

    /// Feeds a heartbeat to the detector. `None`: not the leader; `Some(false)`: unknown OSD.
    /// `fresh`: a map just read from the store, for an OSD registered so recently (possibly
    /// through another mon) that the cached map does not show it yet.
    pub(crate) fn heartbeat(&self, osd: u32, fresh: Option<&ClusterMap>) -> Option<bool> {
        let now = self.now();
        let cached = self.map_rx.borrow().clone();
        let map = match fresh {
            Some(f) if f.epoch > cached.epoch => f,
            _ => &*cached,
        };
        let mut slot = lock(&self.leader);
        let slot = &mut *slot;
        let det = slot.detector.as_mut()?;
        if det.heartbeat(osd, now) {
            return Some(true);
        }
        if map.epoch > slot.synced_epoch {
            det.sync(&map.osds, now);
            slot.synced_epoch = map.epoch;
        }
        Some(det.heartbeat(osd, now))
    }
}

/// A running mon. Dropping it does not stop it; call [`MonHandle::shutdown`].
pub struct MonHandle {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl MonHandle {
    /// Stops serving, resigns leadership (so a standby takes over at once) and waits for the
    /// background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.server.await;
    }

    /// Waits until the HTTP server stops (it only stops on shutdown or a fatal error).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match (&mut self.server).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Starts a mon on `store`: binds the API, loads the map, starts the map cache and the
/// election loop. Returns once the API is listening.
pub async fn start(store: Arc<dyn MetaStore>, cfg: MonConfig) -> Result<MonHandle> {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| MonError::Store(MetaStoreError::Io(e)))?;
    let addr = listener.local_addr().map_err(|e| MonError::Store(MetaStoreError::Io(e)))?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| format!("http://{addr}"));
    let service = Service::new(store.clone());
    let first = service.snapshot().await?;
    let (map_tx, map_rx) = watch::channel(Arc::new(first.map.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        service,
        map_rx,
        metrics: ApiMetrics::default(),
        leader: Mutex::new(LeaderSlot { detector: None, synced_epoch: 0 }),
        started: Instant::now(),
        pg_reports: Mutex::new(HashMap::new()),
        space_reports: Mutex::new(HashMap::new()),
        damage_reports: Mutex::new(HashMap::new()),
        report_ttl: cfg.detector.down_after.max(Duration::from_secs(2)) * 2,
    });
    let cache = tokio::spawn(map_cache(shared.service.clone(), map_tx, first.head_rev, stop_rx.clone()));
    let election = tokio::spawn(lead(shared.clone(), cfg.clone(), advertise.clone(), stop_rx.clone()));
    let app = crate::api::router(shared.clone());
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, %advertise, "mon serving the API");
    Ok(MonHandle { addr, shared, stop: stop_tx, tasks: vec![cache, election], server })
}

/// Keeps `map_tx` at the newest map: watches `map/head` (which every change rewrites) and
/// reloads the map on each change. On a watch failure it reloads and re-watches.
async fn map_cache(service: Service, map_tx: watch::Sender<Arc<ClusterMap>>, mut head_rev: u64, mut stop: watch::Receiver<bool>) {
    loop {
        let mut w = match service.store().watch(keys::HEAD.as_bytes(), head_rev + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "map watch failed; retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.wait_for(|s| *s) => return }
                if let Ok(snap) = service.snapshot().await {
                    head_rev = snap.head_rev;
                    map_tx.send_replace(Arc::new(snap.map));
                }
                continue;
            }
        };
        loop {
            let ev = tokio::select! { ev = w.next() => ev, _ = stop.wait_for(|s| *s) => return };
            match ev {
                Some(Ok(_)) => match service.snapshot().await {
                    Ok(snap) => {
                        head_rev = head_rev.max(snap.head_rev);
                        if snap.map.epoch > map_tx.borrow().epoch {
                            map_tx.send_replace(Arc::new(snap.map));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "map reload failed"),
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "map watch ended; re-reading the map");
                    break;
                }
                None => break,
            }
        }
        if let Ok(snap) = service.snapshot().await {
            head_rev = snap.head_rev;
            if snap.map.epoch > map_tx.borrow().epoch {
                map_tx.send_replace(Arc::new(snap.map));
            }
        }
    }
}

/// Campaigns for leadership forever; while leading, runs the failure detector.
async fn lead(shared: Arc<Shared>, cfg: MonConfig, advertise: String, mut stop: watch::Receiver<bool>) {
    let store = shared.service.store().clone();
    loop {
        let campaign = store.campaign(keys::ELECTION.as_bytes(), Bytes::from(advertise.clone()), cfg.lease_ttl);
        let won = tokio::select! {
            r = campaign => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut leadership = match won {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "campaign for mon leadership failed; retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = stop.wait_for(|s| *s) => return }
            }
        };
        tracing::info!(%advertise, "this mon is now active: taking heartbeats and running failure detection");
        {
            let map = shared.map_rx.borrow().clone();
            let mut slot = lock(&shared.leader);
            let mut det = Detector::new(cfg.detector.clone());
            det.sync(&map.osds, shared.now());
            slot.detector = Some(det);
            slot.synced_epoch = map.epoch;
        }
        let fence = leadership.fence();
        let mut tick = tokio::time::interval(cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopping = loop {
            tokio::select! {
                _ = leadership.lost() => break false,
                _ = stop.wait_for(|s| *s) => break true,
                _ = tick.tick() => {}
            }
            let decisions = {
                let map = shared.map_rx.borrow().clone();
                let now = shared.now();
                let mut slot = lock(&shared.leader);
                let slot = &mut *slot;
                let Some(det) = slot.detector.as_mut() else { break false };
                if map.epoch > slot.synced_epoch {
                    det.sync(&map.osds, now);
                    slot.synced_epoch = map.epoch;
                }
                det.tick(now)
            };
            if decisions.is_empty() {
                continue;
            }
            match shared.service.apply_decisions(&decisions, &fence).await {
                Ok(_) => {
                    // Sync with the map just written, so the next tick does not re-decide.
                    if let Ok(snap) = shared.service.snapshot().await {
                        let mut slot = lock(&shared.leader);
                        let slot = &mut *slot;
                        if let Some(det) = slot.detector.as_mut() {
                            if snap.map.epoch > slot.synced_epoch {
                                det.sync(&snap.map.osds, shared.now());
                                slot.synced_epoch = snap.map.epoch;
                            }
                        }
                    }
                }
                Err(MonError::Fenced) => break false,
                Err(e) => tracing::warn!(error = %e, "applying failure-detector decisions failed; will retry"),
            }
        };
        lock(&shared.leader).detector = None;
        if stopping {
            if let Err(e) = leadership.resign().await {
                tracing::warn!(error = %e, "resigning leadership failed; a standby takes over when the lease expires");
            }
            return;
        }
        tracing::warn!("this mon lost its leadership; campaigning again");
    }
}
