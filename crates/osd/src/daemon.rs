//! `tessera osd run`: opens (or formats) the device, registers with the mon, and runs the
//! store's event loop, the data port, the map follower and the heartbeat until stopped.
//!
//! Identity: the OSD's uuid is stored in the engine (global metadata `osd_uuid`). The mon
//! maps the uuid to the OSD id, so a restarted OSD keeps its id and a wiped device comes back
//! as a new OSD (it must never rejoin Raft groups under an old identity without its log).

use bytes::Bytes;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_engine::device::{FaultControl, VolatileDevice};
use tessera_engine::{Device, Engine, EngineConfig, FileDevice, FormatOptions, MetaScope, Op, Txn};
use tessera_mon::api::decode::MAX_PG_REPORTS;
use tessera_mon::client::MonClient;
use tessera_mon::pgstate::PgReport;
use tessera_mon::service::RegisterOsd;

use crate::error::OsdError;
use crate::store::{Event, Store, StoreStatus};
use crate::transport::TcpTransport;

#[derive(Clone, Debug)]
pub struct OsdConfig {
    pub mon: Vec<String>,
    /// Device: a file (created and formatted with `size` bytes if absent) or a block device.
    pub data: PathBuf,
    pub size: u64,
    pub listen: SocketAddr,
    /// Address peers and clients use (default: the bound listen address).
    pub advertise: Option<String>,
    pub host: String,
    pub heartbeat: Duration,
    /// Testing only: run the engine on a volatile write cache over the device (unsynced
    /// writes live in process memory, so kill -9 loses them like a power cut) with faults
    /// read from this control file (created empty if absent). See
    /// `tessera_engine::device::fault_control` for its keys.
    pub fault_control: Option<PathBuf>,
    /// Leaders serve reads under a lease (see [`crate::peer::LEASE`]).
    pub lease_reads: bool,
}

/// A running OSD.
pub struct OsdHandle {
    pub id: u32,
    pub addr: String,
    pub status: Arc<Mutex<StoreStatus>>,
    events: crate::store::EventSender,
    done: tokio::sync::oneshot::Receiver<Result<(), OsdError>>,
}

impl OsdHandle {
    /// Waits until the store stops (an error is fatal: e.g. the device failed).
    pub async fn wait(self) -> Result<(), OsdError> {
        self.done.await.unwrap_or_else(|_| Err(OsdError::Stopped("event loop thread vanished".into())))
    }
    /// Stops the event loop after the queued events.
    pub fn stop(&self) {
        let _ = self.events.send(Event::Stop);
    }
    /// A function that stops the event loop, usable after [`OsdHandle::wait`] took the handle.
    pub fn stopper(&self) -> impl Fn() + Send + 'static {
        let events = self.events.clone();
        move || {
            let _ = events.send(Event::Stop);
        }
    }
}

const UUID_KEY: &[u8] = b"osd_uuid";

fn open_engine(cfg: &OsdConfig) -> Result<Arc<Engine>, OsdError> {
    let dev_err = |source| OsdError::Device { path: cfg.data.display().to_string(), source };
    let (file, fresh) = if cfg.data.exists() {
        (FileDevice::open(&cfg.data).map_err(dev_err)?, false)
    } else {
        tracing::info!(path = %cfg.data.display(), size = cfg.size, "creating and formatting the device");
        (FileDevice::create(&cfg.data, cfg.size).map_err(dev_err)?, true)
    };
    let dev: Arc<dyn Device> = match &cfg.fault_control {
        None => Arc::new(file),
        Some(path) => {
            let control = FaultControl::from_file(path).map_err(|source| OsdError::Device { path: path.display().to_string(), source })?;
            tracing::warn!(
                control = %path.display(),
                faults = %control.settings(),
                "FAULT INJECTION ENABLED (testing only): unsynced writes are held in memory and lost on kill -9 \
                 like a power cut; reads, writes and syncs fail, stall or tear as the control file says"
            );
            Arc::new(VolatileDevice::new(file, control, rand::random()))
        }
    };
    let engine = if fresh {
        // Small devices (tests, `tessera up`) get smaller segments so they have enough of them.
        let segment_size = if cfg.size >= 1 << 30 { 16 << 20 } else { 4 << 20 };
        Engine::create(dev, FormatOptions { segment_size }, EngineConfig::default())?
    } else {
        Engine::open(dev, EngineConfig::default())?
    };
    if engine.meta_get(MetaScope::Global, UUID_KEY).is_none() {
        let uuid = format!("{:032x}", rand::random::<u128>());
        engine.commit(Txn::new().with(Op::MetaPut {
            scope: MetaScope::Global,
            key: Bytes::from_static(UUID_KEY),
            value: Bytes::from(uuid),
        }))?;
    }
    Ok(Arc::new(engine))
}

