//! Targeted engine tests: each pins one behaviour named in its test name.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tessera_engine::*;

const PG: PgId = PgId::new(1, 0);

fn block(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BLOCK_SIZE])
}

fn mem_engine(segments: u64, seg: u64) -> (Arc<MemDevice>, Engine) {
    let dev = Arc::new(MemDevice::new(65536 + segments * seg));
    let e = Engine::create(dev.clone(), FormatOptions { segment_size: seg }, EngineConfig::default()).unwrap();
    (dev, e)
}

fn write(e: &Engine, obj: u64, off: u64, data: Bytes) -> Result<()> {
    e.commit(Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(1, obj), offset: off, data }))
}

#[test]
fn unwritten_ranges_and_absent_objects_read_as_zeros() {
    let (_d, e) = mem_engine(16, 1 << 20);
    write(&e, 1, 8192, block(7)).unwrap();
    let r = e.read(PG, ObjectKey::head(1, 1), 0, 4 * BLOCK).unwrap();
    assert!(r[..8192].iter().all(|&b| b == 0));
    assert!(r[8192..12288].iter().all(|&b| b == 7));
    assert!(r[12288..].iter().all(|&b| b == 0));
    assert!(e.read(PG, ObjectKey::head(1, 2), 0, BLOCK).unwrap().iter().all(|&b| b == 0));
    assert_eq!(e.object_info(PG, ObjectKey::head(1, 2)), None);
    assert_eq!(e.object_info(PG, ObjectKey::head(1, 1)).unwrap().allocated_blocks, 1);
}

#[test]
fn unaligned_requests_are_rejected_with_clear_errors() {
    let (_d, e) = mem_engine(16, 1 << 20);
    let err = write(&e, 1, 100, block(1)).unwrap_err();
    assert!(matches!(err, EngineError::Unaligned { offset: 100, .. }), "{err}");
    let err = write(&e, 1, 0, Bytes::from(vec![1; 100])).unwrap_err();
    assert!(matches!(err, EngineError::Unaligned { len: 100, .. }), "{err}");
    assert!(matches!(e.read(PG, ObjectKey::head(1, 1), 1, BLOCK), Err(EngineError::Unaligned { .. })));
    assert!(matches!(e.read(PG, ObjectKey::head(1, 1), u64::MAX - 4095, BLOCK), Err(EngineError::Invalid { .. })));
}

