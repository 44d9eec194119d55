//! A fault-injecting device that models a drive with a volatile write cache.
//!
//! Every write lands in a visible image immediately but becomes durable only at `sync`.
//! [`FaultDevice::power_cut`] keeps, drops or tears (at 512-byte sector granularity) each
//! write made since the last sync, at random, then refuses all I/O until
//! [`FaultDevice::restart`]: exactly what a power loss does to a drive that lies until flush.
//! It can also fail reads, writes and syncs on demand or with a probability, and flip bits.

use super::{check_io, Device};
use crate::error::DeviceError;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io;

const SECTOR: usize = 512;

/// Probabilities (0.0..=1.0) of failing each kind of operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultConfig {
    pub fail_read: f64,
    pub fail_write: f64,
    pub fail_sync: f64,
}

struct State {
    durable: Vec<u8>,
    view: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    cfg: FaultConfig,
    rng: StdRng,
    dead: bool,
    fail_next_write: bool,
    fail_next_sync: bool,
}

pub struct FaultDevice {
    st: Mutex<State>,
}

fn injected(op: &'static str, offset: u64, len: u64, what: &str) -> DeviceError {
    DeviceError::new(op, offset, len, io::Error::other(format!("injected fault: {what}")))
}

impl FaultDevice {
    /// A zeroed device of `len` bytes whose random choices derive from `seed`.
    pub fn new(len: u64, seed: u64) -> Self {
        let len = (len - len % 4096) as usize;
        Self {
            st: Mutex::new(State {
                durable: vec![0; len],
                view: vec![0; len],
                unsynced: Vec::new(),
                cfg: FaultConfig::default(),
                rng: StdRng::seed_from_u64(seed),
                dead: false,
                fail_next_write: false,
                fail_next_sync: false,
            }),
        }
    }

    pub fn set_faults(&self, cfg: FaultConfig) {
        self.st.lock().cfg = cfg;
    }

    /// The next write fails; a random prefix of its sectors still reaches the cache.
    pub fn fail_next_write(&self) {
        self.st.lock().fail_next_write = true;
    }

    /// The next sync fails and makes nothing durable.
    pub fn fail_next_sync(&self) {
        self.st.lock().fail_next_sync = true;
    }

    /// Simulated power loss: each unsynced write is kept, dropped or torn at random; then the
    /// device fails every operation until [`restart`](Self::restart).
    pub fn power_cut(&self) {
        let mut st = self.st.lock();
        let st = &mut *st;
        let writes = std::mem::take(&mut st.unsynced);
        for (off, data) in writes {
            let off = off as usize;
            match st.rng.gen_range(0..3) {
                0 => {}
                1 => st.durable[off..off + data.len()].copy_from_slice(&data),
                _ => {
                    for s in (0..data.len()).step_by(SECTOR) {
                        if st.rng.gen_bool(0.5) {
                            st.durable[off + s..off + s + SECTOR].copy_from_slice(&data[s..s + SECTOR]);
                        }
                    }
                }
            }
        }
        st.view.clone_from(&st.durable);
        st.dead = true;
    }

    /// Powers the device back on with whatever survived the cut.
    pub fn restart(&self) {
        self.st.lock().dead = false;
    }

    /// Flips one bit of the stored (durable and visible) image: silent media corruption.
    pub fn flip_bit(&self, byte_offset: u64, bit: u8) {
        let mut st = self.st.lock();
        st.durable[byte_offset as usize] ^= 1 << (bit % 8);
        st.view[byte_offset as usize] ^= 1 << (bit % 8);
    }

    /// Bytes written since the last successful sync (what a power cut may lose).
    pub fn unsynced_bytes(&self) -> usize {
        self.st.lock().unsynced.iter().map(|(_, d)| d.len()).sum()
    }

    fn roll(st: &mut State, p: f64) -> bool {
        p > 0.0 && st.rng.gen_bool(p.min(1.0))
    }
}

impl Device for FaultDevice {
    fn len(&self) -> u64 {
        self.st.lock().view.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let mut st = self.st.lock();
        check_io("read", st.view.len() as u64, offset, buf.as_ptr(), buf.len())?;
        if st.dead {
            return Err(injected("read", offset, buf.len() as u64, "device powered off"));
        }
        let p = st.cfg.fail_read;
        if Self::roll(&mut st, p) {
            return Err(injected("read", offset, buf.len() as u64, "read error"));
        }
        buf.copy_from_slice(&st.view[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut st = self.st.lock();
        let st = &mut *st;
        check_io("write", st.view.len() as u64, offset, buf.as_ptr(), buf.len())?;
        if st.dead {
            return Err(injected("write", offset, buf.len() as u64, "device powered off"));
        }
        let p = st.cfg.fail_write;
        let fail = std::mem::take(&mut st.fail_next_write) || Self::roll(st, p);
        // A failing write may still have put a prefix of its sectors into the cache.
        let keep = if fail { st.rng.gen_range(0..=buf.len() / SECTOR) * SECTOR } else { buf.len() };
        let off = offset as usize;
        st.view[off..off + keep].copy_from_slice(&buf[..keep]);
        if keep > 0 {
            st.unsynced.push((offset, buf[..keep].to_vec()));
        }
        if fail {
            return Err(injected("write", offset, buf.len() as u64, "write error"));
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), DeviceError> {
        let mut st = self.st.lock();
        let st = &mut *st;
        if st.dead {
            return Err(injected("sync", 0, 0, "device powered off"));
        }
        let p = st.cfg.fail_sync;
        if std::mem::take(&mut st.fail_next_sync) || Self::roll(st, p) {
            return Err(injected("sync", 0, 0, "flush error"));
        }
        for (off, data) in std::mem::take(&mut st.unsynced) {
            st.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("fault-injecting memory ({} bytes)", self.len())
    }
}
