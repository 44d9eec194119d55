//! The cluster as placement sees it: OSDs with weights, grouped into hosts and racks.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use crate::error::PlacementError;
use crate::hash;
use crate::straw::WEIGHT_FRAC_BITS;

/// Largest accepted OSD weight (weights are in any unit, e.g. TiB of capacity).
pub const MAX_WEIGHT: f64 = 4_294_967_296.0; // 2^32

/// One OSD as reported by the monitor's OSD map.
#[derive(Debug, Clone, PartialEq)]
pub struct OsdInfo {
    pub id: u32,
    /// Relative capacity; placement gives each OSD a share of replicas proportional to it.
    /// Quantized to multiples of 2^-16 (a positive weight below 2^-17 counts as zero).
    /// Must be finite, `>= 0` and `<= MAX_WEIGHT`.
    pub weight: f64,
    /// Failure-domain name of the machine; must not be empty.
    pub host: String,
    /// Failure-domain name of the rack; required (for in OSDs) only by rack-level rules.
    /// All OSDs of one host must name the same rack.
    pub rack: Option<String>,
    /// Liveness. **Not used by placement**: a down-but-in OSD keeps its PGs (they run
    /// degraded and Raft elects another leader) until the monitor marks it out.
    pub up: bool,
    /// Membership in the data distribution. Out OSDs get no PGs; marking an OSD out moves
    /// exactly the replicas it held.
    pub in_: bool,
}

impl OsdInfo {
    /// An up, in OSD without a rack.
    pub fn new(id: u32, weight: f64, host: impl Into<String>) -> Self {
        Self { id, weight, host: host.into(), rack: None, up: true, in_: true }
    }

    /// The same OSD placed in `rack`.
    pub fn with_rack(mut self, rack: impl Into<String>) -> Self {
        self.rack = Some(rack.into());
        self
    }
}

/// The level of the hierarchy whose members must be distinct among one PG's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureDomain {
    /// Replicas only need distinct OSDs.
    Osd,
    /// No two replicas on OSDs of the same host (the default).
    #[default]
    Host,
    /// No two replicas in the same rack.
    Rack,
}

impl fmt::Display for FailureDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Osd => "OSDs",
            Self::Host => "hosts",
            Self::Rack => "racks",
        })
    }
}

/// An OSD that can receive replicas (in, non-zero weight), prepared for draws.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub id: u32,
    /// Fixed-point weight, `> 0`.
    pub weight: u64,
}

/// `start..end` indices into another vector, stored compactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The candidates grouped for one failure-domain level.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    /// Runs of candidates of equal weight inside one domain (spans of `Topology::candidates`).
    /// Within a run the draw order equals the hash order, so a run's winner is found by hash
    /// comparisons alone.
    pub runs: Vec<Span>,
    /// One entry per domain: a span of `runs`.
    pub domains: Vec<Span>,
}

/// A validated, prepared cluster map. Build it once per OSD-map epoch and place any number of
/// PGs against it; it is immutable and `Sync`.
///
/// Contract: two topologies built from the same set of [`OsdInfo`] (in any order) are equal
/// for placement purposes and produce identical placements.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every OSD given, sorted by id.
    osds: Vec<OsdInfo>,
    /// In OSDs with non-zero weight, sorted by (rack, host, weight descending, id), so hosts
    /// and racks are contiguous.
    candidates: Vec<Candidate>,
    /// `hash::lane(id)` of each candidate (same index): the OSD's half of the draw hash,
    /// precomputed and kept apart so the hot loop reads 8 bytes per OSD.
    lanes: Vec<u64>,
    osd_level: Level,
    host_level: Level,
    /// `Err(osd)` if some candidate has no rack.
    rack_level: Result<Level, u32>,
}

fn to_fixed(osd: &OsdInfo) -> Result<u64, PlacementError> {
    let w = osd.weight;
    // Also rejects NaN and infinities.
    if !(0.0..=MAX_WEIGHT).contains(&w) {
        return Err(PlacementError::InvalidWeight { osd: osd.id, weight: w });
    }
    // Exact: scaling by a power of two, then rounding; <= 2^48.
    Ok((w * f64::from(1u32 << WEIGHT_FRAC_BITS)).round() as u64)
}

