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

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{Client, CompareOp, ConnectOptions, EventType, GetOptions, WatchOptions};

use crate::{validate_txn, watch_channel, Compare, MetaStore, MetaStoreError, Result, Txn, TxnOp, TxnResult, Versioned, Watch, WatchEvent};

/// Where and how to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix prepended to every key (may be empty).
    pub namespace: Vec<u8>,
    pub connect_timeout: Duration,
    /// Deadline of each unary call (get/range/txn/watch creation); past it the call fails
    /// with `Unavailable` (for `txn`: outcome unknown).
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
            request_timeout: Duration::from_secs(10),
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

/// Aborts the watch-forwarding task when the [`Watch`] is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(i64::try_from(from_revision).unwrap_or(i64::MAX));
        }
        let mut wc = self.client.watch_client();
        let mut stream = self.call(wc.watch(self.full_key(prefix), Some(options))).await?;
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