#[test]
fn bit_flip_on_device_is_a_checksum_error_naming_object_and_offset() {
    let dev = Arc::new(FaultDevice::new(65536 + 16 * (1 << 20), 1));
    let e = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    let pattern = Bytes::from((0..BLOCK_SIZE).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
    write(&e, 5, 3 * BLOCK, pattern.clone()).unwrap();
    // Find the block on the raw device and flip one bit in it.
    let mut found = None;
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
    for b in 0..dev.len() / BLOCK {
        dev.read_at(b * BLOCK, &mut buf).unwrap();
        if buf[..] == pattern[..] {
            found = Some(b);
        }
    }
    let phys = found.expect("data block is on the device exactly as written");
    dev.flip_bit(phys * BLOCK + 100, 3);
    let err = e.read(PG, ObjectKey::head(1, 5), 0, 8 * BLOCK).unwrap_err();
    match err {
        EngineError::Checksum { pg, key, offset, phys: p } => {
            assert_eq!((pg, key, offset, p), (PG, ObjectKey::head(1, 5), 3 * BLOCK, phys));
        }
        other => panic!("expected checksum error, got {other}"),
    }
    // Other blocks of the same object are unaffected.
    assert!(e.read(PG, ObjectKey::head(1, 5), 0, 3 * BLOCK).is_ok());
}

#[test]
fn concurrent_submits_share_fsyncs_group_commit() {
    let (_d, e) = mem_engine(32, 1 << 20);
    let e = Arc::new(e);
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let e = e.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    write(&e, t, i * BLOCK, block(t as u8)).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let s = e.stats();
    assert_eq!(done.load(Ordering::Relaxed), 800);
    assert!(s.batches < 800, "16 concurrent writers must share batches, got {} batches for 800 commits", s.batches);
    for t in 0..16u64 {
        let r = e.read(PG, ObjectKey::head(1, t), 0, 50 * BLOCK).unwrap();
        assert!(r.iter().all(|&b| b == t as u8));
    }
}

#[test]
fn callback_fires_only_after_sync_returned() {
    // A failing sync must turn into an error for the waiter, never an early Ok.
    let dev = Arc::new(FaultDevice::new(65536 + 16 * (1 << 20), 3));
    let e = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    dev.fail_next_sync();
    assert!(matches!(write(&e, 1, 0, block(1)), Err(EngineError::Device(_))));
    assert!(matches!(write(&e, 1, 0, block(2)), Err(EngineError::Failed(_))), "fsyncgate: no writes after a failed sync");
    drop(e);
    let e = Engine::open(dev.clone(), EngineConfig::default()).unwrap();
    write(&e, 1, 0, block(3)).unwrap();
    assert!(e.read(PG, ObjectKey::head(1, 1), 0, BLOCK).unwrap().iter().all(|&b| b == 3));
}

#[test]
fn cleaner_reclaims_overwritten_space_and_data_survives_restart() {
    // 24 segments of 64 KiB; keep overwriting 4 objects of 8 blocks (far more than capacity).
    let dev = Arc::new(FaultDevice::new(65536 + 24 * 65536, 5));
    let cfg = EngineConfig { checkpoint_bytes: 128 << 10 };
    let mut e = Engine::create(dev.clone(), FormatOptions { segment_size: 65536 }, cfg.clone()).unwrap();
    let mut latest = [[0u8; 8]; 4];
    let (mut relocated, mut checkpoints) = (0, 0);
    for round in 0..400u32 {
        let obj = (round % 4) as usize;
        let blk = (round * 7 % 8) as usize;
        let fill = (round % 251) as u8 + 1;
        // Every fourth write also keeps an old version alive through a clone, so segments
        // hold a mix of live and dead blocks.
        let mut t =
            Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(1, obj as u64), offset: blk as u64 * BLOCK, data: block(fill) });
        if round % 4 == 0 {
            t.push(Op::Clone { pg: PG, src: ObjectKey::head(1, obj as u64), dst: ObjectKey::at_snap(1, obj as u64, 1) });
        }
        // Every tenth write adds a block that is never overwritten: cold data interleaved
        // with hot data leaves segments partly live, which only relocation can free.
        if round % 10 == 0 {
            t.push(Op::Write { pg: PG, key: ObjectKey::head(2, 0), offset: (round / 10) as u64 * BLOCK, data: block(fill) });
        }
        e.commit(t).unwrap_or_else(|err| panic!("round {round}: {err}"));
        latest[obj][blk] = fill;
        if round % 97 == 0 {
            let s = e.stats();
            relocated += s.relocated_blocks;
            checkpoints += s.checkpoints;
            drop(e);
            e = Engine::open(dev.clone(), cfg.clone()).unwrap();
        }
    }
    let s = e.stats();
    relocated += s.relocated_blocks;
    checkpoints += s.checkpoints;
    assert!(relocated > 0, "the cleaner must have moved live blocks");
    assert!(checkpoints > 0, "automatic checkpoints must have run");
    assert_eq!(s.apply_errors, 0);
    let cold = e.read(PG, ObjectKey::head(2, 0), 0, 40 * BLOCK).unwrap();
    for i in 0..40usize {
        let fill = ((i * 10) % 251) as u8 + 1;
        assert!(cold[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE].iter().all(|x| *x == fill), "cold block {i}");
    }
    for (obj, blocks) in latest.iter().enumerate() {
        let r = e.read(PG, ObjectKey::head(1, obj as u64), 0, 8 * BLOCK).unwrap();
        for (b, fill) in blocks.iter().enumerate() {
            assert!(r[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE].iter().all(|x| x == fill), "obj {obj} block {b}");
        }
    }
}

#[test]
fn full_device_refuses_data_but_deletes_still_free_space() {
    let (_d, e) = mem_engine(12, 65536);
    let mut written = 0u64;
    let err = loop {
        match write(&e, written, 0, Bytes::from(vec![(written % 250) as u8 + 1; 8 * BLOCK_SIZE])) {
            Ok(()) => written += 1,
            Err(err) => break err,
        }
        assert!(written < 1000, "a 768 KiB device cannot hold 1000 x 32 KiB");
    };
    assert!(matches!(err, EngineError::NoSpace { .. }), "{err}");
    assert!(written > 4);
    for o in 0..written {
        let r = e.read(PG, ObjectKey::head(1, o), 0, 8 * BLOCK).unwrap();
        assert!(r.iter().all(|&b| b == (o % 250) as u8 + 1), "object {o} intact after ENOSPC");
    }
    // Deleting frees space for new writes.
    for o in 0..written {
        e.commit(Txn::new().with(Op::Delete { pg: PG, key: ObjectKey::head(1, o) })).unwrap();
    }
    e.clean().unwrap();
    write(&e, 9999, 0, block(1)).unwrap();
}

