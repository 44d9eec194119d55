//! Raft snapshots of a PG: how a replica that is behind the log (a new replica, or one
//! whose log was compacted past) gets the PG's objects.
//!
//! The Raft snapshot message carries only a [`Ticket`]: the snapshot's index and term, the
//! configuration at that index, and the OSD to copy from. The receiving replica then pulls
//! the objects over the data port ([`tessera_wire::OpCode::Scan`] and `ReadRaw`, in chunks
//! of [`CHUNK`]) from that OSD, which serves them as long as its durable applied index is at
//! least the snapshot's index.
//!
//! # A point-in-time copy
//! The source pins an image of the PG when it makes the ticket ([`Engine::pin_pg`]: the
//! objects, frozen versions and markers, sharing blocks, with the applied index read under
//! the same lock), and serves `Scan`/`ReadRaw` from that image only (the pin id travels in
//! the requests' `snapc`). The replica therefore gets exactly the state at the ticket's
//! index and replays the log from `index + 1`, like any replica. This matters because
//! replicated ops are not all overwrites: `Preserve` freezes whatever the head holds, so
//! replaying a write over a newer copy would freeze post-snapshot data (found in review).
//! Pins unused for [`PIN_IDLE`] are released by the store.
//!
//! # Crash safety of an install
//! Step 1 drops the PG (objects, log) and rewrites the current term and vote in the same
//! transaction (a replica must never forget a vote), with an `installing` marker: a replica
//! reopened with the marker refuses to vote (its empty log would make every candidate look
//! up to date) until an install completes. Step 2 writes objects. Step 3 commits
//! the log start (`index`, `term`), configuration, hard state and applied index together.
//! Step 3 also removes the marker, and the PG's damage mark if it had one (`repair.rs`: a
//! damaged replica repairs itself through this same install). A crash before step 3 leaves an uninitialized replica
//! with partial objects; the leader
//! sends a new snapshot and the install starts again at step 1.

use bytes::{Buf, BufMut, Bytes};
use raft::eraftpb::{ConfState, HardState, Snapshot};
use std::sync::Arc;
use std::time::Duration;
use tessera_engine::{pgmeta, Engine, MetaScope, ObjectKey, Op, PgId, Txn, BLOCK_SIZE};
use tessera_wire::msg::{MAX_DATA, MAX_META};
use tessera_wire::{kind, FrameDecoder, FrameHeader, OpCode, Request, Response, ScanEntry, Status, WirePg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::storage::{put_conf_state, put_hard_state, INSTALLING};

/// Bytes per `ReadRaw` request and per engine transaction of the install.
pub const CHUNK: u64 = 1 << 20;
/// Version 2 added the pin id.
/// Version 3 added `blocks`; version 2 tickets decode with `blocks = 0` (size unknown).
const TICKET_VERSION: u8 = 3;
const TICKET_VERSION_2: u8 = 2;
/// A pinned image not read for this long is released (the receiver gave up or finished;
/// a receiver that still wants it gets an error and the leader sends a new ticket).
pub const PIN_IDLE: Duration = Duration::from_secs(90);

/// What a Raft snapshot message of tessera carries in its data: where to copy the objects
/// from, and the PG's write-deduplication table at the snapshot's index (small: a record per
/// recently writing client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The OSD to copy the objects from.
    pub source: u32,
    /// The source's pinned image of the PG at the ticket's index.
    pub pin: u64,
    /// About how many 4 KiB blocks the copy brings (the PG's distinct blocks on the source),
    /// so the receiver can tell whether it fits before dropping anything.
    pub blocks: u64,
    /// `dedup/<client>` records (see `dedup.rs`).
    pub dedup: Vec<(Bytes, Bytes)>,
}

