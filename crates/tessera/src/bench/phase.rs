//! One timed phase of a closed-loop benchmark: `qd` threads each run blocking operations back
//! to back, so exactly `qd` operations are in flight; the first `ramp` is discarded, then the
//! `duration` window is measured.
//!
//! Contract: an operation counts (in the op count and the latency histogram) iff it
//! *completed* inside the window; `before`/`after` snapshots are taken at the window's edges.
//! The first failing operation stops every thread and is returned as the phase's error.

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Highest latency the histograms track (larger values are clamped): 60 s in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one phase measured, with the caller's snapshots from the start and end of the window.
pub struct Measured<S> {
    pub ops: u64,
    pub window: Duration,
    /// Per-operation latency in microseconds.
    pub latency_us: Histogram<u64>,
    pub before: S,
    pub after: S,
}

/// An empty latency histogram (microseconds, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Runs `qd` workers made by `make_worker(thread_index)`; each call of a worker performs one
/// blocking operation.
pub fn run<S, W, M>(qd: usize, ramp: Duration, duration: Duration, snapshot: impl Fn() -> S, make_worker: M) -> Result<Measured<S>>
where
    W: FnMut() -> Result<()> + Send,
    M: Fn(usize) -> W,
{
    let epoch = Instant::now();
    let stop = AtomicBool::new(false);
    let win_start = AtomicU64::new(u64::MAX);
    let win_end = AtomicU64::new(u64::MAX);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let since_epoch = |t: Instant| t.duration_since(epoch).as_nanos() as u64;

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..qd)
            .map(|i| {
                let mut op = make_worker(i);
                let (stop, win_start, win_end, first_error) = (&stop, &win_start, &win_end, &first_error);
                s.spawn(move || {
                    let mut hist = latency_histogram();
                    let mut ops = 0u64;
                    while !stop.load(Relaxed) {
                        let t0 = Instant::now();
                        if let Err(e) = op() {
                            stop.store(true, Relaxed);
                            first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            break;
                        }
                        let t1 = Instant::now();
                        let end = since_epoch(t1);
                        if end >= win_start.load(Relaxed) && end < win_end.load(Relaxed) {
                            hist.saturating_record((t1 - t0).as_micros() as u64);
                            ops += 1;
                        }
                    }
                    (ops, hist)
                })
            })
            .collect();

        sleep_unless_stopped(&stop, ramp);
        let start = Instant::now();
        let before = snapshot();
        win_start.store(since_epoch(start), Relaxed);
        sleep_unless_stopped(&stop, duration);
        let end = Instant::now();
        win_end.store(since_epoch(end), Relaxed);
        let after = snapshot();
        stop.store(true, Relaxed);

        let mut total = 0;
        let mut latency_us = latency_histogram();
        for h in handles {
            let (ops, hist) = h.join().map_err(|_| anyhow!("a benchmark thread panicked"))?;
            total += ops;
            latency_us.add(&hist).map_err(|e| anyhow!("merging latency histograms: {e}"))?;
        }
        if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        Ok(Measured { ops: total, window: end - start, latency_us, before, after })
    })
}

/// Sleeps for `d`, returning early once `stop` is set (a worker failed).
fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_operations_in_the_window_and_reports_the_first_error() {
        let m = run(
            2,
            Duration::from_millis(20),
            Duration::from_millis(50),
            || 0u8,
            |_| {
                || {
                    std::thread::sleep(Duration::from_millis(1));
                    Ok(())
                }
            },
        )
        .unwrap();
        assert!(m.ops > 0);
        assert_eq!(m.ops, m.latency_us.len());
        assert!(m.window >= Duration::from_millis(50));

        let err = run(3, Duration::ZERO, Duration::from_secs(30), || (), |i| move || if i == 1 { Err(anyhow!("boom")) } else { Ok(()) })
            .err()
            .expect("the failing worker's error");
        assert_eq!(err.to_string(), "boom");
    }
}
