//! Property tests of the message codecs: every message round-trips, arbitrary bytes never
//! panic any decoder, and truncations of valid messages are rejected. Also writes the fuzz
//! corpus seeds of the `wire_messages` target (see `scripts/fuzz.sh`).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tessera_wire::msg::{
    decode_heartbeats, decode_raft_items, decode_space, decode_tombstones, encode_heartbeats, encode_space, encode_tombstones,
    put_raft_item,
};
use tessera_wire::{DigestEntry, DigestKind, DigestPage, OpCode, RaftBatch, Request, Response, ScanEntry, Status, WirePg};

fn arb_request() -> impl Strategy<Value = Request> {
    let ops = prop::sample::select(vec![
        OpCode::Read,
        OpCode::Write,
        OpCode::WriteZeroes,
        OpCode::Delete,
        OpCode::Scan,
        OpCode::ReadRaw,
        OpCode::TrimVersions,
        OpCode::DropVolume,
        OpCode::Rollback,
        OpCode::Usage,
        OpCode::Promote,
        OpCode::Digest,
        OpCode::Ticket,
    ]);
    (ops, any::<(u32, u32)>(), prop::array::uniform10(any::<u64>())).prop_map(|(op, (pool, index), v)| Request {
        op,
        pg: WirePg { pool, index },
        epoch: v[0],
        volume: v[1],
        object: v[2],
        snap: v[3],
        offset: v[4],
        len: v[5],
        client: v[6],
        seq: v[7],
        floor: v[8],
        snapc: v[9],
    })
}

fn arb_response() -> impl Strategy<Value = Response> {
    let st = prop::sample::select(vec![
        Status::Ok,
        Status::NotLeader,
        Status::NoPg,
        Status::Retry,
        Status::Invalid,
        Status::Io,
        Status::NoSpace,
        Status::Absent,
        Status::StaleContext,
    ]);
    let snapc = prop_oneof![Just(0u64), any::<u64>()];
    (st, prop::option::of(0u32..u32::MAX), any::<u64>(), ".{0,40}", snapc).prop_map(|(status, leader, epoch, message, snapc)| Response {
        status,
        leader,
        epoch,
        message,
        snapc,
    })
}

proptest! {
    #[test]
    fn requests_round_trip_and_truncations_fail(r in arb_request(), cut in 0usize..82) {
        let enc = r.encode();
        prop_assert_eq!(Request::decode(&enc).unwrap(), r);
        prop_assert!(Request::decode(&enc[..cut.min(enc.len() - 1)]).is_err());
    }

    #[test]
    fn responses_round_trip_and_truncations_fail(r in arb_response(), cut in 0usize..64) {
        let enc = r.encode();
        prop_assert_eq!(Response::decode(&enc).unwrap(), r);
        prop_assert!(Response::decode(&enc[..cut.min(enc.len() - 1)]).is_err());
    }

    #[test]
    fn raft_items_round_trip(items in prop::collection::vec((any::<(u32, u32)>(), prop::collection::vec(any::<u8>(), 0..100)), 0..8)) {
        let mut buf = BytesMut::new();
        for ((pool, index), m) in &items {
            put_raft_item(&mut buf, WirePg { pool: *pool, index: *index }, m);
        }
        let back = decode_raft_items(&buf.freeze()).unwrap();
        prop_assert_eq!(back.len(), items.len());
        for (b, ((pool, index), m)) in back.iter().zip(&items) {
            prop_assert_eq!(b.pg, WirePg { pool: *pool, index: *index });
            prop_assert_eq!(&b.msg[..], &m[..]);
        }
    }

    #[test]
    fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Request::decode(&data);
        let _ = Response::decode(&data);
        let _ = RaftBatch::decode(&data);
        let _ = decode_raft_items(&Bytes::from(data.clone()));
        let _ = ScanEntry::decode_all(&data);
        let _ = decode_heartbeats(&Bytes::from(data.clone()));
        let _ = decode_tombstones(&data);
        let _ = DigestPage::decode(&data);
        if let Ok(word) = decode_space(&data) {
            prop_assert_eq!(&encode_space(word)[..], &data[..]);
        }
    }

    /// Arbitrary bytes never panic the digest page decoder, also behind a valid header (so
    /// the entry decoding is reached); what it accepts re-encodes to the same bytes.
    #[test]
    fn digest_page_decoder_never_panics(flags in 0u8..4, count in 0u32..6, body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut data = vec![1u8, flags];
        data.extend([0u8; 40]);
        data.extend(count.to_le_bytes());
        data.extend(&body);
        for input in [&data[..], &body[..]] {
            if let Ok(page) = DigestPage::decode(input) {
                prop_assert_eq!(&page.encode()[..], input);
            }
        }
    }

    #[test]
    fn digest_pages_round_trip_and_truncations_fail(
        (applied, pin, damaged) in any::<(u64, u64, bool)>(),
        next in prop::option::of(any::<(u64, u64, u64)>()),
        entries in prop::collection::vec((any::<(u64, u64, u64)>(), 0u8..3, any::<(u64, u64)>()), 0..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let entries = entries
            .into_iter()
            .map(|((volume, object, snap), k, (len, hash))| {
                let kind = [DigestKind::Data, DigestKind::Marker, DigestKind::Corrupt][k as usize];
                DigestEntry { volume, object, snap, kind, len, hash }
            })
            .collect();
        let page = DigestPage { applied, pin, damaged, next, entries };
        let enc = page.encode();
        prop_assert_eq!(DigestPage::decode(&enc).unwrap(), page);
        prop_assert!(DigestPage::decode(&enc[..cut.index(enc.len())]).is_err());
    }

    #[test]
    fn tombstones_round_trip(t in prop::collection::vec((any::<(u32, u32)>(), any::<u64>()), 0..20)) {
        let t: Vec<(WirePg, u64)> = t.into_iter().map(|((pool, index), term)| (WirePg { pool, index }, term)).collect();
        let enc = encode_tombstones(&t);
        prop_assert_eq!(decode_tombstones(&enc).unwrap(), t);
        if !enc.is_empty() {
            prop_assert!(decode_tombstones(&enc[..enc.len() - 1]).is_err());
        }
    }

    #[test]
    fn merged_heartbeats_round_trip(hbs in prop::collection::vec((any::<(u32, u32, bool, u64, u64)>(), prop::collection::vec(any::<u8>(), 0..40)), 0..20)) {
        let hbs: Vec<tessera_wire::Heartbeat> = hbs
            .into_iter()
            .map(|((pool, index, response, term, commit), ctx)| tessera_wire::Heartbeat { pg: WirePg { pool, index }, response, term, commit, context: Bytes::from(ctx) })
            .collect();
        prop_assert_eq!(decode_heartbeats(&Bytes::from(encode_heartbeats(&hbs))).unwrap(), hbs);
    }
}

