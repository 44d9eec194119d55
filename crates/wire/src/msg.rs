//! The messages carried in [`crate::Frame`]s: their `kind` codes and the encoding of their
//! `meta` (little-endian, fixed layout per message version). Bulk bytes (block data, Raft
//! messages) travel in the frame's `data`, never in `meta`.
//!
//! | kind | message      | direction    | meta                  | data                         |
//! |------|--------------|--------------|-----------------------|------------------------------|
//! | 1    | Raft batch   | OSD -> OSD   | [`RaftBatch`]         | [`RaftItem`]s back to back (heartbeats merged into one item) |
//! | 2    | request      | client -> OSD| [`Request`]           | write payload (4 KiB blocks) |
//! | 3    | response     | OSD -> client| [`Response`]          | read payload                 |
//!
//! Every decoder here returns [`MsgError`] on any malformed input and never panics
//! (property-tested and fuzzed); the connection that carried it must then be closed.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame kinds.
pub mod kind {
    pub const RAFT: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 3;
}

/// Largest `meta` any message here uses; decoders are built with this limit.
pub const MAX_META: u32 = 4096;
/// Largest frame `data`: 4 MiB of block payload or a Raft batch.
pub const MAX_DATA: u32 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("{what}: truncated (needed {needed} more bytes)")]
    Truncated { what: &'static str, needed: usize },
    #[error("{what}: {extra} unexpected trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what}: unknown {field} value {value}")]
    Unknown { what: &'static str, field: &'static str, value: u64 },
    #[error("{what}: {why}")]
    Invalid { what: &'static str, why: String },
}

pub(crate) struct Dec<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(b: &'a [u8], what: &'static str) -> Self {
        Self { b, what }
    }
    pub(crate) fn need(&self, n: usize) -> Result<(), MsgError> {
        if self.b.len() < n {
            return Err(MsgError::Truncated { what: self.what, needed: n - self.b.len() });
        }
        Ok(())
    }
    pub(crate) fn u8(&mut self) -> Result<u8, MsgError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    pub(crate) fn u16(&mut self) -> Result<u16, MsgError> {
        self.need(2)?;
        Ok(self.b.get_u16_le())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, MsgError> {
        self.need(4)?;
        Ok(self.b.get_u32_le())
    }
    pub(crate) fn u64(&mut self) -> Result<u64, MsgError> {
        self.need(8)?;
        Ok(self.b.get_u64_le())
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        self.need(n)?;
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn finish(self) -> Result<(), MsgError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(MsgError::Trailing { what: self.what, extra: self.b.len() })
        }
    }
}

/// A placement group as the wire names it: pool id and PG index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct WirePg {
    pub pool: u32,
    pub index: u32,
}

/// Meta of a Raft batch: all Raft messages from one OSD to another produced by one round of
/// the sender's event loop, for every PG they share (so heartbeats of many groups cost one
/// frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftBatch {
    pub from: u32,
    pub to: u32,
}

const RAFT_BATCH_VERSION: u8 = 1;

impl RaftBatch {
    pub fn encode(&self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = RAFT_BATCH_VERSION;
        b[1..5].copy_from_slice(&self.from.to_le_bytes());
        b[5..9].copy_from_slice(&self.to.to_le_bytes());
        b
    }
    pub fn decode(meta: &[u8]) -> Result<Self, MsgError> {
        let mut d = Dec::new(meta, "raft batch");
        let v = d.u8()?;
        if v != RAFT_BATCH_VERSION {
            return Err(MsgError::Unknown { what: "raft batch", field: "version", value: v as u64 });
        }
        let r = RaftBatch { from: d.u32()?, to: d.u32()? };
        d.finish()?;
        Ok(r)
    }
}

/// One Raft message of a batch: the PG and the message's encoded bytes (opaque here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftItem {
    pub pg: WirePg,
    pub msg: Bytes,
}

