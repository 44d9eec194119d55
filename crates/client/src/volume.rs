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
use tessera_wire::OpCode;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::fanout;
use crate::plan::{align_down, align_up, edges, Partial};
use crate::route::ObjectRequest;
use crate::split::{pieces, Piece};
use crate::{BLOCK_SIZE, SNAP_HEAD};

/// A handle on one volume; cheap to clone, usable from many tasks at once.
#[derive(Clone, Debug)]
pub struct Volume {
    client: Client,
    rec: Arc<VolumeRecord>,
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
        Ok(Volume { client, rec: Arc::new(rec) })
    }

    pub fn id(&self) -> u64 {
        self.rec.id
    }

    pub fn name(&self) -> &str {
        &self.rec.name
    }

    /// Bytes, as of when the volume was opened.
    pub fn size(&self) -> u64 {
        self.rec.size
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
        if len == 0 {
            return Ok(());
        }
        let deadline = self.deadline();
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
        if len == 0 {
            return Ok(());
        }
        let deadline = self.deadline();
        let e = edges(offset, len);
        let mut jobs: Vec<Job> = e.head.into_iter().map(|h| Job::Patch(h, None)).collect();
        jobs.extend(pieces(e.middle.start, e.middle.end, self.rec.object_size, u64::MAX).into_iter().map(Job::Zero));
        jobs.extend(e.tail.into_iter().map(|t| Job::Patch(t, None)));
        self.run(jobs, deadline).await.map(drop)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.rec.size => Ok(()),
            _ => Err(ClientError::OutOfRange { volume: self.rec.id, offset, len, size: self.rec.size }),
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

    /// One object request for piece `p`; returns the response data.
    async fn send(&self, op: OpCode, p: Piece, data: Bytes, deadline: Instant) -> Result<Bytes> {
        let req = ObjectRequest {
            op,
            pool: self.rec.pool_id,
            volume: self.rec.id,
            object: p.object,
            snap: SNAP_HEAD,
            offset: p.offset,
            len: p.len,
        };
        let (_, payload) = self.client.inner.execute(&req, data, deadline).await?;
        Ok(payload)
    }
}
