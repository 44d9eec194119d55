//! Space policy, sans-IO: how much Raft log an OSD keeps, whether it admits new data, and
//! whether a PG copy fits, from the fraction of its device that live blocks occupy and the
//! cluster's space ratios (`tessera cluster config`, [`tessera_mon::model::SpaceRatios`]).
//!
//! Retained log entries pin their data blocks (an overwritten block stays live while a log
//! entry still points at it), so a log kept by entry count alone can fill a device: 64 PGs
//! × 10,000 entries × 128 KiB is 80 GiB. As the device fills, logs are kept shorter (a
//! follower further behind then gets a snapshot instead of log entries). At the full ratio
//! (or near the free-segment floor) the OSD takes no new data, before it enters any log:
//! client writes to PGs it leads are refused with `NoSpace` (or leadership goes to a
//! replica with room), and as a follower it takes no log entries that carry data. Trims and
//! deletes, which free space, are still taken. A PG copy onto the OSD starts only if it
//! leaves the device under the backfillfull ratio.

/// Fewest applied entries kept per PG, however full the device.
pub const MIN_KEEP: u64 = 16;
/// Above this fraction used, logs are kept to a tenth of the configured length.
pub const SHORTEN_AT: f64 = 0.5;
/// Above this fraction used, logs are kept to [`MIN_KEEP`] entries.
pub const MINIMAL_AT: f64 = 0.75;

/// How short of space the device is: from the live fraction and the free segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    None,
    /// Live data at [`SHORTEN_AT`], or free segments at the cleaner's low water (an eighth).
    Some,
    /// Live data at [`MINIMAL_AT`], or free segments within two (or half-way to the
    /// cleaner's low water) of [`min_free_segments`].
    High,
}

pub fn pressure(used: f64, free_segments: u64, total_segments: u64) -> Pressure {
    let min_free = min_free_segments(total_segments);
    let high_below = (min_free + 2).max((min_free + total_segments / 8) / 2);
    if used >= MINIMAL_AT || free_segments < high_below {
        Pressure::High
    } else if used >= SHORTEN_AT || free_segments < total_segments / 8 {
        Pressure::Some
    } else {
        Pressure::None
    }
}

/// Applied entries to keep per PG, given the configured count and the pressure.
pub fn keep_entries(configured: u64, p: Pressure) -> u64 {
    match p {
        Pressure::High => MIN_KEEP.min(configured),
        Pressure::Some => (configured / 10).max(MIN_KEEP).min(configured),
        Pressure::None => configured,
    }
}

/// Whether compaction should run every tick rather than every few ticks.
pub fn compact_eagerly(p: Pressure) -> bool {
    p != Pressure::None
}

/// Free segments below which writes are refused, of `total`: the engine's cleaner starts at
/// an eighth free (at least 4) and keeps pace with writes while there is garbage to
/// reclaim, so falling to a thirty-second (at least 3: the engine's own reserve of 2 plus
/// one for the batch being written) means it cannot.
pub fn min_free_segments(total: u64) -> u64 {
    (total / 32).max(3)
}

/// Whether new data may be written: live data under the `full` ratio of the capacity and
/// free segments at or above [`min_free_segments`].
pub fn admits_writes(used: f64, free_segments: u64, total_segments: u64, full: f64) -> bool {
    used < full && free_segments >= min_free_segments(total_segments)
}

/// Whether a copy of a PG of `incoming` bytes, replacing the `current` bytes this OSD holds
/// of it (an install drops the old replica first), leaves a device of `capacity` bytes with
/// `live` bytes in use under the `backfillfull` ratio. A copy that shrinks the PG always fits.
pub fn backfill_fits(live: u64, current: u64, incoming: u64, capacity: u64, backfillfull: f64) -> bool {
    if incoming <= current {
        return true;
    }
    let after = live.saturating_sub(current).saturating_add(incoming);
    capacity > 0 && (after as f64) < backfillfull * capacity as f64
}

/// Fraction of `capacity` bytes that `live_blocks` 4 KiB blocks occupy (1.0 when the
/// capacity is unknown or zero, so nothing is admitted on a device that cannot hold data).
pub fn used_fraction(live_blocks: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        return 1.0;
    }
    (live_blocks.saturating_mul(4096)) as f64 / capacity as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_get_shorter_as_the_device_fills_and_writes_stop_near_full() {
        let p = |used| pressure(used, 128, 128);
        assert_eq!(keep_entries(10_000, p(0.1)), 10_000);
        assert_eq!(keep_entries(10_000, p(0.5)), 1_000);
        assert_eq!(keep_entries(10_000, p(0.8)), MIN_KEEP);
        assert_eq!(keep_entries(100, p(0.6)), MIN_KEEP, "never below the minimum");
        assert_eq!(keep_entries(10, p(0.99)), 10, "never above the configuration");
        // Few free segments count as pressure whatever the live fraction.
        assert_eq!(pressure(0.1, 15, 128), Pressure::Some);
        assert_eq!(pressure(0.1, 9, 128), Pressure::High);
        assert_eq!(pressure(0.1, 10, 128), Pressure::Some);
        assert!(admits_writes(0.89, 100, 128, 0.9) && !admits_writes(0.9, 100, 128, 0.9));
        assert!(!admits_writes(0.7, 100, 128, 0.7), "the configured ratio");
        assert!(admits_writes(0.1, 4, 128, 0.9) && !admits_writes(0.1, 3, 128, 0.9), "free segments run out");
        assert!(backfill_fits(50, 0, 30, 100, 0.85) && !backfill_fits(50, 0, 40, 100, 0.85));
        assert!(backfill_fits(70, 20, 30, 100, 0.85), "the old copy is dropped first: 70 - 20 + 30 = 80");
        assert!(!backfill_fits(90, 20, 25, 100, 0.85), "90 - 20 + 25 = 95");
        assert!(backfill_fits(95, 20, 15, 100, 0.85), "a copy that shrinks the PG always fits");
        assert!(!backfill_fits(0, 0, 1, 0, 0.85), "unknown capacity");
        assert!(!compact_eagerly(p(0.49)) && compact_eagerly(p(0.5)));
        assert_eq!(used_fraction(256, 1 << 20), 1.0);
        assert_eq!(used_fraction(1, 0), 1.0);
    }
}