#[test]
fn transaction_larger_than_a_segment_is_too_large() {
    let (_d, e) = mem_engine(12, 65536);
    let err = write(&e, 1, 0, Bytes::from(vec![1; 65536])).unwrap_err();
    assert!(matches!(err, EngineError::TooLarge { .. }), "{err}");
}

#[test]
fn apply_write_points_at_log_data_without_copying_it() {
    let (_d, e) = mem_engine(16, 1 << 20);
    let entry =
        LogEntry { index: 1, term: 1, meta: Bytes::from_static(b"w"), data: Bytes::from(vec![9; 2 * BLOCK_SIZE]), ..Default::default() };
    e.commit(Txn::new().with(Op::LogAppend { pg: PG, entries: vec![entry] })).unwrap();
    let before = e.stats().device_bytes;
    let apply = Op::ApplyWrite { pg: PG, key: ObjectKey::head(1, 1), offset: BLOCK, entry: 1, entry_offset: 0, len: 2 * BLOCK };
    e.commit(Txn::new().with(apply).with(Op::LogCompact { pg: PG, upto: 1, term: 1 })).unwrap();
    let applied = e.stats().device_bytes - before;
    assert_eq!(applied, BLOCK, "apply + compact cost one header block, no data copy");
    let r = e.read(PG, ObjectKey::head(1, 1), 0, 3 * BLOCK).unwrap();
    assert!(r[..BLOCK_SIZE].iter().all(|&b| b == 0) && r[BLOCK_SIZE..].iter().all(|&b| b == 9));
    assert!(matches!(e.log_entries(PG, 1, 2), Err(EngineError::LogUnavailable { index: 1, .. })));
    assert_eq!(e.log_term(PG, 1).unwrap(), 1, "term of the compaction point stays known");
}

