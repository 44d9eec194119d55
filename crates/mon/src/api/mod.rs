//! The REST/JSON admin API (documented in `docs/api/openapi.yaml`, also served at
//! `GET /api/v1/openapi.yaml`). Handlers decode with [`decode`], call the [`Service`], and
//! answer errors through the one mapping [`MonError::status`] as
//! `{"error": message, "code": stable_code, "leader"?: url}`.
//!
//! [`Service`]: crate::service::Service

pub mod decode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Serialize;

use crate::error::{MonError, Result};
use crate::model::{ClusterMap, OsdRecord, PoolRecord, SessionRecord, SnapshotRecord, VolumeRecord};
use crate::server::Shared;
use crate::service::{CreatePool, CreateVolume, RegisterOsd, SessionLease, SessionUpdate};

/// The OpenAPI document of this API.
pub const OPENAPI_YAML: &str = include_str!("../../../../docs/api/openapi.yaml");

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<&'a str>,
}

impl IntoResponse for MonError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "API request failed");
        }
        let leader = match &self {
            MonError::NotLeader { leader } => leader.as_deref(),
            _ => None,
        };
        (status, Json(ErrorBody { error: self.to_string(), code: self.code(), leader })).into_response()
    }
}

type ApiResult<T> = Result<Json<T>>;
type St = State<Arc<Shared>>;

/// A volume as the API shows it: the record plus its pool's name.
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    #[serde(flatten)]
    pub volume: VolumeRecord,
    pub pool: String,
}

/// Answer of `POST /api/v1/volumes/{name}/snapshots/{snap}/rollback`: the volume, now
/// rolling back, and the snapshot it rolls back to.
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RollbackView {
    pub volume: VolumeView,
    pub snapshot: SnapshotRecord,
}

/// Answer of `DELETE /api/v1/sessions/{client}`.
#[derive(Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionDeleted {
    /// Whether there was a session (live or expired) to delete.
    pub deleted: bool,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.yaml", get(openapi))
        .route("/api/v1/status", get(status))
        .route("/api/v1/map", get(map))
        .route("/api/v1/config", get(get_config).put(put_config))
        .route("/api/v1/osds", get(list_osds).post(register_osd))
        .route("/api/v1/osds/{id}", get(get_osd).delete(remove_osd))
        .route("/api/v1/osds/{id}/out", post(osd_out))
        .route("/api/v1/osds/{id}/in", post(osd_in))
        .route("/api/v1/osds/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/pgs", get(list_pgs))
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route("/api/v1/pools/{name}", get(get_pool).delete(delete_pool))
        .route("/api/v1/volumes", get(list_volumes).post(create_volume))
        .route("/api/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route("/api/v1/volumes/{name}/resize", post(resize_volume))
        .route("/api/v1/volumes/{name}/purge", post(purge_volume))
        .route("/api/v1/volumes/{name}/rollback-done", post(finish_rollback))
        .route("/api/v1/volumes/{name}/flatten-done", post(flatten_done))
        .route("/api/v1/volumes/{name}/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/api/v1/volumes/{name}/snapshots/{snap}", delete(delete_snapshot))
        .route("/api/v1/volumes/{name}/snapshots/{snap}/rollback", post(begin_rollback))
        .route("/api/v1/volumes/{name}/snapshots/{snap}/clone", post(clone_snapshot))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{client}", put(put_session).delete(delete_session))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .layer(axum::extract::DefaultBodyLimit::max(decode::MAX_BODY))
        .with_state(shared)
}

/// Records request count and latency per matched route.
async fn track(State(shared): St, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map_or("<unmatched>", |m| m.as_str()).to_string();
    let resp = next.run(req).await;
    shared.metrics.record(method.as_str(), &route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn not_found() -> MonError {
    MonError::NotFoundRoute
}

async fn method_not_allowed(method: Method) -> MonError {
    MonError::MethodNotAllowed { method: method.to_string() }
}

async fn healthz(State(s): St) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "active": s.is_active(), "epoch": s.map_rx.borrow().epoch }))
}

async fn metrics(State(s): St) -> impl IntoResponse {
    let map = s.map_rx.borrow().clone();
    let space = s.osd_space(&map);
    let damage = s.osd_damage(&map);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(&map, s.is_active(), &space, &damage))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