impl Ticket {
    /// `version u8, source u32, pin u64, blocks u64, count u32, (key_len u16, key, value_len
    /// u32, value)*` (version 2: no `blocks`).
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(25 + self.dedup.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>());
        b.put_u8(TICKET_VERSION);
        b.put_u32_le(self.source);
        b.put_u64_le(self.pin);
        b.put_u64_le(self.blocks);
        b.put_u32_le(self.dedup.len() as u32);
        for (k, v) in &self.dedup {
            b.put_u16_le(k.len() as u16);
            b.put_slice(k);
            b.put_u32_le(v.len() as u32);
            b.put_slice(v);
        }
        b.into()
    }
    pub fn decode(data: &[u8]) -> Result<Ticket, String> {
        let bad = || format!("bad snapshot ticket of {} bytes", data.len());
        let mut b = data;
        let version = if b.is_empty() { 0 } else { b.get_u8() };
        let fixed = match version {
            TICKET_VERSION => 24,
            TICKET_VERSION_2 => 16,
            _ => return Err(bad()),
        };
        if b.len() < fixed {
            return Err(bad());
        }
        let source = b.get_u32_le();
        let pin = b.get_u64_le();
        let blocks = if version == TICKET_VERSION { b.get_u64_le() } else { 0 };
        let n = b.get_u32_le() as usize;
        if n > b.len() / 6 {
            return Err(bad());
        }
        let mut dedup = Vec::with_capacity(n);
        for _ in 0..n {
            if b.len() < 2 {
                return Err(bad());
            }
            let kl = b.get_u16_le() as usize;
            if b.len() < kl + 4 {
                return Err(bad());
            }
            let k = Bytes::copy_from_slice(&b[..kl]);
            b.advance(kl);
            let vl = b.get_u32_le() as usize;
            if b.len() < vl {
                return Err(bad());
            }
            dedup.push((k, Bytes::copy_from_slice(&b[..vl])));
            b.advance(vl);
        }
        if !b.is_empty() {
            return Err(bad());
        }
        Ok(Ticket { source, pin, blocks, dedup })
    }
}

/// A snapshot of the PG's durable state on `source` (this OSD): a pinned image of its
/// objects at the durable applied index, that index's term and the configuration and
/// deduplication table stored with it, read consistently. The caller releases the pin
/// ([`Engine::unpin`]) if it does not send the ticket.
pub fn make(engine: &Engine, pg: PgId, source: u32) -> Result<Snapshot, String> {
    for _ in 0..10 {
        let before = engine.applied_index(pg).map_err(|e| e.to_string())?;
        let conf = engine.meta_get(MetaScope::Pg(pg), b"confstate");
        let dedup: Vec<(Bytes, Bytes)> = engine.meta_scan(MetaScope::Pg(pg)).into_iter().filter(|(k, _)| carried_in_tickets(k)).collect();
        let term = engine.log_term(pg, before).map_err(|e| e.to_string())?;
        let (pin, pinned_at) = engine.pin_pg(pg).map_err(|e| e.to_string())?;
        if pinned_at != before {
            engine.unpin(pin);
            continue; // an apply landed between the reads
        }
        let cs = match conf {
            Some(b) => <ConfState as protobuf::Message>::parse_from_bytes(&b).map_err(|e| {
                engine.unpin(pin);
                e.to_string()
            })?,
            None => {
                engine.unpin(pin);
                return Err("no configuration stored".into());
            }
        };
        let blocks = engine.volume_usage(pg).iter().map(|(_, u)| u.unique_blocks).sum();
        let mut s = Snapshot { data: Ticket { source, pin, blocks, dedup }.encode(), ..Default::default() };
        let m = s.mut_metadata();
        m.index = before;
        m.term = term;
        m.set_conf_state(cs);
        return Ok(s);
    }
    Err("applies kept racing the snapshot".into())
}

/// A `Scan` of `pg` from pinned image `pin` (0: the live objects, for tools and tests) on
/// a replica whose applied index is at least `seq`.
pub fn scan_request(pg: PgId, seq: u64, pin: u64) -> Request {
    Request {
        op: OpCode::Scan,
        pg: WirePg { pool: pg.pool, index: pg.index },
        epoch: 0,
        volume: 0,
        object: 0,
        snap: 0,
        offset: 0,
        len: 0,
        client: 0,
        seq,
        floor: 0,
        snapc: pin,
    }
}