/// Appends one item (`pool u32, index u32, len u32, bytes`) to a batch's data.
pub fn put_raft_item(out: &mut BytesMut, pg: WirePg, msg: &[u8]) {
    out.reserve(12 + msg.len());
    out.put_u32_le(pg.pool);
    out.put_u32_le(pg.index);
    out.put_u32_le(msg.len() as u32);
    out.put_slice(msg);
}

/// An item whose `pg.pool` is this carries *tombstones* (see [`encode_tombstones`]): a PG
/// leader telling the receiver it is no longer a member of these groups, with the leader's
/// term so a stale leader's word can be told apart.
pub const TOMBSTONES_POOL: u32 = u32::MAX - 1;

/// `(pool u32, index u32, term u64)` per tombstone.
pub fn encode_tombstones(t: &[(WirePg, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * t.len());
    for (pg, term) in t {
        out.put_u32_le(pg.pool);
        out.put_u32_le(pg.index);
        out.put_u64_le(*term);
    }
    out
}

pub fn decode_tombstones(data: &[u8]) -> Result<Vec<(WirePg, u64)>, MsgError> {
    if !data.len().is_multiple_of(16) {
        return Err(MsgError::Invalid { what: "tombstones", why: format!("{} bytes is not a multiple of 16", data.len()) });
    }
    let mut d = Dec::new(data, "tombstones");
    let mut out = Vec::with_capacity(data.len() / 16);
    while !d.b.is_empty() {
        out.push((WirePg { pool: d.u32()?, index: d.u32()? }, d.u64()?));
    }
    Ok(out)
}

/// An item whose `pg.pool` is this carries the *sender's space state* (see [`encode_space`]):
/// whether its device takes new data, so PG leaders know which followers can hold a write
/// without asking the mon.
pub const SPACE_POOL: u32 = u32::MAX - 2;

/// Flag of a space item: the sender refuses log entries that carry data (its device is at
/// the full ratio or out of free segments).
pub const SPACE_REFUSES_DATA: u8 = 1;
/// Flag of a space item, only with [`SPACE_REFUSES_DATA`]: the sender refuses data only
/// until its cleaner reclaims garbage (it is out of free segments while its live data is
/// under the full ratio), so a write refused for it is worth retrying.
pub const SPACE_RECLAIMING: u8 = 2;

/// A sender's space state, as its space item says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceWord {
    /// It refuses log entries that carry data.
    pub refuses_data: bool,
    /// ... only until its cleaner reclaims garbage (never without `refuses_data`).
    pub reclaiming: bool,
}

/// One flags byte.
pub fn encode_space(w: SpaceWord) -> [u8; 1] {
    let f = if w.refuses_data { SPACE_REFUSES_DATA | if w.reclaiming { SPACE_RECLAIMING } else { 0 } } else { 0 };
    [f]
}

/// The sender's space state. Exactly one byte with no unknown flag, and
/// [`SPACE_RECLAIMING`] only with [`SPACE_REFUSES_DATA`] (one encoding per state).
pub fn decode_space(data: &[u8]) -> Result<SpaceWord, MsgError> {
    match data {
        [0] => Ok(SpaceWord::default()),
        [SPACE_REFUSES_DATA] => Ok(SpaceWord { refuses_data: true, reclaiming: false }),
        [3] => Ok(SpaceWord { refuses_data: true, reclaiming: true }),
        _ => Err(MsgError::Invalid {
            what: "space item",
            why: format!("{} bytes {data:02x?}: expected one flags byte (0, 1 or 3)", data.len()),
        }),
    }
}

/// An item whose `pg.pool` is this carries the batch's [`Heartbeat`]s of every group, merged
/// (see [`encode_heartbeats`]), instead of one Raft message.
pub const HEARTBEATS_POOL: u32 = u32::MAX;

/// One group's Raft heartbeat (or its answer) in a merged heartbeat item: only the fields
/// Raft uses; sender and receiver are the batch's OSDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub pg: WirePg,
    /// `false`: leader -> follower heartbeat; `true`: the follower's answer.
    pub response: bool,
    pub term: u64,
    pub commit: u64,
    /// ReadIndex context (echoed by the answer), at most 64 KiB.
    pub context: Bytes,
}

