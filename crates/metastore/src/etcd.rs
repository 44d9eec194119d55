//! etcd backend: a thin mapping of [`MetaStore`] onto etcd v3's KV, Txn and Watch APIs.
//!
//! Every key is stored as `namespace ++ key`, so several stores (e.g. tests, or clusters)
//! can share one etcd; keys returned to callers have the namespace stripped. Revisions are
//! etcd's own (cluster-wide, shared by all namespaces: a change in another namespace also
//! advances [`MetaStore::current_revision`]). Reads are linearizable (etcd's default).
//!
//! Mapping: `Compare::ModRevision` -> `mod_revision ==`; `Compare::Absent` -> `version == 0`;
//! `Compare::ValueEquals` -> `value ==` (false on an absent key, as in etcd).
//! Limits of the server apply: `--max-txn-ops` (default 128 ops per branch) and
//! `--max-request-bytes` (default 1.5 MiB) give `InvalidArgument`. Watches can start at any
//! revision not yet compacted by etcd; older ones end with `Compacted`.
//!
//! Elections ([`MetaStore::campaign`]): each candidate grants itself a lease of `ttl` and keeps
//! it alive (a keep-alive every `ttl / 3`), then tries `txn(version(key) == 0 -> put(key,
//! value, lease))`. If the key is taken it watches the key (from the revision of the failed
//! txn + 1) until it is deleted, then tries again. The winner's key lives exactly as long as
//! its lease: revoked on resign/drop, expired by etcd `ttl` after the last keep-alive. A
//! watchdog per leadership reports it lost when the lease is gone or no keep-alive succeeded
//! for `ttl`, or when the key is deleted or replaced. The key is namespaced like every other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{Client, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::election::Hold;
use crate::{
    validate_txn, watch_channel, AbortOnDrop, Compare, Leadership, MetaStore, MetaStoreError, Result, Txn, TxnOp, TxnResult, Versioned,
    Watch, WatchEvent,
};

/// Where and how to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix prepended to every key (may be empty).
    pub namespace: Vec<u8>,
    pub connect_timeout: Duration,
    /// Deadline of each unary call (get/range/txn/watch creation); past it the call fails
    /// with `Unavailable` (for `txn`: outcome unknown). Default 5 s: under the CLI's 10 s, so
    /// with etcd away an admin command gets the mon's `503 store_unavailable`, not a timeout.
    pub request_timeout: Duration,
    /// Events buffered per watch before the watch stops reading from etcd (backpressure).
    pub watch_buffer: usize,
}

impl EtcdOptions {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>, namespace: impl Into<Vec<u8>>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: namespace.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            watch_buffer: 1_024,
        }
    }
}

/// [`MetaStore`] on an etcd cluster. Cheap to clone (clones share the gRPC channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    opts: EtcdOptions,
    endpoint: String,
}