async fn status(State(s): St) -> ApiResult<crate::service::ClusterStatus> {
    let mut st = s.service.status().await?;
    if s.is_active() {
        let mut by_state = std::collections::BTreeMap::new();
        for p in s.pg_states(&s.service.map().await?) {
            *by_state.entry(p.state).or_insert(0usize) += 1;
        }
        st.pgs_by_state = Some(by_state);
        let mut by_space = std::collections::BTreeMap::new();
        for o in s.osd_space(&s.service.map().await?).into_values() {
            *by_space.entry(o.state.as_str().to_string()).or_insert(0usize) += 1;
        }
        st.osds_by_space = Some(by_space);
    }
    Ok(Json(st))
}

/// PG states from the PG leaders' reports: only the active mon (which takes heartbeats)
/// has them; others answer 421 naming it.
async fn list_pgs(State(s): St) -> ApiResult<Vec<crate::pgstate::PgStateView>> {
    if !s.is_active() {
        return Err(MonError::NotLeader { leader: s.service.active_mon().await.ok().flatten() });
    }
    Ok(Json(s.pg_states(&s.service.map().await?)))
}

/// Without `newer_than`: the map as stored now. With it: waits (up to `wait_ms`) until this
/// mon has seen a newer epoch, then returns that map; on timeout returns the current one.
async fn map(State(s): St, RawQuery(q): RawQuery) -> ApiResult<ClusterMap> {
    let q = decode::map_query(q.as_deref())?;
    let Some(newer_than) = q.newer_than else { return Ok(Json(s.service.map().await?)) };
    let mut rx = s.map_rx.clone();
    let _ = tokio::time::timeout(Duration::from_millis(q.wait_ms), rx.wait_for(|m| m.epoch > newer_than)).await;
    let map = (**s.map_rx.borrow()).clone();
    Ok(Json(map))
}

/// An OSD's map record, plus its fullness where the answering mon knows it (the active mon,
/// from the OSD's heartbeats).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct OsdView {
    #[serde(flatten)]
    pub osd: OsdRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<crate::model::SpaceState>,
}

fn osd_views(s: &Shared, map: &ClusterMap, osds: Vec<OsdRecord>) -> Vec<OsdView> {
    let space = s.osd_space(map);
    osds.into_iter()
        .map(|osd| {
            let sp = space.get(&osd.id);
            OsdView { used_bytes: sp.map(|x| x.used_bytes), space: sp.map(|x| x.state), osd }
        })
        .collect()
}

async fn list_osds(State(s): St) -> ApiResult<Vec<OsdView>> {
    let map = s.service.map().await?;
    Ok(Json(osd_views(&s, &map, map.osds.clone())))
}

async fn get_config(State(s): St) -> ApiResult<crate::model::ClusterConfig> {
    Ok(Json(s.service.map().await?.config))
}

async fn put_config(State(s): St, body: Bytes) -> ApiResult<crate::model::ClusterConfig> {
    let config: crate::model::ClusterConfig = decode::body(&body)?;
    Ok(Json(s.service.set_config(&config).await?))
}

async fn register_osd(State(s): St, body: Bytes) -> ApiResult<OsdRecord> {
    let req: RegisterOsd = decode::body(&body)?;
    Ok(Json(s.service.register_osd(&req).await?))
}

async fn get_osd(State(s): St, Path(id): Path<String>) -> ApiResult<OsdView> {
    let id = decode::osd_id(&id)?;
    let map = s.service.map().await?;
    let osd = map.osd(id).cloned().ok_or(MonError::OsdNotFound { id })?;
    Ok(Json(osd_views(&s, &map, vec![osd]).remove(0)))
}

async fn osd_out(State(s): St, Path(id): Path<String>) -> ApiResult<OsdRecord> {
    Ok(Json(s.service.set_osd_in(decode::osd_id(&id)?, false).await?))
}

/// `tessera osd rm`: needs the PG reports, which only the active mon has.
async fn remove_osd(State(s): St, Path(id): Path<String>) -> ApiResult<OsdRecord> {
    let id = decode::osd_id(&id)?;
    if !s.is_active() {
        return Err(MonError::NotLeader { leader: s.service.active_mon().await.ok().flatten() });
    }
    let map = s.service.map().await?;
    let needing = crate::pgstate::still_needing(&s.pg_states(&map), id);
    Ok(Json(s.service.remove_osd(id, &needing).await?))
}

