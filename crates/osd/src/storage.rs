//! Raft's log storage for one PG replica, on the OSD's shared storage engine.
//!
//! Every PG on the OSD keeps its Raft log in the one engine write-ahead log, so one
//! `fdatasync` makes a whole round of appends of every PG durable. What raft-rs reads back
//! through [`Storage`] is what the engine has made durable; entries not yet durable are still
//! in raft-rs's own unstable log. A cache of recent entries (shared `Bytes`, no copies)
//! serves the common reads (apply, sending to followers) without touching the device.
//!
//! Per-PG records in the engine's PG-scoped metadata, written in the same engine transaction
//! as the log appends they belong to:
//! - `hardstate` (term, vote, commit) via [`tessera_engine::pgmeta`];
//! - `confstate`: the Raft configuration (protobuf `ConfState`), rewritten when a
//!   configuration change is applied;
//! - `applied`: the applied index, written with the applies.

use bytes::{BufMut, Bytes};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::collections::VecDeque;
use std::sync::Arc;
use tessera_engine::{pgmeta, Engine, EngineError, LogEntry, MetaScope, Op, PgId};

use crate::cmd;

const CONF_STATE: &[u8] = b"confstate";
/// Present while a snapshot install is incomplete (see `snapshot.rs`).
pub const INSTALLING: &[u8] = b"installing";
const META_VERSION: u8 = 1;
/// Upper bound of the entry cache per PG; older entries are read from the device.
const CACHE_BYTES: usize = 32 << 20;

/// An op that stores the PG's Raft configuration.
pub fn put_conf_state(pg: PgId, cs: &ConfState) -> Op {
    let value = cs.write_to_bytes().expect("ConfState always encodes");
    Op::MetaPut { scope: MetaScope::Pg(pg), key: Bytes::from_static(CONF_STATE), value: value.into() }
}

/// The engine's form of a Raft entry: `meta = version, entry type, context length u16,
/// context, data[..split]`, `data = data[split..]` (block-aligned write payload, shared).
pub fn to_log_entry(e: &Entry) -> LogEntry {
    let split = match e.get_entry_type() {
        EntryType::EntryNormal => cmd::split_point(&e.data),
        _ => e.data.len(),
    };
    let mut meta = Vec::with_capacity(4 + e.context.len() + split);
    meta.put_u8(META_VERSION);
    meta.put_u8(e.get_entry_type() as u8);
    meta.put_u16_le(e.context.len() as u16);
    meta.put_slice(&e.context);
    meta.put_slice(&e.data[..split]);
    // A command's block checksums (the client's, end to end) go to the engine, which checks
    // the payload against them; entries without them have the engine compute its own.
    let crcs = match split < e.data.len() {
        true => cmd::Command::decode_with_crcs(&e.data).map(|(_, _, crcs)| crcs).unwrap_or_default(),
        false => Vec::new(),
    };
    LogEntry { index: e.index, term: e.term, meta: meta.into(), data: e.data.slice(split..), crcs }
}

/// Rebuilds the Raft entry from the engine's form (copies the data once).
pub fn from_log_entry(le: LogEntry, pg: PgId) -> Result<Entry, EngineError> {
    let bad = |why: &str| EngineError::Invalid { pg, why: format!("log entry {}: {why}", le.index) };
    let m = &le.meta[..];
    if m.len() < 4 || m[0] != META_VERSION {
        return Err(bad("unknown entry metadata version"));
    }
    let ty = match m[1] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return Err(bad("unknown entry type")),
    };
    let ctx_len = u16::from_le_bytes([m[2], m[3]]) as usize;
    if m.len() < 4 + ctx_len {
        return Err(bad("truncated context"));
    }
    let mut e = Entry::default();
    e.set_entry_type(ty);
    e.index = le.index;
    e.term = le.term;
    e.context = le.meta.slice(4..4 + ctx_len);
    let inline = &m[4 + ctx_len..];
    e.data = if le.data.is_empty() {
        le.meta.slice(4 + ctx_len..)
    } else {
        let mut d = Vec::with_capacity(inline.len() + le.data.len());
        d.extend_from_slice(inline);
        d.extend_from_slice(&le.data);
        d.into()
    };
    Ok(e)
}