/// End-to-end checksums: a log entry's data that no longer matches the checksums it came
/// with refuses the whole transaction (nothing of it is stored); matching ones are stored as
/// the blocks' checksums and come back with reads, holes as the zero block's.
#[test]
fn log_data_is_checked_against_the_checksums_it_came_with_and_they_come_back_with_reads() {
    let (_d, e) = mem_engine(16, 1 << 20);
    let data: Vec<u8> = (0..2 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
    let crcs: Vec<u32> = data.chunks(BLOCK_SIZE).map(crc32c::crc32c).collect();
    let mut changed = data.clone();
    changed[BLOCK_SIZE + 5] ^= 1;
    let bad = LogEntry { index: 1, term: 1, meta: Bytes::from_static(b"w"), data: Bytes::from(changed), crcs: crcs.clone() };
    let other = Op::Write { pg: PG, key: ObjectKey::head(1, 9), offset: 0, data: block(4) };
    let err = e.commit(Txn::new().with(other.clone()).with(Op::LogAppend { pg: PG, entries: vec![bad] })).unwrap_err();
    assert!(matches!(err, EngineError::PayloadChecksum { index: 1, block: 1, .. }), "{err}");
    assert!(e.log_bounds(PG).is_none_or(|b| b.last == 0), "the refused entry is not in the log");
    assert_eq!(e.object_info(PG, ObjectKey::head(1, 9)), None, "nothing of the refused transaction is stored");
    let short = LogEntry { index: 1, term: 1, meta: Bytes::new(), data: Bytes::from(data.clone()), crcs: crcs[..1].to_vec() };
    assert!(matches!(e.commit(Txn::new().with(Op::LogAppend { pg: PG, entries: vec![short] })), Err(EngineError::Invalid { .. })));

    let good = LogEntry { index: 1, term: 1, meta: Bytes::from_static(b"w"), data: Bytes::from(data.clone()), crcs: crcs.clone() };
    e.commit(Txn::new().with(Op::LogAppend { pg: PG, entries: vec![good] })).unwrap();
    assert_eq!(e.log_entries(PG, 1, 2).unwrap()[0].crcs, crcs);
    let apply = Op::ApplyWrite { pg: PG, key: ObjectKey::head(1, 1), offset: BLOCK, entry: 1, entry_offset: 0, len: 2 * BLOCK };
    e.commit(Txn::new().with(apply)).unwrap();
    let mut got = Vec::new();
    let read = e.read_version_with_crcs(PG, ObjectKey::head(1, 1), 0, 3 * BLOCK, &mut got).unwrap().unwrap();
    assert_eq!(&read[BLOCK_SIZE..], &data[..]);
    assert_eq!(got, vec![zero_block_crc(), crcs[0], crcs[1]]);
    assert_eq!(zero_block_crc(), crc32c::crc32c(&[0u8; BLOCK_SIZE]));
}

#[test]
fn clone_shares_blocks_until_overwrite() {
    let (_d, e) = mem_engine(16, 1 << 20);
    write(&e, 1, 0, Bytes::from(vec![1; 4 * BLOCK_SIZE])).unwrap();
    let live = e.stats().live_blocks;
    let before = e.stats().device_bytes;
    let snap = ObjectKey::at_snap(1, 1, 5);
    e.commit(Txn::new().with(Op::Clone { pg: PG, src: ObjectKey::head(1, 1), dst: snap })).unwrap();
    assert_eq!(e.stats().live_blocks, live, "clone copies no blocks");
    assert_eq!(e.stats().device_bytes - before, BLOCK, "clone writes only a header block");
    write(&e, 1, BLOCK, block(2)).unwrap();
    assert_eq!(e.stats().live_blocks, live + 1, "overwrite allocates one new block");
    assert!(e.read(PG, snap, 0, 4 * BLOCK).unwrap().iter().all(|&b| b == 1));
    let head = e.read(PG, ObjectKey::head(1, 1), 0, 4 * BLOCK).unwrap();
    assert!(head[BLOCK_SIZE..2 * BLOCK_SIZE].iter().all(|&b| b == 2));
    e.commit(Txn::new().with(Op::Delete { pg: PG, key: ObjectKey::head(1, 1) })).unwrap();
    assert_eq!(e.stats().live_blocks, live, "deleting the head frees only its private block");
    assert_eq!(e.list_objects(PG).len(), 1);
}

#[test]
fn invalid_txn_in_a_batch_does_not_affect_its_neighbours() {
    let (_d, e) = mem_engine(16, 1 << 20);
    let e = Arc::new(e);
    let results: Vec<_> = (0..8u64)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                if i == 3 {
                    // A gap in the log: index 5 on an empty log.
                    let entry = LogEntry { index: 5, term: 1, ..Default::default() };
                    e.commit(Txn::new().with(Op::LogAppend { pg: PG, entries: vec![entry] }))
                } else {
                    write(&e, i, 0, block(i as u8))
                }
            })
        })
        .map(|h| h.join().unwrap())
        .collect();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_ok(), i != 3, "txn {i}: {r:?}");
    }
    assert_eq!(e.log_bounds(PG).map(|b| b.last).unwrap_or(0), 0);
}

#[test]
fn drop_pg_removes_objects_log_and_pg_metadata_only() {
    let (_d, e) = mem_engine(16, 1 << 20);
    let other = PgId::new(1, 1);
    let mut t = Txn::new();
    for pg in [PG, other] {
        t.push(Op::Write { pg, key: ObjectKey::head(1, 1), offset: 0, data: block(1) });
        t.push(Op::MetaPut { scope: MetaScope::Pg(pg), key: Bytes::from_static(b"hs"), value: Bytes::from_static(b"1") });
        t.push(Op::LogAppend { pg, entries: vec![LogEntry { index: 1, term: 1, ..Default::default() }] });
    }
    t.push(Op::MetaPut { scope: MetaScope::Global, key: Bytes::from_static(b"osd"), value: Bytes::from_static(b"7") });
    e.commit(t).unwrap();
    e.commit(Txn::new().with(Op::DropPg { pg: PG })).unwrap();
    assert!(e.list_objects(PG).is_empty() && e.log_bounds(PG).is_none() && e.meta_get(MetaScope::Pg(PG), b"hs").is_none());
    assert_eq!(e.list_objects(other).len(), 1);
    assert!(e.meta_get(MetaScope::Pg(other), b"hs").is_some());
    assert_eq!(e.meta_get(MetaScope::Global, b"osd").as_deref(), Some(&b"7"[..]));
    assert_eq!(e.pgs(), vec![other]);
}