async fn osd_in(State(s): St, Path(id): Path<String>) -> ApiResult<OsdRecord> {
    Ok(Json(s.service.set_osd_in(decode::osd_id(&id)?, true).await?))
}

#[derive(Serialize, serde::Deserialize)]
pub struct HeartbeatReply {
    /// The newest map epoch this mon knows; an OSD behind it should fetch the map.
    pub epoch: u64,
}

/// Only the active mon takes heartbeats; others answer 421 with the leader's address.
async fn heartbeat(State(s): St, Path(id): Path<String>, body: Bytes) -> ApiResult<HeartbeatReply> {
    let id = decode::osd_id(&id)?;
    let hb: decode::Heartbeat = if body.is_empty() { Default::default() } else { decode::body(&body)? };
    if hb.pgs.len() > decode::MAX_PG_REPORTS {
        return Err(MonError::BadRequest(format!("{} PG reports in one heartbeat; the limit is {}", hb.pgs.len(), decode::MAX_PG_REPORTS)));
    }
    if let Some(sp) = &hb.space {
        if sp.backfill_waiting.len() > crate::space::MAX_WAITING || sp.backfill_waiting.iter().any(|p| p.len() > 32) {
            return Err(MonError::BadRequest(format!(
                "a space report names at most {} PGs of at most 32 characters",
                crate::space::MAX_WAITING
            )));
        }
    }
    if hb.damaged.len() > crate::space::MAX_WAITING || hb.damaged.iter().any(|p| p.len() > 32) {
        return Err(MonError::BadRequest(format!(
            "a heartbeat names at most {} damaged PGs of at most 32 characters",
            crate::space::MAX_WAITING
        )));
    }
    let known = match s.heartbeat(id, None) {
        Some(false) => s.heartbeat(id, Some(&s.service.map().await?)),
        other => other,
    };
    match known {
        Some(true) => {
            s.record_reports(id, hb.pgs);
            if let Some(sp) = hb.space {
                s.record_space(id, sp);
            }
            s.record_damage(id, hb.damaged);
            Ok(Json(HeartbeatReply { epoch: s.map_rx.borrow().epoch }))
        }
        Some(false) => Err(MonError::OsdNotFound { id }),
        None => Err(MonError::NotLeader { leader: s.service.active_mon().await.ok().flatten() }),
    }
}

async fn list_pools(State(s): St) -> ApiResult<Vec<PoolRecord>> {
    Ok(Json(s.service.map().await?.pools))
}

async fn create_pool(State(s): St, body: Bytes) -> Result<(StatusCode, Json<PoolRecord>)> {
    let req: CreatePool = decode::body(&body)?;
    Ok((StatusCode::CREATED, Json(s.service.create_pool(&req).await?)))
}

async fn get_pool(State(s): St, Path(name): Path<String>) -> ApiResult<PoolRecord> {
    Ok(Json(s.service.map().await?.pool_by_name(&name).cloned().ok_or(MonError::PoolNotFound { name })?))
}

async fn delete_pool(State(s): St, Path(name): Path<String>) -> ApiResult<PoolRecord> {
    Ok(Json(s.service.delete_pool(&name).await?))
}

/// Adds the pool's name from the cached map (pool names never change; a pool created an
/// instant ago and not yet in the cache is read from the store).
async fn view(s: &Shared, v: VolumeRecord) -> Result<VolumeView> {
    let cached = s.map_rx.borrow().pool(v.pool_id).map(|p| p.name.clone());
    let pool = match cached {
        Some(name) => name,
        None => s.service.map().await?.pool(v.pool_id).map_or_else(|| format!("<deleted pool {}>", v.pool_id), |p| p.name.clone()),
    };
    Ok(VolumeView { volume: v, pool })
}

async fn list_volumes(State(s): St) -> ApiResult<Vec<VolumeView>> {
    let map = s.service.map().await?;
    let vols = s.service.list_volumes().await?;
    Ok(Json(
        vols.into_iter()
            .map(|v| {
                let pool = map.pool(v.pool_id).map_or_else(|| format!("<deleted pool {}>", v.pool_id), |p| p.name.clone());
                VolumeView { volume: v, pool }
            })
            .collect(),
    ))
}

