//! [`Volume`]: reads and writes of any byte range of one volume.
//!
//! A call is cut into jobs: whole aligned pieces (each inside one object and at most
//! `max_request_bytes` of payload; write-zeroes pieces carry no payload and are only cut at
//! object boundaries) and, for unaligned writes and write-zeroes, read-modify-write of the
//! partial first and last 4 KiB blocks. The jobs run concurrently under one deadline
//! (`op_timeout` from the start of the call); the call succeeds only if all of them do.
//!
//! Read-modify-write is serialized per block within one client, but not atomic across
//! clients: two clients writing different bytes of the same 4 KiB block at the same time may
//! lose one write (see the crate docs).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tessera_mon::model::VolumeRecord;
use tessera_wire::{OpCode, Status};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::fanout;
use crate::plan::{align_down, align_up, edges, Partial};
use crate::route::ObjectRequest;
use crate::session::{LiveVolume, Session};
use crate::split::{pieces, Piece};
use crate::{BLOCK_SIZE, SNAP_HEAD, SNAP_STAGING};

/// A handle on one volume (or one snapshot of it, read-only); cheap to clone, usable from
/// many tasks at once.
#[derive(Clone, Debug)]
pub struct Volume {
    client: Client,
    rec: Arc<VolumeRecord>,
    view: Arc<View>,
}

/// One layer a clone reads through to: a parent volume's snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub pool: u32,
    pub volume: u64,
    pub snap: u64,
    /// The snapshot's size: the parent holds nothing beyond it.
    pub size: u64,
}

/// What a handle sees: which version, its size, the parents it reads through to, and the
/// session registration that keeps its snapshot context current.
#[derive(Debug)]
struct View {
    /// [`SNAP_HEAD`] (read-write) or a snapshot id (read-only).
    snap: u64,
    /// Size of a snapshot view (the head's size is live, in `live`).
    snap_size: u64,
    parents: Vec<Layer>,
    live: Option<Arc<LiveVolume>>,
    session: Option<Arc<Session>>,
    /// Keeps a snapshot view listed in the session (so the snapshot is not deleted under it).
    _snap_guard: Option<crate::session::SnapshotGuard>,
    /// Objects whose head is known to exist (a clone's copy-up is done for them).
    present: parking_lot::Mutex<std::collections::HashSet<u64>>,
}

impl Drop for View {
    fn drop(&mut self) {
        if let (Some(s), Some(l)) = (&self.session, &self.live) {
            s.close(l.rec.lock().id);
        }
    }
}

/// One unit of a call's work.
enum Job {
    Read(Piece),
    Write(Piece, Bytes),
    Zero(Piece),
    /// Read the block, overwrite `within` with the bytes (or zeros when `None`), write it.
    Patch(Partial, Option<Bytes>),
}

impl Volume {
    pub(crate) fn new(client: Client, rec: VolumeRecord) -> Result<Volume> {
        let bad = |why: String| Err(ClientError::BadVolume { volume: rec.id, why });
        if !rec.object_size.is_power_of_two() || rec.object_size < BLOCK_SIZE {
            return bad(format!("object size {} is not a power of two of at least {BLOCK_SIZE}", rec.object_size));
        }
        if !rec.size.is_multiple_of(BLOCK_SIZE) {
            return bad(format!("size {} is not a multiple of {BLOCK_SIZE}", rec.size));
        }
        let view = View {
            snap: SNAP_HEAD,
            snap_size: rec.size,
            parents: Vec::new(),
            live: None,
            session: None,
            _snap_guard: None,
            present: Default::default(),
        };
        Ok(Volume { client, rec: Arc::new(rec), view: Arc::new(view) })
    }

    /// A handle with a snapshot view, a parent chain and a session registration.
    pub(crate) fn with_view(
        client: Client,
        rec: VolumeRecord,
        snap: Option<(u64, u64)>,
        parents: Vec<Layer>,
        session: Option<(Arc<Session>, Arc<LiveVolume>)>,
        snap_guard: Option<crate::session::SnapshotGuard>,
    ) -> Result<Volume> {
        let mut v = Volume::new(client, rec)?;
        let (snap, snap_size) = snap.unwrap_or((SNAP_HEAD, v.rec.size));
        let (session, live) = match session {
            Some((s, l)) => (Some(s), Some(l)),
            None => (None, None),
        };
        v.view = Arc::new(View { snap, snap_size, parents, live, session, _snap_guard: snap_guard, present: Default::default() });
        Ok(v)
    }