/// A minimal sequential RPC connection to another OSD's data port (also used by tests to
/// look at one replica's objects with `Scan`).
pub struct Rpc {
    stream: TcpStream,
    dec: FrameDecoder,
    buf: bytes::BytesMut,
    next_id: u64,
}

impl Rpc {
    pub async fn connect(addr: &str) -> Result<Rpc, String> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Rpc { stream, dec: FrameDecoder::new(MAX_META, MAX_DATA), buf: bytes::BytesMut::with_capacity(2 << 20), next_id: 1 })
    }

    /// Sends `req` and returns the answer's data (`Err` for any status but `Ok`).
    pub async fn call(&mut self, req: Request) -> Result<Bytes, String> {
        self.call_within(req, Duration::from_secs(10)).await
    }

    /// Like [`Rpc::call`], waiting at most `patience` between bytes of the answer.
    pub async fn call_within(&mut self, req: Request, patience: Duration) -> Result<Bytes, String> {
        let id = self.next_id;
        self.next_id += 1;
        let meta = req.encode();
        let header = FrameHeader::new(kind::REQUEST, 0, id, &meta, &[]);
        let mut out = header.0.to_vec();
        out.extend_from_slice(&meta);
        self.stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let frame = loop {
            if let Some(f) = self.dec.decode(&mut self.buf).map_err(|e| e.to_string())? {
                break f;
            }
            let n = tokio::time::timeout(patience, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| "snapshot source stopped answering".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("snapshot source closed the connection".into());
            }
        };
        if frame.kind != kind::RESPONSE || frame.request_id != id {
            return Err(format!("unexpected frame kind {} id {}", frame.kind, frame.request_id));
        }
        let resp = Response::decode(&frame.meta).map_err(|e| e.to_string())?;
        if resp.status != Status::Ok {
            return Err(format!("{:?}: {}", resp.status, resp.message));
        }
        Ok(frame.data)
    }
}

/// Whether an install may still write: the store withdraws it (under the same lock) before
/// it drops the replica, so no transaction of the install lands after the drop, where it
/// could wipe a re-created replica's log or write back an older term and vote.
#[derive(Clone, Debug)]
pub struct InstallGuard(Arc<parking_lot::Mutex<bool>>);

/// Error of an install whose replica was dropped meanwhile (nothing more was written).
pub const WITHDRAWN: &str = "install withdrawn: the replica was dropped";

impl InstallGuard {
    pub fn new() -> InstallGuard {
        InstallGuard(Arc::new(parking_lot::Mutex::new(true)))
    }

    /// Withdraws the install: once this returns, it writes nothing more.
    pub fn withdraw(&self) {
        *self.0.lock() = false;
    }
}

impl Default for InstallGuard {
    fn default() -> Self {
        InstallGuard::new()
    }
}

