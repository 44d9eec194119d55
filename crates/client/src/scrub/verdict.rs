//! Comparing the digests of a PG's replicas (sans-IO): the verdict of one scrub attempt.

use std::collections::BTreeMap;
use std::fmt;

use tessera_wire::{DigestEntry, DigestKind};

use crate::SNAP_HEAD;

/// One object version of a PG: `snap` is [`SNAP_HEAD`], a snapshot id, or the staging copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionKey {
    pub volume: u64,
    pub object: u64,
    pub snap: u64,
}

impl VersionKey {
    pub fn of(e: &DigestEntry) -> Self {
        VersionKey { volume: e.volume, object: e.object, snap: e.snap }
    }
}

impl fmt::Display for VersionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.snap {
            SNAP_HEAD => write!(f, "volume {} object {}", self.volume, self.object),
            crate::SNAP_STAGING => write!(f, "volume {} object {} (copy-up staging)", self.volume, self.object),
            s => write!(f, "volume {} object {} @snapshot {s}", self.volume, self.object),
        }
    }
}

/// One replica's digest of a PG (all pages).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReplicaDigest {
    pub applied: u64,
    /// The replica says it holds corrupt data of the PG and is repairing itself.
    pub damaged: bool,
    pub entries: Vec<DigestEntry>,
}

/// What one replica holds for one version, as compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holding {
    Absent,
    Marker,
    Data { len: u64, hash: u64 },
}

impl fmt::Display for Holding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holding::Absent => write!(f, "absent"),
            Holding::Marker => write!(f, "absent-at-snapshot marker"),
            Holding::Data { len, hash } => write!(f, "{len} bytes, xxh64 {hash:016x}"),
        }
    }
}

/// A version the replicas disagree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub key: VersionKey,
    /// The OSDs outside the majority (all of them when no majority agrees).
    pub suspects: Vec<u32>,
    /// Each distinct holding and the OSDs that have it, most common first.
    pub views: Vec<(Holding, Vec<u32>)>,
}

/// A checksum failure a replica reported (or `key: None`: a replica that says it is
/// damaged, found earlier, without naming a version in this digest).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Corruption {
    pub osd: u32,
    pub key: Option<VersionKey>,
    /// Byte offset of the failing block within the version.
    pub offset: Option<u64>,
}

/// The result of scrubbing one PG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every replica holds the same versions with the same content at `applied`.
    Clean { applied: u64, versions: usize },
    /// At the same applied index the replicas differ (without checksum failures: silent
    /// divergence, e.g. a bug or a change that bypassed Raft).
    Mismatch { applied: u64, differences: Vec<Difference> },
    /// Replicas found blocks that fail their checksums. Those replicas repair themselves from
    /// a healthy one (automatically); scrub again to confirm.
    Corrupt { found: Vec<Corruption> },
    /// No point where every replica had the same applied index was found in time.
    Busy { why: String },
    /// Replicas that did not answer.
    Unreachable { osds: Vec<(u32, String)> },
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        matches!(self, Verdict::Clean { .. })
    }
    /// `clean`, `mismatch`, `corrupt`, `busy` or `unreachable`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Clean { .. } => "clean",
            Verdict::Mismatch { .. } => "mismatch",
            Verdict::Corrupt { .. } => "corrupt",
            Verdict::Busy { .. } => "busy",
            Verdict::Unreachable { .. } => "unreachable",
        }
    }
}

/// The checksum failures the digests report.
pub fn corruption(digests: &[(u32, ReplicaDigest)]) -> Vec<Corruption> {
    let mut out = Vec::new();
    for (osd, d) in digests {
        let bad: Vec<Corruption> = d
            .entries
            .iter()
            .filter(|e| e.kind == DigestKind::Corrupt)
            .map(|e| Corruption { osd: *osd, key: Some(VersionKey::of(e)), offset: Some(e.len) })
            .collect();
        if bad.is_empty() && d.damaged {
            out.push(Corruption { osd: *osd, key: None, offset: None });
        }
        out.extend(bad);
    }
    out
}

