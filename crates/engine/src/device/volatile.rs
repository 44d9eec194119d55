//! A device with a volatile write cache in process memory, and injectable faults: for
//! running real processes (`tessera osd run --fault-control`) on a disk that misbehaves.
//!
//! [`VolatileDevice`] wraps another [`Device`] (in practice a [`super::FileDevice`]):
//! - `write_at` puts the data in a cache in this process's memory: later reads see it, the
//!   inner device does not;
//! - `sync` writes every cached block to the inner device, syncs the inner device, and only
//!   then returns: that is when writes become durable, as the [`Device`] contract requires;
//! - a process that dies (kill -9) or drops the device without `sync` loses every write since
//!   the last `sync`, exactly like a power cut on a drive that acknowledges writes from its
//!   cache;
//! - with probability `torn` per write, a random subset of the write's 512-byte sectors also
//!   reaches the inner device at once (not synced by this device, but a later sync of the inner
//!   device or the OS's writeback may persist it), so a crash can leave torn writes.
//!
//! Faults come from a [`FaultControl`] (a control file, see `fault_control.rs`): reads, writes
//! and syncs fail with an injected [`DeviceError`] with the configured probabilities (a failed
//! write caches nothing, a failed sync makes nothing durable and keeps the cache), and every
//! call first sleeps `delay_ms`. Alignment and range are checked (with `check_io`) before any
//! fault is injected, so contract violations are always `InvalidInput`.

use super::fault_control::{FaultControl, FaultSettings};
use super::{check_io, AlignedBuf, Device};
use crate::error::DeviceError;
use crate::ids::{BLOCK, BLOCK_SIZE};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

const SECTOR: usize = 512;
/// Largest single write to the inner device when flushing the cache (1 MiB).
const FLUSH_RUN_BLOCKS: usize = 256;

/// A volatile write cache over `D`, with injectable faults. See the module docs.
pub struct VolatileDevice<D: Device> {
    inner: D,
    control: FaultControl,
    /// Unsynced writes: device block number -> the block's latest contents.
    cache: Mutex<BTreeMap<u64, Arc<[u8]>>>,
    /// Serializes `sync`s, so an older flush never lands after a newer one.
    sync_lock: Mutex<()>,
    rng: Mutex<StdRng>,
}

fn injected(op: &'static str, offset: u64, len: u64, what: &str) -> DeviceError {
    DeviceError::new(op, offset, len, io::Error::other(format!("injected fault: {what}")))
}

impl<D: Device> VolatileDevice<D> {
    /// Wraps `inner`; random choices (faults, torn sectors) derive from `seed`.
    pub fn new(inner: D, control: FaultControl, seed: u64) -> Self {
        Self { inner, control, cache: Mutex::new(BTreeMap::new()), sync_lock: Mutex::new(()), rng: Mutex::new(StdRng::seed_from_u64(seed)) }
    }

    /// The fault settings in force (following the control file, if any).
    pub fn control(&self) -> &FaultControl {
        &self.control
    }

    /// The wrapped device (holds only what was synced, plus torn sectors).
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Bytes written since the last successful sync: what a crash now would lose.
    pub fn unsynced_bytes(&self) -> usize {
        self.cache.lock().len() * BLOCK_SIZE
    }

    fn roll(&self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        p >= 1.0 || self.rng.lock().gen_bool(p)
    }

    /// Sleeps the configured delay and returns the settings for this call.
    fn begin(&self) -> FaultSettings {
        let s = self.control.settings();
        if s.delay_ms > 0 {
            std::thread::sleep(s.delay());
        }
        s
    }

    /// Writes a random subset of `buf`'s sectors to the inner device (block by block,
    /// read-modify-write, since the inner device takes whole aligned blocks only).
    fn tear_through(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut block = AlignedBuf::zeroed(BLOCK_SIZE);
        for (i, new) in buf.chunks(BLOCK_SIZE).enumerate() {
            let picked: Vec<bool> = {
                let mut rng = self.rng.lock();
                (0..BLOCK_SIZE / SECTOR).map(|_| rng.gen_bool(0.5)).collect()
            };
            if !picked.contains(&true) {
                continue;
            }
            let at = offset + i as u64 * BLOCK;
            self.inner.read_at(at, &mut block)?;
            for (s, _) in picked.iter().enumerate().filter(|(_, p)| **p) {
                block[s * SECTOR..(s + 1) * SECTOR].copy_from_slice(&new[s * SECTOR..(s + 1) * SECTOR]);
            }
            self.inner.write_at(at, &block)?;
        }
        Ok(())
    }

