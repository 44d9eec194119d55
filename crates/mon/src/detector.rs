//! Sans-IO failure detector: turns OSD heartbeats and the passage of time into up/down/in/out
//! decisions. Time is a monotonic `Duration` since any fixed start, supplied by the caller.
//!
//! Rules (all thresholds in [`DetectorConfig`]):
//! - An up OSD with no heartbeat for `down_after` is marked **down**. Placement does not
//!   change: its PGs run degraded (Raft elects leaders among the live replicas).
//! - A down, in OSD is marked **out** after `out_after` of being down; then its PGs get new OSD
//!   sets. Never when that would leave fewer than `min_in_ratio` of all OSDs in (a mass
//!   failure, such as a switch dying, must not trigger a data-moving storm).
//! - A down OSD that heartbeats again is marked **up** (and **in** again if the detector had
//!   marked it out; an operator's `osd out` sticks).
//! - **Flap damping** (hysteresis): an OSD marked down `flap_threshold` or more times within
//!   `flap_window` must heartbeat without a gap for a hold time before it is marked up again;
//!   the hold starts at `flap_hold` and doubles with every further down, up to
//!   `flap_hold_max`. A flapping OSD thus settles as down instead of bumping the map epoch
//!   every few seconds.
//!
//! The detector only *decides*. The caller applies the decisions to the map (all of one tick
//! in one transaction, one epoch), then feeds the resulting records back through
//! [`Detector::sync`], which is also where transitions are observed for flap counting. A
//! decision whose transaction fails is simply made again on the next tick.
//!
//! After a mon takeover the new leader has no heartbeat history: [`Detector::sync`] gives
//! every OSD that the map shows up a fresh `down_after` grace, and restarts the out grace of
//! OSDs that are down.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::model::{OsdRecord, OutReason};

#[derive(Clone, Debug)]
pub struct DetectorConfig {
    pub down_after: Duration,
    pub out_after: Duration,
    pub flap_window: Duration,
    pub flap_threshold: usize,
    pub flap_hold: Duration,
    pub flap_hold_max: Duration,
    pub min_in_ratio: f64,
}