/// Groups consecutive indices `0..n` into spans whose `key` is equal.
fn group<K: PartialEq>(n: usize, key: impl Fn(usize) -> K) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 1..=n {
        if i == n || key(i) != key(start) {
            spans.push(Span { start: start as u32, end: i as u32 });
            start = i;
        }
    }
    spans
}

impl Topology {
    /// Validates `osds` and prepares them for placement.
    ///
    /// Errors: [`PlacementError::DuplicateOsd`], [`PlacementError::InvalidWeight`],
    /// [`PlacementError::EmptyHost`], [`PlacementError::HostInTwoRacks`] (all checked on every
    /// OSD, in or out). An empty list, or one where every OSD is out, is a valid topology on
    /// which every placement fails with [`PlacementError::NotEnoughDomains`].
    pub fn new(osds: &[OsdInfo]) -> Result<Self, PlacementError> {
        let mut sorted: Vec<OsdInfo> = osds.to_vec();
        sorted.sort_by_key(|o| o.id);
        if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlacementError::DuplicateOsd { id: w[0].id });
        }
        let mut rack_of_host: BTreeMap<&str, &Option<String>> = BTreeMap::new();
        let mut eligible: Vec<(&OsdInfo, u64)> = Vec::new();
        for osd in &sorted {
            let weight = to_fixed(osd)?;
            if osd.host.is_empty() {
                return Err(PlacementError::EmptyHost { osd: osd.id });
            }
            let rack = *rack_of_host.entry(&osd.host).or_insert(&osd.rack);
            if *rack != osd.rack {
                return Err(PlacementError::HostInTwoRacks { host: osd.host.clone(), first: rack.clone(), second: osd.rack.clone() });
            }
            if osd.in_ && weight > 0 {
                eligible.push((osd, weight));
            }
        }
        eligible.sort_by(|(a, wa), (b, wb)| {
            (&a.rack, &a.host, std::cmp::Reverse(wa), a.id).cmp(&(&b.rack, &b.host, std::cmp::Reverse(wb), b.id))
        });

        let n = eligible.len();
        let candidates: Vec<Candidate> = eligible.iter().map(|&(o, weight)| Candidate { id: o.id, weight }).collect();
        let lanes = candidates.iter().map(|c| hash::lane(u64::from(c.id))).collect();
        let singletons = group(n, |i| i);
        let osd_level = Level { domains: group(n, |i| i), runs: singletons };
        let runs = group(n, |i| (&eligible[i].0.host, eligible[i].1));
        let host_level = Level { domains: group(runs.len(), |r| &eligible[runs[r].start as usize].0.host), runs: runs.clone() };
        let rack_level = match eligible.iter().find(|(o, _)| o.rack.is_none()) {
            Some((o, _)) => Err(o.id),
            None => Ok(Level { domains: group(runs.len(), |r| &eligible[runs[r].start as usize].0.rack), runs }),
        };
        Ok(Self { osds: sorted, candidates, lanes, osd_level, host_level, rack_level })
    }

    /// Every OSD given to [`Topology::new`], sorted by id (including out ones).
    pub fn osds(&self) -> &[OsdInfo] {
        &self.osds
    }

    /// The OSD with this id, if it was given.
    pub fn osd(&self, id: u32) -> Option<&OsdInfo> {
        self.osds.binary_search_by_key(&id, |o| o.id).ok().map(|i| &self.osds[i])
    }

    /// Number of OSDs that can receive replicas (in, non-zero weight).
    pub fn eligible_osd_count(&self) -> usize {
        self.candidates.len()
    }

    /// Number of distinct `domain`s holding at least one eligible OSD: the largest replica
    /// count a rule with this failure domain can satisfy.
    ///
    /// Errors: [`PlacementError::MissingRack`] for [`FailureDomain::Rack`] when an eligible OSD
    /// has no rack.
    pub fn domain_count(&self, domain: FailureDomain) -> Result<usize, PlacementError> {
        Ok(self.level(domain)?.domains.len())
    }

    pub(crate) fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub(crate) fn lanes(&self) -> &[u64] {
        &self.lanes
    }

    pub(crate) fn level(&self, domain: FailureDomain) -> Result<&Level, PlacementError> {
        match domain {
            FailureDomain::Osd => Ok(&self.osd_level),
            FailureDomain::Host => Ok(&self.host_level),
            FailureDomain::Rack => self.rack_level.as_ref().map_err(|&osd| PlacementError::MissingRack { osd }),
        }
    }
}