/// The tail of the log as submitted to the engine: every entry not yet durable (raft-rs
/// forgets entries once they are handed to `advance_append_async`, so from then on they must
/// be readable here), plus recent durable ones for cheap reads.
///
/// Invariants: entries are contiguous and end at the log's last index whenever the cache is
/// non-empty; every append not yet durable starts at or after `first()` (so below `first()`
/// the engine's durable log is the log).
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// `(ready number, first index)` of appends not yet durable, in submission order.
    inflight: VecDeque<(u64, u64)>,
}

impl EntryCache {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }
    fn last(&self) -> Option<u64> {
        self.entries.back().map(|e| e.index)
    }
    /// Raft's conflict rule: entries at or after the first new index are replaced. An append
    /// below the cache (or after a gap) restarts the cache at the append.
    fn append(&mut self, new: &[Entry], number: u64) {
        let Some(first) = new.first() else { return };
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.pop_back();
        }
        if self.entries.back().is_some_and(|e| e.index + 1 != first.index) {
            self.entries.clear();
            self.bytes = 0;
        }
        for e in new {
            self.bytes += e.data.len();
            self.entries.push_back(e.clone());
        }
        self.inflight.push_back((number, first.index));
    }
    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= e.data.len();
        }
    }
    /// The appends of readies up to `number` are durable.
    fn persisted(&mut self, number: u64) {
        while self.inflight.front().is_some_and(|(n, _)| *n <= number) {
            self.inflight.pop_front();
        }
        self.shrink();
    }
    /// Drops durable entries from the front while over [`CACHE_BYTES`].
    fn shrink(&mut self) {
        let keep_from = self.inflight.iter().map(|(_, f)| *f).min().unwrap_or(u64::MAX);
        while self.bytes > CACHE_BYTES && self.entries.front().is_some_and(|e| e.index < keep_from) && self.entries.len() > 1 {
            self.pop_front();
        }
    }
    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len();
        }
    }
    /// Drops entries `<= upto` that are durable (the log was compacted there).
    fn compact(&mut self, upto: u64) {
        let keep_from = self.inflight.iter().map(|(_, f)| *f).min().unwrap_or(u64::MAX);
        while self.entries.front().is_some_and(|e| e.index <= upto && e.index < keep_from) && self.entries.len() > 1 {
            self.pop_front();
        }
    }
    fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first()?;
        self.entries.get(index.checked_sub(first)? as usize)
    }
}

