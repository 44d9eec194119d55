//! The two clocks the data path reads directly (everything else uses `std::time::Instant`).

use std::time::Duration;

fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `CLOCK_MONOTONIC`: shared by every process of one machine (the latency trace subtracts
/// stages of different processes).
pub fn monotonic() -> Duration {
    read(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_BOOTTIME`: like `CLOCK_MONOTONIC` but it also counts time the machine spent
/// suspended, so a leader lease measured with it runs out across a suspend (a leader whose
/// host slept must not wake up believing its lease still holds).
pub fn boottime() -> Duration {
    read(libc::CLOCK_BOOTTIME)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_clocks_move_forward() {
        let (a, b) = (super::monotonic(), super::boottime());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(super::monotonic() > a && super::boottime() > b);
        assert!(super::boottime() >= super::monotonic() - std::time::Duration::from_secs(1));
    }
}
