//! One conformance suite run against every `Device` implementation.

use super::*;
use crate::ids::BLOCK_SIZE;

fn pattern(seed: u8, len: usize) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(len);
    for (i, x) in b.iter_mut().enumerate() {
        *x = seed.wrapping_add((i % 251) as u8);
    }
    b
}

pub fn run(dev: &dyn Device) {
    let len = dev.len();
    assert!(len >= 16 * BLOCK_SIZE as u64 && len.is_multiple_of(4096), "{}", dev.describe());
    // Round trip, including the last block.
    for (off, seed) in [(0u64, 1u8), (BLOCK_SIZE as u64 * 3, 2), (len - 2 * BLOCK_SIZE as u64, 3)] {
        let w = pattern(seed, 2 * BLOCK_SIZE);
        dev.write_at(off, &w).unwrap();
        let mut r = AlignedBuf::zeroed(2 * BLOCK_SIZE);
        dev.read_at(off, &mut r).unwrap();
        assert_eq!(&r[..], &w[..], "round trip at {off} on {}", dev.describe());
    }
    dev.sync().unwrap();
    // Overwrite is visible.
    dev.write_at(0, &pattern(9, BLOCK_SIZE)).unwrap();
    let mut r = AlignedBuf::zeroed(BLOCK_SIZE);
    dev.read_at(0, &mut r).unwrap();
    assert_eq!(&r[..], &pattern(9, BLOCK_SIZE)[..]);
    // Contract violations are errors, not panics.
    let mut small = AlignedBuf::zeroed(BLOCK_SIZE);
    assert!(dev.read_at(len, &mut small).is_err(), "read past end");
    assert!(dev.write_at(len - BLOCK_SIZE as u64 / 2, &small).is_err(), "write straddling end");
    assert!(dev.read_at(100, &mut small).is_err(), "unaligned offset");
    assert!(dev.write_at(0, &small[..100]).is_err(), "unaligned length");
    let mut big = AlignedBuf::zeroed(2 * BLOCK_SIZE);
    assert!(dev.read_at(0, &mut big[1..BLOCK_SIZE + 1]).is_err(), "unaligned buffer");
    assert!(dev.read_at(u64::MAX - 4095, &mut small).is_err(), "offset overflow");
}

#[test]
fn mem_device_conforms() {
    run(&MemDevice::new(1 << 20));
}

#[test]
fn fault_device_without_faults_conforms() {
    run(&FaultDevice::new(1 << 20, 7));
}

#[test]
fn file_device_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::create(&dir.path().join("dev"), 1 << 20).unwrap();
    run(&dev);
}

#[test]
fn volatile_device_without_faults_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileDevice::create(&dir.path().join("dev"), 1 << 20).unwrap();
    run(&VolatileDevice::new(file, FaultControl::fixed(FaultSettings::default()), 3));
    // Over memory too, and with a control file that exists but is empty.
    let ctl = FaultControl::from_file(dir.path().join("faults")).unwrap();
    run(&VolatileDevice::new(MemDevice::new(1 << 20), ctl, 4));
}

#[test]
fn power_cut_keeps_synced_and_may_drop_unsynced() {
    let dev = FaultDevice::new(1 << 20, 11);
    dev.write_at(0, &pattern(1, BLOCK_SIZE)).unwrap();
    dev.sync().unwrap();
    for i in 1..64u64 {
        dev.write_at(i * BLOCK_SIZE as u64, &pattern(2, BLOCK_SIZE)).unwrap();
    }
    assert_eq!(dev.unsynced_bytes(), 63 * BLOCK_SIZE);
    dev.power_cut();
    let mut r = AlignedBuf::zeroed(BLOCK_SIZE);
    assert!(dev.read_at(0, &mut r).is_err(), "dead device must refuse I/O");
    dev.restart();
    dev.read_at(0, &mut r).unwrap();
    assert_eq!(&r[..], &pattern(1, BLOCK_SIZE)[..], "synced data survives");
    let (mut kept, mut lost) = (0, 0);
    for i in 1..64u64 {
        dev.read_at(i * BLOCK_SIZE as u64, &mut r).unwrap();
        if r[..] == pattern(2, BLOCK_SIZE)[..] {
            kept += 1
        } else {
            lost += 1
        }
    }
    assert!(kept > 0 && lost > 0, "seeded cut should keep some and lose some: {kept}/{lost}");
}