/// [`Storage`] of one PG replica.
pub struct PgStorage {
    engine: Arc<Engine>,
    pg: PgId,
    /// This OSD (named in the snapshots it makes as the source to copy from).
    osd: u32,
    hard: HardState,
    conf: ConfState,
    cache: EntryCache,
    /// A snapshot install was interrupted by a crash: the log is gone, so this replica must
    /// not vote until a new snapshot is installed (its empty log would make any candidate
    /// look up to date).
    pub no_votes: bool,
    /// With `no_votes`: the index of the snapshot whose install was interrupted (see
    /// `Peer::acknowledged_bound`).
    pub install_index: Option<u64>,
    /// `(compacted index, its term, durable last index)` of the engine's log, read when the
    /// storage is opened or a snapshot installed and moved by this replica's own
    /// compactions ([`PgStorage::cache_compact`]): raft-rs asks for the log bounds on every
    /// `has_ready` and `term`, and the engine answers only under its global state lock.
    /// Nothing else changes a PG's log while its replica is open (appends go through the
    /// entry cache, whose tail is the last index once it holds anything).
    log: (u64, u64, u64),
    /// A log entry this replica must read from its device (to apply it, or to send it to a
    /// follower) failed its checksum: what failed. The store marks the PG damaged, so the
    /// replica is rebuilt from a healthy one (see [`PgStorage::log_damage`]).
    log_damage: std::sync::OnceLock<String>,
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl PgStorage {
    /// Opens the replica's storage from what the engine holds (possibly nothing yet: an
    /// uninitialized replica with an empty configuration, waiting for its leader).
    pub fn open(engine: Arc<Engine>, pg: PgId, osd: u32) -> Result<Self, EngineError> {
        let hs = engine.hard_state(pg)?.unwrap_or_default();
        let hard = HardState { term: hs.term, vote: hs.vote, commit: hs.commit, ..Default::default() };
        let conf = match engine.meta_get(MetaScope::Pg(pg), CONF_STATE) {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| EngineError::Invalid { pg, why: format!("stored confstate: {e}") })?,
            None => ConfState::default(),
        };
        let marker = engine.meta_get(MetaScope::Pg(pg), INSTALLING);
        let install_index = marker.as_ref().and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(u64::from_le_bytes);
        let no_votes = marker.is_some();
        let mut s = Self {
            engine,
            pg,
            osd,
            hard,
            conf,
            cache: EntryCache::default(),
            no_votes,
            install_index,
            log: (0, 0, 0),
            log_damage: std::sync::OnceLock::new(),
        };
        s.refresh_bounds();
        // A round split into several engine transactions keeps appends -> hard state ->
        // applies in order, so a *prefix* of it never has commit past the log. But when a
        // middle transaction fails (no space) a later one may still succeed: the hard state
        // then names a commit index past the entries that made it. Entries up to the commit
        // are committed in the group whatever this replica holds, so lowering it to the log
        // is safe (the leader repeats it); raft-rs refuses to start otherwise.
        let last = s.bounds().2;
        if s.hard.commit > last {
            tracing::warn!(%pg, commit = s.hard.commit, last, "stored commit index past the log (a partly failed round): lowered to the log");
            s.hard.commit = last;
        }
        Ok(s)
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// Why a log entry of this replica could not be read (its payload failed its checksum),
    /// if one could not. The replica then neither applies past it nor sends it (see
    /// `entries`); only a rebuild from a healthy replica brings it back.
    pub fn log_damage(&self) -> Option<&str> {
        self.log_damage.get().map(String::as_str)
    }

    /// Records a configuration the caller has also queued for the engine with
    /// [`put_conf_state`] (bootstrap or an applied configuration change).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf = cs;
    }

    /// After a snapshot install (which rewrote log, configuration and hard state).
    pub fn installed(&mut self, conf: ConfState, hard: HardState) {
        self.conf = conf;
        self.hard = hard;
        self.cache = EntryCache::default();
        self.no_votes = false;
        self.install_index = None;
        self.refresh_bounds();
    }

    /// Reads the log bounds from the engine (see the `log` field).
    fn refresh_bounds(&mut self) {
        self.log = match self.engine.log_bounds(self.pg) {
            Some(b) => (b.compacted, b.compacted_term, b.last),
            None => (0, 0, 0),
        };
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    /// Records a hard state the caller queued for the engine.
    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.hard = hs.clone();
    }

    /// Entries the caller queued for the engine in ready `number`: readable through
    /// [`Storage`] from now on (raft-rs drops them from its own buffer on
    /// `advance_append_async`), served from memory until durable.
    pub fn cache_append(&mut self, entries: &[Entry], number: u64) {
        self.cache.append(entries, number);
    }

    /// The engine made the appends of readies up to `number` durable.
    pub fn persisted(&mut self, number: u64) {
        self.cache.persisted(number);
    }

    /// The caller queued a compaction of the log up to `upto` (whose entry has `term`):
    /// drops cached entries `<= upto` (applied and sent to every follower) and counts the log
    /// as compacted there from now on (raft-rs sends a snapshot to a follower that lacks them,
    /// even if the engine still has them for a moment).
    pub fn cache_compact(&mut self, upto: u64, term: u64) {
        self.cache.compact(upto);
        if upto > self.log.0 {
            self.log = (upto, term, self.log.2.max(upto));
        }
    }

    /// The PG's metadata records whose key starts with `prefix` (durable state).
    pub fn meta_with_prefix(&self, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.engine.meta_scan(MetaScope::Pg(self.pg)).into_iter().filter(|(k, _)| k.starts_with(prefix)).collect()
    }

    /// First index still in the log.
    pub fn first_index_now(&self) -> u64 {
        self.bounds().0 + 1
    }

