//! OSD fullness as OSDs report it in their heartbeats (sans-IO). Soft state of the active
//! mon, like PG reports: after a failover it comes back with the next heartbeats.
//!
//! An OSD's state is the worse of two: its live data against the map's
//! [`SpaceRatios`](crate::model::SpaceRatios), and `full` whenever the OSD says it refuses
//! new data (it also counts free engine segments, which the ratio does not see).

use serde::{Deserialize, Serialize};

use crate::model::{SpaceRatios, SpaceState};

/// What an OSD reports about its device in each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceReport {
    /// Bytes held by live blocks (data, snapshots, retained log entries).
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    /// The OSD refuses new data (at the full ratio, or out of free segments).
    #[serde(default)]
    pub refusing: bool,
    /// PGs (`pool.index` in hex) whose copy onto this OSD waits for room.
    #[serde(default)]
    pub backfill_waiting: Vec<String>,
}

/// Most PGs named in one report's `backfill_waiting` (the rest are left out).
pub const MAX_WAITING: usize = 256;

impl SpaceReport {
    /// Fraction of the capacity in use (1 when the capacity is unknown).
    pub fn used_fraction(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 1.0;
        }
        self.used_bytes as f64 / self.capacity_bytes as f64
    }

    pub fn state(&self, ratios: &SpaceRatios) -> SpaceState {
        let by_ratio = ratios.classify(self.used_fraction());
        if self.refusing {
            SpaceState::Full
        } else {
            by_ratio
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_ratios_and_a_refusing_osd_is_full() {
        let r = SpaceRatios::default();
        let rep = |used: u64, refusing| SpaceReport { used_bytes: used, capacity_bytes: 100, refusing, backfill_waiting: vec![] };
        assert_eq!(rep(10, false).state(&r), SpaceState::Ok);
        assert_eq!(rep(80, false).state(&r), SpaceState::Nearfull);
        assert_eq!(rep(85, false).state(&r), SpaceState::Backfillfull);
        assert_eq!(rep(90, false).state(&r), SpaceState::Full);
        assert_eq!(rep(10, true).state(&r), SpaceState::Full, "out of segments");
        assert_eq!(SpaceReport::default().used_fraction(), 1.0);
        assert!(SpaceRatios { nearfull: 0.9, backfillfull: 0.8, full: 0.95 }.check().is_err());
        assert!(SpaceRatios { nearfull: 0.5, backfillfull: 0.6, full: 0.99 }.check().is_err());
        assert!(SpaceRatios { nearfull: f64::NAN, backfillfull: 0.6, full: 0.9 }.check().is_err());
        assert!(SpaceRatios::default().check().is_ok());
    }
}
