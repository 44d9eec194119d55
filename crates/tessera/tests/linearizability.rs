//! Linearizability under faults: concurrent clients write and read blocks while OSD
//! processes are killed (-9), restarted and paused; the recorded history must be
//! linearizable per block (see `tessera_testkit::linearizability`): no acknowledged write
//! lost, no stale read, no read going back in time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tessera_client::{Client, ClientOptions};
use tessera_testkit::cluster::{ClusterOptions, TestCluster};
use tessera_testkit::linearizability::{check, Event, Op};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const REGISTERS: u64 = 24;
const CLIENTS: u64 = 4;

/// Register `r` is one 4 KiB block; registers are spread over objects (and PGs).
fn offset(r: u64) -> u64 {
    (r % 16) * (1 << 20) + (r / 16) * 4096
}

fn block(value: u64) -> Bytes {
    Bytes::from(value.to_le_bytes().repeat(512))
}

fn value_of(data: &[u8]) -> Result<u64, String> {
    let v = u64::from_le_bytes(data[..8].try_into().unwrap());
    if data.chunks(8).any(|c| c != v.to_le_bytes()) {
        return Err(format!("torn block (starts with value {v})"));
    }
    Ok(v)
}

#[test]
fn concurrent_clients_see_a_linearizable_history_while_osds_are_killed_restarted_and_paused() {
    let seed: u64 = std::env::var("TESSERA_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (rerun with TESSERA_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(BIN, dir.path(), ClusterOptions::default());
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", "lin", "--size", "16M", "--object-size", "1M"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let history = Arc::new(Mutex::new(Vec::<Event>::new()));
    let run_for = Duration::from_secs(14);
    let opts = ClientOptions { op_timeout: Duration::from_secs(8), ..Default::default() };
    let mon = cluster.mon_addr();

    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (history, mon, opts) = (history.clone(), mon.clone(), opts.clone());
            rt.spawn(async move {
                let client = Client::connect(&[mon], opts).await.unwrap();
                let vol = client.open_volume("lin").await.unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ c);
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < run_for {
                    let register = rng.gen_range(0..REGISTERS);
                    let invoked = Instant::now();
                    if rng.gen_bool(0.5) {
                        n += 1;
                        let value = (c + 1) << 40 | n;
                        let acked = vol.write(offset(register), block(value)).await.is_ok();
                        let ev = Event { register, op: Op::Write { value, acked }, invoked, completed: Instant::now() };
                        history.lock().unwrap().push(ev);
                    } else if let Ok(data) = vol.read(offset(register), 4096).await {
                        let value = value_of(&data).unwrap_or_else(|e| panic!("register {register}: {e}"));
                        history.lock().unwrap().push(Event { register, op: Op::Read { value }, invoked, completed: Instant::now() });
                    }
                }
            })
        })
        .collect();

    // Faults from the seed: every ~2.5 s one OSD is killed and restarted, or paused and resumed.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t = Instant::now();
    let mut faults = Vec::new();
    while t.elapsed() < run_for - Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2000)));
        let victim = rng.gen_range(0..3);
        if rng.gen_bool(0.7) {
            cluster.kill9(victim);
            std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
            cluster.restart(victim);
            faults.push(format!("kill -9 + restart osd{victim}"));
        } else {
            cluster.pause(victim);
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..2500)));
            cluster.resume(victim);
            faults.push(format!("SIGSTOP/SIGCONT osd{victim}"));
        }
    }
    for w in workers {
        rt.block_on(w).unwrap();
    }
    let history = history.lock().unwrap().clone();
    let acked = history.iter().filter(|e| matches!(e.op, Op::Write { acked: true, .. })).count();
    let failed = history.iter().filter(|e| matches!(e.op, Op::Write { acked: false, .. })).count();
    let reads = history.iter().filter(|e| matches!(e.op, Op::Read { .. })).count();
    eprintln!("faults: {faults:?}");
    eprintln!("history: {acked} acknowledged writes, {failed} failed writes, {reads} reads");
    assert!(acked > 100 && reads > 100, "the workload made progress through the faults");
    if let Err(errors) = check(&history) {
        panic!("history of seed {seed} is not linearizable:\n{}\n{}", errors.join("\n"), cluster.logs());
    }
}