    /// The snapshot id this handle reads (`None`: the writable head).
    pub fn snapshot(&self) -> Option<u64> {
        (self.view.snap != SNAP_HEAD).then_some(self.view.snap)
    }

    /// The parent snapshots a clone reads through to, nearest first.
    pub fn parents(&self) -> &[Layer] {
        &self.view.parents
    }

    /// The snapshot context writes carry now (the newest live snapshot id, 0 = none).
    pub fn snap_seq(&self) -> u64 {
        self.view.live.as_ref().map_or(self.rec.snap_seq, |l| l.rec.lock().snap_seq)
    }

    pub fn id(&self) -> u64 {
        self.rec.id
    }

    pub fn name(&self) -> &str {
        &self.rec.name
    }

    /// Bytes: a snapshot's size, or the head's current size (kept current from the mon
    /// while the volume is open through [`Client::open_volume`]).
    pub fn size(&self) -> u64 {
        if self.view.snap != SNAP_HEAD {
            return self.view.snap_size;
        }
        self.view.live.as_ref().map_or(self.rec.size, |l| l.rec.lock().size)
    }

    /// Whether writes are refused (a snapshot view).
    pub fn read_only(&self) -> bool {
        self.view.snap != SNAP_HEAD
    }

    pub fn object_size(&self) -> u64 {
        self.rec.object_size
    }

    pub fn record(&self) -> &VolumeRecord {
        &self.rec
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads `len` bytes at `offset`. Unaligned ranges read the covering aligned blocks and
    /// return the requested slice.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let deadline = self.deadline();
        let (start, end) = (align_down(offset), align_up(offset + len));
        let jobs = pieces(start, end, self.rec.object_size, self.request_bytes()).into_iter().map(Job::Read).collect();
        let parts = self.run(jobs, deadline).await?;
        let skip = (offset - start) as usize;
        let whole = match <[Bytes; 1]>::try_from(parts) {
            Ok([one]) => one,
            Err(parts) => {
                let mut buf = BytesMut::with_capacity((end - start) as usize);
                for p in parts {
                    buf.extend_from_slice(&p);
                }
                buf.freeze()
            }
        };
        Ok(whole.slice(skip..skip + len as usize))
    }