impl EtcdStore {
    /// Connects and checks that the cluster answers.
    pub async fn connect(opts: EtcdOptions) -> Result<Self> {
        let endpoint = opts.endpoints.join(",");
        if opts.endpoints.is_empty() {
            return Err(MetaStoreError::InvalidArgument("no etcd endpoint given".into()));
        }
        let connect = ConnectOptions::new().with_connect_timeout(opts.connect_timeout);
        let client = tokio::time::timeout(opts.connect_timeout, Client::connect(&opts.endpoints, Some(connect)))
            .await
            .map_err(|_| MetaStoreError::Unavailable { endpoint: endpoint.clone(), reason: "connect timed out".into() })?
            .map_err(|e| map_etcd(&endpoint, e))?;
        let store = EtcdStore { client, opts, endpoint };
        store.current_revision().await?;
        Ok(store)
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.opts.namespace.len() + key.len());
        k.extend_from_slice(&self.opts.namespace);
        k.extend_from_slice(key);
        k
    }

    fn strip<'a>(&self, key: &'a [u8]) -> Result<&'a [u8]> {
        key.strip_prefix(self.opts.namespace.as_slice())
            .ok_or_else(|| MetaStoreError::Corrupt(format!("etcd returned key {key:?} outside namespace {:?}", self.opts.namespace)))
    }

    async fn call<T>(&self, fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(r) => r.map_err(|e| map_etcd(&self.endpoint, e)),
            Err(_) => Err(MetaStoreError::Unavailable { endpoint: self.endpoint.clone(), reason: "request timed out".into() }),
        }
    }

    /// [`MetaStore::watch`] of `key` (the caller's key, namespace not included): of every key
    /// starting with it if `prefix`, else of exactly that key.
    async fn watch_keys(&self, key: &[u8], prefix: bool, from_revision: u64) -> Result<Watch> {
        let mut options = WatchOptions::new();
        if prefix {
            options = options.with_prefix();
        }
        if from_revision > 0 {
            options = options.with_start_revision(i64::try_from(from_revision).unwrap_or(i64::MAX));
        }
        let mut wc = self.client.watch_client();
        let mut stream = self.call(wc.watch(self.full_key(key), Some(options))).await?;
        // Wait for etcd to confirm creation: from then on no event is missed, even for
        // `from_revision == 0` ("after now").
        let first = self.call(stream.message()).await?;
        let Some(first) = first else {
            return Err(MetaStoreError::Unavailable { endpoint: self.endpoint.clone(), reason: "watch stream closed at creation".into() });
        };
        if first.compact_revision() > 0 {
            return Err(MetaStoreError::Compacted { revision: to_u64(first.compact_revision()) });
        }
        if first.canceled() {
            return Err(MetaStoreError::Backend(format!("etcd canceled the watch: {}", first.cancel_reason())));
        }
        let (sender, watch_placeholder) = watch_channel(self.opts.watch_buffer.max(1));
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut pending = Some(first);
            loop {
                let resp = match pending.take() {
                    Some(r) => r,
                    None => match stream.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let reason = "watch stream ended".to_string();
                            return sender.fail(MetaStoreError::Unavailable { endpoint: this.endpoint.clone(), reason });
                        }
                        Err(e) => return sender.fail(map_etcd(&this.endpoint, e)),
                    },
                };
                if resp.compact_revision() > 0 {
                    return sender.fail(MetaStoreError::Compacted { revision: to_u64(resp.compact_revision()) });
                }
                if resp.canceled() {
                    return sender.fail(MetaStoreError::Backend(format!("etcd canceled the watch: {}", resp.cancel_reason())));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = match this.strip(kv.key()) {
                        Ok(k) => k.to_vec(),
                        Err(e) => return sender.fail(e),
                    };
                    let rev = to_u64(kv.mod_revision());
                    let out = match ev.event_type() {
                        EventType::Put => WatchEvent::Put { key, value: Bytes::copy_from_slice(kv.value()), mod_revision: rev },
                        EventType::Delete => WatchEvent::Delete { key, revision: rev },
                    };
                    if sender.tx.send(out).await.is_err() {
                        return; // the Watch was dropped
                    }
                }
            }
        });
        let mut watch = watch_placeholder;
        watch.set_guard(Box::new(AbortOnDrop(task)));
        Ok(watch)
    }
}

fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

/// gRPC status codes (numeric, as in the gRPC spec) we map specially.
const GRPC_CANCELLED: i32 = 1;
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_OUT_OF_RANGE: i32 = 11;
const GRPC_UNAVAILABLE: i32 = 14;

