//! Shared by the mon's integration tests: the two metastore backends (embedded redb and a
//! real etcd) behind one [`Backend`], request builders, and `both!`, which instantiates a
//! generic async test case per backend.
#![allow(dead_code)] // each test file uses a subset

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tessera_metastore::{EmbeddedStore, EtcdOptions, EtcdStore, MetaStore};
use tessera_mon::model::DomainLevel;
use tessera_mon::service::{CreatePool, CreateVolume, RegisterOsd};
use tessera_mon::Service;
use tessera_testkit::etcd::EtcdServer;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Embedded,
    Etcd,
}

pub struct Backend {
    kind: Kind,
    _dir: tempfile::TempDir,
    embedded: Option<EmbeddedStore>,
    namespace: String,
}

impl Backend {
    pub async fn new(kind: Kind, case: &str) -> Backend {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap();
        let embedded = match kind {
            Kind::Embedded => Some(EmbeddedStore::open(dir.path().join("mon.redb")).await.unwrap()),
            Kind::Etcd => None,
        };
        let namespace = format!("/mon-test/{}/{case}/{}/", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        Backend { kind, _dir: dir, embedded, namespace }
    }

    /// An independent connection to the same store (embedded: the one shared handle, as
    /// only one process may open the file).
    pub async fn connect(&self) -> Arc<dyn MetaStore> {
        match self.kind {
            Kind::Embedded => Arc::new(self.embedded.clone().unwrap()),
            Kind::Etcd => {
                let server = EtcdServer::shared();
                Arc::new(EtcdStore::connect(EtcdOptions::new([server.endpoint.clone()], self.namespace.as_bytes().to_vec())).await.unwrap())
            }
        }
    }
}

pub fn osd_req(i: u32, host: &str) -> RegisterOsd {
    RegisterOsd {
        uuid: format!("uuid-{i}"),
        addr: format!("127.0.0.1:{}", 9000 + i),
        host: host.into(),
        rack: None,
        device: format!("/dev/nvme{i}n1"),
        capacity_bytes: 1 << 40,
        weight: None,
    }
}

pub fn pool_req(name: &str, pg_count: u32) -> CreatePool {
    CreatePool { name: name.into(), replicas: 3, pg_count, failure_domain: DomainLevel::Host }
}

pub fn vol_req(name: &str, pool: &str, size: u64) -> CreateVolume {
    CreateVolume { name: name.into(), pool: pool.into(), size, object_size: 4 << 20 }
}

pub async fn epoch(svc: &Service) -> u64 {
    svc.map().await.unwrap().epoch
}

/// Instantiates each `cases::$case(Backend)` of the including test file once per backend
/// (modules `embedded` and `etcd`).
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case($crate::common::Backend::new($crate::common::Kind::Embedded, stringify!($case)).await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case($crate::common::Backend::new($crate::common::Kind::Etcd, stringify!($case)).await).await;
                }
            )*
        }
    };
}