    /// Writes `blocks` (ascending block numbers) to the inner device, one write per run of
    /// consecutive blocks (at most [`FLUSH_RUN_BLOCKS`]).
    fn write_out(&self, blocks: &[(u64, Arc<[u8]>)]) -> Result<(), DeviceError> {
        let mut buf = AlignedBuf::zeroed(FLUSH_RUN_BLOCKS * BLOCK_SIZE);
        let mut i = 0;
        while i < blocks.len() {
            let first = blocks[i].0;
            let mut n = 0;
            while i + n < blocks.len() && n < FLUSH_RUN_BLOCKS && blocks[i + n].0 == first + n as u64 {
                buf[n * BLOCK_SIZE..(n + 1) * BLOCK_SIZE].copy_from_slice(&blocks[i + n].1);
                n += 1;
            }
            self.inner.write_at(first * BLOCK, &buf[..n * BLOCK_SIZE])?;
            i += n;
        }
        Ok(())
    }
}

impl<D: Device> Device for VolatileDevice<D> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Reads the inner device and overlays the cached (unsynced) blocks of the range.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_io("read", self.len(), offset, buf.as_ptr(), buf.len())?;
        let s = self.begin();
        if self.roll(s.read_error) {
            return Err(injected("read", offset, buf.len() as u64, "read error"));
        }
        let first = offset / BLOCK;
        let n = (buf.len() / BLOCK_SIZE) as u64;
        // Snapshot the cached blocks before reading the inner device: a block not cached now
        // is already on the inner device (a flush writes a block out before it uncaches it).
        let cached: Vec<(u64, Arc<[u8]>)> = self.cache.lock().range(first..first + n).map(|(b, d)| (*b, d.clone())).collect();
        if cached.len() as u64 != n {
            self.inner.read_at(offset, buf)?;
        }
        for (b, d) in cached {
            let at = ((b - first) * BLOCK) as usize;
            buf[at..at + BLOCK_SIZE].copy_from_slice(&d);
        }
        Ok(())
    }

    /// Caches the write (visible to reads at once, durable at the next `sync`); with the
    /// `torn` probability some of its sectors also go to the inner device now.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        check_io("write", self.len(), offset, buf.as_ptr(), buf.len())?;
        let s = self.begin();
        if self.roll(s.write_error) {
            return Err(injected("write", offset, buf.len() as u64, "write error"));
        }
        let mut cache = self.cache.lock();
        // Under the cache lock, so a flush cannot interleave with the torn sectors.
        if self.roll(s.torn) {
            self.tear_through(offset, buf)?;
        }
        let first = offset / BLOCK;
        for (i, chunk) in buf.chunks(BLOCK_SIZE).enumerate() {
            cache.insert(first + i as u64, Arc::from(chunk));
        }
        Ok(())
    }

    /// Writes every block cached when the call started to the inner device, syncs it, then
    /// drops those blocks from the cache (unless overwritten meanwhile).
    fn sync(&self) -> Result<(), DeviceError> {
        let s = self.begin();
        if self.roll(s.sync_error) {
            return Err(injected("sync", 0, 0, "flush error"));
        }
        let _one = self.sync_lock.lock();
        let blocks: Vec<(u64, Arc<[u8]>)> = self.cache.lock().iter().map(|(b, d)| (*b, d.clone())).collect();
        self.write_out(&blocks)?;
        self.inner.sync()?;
        let mut cache = self.cache.lock();
        for (b, d) in blocks {
            if cache.get(&b).is_some_and(|now| Arc::ptr_eq(now, &d)) {
                cache.remove(&b);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let faults = match self.control.path() {
            Some(p) => format!("faults from {}", p.display()),
            None => "fixed faults".to_string(),
        };
        format!("{} behind a volatile write cache ({faults})", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::super::FileDevice;
    use super::*;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn block(seed: u8, n: usize) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(n * BLOCK_SIZE);
        for (i, x) in b.iter_mut().enumerate() {
            *x = seed.wrapping_add((i % 253) as u8) | 1; // never zero: distinguishable from a fresh file
        }
        b
    }

    fn read(dev: &dyn Device, offset: u64, n: usize) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(n * BLOCK_SIZE);
        dev.read_at(offset, &mut b).unwrap();
        b
    }

    fn volatile(path: &Path, settings: FaultSettings) -> VolatileDevice<FileDevice> {
        VolatileDevice::new(FileDevice::open(path).unwrap(), FaultControl::fixed(settings), 42)
    }

    fn new_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("dev");
        FileDevice::create(&path, 2 << 20).unwrap();
        path
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let dev = volatile(&path, FaultSettings::default());
        dev.write_at(0, &block(1, 2)).unwrap();
        dev.sync().unwrap();
        assert_eq!(dev.unsynced_bytes(), 0);
        dev.write_at(BLOCK, &block(2, 1)).unwrap(); // overwrites synced data
        dev.write_at(8 * BLOCK, &block(3, 4)).unwrap(); // new data
        assert_eq!(dev.unsynced_bytes(), 5 * BLOCK_SIZE);
        // Visible before the sync, but only in this process.
        assert_eq!(&read(&dev, BLOCK, 1)[..], &block(2, 1)[..]);
        assert_eq!(&read(&dev, 8 * BLOCK, 4)[..], &block(3, 4)[..]);
        assert_eq!(&read(dev.inner(), 8 * BLOCK, 4)[..], &AlignedBuf::zeroed(4 * BLOCK_SIZE)[..]);
        // A read spanning cached and uncached blocks gets each from the right place.
        let mixed = read(&dev, 0, 2);
        assert_eq!(&mixed[..BLOCK_SIZE], &block(1, 2)[..BLOCK_SIZE]);
        assert_eq!(&mixed[BLOCK_SIZE..], &block(2, 1)[..]);
        drop(dev); // what kill -9 does: the cache is gone
        let after = FileDevice::open(&path).unwrap();
        assert_eq!(&read(&after, 0, 2)[..], &block(1, 2)[..], "synced writes survive");
        assert_eq!(&read(&after, 8 * BLOCK, 4)[..], &AlignedBuf::zeroed(4 * BLOCK_SIZE)[..], "unsynced writes are lost");
    }

    #[test]
    fn sync_makes_every_earlier_write_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let dev = volatile(&path, FaultSettings::default());
        // Scattered and contiguous writes, some overwritten, more than one flush run.
        for i in 0..(FLUSH_RUN_BLOCKS as u64 + 20) {
            dev.write_at(i * BLOCK, &block(i as u8, 1)).unwrap();
        }
        dev.write_at(3 * BLOCK, &block(99, 1)).unwrap();
        dev.write_at(255 * BLOCK - BLOCK, &block(7, 1)).unwrap();
        dev.sync().unwrap();
        drop(dev);
        let after = FileDevice::open(&path).unwrap();
        for i in 0..(FLUSH_RUN_BLOCKS as u64 + 20) {
            let want = match i {
                3 => block(99, 1),
                254 => block(7, 1),
                _ => block(i as u8, 1),
            };
            assert_eq!(&read(&after, i * BLOCK, 1)[..], &want[..], "block {i}");
        }
    }

    #[test]
    fn concurrent_writers_and_syncs_lose_nothing_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let dev = Arc::new(volatile(&path, FaultSettings::default()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    for round in 0..20u64 {
                        let b = (t * 40 + round * 2) % 200;
                        dev.write_at(b * BLOCK, &block((t * 31 + round) as u8, 2)).unwrap();
                        dev.sync().unwrap();
                        assert_eq!(&read(&*dev, b * BLOCK, 2)[..], &block((t * 31 + round) as u8, 2)[..]);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let expect: Vec<AlignedBuf> = (0..200).map(|b| read(&*dev, b * BLOCK, 1)).collect();
        assert_eq!(dev.unsynced_bytes(), 0);
        drop(dev);
        let after = FileDevice::open(&path).unwrap();
        for (b, want) in expect.iter().enumerate() {
            assert_eq!(&read(&after, b as u64 * BLOCK, 1)[..], &want[..], "block {b}");
        }
    }

    #[test]
    fn torn_writes_leave_some_sectors_on_the_inner_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let dev = volatile(&path, FaultSettings { torn: 1.0, ..Default::default() });
        let old = block(5, 32);
        dev.write_at(0, &old).unwrap();
        dev.sync().unwrap();
        let new = block(77, 32);
        dev.write_at(0, &new).unwrap();
        assert_eq!(&read(&dev, 0, 32)[..], &new[..], "the whole write is visible");
        drop(dev);
        let after = read(&FileDevice::open(&path).unwrap(), 0, 32);
        let (mut torn_in, mut kept_old) = (0, 0);
        for s in 0..32 * BLOCK_SIZE / SECTOR {
            let r = s * SECTOR..(s + 1) * SECTOR;
            if after[r.clone()] == new[r.clone()] {
                torn_in += 1;
            } else {
                assert_eq!(&after[r.clone()], &old[r], "sector {s} is neither old nor new");
                kept_old += 1;
            }
        }
        assert!(torn_in > 0, "torn=1 must put some sectors through");
        assert!(kept_old > 0, "seeded: half the sectors on average stay old ({torn_in} new)");
    }

    #[test]
    fn error_probability_one_fails_every_such_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let dev = volatile(&path, FaultSettings::default());
        dev.write_at(0, &block(1, 1)).unwrap();
        dev.sync().unwrap();

        dev.control().set(FaultSettings { read_error: 1.0, ..Default::default() });
        let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
        for _ in 0..50 {
            let e = dev.read_at(0, &mut b).unwrap_err();
            assert!(e.message.contains("injected"), "{e:?}");
        }
        dev.write_at(BLOCK, &block(2, 1)).unwrap();
        dev.sync().unwrap();

        dev.control().set(FaultSettings { write_error: 1.0, ..Default::default() });
        for i in 0..50 {
            assert!(dev.write_at(2 * BLOCK, &block(i, 1)).is_err());
        }
        assert_eq!(dev.unsynced_bytes(), 0, "a failed write caches nothing");
        assert_eq!(&read(&dev, 2 * BLOCK, 1)[..], &AlignedBuf::zeroed(BLOCK_SIZE)[..]);
        dev.sync().unwrap();

        dev.control().set(FaultSettings { sync_error: 1.0, ..Default::default() });
        dev.write_at(3 * BLOCK, &block(3, 1)).unwrap();
        for _ in 0..50 {
            assert!(dev.sync().is_err());
        }
        assert_eq!(&read(&dev, 3 * BLOCK, 1)[..], &block(3, 1)[..], "still visible in the cache");
        // Alignment errors stay InvalidInput even with faults on.
        let e = dev.write_at(100, &block(1, 1)).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::InvalidInput);
        drop(dev);
        let after = FileDevice::open(&path).unwrap();
        assert_eq!(&read(&after, BLOCK, 1)[..], &block(2, 1)[..]);
        assert_eq!(&read(&after, 3 * BLOCK, 1)[..], &AlignedBuf::zeroed(BLOCK_SIZE)[..], "a failed sync makes nothing durable");
    }

    #[test]
    fn delay_is_applied_to_every_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let dev = volatile(&path, FaultSettings { delay_ms: 20, ..Default::default() });
        let t = Instant::now();
        dev.write_at(0, &block(1, 1)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(20));
        let t = Instant::now();
        read(&dev, 0, 1);
        assert!(t.elapsed() >= Duration::from_millis(20));
        let t = Instant::now();
        dev.sync().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn faults_follow_the_control_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_file(&dir);
        let ctl = dir.path().join("faults");
        let dev = VolatileDevice::new(FileDevice::open(&path).unwrap(), FaultControl::from_file(&ctl).unwrap(), 1);
        assert!(dev.describe().contains("faults from"), "{}", dev.describe());
        dev.write_at(0, &block(1, 1)).unwrap();
        std::fs::write(&ctl, "# break it\nwrite_error=1\nnonsense\n").unwrap();
        std::thread::sleep(super::super::fault_control::CHECK_INTERVAL + Duration::from_millis(30));
        assert!(dev.write_at(0, &block(2, 1)).is_err());
        std::fs::write(&ctl, "").unwrap();
        std::thread::sleep(super::super::fault_control::CHECK_INTERVAL + Duration::from_millis(30));
        dev.write_at(0, &block(3, 1)).unwrap();
        dev.sync().unwrap();
    }
}
