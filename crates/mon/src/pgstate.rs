//! PG states from what PG leaders report in their OSD's heartbeats (sans-IO).
//!
//! Only a PG's Raft leader reports it: term, members, commit and last index, and how far
//! each other member's log matches. The active mon keeps the latest report per PG in memory
//! (reports are soft state: after a mon failover they come back with the next heartbeats).
//!
//! | state                       | meaning                                                         |
//! |-----------------------------|-----------------------------------------------------------------|
//! | `inactive`                  | no fresh report from an up leader: IO to the PG cannot complete |
//! | `active+clean`              | members == the map's replicas, all up, all logs caught up       |
//! | `active+recovering`         | a member (or a joining learner) is behind; `progress` in 0..=1   |
//! | `active+degraded`           | fewer up, in-sync voters than the pool's replica count          |
//! | `+remapped`                 | the voters are not (yet) the map's replicas, or a joint change is being left |
//!
//! Flags combine in the order `active+degraded+recovering+remapped`.

use serde::{Deserialize, Serialize};

use crate::model::{ClusterMap, PgEntry, PoolRecord};

/// A member whose log is within this many entries of the commit index counts as caught up
/// (under steady writes a healthy follower is always a few entries behind).
pub const CLEAN_SLACK: u64 = 64;

/// What a PG leader reports about its group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgReport {
    pub pool: u32,
    pub index: u32,
    pub term: u64,
    pub voters: Vec<u32>,
    #[serde(default)]
    pub learners: Vec<u32>,
    /// The old voters while a joint-consensus change is in progress.
    #[serde(default)]
    pub outgoing: Vec<u32>,
    pub commit: u64,
    pub last_index: u64,
    /// `(osd, matched index)` of every other member.
    #[serde(default)]
    pub matched: Vec<(u32, u64)>,
}

/// One PG's state as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PgStateView {
    /// `pool.index` with the index in hex (as OSD logs print it).
    pub pg: String,
    pub pool: u32,
    pub index: u32,
    pub state: String,
    /// The map's replicas for this PG.
    pub target: Vec<u32>,
    pub leader: Option<u32>,
    pub voters: Vec<u32>,
    pub learners: Vec<u32>,
    /// The old voters while a joint-consensus change is being left (usually empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing: Vec<u32>,
    /// Fraction of the log the slowest member has (1.0 when nothing is recovering).
    pub progress: f64,
    /// OSDs whose replica of this PG is marked damaged (state `+damaged`; usually empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<u32>,
}

/// Classifies one PG. `report`: the latest fresh report and the OSD that sent it.
pub fn classify(pool: &PoolRecord, index: u32, entry: &PgEntry, map: &ClusterMap, report: Option<(&PgReport, u32)>) -> PgStateView {
    let mut view = PgStateView {
        pg: format!("{}.{:x}", pool.id, index),
        pool: pool.id,
        index,
        state: "inactive".into(),
        target: entry.osds().to_vec(),
        leader: None,
        voters: Vec::new(),
        learners: Vec::new(),
        outgoing: Vec::new(),
        progress: 0.0,
        damaged: Vec::new(),
    };
    let up = |osd: u32| map.osd(osd).is_some_and(|o| o.up);
    let Some((r, leader)) = report.filter(|(_, l)| up(*l)) else { return view };
    view.leader = Some(leader);
    view.voters = r.voters.clone();
    view.learners = r.learners.clone();
    view.outgoing = r.outgoing.clone();
    let matched = |osd: u32| if osd == leader { r.last_index } else { r.matched.iter().find(|(o, _)| *o == osd).map_or(0, |(_, m)| *m) };
    let in_sync = |osd: u32| up(osd) && matched(osd) + CLEAN_SLACK >= r.commit;
    let members: Vec<u32> = r.voters.iter().chain(&r.learners).copied().collect();
    let lagging: Vec<u32> = members.iter().copied().filter(|o| up(*o) && !in_sync(*o)).collect();
    let recovering = !r.learners.is_empty() || !lagging.is_empty();
    let healthy_voters = r.voters.iter().filter(|o| in_sync(**o)).count();
    let mut same = r.voters.clone();
    same.sort_unstable();
    let mut target = entry.osds().to_vec();
    target.sort_unstable();
    let degraded = healthy_voters < pool.replicas as usize;
    let remapped = same != target || !r.outgoing.is_empty();
    view.progress = if recovering && r.last_index > 0 {
        let slowest = members.iter().filter(|o| up(**o)).map(|o| matched(*o)).min().unwrap_or(0);
        (slowest as f64 / r.last_index as f64).clamp(0.0, 1.0)
    } else {
        1.0
    };
    view.state = if !degraded && !recovering && !remapped {
        "active+clean".into()
    } else {
        let mut s = String::from("active");
        for (on, flag) in [(degraded, "+degraded"), (recovering, "+recovering"), (remapped, "+remapped")] {
            if on {
                s.push_str(flag);
            }
        }
        s
    };
    view
}

