//! The client's session on the mon: which volumes it has open and which map epoch it has
//! acted on.
//!
//! # What it is for
//! A write carries its volume's snapshot context (`snap_seq`, the newest live snapshot id).
//! `snapshot create` bumps it and the map epoch, and the mon waits (bounded) until every
//! session that has the volume open has acknowledged the new epoch. This task does the
//! acknowledging: on every new epoch it first re-reads the records of the open volumes (new
//! `snap_seq`, size), and only then puts the session with that epoch, so clients switch to
//! the new context promptly. The session also tells the mon which volumes and snapshots are
//! open (delete and rollback are refused while they are).
//!
//! # Not a lease on writes
//! Correctness does not depend on the session (issue 14): every PG refuses a write whose
//! context is older than the volume's newest snapshot it was told about (`snapshot create`
//! tells every PG before returning), and the volume handle re-issues such a write with the
//! newer context. So writes never wait for the mon: a mon or etcd outage of any length
//! leaves IO on open volumes alone, while renewals retry on a backoff. Renewals happen every
//! `ttl / 3`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_mon::model::VolumeRecord;
use tessera_mon::{MonClient, SessionUpdate};
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::map::MapCell;

/// Lease assumed until the mon names one.
const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// The live record of one open volume, shared by all its handles in this client.
#[derive(Debug)]
pub(crate) struct LiveVolume {
    pub rec: Mutex<VolumeRecord>,
}

struct OpenVolume {
    live: Arc<LiveVolume>,
    handles: usize,
}

#[derive(Default)]
struct State {
    open: HashMap<u64, OpenVolume>,
    /// Snapshot ids open read-only, with their handle counts (the mon refuses to delete a
    /// snapshot that is being read).
    snaps: HashMap<u64, usize>,
    /// The epoch last acknowledged to the mon.
    acked: u64,
    /// When the last put succeeded (`None`: never; nothing opened yet).
    renewed: Option<Instant>,
    ttl: Option<Duration>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("client", &self.client).finish_non_exhaustive()
    }
}

pub(crate) struct Session {
    client: u64,
    agent: String,
    mon: Arc<MonClient>,
    map: Arc<MapCell>,
    state: Mutex<State>,
    wake: Notify,
    /// Serializes puts so that a stale list or epoch never lands after a newer one.
    put_lock: tokio::sync::Mutex<()>,
}

impl Session {
    pub(crate) fn new(client: u64, agent: String, mon: Arc<MonClient>, map: Arc<MapCell>) -> Arc<Session> {
        Arc::new(Session {
            client,
            agent,
            mon,
            map,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            put_lock: Default::default(),
        })
    }

    fn ttl(&self) -> Duration {
        self.state.lock().ttl.unwrap_or(DEFAULT_TTL)
    }

    /// Registers a handle of `rec`'s volume: puts the session listing it FIRST, then reads
    /// the volume's record again and refuses unless it is active. This order is one half of
    /// a store-then-load fence with the mon (which commits a snapshot, rollback or delete
    /// first and then reads the sessions): either the mon sees this session, or this read
    /// sees the mon's change. The epoch claimed is the last one fully acted on, never the
    /// current map's.
    pub(crate) async fn open(self: &Arc<Self>, rec: VolumeRecord) -> Result<Arc<LiveVolume>, OpenError> {
        let id = rec.id;
        let live = {
            let mut st = self.state.lock();
            let e =
                st.open.entry(id).or_insert_with(|| OpenVolume { live: Arc::new(LiveVolume { rec: Mutex::new(rec.clone()) }), handles: 0 });
            e.handles += 1;
            e.live.clone()
        };
        // Closes the handle again if this future is dropped or fails before returning.
        let guard = CloseGuard { session: self, volume: Some(id) };
        self.put(false).await.map_err(OpenError::Mon)?;
        let fresh = self.mon.volume(&rec.name).await.map_err(OpenError::Mon)?.volume;
        if fresh.id != id || fresh.state != tessera_mon::model::VolumeState::Active {
            return Err(OpenError::Busy(format!("volume {:?} is {} now; it cannot be opened", rec.name, fresh.state.as_str())));
        }
        *live.rec.lock() = fresh;
        std::mem::forget(guard);
        self.wake.notify_one();
        Ok(live)
    }

    /// Registers a read-only view of snapshot `snap` (the mon refuses to delete it while
    /// it is open) and puts the session before returning.
    pub(crate) async fn open_snapshot(self: &Arc<Self>, snap: u64) -> Result<SnapshotGuard, tessera_mon::ClientError> {
        *self.state.lock().snaps.entry(snap).or_default() += 1;
        let guard = SnapshotGuard { session: self.clone(), snap };
        self.put(false).await?;
        Ok(guard)
    }

