//! The client's session on the mon: which volumes it has open, which map epoch it has
//! acted on, and the lease that lets it write.
//!
//! # Why (point-in-time snapshots)
//! A write carries its volume's snapshot context (`snap_seq`, the newest live snapshot id).
//! `snapshot create` bumps it and the map epoch, then the mon waits until every session
//! that has the volume open has acknowledged the new epoch (or expired). This task does the
//! acknowledging: on every new epoch it first re-reads the records of the open volumes (new
//! `snap_seq`, size), and only then puts the session with that epoch. So once the snapshot
//! command returns, every write this client sends carries the new context.
//!
//! # The lease
//! The mon lets a session expire `ttl` after its last put. A client that cannot renew (mon
//! unreachable, partitioned) must not write past that point with a context that may be
//! stale, so [`Session::check_lease`] fails writes once `ttl - LEASE_MARGIN` has passed since
//! the last successful put was *sent* (measured on this host's monotonic clock, which is
//! never ahead of the mon's expiry). Renewals happen every `ttl / 3`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_mon::model::VolumeRecord;
use tessera_mon::{MonClient, SessionUpdate};
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::map::MapCell;

/// Safety margin between the client's own view of its lease and the mon's expiry.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(3);
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
    /// The epoch last acknowledged to the mon.
    acked: u64,
    /// Writes are allowed until then.
    valid_until: Option<Instant>,
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

    /// Registers a handle of `rec`'s volume and puts the session before returning, so the
    /// mon knows the volume is open (and by whom) before the first write.
    pub(crate) async fn open(self: &Arc<Self>, rec: VolumeRecord) -> Result<Arc<LiveVolume>, tessera_mon::ClientError> {
        let live = {
            let mut st = self.state.lock();
            let e = st
                .open
                .entry(rec.id)
                .or_insert_with(|| OpenVolume { live: Arc::new(LiveVolume { rec: Mutex::new(rec.clone()) }), handles: 0 });
            e.handles += 1;
            e.live.clone()
        };
        if let Err(e) = self.put().await {
            self.close(live.rec.lock().id);
            return Err(e);
        }
        self.wake.notify_one();
        Ok(live)
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

    /// `Ok` while the lease is valid; otherwise why writes must wait.
    pub(crate) fn check_lease(&self) -> Result<(), String> {
        let st = self.state.lock();
        match st.valid_until {
            Some(t) if Instant::now() < t => Ok(()),
            Some(_) => Err("the session lease on the mon expired (mon unreachable?); writes wait for its renewal".into()),
            None => Err("no session on the mon yet".into()),
        }
    }

    /// Re-reads the open volumes' records (after a new epoch), then puts the session with
    /// the current epoch and volume list.
    async fn put(&self) -> Result<(), tessera_mon::ClientError> {
        let _serial = self.put_lock.lock().await;
        let epoch = self.map.current().epoch;
        let refresh = {
            let st = self.state.lock();
            (epoch != st.acked).then(|| st.open.values().map(|o| o.live.clone()).collect::<Vec<_>>())
        };
        for live in refresh.unwrap_or_default() {
            let name = live.rec.lock().name.clone();
            match self.mon.volume(&name).await {
                Ok(view) if view.volume.id == live.rec.lock().id => *live.rec.lock() = view.volume,
                Ok(_) => tracing::warn!(volume = %name, "volume name now names another volume; keeping the old record"),
                Err(e) if e.status() == Some(404) => tracing::warn!(volume = %name, "open volume was deleted"),
                Err(e) => return Err(e),
            }
        }
        let volumes: Vec<u64> = self.state.lock().open.keys().copied().collect();
        let sent = Instant::now();
        let lease = self.mon.put_session(self.client, &SessionUpdate { epoch, volumes, agent: self.agent.clone() }).await?;
        let ttl = Duration::from_millis(lease.ttl_ms);
        let mut st = self.state.lock();
        st.ttl = Some(ttl);
        st.acked = st.acked.max(epoch);
        st.valid_until = Some(sent + ttl.saturating_sub(LEASE_MARGIN));
        Ok(())
    }

    /// Keeps the session current until the client is dropped: on every new map epoch, on a
    /// volume closing, and every `ttl / 3`.
    pub(crate) fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            loop {
                if me.state.lock().valid_until.is_none() {
                    me.wake.notified().await; // nothing opened yet: no session to keep
                    continue;
                }
                let acked = me.state.lock().acked;
                let every = me.ttl() / 3;
                tokio::select! {
                    _ = me.map.newer_than(acked, every) => {}
                    _ = me.wake.notified() => {}
                }
                match me.put().await {
                    Ok(()) => backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
                    Err(e) => {
                        let pause = backoff.next_pause();
                        tracing::warn!(error = %e, ?pause, "client: session renewal failed, retrying");
                        tokio::time::sleep(pause).await;
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