    /// Term of a durable entry, if it is still in the log.
    pub fn term_now(&self, idx: u64) -> Option<u64> {
        self.term(idx).ok()
    }

    /// `(compacted, compacted term, last)` of the log as submitted: the engine's durable log
    /// with the cached tail over it.
    fn bounds(&self) -> (u64, u64, u64) {
        let (compacted, term, durable_last) = self.log;
        (compacted, term, self.cache.last().unwrap_or(durable_last))
    }
}

fn conf_names(cs: &ConfState, id: u64) -> bool {
    cs.voters.contains(&id) || cs.learners.contains(&id) || cs.voters_outgoing.contains(&id) || cs.learners_next.contains(&id)
}

/// The op that stores a hard state.
pub fn put_hard_state(pg: PgId, hs: &HardState) -> Op {
    pgmeta::put_hard_state(pg, pgmeta::HardState { term: hs.term, vote: hs.vote, commit: hs.commit })
}

impl Storage for PgStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    /// A log entry whose payload fails its checksum is never handed out. Reading it to send
    /// (raft-rs `SendAppend`, the only context that `can_async`) answers `Compacted`, so
    /// raft-rs sends the follower a snapshot instead; reading it to apply returns the
    /// entries before it (raft-rs takes a short answer as all there is for now, where any
    /// error would stop the process). Either way it is recorded ([`PgStorage::log_damage`]).
    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, ctx: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        let (compacted, _, last) = self.bounds();
        if low <= compacted {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut idx = low;
        while idx < high {
            let e = match self.cache.get(idx) {
                Some(e) => e.clone(),
                None => {
                    // Below the cache the durable log is the log: read a run from the device.
                    let stop = self.cache.first().filter(|f| *f > idx && *f < high).unwrap_or(high);
                    let stop = stop.min(idx + 64);
                    let les = match self.engine.log_entries(self.pg, idx, stop) {
                        Ok(les) => les,
                        Err(e @ EngineError::LogChecksum { .. }) => {
                            if self.log_damage.set(e.to_string()).is_ok() {
                                tracing::error!(pg = %self.pg, "{e}: not applied or sent from here; the replica is marked damaged and rebuilt");
                            }
                            if ctx.can_async() {
                                return Err(raft::Error::Store(StorageError::Compacted));
                            }
                            return Ok(out);
                        }
                        Err(e) => return Err(store_err(e)),
                    };
                    let mut done = false;
                    for le in les {
                        let e = from_log_entry(le, self.pg).map_err(store_err)?;
                        size += e.compute_size() as u64;
                        if !out.is_empty() && max.is_some_and(|m| size > m) {
                            done = true;
                            break;
                        }
                        out.push(e);
                    }
                    if done {
                        return Ok(out);
                    }
                    idx = stop;
                    continue;
                }
            };
            size += e.compute_size() as u64;
            if !out.is_empty() && max.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
            idx += 1;
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (compacted, compacted_term, last) = self.bounds();
        if idx == compacted {
            return Ok(compacted_term);
        }
        if idx < compacted {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if let Some(e) = self.cache.get(idx) {
            return Ok(e.term);
        }
        self.engine.log_term(self.pg, idx).map_err(store_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().2)
    }

    /// A ticket naming this OSD as the source of the PG's objects at its durable applied
    /// index (see `snapshot.rs`); unavailable (raft-rs retries later) until that index
    /// reaches `request_index`.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unpin = |s: &Snapshot| {
            if let Ok(t) = crate::snapshot::Ticket::decode(&s.data) {
                self.engine.unpin(t.pin);
            }
        };
        match crate::snapshot::make(&self.engine, self.pg, self.osd) {
            // The receiver refuses a snapshot whose configuration does not name it (the
            // learner was added in memory, its configuration is not durable yet): wait.
            Ok(s) if !conf_names(s.get_metadata().get_conf_state(), to) => {
                unpin(&s);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
            Ok(s) if s.get_metadata().index >= request_index => {
                tracing::info!(pg = %self.pg, to, index = s.get_metadata().index, "sending a snapshot");
                Ok(s)
            }
            Ok(s) => {
                unpin(&s);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
            Err(e) => {
                tracing::warn!(pg = %self.pg, "cannot make a snapshot: {e}");
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_engine::{EngineConfig, FormatOptions, MemDevice, Txn};

    fn entry(index: u64, term: u64, data: Vec<u8>) -> Entry {
        Entry { index, term, data: data.into(), ..Default::default() }
    }

    #[test]
    fn entries_round_trip_through_the_engine_form() {
        let pg = PgId::new(1, 2);
        let c = cmd::Command {
            op: tessera_wire::OpCode::Write,
            key: tessera_engine::ObjectKey::head(1, 1),
            offset: 0,
            len: 4096,
            client: 1,
            seq: 1,
            floor: 0,
            snapc: 0,
        };
        let crc = crc32c::crc32c(&[9u8; 4096]);
        let with_crcs = entry(2, 2, c.encode(&[9u8; 4096], [crc].into_iter()));
        assert_eq!(to_log_entry(&with_crcs).crcs, vec![crc], "the command's checksums go to the engine");
        let plain = entry(3, 2, c.encode(&[9u8; 4096], std::iter::empty()));
        for e in [with_crcs, plain, entry(4, 2, vec![]), entry(5, 2, b"not a command".to_vec())] {
            let le = to_log_entry(&e);
            assert_eq!(le.data.len() % 4096, 0);
            assert_eq!(from_log_entry(le, pg).unwrap(), e);
        }
        let mut cc = entry(6, 3, b"confchange".to_vec());
        cc.set_entry_type(EntryType::EntryConfChangeV2);
        cc.context = Bytes::from_static(b"ctx");
        assert_eq!(from_log_entry(to_log_entry(&cc), pg).unwrap(), cc);
    }

    #[test]
    fn storage_reads_persisted_entries_from_device_and_cache() {
        let dev = Arc::new(MemDevice::new(64 << 20));
        let engine = Arc::new(Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap());
        let pg = PgId::new(1, 0);
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, vec![i as u8; 10])).collect();
        engine.commit(Txn::new().with(Op::LogAppend { pg, entries: ents.iter().map(to_log_entry).collect() })).unwrap();
        let mut st = PgStorage::open(engine.clone(), pg, 0).unwrap();
        assert_eq!((st.first_index().unwrap(), st.last_index().unwrap()), (1, 5));
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(st.entries(2, 5, None, ctx()).unwrap(), ents[1..4].to_vec(), "from the device");
        st.cache_append(&ents[3..], 1);
        assert_eq!(st.entries(1, 6, None, ctx()).unwrap(), ents, "device then cache");
        assert_eq!(st.entries(1, 6, 1, ctx()).unwrap().len(), 1, "max size returns at least one entry");
        assert_eq!(st.term(4).unwrap(), 1);
        assert!(st.term(6).is_err());
        // Submitted but not durable: raft-rs reads them back at once.
        let more: Vec<Entry> = (6..=7).map(|i| entry(i, 2, vec![i as u8; 10])).collect();
        st.cache_append(&more, 2);
        assert_eq!(st.last_index().unwrap(), 7);
        assert_eq!(st.term(7).unwrap(), 2);
        assert_eq!(st.entries(5, 8, None, ctx()).unwrap(), [&ents[4..], &more[..]].concat());
        // A conflicting append at 5 replaces the tail even though the device still has 5.
        let conflict = vec![entry(5, 3, vec![9; 10])];
        st.cache_append(&conflict, 3);
        assert_eq!(st.last_index().unwrap(), 5);
        assert_eq!(st.term(5).unwrap(), 3);
        assert!(st.term(6).is_err());
        st.persisted(3);
        assert_eq!(st.entries(5, 6, None, ctx()).unwrap(), conflict, "still served from memory until evicted");
        engine.commit(Txn::new().with(Op::LogCompact { pg, upto: 2, term: 1 })).unwrap();
        st.cache_compact(2, 1);
        assert!(matches!(st.entries(2, 3, None, ctx()), Err(raft::Error::Store(StorageError::Compacted))));
        assert_eq!(st.term(2).unwrap(), 1);
    }
}