/// `count u32`, then per heartbeat `pool u32, index u32, response u8, term u64, commit u64,
/// context_len u16, context`.
pub fn encode_heartbeats(hbs: &[Heartbeat]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + hbs.len() * 27);
    out.put_u32_le(hbs.len() as u32);
    for h in hbs {
        out.put_u32_le(h.pg.pool);
        out.put_u32_le(h.pg.index);
        out.put_u8(h.response as u8);
        out.put_u64_le(h.term);
        out.put_u64_le(h.commit);
        out.put_u16_le(h.context.len() as u16);
        out.put_slice(&h.context);
    }
    out
}

pub fn decode_heartbeats(data: &Bytes) -> Result<Vec<Heartbeat>, MsgError> {
    let mut d = Dec::new(data, "merged heartbeats");
    let n = d.u32()? as usize;
    if n > data.len().saturating_sub(4) / 27 {
        return Err(MsgError::Invalid { what: "merged heartbeats", why: format!("{n} heartbeats cannot fit in {} bytes", data.len()) });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let pg = WirePg { pool: d.u32()?, index: d.u32()? };
        let response = match d.u8()? {
            0 => false,
            1 => true,
            v => return Err(MsgError::Unknown { what: "merged heartbeats", field: "response", value: v as u64 }),
        };
        let (term, commit) = (d.u64()?, d.u64()?);
        let len = d.u16()? as usize;
        let start = data.len() - d.b.len();
        d.bytes(len)?;
        out.push(Heartbeat { pg, response, term, commit, context: data.slice(start..start + len) });
    }
    d.finish()?;
    Ok(out)
}

/// Splits a batch's data into items without copying the message bytes.
pub fn decode_raft_items(data: &Bytes) -> Result<Vec<RaftItem>, MsgError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let mut d = Dec::new(&data[pos..], "raft item");
        let pg = WirePg { pool: d.u32()?, index: d.u32()? };
        let len = d.u32()? as usize;
        d.need(len)?;
        out.push(RaftItem { pg, msg: data.slice(pos + 12..pos + 12 + len) });
        pos += 12 + len;
    }
    Ok(out)
}

/// What a request asks of the PG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// Read `len` bytes at `offset` (served by the leader under its lease).
    Read = 1,
    /// Write the frame's data at `offset`.
    Write = 2,
    /// Make `len` bytes at `offset` read as zeros and free their space (trim and write-zeroes).
    WriteZeroes = 3,
    /// Remove the object version.
    Delete = 4,
    /// Snapshot transfer between OSDs: list every object version of the PG. Served by any
    /// replica whose durable applied index is at least `seq`; answer data is
    /// [`ScanEntry`]s back to back. `volume`, `object`, `snap`, `offset`, `len` are 0.
    Scan = 5,
    /// Snapshot transfer between OSDs: read `len` bytes at `offset` of version
    /// `(volume, object, snap)` from any replica whose durable applied index is at least
    /// `seq` (no leader involved).
    ReadRaw = 6,
    /// Remove every frozen version of `volume`'s objects in the PG with an id below `snap`
    /// (the horizon: the keep list was read before any snapshot with a larger id existed)
    /// that no snapshot id in the request's data (u64 LE each, at most [`MAX_KEEP`])
    /// reads. After snapshots were deleted. `object`, `offset`, `len` are 0.
    TrimVersions = 7,
    /// Remove every version of every object of `volume` in the PG (volume delete).
    DropVolume = 8,
    /// Make every object of `volume` in the PG read as snapshot `snap` again; `snapc` is
    /// the volume's current snapshot context (newer snapshots keep their data).
    Rollback = 9,
    /// Space used per volume in the PG: answer data is [`UsageEntry`]s back to back. Served
    /// by the leader after a read index, like reads.
    Usage = 10,
    /// A clone's copy-up: make the object's staging version (written before with `Write`s
    /// to `snap = SNAP_STAGING`) its head if the head is still absent (see the engine's
    /// `Op::Promote`); `snapc` as for writes.
    Promote = 11,
    /// Scrub: a digest of every object version of the PG on the replica it is sent to (any
    /// replica, leader or not; no read index: the point is to compare replicas as they
    /// are). The answer is a [`crate::DigestPage`] computed from a pinned image of the PG
    /// taken with its applied index. `snapc` = 0 pins a new image; to continue, `snapc` =
    /// the page's pin and `(volume, object, snap)` = its `next` key. `offset`, `len` are 0.
    Digest = 12,
    /// Repair, between OSDs: a damaged replica (`client` = its OSD id, `seq` = its last log
    /// index) asks the PG's leader for a Raft snapshot of the PG's state at the leader's
    /// durable applied index, which must be at least `seq`. Served by the leader only; the
    /// answer data is the protobuf-encoded Raft `Snapshot` (index, term, configuration, and
    /// tessera's ticket naming a pinned image to copy from). Opaque to this crate.
    Ticket = 13,
    /// Sets the PG's snapshot context for `volume`: `snapc` = the volume's newest live
    /// snapshot id, `snap` = the map epoch at which it was set (the PG keeps the one with
    /// the highest epoch, so pushes arriving out of order cannot go back). From then on the
    /// PG refuses, in log order, any write-class op of the volume whose `snapc` is below
    /// it ([`Status::StaleContext`]). Run on every PG of the pool by `snapshot create` and
    /// `delete` before they return. `object`, `offset`, `len` are 0.
    SnapSeq = 14,
}