/// The verdict on one attempt's digests (one per replica): `Corrupt` if any replica reports
/// a checksum failure; `None` if the replicas are at different applied indexes (not
/// comparable: try again); else `Clean` or `Mismatch`.
pub fn judge(digests: &[(u32, ReplicaDigest)]) -> Option<Verdict> {
    let found = corruption(digests);
    if !found.is_empty() {
        return Some(Verdict::Corrupt { found });
    }
    let applied = digests.first()?.1.applied;
    if digests.iter().any(|(_, d)| d.applied != applied) {
        return None;
    }
    let n = digests.len();
    let mut by_key: BTreeMap<VersionKey, Vec<Holding>> = BTreeMap::new();
    for (i, (_, d)) in digests.iter().enumerate() {
        for e in &d.entries {
            let h = match e.kind {
                DigestKind::Marker => Holding::Marker,
                _ => Holding::Data { len: e.len, hash: e.hash },
            };
            by_key.entry(VersionKey::of(e)).or_insert_with(|| vec![Holding::Absent; n])[i] = h;
        }
    }
    let versions = by_key.len();
    let mut differences = Vec::new();
    for (key, holdings) in by_key {
        if holdings.iter().all(|h| *h == holdings[0]) {
            continue;
        }
        let mut groups: BTreeMap<Holding, Vec<u32>> = BTreeMap::new();
        for (h, (osd, _)) in holdings.iter().zip(digests) {
            groups.entry(*h).or_default().push(*osd);
        }
        let mut views: Vec<(Holding, Vec<u32>)> = groups.into_iter().collect();
        views.sort_by_key(|v| std::cmp::Reverse(v.1.len()));
        let majority = views[0].1.len() * 2 > n;
        let mut suspects: Vec<u32> = views.iter().skip(usize::from(majority)).flat_map(|(_, o)| o.iter().copied()).collect();
        suspects.sort_unstable();
        differences.push(Difference { key, suspects, views });
    }
    Some(if differences.is_empty() { Verdict::Clean { applied, versions } } else { Verdict::Mismatch { applied, differences } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(object: u64, hash: u64) -> DigestEntry {
        DigestEntry { volume: 7, object, snap: SNAP_HEAD, kind: DigestKind::Data, len: 4096, hash }
    }
    fn marker(object: u64, snap: u64) -> DigestEntry {
        DigestEntry { volume: 7, object, snap, kind: DigestKind::Marker, len: 0, hash: 0 }
    }
    fn replica(applied: u64, entries: Vec<DigestEntry>) -> ReplicaDigest {
        ReplicaDigest { applied, damaged: false, entries }
    }

    #[test]
    fn identical_replicas_are_clean() {
        let e = vec![data(1, 11), marker(1, 5), data(2, 22)];
        let v = judge(&[(0, replica(9, e.clone())), (1, replica(9, e.clone())), (2, replica(9, e))]);
        assert_eq!(v, Some(Verdict::Clean { applied: 9, versions: 3 }));
        assert_eq!(judge(&[(0, replica(9, vec![])), (1, replica(9, vec![]))]), Some(Verdict::Clean { applied: 9, versions: 0 }));
    }

    #[test]
    fn different_applied_indexes_are_not_compared() {
        let e = vec![data(1, 11)];
        assert_eq!(judge(&[(0, replica(9, e.clone())), (1, replica(10, e))]), None);
    }

    #[test]
    fn the_minority_replica_is_named() {
        let good = vec![data(1, 11), data(2, 22)];
        let bad = vec![data(1, 11), data(2, 23), data(3, 33)];
        let v = judge(&[(0, replica(9, good.clone())), (4, replica(9, bad)), (2, replica(9, good))]).unwrap();
        let Verdict::Mismatch { applied: 9, differences } = v else { panic!("{v:?}") };
        assert_eq!(differences.len(), 2);
        assert_eq!(differences[0].key, VersionKey { volume: 7, object: 2, snap: SNAP_HEAD });
        assert_eq!(differences[0].suspects, vec![4]);
        assert_eq!(differences[0].views[0], (Holding::Data { len: 4096, hash: 22 }, vec![0, 2]));
        assert_eq!(differences[1].suspects, vec![4], "an extra version on one replica");
        assert_eq!(differences[1].views[0], (Holding::Absent, vec![0, 2]));
    }

    #[test]
    fn without_a_majority_every_replica_is_suspect() {
        let v = judge(&[(0, replica(3, vec![data(1, 1)])), (1, replica(3, vec![data(1, 2)]))]).unwrap();
        let Verdict::Mismatch { differences, .. } = v else { panic!("{v:?}") };
        assert_eq!(differences[0].suspects, vec![0, 1]);
        let v = judge(&[(0, replica(3, vec![data(1, 1)])), (1, replica(3, vec![data(1, 2)])), (2, replica(3, vec![marker(1, SNAP_HEAD)]))])
            .unwrap();
        let Verdict::Mismatch { differences, .. } = v else { panic!("{v:?}") };
        assert_eq!(differences[0].suspects, vec![0, 1, 2]);
    }

    #[test]
    fn checksum_failures_win_even_between_different_indexes() {
        let bad = DigestEntry { kind: DigestKind::Corrupt, len: 8192, hash: 0, ..data(5, 0) };
        let v = judge(&[
            (0, replica(9, vec![data(5, 1)])),
            (1, replica(10, vec![bad])),
            (2, ReplicaDigest { damaged: true, ..replica(9, vec![]) }),
        ]);
        assert_eq!(
            v,
            Some(Verdict::Corrupt {
                found: vec![
                    Corruption { osd: 1, key: Some(VersionKey { volume: 7, object: 5, snap: SNAP_HEAD }), offset: Some(8192) },
                    Corruption { osd: 2, key: None, offset: None },
                ]
            })
        );
    }
}