impl Default for DetectorConfig {
    /// OSDs heartbeat every second: down after 4 s of silence (detected within one tick, so
    /// under 5 s), out after 10 minutes down.
    fn default() -> Self {
        DetectorConfig {
            down_after: Duration::from_secs(4),
            out_after: Duration::from_secs(600),
            flap_window: Duration::from_secs(600),
            flap_threshold: 3,
            flap_hold: Duration::from_secs(10),
            flap_hold_max: Duration::from_secs(300),
            min_in_ratio: 0.5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Down,
    Up,
    /// Marked out by the detector ([`OutReason::Down`]).
    Out,
    /// Back in after an automatic out.
    In,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decision {
    pub osd: u32,
    pub change: Change,
}

#[derive(Debug)]
struct Track {
    up: bool,
    in_: bool,
    out_reason: Option<OutReason>,
    last_heartbeat: Option<Duration>,
    /// Start of the current run of heartbeats without a gap of `down_after`.
    alive_since: Option<Duration>,
    down_since: Option<Duration>,
    /// When the map showed this OSD going down, within the flap window.
    downs: VecDeque<Duration>,
}

#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    osds: BTreeMap<u32, Track>,
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Detector { cfg, osds: BTreeMap::new() }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Learns the map's current records. OSDs not seen before start with a grace period
    /// (up ones count as having just heartbeaten); OSDs no longer in the map are forgotten.
    pub fn sync(&mut self, osds: &[OsdRecord], now: Duration) {
        self.osds.retain(|id, _| osds.iter().any(|o| o.id == *id));
        for o in osds {
            match self.osds.get_mut(&o.id) {
                None => {
                    self.osds.insert(
                        o.id,
                        Track {
                            up: o.up,
                            in_: o.in_,
                            out_reason: o.out_reason,
                            last_heartbeat: o.up.then_some(now),
                            alive_since: o.up.then_some(now),
                            down_since: (!o.up).then_some(now),
                            downs: VecDeque::new(),
                        },
                    );
                }
                Some(t) => {
                    if t.up && !o.up {
                        t.downs.push_back(now);
                        t.down_since = Some(now);
                    } else if !t.up && o.up {
                        t.down_since = None;
                    }
                    t.up = o.up;
                    t.in_ = o.in_;
                    t.out_reason = o.out_reason;
                }
            }
        }
    }

    /// Records a heartbeat; returns false for an OSD the detector does not know (not in the
    /// map it was last synced with).
    pub fn heartbeat(&mut self, osd: u32, now: Duration) -> bool {
        let down_after = self.cfg.down_after;
        let Some(t) = self.osds.get_mut(&osd) else { return false };
        let gap = t.last_heartbeat.is_none_or(|last| now.saturating_sub(last) >= down_after);
        if gap {
            t.alive_since = Some(now);
        }
        t.last_heartbeat = Some(t.last_heartbeat.map_or(now, |last| last.max(now)));
        true
    }

    /// How long an OSD with `downs` recent downs must heartbeat steadily before it is up again.
    pub fn hold_for(&self, downs: usize) -> Duration {
        if downs < self.cfg.flap_threshold {
            return Duration::ZERO;
        }
        let doublings = (downs - self.cfg.flap_threshold).min(30) as u32;
        self.cfg.flap_hold.saturating_mul(1 << doublings).min(self.cfg.flap_hold_max)
    }

    /// Decisions due at `now`, sorted by OSD id. Idempotent until the map changes.
    pub fn tick(&mut self, now: Duration) -> Vec<Decision> {
        let cfg = self.cfg.clone();
        let mut out = Vec::new();
        let mut out_candidates: Vec<(Duration, u32)> = Vec::new();
        for t in self.osds.values_mut() {
            while t.downs.front().is_some_and(|d| now.saturating_sub(*d) > cfg.flap_window) {
                t.downs.pop_front();
            }
        }
        for (&id, t) in &self.osds {
            let alive = t.last_heartbeat.is_some_and(|last| now.saturating_sub(last) < cfg.down_after);
            if t.up && !alive {
                out.push(Decision { osd: id, change: Change::Down });
            } else if !t.up && alive {
                let steady = now.saturating_sub(t.alive_since.unwrap_or(now));
                if steady >= self.hold_for(t.downs.len()) {
                    out.push(Decision { osd: id, change: Change::Up });
                    if !t.in_ && t.out_reason == Some(OutReason::Down) {
                        out.push(Decision { osd: id, change: Change::In });
                    }
                }
            } else if !t.up && t.in_ {
                if let Some(since) = t.down_since {
                    if now.saturating_sub(since) >= cfg.out_after {
                        out_candidates.push((since, id));
                    }
                }
            } else if t.up && !t.in_ && t.out_reason == Some(OutReason::Down) {
                out.push(Decision { osd: id, change: Change::In });
            }
        }
        if !out_candidates.is_empty() {
            let total = self.osds.len();
            let min_in = (cfg.min_in_ratio * total as f64).ceil() as usize;
            let mut in_count = self.osds.values().filter(|t| t.in_).count();
            out_candidates.sort();
            for (_, id) in out_candidates {
                if in_count <= min_in {
                    tracing::warn!(osd = id, in_count, min_in, "not marking OSD out: too few OSDs would remain in (min_in_ratio)");
                    break;
                }
                in_count -= 1;
                out.push(Decision { osd: id, change: Change::Out });
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u32, up: bool, in_: bool, out_reason: Option<OutReason>) -> OsdRecord {
        OsdRecord {
            id,
            uuid: format!("u{id}"),
            addr: "127.0.0.1:1".into(),
            host: format!("h{id}"),
            rack: None,
            device: "d".into(),
            capacity_bytes: 1,
            weight: 1.0,
            up,
            in_,
            out_reason,
            since_ms: 0,
        }
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig { out_after: s(60.0), ..DetectorConfig::default() }
    }

    /// Applies decisions the way the service does and syncs the detector with the result.
    fn apply(d: &mut Detector, map: &mut [OsdRecord], decisions: &[Decision], now: Duration) {
        for dec in decisions {
            let o = map.iter_mut().find(|o| o.id == dec.osd).unwrap();
            match dec.change {
                Change::Down => o.up = false,
                Change::Up => o.up = true,
                Change::Out => {
                    o.in_ = false;
                    o.out_reason = Some(OutReason::Down)
                }
                Change::In => {
                    o.in_ = true;
                    o.out_reason = None
                }
            }
        }
        d.sync(map, now);
    }

    fn dec(osd: u32, change: Change) -> Decision {
        Decision { osd, change }
    }

    #[test]
    fn silent_osd_goes_down_after_grace_then_out_then_back_in() {
        let mut d = Detector::new(cfg());
        let mut map = vec![rec(0, true, true, None), rec(1, true, true, None), rec(2, true, true, None)];
        d.sync(&map, s(0.0));
        for t in 1..=3 {
            for id in 0..3 {
                d.heartbeat(id, s(t as f64));
            }
        }
        // OSD 2 falls silent after t=3.
        let mut t = 3.0;
        while t < 6.9 {
            d.heartbeat(0, s(t));
            d.heartbeat(1, s(t));
            assert_eq!(d.tick(s(t)), vec![], "too early at {t}");
            t += 0.25;
        }
        d.heartbeat(0, s(7.0));
        d.heartbeat(1, s(7.0));
        let ds = d.tick(s(7.0));
        assert_eq!(ds, vec![dec(2, Change::Down)]);
        apply(&mut d, &mut map, &ds, s(7.0));
        assert_eq!(d.tick(s(7.1)), vec![]);
        // Out after out_after of being down.
        for i in 0..200 {
            let now = s(7.0 + i as f64 * 0.3);
            d.heartbeat(0, now);
            d.heartbeat(1, now);
            if now < s(67.0) {
                assert_eq!(d.tick(now), vec![], "at {now:?}");
            }
        }
        let ds = d.tick(s(67.0));
        assert_eq!(ds, vec![dec(2, Change::Out)]);
        apply(&mut d, &mut map, &ds, s(67.0));
        // It comes back: up and in again (the detector put it out, so it takes it back).
        d.heartbeat(2, s(70.0));
        let ds = d.tick(s(70.0));
        assert_eq!(ds, vec![dec(2, Change::Up), dec(2, Change::In)]);
        apply(&mut d, &mut map, &ds, s(70.0));
        assert!(map[2].up && map[2].in_);
    }

    #[test]
    fn admin_out_sticks_when_osd_returns() {
        let mut d = Detector::new(cfg());
        let mut map = vec![rec(0, false, false, Some(OutReason::Admin))];
        d.sync(&map, s(0.0));
        d.heartbeat(0, s(1.0));
        let ds = d.tick(s(1.0));
        assert_eq!(ds, vec![dec(0, Change::Up)]);
        apply(&mut d, &mut map, &ds, s(1.0));
        assert_eq!(d.tick(s(2.0)), vec![]);
    }

    #[test]
    fn flapping_osd_is_held_down_longer_each_time() {
        let c = cfg();
        let mut d = Detector::new(c.clone());
        let mut map = vec![rec(0, true, true, None), rec(1, true, true, None)];
        d.sync(&map, s(0.0));
        let mut now = 0.0;
        let mut ups = Vec::new();
        // OSD 0 heartbeats for 2 s, then is silent for 5 s, repeatedly. Count how long each
        // return takes to be marked up.
        for _cycle in 0..6 {
            let back_at = now;
            let mut marked_up_at = None;
            // Heartbeat until marked up (or 120 s).
            while now < back_at + 120.0 {
                d.heartbeat(0, s(now));
                d.heartbeat(1, s(now));
                let ds = d.tick(s(now));
                if ds.contains(&dec(0, Change::Up)) {
                    marked_up_at = Some(now);
                }
                apply(&mut d, &mut map, &ds, s(now));
                if map[0].up && now >= back_at + 2.0 {
                    break;
                }
                now += 0.25;
            }
            if let Some(t) = marked_up_at {
                ups.push(t - back_at);
            }
            // Silent until marked down.
            loop {
                now += 0.25;
                d.heartbeat(1, s(now));
                let ds = d.tick(s(now));
                apply(&mut d, &mut map, &ds, s(now));
                if !map[0].up {
                    break;
                }
            }
            now += 1.0;
        }
        // First returns are immediate; from the third down on, the hold grows: 10 s, 20 s, 40 s.
        assert_eq!(ups.len(), 5, "{ups:?}");
        assert!(ups[0] < 0.5 && ups[1] < 0.5, "{ups:?}");
        assert!((ups[2] - 10.0).abs() < 0.5, "{ups:?}");
        assert!((ups[3] - 20.0).abs() < 0.5, "{ups:?}");
        assert!((ups[4] - 40.0).abs() < 0.5, "{ups:?}");
        assert_eq!(d.hold_for(100), c.flap_hold_max);
    }

    #[test]
    fn mass_failure_does_not_mark_more_than_min_in_ratio_out() {
        let mut d = Detector::new(cfg());
        let mut map: Vec<_> = (0..10).map(|i| rec(i, true, true, None)).collect();
        d.sync(&map, s(0.0));
        // Six of ten die at once.
        for t in 0..100 {
            let now = s(t as f64);
            for id in 6..10 {
                d.heartbeat(id, now);
            }
            let ds = d.tick(now);
            apply(&mut d, &mut map, &ds, now);
        }
        assert_eq!(map.iter().filter(|o| !o.up).count(), 6);
        assert_eq!(map.iter().filter(|o| o.in_).count(), 5, "only down to min_in_ratio = 0.5");
    }

    #[test]
    fn new_leader_gives_up_osds_a_grace_and_keeps_down_ones_down() {
        let mut d = Detector::new(cfg());
        let map = vec![rec(0, true, true, None), rec(1, false, true, None)];
        d.sync(&map, s(100.0));
        assert_eq!(d.tick(s(103.9)), vec![]);
        assert_eq!(d.tick(s(104.0)), vec![dec(0, Change::Down)]);
        assert!(!d.heartbeat(9, s(104.0)), "unknown OSD");
    }
}