/// Starts the OSD; returns once it is registered and serving.
pub async fn start(cfg: OsdConfig) -> Result<OsdHandle, OsdError> {
    let engine = tokio::task::block_in_place(|| open_engine(&cfg))?;
    let uuid = String::from_utf8_lossy(&engine.meta_get(MetaScope::Global, UUID_KEY).unwrap_or_default()).into_owned();
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|source| OsdError::Listen { addr: cfg.listen.to_string(), source })?;
    let addr = cfg
        .advertise
        .clone()
        .unwrap_or(listener.local_addr().map_err(|source| OsdError::Listen { addr: cfg.listen.to_string(), source })?.to_string());
    let mon = Arc::new(MonClient::new(&cfg.mon, Duration::from_secs(5))?);
    let req = RegisterOsd {
        uuid: uuid.clone(),
        addr: addr.clone(),
        host: cfg.host.clone(),
        rack: None,
        device: cfg.data.display().to_string(),
        capacity_bytes: engine.capacity_bytes(),
        weight: None,
    };
    let rec = retry("register with the mon", || async {
        match mon.register_osd(&req).await {
            // Permanent: this device's OSD was removed for good (`tessera osd rm`).
            Err(tessera_mon::client::ClientError::Api { code, message, .. }) if code == "osd_removed" => {
                Ok(Err(OsdError::Removed(message)))
            }
            other => other.map(Ok),
        }
    })
    .await?;
    let id = rec.id;
    tracing::info!(osd = id, %uuid, %addr, "registered");
    let map = Arc::new(retry("fetch the cluster map", || mon.map(None, Duration::ZERO)).await);

    let faults = match &cfg.fault_control {
        Some(path) => {
            Some(Arc::new(FaultControl::from_file(path).map_err(|source| OsdError::Device { path: path.display().to_string(), source })?))
        }
        None => None,
    };
    let store_cfg = crate::store::StoreConfig { faults, lease_reads: cfg.lease_reads, ..Default::default() };
    let (tx, rx) = crate::store::event_channel();
    let rt = tokio::runtime::Handle::current();
    // The data thread: the event loop, the data port and the Raft connections on one
    // current-thread runtime (see `Store::run_async`). Background work (reads, copies) runs
    // on the caller's runtime and its blocking pool.
    let data_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OsdError::Stopped(format!("cannot start the data thread's runtime: {e}")))?;
    let listener = listener.into_std().map_err(|source| OsdError::Listen { addr: addr.clone(), source })?;
    let transport = Box::new(TcpTransport::new(id, data_rt.handle().clone(), tx.clone()));
    let store = tokio::task::block_in_place(|| Store::open(id, engine.clone(), tx.clone(), transport, rt, store_cfg.clone()))?;
    let status = store.status_handle();
    let _ = tx.send(Event::Map(map.clone()));
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let port_events = tx.clone();
    std::thread::Builder::new()
        .name(format!("osd{id}-data"))
        .spawn(move || {
            // raft-rs panics when its storage cannot read a log entry (a device read error, or
            // a log block failing its checksum): report that as the OSD's error rather than
            // as a vanished thread. The engine is crash-safe, so stopping here loses nothing.
            let run = || {
                data_rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| OsdError::Stopped(format!("cannot serve the data port: {e}")))?;
                    tokio::spawn(crate::server::serve(listener, id, port_events));
                    store.run_async(rx).await
                })
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .unwrap_or_else(|p| Err(OsdError::Stopped(format!("the event loop panicked: {}", panic_message(&*p)))));
            if let Err(e) = &r {
                tracing::error!("store stopped: {e}");
            }
            let _ = done_tx.send(r);
        })
        .map_err(|e| OsdError::Stopped(e.to_string()))?;
    tokio::spawn(follow_map(mon.clone(), map.epoch, tx.clone()));
    tokio::spawn(heartbeat(mon, id, cfg.heartbeat, status.clone()));
    Ok(OsdHandle { id, addr, status, events: tx, done })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("(no message)")
}

async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tessera_mon::client::ClientError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!("cannot {what} yet: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Long-polls the mon for newer maps and hands them to the store.
async fn follow_map(mon: Arc<MonClient>, mut epoch: u64, tx: crate::store::EventSender) {
    loop {
        match mon.map(Some(epoch), Duration::from_secs(20)).await {
            Ok(map) if map.epoch > epoch => {
                epoch = map.epoch;
                if tx.send(Event::Map(Arc::new(map))).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("map poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn heartbeat(mon: Arc<MonClient>, id: u32, every: Duration, status: Arc<Mutex<StoreStatus>>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = 0usize;
    loop {
        tick.tick().await;
        let (epoch, reports, space, damaged) = {
            let st = status.lock();
            let damaged: Vec<String> =
                st.damaged.iter().take(tessera_mon::space::MAX_WAITING).map(|pg| format!("{}.{:x}", pg.pool, pg.index)).collect();
            let space = tessera_mon::space::SpaceReport {
                used_bytes: st.live_bytes,
                capacity_bytes: st.capacity_bytes,
                refusing: st.refuses_data,
                backfill_waiting: st
                    .backfill_waiting
                    .iter()
                    .take(tessera_mon::space::MAX_WAITING)
                    .map(|pg| format!("{}.{:x}", pg.pool, pg.index))
                    .collect(),
            };
            let led: Vec<PgReport> = st
                .pgs
                .iter()
                .filter(|p| p.role == "leader")
                .map(|p| PgReport {
                    pool: p.pg.pool,
                    index: p.pg.index,
                    term: p.term,
                    voters: p.voters.clone(),
                    learners: p.learners.clone(),
                    outgoing: p.outgoing.clone(),
                    commit: p.commit,
                    last_index: p.last_index,
                    matched: p.matched.clone(),
                })
                .collect();
            // Up to MAX_PG_REPORTS per heartbeat, taking turns when this OSD leads more.
            let n = led.len();
            let take = n.min(MAX_PG_REPORTS);
            let start = if n > take { cursor % n } else { 0 };
            cursor = cursor.wrapping_add(take);
            (st.epoch, (0..take).map(|i| led[(start + i) % n].clone()).collect::<Vec<_>>(), space, damaged)
        };
        // No space report before the store published its first status (capacity unknown).
        let space = (space.capacity_bytes > 0).then_some(space);
        if let Err(e) = mon.heartbeat_with(id, epoch, &reports, space.as_ref(), &damaged).await {
            tracing::debug!("heartbeat: {e}");
        }
    }
}