/// The PGs (by name) that may still need OSD `osd`: their group counts it as a member
/// (voter, learner or outgoing voter), the map still places them on it, or their state is
/// unknown (`inactive`: no fresh report from an up leader). `tessera osd rm` is refused
/// while there is any, since the OSD may hold the only up-to-date copy of them.
pub fn still_needing(states: &[PgStateView], osd: u32) -> Vec<String> {
    states
        .iter()
        .filter(|v| {
            v.state == "inactive"
                || v.voters.contains(&osd)
                || v.learners.contains(&osd)
                || v.outgoing.contains(&osd)
                || v.target.contains(&osd)
        })
        .map(|v| v.pg.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DomainLevel, OsdRecord};

    fn map(up: &[bool]) -> ClusterMap {
        let osds = up
            .iter()
            .enumerate()
            .map(|(i, u)| OsdRecord {
                id: i as u32,
                uuid: String::new(),
                addr: String::new(),
                host: String::new(),
                rack: None,
                device: String::new(),
                capacity_bytes: 0,
                weight: 1.0,
                up: *u,
                in_: true,
                out_reason: None,
                since_ms: 0,
            })
            .collect();
        ClusterMap { epoch: 1, osds, ..Default::default() }
    }

    fn pool() -> PoolRecord {
        PoolRecord { id: 1, name: "p".into(), replicas: 3, pg_count: 1, failure_domain: DomainLevel::Osd, created_ms: 0, created_epoch: 1 }
    }

    fn report(voters: &[u32], learners: &[u32], matched: &[(u32, u64)]) -> PgReport {
        PgReport {
            pool: 1,
            index: 0,
            term: 2,
            voters: voters.into(),
            learners: learners.into(),
            outgoing: vec![],
            commit: 1000,
            last_index: 1000,
            matched: matched.into(),
        }
    }

    #[test]
    fn states() {
        let entry = PgEntry(1, vec![0, 1, 2]);
        let m = map(&[true, true, true, true]);
        let st = |r: Option<(&PgReport, u32)>, m: &ClusterMap| classify(&pool(), 0, &entry, m, r).state;
        assert_eq!(st(None, &m), "inactive");
        let clean = report(&[0, 1, 2], &[], &[(1, 1000), (2, 990)]);
        assert_eq!(st(Some((&clean, 0)), &m), "active+clean");
        assert_eq!(st(Some((&clean, 0)), &map(&[false, true, true])), "inactive", "leader down");
        assert_eq!(st(Some((&clean, 0)), &map(&[true, true, false])), "active+degraded", "a voter down");
        let behind = report(&[0, 1, 2], &[], &[(1, 1000), (2, 500)]);
        let v = classify(&pool(), 0, &entry, &m, Some((&behind, 0)));
        assert_eq!(v.state, "active+degraded+recovering");
        assert!((v.progress - 0.5).abs() < 1e-9);
        let moving = PgEntry(2, vec![0, 1, 3]);
        let joining = report(&[0, 1, 2], &[3], &[(1, 1000), (2, 1000), (3, 0)]);
        let v = classify(&pool(), 0, &moving, &m, Some((&joining, 0)));
        assert_eq!(v.state, "active+recovering+remapped", "voters differ from the map and a learner is copying");
        let mut joint = clean.clone();
        joint.outgoing = vec![0, 1, 3];
        assert_eq!(st(Some((&joint, 0)), &m), "active+remapped", "a joint configuration is still moving");
        let two = report(&[0, 1], &[], &[(1, 1000)]);
        assert_eq!(st(Some((&two, 0)), &m), "active+degraded+remapped", "only two voters");
        assert_eq!(v.progress, 0.0);
        assert_eq!(v.pg, "1.0");
    }

    #[test]
    fn an_osd_is_still_needed_while_any_pg_counts_it_as_a_member_or_is_unknown() {
        let m = map(&[true, true, true, true]);
        let view = |entry: &[u32], r: Option<&PgReport>| classify(&pool(), 0, &PgEntry(2, entry.to_vec()), &m, r.map(|r| (r, 0)));
        let moved = view(&[0, 1, 2], Some(&report(&[0, 1, 2], &[], &[(1, 1000), (2, 1000)])));
        assert!(still_needing(std::slice::from_ref(&moved), 3).is_empty(), "3 holds nothing of it");
        assert_eq!(still_needing(std::slice::from_ref(&moved), 2), ["1.0"], "a voter");
        let copying = view(&[0, 1, 2], Some(&report(&[0, 1], &[2], &[(1, 1000), (2, 10)])));
        assert_eq!(still_needing(&[copying], 2), ["1.0"], "a learner");
        let mut joint = report(&[0, 1, 2], &[], &[(1, 1000), (2, 1000)]);
        joint.outgoing = vec![0, 1, 3];
        assert_eq!(still_needing(&[view(&[0, 1, 2], Some(&joint))], 3), ["1.0"], "an outgoing voter");
        assert_eq!(still_needing(&[view(&[0, 1, 2], None)], 3), ["1.0"], "nobody can tell");
        assert_eq!(still_needing(&[view(&[0, 1, 3], Some(&report(&[0, 1, 2], &[], &[])))], 3), ["1.0"], "the map places it there");
    }
}