/// Most snapshot ids a [`OpCode::TrimVersions`] request may keep.
pub const MAX_KEEP: usize = 4096;

impl OpCode {
    fn from_u8(v: u8) -> Result<Self, MsgError> {
        Ok(match v {
            1 => OpCode::Read,
            2 => OpCode::Write,
            3 => OpCode::WriteZeroes,
            4 => OpCode::Delete,
            5 => OpCode::Scan,
            6 => OpCode::ReadRaw,
            7 => OpCode::TrimVersions,
            8 => OpCode::DropVolume,
            9 => OpCode::Rollback,
            10 => OpCode::Usage,
            11 => OpCode::Promote,
            12 => OpCode::Digest,
            13 => OpCode::Ticket,
            14 => OpCode::SnapSeq,
            _ => return Err(MsgError::Unknown { what: "request", field: "op", value: v as u64 }),
        })
    }
    /// Whether the op changes the PG (is replicated through its Raft log).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            OpCode::Write
                | OpCode::WriteZeroes
                | OpCode::Delete
                | OpCode::TrimVersions
                | OpCode::DropVolume
                | OpCode::Rollback
                | OpCode::Promote
                | OpCode::SnapSeq
        )
    }
    /// Whether the op is answered by the leader after a read index.
    pub fn is_read(self) -> bool {
        matches!(self, OpCode::Read | OpCode::Usage)
    }
}

/// One volume's space in a PG, in an [`OpCode::Usage`] answer: 32 bytes, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UsageEntry {
    pub volume: u64,
    /// Objects with a head version.
    pub objects: u64,
    /// Allocated 4 KiB blocks of the heads.
    pub head_blocks: u64,
    /// Distinct 4 KiB blocks of the heads and all frozen (snapshot) versions.
    pub unique_blocks: u64,
}

impl UsageEntry {
    pub const LEN: usize = 32;
    pub fn put(&self, out: &mut Vec<u8>) {
        for v in [self.volume, self.objects, self.head_blocks, self.unique_blocks] {
            out.put_u64_le(v);
        }
    }
    pub fn decode_all(data: &[u8]) -> Result<Vec<UsageEntry>, MsgError> {
        if !data.len().is_multiple_of(Self::LEN) {
            return Err(MsgError::Invalid {
                what: "usage answer",
                why: format!("{} bytes is not a multiple of {}", data.len(), Self::LEN),
            });
        }
        let mut d = Dec::new(data, "usage answer");
        let mut out = Vec::with_capacity(data.len() / Self::LEN);
        while !d.b.is_empty() {
            out.push(UsageEntry { volume: d.u64()?, objects: d.u64()?, head_blocks: d.u64()?, unique_blocks: d.u64()? });
        }
        Ok(out)
    }
}