    /// Writes `data` at `offset`.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        let deadline = self.deadline();
        self.check_writable(deadline).await?;
        if len == 0 {
            return Ok(());
        }
        let e = edges(offset, len);
        let src = |from: u64, n: usize| data.slice((from - offset) as usize..(from - offset) as usize + n);
        let mut jobs = Vec::new();
        if let Some(h) = e.head {
            let bytes = src(h.start(), h.within.len());
            jobs.push(Job::Patch(h, Some(bytes)));
        }
        for p in pieces(e.middle.start, e.middle.end, self.rec.object_size, self.request_bytes()) {
            jobs.push(Job::Write(p, src(p.vol_offset, p.len as usize)));
        }
        if let Some(t) = e.tail {
            let bytes = src(t.start(), t.within.len());
            jobs.push(Job::Patch(t, Some(bytes)));
        }
        self.run(jobs, deadline).await.map(drop)
    }

    /// Makes `len` bytes at `offset` read as zeros (write-zeroes and trim): whole blocks with
    /// `WriteZeroes` (freeing their space), partial edge blocks by writing zeros into them.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let deadline = self.deadline();
        self.check_writable(deadline).await?;
        if len == 0 {
            return Ok(());
        }
        let e = edges(offset, len);
        let mut jobs: Vec<Job> = e.head.into_iter().map(|h| Job::Patch(h, None)).collect();
        jobs.extend(pieces(e.middle.start, e.middle.end, self.rec.object_size, u64::MAX).into_iter().map(Job::Zero));
        jobs.extend(e.tail.into_iter().map(|t| Job::Patch(t, None)));
        self.run(jobs, deadline).await.map(drop)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ClientError::OutOfRange { volume: self.rec.id, offset, len, size }),
        }
    }

    /// Writes are allowed: a head view. Nothing waits for the mon: a write's snapshot
    /// context is checked by the PG itself (`StaleContext`), so writes go on through a mon
    /// outage of any length.
    async fn check_writable(&self, _deadline: Instant) -> Result<()> {
        if self.read_only() {
            return Err(ClientError::ReadOnly { volume: self.rec.id, snapshot: self.view.snap });
        }
        Ok(())
    }

    /// Raises the handle's snapshot context to `snapc` (a PG knows a newer snapshot than
    /// this client's record of the volume: `snapshot create` ran meanwhile).
    fn raise_context(&self, snapc: u64) {
        if let Some(l) = &self.view.live {
            let mut rec = l.rec.lock();
            if rec.snap_seq < snapc {
                tracing::info!(volume = %rec.name, from = rec.snap_seq, to = snapc, "a PG knows a newer snapshot: writes re-issued with its context");
                rec.snap_seq = snapc;
            }
        }
    }

    /// Executes a write-class request built by `make` from the current snapshot context;
    /// a refusal for a stale context raises it and re-issues the request (a new seq: the
    /// refused one was never applied).
    async fn execute_with_context(&self, make: impl Fn(u64) -> ObjectRequest, data: Bytes, deadline: Instant) -> Result<Bytes> {
        loop {
            let used = self.snap_seq();
            match self.client.inner.execute(&make(used), data.clone(), deadline).await {
                Ok((_, payload)) => return Ok(payload),
                Err(ClientError::StaleContext { snapc, .. }) if snapc > used && self.view.live.is_some() => self.raise_context(snapc),
                Err(e) => return Err(e),
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.client.options().op_timeout
    }

    fn request_bytes(&self) -> u64 {
        self.client.options().request_bytes()
    }

    /// Runs the jobs concurrently; returns their data (reads) in job order.
    async fn run(&self, jobs: Vec<Job>, deadline: Instant) -> Result<Vec<Bytes>> {
        let futures = jobs.into_iter().map(|job| self.clone().job(job, deadline)).collect();
        fanout::try_join(futures).await
    }

    async fn job(self, job: Job, deadline: Instant) -> Result<Bytes> {
        match job {
            Job::Read(p) => self.send(OpCode::Read, p, Bytes::new(), deadline).await,
            Job::Write(p, data) => self.send(OpCode::Write, p, data, deadline).await,
            Job::Zero(p) => self.send(OpCode::WriteZeroes, p, Bytes::new(), deadline).await,
            Job::Patch(partial, with) => {
                let os = self.rec.object_size;
                let p = Piece { object: partial.block / os, offset: partial.block % os, len: BLOCK_SIZE, vol_offset: partial.block };
                let _held = self.client.inner.rmw.lock(self.rec.id, partial.block).await;
                let old = self.send(OpCode::Read, p, Bytes::new(), deadline).await?;
                let mut block = BytesMut::from(&old[..]);
                match with {
                    Some(bytes) => block[partial.within].copy_from_slice(&bytes),
                    None => block[partial.within].fill(0),
                }
                self.send(OpCode::Write, p, block.freeze(), deadline).await
            }
        }
    }

    /// One object request for piece `p`; returns the response data. Reads of an absent
    /// object read through the parents (zeros past the last); writes to a clone's object
    /// first copy the parents' data up ([`Volume::copy_up`]).
    async fn send(&self, op: OpCode, p: Piece, data: Bytes, deadline: Instant) -> Result<Bytes> {
        if op == OpCode::Read {
            return self.read_piece(p, deadline).await;
        }
        if !self.view.parents.is_empty() {
            self.copy_up(p.object, deadline).await?;
        }
        let (pool, id) = (self.rec.pool_id, self.rec.id);
        self.execute_with_context(
            |snapc| ObjectRequest { snapc, ..ObjectRequest::new(op, pool, id, p.object, SNAP_HEAD, p.offset, p.len) },
            data,
            deadline,
        )
        .await
    }

    async fn read_piece(&self, p: Piece, deadline: Instant) -> Result<Bytes> {
        let req = ObjectRequest::new(OpCode::Read, self.rec.pool_id, self.rec.id, p.object, self.view.snap, p.offset, p.len);
        let (resp, payload) = self.client.inner.execute(&req, Bytes::new(), deadline).await?;
        if resp.status != Status::Absent {
            return Ok(payload);
        }
        self.read_parents(p, deadline).await
    }

    /// Reads piece `p` from the first parent layer that has its object (zeros if none).
    async fn read_parents(&self, p: Piece, deadline: Instant) -> Result<Bytes> {
        for layer in &self.view.parents {
            if p.vol_offset >= layer.size {
                break; // the parent (and its own parents) hold nothing here
            }
            let req = ObjectRequest::new(OpCode::Read, layer.pool, layer.volume, p.object, layer.snap, p.offset, p.len);
            let (resp, payload) = self.client.inner.execute(&req, Bytes::new(), deadline).await?;
            if resp.status == Status::Absent {
                continue;
            }
            let keep = (layer.size - p.vol_offset).min(p.len) as usize;
            if keep == payload.len() {
                return Ok(payload);
            }
            let mut b = BytesMut::from(&payload[..]);
            b[keep..].fill(0);
            return Ok(b.freeze());
        }
        Ok(Bytes::from(vec![0u8; p.len as usize]))
    }

    /// Makes sure the head of `object` exists before a clone changes it: if it is absent,
    /// the parents' data for the object is written to its staging version and promoted to
    /// head in one replicated step (so a crash or a concurrent copy-up never leaves a
    /// partial head). Serialized per object within this client.
    pub(crate) async fn copy_up(&self, object: u64, deadline: Instant) -> Result<()> {
        if self.view.present.lock().contains(&object) {
            return Ok(());
        }
        let os = self.rec.object_size;
        // Its own lock table: a read-modify-write holds an `rmw` stripe while it copies up.
        let _held = self.client.inner.copyups.lock(self.rec.id, object * os).await;
        if self.view.present.lock().contains(&object) {
            return Ok(());
        }
        let probe = ObjectRequest::new(OpCode::Read, self.rec.pool_id, self.rec.id, object, SNAP_HEAD, 0, BLOCK_SIZE);
        let (resp, _) = self.client.inner.execute(&probe, Bytes::new(), deadline).await?;
        if resp.status == Status::Absent {
            let chunk = self.request_bytes().min(os);
            let mut staged = false;
            for part in pieces(object * os, object * os + os, os, chunk) {
                let data = self.read_parents(part, deadline).await?;
                for (start, end) in nonzero_runs(&data) {
                    let w = ObjectRequest::new(
                        OpCode::Write,
                        self.rec.pool_id,
                        self.rec.id,
                        object,
                        SNAP_STAGING,
                        part.offset + start as u64,
                        (end - start) as u64,
                    );
                    self.client.inner.execute(&w, data.slice(start..end), deadline).await?;
                    staged = true;
                }
            }
            if staged {
                let (pool, id) = (self.rec.pool_id, self.rec.id);
                self.execute_with_context(
                    |snapc| ObjectRequest { snapc, ..ObjectRequest::new(OpCode::Promote, pool, id, object, SNAP_HEAD, 0, 0) },
                    Bytes::new(),
                    deadline,
                )
                .await?;
            }
        }
        self.view.present.lock().insert(object);
        Ok(())
    }
}

/// Byte ranges of `data` (4 KiB aligned) whose blocks are not all zeros.
fn nonzero_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let bs = BLOCK_SIZE as usize;
    let zero = |i: usize| data[i..i + bs].iter().all(|b| *b == 0);
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if zero(i) {
            i += bs;
            continue;
        }
        let start = i;
        while i < data.len() && !zero(i) {
            i += bs;
        }
        out.push((start, i));
    }
    out
}
