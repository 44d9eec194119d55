//! Client of the mon API, used by the CLI (and by OSDs and gateways).
//!
//! Endpoint handling: the client is given every mon's URL. It sticks to the last one that
//! answered; on a connection failure or timeout it tries the next; on `421 not_leader` (only
//! heartbeats need the active mon) it retries at the leader named in the answer. Requests
//! that change the map are CAS transactions on the mon side, so retrying one at another mon
//! after a connection failure is safe (a create that did commit then answers `409 ... exists`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::decode::{CloneSnapshot, CreateSnapshot};
use crate::api::{HeartbeatReply, RollbackView, VolumeView};
use crate::model::{ClusterMap, OsdRecord, PoolRecord, SessionRecord, SnapshotRecord};
use crate::service::{ClusterStatus, CreatePool, CreateVolume, RegisterOsd, SessionLease, SessionUpdate, FENCE_SLACK, SESSION_TTL};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The mon answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api { status: u16, code: String, message: String, leader: Option<String> },
    /// No mon could be reached.
    #[error("no mon reachable at {endpoints}: {last_error}")]
    Unreachable { endpoints: String, last_error: String },
    #[error("invalid mon address {0:?}: expected host:port or http://host:port")]
    BadEndpoint(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from mon {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How much longer than its usual timeout [`MonClient`] waits for a snapshot create or
/// delete: the longest the mon's fence may wait (session TTL + [`FENCE_SLACK`]) plus 5 s, so
/// a slow fence ends with the mon's answer (`Ok` or `503 fence_timeout`), not a client timeout.
pub const FENCE_EXTRA: Duration = SESSION_TTL.saturating_add(FENCE_SLACK).saturating_add(Duration::from_secs(5));

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    code: String,
    #[serde(default)]
    leader: Option<String>,
}

pub struct MonClient {
    endpoints: Vec<String>,
    current: AtomicUsize,
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl MonClient {
    /// `endpoints`: mon addresses (`host:port` or `http://host:port`), comma-separated lists
    /// allowed. `timeout` bounds each HTTP exchange (long polls add their wait to it).
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, ClientError> {
        let mut list = Vec::new();
        for e in endpoints.iter().flat_map(|e| e.split(',')).map(str::trim).filter(|e| !e.is_empty()) {
            let url = if e.contains("://") { e.to_string() } else { format!("http://{e}") };
            if !url.starts_with("http://") || url.parse::<hyper::Uri>().is_err() {
                return Err(ClientError::BadEndpoint(e.to_string()));
            }
            list.push(url.trim_end_matches('/').to_string());
        }
        if list.is_empty() {
            return Err(ClientError::BadEndpoint(String::new()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(3))));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(MonClient { endpoints: list, current: AtomicUsize::new(0), http, timeout })
    }

    async fn once(
        &self,
        base: &str,
        method: &Method,
        path: &str,
        body: &Option<Bytes>,
        extra: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = Request::builder().method(method.clone()).uri(format!("{base}{path}"));
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.clone().unwrap_or_default())).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.http.request(req).await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, bytes))
        };
        tokio::time::timeout(self.timeout + extra, fut).await.map_err(|_| "timed out".to_string())?
    }

    /// One API call with failover. `extra`: added to the timeout (long polls).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: Duration,
    ) -> Result<T, ClientError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        let mut redirected = false;
        let mut i = 0;
        let mut target: Option<String> = None;
        while i < n || target.is_some() {
            let (base, idx) = match target.take() {
                Some(t) => (t, None),
                None => {
                    let idx = (start + i) % n;
                    i += 1;
                    (self.endpoints[idx].clone(), Some(idx))
                }
            };
            let (status, bytes) = match self.once(&base, &method, path, &body, extra).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = format!("{base}: {e}");
                    continue;
                }
            };
            if let Some(idx) = idx {
                self.current.store(idx, Ordering::Relaxed);
            }
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol { endpoint: base.clone(), reason: e.to_string() });
            }
            let err = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ClientError::Api { status: status.as_u16(), code: b.code, message: b.error, leader: b.leader },
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    code: "http_error".into(),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                    leader: None,
                },
            };
            match &err {
                ClientError::Api { status: 421, leader: Some(leader), .. } if !redirected && *leader != base => {
                    redirected = true;
                    target = Some(leader.clone());
                }
                // `fence_timeout` reports a committed change: retrying it elsewhere would only
                // hide that answer behind `snapshot_exists` / `snapshot_not_found`.
                ClientError::Api { status: 503, code, .. } if i < n && code != "fence_timeout" => last_error = err.to_string(),
                _ => return Err(err),
            }
        }
        Err(ClientError::Unreachable { endpoints: self.endpoints.join(","), last_error })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, Duration::ZERO).await
    }

    async fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::POST, path, body, Duration::ZERO).await
    }

    /// `method` with `body` as JSON; `extra` as in [`MonClient::call`].
    async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        extra: Duration,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol { endpoint: String::new(), reason: e.to_string() })?;
        self.call(method, path, Some(Bytes::from(bytes)), extra).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None, Duration::ZERO).await
    }

    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/api/v1/status").await
    }

    /// The map now, or (with `newer_than`) as soon as its epoch exceeds it, waiting at most
    /// `wait` (then the current map).
    pub async fn map(&self, newer_than: Option<u64>, wait: Duration) -> Result<ClusterMap, ClientError> {
        match newer_than {
            None => self.get("/api/v1/map").await,
            Some(e) => {
                let path = format!("/api/v1/map?newer_than={e}&wait_ms={}", wait.as_millis());
                self.call(Method::GET, &path, None, wait).await
            }
        }
    }

    /// Every OSD, with its fullness when the answering mon is the active one.
    pub async fn osds(&self) -> Result<Vec<crate::api::OsdView>, ClientError> {
        self.get("/api/v1/osds").await
    }

    pub async fn register_osd(&self, req: &RegisterOsd) -> Result<OsdRecord, ClientError> {
        self.post("/api/v1/osds", req).await
    }

    /// A heartbeat carrying the reports of the PGs the OSD leads.
    pub async fn heartbeat_with(
        &self,
        osd: u32,
        epoch: u64,
        pgs: &[crate::pgstate::PgReport],
        space: Option<&crate::space::SpaceReport>,
        damaged: &[String],
    ) -> Result<u64, ClientError> {
        let mut body = serde_json::json!({ "epoch": epoch, "pgs": pgs });
        if let Some(sp) = space {
            body["space"] = serde_json::json!(sp);
        }
        if !damaged.is_empty() {
            body["damaged"] = serde_json::json!(damaged);
        }
        let r: HeartbeatReply = self.post(&format!("/api/v1/osds/{osd}/heartbeat"), &body).await?;
        Ok(r.epoch)
    }

    /// The cluster-wide settings (space ratios).
    pub async fn config(&self) -> Result<crate::model::ClusterConfig, ClientError> {
        self.get("/api/v1/config").await
    }

    /// Sets the cluster-wide settings (`tessera cluster config`).
    pub async fn set_config(&self, config: &crate::model::ClusterConfig) -> Result<crate::model::ClusterConfig, ClientError> {
        self.send(Method::PUT, "/api/v1/config", config, Duration::ZERO).await
    }

    /// PG states (answered by the active mon).
    pub async fn pgs(&self) -> Result<Vec<crate::pgstate::PgStateView>, ClientError> {
        self.get("/api/v1/pgs").await
    }

    pub async fn heartbeat(&self, osd: u32, epoch: u64) -> Result<u64, ClientError> {
        let r: HeartbeatReply = self.post(&format!("/api/v1/osds/{osd}/heartbeat"), &serde_json::json!({ "epoch": epoch })).await?;
        Ok(r.epoch)
    }

    pub async fn set_osd_in(&self, osd: u32, in_: bool) -> Result<OsdRecord, ClientError> {
        self.post(&format!("/api/v1/osds/{osd}/{}", if in_ { "in" } else { "out" }), &serde_json::json!({})).await
    }

    /// `tessera osd rm`: removes an out, down OSD that no PG needs any more.
    pub async fn remove_osd(&self, osd: u32) -> Result<OsdRecord, ClientError> {
        self.delete(&format!("/api/v1/osds/{osd}")).await
    }

    pub async fn pools(&self) -> Result<Vec<PoolRecord>, ClientError> {
        self.get("/api/v1/pools").await
    }

    pub async fn create_pool(&self, req: &CreatePool) -> Result<PoolRecord, ClientError> {
        self.post("/api/v1/pools", req).await
    }

    pub async fn delete_pool(&self, name: &str) -> Result<PoolRecord, ClientError> {
        self.delete(&format!("/api/v1/pools/{}", encode_segment(name))).await
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeView>, ClientError> {
        self.get("/api/v1/volumes").await
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeView, ClientError> {
        self.get(&format!("/api/v1/volumes/{}", encode_segment(name))).await
    }

    pub async fn create_volume(&self, req: &CreateVolume) -> Result<VolumeView, ClientError> {
        self.post("/api/v1/volumes", req).await
    }

    pub async fn resize_volume(&self, name: &str, size: u64, allow_shrink: bool) -> Result<VolumeView, ClientError> {
        let body = crate::api::decode::Resize { size, allow_shrink };
        self.post(&format!("/api/v1/volumes/{}/resize", encode_segment(name)), &body).await
    }

    /// Starts deleting a volume (it becomes `deleting`; resumes if it already is). Drop its
    /// objects on the OSDs, then [`MonClient::purge_volume`].
    pub async fn delete_volume(&self, name: &str) -> Result<VolumeView, ClientError> {
        self.delete(&format!("/api/v1/volumes/{}", encode_segment(name))).await
    }

    /// Removes a `deleting` volume's record; returns its last record.
    pub async fn purge_volume(&self, name: &str) -> Result<VolumeView, ClientError> {
        self.post(&format!("/api/v1/volumes/{}/purge", encode_segment(name)), &serde_json::json!({})).await
    }

    /// Creates or renews session `client` (see [`SessionLease`] for when to renew).
    pub async fn put_session(&self, client: u64, upd: &SessionUpdate) -> Result<SessionLease, ClientError> {
        self.send(Method::PUT, &format!("/api/v1/sessions/{client}"), upd, Duration::ZERO).await
    }

    /// Ends session `client` (idempotent).
    pub async fn delete_session(&self, client: u64) -> Result<(), ClientError> {
        let _: serde::de::IgnoredAny = self.delete(&format!("/api/v1/sessions/{client}")).await?;
        Ok(())
    }

    /// The live sessions, by client id.
    pub async fn sessions(&self) -> Result<Vec<SessionRecord>, ClientError> {
        self.get("/api/v1/sessions").await
    }

    /// A volume's snapshots, by id.
    pub async fn snapshots(&self, volume: &str) -> Result<Vec<SnapshotRecord>, ClientError> {
        self.get(&format!("/api/v1/volumes/{}/snapshots", encode_segment(volume))).await
    }

    /// Takes a snapshot. The mon answers once every client writing to the volume has
    /// acknowledged it, which may take up to the session TTL plus [`FENCE_SLACK`] (then
    /// `503 fence_timeout`, the snapshot recorded nonetheless): the timeout is extended by
    /// [`FENCE_EXTRA`].
    pub async fn create_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotRecord, ClientError> {
        let path = format!("/api/v1/volumes/{}/snapshots", encode_segment(volume));
        self.send(Method::POST, &path, &CreateSnapshot { name: name.into() }, FENCE_EXTRA).await
    }

    /// Deletes a snapshot; waits like [`MonClient::create_snapshot`].
    pub async fn delete_snapshot(&self, volume: &str, snap: &str) -> Result<SnapshotRecord, ClientError> {
        let path = format!("/api/v1/volumes/{}/snapshots/{}", encode_segment(volume), encode_segment(snap));
        self.call(Method::DELETE, &path, None, FENCE_EXTRA).await
    }

    /// Starts (or resumes) rolling `volume` back to `snap`. Copy the snapshot's data, then
    /// [`MonClient::finish_rollback`].
    pub async fn begin_rollback(&self, volume: &str, snap: &str) -> Result<RollbackView, ClientError> {
        let path = format!("/api/v1/volumes/{}/snapshots/{}/rollback", encode_segment(volume), encode_segment(snap));
        self.post(&path, &serde_json::json!({})).await
    }

    /// Ends a rollback: the volume is active again.
    pub async fn finish_rollback(&self, volume: &str) -> Result<VolumeView, ClientError> {
        self.post(&format!("/api/v1/volumes/{}/rollback-done", encode_segment(volume)), &serde_json::json!({})).await
    }

    /// Creates volume `new_name` as a clone of `volume`'s snapshot `snap`.
    pub async fn clone_snapshot(&self, volume: &str, snap: &str, new_name: &str) -> Result<VolumeView, ClientError> {
        let path = format!("/api/v1/volumes/{}/snapshots/{}/clone", encode_segment(volume), encode_segment(snap));
        self.post(&path, &CloneSnapshot { name: new_name.into() }).await
    }

    /// Records that a clone holds all its data (its parent snapshot is no longer needed).
    pub async fn flatten_done(&self, volume: &str) -> Result<VolumeView, ClientError> {
        self.post(&format!("/api/v1/volumes/{}/flatten-done", encode_segment(volume)), &serde_json::json!({})).await
    }
}