#[test]
fn file_device_round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osd.dev");
    {
        let dev = Arc::new(FileDevice::create(&path, 64 << 20).unwrap());
        let e = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
        write(&e, 1, 0, Bytes::from(vec![5; 3 * BLOCK_SIZE])).unwrap();
        e.checkpoint().unwrap();
        write(&e, 2, 0, block(6)).unwrap();
    }
    let dev = Arc::new(FileDevice::open(&path).unwrap());
    let e = Engine::open(dev, EngineConfig::default()).unwrap();
    assert!(e.stats().replayed_batches >= 1, "the write after the checkpoint is replayed");
    assert!(e.read(PG, ObjectKey::head(1, 1), 0, 3 * BLOCK).unwrap().iter().all(|&b| b == 5));
    assert!(e.read(PG, ObjectKey::head(1, 2), 0, BLOCK).unwrap().iter().all(|&b| b == 6));
}

#[test]
fn unformatted_device_is_refused_clearly() {
    let dev = Arc::new(MemDevice::new(4 << 20));
    match Engine::open(dev, EngineConfig::default()) {
        Err(EngineError::NotFormatted(_)) => {}
        Err(other) => panic!("expected NotFormatted, got {other}"),
        Ok(_) => panic!("an all-zero device must not open"),
    }
    let tiny = MemDevice::new(256 << 10);
    assert!(matches!(format(&tiny, FormatOptions { segment_size: 65536 }), Err(EngineError::BadFormatOptions(_))), "too few segments");
    let odd = format(&MemDevice::new(64 << 20), FormatOptions { segment_size: 5000 });
    assert!(matches!(odd, Err(EngineError::BadFormatOptions(_))), "unaligned segment size: {odd:?}");
}

#[test]
fn read_errors_from_the_device_surface_as_errors() {
    let dev = Arc::new(FaultDevice::new(65536 + 16 * (1 << 20), 8));
    let e = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    write(&e, 1, 0, block(1)).unwrap();
    dev.set_faults(FaultConfig { fail_read: 1.0, ..Default::default() });
    assert!(matches!(e.read(PG, ObjectKey::head(1, 1), 0, BLOCK), Err(EngineError::Device(_))));
    dev.set_faults(FaultConfig::default());
    assert!(e.read(PG, ObjectKey::head(1, 1), 0, BLOCK).is_ok());
}