    /// A handle was dropped; the last one removes the volume from the session.
    pub(crate) fn close(&self, volume: u64) {
        let mut st = self.state.lock();
        if let Some(e) = st.open.get_mut(&volume) {
            e.handles -= 1;
            if e.handles == 0 {
                st.open.remove(&volume);
                self.wake.notify_one();
            }
        }
    }

    fn close_snapshot(&self, snap: u64) {
        let mut st = self.state.lock();
        if let Some(n) = st.snaps.get_mut(&snap) {
            *n -= 1;
            if *n == 0 {
                st.snaps.remove(&snap);
                self.wake.notify_one();
            }
        }
    }

    /// Puts the session. With `ack`, first re-reads the open volumes' records if the map
    /// moved since the last acknowledged epoch, then claims the current epoch: the mon's
    /// fence passes only once every write this client sends carries the new snapshot
    /// context. Without `ack`, claims the last acknowledged epoch (registration only).
    async fn put(&self, ack: bool) -> Result<(), tessera_mon::ClientError> {
        let _serial = self.put_lock.lock().await;
        let (epoch, refresh) = {
            let st = self.state.lock();
            let current = self.map.current().epoch;
            if ack && current != st.acked {
                (current, st.open.values().map(|o| o.live.clone()).collect::<Vec<_>>())
            } else {
                (st.acked, Vec::new())
            }
        };
        for live in refresh {
            let name = live.rec.lock().name.clone();
            match self.mon.volume(&name).await {
                Ok(view) if view.volume.id == live.rec.lock().id => *live.rec.lock() = view.volume,
                Ok(_) => tracing::warn!(volume = %name, "volume name now names another volume; keeping the old record"),
                Err(e) if e.status() == Some(404) => tracing::warn!(volume = %name, "open volume was deleted"),
                Err(e) => return Err(e),
            }
        }
        let (volumes, snapshots) = {
            let st = self.state.lock();
            (st.open.keys().copied().collect(), st.snaps.keys().copied().collect())
        };
        let lease = self.mon.put_session(self.client, &SessionUpdate { epoch, volumes, snapshots, agent: self.agent.clone() }).await?;
        let ttl = Duration::from_millis(lease.ttl_ms);
        let mut st = self.state.lock();
        st.ttl = Some(ttl);
        st.acked = st.acked.max(epoch);
        st.renewed = Some(Instant::now());
        Ok(())
    }

    /// Keeps the session current until the client is dropped: on every new map epoch, on a
    /// handle closing, and every `ttl / 3`; after a failure, again on the backoff alone.
    pub(crate) fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let fresh = || Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            let mut backoff = fresh();
            let mut failing = false;
            loop {
                if !failing {
                    if me.state.lock().renewed.is_none() {
                        me.wake.notified().await; // nothing opened yet: no session to keep
                        continue;
                    }
                    let acked = me.state.lock().acked;
                    let every = me.ttl() / 3;
                    tokio::select! {
                        _ = me.map.newer_than(acked, every) => {}
                        _ = me.wake.notified() => {}
                    }
                }
                match me.put(true).await {
                    Ok(()) => {
                        backoff = fresh();
                        failing = false;
                    }
                    Err(e) => {
                        let pause = backoff.next_pause();
                        tracing::warn!(error = %e, ?pause, "client: session renewal failed, retrying");
                        tokio::time::sleep(pause).await;
                        failing = true;
                    }
                }
            }
        })
    }

    /// Removes the session from the mon (best effort, when the client shuts down).
    pub(crate) async fn end(&self) {
        let _ = self.mon.delete_session(self.client).await;
    }
}

/// Why [`Session::open`] failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    Mon(tessera_mon::ClientError),
    Busy(String),
}

/// Closes a volume handle registered by an [`Session::open`] that did not complete.
struct CloseGuard<'a> {
    session: &'a Session,
    volume: Option<u64>,
}

impl Drop for CloseGuard<'_> {
    fn drop(&mut self) {
        if let Some(v) = self.volume.take() {
            self.session.close(v);
        }
    }
}

/// Keeps a snapshot listed in the session while a read-only view of it exists.
#[derive(Debug)]
pub(crate) struct SnapshotGuard {
    session: Arc<Session>,
    snap: u64,
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        self.session.close_snapshot(self.snap);
    }
}
