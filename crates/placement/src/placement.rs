//! PG → ordered OSD set.
//!
//! For one PG every eligible OSD draws (see [`crate::straw`]); each failure domain is
//! represented by its best-drawing OSD and ranked by that draw; the PG's replicas are the
//! representatives of the `replicas` best domains, best first. Equivalently: sort all OSDs by
//! draw and take them greedily, skipping OSDs whose domain is already used.
//!
//! Because an OSD's draw depends only on (pool, PG, OSD id, weight), a change to one OSD
//! changes only that OSD's draw, so a PG's set changes by at most one member, and only to or
//! from that OSD. This is what makes movement minimal (see the crate docs).

use std::collections::BTreeMap;

use crate::error::PlacementError;
use crate::hash::{PairHasher, DRAW_SEED};
use crate::straw::Draw;
use crate::topology::{FailureDomain, Level, Span, Topology};

/// Largest accepted `PoolRule::pg_count` (bounds the memory of [`Topology::place_pool`]).
pub const MAX_PG_COUNT: u32 = 1 << 24;

/// How one pool's PGs are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolRule {
    /// Salts the draws, so equal PG numbers of different pools land on unrelated OSDs.
    pub pool_id: u32,
    /// Number of PGs, `1..=MAX_PG_COUNT`; PGs are numbered `0..pg_count`.
    pub pg_count: u32,
    /// Replicas per PG, `>= 1` (3 for tessera's Raft groups).
    pub replicas: usize,
    /// No two replicas of a PG share a member of this level.
    pub failure_domain: FailureDomain,
}

impl PoolRule {
    fn validate(&self) -> Result<(), PlacementError> {
        if self.replicas == 0 {
            return Err(PlacementError::InvalidRule { reason: "replicas must be at least 1" });
        }
        if self.pg_count == 0 {
            return Err(PlacementError::InvalidRule { reason: "pg_count must be at least 1" });
        }
        if self.pg_count > MAX_PG_COUNT {
            return Err(PlacementError::InvalidRule { reason: "pg_count exceeds MAX_PG_COUNT" });
        }
        Ok(())
    }
}

/// Every PG of a pool → its replicas, stored flat (`pg_count * replicas` OSD ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlacement {
    replicas: usize,
    osds: Vec<u32>,
}

impl PoolPlacement {
    pub fn pg_count(&self) -> u32 {
        (self.osds.len() / self.replicas) as u32
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The replicas of `pg` in preference order (the first is the preferred leader), or
    /// `None` if `pg >= pg_count`.
    pub fn pg(&self, pg: u32) -> Option<&[u32]> {
        let start = (pg as usize).checked_mul(self.replicas)?;
        self.osds.get(start..start + self.replicas)
    }

    /// `(pg, replicas)` for every PG in PG order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u32])> + '_ {
        self.osds.chunks_exact(self.replicas).enumerate().map(|(pg, set)| (pg as u32, set))
    }

    /// Replicas held per OSD (OSDs holding none are absent).
    pub fn replica_counts(&self) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for &osd in &self.osds {
            *counts.entry(osd).or_insert(0) += 1;
        }
        counts
    }

    /// PGs whose preferred leader is each OSD (OSDs leading none are absent).
    pub fn primary_counts(&self) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for (_, set) in self.iter() {
            *counts.entry(set[0]).or_insert(0) += 1;
        }
        counts
    }
}

/// A rule checked against a topology, with scratch space; places PGs one by one.
struct Placer<'a> {
    topology: &'a Topology,
    level: &'a Level,
    rule: PoolRule,
    top: Vec<Draw>,
}

impl<'a> Placer<'a> {
    fn new(topology: &'a Topology, rule: &PoolRule) -> Result<Self, PlacementError> {
        rule.validate()?;
        let level = topology.level(rule.failure_domain)?;
        if level.domains.len() < rule.replicas {
            return Err(PlacementError::NotEnoughDomains {
                domain: rule.failure_domain,
                needed: rule.replicas,
                available: level.domains.len(),
            });
        }
        Ok(Self { topology, level, rule: *rule, top: Vec::with_capacity(rule.replicas + 1) })
    }

    /// Appends `pg`'s replicas, best first, to `out`. Requires `pg < pg_count` (checked by callers).
    fn place(&mut self, pg: u32, out: &mut Vec<u32>) {
        let pg_key = (u64::from(self.rule.pool_id) << 32) | u64::from(pg);
        let hasher = PairHasher::new(pg_key, DRAW_SEED);
        let replicas = self.rule.replicas;
        let top = &mut self.top;
        top.clear();
        for domain in &self.level.domains {
            // Domains and runs are non-empty by construction (see `Topology::new`).
            let runs = &self.level.runs[domain.range()];
            let mut best = self.topology.run_winner(&hasher, runs[0]);
            for &run in &runs[1..] {
                let draw = self.topology.run_winner(&hasher, run);
                if draw.beats(&best) {
                    best = draw;
                }
            }
            if top.len() == replicas {
                match top.last() {
                    Some(last) if best.beats(last) => {
                        top.pop();
                    }
                    _ => continue,
                }
            }
            let pos = top.iter().position(|t| best.beats(t)).unwrap_or(top.len());
            top.insert(pos, best);
        }
        out.extend(top.iter().map(|d| d.id));
    }
}

impl Topology {
    /// The best draw of a non-empty run of equal-weight candidates: the highest hash (its draw
    /// is the highest too), ties to the earlier, smaller id.
    #[inline(always)]
    fn run_winner(&self, hasher: &PairHasher, run: Span) -> Draw {
        let range = run.range();
        let (mut winner, mut winner_hash) = (range.start, 0);
        // Branch-free maximum: the comparison is unpredictable.
        for (i, &lane) in self.lanes()[range.clone()].iter().enumerate() {
            let h = hasher.finish(lane);
            let better = i == 0 || h > winner_hash;
            winner = if better { range.start + i } else { winner };
            winner_hash = if better { h } else { winner_hash };
        }
        let c = &self.candidates()[winner];
        Draw { hash: winner_hash, weight: c.weight, id: c.id }
    }

    /// The replicas of PG `pg` of the pool described by `rule`, in preference order: the first
    /// is the preferred primary (Raft leader). Always exactly `rule.replicas` distinct OSDs,
    /// each in, of non-zero weight, and in pairwise distinct failure domains of
    /// `rule.failure_domain`. Deterministic: depends only on the set of OSDs given to the
    /// topology, the rule and `pg`.
    ///
    /// Errors: [`PlacementError::InvalidRule`], [`PlacementError::PgOutOfRange`],
    /// [`PlacementError::MissingRack`], [`PlacementError::NotEnoughDomains`].
    pub fn place_pg(&self, rule: &PoolRule, pg: u32) -> Result<Vec<u32>, PlacementError> {
        let mut placer = Placer::new(self, rule)?;
        if pg >= rule.pg_count {
            return Err(PlacementError::PgOutOfRange { pg, pg_count: rule.pg_count });
        }
        let mut out = Vec::with_capacity(rule.replicas);
        placer.place(pg, &mut out);
        Ok(out)
    }

    /// [`Topology::place_pg`] for every PG `0..rule.pg_count`. Cost: O(eligible OSDs) per PG.
    pub fn place_pool(&self, rule: &PoolRule) -> Result<PoolPlacement, PlacementError> {
        let mut placer = Placer::new(self, rule)?;
        let mut osds = Vec::with_capacity(rule.pg_count as usize * rule.replicas);
        for pg in 0..rule.pg_count {
            placer.place(pg, &mut osds);
        }
        Ok(PoolPlacement { replicas: rule.replicas, osds })
    }
}