/// Commits `txn` for the install unless it was withdrawn (checked under the guard's lock,
/// held across the commit).
fn commit(engine: &Arc<Engine>, guard: &InstallGuard, txn: Txn) -> impl std::future::Future<Output = Result<(), String>> {
    let (engine, guard) = (engine.clone(), guard.clone());
    async move {
        tokio::task::spawn_blocking(move || {
            let live = guard.0.lock();
            if !*live {
                return Err(WITHDRAWN.to_string());
            }
            engine.commit(txn).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// PG metadata a ticket carries: the write-deduplication table and the snapshot contexts,
/// both replicated state that is not in the objects.
fn carried_in_tickets(key: &[u8]) -> bool {
    key.starts_with(crate::dedup::KEY_PREFIX) || key.starts_with(crate::contexts::KEY_PREFIX)
}

/// The error of an install that dropped the old copy but found no room for the new one
/// (see [`install`]'s `room`).
pub const NO_ROOM: &str = "no room for the copy";

/// Installs `snap` for `pg` by copying from the OSD at `addr`; `hard` is the replica's
/// persisted hard state (its term and vote survive the install). Returns the number of
/// bytes copied.
///
/// `room`: the backfillfull ratio. After the old copy is dropped the copy proceeds only if
/// the ticket's blocks fit under the ratio and in the free segments (a checkpoint and a
/// cleaning run first give the dropped copy's space back when they do not);
/// otherwise the install stops with an error starting with [`NO_ROOM`], leaving the replica
/// empty in the state a crash mid-install leaves (the leader sends a new snapshot later).
pub async fn install(
    engine: Arc<Engine>,
    pg: PgId,
    hard: HardState,
    snap: Snapshot,
    addr: String,
    room: Option<f64>,
    guard: &InstallGuard,
) -> Result<u64, String> {
    let ticket = Ticket::decode(&snap.data)?;
    let index = snap.get_metadata().index;
    let term = snap.get_metadata().term;
    // Step 1: start over, keeping term and vote.
    let mut kept = hard.clone();
    kept.commit = 0;
    let marker =
        Op::MetaPut { scope: MetaScope::Pg(pg), key: Bytes::from_static(INSTALLING), value: Bytes::copy_from_slice(&index.to_le_bytes()) };
    commit(&engine, guard, Txn::new().with(Op::DropPg { pg }).with(put_hard_state(pg, &kept)).with(marker)).await?;
    if let Some(ratio) = room {
        let e = engine.clone();
        let incoming = ticket.blocks * BLOCK_SIZE as u64;
        let fits = tokio::task::spawn_blocking(move || {
            let fits = |e: &Engine| {
                let (free, total) = e.segments();
                let after = (e.live_blocks() * BLOCK_SIZE as u64 + incoming) as f64;
                let need_segments = incoming.div_ceil(e.segment_bytes()) + crate::space::min_free_segments(total);
                after < ratio * e.capacity_bytes() as f64 && free >= need_segments
            };
            if fits(&e) {
                return true;
            }
            // Dropped blocks become free space only once no checkpoint or log segment
            // references them and the cleaner moved the live blocks out of their segments.
            let _ = e.checkpoint();
            let _ = e.clean();
            fits(&e)
        })
        .await
        .map_err(|e| e.to_string())?;
        if !fits {
            return Err(format!("{NO_ROOM} of pg {pg} ({} MiB) under the backfillfull ratio {ratio}", incoming >> 20));
        }
    }
    // Step 2: copy every object version.
    let mut rpc = Rpc::connect(&addr).await?;
    let base = scan_request(pg, index, ticket.pin);
    let list = ScanEntry::decode_all(&rpc.call(base).await?).map_err(|e| e.to_string())?;
    let mut copied = 0u64;
    let mut txn = Txn::new();
    let mut txn_bytes = 0u64;
    // Transactions of at most half a segment (a transaction must fit in one), read in steps
    // of at most half that.
    let limit = (2 * CHUNK).min(engine.segment_bytes() / 2);
    let step = CHUNK.min(limit / 2).max(BLOCK_SIZE as u64);
    for o in list {
        let key = ObjectKey { volume: o.volume, object: o.object, snap: o.snap };
        if o.extent_end == ScanEntry::MARKER {
            txn.push(Op::Mark { pg, key });
            continue;
        }
        // The source's word, checked: whole blocks, at most the largest object.
        let extent_end = o.extent_end.div_ceil(BLOCK_SIZE as u64).saturating_mul(BLOCK_SIZE as u64);
        if extent_end > crate::peer::MAX_OBJECT {
            return Err(format!("{key}: source reports {} bytes, more than any object", o.extent_end));
        }
        let mut offset = 0;
        let mut wrote = false;
        while offset < extent_end {
            let len = step.min(extent_end - offset);
            let data =
                rpc.call(Request { op: OpCode::ReadRaw, volume: o.volume, object: o.object, snap: o.snap, offset, len, ..base }).await?;
            if data.len() as u64 != len {
                return Err(format!("{key}: asked {len} bytes at {offset}, got {}", data.len()));
            }
            // Write runs of non-zero blocks; zeros stay unallocated (thin).
            let mut i = 0;
            while i < data.len() {
                if data[i..i + BLOCK_SIZE].iter().all(|b| *b == 0) {
                    i += BLOCK_SIZE;
                    continue;
                }
                let start = i;
                while i < data.len() && !data[i..i + BLOCK_SIZE].iter().all(|b| *b == 0) {
                    i += BLOCK_SIZE;
                }
                txn.push(Op::Write { pg, key, offset: offset + start as u64, data: data.slice(start..i) });
                wrote = true;
                txn_bytes += (i - start) as u64;
                copied += (i - start) as u64;
            }
            if txn_bytes + step > limit {
                commit(&engine, guard, std::mem::take(&mut txn)).await?;
                txn_bytes = 0;
            }
            offset += len;
        }
        if !wrote {
            // A version with no data, or only zeros, still exists (fully trimmed, or the
            // guest wrote zeros): absent would mean something else (read through to a
            // clone's parent, or an older frozen version).
            txn.push(Op::WriteZeroes { pg, key, offset: 0, len: 0 });
        }
    }
    // Step 3: the log restarts after the snapshot; configuration and applied index with it.
    let mut hs = hard;
    hs.commit = index;
    hs.term = hs.term.max(term);
    txn.push(Op::LogCompact { pg, upto: index, term });
    txn.push(put_conf_state(pg, snap.get_metadata().get_conf_state()));
    txn.push(put_hard_state(pg, &hs));
    txn.push(pgmeta::put_applied(pg, index));
    for (key, value) in ticket.dedup {
        if !carried_in_tickets(&key) {
            return Err(format!("snapshot ticket carries a record {key:?} that is neither dedup nor snapshot context"));
        }
        txn.push(Op::MetaPut { scope: MetaScope::Pg(pg), key, value });
    }
    txn.push(Op::MetaDelete { scope: MetaScope::Pg(pg), key: Bytes::from_static(INSTALLING) });
    // The whole PG now comes from a good image: a damage mark (see `repair.rs`) goes with the
    // marker, in the same transaction.
    txn.push(Op::MetaDelete { scope: MetaScope::Global, key: crate::repair::damaged_key(pg) });
    commit(&engine, guard, txn).await?;
    Ok(copied)
}

/// Serves `Scan` and `ReadRaw` for a snapshot copy (blocking: runs on the blocking pool).
/// A block of the image that fails its checksum is answered `Io` (the copy tries another
/// source) and passed to `on_corrupt`.
pub fn serve(engine: &Engine, req: &Request, on_corrupt: impl FnOnce(&tessera_engine::EngineError)) -> Result<Bytes, (Status, String)> {
    let pg = PgId::new(req.pg.pool, req.pg.index);
    let applied = engine.applied_index(pg).map_err(|e| (Status::Io, e.to_string()))?;
    if applied < req.seq {
        return Err((Status::Retry, format!("pg {pg} applied only up to {applied}, snapshot needs {}", req.seq)));
    }
    let pin = req.snapc;
    let expired = || (Status::Retry, format!("pg {pg}: pinned image {pin} is gone (expired or the source restarted)"));
    // A pin id is only meaningful on the OSD that made it, for its PG and index: the copy
    // may ask another replica (a fallback source) or a restarted source, whose pin with the
    // same number is another image. Serving it would copy the wrong PG or point in time.
    if pin != 0 && !engine.pins().into_iter().any(|(id, p, applied)| id == pin && p == pg && applied == req.seq) {
        return Err(expired());
    }
    match req.op {
        OpCode::Scan => {
            // Pin 0: the live listing (for tools and tests; a copy always names its pin).
            let (objects, markers) = if pin == 0 {
                (engine.list_objects(pg), engine.list_markers(pg))
            } else {
                (engine.pinned_objects(pin).ok_or_else(expired)?, engine.pinned_markers(pin).ok_or_else(expired)?)
            };
            let mut out = Vec::new();
            for (k, info) in objects {
                ScanEntry { volume: k.volume, object: k.object, snap: k.snap, extent_end: info.extent_end }.put(&mut out);
            }
            for k in markers {
                ScanEntry { volume: k.volume, object: k.object, snap: k.snap, extent_end: ScanEntry::MARKER }.put(&mut out);
            }
            if out.len() > MAX_DATA as usize {
                return Err((Status::Io, format!("pg {pg} has too many objects for one scan answer")));
            }
            Ok(out.into())
        }
        OpCode::ReadRaw => {
            if req.len > CHUNK {
                return Err((Status::Invalid, format!("raw read of {} bytes (max {CHUNK})", req.len)));
            }
            let key = ObjectKey { volume: req.volume, object: req.object, snap: req.snap };
            match engine.read_pinned(pin, key, req.offset, req.len) {
                Ok(Some(data)) => Ok(Bytes::from(data)),
                Ok(None) => Err((Status::Invalid, format!("{key} is not in pinned image {pin}"))),
                Err(tessera_engine::EngineError::Invalid { .. }) => Err(expired()),
                Err(e) => {
                    if matches!(e, tessera_engine::EngineError::Checksum { .. }) {
                        on_corrupt(&e);
                    }
                    Err((crate::error::status_of(&e), e.to_string()))
                }
            }
        }
        _ => Err((Status::Invalid, "not a snapshot request".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (chaos suite): a copy falls back to other replicas and retries after the
    /// source restarts, but a pin id names an image on one OSD only. A pin of another PG, or
    /// of the same PG at another index, must never be served as the ticket's image.
    #[test]
    fn a_pin_is_served_only_for_its_own_pg_and_index() {
        use tessera_engine::{EngineConfig, FormatOptions, MemDevice};
        let dev = Arc::new(MemDevice::new(16 << 20));
        let engine = Engine::create(dev, FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
        let (a, b) = (PgId::new(1, 0), PgId::new(1, 1));
        let mut txn = Txn::new();
        for pg in [a, b] {
            txn.push(Op::Write {
                pg,
                key: ObjectKey::head(7, pg.index as u64),
                offset: 0,
                data: Bytes::from(vec![pg.index as u8 + 1; 4096]),
            });
            txn.push(pgmeta::put_applied(pg, 10));
        }
        engine.commit(txn).unwrap();
        let (pin, applied) = engine.pin_pg(a).unwrap();
        assert_eq!(applied, 10);
        let scan = |pg: PgId, seq: u64| serve(&engine, &scan_request(pg, seq, pin), |_| {});
        assert!(scan(a, 10).is_ok(), "the ticket's own image");
        let wrong_pg = scan(b, 10).unwrap_err();
        assert_eq!(wrong_pg.0, Status::Retry, "another PG's pin: {}", wrong_pg.1);
        assert!(scan(a, 9).is_err(), "the same PG at another index");
        engine.unpin(pin);
        assert!(scan(a, 10).is_err(), "released");
    }

    #[test]
    fn ticket_round_trips_and_rejects_garbage() {
        let t = Ticket {
            source: 7,
            pin: 3,
            blocks: 262_144,
            dedup: vec![(Bytes::from_static(b"dedup/12345678"), Bytes::from_static(b"record"))],
        };
        let enc = t.encode();
        assert_eq!(Ticket::decode(&enc).unwrap(), t);
        // A version 2 ticket (no block count) still decodes, with the size unknown.
        let mut v2 = vec![2u8];
        v2.extend(&enc[1..13]);
        v2.extend(&enc[21..]);
        assert_eq!(Ticket::decode(&v2).unwrap(), Ticket { blocks: 0, ..t.clone() });
        for cut in 0..enc.len() {
            assert!(Ticket::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Ticket::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut long = enc.to_vec();
        long.push(0);
        assert!(Ticket::decode(&long).is_err());
    }
}
