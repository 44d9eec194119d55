//! Routing and retries: leader hints, fail-over, map waits, deduplication, timeouts.
//! All PGs of these maps have the replicas `[1, 2, 3]` unless a test says otherwise.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::{Client, ClientError, ObjectRequest, SNAP_HEAD};
use tessera_wire::{OpCode, Status, WirePg};

use crate::fake_osd::{FakeCluster, Mode, POOL, VOLUME};

const OBJECT: u64 = 64 << 10;

/// One PG, so every object has the same replicas and leader-cache entry.
async fn cluster() -> FakeCluster {
    FakeCluster::start(3, OBJECT, 1).await
}

fn req(op: OpCode, object: u64, offset: u64) -> ObjectRequest {
    ObjectRequest::new(op, POOL, VOLUME, object, SNAP_HEAD, offset, 4096)
}

async fn write(c: &Client, object: u64, fill: u8) -> Result<(), ClientError> {
    c.request(req(OpCode::Write, object, 0), Bytes::from(vec![fill; 4096])).await.map(drop)
}

async fn read(c: &Client, object: u64) -> Bytes {
    c.request(req(OpCode::Read, object, 0), Bytes::new()).await.unwrap().1
}

fn osds_seen(cluster: &FakeCluster) -> Vec<u32> {
    cluster.log().iter().map(|s| s.osd).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_hint_redirects_to_the_named_replica_and_is_cached() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    cluster.osd(1).set_mode(Mode::NotLeader(Some(3)));
    cluster.osd(2).set_mode(Mode::Retry);
    write(&client, 0, 0xaa).await.unwrap();
    assert_eq!(osds_seen(&cluster), [1, 3], "1 named 3 as leader; 2 is never asked");
    let log = cluster.log();
    assert_eq!((log[0].req.client, log[0].req.seq), (log[1].req.client, log[1].req.seq), "the redirect is the same request");
    cluster.clear_log();
    assert_eq!(&read(&client, 0).await[..], &[0xaa; 4096][..]);
    assert_eq!(osds_seen(&cluster), [3], "the leader is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_without_a_usable_hint_tries_the_next_replica() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    cluster.osd(1).script([Mode::NotLeader(None)]);
    write(&client, 0, 1).await.unwrap();
    assert_eq!(osds_seen(&cluster), [1, 2]);
    cluster.clear_log();
    cluster.osd(2).script([Mode::NotLeader(Some(99))]);
    write(&client, 0, 2).await.unwrap();
    assert_eq!(osds_seen(&cluster), [2, 3], "osd 99 is not a replica: ignored");
}

/// A PG the map moves away from its leader's OSD (`osd out`, or a new OSD taking its
/// place) keeps that leader until the new replicas have copied it; the replicas the map
/// lists name it, and the client must go there although the map does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_to_the_leader_of_a_pg_moving_off_its_osd_is_followed_and_cached() {
    let cluster = FakeCluster::start(4, OBJECT, 1).await;
    let client = Client::with_map(cluster.map_with(2, |_| vec![4, 2, 3]), crate::opts(5_000, 1_000));
    cluster.osd(4).set_mode(Mode::NoPg(2)); // the new replica has not created the PG yet
    cluster.osd(2).set_mode(Mode::NotLeader(Some(1)));
    cluster.osd(3).set_mode(Mode::NotLeader(Some(1)));
    write(&client, 0, 0x11).await.unwrap();
    assert_eq!(osds_seen(&cluster), [4, 2, 1], "the old leader, osd 1, is up in the map and was named");
    assert_eq!(client.leader_hint(WirePg { pool: crate::fake_osd::POOL, index: 0 }), Some(1));
    cluster.clear_log();
    assert_eq!(&read(&client, 0).await[..], &[0x11; 4096][..]);
    assert_eq!(osds_seen(&cluster), [1], "the leader outside the replica list is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_reuses_its_seq_and_is_applied_once() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    // OSD 1 applies the write but the answer is lost with the connection.
    cluster.osd(1).script([Mode::ApplyThenDrop]);
    write(&client, 5, 0x5a).await.unwrap();
    let log = cluster.log();
    assert_eq!(osds_seen(&cluster), [1, 2]);
    assert_eq!(log[0].req.client, client.id());
    assert_eq!((log[0].req.client, log[0].req.seq), (log[1].req.client, log[1].req.seq));
    assert_eq!(cluster.store.duplicates.load(std::sync::atomic::Ordering::SeqCst), 1, "the PG recognised the retry");
    assert_eq!(&read(&client, 5).await[..], &[0x5a; 4096][..]);
    let log = cluster.log();
    assert_eq!(log[2].req.seq, log[1].req.seq + 1, "a new request gets a new seq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_is_the_oldest_request_still_in_flight() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 2_000));
    cluster.osd(1).script([Mode::Delay(Duration::from_millis(400))]);
    let slow = {
        let c = client.clone();
        tokio::spawn(async move { write(&c, 0, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(&client, 1, 2).await.unwrap();
    slow.await.unwrap().unwrap();
    write(&client, 2, 3).await.unwrap();
    let log = cluster.log();
    let (a, b, c) = (log[0].req, log[1].req, log[2].req);
    assert_eq!((a.object, b.object, c.object), (0, 1, 2));
    assert_eq!(b.floor, a.seq, "the slow write was still in flight");
    assert_eq!(c.floor, c.seq, "nothing older in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_out_after_op_timeout_when_every_replica_answers_retry() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(400, 100));
    for o in &cluster.osds {
        o.set_mode(Mode::Retry);
    }
    let started = Instant::now();
    let err = write(&client, 3, 1).await.unwrap_err();
    let took = started.elapsed();
    let ClientError::Timeout { at, last_error, .. } = &err else { panic!("expected a timeout, got {err}") };
    assert_eq!(at.pg, Some(WirePg { pool: POOL, index: 0 }));
    assert_eq!((at.volume, at.object), (VOLUME, 3));
    assert!(last_error.contains("Retry"), "{last_error}");
    assert!(err.to_string().contains("pg 1.0"), "{err}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1500), "took {took:?}");
    let log = cluster.log();
    assert!(log.len() > 6, "kept retrying: {} attempts", log.len());
    assert!(log.iter().all(|s| s.req.seq == log[0].req.seq), "one seq for every attempt");
    for id in 1..=3 {
        assert!(log.iter().any(|s| s.osd == id), "osd {id} was tried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_request_fails_over_to_another_replica() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    cluster.osd(1).set_mode(Mode::Drop);
    write(&client, 0, 7).await.unwrap();
    assert_eq!(osds_seen(&cluster), [1, 2]);
    assert_eq!(&read(&client, 0).await[..], &[7; 4096][..]);
    assert_eq!(osds_seen(&cluster), [1, 2, 2], "the leader moved on to 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_is_abandoned_after_the_attempt_timeout() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 150));
    cluster.osd(1).set_mode(Mode::Delay(Duration::from_secs(3)));
    let started = Instant::now();
    write(&client, 0, 9).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(osds_seen(&cluster), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pg_with_a_newer_epoch_waits_for_that_map_and_routes_again() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map_with(1, |_| vec![1]), crate::opts(5_000, 1_000));
    cluster.osd(1).set_mode(Mode::NoPg(2));
    let newer = cluster.map_with(2, |_| vec![2]);
    let installer = {
        let c = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.install_map(newer)
        })
    };
    write(&client, 0, 4).await.unwrap();
    assert!(installer.await.unwrap());
    let log = cluster.log();
    assert_eq!(osds_seen(&cluster), [1, 2]);
    assert_eq!((log[0].req.epoch, log[1].req.epoch), (1, 2), "each attempt carries the epoch it was routed with");
    assert_eq!(client.map().epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_response_closes_the_connection_and_it_is_redialled() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    cluster.osd(1).script([Mode::Garbage]);
    write(&client, 0, 1).await.unwrap();
    assert_eq!(osds_seen(&cluster), [1, 2]);
    // Back to osd 1 (2 and 3 now refuse): a new connection is dialled.
    cluster.osd(2).set_mode(Mode::Retry);
    cluster.osd(3).set_mode(Mode::Retry);
    write(&client, 0, 2).await.unwrap();
    assert_eq!(osds_seen(&cluster), [1, 2, 2, 3, 1]);
    assert_eq!(cluster.osd(1).accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_io_and_no_space_fail_at_once_with_the_osd_message() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    let cases = [(Status::Invalid, "bad range"), (Status::Io, "checksum mismatch"), (Status::NoSpace, "device full")];
    for (status, msg) in cases {
        cluster.clear_log();
        cluster.osd(1).script([Mode::Fail(status, msg)]);
        let err = write(&client, 2, 1).await.unwrap_err();
        let (osd, message, at) = match &err {
            ClientError::Invalid { osd, message, at } if status == Status::Invalid => (osd, message, at),
            ClientError::Io { osd, message, at } if status == Status::Io => (osd, message, at),
            ClientError::NoSpace { osd, message, at } if status == Status::NoSpace => (osd, message, at),
            other => panic!("{status:?} became {other}"),
        };
        assert_eq!((*osd, message.as_str(), at.pg, at.object), (1, msg, Some(WirePg { pool: POOL, index: 0 }), 2));
        assert_eq!(cluster.log().len(), 1, "{status:?} is not retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection_and_may_complete_out_of_order() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 2_000));
    const N: u64 = 40;
    for obj in 0..N {
        write(&client, obj, obj as u8).await.unwrap();
    }
    // The first requests to arrive are answered last.
    cluster.osd(1).script((0..N).map(|i| Mode::Delay(Duration::from_millis((N - i) * 3))));
    let reads: Vec<_> = (0..N)
        .map(|obj| {
            let c = client.clone();
            tokio::spawn(async move { (obj, read(&c, obj).await) })
        })
        .collect();
    for r in reads {
        let (obj, data) = r.await.unwrap();
        assert!(data.iter().all(|b| *b == obj as u8), "object {obj} got another request's answer");
    }
    assert_eq!(cluster.osd(1).accepted(), 1, "one connection for every request");
    assert_eq!(cluster.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_breaking_the_contract_are_refused_before_sending() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    let r = client.request(req(OpCode::Write, 0, 100), Bytes::from(vec![0; 4096])).await;
    assert!(matches!(r, Err(ClientError::BadRequest { .. })));
    let r = client.request(req(OpCode::Write, 0, 0), Bytes::from(vec![0; 10])).await;
    assert!(matches!(r, Err(ClientError::BadRequest { .. })));
    assert_eq!(cluster.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_a_newer_epoch_makes_the_client_wait_for_that_map() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map(), crate::opts(5_000, 1_000));
    cluster.osd(1).set_epoch(3);
    cluster.osd(1).script([Mode::Retry]);
    let newer = cluster.map_with(3, |_| vec![1, 2, 3]);
    let installer = {
        let c = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.install_map(newer)
        })
    };
    let started = Instant::now();
    write(&client, 0, 4).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(140), "did not wait for the map: {:?}", started.elapsed());
    assert!(installer.await.unwrap());
    let log = cluster.log();
    assert_eq!(osds_seen(&cluster), [1, 2]);
    assert_eq!((log[0].req.epoch, log[1].req.epoch), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pg_from_an_osd_behind_our_map_fails_over_at_once() {
    let cluster = cluster().await;
    let client = Client::with_map(cluster.map_with(5, |_| vec![1, 2, 3]), crate::opts(5_000, 1_000));
    cluster.osd(1).script([Mode::NoPg(4)]);
    let started = Instant::now();
    write(&client, 0, 4).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "waited for a map: {:?}", started.elapsed());
    assert_eq!(osds_seen(&cluster), [1, 2]);
}
