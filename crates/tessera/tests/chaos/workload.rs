//! The verifying workload of the chaos suite: writers and readers on several volumes through
//! a `tessera nbd` server, each on its own NBD connection, recording a history for the
//! linearizability checker.
//!
//! Every 4 KiB block written carries its volume, its offset and a write value unique in the
//! run (writer id and sequence), repeated over the whole block. A read that returns anything
//! else (a block of another offset or volume, a torn or corrupt block) fails the run at once;
//! values are checked against the history afterwards (no lost acknowledged write, no stale
//! read). A request whose connection breaks or that gets an error reply has an unknown
//! outcome: the checker lets it take effect or not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tessera_nbd::raw_client::RawClient;
use tessera_testkit::linearizability::{Event, Op, INITIAL};

/// Blocks (registers) per volume, spread over objects and PGs.
pub const REGISTERS: u64 = 48;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
/// Longer than the client library's 30 s operation timeout: the server answers first.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

pub fn offset(r: u64) -> u64 {
    (r % 16) * (1 << 20) + (r / 16) * 4096 + (r % 3) * 64 * 1024
}

pub fn register(volume: usize, r: u64) -> u64 {
    ((volume as u64) << 32) | r
}

/// The block for `value` at (`volume`, `offset`).
pub fn block(volume: usize, offset: u64, value: u64) -> Vec<u8> {
    let unit = [volume as u64, offset, value, !value];
    let mut out = Vec::with_capacity(4096);
    for _ in 0..128 {
        for w in unit {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// The value a block read at (`volume`, `offset`) holds, or why it is not a block this
/// workload wrote there.
pub fn value_of(volume: usize, offset: u64, data: &[u8]) -> Result<u64, String> {
    if data.len() != 4096 {
        return Err(format!("read returned {} bytes", data.len()));
    }
    if data.iter().all(|b| *b == 0) {
        return Ok(INITIAL);
    }
    let w = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    let (v, o, value) = (w(0), w(1), w(2));
    if data != block(volume, offset, value).as_slice() {
        return Err(format!(
            "volume {volume} offset {offset:#x}: the block is not one this workload wrote here \
             (starts with volume {v} offset {o:#x} value {value:#x}: misdirected, torn or corrupt)"
        ));
    }
    Ok(value)
}

pub struct Workload {
    pub history: Arc<Mutex<Vec<Event>>>,
    pub stop: Arc<AtomicBool>,
    /// Wrong data seen by a reader (fails the run).
    pub corrupt: Arc<Mutex<Vec<String>>>,
    pub reconnects: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One NBD connection that reconnects (with a short pause) until it works or the run stops.
struct Conn {
    addr: SocketAddr,
    export: String,
    client: Option<RawClient>,
}

impl Conn {
    async fn get(&mut self, stop: &AtomicBool, reconnects: &AtomicU64) -> Option<&mut RawClient> {
        while self.client.is_none() {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(5), RawClient::connect(self.addr, &self.export)).await {
                Ok(Ok(c)) => {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    self.client = Some(c);
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        self.client.as_mut()
    }

    /// One request: `Some((error, data))` on a reply, `None` if the connection failed (it
    /// is dropped and the outcome is unknown).
    async fn call(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> Option<(u32, Vec<u8>)> {
        let c = self.client.as_mut()?;
        match tokio::time::timeout(CALL_TIMEOUT, c.call(kind, 0, offset, len, payload)).await {
            Ok(Ok(r)) => Some(r),
            _ => {
                self.client = None;
                None
            }
        }
    }
}

impl Workload {
    /// Starts `writers` writers and `readers` readers spread over `volumes` exports of the
    /// NBD server at `addr`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        addr: SocketAddr,
        volumes: &[String],
        writers: usize,
        readers: usize,
        seed: u64,
    ) -> Workload {
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let corrupt = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..writers + readers {
            let writer = w < writers;
            let (history, stop, corrupt, reconnects) = (history.clone(), stop.clone(), corrupt.clone(), reconnects.clone());
            let volume = w % volumes.len();
            let export = volumes[volume].clone();
            tasks.push(rt.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
                let mut conn = Conn { addr, export, client: None };
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if conn.get(&stop, &reconnects).await.is_none() {
                        break;
                    }
                    let r = rng.gen_range(0..REGISTERS);
                    let (reg, off) = (register(volume, r), offset(r));
                    let invoked = Instant::now();
                    if writer {
                        seq += 1;
                        let value = ((w as u64 + 1) << 40) | seq;
                        let reply = conn.call(CMD_WRITE, off, 4096, &block(volume, off, value)).await;
                        let acked = matches!(reply, Some((0, _)));
                        history.lock().unwrap().push(Event {
                            register: reg,
                            op: Op::Write { value, acked },
                            invoked,
                            completed: Instant::now(),
                        });
                    } else if let Some((0, data)) = conn.call(CMD_READ, off, 4096, &[]).await {
                        match value_of(volume, off, &data) {
                            Ok(value) => history.lock().unwrap().push(Event {
                                register: reg,
                                op: Op::Read { value },
                                invoked,
                                completed: Instant::now(),
                            }),
                            Err(e) => corrupt.lock().unwrap().push(e),
                        }
                    }
                }
            }));
        }
        Workload { history, stop, corrupt, reconnects, tasks }
    }

    /// Stops every task after its request in flight.
    pub fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            rt.block_on(t).expect("workload task panicked");
        }
    }

    /// Reads every register of every volume once more on fresh connections and records the
    /// reads (the final state must hold every acknowledged write's successor or itself).
    pub fn final_reads(&self, rt: &tokio::runtime::Runtime, addr: SocketAddr, volumes: &[String]) {
        for (volume, export) in volumes.iter().enumerate() {
            let mut c = rt.block_on(RawClient::connect(addr, export)).unwrap_or_else(|e| panic!("final reads: connect to {export}: {e}"));
            for r in 0..REGISTERS {
                let off = offset(r);
                let invoked = Instant::now();
                let (err, data) = rt.block_on(c.call(CMD_READ, 0, off, 4096, &[])).expect("final read");
                assert_eq!(err, 0, "final read of {export} at {off:#x} failed with NBD error {err}");
                let value = value_of(volume, off, &data).unwrap_or_else(|e| panic!("final read: {e}"));
                self.history.lock().unwrap().push(Event {
                    register: register(volume, r),
                    op: Op::Read { value },
                    invoked,
                    completed: Instant::now(),
                });
            }
        }
    }
}

/// Writes `data` at offset 0 of `export` in 256 KiB requests (every one must succeed).
pub fn write_all(rt: &tokio::runtime::Runtime, addr: SocketAddr, export: &str, data: &[u8]) {
    let mut c = rt.block_on(RawClient::connect(addr, export)).unwrap_or_else(|e| panic!("connect to {export}: {e}"));
    for (i, chunk) in data.chunks(256 << 10).enumerate() {
        let off = (i * (256 << 10)) as u64;
        let (err, _) = rt.block_on(c.call(CMD_WRITE, 0, off, chunk.len() as u32, chunk)).expect("write");
        assert_eq!(err, 0, "write of {export} at {off:#x} failed with NBD error {err}");
    }
}

/// Reads `len` bytes from offset 0 of `export` in 256 KiB requests.
pub fn read_all(rt: &tokio::runtime::Runtime, addr: SocketAddr, export: &str, len: usize) -> Vec<u8> {
    let mut c = rt.block_on(RawClient::connect(addr, export)).unwrap_or_else(|e| panic!("connect to {export}: {e}"));
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(256 << 10);
        let (err, data) = rt.block_on(c.call(CMD_READ, 0, out.len() as u64, n as u32, &[])).expect("read");
        assert_eq!(err, 0, "read of {export} at {:#x} failed with NBD error {err}", out.len());
        out.extend_from_slice(&data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_decode_only_at_their_own_place() {
        let b = block(1, 0x1000, 77);
        assert_eq!(value_of(1, 0x1000, &b), Ok(77));
        assert!(value_of(2, 0x1000, &b).is_err(), "another volume's block");
        assert!(value_of(1, 0x2000, &b).is_err(), "a misdirected block");
        let mut torn = b.clone();
        torn[2048..].copy_from_slice(&block(1, 0x1000, 78)[2048..]);
        assert!(value_of(1, 0x1000, &torn).is_err(), "a torn block");
        assert_eq!(value_of(1, 0x1000, &[0u8; 4096]), Ok(INITIAL));
        let offsets: std::collections::HashSet<u64> = (0..REGISTERS).map(offset).collect();
        assert_eq!(offsets.len() as u64, REGISTERS, "registers do not overlap");
    }
}