/// Snapshot ids of a [`OpCode::TrimVersions`] request's data.
pub fn encode_keep(keep: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keep.len() * 8);
    keep.iter().for_each(|k| out.put_u64_le(*k));
    out
}

pub fn decode_keep(data: &[u8]) -> Result<Vec<u64>, MsgError> {
    if !data.len().is_multiple_of(8) || data.len() / 8 > MAX_KEEP {
        return Err(MsgError::Invalid {
            what: "keep list",
            why: format!("{} bytes (a multiple of 8, at most {MAX_KEEP} ids)", data.len()),
        });
    }
    let mut d = Dec::new(data, "keep list");
    let mut out = Vec::with_capacity(data.len() / 8);
    while !d.b.is_empty() {
        out.push(d.u64()?);
    }
    Ok(out)
}

/// One object version in a [`OpCode::Scan`] answer: 32 bytes, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub volume: u64,
    pub object: u64,
    pub snap: u64,
    /// One past the last byte that may hold data; [`ScanEntry::MARKER`] for a frozen
    /// version that records "absent at that snapshot".
    pub extent_end: u64,
}

impl ScanEntry {
    pub const LEN: usize = 32;
    pub const MARKER: u64 = u64::MAX;
    pub fn put(&self, out: &mut Vec<u8>) {
        for v in [self.volume, self.object, self.snap, self.extent_end] {
            out.put_u64_le(v);
        }
    }
    pub fn decode_all(data: &[u8]) -> Result<Vec<ScanEntry>, MsgError> {
        if !data.len().is_multiple_of(Self::LEN) {
            return Err(MsgError::Invalid { what: "scan answer", why: format!("{} bytes is not a multiple of {}", data.len(), Self::LEN) });
        }
        let mut d = Dec::new(data, "scan answer");
        let mut out = Vec::with_capacity(data.len() / Self::LEN);
        while !d.b.is_empty() {
            out.push(ScanEntry { volume: d.u64()?, object: d.u64()?, snap: d.u64()?, extent_end: d.u64()? });
        }
        Ok(out)
    }
}

/// A client request for one object of one PG. Offsets and lengths are bytes within the
/// object and multiples of 4096 (the client library does read-modify-write for the rest).
///
/// Deduplication: `(client, seq)` names the request across retries; a PG applies a write
/// with a given pair at most once. `floor` is the client's promise that it will never retry
/// any `seq < floor`, so the PG may forget those pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: OpCode,
    pub pg: WirePg,
    /// The map epoch the client routed with.
    pub epoch: u64,
    pub volume: u64,
    pub object: u64,
    pub snap: u64,
    pub offset: u64,
    /// Bytes to read or zero; for writes the data length.
    pub len: u64,
    pub client: u64,
    pub seq: u64,
    pub floor: u64,
    /// Snapshot context of a write-class request: the id of the volume's newest live
    /// snapshot when the client sent it (0 = none). Before the head changes, the PG
    /// preserves it as that snapshot's version (copy-on-write).
    pub snapc: u64,
}

