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

use crate::api::{HeartbeatReply, VolumeView};
use crate::model::{ClusterMap, OsdRecord, PoolRecord};
use crate::service::{ClusterStatus, CreatePool, CreateVolume, RegisterOsd};

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
                ClientError::Api { status: 503, .. } if i < n => last_error = err.to_string(),
                _ => return Err(err),
            }
        }
        Err(ClientError::Unreachable { endpoints: self.endpoints.join(","), last_error })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, Duration::ZERO).await
    }

    async fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol { endpoint: String::new(), reason: e.to_string() })?;
        self.call(Method::POST, path, Some(Bytes::from(bytes)), Duration::ZERO).await
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

    pub async fn osds(&self) -> Result<Vec<OsdRecord>, ClientError> {
        self.get("/api/v1/osds").await
    }

    pub async fn register_osd(&self, req: &RegisterOsd) -> Result<OsdRecord, ClientError> {
        self.post("/api/v1/osds", req).await
    }

    /// A heartbeat carrying the reports of the PGs the OSD leads.
    pub async fn heartbeat_with(&self, osd: u32, epoch: u64, pgs: &[crate::pgstate::PgReport]) -> Result<u64, ClientError> {
        let r: HeartbeatReply =
            self.post(&format!("/api/v1/osds/{osd}/heartbeat"), &serde_json::json!({ "epoch": epoch, "pgs": pgs })).await?;
        Ok(r.epoch)
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

    pub async fn pools(&self) -> Result<Vec<PoolRecord>, ClientError> {
        self.get("/api/v1/pools").await
    }

    pub async fn create_pool(&self, req: &CreatePool) -> Result<PoolRecord, ClientError> {
        self.post("/api/v1/pools", req).await
    }

    pub async fn delete_pool(&self, name: &str) -> Result<PoolRecord, ClientError> {
        self.call(Method::DELETE, &format!("/api/v1/pools/{}", encode_segment(name)), None, Duration::ZERO).await
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

    pub async fn delete_volume(&self, name: &str) -> Result<VolumeView, ClientError> {
        self.call(Method::DELETE, &format!("/api/v1/volumes/{}", encode_segment(name)), None, Duration::ZERO).await
    }
}
