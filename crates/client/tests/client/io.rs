//! Byte-range IO: splitting, alignment, read-modify-write, range checks.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_client::{Client, ClientError, ClientOptions};
use tessera_wire::OpCode;

use crate::fake_osd::FakeCluster;

const OBJECT: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_unaligned_io_matches_a_byte_array_model() {
    let cluster = FakeCluster::start(3, OBJECT, 8).await;
    // Small requests so that ranges split at objects and at the request limit.
    let client = Client::with_map(cluster.rotated_map(), ClientOptions { max_request_bytes: 16 << 10, ..crate::opts(10_000, 2_000) });
    let size = 5 * OBJECT;
    let vol = client.volume(cluster.volume(size)).unwrap();
    let mut model = vec![0u8; size as usize];
    let mut rng = StdRng::seed_from_u64(0x7e55e7a);
    for step in 0..300 {
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..64),
            1 => rng.gen_range(1..8192),
            _ => rng.gen_range(1..3 * OBJECT),
        }
        .min(size);
        let offset = rng.gen_range(0..=size - len);
        let (o, l) = (offset as usize, len as usize);
        match rng.gen_range(0..5) {
            0 | 1 => {
                let data: Vec<u8> = (0..l).map(|_| rng.gen()).collect();
                vol.write(offset, Bytes::from(data.clone())).await.unwrap_or_else(|e| panic!("step {step}: write {offset}+{len}: {e}"));
                model[o..o + l].copy_from_slice(&data);
            }
            2 => {
                vol.write_zeroes(offset, len).await.unwrap_or_else(|e| panic!("step {step}: write_zeroes {offset}+{len}: {e}"));
                model[o..o + l].fill(0);
            }
            _ => {
                let got = vol.read(offset, len).await.unwrap_or_else(|e| panic!("step {step}: read {offset}+{len}: {e}"));
                assert!(got[..] == model[o..o + l], "step {step}: read {offset}+{len} differs from the model");
            }
        }
    }
    let all = vol.read(0, size).await.unwrap();
    assert!(all[..] == model[..], "whole volume differs from the model");
    // Every request the OSDs saw was aligned and inside one object (the fake answers Invalid
    // otherwise, which would have failed a call), and payloads respect the request limit.
    let log = cluster.log();
    assert!(log.iter().all(|s| s.data_len <= 16 << 10));
    assert!(log.iter().filter(|s| s.req.op == OpCode::Read).all(|s| s.req.len <= 16 << 10));
    assert!(log.iter().any(|s| s.req.op == OpCode::WriteZeroes && s.req.len > 16 << 10), "write-zeroes is not cut at the request limit");
    let objects: std::collections::BTreeSet<u64> = log.iter().map(|s| s.req.object).collect();
    assert_eq!(objects.len(), 5, "ranges were spread over every object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unaligned_writes_to_one_block_from_one_client_all_land() {
    let cluster = FakeCluster::start(3, OBJECT, 8).await;
    let client = Client::with_map(cluster.map(), crate::opts(10_000, 2_000));
    let vol = client.volume(cluster.volume(OBJECT)).unwrap();
    for round in 0..5u8 {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let vol = vol.clone();
                tokio::spawn(async move { vol.write(8192 + i * 512, Bytes::from(vec![round * 8 + i as u8 + 1; 512])).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let block = vol.read(8192, 4096).await.unwrap();
        for i in 0..8usize {
            assert!(
                block[i * 512..(i + 1) * 512].iter().all(|b| *b == round * 8 + i as u8 + 1),
                "round {round}: the write at {i} was lost"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_empty_calls_send_nothing() {
    let cluster = FakeCluster::start(3, OBJECT, 8).await;
    let client = Client::with_map(cluster.map(), crate::opts(10_000, 2_000));
    let size = 2 * OBJECT;
    let vol = client.volume(cluster.volume(size)).unwrap();
    let oor = |r: Result<_, ClientError>| matches!(r, Err(ClientError::OutOfRange { volume: 7, size: s, .. }) if s == size);
    assert!(oor(vol.read(size - 10, 11).await.map(drop)));
    assert!(oor(vol.read(size, 1).await.map(drop)));
    assert!(oor(vol.read(u64::MAX, 2).await.map(drop)), "offset + len overflows");
    assert!(oor(vol.write(size - 4096, Bytes::from(vec![1u8; 4097])).await));
    assert!(oor(vol.write_zeroes(1, size).await));
    assert!(oor(vol.write_zeroes(u64::MAX - 1, 5).await));
    assert_eq!(vol.read(size, 0).await.unwrap().len(), 0);
    vol.write(17, Bytes::new()).await.unwrap();
    vol.write_zeroes(size, 0).await.unwrap();
    assert!(cluster.log().is_empty(), "nothing may be sent: {:?}", cluster.log());
    assert_eq!(cluster.accepted(), 0, "not even a connection");
    // The last byte is in range.
    vol.write(size - 1, Bytes::from_static(b"z")).await.unwrap();
    assert_eq!(&vol.read(size - 1, 1).await.unwrap()[..], b"z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_volume_records_are_refused() {
    let cluster = FakeCluster::start(1, OBJECT, 8).await;
    let client = Client::with_map(cluster.map(), ClientOptions::default());
    let mut rec = cluster.volume(OBJECT);
    rec.object_size = 3 * 4096;
    assert!(matches!(client.volume(rec), Err(ClientError::BadVolume { volume: 7, .. })));
    let mut rec = cluster.volume(100);
    rec.size = 100;
    assert!(matches!(client.volume(rec), Err(ClientError::BadVolume { .. })));
}