const REQUEST_VERSION: u8 = 2;
const REQUEST_LEN: usize = 2 + 8 + 8 * 10;

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        let mut w = &mut b[..];
        w.put_u8(REQUEST_VERSION);
        w.put_u8(self.op as u8);
        w.put_u32_le(self.pg.pool);
        w.put_u32_le(self.pg.index);
        for v in [self.epoch, self.volume, self.object, self.snap, self.offset, self.len, self.client, self.seq, self.floor, self.snapc] {
            w.put_u64_le(v);
        }
        b
    }
    pub fn decode(meta: &[u8]) -> Result<Self, MsgError> {
        let mut d = Dec::new(meta, "request");
        let v = d.u8()?;
        if v != REQUEST_VERSION {
            return Err(MsgError::Unknown { what: "request", field: "version", value: v as u64 });
        }
        let op = OpCode::from_u8(d.u8()?)?;
        let pg = WirePg { pool: d.u32()?, index: d.u32()? };
        let r = Request {
            op,
            pg,
            epoch: d.u64()?,
            volume: d.u64()?,
            object: d.u64()?,
            snap: d.u64()?,
            offset: d.u64()?,
            len: d.u64()?,
            client: d.u64()?,
            seq: d.u64()?,
            floor: d.u64()?,
            snapc: d.u64()?,
        };
        d.finish()?;
        Ok(r)
    }
}

/// The outcome of a request. Everything but `Ok`, `Invalid` and `Io` asks the client to
/// route again and retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// This OSD is not the PG's leader; `Response::leader` names the leader if known.
    NotLeader = 1,
    /// This OSD has no replica of the PG (the client's map is stale, or the PG moved).
    NoPg = 2,
    /// The PG cannot serve right now (election, not yet caught up, request timed out
    /// inside the OSD); retry after a short pause. A retried write is deduplicated.
    Retry = 3,
    /// The request is malformed (alignment, range, unknown object); never retry.
    Invalid = 4,
    /// The storage engine failed the request (device error, checksum mismatch); never
    /// retried against the same replica.
    Io = 5,
    /// The OSD's device is full.
    NoSpace = 6,
    /// A read of an object version that does not exist (no data follows). Reads of a plain
    /// volume take it as zeros; a clone's reads go on to its parent snapshot.
    Absent = 7,
    /// The write's snapshot context is older than the newest the PG knows for the volume
    /// (`Response::snapc`; see [`OpCode::SnapSeq`]): it was not applied. Re-issue it with at
    /// least that context.
    StaleContext = 8,
}

impl Status {
    fn from_u8(v: u8) -> Result<Self, MsgError> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::NotLeader,
            2 => Status::NoPg,
            3 => Status::Retry,
            4 => Status::Invalid,
            5 => Status::Io,
            6 => Status::NoSpace,
            8 => Status::StaleContext,
            7 => Status::Absent,
            _ => return Err(MsgError::Unknown { what: "response", field: "status", value: v as u64 }),
        })
    }
}

/// Meta of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// The PG leader's OSD id when known (with `NotLeader`).
    pub leader: Option<u32>,
    /// The OSD's map epoch, so a client with an older map knows to fetch a newer one.
    pub epoch: u64,
    /// Human-readable detail for errors (at most 1 KiB), empty on success.
    pub message: String,
    /// With `StaleContext`: the PG's snapshot context for the volume (else 0).
    pub snapc: u64,
}

/// Version 2 carries `snapc`; a response with `snapc == 0` is encoded as version 1 (so
/// every response has exactly one encoding).
const RESPONSE_VERSION: u8 = 1;
const RESPONSE_VERSION_2: u8 = 2;
const MAX_MESSAGE: usize = 1024;