fn map_etcd(endpoint: &str, e: etcd_client::Error) -> MetaStoreError {
    use etcd_client::Error as E;
    let unavailable = |reason: String| MetaStoreError::Unavailable { endpoint: endpoint.to_string(), reason };
    match e {
        E::TransportError(t) => unavailable(t.to_string()),
        E::IoError(io) => unavailable(io.to_string()),
        E::GRpcStatus(s) => match s.code() as i32 {
            GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED | GRPC_CANCELLED => unavailable(s.message().to_string()),
            GRPC_INVALID_ARGUMENT => MetaStoreError::InvalidArgument(s.message().to_string()),
            GRPC_OUT_OF_RANGE if s.message().contains("compacted") => MetaStoreError::Compacted { revision: 0 },
            _ => MetaStoreError::Backend(s.to_string()),
        },
        E::InvalidArgs(m) => MetaStoreError::InvalidArgument(m),
        other => MetaStoreError::Backend(other.to_string()),
    }
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        if key.is_empty() {
            return Err(MetaStoreError::InvalidArgument("empty key".into()));
        }
        let mut kv = self.client.kv_client();
        let resp = self.call(kv.get(self.full_key(key), None)).await?;
        Ok(resp.kvs().first().map(|kv| Versioned { value: Bytes::copy_from_slice(kv.value()), mod_revision: to_u64(kv.mod_revision()) }))
    }

    async fn range(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>> {
        let mut kv = self.client.kv_client();
        let resp = self.call(kv.get(self.full_key(prefix), Some(GetOptions::new().with_prefix()))).await?;
        // etcd returns ranges sorted by key bytes (ascending) by default.
        resp.kvs()
            .iter()
            .map(|kv| {
                let v = Versioned { value: Bytes::copy_from_slice(kv.value()), mod_revision: to_u64(kv.mod_revision()) };
                Ok((self.strip(kv.key())?.to_vec(), v))
            })
            .collect()
    }

    async fn current_revision(&self) -> Result<u64> {
        let mut kv = self.client.kv_client();
        // Any range answers with the store revision in its header; count-only reads no data.
        // Ask inside the namespace (etcd rejects an empty key; RBAC may confine us to it).
        let key = if self.opts.namespace.is_empty() { vec![0u8] } else { self.opts.namespace.clone() };
        let resp = self.call(kv.get(key, Some(GetOptions::new().with_count_only()))).await?;
        Ok(resp.header().map_or(0, |h| to_u64(h.revision())))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        validate_txn(&txn)?;
        let compares: Vec<etcd_client::Compare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    let rev = i64::try_from(*revision).unwrap_or(i64::MAX);
                    etcd_client::Compare::mod_revision(self.full_key(key), CompareOp::Equal, rev)
                }
                Compare::Absent { key } => etcd_client::Compare::version(self.full_key(key), CompareOp::Equal, 0),
                Compare::ValueEquals { key, value } => etcd_client::Compare::value(self.full_key(key), CompareOp::Equal, value.to_vec()),
            })
            .collect();
        let ops = |branch: &[TxnOp]| -> Vec<etcd_client::TxnOp> {
            branch
                .iter()
                .map(|op| match op {
                    TxnOp::Put { key, value } => etcd_client::TxnOp::put(self.full_key(key), value.to_vec(), None),
                    TxnOp::Delete { key } => etcd_client::TxnOp::delete(self.full_key(key), None),
                })
                .collect()
        };
        let etxn = etcd_client::Txn::new().when(compares).and_then(ops(&txn.success)).or_else(ops(&txn.failure));
        let mut kv = self.client.kv_client();
        let resp = self.call(kv.txn(etxn)).await?;
        let revision = resp.header().map_or(0, |h| to_u64(h.revision()));
        Ok(TxnResult { succeeded: resp.succeeded(), revision })
    }

    async fn watch(&self, prefix: &[u8], from_revision: u64) -> Result<Watch> {
        self.watch_keys(prefix, true, from_revision).await
    }

    async fn campaign(&self, election: &[u8], value: Bytes, ttl: Duration) -> Result<Leadership> {
        self.campaign_impl(election, value, ttl).await
    }
}

// ---- elections ----

/// Pause before looking again after a watch broke, so that a failing etcd is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// gRPC NotFound: etcd's answer to revoking a lease that no longer exists.
const GRPC_NOT_FOUND: i32 = 5;

/// `ttl` in the whole seconds etcd counts leases in: rounded up, at least 1.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