async fn create_volume(State(s): St, body: Bytes) -> Result<(StatusCode, Json<VolumeView>)> {
    let req: CreateVolume = decode::body(&body)?;
    let v = s.service.create_volume(&req).await?;
    Ok((StatusCode::CREATED, Json(VolumeView { volume: v, pool: req.pool })))
}

async fn get_volume(State(s): St, Path(name): Path<String>) -> ApiResult<VolumeView> {
    let v = s.service.volume(&name).await?;
    Ok(Json(view(&s, v).await?))
}

async fn resize_volume(State(s): St, Path(name): Path<String>, body: Bytes) -> ApiResult<VolumeView> {
    let req: decode::Resize = decode::body(&body)?;
    let v = s.service.resize_volume(&name, req.size, req.allow_shrink).await?;
    Ok(Json(view(&s, v).await?))
}

/// Marks the volume `deleting` (resumable); `purge` removes it once its objects are gone.
async fn delete_volume(State(s): St, Path(name): Path<String>) -> ApiResult<VolumeView> {
    let v = s.service.delete_volume(&name).await?;
    Ok(Json(view(&s, v).await?))
}

async fn purge_volume(State(s): St, Path(name): Path<String>) -> ApiResult<VolumeView> {
    let v = s.service.purge_volume(&name).await?;
    Ok(Json(view(&s, v).await?))
}

async fn list_snapshots(State(s): St, Path(name): Path<String>) -> ApiResult<Vec<SnapshotRecord>> {
    let v = s.service.volume(&name).await?;
    Ok(Json(s.service.snapshots(v.id).await?))
}

/// Answers once the snapshot is fenced (see `Service::create_snapshot`).
async fn create_snapshot(State(s): St, Path(name): Path<String>, body: Bytes) -> Result<(StatusCode, Json<SnapshotRecord>)> {
    let req: decode::CreateSnapshot = decode::body(&body)?;
    Ok((StatusCode::CREATED, Json(s.service.create_snapshot(&name, &req.name).await?)))
}

async fn delete_snapshot(State(s): St, Path((name, snap)): Path<(String, String)>) -> ApiResult<SnapshotRecord> {
    Ok(Json(s.service.delete_snapshot(&name, &snap).await?))
}

async fn begin_rollback(State(s): St, Path((name, snap)): Path<(String, String)>) -> ApiResult<RollbackView> {
    let (v, snapshot) = s.service.begin_rollback(&name, &snap).await?;
    Ok(Json(RollbackView { volume: view(&s, v).await?, snapshot }))
}

async fn finish_rollback(State(s): St, Path(name): Path<String>) -> ApiResult<VolumeView> {
    let v = s.service.finish_rollback(&name).await?;
    Ok(Json(view(&s, v).await?))
}

async fn clone_snapshot(State(s): St, Path((name, snap)): Path<(String, String)>, body: Bytes) -> Result<(StatusCode, Json<VolumeView>)> {
    let req: decode::CloneSnapshot = decode::body(&body)?;
    let v = s.service.clone_snapshot(&name, &snap, &req.name).await?;
    Ok((StatusCode::CREATED, Json(view(&s, v).await?)))
}

async fn flatten_done(State(s): St, Path(name): Path<String>) -> ApiResult<VolumeView> {
    let v = s.service.flatten_done(&name).await?;
    Ok(Json(view(&s, v).await?))
}

async fn list_sessions(State(s): St) -> ApiResult<Vec<SessionRecord>> {
    Ok(Json(s.service.sessions().await?))
}

async fn put_session(State(s): St, Path(client): Path<String>, body: Bytes) -> ApiResult<SessionLease> {
    let client = decode::client_id(&client)?;
    let upd: SessionUpdate = decode::body(&body)?;
    Ok(Json(s.service.put_session(client, &upd).await?))
}

async fn delete_session(State(s): St, Path(client): Path<String>) -> ApiResult<SessionDeleted> {
    let deleted = s.service.delete_session(decode::client_id(&client)?).await?;
    Ok(Json(SessionDeleted { deleted }))
}
