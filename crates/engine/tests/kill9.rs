//! Acknowledged writes survive `kill -9` of a real process writing to a real file.
//!
//! The test re-runs its own binary as a worker (selected by an environment variable) that
//! writes from several threads and prints `ack <thread> <n>` only after `commit` returned. The
//! parent kills it with SIGKILL at a random moment, reopens the device and checks that every
//! acknowledged write is there; three crash/recover cycles run on the same file.
//!
//! The second case runs the worker's engine on a `VolatileDevice` (writes held in process
//! memory until `sync`, some torn through to the file): kill -9 then loses every unsynced
//! write like a power cut, and recovery from the plain file must still find every
//! acknowledged transaction.

use bytes::Bytes;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tessera_engine::device::{FaultControl, FaultSettings, VolatileDevice};
use tessera_engine::*;

const THREADS: u64 = 4;
const PG: PgId = PgId::new(3, 0);
const WORKER_ENV: &str = "TESSERA_KILL9_WORKER_DEV";
/// Set (to a torn probability) when the worker runs on a volatile write cache.
const VOLATILE_ENV: &str = "TESSERA_KILL9_WORKER_VOLATILE_TORN";

fn payload(thread: u64, n: u64) -> Bytes {
    let mut v = vec![0u8; BLOCK_SIZE];
    for (i, c) in v.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(thread << 48 | n << 8 | (i as u64 & 0xff)).to_le_bytes());
    }
    Bytes::from(v)
}

/// Worker mode: only does anything when started by the parent test below.
#[test]
fn kill9_worker() {
    let Ok(path) = std::env::var(WORKER_ENV) else { return };
    let file = FileDevice::open(std::path::Path::new(&path)).unwrap();
    let dev: Arc<dyn Device> = match std::env::var(VOLATILE_ENV) {
        Ok(torn) => {
            let settings = FaultSettings { torn: torn.parse().unwrap(), ..Default::default() };
            Arc::new(VolatileDevice::new(file, FaultControl::fixed(settings), rand::random()))
        }
        Err(_) => Arc::new(file),
    };
    let e = Arc::new(Engine::open(dev, EngineConfig { checkpoint_bytes: 2 << 20 }).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, out) = (e.clone(), out.clone());
            std::thread::spawn(move || {
                // Continue after what earlier incarnations wrote.
                let start = e.object_info(PG, ObjectKey::head(9, t)).map_or(0, |i| i.extent_end / BLOCK);
                for n in start.. {
                    let op = Op::Write { pg: PG, key: ObjectKey::head(9, t), offset: n * BLOCK, data: payload(t, n) };
                    e.commit(Txn::new().with(op)).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {t} {n}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    kill9_cycles(None);
}

/// As above, with the worker on a volatile write cache that tears 30% of its writes: only
/// what was synced is on the file when the worker dies.
#[test]
fn acknowledged_writes_survive_kill_9_on_a_volatile_write_cache() {
    kill9_cycles(Some(0.3));
}

fn kill9_cycles(volatile_torn: Option<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osd.dev");
    {
        let dev = Arc::new(FileDevice::create(&path, 96 << 20).unwrap());
        format(&*dev, FormatOptions { segment_size: 1 << 20 }).unwrap();
    }
    let mut acked = vec![0u64; THREADS as usize]; // next n not yet known acknowledged
    for round in 0..3u64 {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "kill9_worker", "--nocapture", "--test-threads=1"]).env(WORKER_ENV, &path);
        if let Some(torn) = volatile_torn {
            cmd.env(VOLATILE_ENV, torn.to_string());
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let target = 200 + rand::random::<u64>() % 800 + round * 100;
        let mut seen = 0;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while seen < target {
            let Some(Ok(line)) = lines.next() else { panic!("worker exited early in round {round}") };
            let mut f = line.split_whitespace();
            if f.next() != Some("ack") {
                continue; // test harness chatter
            }
            let t: usize = f.next().unwrap().parse().unwrap();
            let n: u64 = f.next().unwrap().parse().unwrap();
            acked[t] = acked[t].max(n + 1);
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acks printed between our last read and the kill count too.
        for line in lines.map_while(Result::ok) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[0] == "ack" {
                let t: usize = f[1].parse().unwrap();
                acked[t] = acked[t].max(f[2].parse::<u64>().unwrap() + 1);
            }
        }
        let dev = Arc::new(FileDevice::open(&path).unwrap());
        let e = Engine::open(dev, EngineConfig::default()).unwrap();
        for t in 0..THREADS {
            let n = acked[t as usize];
            let got = e.read(PG, ObjectKey::head(9, t), 0, n * BLOCK).unwrap();
            for i in 0..n {
                assert!(
                    got[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize] == payload(t, i)[..],
                    "round {round}: thread {t} write {i} acknowledged but lost"
                );
            }
        }
        assert_eq!(e.stats().apply_errors, 0);
        // Recovery is clean: the engine takes new writes and a checkpoint right away.
        e.commit(Txn::new().with(Op::MetaPut {
            scope: MetaScope::Global,
            key: Bytes::from_static(b"round"),
            value: Bytes::from(round.to_string()),
        }))
        .unwrap();
        e.checkpoint().unwrap();
    }
}