/// Writes valid messages into the fuzz corpus when `TESSERA_WRITE_FUZZ_SEEDS` names a directory.
#[test]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("TESSERA_WRITE_FUZZ_SEEDS") else { return };
    let d = std::path::Path::new(&dir).join("wire_messages");
    std::fs::create_dir_all(&d).unwrap();
    let req = Request {
        op: OpCode::Write,
        pg: WirePg { pool: 1, index: 2 },
        epoch: 3,
        volume: 4,
        object: 5,
        snap: u64::MAX,
        offset: 4096,
        len: 4096,
        client: 6,
        seq: 7,
        floor: 1,
        snapc: 0,
    };
    let resp = Response { status: Status::NotLeader, leader: Some(2), epoch: 9, message: "go to 2".into(), snapc: 0 };
    let mut items = BytesMut::new();
    put_raft_item(&mut items, WirePg { pool: 1, index: 2 }, b"raft message");
    let mut scan = Vec::new();
    ScanEntry { volume: 1, object: 2, snap: 3, extent_end: 4096 }.put(&mut scan);
    let hb = tessera_wire::Heartbeat {
        pg: WirePg { pool: 1, index: 2 },
        response: false,
        term: 3,
        commit: 4,
        context: Bytes::from_static(b"c"),
    };
    let hbs = encode_heartbeats(&[hb]);
    // The first byte picks the decoder, as in the fuzz target.
    let bodies = [req.encode().to_vec(), resp.encode(), RaftBatch { from: 1, to: 2 }.encode().to_vec(), items.to_vec(), scan, hbs];
    for (i, body) in bodies.into_iter().enumerate() {
        let mut seed = vec![i as u8];
        seed.extend(body);
        std::fs::write(d.join(format!("seed-{i}")), seed).unwrap();
    }
    // Decoder 7 of the fuzz target: a digest page.
    let page = DigestPage {
        applied: 9,
        pin: 2,
        damaged: false,
        next: Some((7, 1, u64::MAX)),
        entries: vec![
            DigestEntry { volume: 7, object: 0, snap: u64::MAX, kind: DigestKind::Data, len: 4096, hash: 42 },
            DigestEntry { volume: 7, object: 0, snap: 3, kind: DigestKind::Marker, len: 0, hash: 0 },
        ],
    };
    let mut seed = vec![7u8];
    seed.extend(page.encode());
    std::fs::write(d.join("seed-7"), seed).unwrap();
}