#[test]
fn reads_racing_the_cleaner_never_see_reused_segments() {
    let dev = Arc::new(MemDevice::new(65536 + 24 * 65536));
    let e = Arc::new(Engine::create(dev, FormatOptions { segment_size: 65536 }, EngineConfig { checkpoint_bytes: 128 << 10 }).unwrap());
    // Cold data that the cleaner will keep relocating while readers read it.
    let cold = ObjectKey::head(2, 0);
    for i in 0..16u64 {
        e.commit(Txn::new().with(Op::Write { pg: PG, key: cold, offset: i * BLOCK, data: block(i as u8 + 1) })).unwrap();
        for j in 0..6u64 {
            write(&e, 1, j * BLOCK, block(0xee)).unwrap();
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = e.read(PG, cold, 0, 16 * BLOCK).expect("no read may fail while the cleaner runs");
                    for i in 0..16usize {
                        assert!(r[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE].iter().all(|&b| b == i as u8 + 1), "cold block {i}");
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 0..600u64 {
        write(&e, 1, (round % 6) * BLOCK, block(round as u8)).unwrap();
        if round % 50 == 0 {
            e.clean().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    assert!(e.stats().relocated_blocks > 0, "the cleaner moved blocks under the readers");
}

/// The raw block device path: a loop device over a file. Needs root and loop support; where
/// the machine has neither it says so and checks nothing.
#[test]
fn engine_runs_on_a_raw_block_device() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("loop.img");
    std::fs::File::create(&backing).unwrap().set_len(64 << 20).unwrap();
    let out = Command::new("losetup").args(["--find", "--show"]).arg(&backing).output();
    let dev_path = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
        other => {
            eprintln!("SKIPPED: no loop device available here ({other:?})");
            return;
        }
    };
    let result = std::panic::catch_unwind(|| {
        {
            let dev = Arc::new(FileDevice::open(std::path::Path::new(&dev_path)).unwrap());
            assert_eq!(dev.len(), 64 << 20);
            let e = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
            write(&e, 1, 0, Bytes::from(vec![0x5a; 2 * BLOCK_SIZE])).unwrap();
        }
        let dev = Arc::new(FileDevice::open(std::path::Path::new(&dev_path)).unwrap());
        let e = Engine::open(dev, EngineConfig::default()).unwrap();
        assert!(e.read(PG, ObjectKey::head(1, 1), 0, 2 * BLOCK).unwrap().iter().all(|&b| b == 0x5a));
    });
    let _ = Command::new("losetup").args(["-d", &dev_path]).status();
    result.unwrap();
}

#[test]
fn a_panicking_callback_does_not_stop_the_engine() {
    let (_d, e) = mem_engine(16, 1 << 20);
    e.submit(Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(1, 1), offset: 0, data: block(1) }), |_| panic!("caller bug"));
    write(&e, 2, 0, block(2)).expect("later transactions still commit");
    assert!(e.read(PG, ObjectKey::head(1, 1), 0, BLOCK).unwrap().iter().all(|&b| b == 1), "the first write is durable too");
}

#[test]
fn an_unsynced_transaction_is_visible_at_once_durable_with_the_next_sync_and_lost_whole_before_it() {
    let meta = |k: &'static str, v: &'static str| Op::MetaPut {
        scope: MetaScope::Pg(PG),
        key: Bytes::from_static(k.as_bytes()),
        value: Bytes::from_static(v.as_bytes()),
    };
    let get = |e: &Engine, k: &str| e.meta_get(MetaScope::Pg(PG), k.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned());
    let (mut lost, mut kept) = (0, 0);
    for seed in 0..24 {
        let dev = Arc::new(FaultDevice::new(65536 + 16 * (1 << 20), seed));
        let e = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
        e.commit(Txn::new().with(meta("a", "1"))).unwrap();
        let syncs = e.stats().syncs;
        e.commit(Txn::new().with(meta("b", "2")).with(meta("c", "3")).unsynced()).unwrap();
        assert_eq!(e.stats().syncs, syncs, "an unsynced transaction costs no fdatasync");
        assert_eq!(get(&e, "b").as_deref(), Some("2"), "visible as soon as it is called back");
        assert!(dev.unsynced_bytes() > 0, "written, not synced");
        let later_sync = seed % 3 == 0;
        if later_sync {
            e.commit(Txn::new().with(meta("d", "4"))).unwrap();
        }
        dev.power_cut();
        drop(e);
        dev.restart();
        let e = Engine::open(dev.clone(), EngineConfig::default()).unwrap();
        assert_eq!(get(&e, "a").as_deref(), Some("1"), "seed {seed}: synced before");
        let (b, c) = (get(&e, "b"), get(&e, "c"));
        assert_eq!(b.is_some(), c.is_some(), "seed {seed}: atomic, all or nothing ({b:?}, {c:?})");
        if later_sync {
            assert_eq!((b.as_deref(), get(&e, "d").as_deref()), (Some("2"), Some("4")), "seed {seed}: a later sync covers it");
        } else if b.is_some() {
            kept += 1;
        } else {
            lost += 1;
        }
    }
    assert!(lost > 0 && kept > 0, "a power cut loses an unsynced transaction or not ({lost} lost, {kept} kept)");

    // With data blocks it is synced anyway.
    let dev = Arc::new(FaultDevice::new(65536 + 16 * (1 << 20), 99));
    let e = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
    let syncs = e.stats().syncs;
    e.commit(Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(1, 1), offset: 0, data: block(7) }).unsynced()).unwrap();
    assert_eq!(e.stats().syncs, syncs + 1, "a transaction with data is synced");
    dev.power_cut();
    drop(e);
    dev.restart();
    let e = Engine::open(dev.clone(), EngineConfig::default()).unwrap();
    assert!(e.read(PG, ObjectKey::head(1, 1), 0, BLOCK).unwrap().iter().all(|&b| b == 7));
}