impl Response {
    pub fn ok(epoch: u64) -> Self {
        Response { status: Status::Ok, leader: None, epoch, message: String::new(), snapc: 0 }
    }
    pub fn error(status: Status, epoch: u64, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Response { status, leader: None, epoch, message, snapc: 0 }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + self.message.len());
        b.put_u8(if self.snapc == 0 { RESPONSE_VERSION } else { RESPONSE_VERSION_2 });
        b.put_u8(self.status as u8);
        b.put_u32_le(self.leader.map_or(u32::MAX, |l| l));
        b.put_u64_le(self.epoch);
        b.put_u16_le(self.message.len() as u16);
        b.put_slice(self.message.as_bytes());
        if self.snapc != 0 {
            b.put_u64_le(self.snapc);
        }
        b
    }
    pub fn decode(meta: &[u8]) -> Result<Self, MsgError> {
        let mut d = Dec::new(meta, "response");
        let v = d.u8()?;
        if v != RESPONSE_VERSION && v != RESPONSE_VERSION_2 {
            return Err(MsgError::Unknown { what: "response", field: "version", value: v as u64 });
        }
        let status = Status::from_u8(d.u8()?)?;
        let leader = match d.u32()? {
            u32::MAX => None,
            l => Some(l),
        };
        let epoch = d.u64()?;
        let n = d.u16()? as usize;
        if n > MAX_MESSAGE {
            return Err(MsgError::Invalid { what: "response", why: format!("message of {n} bytes (max {MAX_MESSAGE})") });
        }
        let message = String::from_utf8(d.bytes(n)?.to_vec())
            .map_err(|_| MsgError::Invalid { what: "response", why: "message is not UTF-8".into() })?;
        let snapc = if v == RESPONSE_VERSION_2 { d.u64()? } else { 0 };
        if v == RESPONSE_VERSION_2 && snapc == 0 {
            return Err(MsgError::Invalid { what: "response", why: "version 2 with snapc 0".into() });
        }
        d.finish()?;
        Ok(Response { status, leader, epoch, message, snapc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Request {
            op: OpCode::Write,
            pg: WirePg { pool: 3, index: 9 },
            epoch: 7,
            volume: 1,
            object: 2,
            snap: u64::MAX,
            offset: 4096,
            len: 8192,
            client: 77,
            seq: 5,
            floor: 4,
            snapc: 3,
        };
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let resp = Response { status: Status::NotLeader, leader: Some(2), epoch: 9, message: "leader is 2".into(), snapc: 0 };
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        let stale = Response { status: Status::StaleContext, snapc: 7, ..resp.clone() };
        assert_eq!(Response::decode(&stale.encode()).unwrap(), stale);
        let mut v2_zero = resp.encode();
        v2_zero[0] = 2;
        v2_zero.extend(0u64.to_le_bytes());
        assert!(Response::decode(&v2_zero).is_err(), "one encoding per response");
        let b = RaftBatch { from: 1, to: 2 };
        assert_eq!(RaftBatch::decode(&b.encode()).unwrap(), b);
        for w in [(false, false), (true, false), (true, true)].map(|(r, c)| SpaceWord { refuses_data: r, reclaiming: c }) {
            assert_eq!(decode_space(&encode_space(w)).unwrap(), w);
        }
        assert_eq!(encode_space(SpaceWord { refuses_data: false, reclaiming: true }), [0], "reclaiming only while refusing");
        assert!(decode_space(&[]).is_err() && decode_space(&[0, 0]).is_err() && decode_space(&[2]).is_err() && decode_space(&[4]).is_err());
        let mut data = BytesMut::new();
        put_raft_item(&mut data, WirePg { pool: 1, index: 2 }, b"abc");
        put_raft_item(&mut data, WirePg { pool: 1, index: 3 }, b"");
        let items = decode_raft_items(&data.freeze()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(&items[0].msg[..], b"abc");
        assert_eq!(items[1].pg.index, 3);
        let hbs = vec![
            Heartbeat { pg: WirePg { pool: 1, index: 2 }, response: false, term: 5, commit: 9, context: Bytes::new() },
            Heartbeat { pg: WirePg { pool: 1, index: 3 }, response: true, term: 5, commit: 7, context: Bytes::from_static(b"ctx") },
        ];
        assert_eq!(decode_heartbeats(&Bytes::from(encode_heartbeats(&hbs))).unwrap(), hbs);
        let enc = encode_heartbeats(&hbs);
        for cut in 0..enc.len() {
            assert!(decode_heartbeats(&Bytes::copy_from_slice(&enc[..cut])).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let r = Response::error(Status::Io, 1, "é".repeat(1000));
        assert!(r.message.len() <= MAX_MESSAGE);
        assert_eq!(Response::decode(&r.encode()).unwrap(), r);
    }
}