impl EtcdStore {
    async fn campaign_impl(&self, election: &[u8], value: Bytes, ttl: Duration) -> Result<Leadership> {
        if election.is_empty() {
            return Err(MetaStoreError::InvalidArgument("empty election key".into()));
        }
        let asked_at = Instant::now();
        let mut leases = self.client.lease_client();
        // If this future is dropped while the grant is in flight, etcd may still create the
        // lease; it has no key attached and simply expires after `ttl`.
        let grant = self.call(leases.grant(ttl_seconds(ttl), None)).await?;
        // From here on, dropping `lease` (error or cancellation) revokes it, and so deletes
        // the key if it was attached to it.
        let granted_ttl = Duration::from_secs(to_u64(grant.ttl()));
        let lease = EtcdLease::start(self.clone(), grant.id(), granted_ttl, asked_at);
        if grant.ttl() <= 0 {
            return Err(MetaStoreError::Backend(format!("etcd granted lease {} with TTL {}", grant.id(), grant.ttl())));
        }
        let full = self.full_key(election);
        let mut kv = self.client.kv_client();
        loop {
            if lease.is_lost() {
                let reason = "campaign lease expired before winning (keep-alives failed for its ttl)".to_string();
                return Err(MetaStoreError::Unavailable { endpoint: self.endpoint.clone(), reason });
            }
            let create = etcd_client::Txn::new()
                .when(vec![etcd_client::Compare::version(full.clone(), CompareOp::Equal, 0)])
                .and_then(vec![etcd_client::TxnOp::put(full.clone(), value.to_vec(), Some(PutOptions::new().with_lease(lease.id)))]);
            let resp = self.call(kv.txn(create)).await?;
            let revision = resp.header().map_or(0, |h| to_u64(h.revision()));
            if resp.succeeded() {
                return Ok(lease.into_leadership(election.to_vec(), revision));
            }
            // Taken (at `revision`): wait until the key is deleted, then try again. If the
            // watch cannot show what happened since (compacted, broken), just try again.
            let mut w = match self.watch_keys(election, false, revision + 1).await {
                Ok(w) => w,
                Err(MetaStoreError::Compacted { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut lost = lease.lost_rx.clone();
            loop {
                tokio::select! {
                    ev = w.next() => match ev {
                        Some(Ok(WatchEvent::Delete { .. })) => break,
                        Some(Ok(WatchEvent::Put { .. })) => {}
                        Some(Err(_)) | None => {
                            tokio::time::sleep(RETRY_PAUSE).await;
                            break;
                        }
                    },
                    () = until_lost(&mut lost) => break,
                }
            }
        }
    }

    /// Revokes lease `id` (deleting its keys). A lease that no longer exists is `Ok`.
    async fn revoke(&self, id: i64) -> Result<()> {
        let mut leases = self.client.lease_client();
        match tokio::time::timeout(self.opts.request_timeout, leases.revoke(id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() as i32 == GRPC_NOT_FOUND => Ok(()),
            Ok(Err(e)) => Err(map_etcd(&self.endpoint, e)),
            Err(_) => Err(MetaStoreError::Unavailable { endpoint: self.endpoint.clone(), reason: "lease revoke timed out".into() }),
        }
    }

    /// `(mod_revision of key if present, store revision of the read)`.
    async fn mod_revision_at(&self, key: &[u8]) -> Result<(Option<u64>, u64)> {
        let mut kv = self.client.kv_client();
        let resp = self.call(kv.get(self.full_key(key), None)).await?;
        let at = resp.header().map_or(0, |h| to_u64(h.revision()));
        Ok((resp.kvs().first().map(|kv| to_u64(kv.mod_revision())), at))
    }
}

/// A candidate's or leader's lease, with its watchdog tasks. Dropping it (unless resigned)
/// stops the tasks and revokes the lease in a spawned task (best effort: without a tokio
/// runtime, or if etcd is unreachable, the lease expires after its TTL instead).
struct EtcdLease {
    store: EtcdStore,
    id: i64,
    lost_tx: watch::Sender<bool>,
    lost_rx: watch::Receiver<bool>,
    frozen: Arc<AtomicBool>,
    tasks: Vec<AbortOnDrop>,
    /// The lease is known to be revoked: nothing left to release.
    revoked: bool,
}

impl EtcdLease {
    /// Takes charge of lease `id` (granted with `ttl`, asked for at `asked_at`) and starts
    /// keeping it alive.
    fn start(store: EtcdStore, id: i64, ttl: Duration, asked_at: Instant) -> Self {
        let (lost_tx, lost_rx) = watch::channel(false);
        let frozen = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_alive(store.clone(), id, ttl, asked_at, lost_tx.clone(), frozen.clone()));
        EtcdLease { store, id, lost_tx, lost_rx, frozen, tasks: vec![AbortOnDrop(keeper)], revoked: false }
    }

    fn is_lost(&self) -> bool {
        *self.lost_rx.borrow()
    }

    /// The campaign won with the key created at `revision`: watch the key too.
    fn into_leadership(mut self, key: Vec<u8>, revision: u64) -> Leadership {
        let guard = tokio::spawn(guard_key(self.store.clone(), key.clone(), revision, self.lost_tx.clone()));
        self.tasks.push(AbortOnDrop(guard));
        let lost = self.lost_rx.clone();
        Leadership::new(key, revision, lost, Box::new(self))
    }
}

#[async_trait]
impl Hold for EtcdLease {
    async fn resign(&mut self) -> Result<()> {
        self.tasks.clear();
        self.lost_tx.send_replace(true);
        self.store.revoke(self.id).await?;
        self.revoked = true;
        Ok(())
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        self.tasks.clear();
        if self.revoked {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, id) = (self.store.clone(), self.id);
            rt.spawn(async move {
                let _ = store.revoke(id).await;
            });
        }
    }
}

/// Resolves once `lost` is set (or its senders are gone).
async fn until_lost(lost: &mut watch::Receiver<bool>) {
    let _ = lost.wait_for(|l| *l).await;
}

/// Next keep-alive response, or never if no keep-alive stream is open.
async fn next_response(
    stream: &mut Option<LeaseKeepAliveStream>,
) -> Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error> {
    match stream {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

/// Keeps lease `id` alive (a keep-alive every `ttl / 3`, reopening the stream when it breaks)
/// until it is lost, then sets `lost` and ends. Lost: etcd answers a keep-alive with TTL 0
/// (expired or revoked), or no keep-alive succeeded for `ttl`. The deadline counts from when
/// the last acknowledged keep-alive was *sent*, so it passes no later than etcd's own (which
/// counts from when etcd received it). Also ends, without renewing further, once `lost` is set
/// by someone else (the key is gone: the lease holds nothing any more).
async fn keep_alive(store: EtcdStore, id: i64, ttl: Duration, asked_at: Instant, lost: watch::Sender<bool>, frozen: Arc<AtomicBool>) {
    let mut expires = asked_at + ttl;
    let mut keeper: Option<LeaseKeeper> = None;
    let mut responses: Option<LeaseKeepAliveStream> = None;
    // Send times of the keep-alives not answered yet, oldest first (answers come in order).
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let mut ticks = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_rx = lost.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(expires) => break,
            () = until_lost(&mut lost_rx) => return,
            _ = ticks.tick() => {
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                let now = Instant::now();
                if let Some(k) = keeper.as_mut() {
                    // Bounded by the deadline: a stuck stream must not keep us from noticing it.
                    match tokio::time::timeout_at(expires, k.keep_alive()).await {
                        Ok(Ok(())) => in_flight.push_back(now),
                        _ => {
                            (keeper, responses) = (None, None);
                            in_flight.clear();
                        }
                    }
                } else {
                    // (Re)open the stream; opening it sends (and awaits) one keep-alive.
                    let mut leases = store.client.lease_client();
                    let budget = expires.saturating_duration_since(now).min(store.opts.request_timeout);
                    match tokio::time::timeout(budget, leases.keep_alive(id)).await {
                        Ok(Ok((k, r))) => {
                            expires = expires.max(now + ttl);
                            (keeper, responses) = (Some(k), Some(r));
                            in_flight.clear();
                        }
                        // etcd answered TTL 0: the lease is gone.
                        Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => break,
                        _ => {} // unreachable or slow: try again at the next tick
                    }
                }
            }
            msg = next_response(&mut responses) => match msg {
                Ok(Some(resp)) => {
                    let sent = in_flight.pop_front();
                    if resp.ttl() <= 0 {
                        break;
                    }
                    if let Some(sent) = sent {
                        expires = expires.max(sent + Duration::from_secs(to_u64(resp.ttl())));
                    }
                }
                Ok(None) | Err(_) => {
                    (keeper, responses) = (None, None);
                    in_flight.clear();
                }
            },
        }
    }
    lost.send_replace(true);
}

/// Sets `lost` once the leadership key (`key`, created at `revision`) is deleted or replaced.
async fn guard_key(store: EtcdStore, key: Vec<u8>, revision: u64, lost: watch::Sender<bool>) {
    let mut from = revision + 1;
    loop {
        if let Ok(mut w) = store.watch_keys(&key, false, from).await {
            // Any event of the key after `revision` is its delete or someone else's put.
            if let Some(Ok(_)) = w.next().await {
                break;
            }
        }
        // The watch could not start or broke (etcd unreachable, history compacted): look at
        // the key itself, and watch again from there.
        tokio::time::sleep(RETRY_PAUSE).await;
        if let Ok((current, at)) = store.mod_revision_at(&key).await {
            if current != Some(revision) {
                break;
            }
            from = at + 1;
        }
    }
    lost.send_replace(true);
}