/// Callbacks come in submission order, also for transactions refused before the write
/// (invalid, too large, or refused by the state): the OSD matches completions to its rounds
/// by order (a refused transaction answered before an earlier one's batch was written
/// crashed an OSD on a full device).
#[test]
fn callbacks_come_in_submission_order_refused_transactions_included() {
    let (_dev, e) = mem_engine(16, 1 << 20);
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let cb = |i: usize| {
        let order = order.clone();
        move |r: Result<()>| order.lock().push((i, r.is_ok()))
    };
    let put = |i: u64| Op::Write { pg: PG, key: ObjectKey::head(1, i), offset: 0, data: block(i as u8) };
    for round in 0..20 {
        let base = round * 5;
        e.submit(Txn::new().with(put(base as u64)), cb(base));
        // Refused by `submit` itself (unaligned), by the state (an apply of a log entry that does not exist),
        // and for its size.
        e.submit(Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(1, 9), offset: 7, data: block(1) }), cb(base + 1));
        e.submit(
            Txn::new().with(Op::ApplyWrite { pg: PG, key: ObjectKey::head(5, 5), offset: 0, entry: 77, entry_offset: 0, len: 4096 }),
            cb(base + 2),
        );
        e.submit(
            Txn::new().with(Op::Write { pg: PG, key: ObjectKey::head(1, 8), offset: 0, data: Bytes::from(vec![0u8; 2 << 20]) }),
            cb(base + 3),
        );
        e.submit(Txn::new().with(put(base as u64 + 4)), cb(base + 4));
    }
    e.commit(Txn::new().with(put(999))).unwrap();
    let got = order.lock().clone();
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>(), "in submission order");
    for (i, ok) in got {
        assert_eq!(ok, i % 5 == 0 || i % 5 == 4, "transaction {i}");
    }
}

/// The cleaner's reserve holds whatever fills the device: user data up to its refusal, then
/// metadata (Raft hard states, log entries without data) up to its own, with garbage spread
/// over every segment. Deleting some objects must then always let the cleaner make room:
/// a device the cleaner cannot write to any more would refuse every write for good.
#[test]
fn metadata_filling_the_reserve_never_leaves_the_cleaner_without_room() {
    let (_d, e) = mem_engine(24, 65536);
    let mut objects = 0u64;
    // User data until refused, overwriting every third object once to spread garbage.
    loop {
        let r = write(&e, objects, 0, Bytes::from(vec![(objects % 250) as u8 + 1; 4 * BLOCK_SIZE]));
        if r.is_err() {
            break;
        }
        if objects.is_multiple_of(3) {
            let _ = write(&e, objects / 2, 0, Bytes::from(vec![7; 2 * BLOCK_SIZE]));
        }
        objects += 1;
        assert!(objects < 10_000);
    }
    // Metadata until refused too (or for a while: checkpoints may keep reclaiming its log).
    for hs in 0..5_000 {
        if e.commit(Txn::new().with(pgmeta::put_hard_state(PG, HardState { term: 1, vote: 1, commit: hs }))).is_err() {
            break;
        }
    }
    // Deleting a third of the objects gives the cleaner garbage to reclaim.
    for o in (0..objects).step_by(3) {
        e.commit(Txn::new().with(Op::Delete { pg: PG, key: ObjectKey::head(1, o) })).unwrap_or_else(|err| panic!("delete {o}: {err}"));
    }
    e.clean().unwrap_or_else(|err| panic!("the cleaner found no room: {err} ({:?} segments free)", e.segments()));
    write(&e, 99_999, 0, block(9)).unwrap_or_else(|err| panic!("no write after deletes and cleaning: {err} ({:?})", e.segments()));
}

/// A clean run to completion (what a full OSD asks for) fits in the free segments it
/// budgets for: every segment mostly live, a few free, and the run must end with more free
/// segments than it started with, never with none.
#[test]
fn cleaning_to_completion_fits_in_the_free_segments_it_budgets_for() {
    let (_d, e) = mem_engine(24, 65536);
    let mut objects = 0u64;
    while e.segments().0 > 8 {
        write(&e, objects, 0, Bytes::from(vec![(objects % 250) as u8 + 1; 3 * BLOCK_SIZE])).unwrap();
        objects += 1;
    }
    e.checkpoint().unwrap();
    for o in (0..objects).step_by(4) {
        e.commit(Txn::new().with(Op::Delete { pg: PG, key: ObjectKey::head(1, o) })).unwrap();
    }
    let before = e.segments().0;
    e.clean().unwrap_or_else(|err| panic!("clean with {before} free segments: {err} ({:?})", e.segments()));
    assert!(e.segments().0 > before, "{before} free before, {:?} after", e.segments());
    for o in (1..objects).filter(|o| o % 4 != 0) {
        let r = e.read(PG, ObjectKey::head(1, o), 0, 3 * BLOCK).unwrap();
        assert!(r.iter().all(|&b| b == (o % 250) as u8 + 1), "object {o} after cleaning");
    }
}

