//! The client against an in-process mon (embedded store): connect, open a volume, follow
//! map changes through the long poll. Data still goes to FAKE OSDs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_client::{Client, ClientError};
use tessera_metastore::EmbeddedStore;
use tessera_mon::model::DomainLevel;
use tessera_mon::service::{CreatePool, CreateVolume, RegisterOsd};
use tessera_mon::{MonClient, MonConfig};

use crate::fake_osd::FakeCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_opens_a_volume_and_follows_map_changes() {
    const OBJECT: u64 = 64 << 10;
    let cluster = FakeCluster::start(3, OBJECT, 8).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path().join("mon.redb")).await.unwrap());
    let mon = tessera_mon::start(store, MonConfig::new("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let endpoints = vec![mon.addr.to_string()];
    let admin = MonClient::new(&endpoints, Duration::from_secs(5)).unwrap();
    for o in &cluster.osds {
        let reg = RegisterOsd {
            uuid: format!("fake-{}", o.id),
            addr: o.addr.clone(),
            host: format!("host-{}", o.id),
            rack: None,
            device: "fake".into(),
            capacity_bytes: 1 << 40,
            weight: None,
        };
        admin.register_osd(&reg).await.unwrap();
    }
    let pool = CreatePool { name: "p".into(), replicas: 3, pg_count: 8, failure_domain: DomainLevel::Osd };
    admin.create_pool(&pool).await.unwrap();
    let vol = CreateVolume { name: "v".into(), pool: "p".into(), size: 4 * OBJECT, object_size: OBJECT };
    admin.create_volume(&vol).await.unwrap();

    let client = Client::connect(&endpoints, crate::opts(5_000, 1_000)).await.unwrap();
    let v = client.open_volume("v").await.unwrap();
    assert_eq!((v.size(), v.object_size(), v.name()), (4 * OBJECT, OBJECT, "v"));
    let data: Vec<u8> = (0..3 * OBJECT).map(|i| (i % 251) as u8).collect();
    v.write(1000, Bytes::from(data.clone())).await.unwrap();
    assert!(v.read(1000, 3 * OBJECT).await.unwrap()[..] == data[..]);

    let err = client.open_volume("missing").await.unwrap_err();
    assert!(matches!(&err, ClientError::Mon { source, .. } if source.status() == Some(404)), "{err}");

    // A map change reaches the client through the long poll.
    let before = client.map().epoch;
    admin.set_osd_in(1, false).await.unwrap();
    let after = client.wait_for_map_newer_than(before, Duration::from_secs(5)).await.expect("no newer map within 5 s");
    assert!(!after.osd(1).unwrap().in_);
    assert_eq!(client.map().epoch, after.epoch);

    drop(client);
    mon.shutdown().await;
}
