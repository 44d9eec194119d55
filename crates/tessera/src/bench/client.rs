//! `tessera bench client`: 4 KiB random writes and reads through the client library against
//! a running cluster (every write acknowledged only once durable on a majority of its PG's
//! replicas), at several queue depths. `scripts/bench-cluster.sh` starts a local cluster,
//! runs this and fio on a raw file (the peer) in one go.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_client::{Client, ClientOptions};

pub const LONG_ABOUT: &str = "4 KiB random writes, then random reads, through the tessera client library against a running \
cluster, at each queue depth: QD workers each keep one request in flight. Writes are acknowledged only once durable \
(fsynced) on a majority of the PG's replicas. The volume is filled first (one 1 MiB write per MiB of the region) so reads \
hit data. Prints one markdown table row per (workload, queue depth): IOPS, mean, p50, p99 and p99.9 latency.";

pub const EXAMPLES: &str = "Examples:
  tessera bench client --mon 127.0.0.1:7480 --volume bench --region 256M --qd 1,32 --duration 10s
  scripts/bench-cluster.sh    # starts mon + 3 OSDs on files, runs this and fio on a raw file";

#[derive(Args, Debug)]
pub struct ClientBenchArgs {
    /// Mon address(es).
    #[arg(long, env = "TESSERA_MON", default_value = "127.0.0.1:7480")]
    pub mon: String,
    /// The volume to write (its data is overwritten).
    #[arg(long)]
    pub volume: String,
    /// Bytes from the start of the volume that offsets are drawn from.
    #[arg(long, default_value = "256M", value_parser = crate::size::parse_size)]
    pub region: u64,
    /// Queue depths, comma-separated.
    #[arg(long, default_value = "1,32", value_delimiter = ',')]
    pub qd: Vec<usize>,
    /// Measured time per (workload, queue depth), after the ramp.
    #[arg(long, default_value = "10s", value_parser = crate::size::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up per (workload, queue depth).
    #[arg(long, default_value = "2s", value_parser = crate::size::parse_duration)]
    pub ramp: Duration,
    /// Skip filling the region first.
    #[arg(long)]
    pub no_fill: bool,
}

pub fn run(a: &ClientBenchArgs) -> Result<()> {
    if a.region < 4096 || a.qd.iter().any(|q| *q == 0 || *q > 1024) {
        bail!("--region must be at least 4K and every --qd in 1..=1024");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let client = Client::connect(std::slice::from_ref(&a.mon), ClientOptions::default()).await.context("connecting to the mon")?;
        let vol = client.open_volume(&a.volume).await.with_context(|| format!("opening volume {}", a.volume))?;
        let region = a.region.min(vol.size()) / 4096 * 4096;
        if !a.no_fill {
            let t = Instant::now();
            let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
            let mut off = 0;
            while off < region {
                let n = (region - off).min(1 << 20);
                vol.write(off, chunk.slice(..n as usize)).await?;
                off += n;
            }
            eprintln!("filled {} MiB in {:.1} s", region >> 20, t.elapsed().as_secs_f64());
        }
        println!("| workload | QD | IOPS | mean µs | p50 µs | p99 µs | p99.9 µs |");
        println!("|---|---|---|---|---|---|---|");
        for write in [true, false] {
            for &qd in &a.qd {
                eprintln!("{} QD{qd}: {:?} ramp + {:?}", if write { "randwrite" } else { "randread" }, a.ramp, a.duration);
                let (ios, secs, h) = phase(&vol, write, qd, region, a.ramp, a.duration).await?;
                let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                println!(
                    "| {} 4K | {qd} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    if write { "randwrite" } else { "randread" },
                    ios as f64 / secs,
                    h.mean() / 1000.0,
                    us(0.5),
                    us(0.99),
                    us(0.999)
                );
            }
        }
        Ok(())
    })
}

/// `qd` workers for `ramp + duration`; returns IOs, seconds and latency (ns) of the measured
/// part.
async fn phase(
    vol: &tessera_client::Volume,
    write: bool,
    qd: usize,
    region: u64,
    ramp: Duration,
    duration: Duration,
) -> Result<(u64, f64, Histogram<u64>)> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?));
    let blocks = region / 4096;
    let mut tasks = Vec::new();
    for w in 0..qd {
        let (vol, measuring, stop, hist) = (vol.clone(), measuring.clone(), stop.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            let data = Bytes::from(vec![w as u8; 4096]);
            let mut local = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds");
            while !stop.load(Ordering::Relaxed) {
                let off = rng.gen_range(0..blocks) * 4096;
                let t = Instant::now();
                if write {
                    vol.write(off, data.clone()).await?;
                } else {
                    vol.read(off, 4096).await?;
                }
                if measuring.load(Ordering::Relaxed) {
                    local.record(t.elapsed().as_nanos().max(1_000) as u64).ok();
                }
            }
            hist.lock().expect("histogram").add(&local).ok();
            Ok::<_, tessera_client::ClientError>(())
        }));
    }
    tokio::time::sleep(ramp).await;
    measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let h = Arc::try_unwrap(hist).map_err(|_| anyhow::anyhow!("histogram still shared"))?.into_inner().expect("histogram");
    Ok((h.len(), secs, h))
}