/// The two checkpoint slots of `dev`: `(offset, slot)` of each that decodes.
fn slots(dev: &MemDevice) -> Vec<(u64, format::checkpoint::Slot)> {
    let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
    dev.read_at(0, &mut b).unwrap();
    let uuid = format::superblock::Superblock::decode(&b).unwrap().uuid;
    format::SLOT_OFFSETS
        .iter()
        .filter_map(|off| {
            dev.read_at(*off, &mut b).unwrap();
            format::checkpoint::Slot::decode(&b, uuid).ok().map(|s| (*off, s))
        })
        .collect()
}

/// Flips one byte of the newest checkpoint slot (as bit rot would, long after it was written).
fn rot_newest_slot(dev: &MemDevice) -> u64 {
    let (off, newest) = slots(dev).into_iter().max_by_key(|(_, s)| s.gen).unwrap();
    let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
    dev.read_at(off, &mut b).unwrap();
    b[40] ^= 0x10;
    dev.write_at(off, &b).unwrap();
    newest.gen
}

/// Issue 16, part 4: recovery never silently goes back in time. With the newest slot rotten,
/// recovery falls back to the older checkpoint; once the log after it has been reused (the
/// newer checkpoint released it), replaying from there would stop early and forget committed
/// writes. Opening must refuse, naming what is missing.
#[test]
fn a_rotten_newest_checkpoint_slot_never_replays_a_reused_log_short() {
    let (dev, e) = mem_engine(16, 65536);
    for o in 0..4 {
        write(&e, o, 0, Bytes::from(vec![o as u8 + 1; 2 * BLOCK_SIZE])).unwrap();
    }
    e.checkpoint().unwrap();
    // The device as it is at the older checkpoint: its blob segments are restored below,
    // as if the log had not happened to reuse them (the allocator takes the lowest free).
    let older = slots(&dev).into_iter().max_by_key(|(_, s)| s.gen).unwrap().1;
    let mut blob = Vec::new();
    for s in &older.blob_segs {
        let mut b = AlignedBuf::zeroed(65536);
        dev.read_at(65536 + *s as u64 * 65536, &mut b).unwrap();
        blob.push((*s, b));
    }
    write(&e, 10, 0, block(0x42)).unwrap();
    e.checkpoint().unwrap();
    // Overwrites cycle the log through every segment the newer checkpoint freed.
    for i in 0..300u64 {
        write(&e, 20 + i % 3, 0, Bytes::from(vec![(i % 250) as u8 + 1; 2 * BLOCK_SIZE])).unwrap();
    }
    drop(e);
    for (s, b) in &blob {
        dev.write_at(65536 + *s as u64 * 65536, b).unwrap();
    }
    let gen = rot_newest_slot(&dev);
    match Engine::open(dev.clone(), EngineConfig::default()) {
        Err(EngineError::LogIncomplete { gen: fell_back_to, found, replayed_to, .. }) => {
            assert!(fell_back_to < gen && found > replayed_to, "{fell_back_to} {gen} {found} {replayed_to}")
        }
        Err(other) => panic!("refused, but not for the reused log: {other}"),
        Ok(e) => panic!(
            "opened from the older checkpoint and lost committed writes (object 20 reads {:?}, last written {})",
            &e.read(PG, ObjectKey::head(1, 20), 0, BLOCK).unwrap()[..4],
            (297 % 250) + 1
        ),
    }
}

/// The other side: a rotten newest slot whose older checkpoint's log is still whole (nothing
/// reused since the newer checkpoint) recovers everything from the older one.
#[test]
fn a_rotten_newest_checkpoint_slot_recovers_everything_while_the_older_log_is_whole() {
    let (dev, e) = mem_engine(16, 65536);
    write(&e, 1, 0, block(1)).unwrap();
    e.checkpoint().unwrap();
    write(&e, 2, 0, block(2)).unwrap();
    e.checkpoint().unwrap();
    write(&e, 3, 0, block(3)).unwrap();
    drop(e);
    rot_newest_slot(&dev);
    let e = Engine::open(dev.clone(), EngineConfig::default()).unwrap();
    for o in 1..=3u64 {
        assert!(e.read(PG, ObjectKey::head(1, o), 0, BLOCK).unwrap().iter().all(|&b| b == o as u8), "object {o}");
    }
}
