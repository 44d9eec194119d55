//! Formatting a device and recovering the engine's state from it.
//!
//! Recovery = load the checkpoint named by the valid slot with the highest generation, then
//! replay, in sequence order, every complete batch written after it. A batch counts only if
//! its header matches its checksum and its sequence number is the next expected one; the
//! first batch that fails ends the log (it was torn or never synced, so it was never
//! acknowledged). A device *error* while reading aborts recovery instead: an unreadable log
//! must not be mistaken for its end.
//!
//! A batch whose header is valid but some of whose data blocks do not match their checksums
//! is torn only if it is the last one: the committer writes a batch only after the previous
//! one was synced (one batch in flight), so a batch followed by a valid batch was complete and
//! synced, and a bad block in it is media corruption. Such a batch is replayed like any other
//! (the index keeps the header's checksums, so every read of a bad block fails with
//! `Checksum`, as for corruption found after a checkpoint); ending the log there would
//! silently forget acknowledged transactions after it (for a Raft replica: entries and votes
//! it acknowledged). A bad block in the *last* batch is indistinguishable from a torn write
//! and ends the log.

use crate::codec::crc_of;
use crate::device::{AlignedBuf, Device};
use crate::error::{EngineError, FormatError, Result};
use crate::format::batch::{decode_header, decode_prelude, BatchHeader};
use crate::format::checkpoint::{LogPos, Slot};
use crate::format::superblock::Superblock;
use crate::format::{SEGMENTS_START, SLOT_OFFSETS};
use crate::ids::{BLOCK, BLOCK_SIZE};
use crate::segments::{Geometry, SegState, SegmentTable};
use crate::state::apply_batch;
use crate::state::State;

/// How to lay out a new device.
#[derive(Clone, Copy, Debug)]
pub struct FormatOptions {
    /// Bytes per segment (multiple of 4096, at least 64 KiB). Bounds the largest transaction.
    pub segment_size: u64,
}

impl Default for FormatOptions {
    fn default() -> Self {
        Self { segment_size: 16 << 20 }
    }
}

/// The fewest segments a device may have (log, next, checkpoint, cleaner reserve, slack).
pub const MIN_SEGMENTS: u32 = 8;

/// Where the log continues: the next batch goes at block `off_blocks` of segment `seg`
/// (or at the start of `next_seg` if it does not fit) with sequence number `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogHead {
    pub seg: u32,
    pub off_blocks: u64,
    pub next_seg: u32,
    pub seq: u64,
}

/// Everything the committer needs to continue where the device left off.
pub(crate) struct Recovered {
    pub sb: Superblock,
    pub geo: Geometry,
    pub state: State,
    pub table: SegmentTable,
    pub head: LogHead,
    pub gen: u64,
    pub ckpt_segs: Vec<u32>,
    pub replayed: u64,
}

pub(crate) fn read_superblock(dev: &dyn Device) -> Result<Superblock> {
    let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
    dev.read_at(0, &mut b)?;
    Superblock::decode(&b).map_err(|e| EngineError::NotFormatted(e.to_string()))
}

impl FormatOptions {
    /// Checks these options against a device of `dev_len` bytes; returns the segment count.
    pub fn validate(&self, dev_len: u64) -> Result<u32> {
        let ss = self.segment_size;
        if !ss.is_multiple_of(BLOCK) || ss < 64 * 1024 {
            return Err(EngineError::BadFormatOptions(format!("segment size {ss} must be a multiple of 4096 and at least 65536")));
        }
        let count = dev_len.saturating_sub(SEGMENTS_START) / ss;
        if count < MIN_SEGMENTS as u64 || count > u32::MAX as u64 {
            return Err(EngineError::BadFormatOptions(format!(
                "a device of {dev_len} bytes holds {count} segments of {ss} bytes; at least {MIN_SEGMENTS} are needed"
            )));
        }
        Ok(count as u32)
    }
}

/// Writes a fresh, empty engine onto `dev`, destroying what was there.
pub fn format(dev: &dyn Device, opts: FormatOptions) -> Result<()> {
    let ss = opts.segment_size;
    let count = opts.validate(dev.len())?;
    let sb = Superblock { uuid: rand::random(), segment_size: ss, segment_count: count };
    let geo = Geometry { seg_blocks: ss / BLOCK, seg_count: count };
    let blob = State::new(geo).encode();
    let mut buf = AlignedBuf::zeroed(blob.len());
    buf[..blob.len()].copy_from_slice(&blob);
    dev.write_at(geo.seg_offset(0), &buf)?;
    let slot = Slot {
        uuid: sb.uuid,
        gen: 1,
        seq: 0,
        head: LogPos { seg: 1, off: 0 },
        next_seg: 2,
        blob_len: blob.len() as u64,
        blob_crc: crc_of(&[&blob]),
        blob_segs: vec![0],
    };
    write_block(dev, SLOT_OFFSETS[1], &slot.encode())?;
    write_block(dev, SLOT_OFFSETS[0], &[0; BLOCK_SIZE])?;
    // Neither segment 1 nor 2 may hold a stale batch that looks like sequence 1.
    write_block(dev, geo.seg_offset(1), &[0; BLOCK_SIZE])?;
    write_block(dev, geo.seg_offset(2), &[0; BLOCK_SIZE])?;
    dev.sync()?;
    write_block(dev, 0, &sb.encode())?;
    dev.sync()?;
    Ok(())
}

fn write_block(dev: &dyn Device, off: u64, bytes: &[u8]) -> Result<()> {
    let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
    b[..bytes.len()].copy_from_slice(bytes);
    Ok(dev.write_at(off, &b)?)
}

/// The valid slot with the highest generation, and why the other slot is unreadable when it
/// might have held a newer checkpoint (`None` when both are valid, or when the other is the
/// slot `format` zeroed and no checkpoint has been written since).
fn best_slot(dev: &dyn Device, uuid: u128) -> Result<(Slot, Option<String>)> {
    let mut best: Option<Slot> = None;
    let mut errs = Vec::new();
    let mut zeroed = 0;
    for off in SLOT_OFFSETS {
        let mut b = AlignedBuf::zeroed(BLOCK_SIZE);
        dev.read_at(off, &mut b)?;
        match Slot::decode(&b, uuid) {
            Ok(s) if best.as_ref().is_none_or(|b| s.gen > b.gen) => best = Some(s),
            Ok(_) => {}
            Err(e) => {
                zeroed += usize::from(b.iter().all(|x| *x == 0));
                errs.push(e.to_string());
            }
        }
    }
    let best = best.ok_or_else(|| EngineError::NotFormatted(format!("no valid checkpoint slot: {}", errs.join("; "))))?;
    let pristine = best.gen == 1 && zeroed == errs.len();
    Ok((best, (!errs.is_empty() && !pristine).then(|| errs.join("; "))))
}

/// After replaying from the older checkpoint because the other slot is unreadable: fails if
/// any segment starts with an intact batch at or beyond `next_seq` (the first batch the
/// replay did not find). Such a batch was committed after the lost checkpoint, in a segment
/// the log had moved on to, so the replay stopped short of it. Reads one batch per segment.
fn check_nothing_beyond(dev: &dyn Device, sb: &Superblock, geo: Geometry, next_seq: u64, slot_error: String, gen: u64) -> Result<()> {
    for seg in 0..geo.seg_count {
        let mut first = AlignedBuf::zeroed(BLOCK_SIZE);
        dev.read_at(geo.seg_offset(seg), &mut first)?;
        let Ok(p) = decode_prelude(&first, sb.uuid) else { continue };
        if p.seq < next_seq {
            continue;
        }
        if read_batch(dev, sb, geo, seg, 0, p.seq)?.is_some_and(|b| b.bad_blocks == 0) {
            return Err(EngineError::LogIncomplete { slot_error, gen, replayed_to: next_seq - 1, segment: seg, found: p.seq });
        }
    }
    Ok(())
}

fn load_blob(dev: &dyn Device, geo: Geometry, slot: &Slot) -> Result<State> {
    let len = slot.blob_len as usize;
    if slot.blob_segs.len() as u64 * geo.seg_bytes() < slot.blob_len || slot.blob_segs.iter().any(|s| *s >= geo.seg_count) {
        return Err(FormatError::Invalid { what: "checkpoint slot", why: "blob does not fit its segments".into() }.into());
    }
    let mut blob = Vec::with_capacity(len);
    for s in &slot.blob_segs {
        let n = (len - blob.len()).min(geo.seg_bytes() as usize);
        let mut b = AlignedBuf::zeroed(n);
        dev.read_at(geo.seg_offset(*s), &mut b)?;
        blob.extend_from_slice(&b[..n]);
    }
    let computed = crc_of(&[&blob]);
    if computed != slot.blob_crc {
        return Err(FormatError::BadCrc { what: "checkpoint blob", stored: slot.blob_crc, computed }.into());
    }
    Ok(State::decode(&blob, geo)?)
}

/// A batch found in the log: its header, the device block of its first data block, and how
/// many of its data blocks do not match their checksums.
pub(crate) struct FoundBatch {
    pub header: BatchHeader,
    pub base: u64,
    pub bad_blocks: usize,
}

/// Reads the batch at block `off` of `seg` if its header is valid and carries sequence `seq`;
/// `bad_blocks` counts the data blocks that fail their checksums.
pub(crate) fn read_batch(dev: &dyn Device, sb: &Superblock, geo: Geometry, seg: u32, off: u64, seq: u64) -> Result<Option<FoundBatch>> {
    if off >= geo.seg_blocks {
        return Ok(None);
    }
    let at = geo.seg_offset(seg) + off * BLOCK;
    let mut first = AlignedBuf::zeroed(BLOCK_SIZE);
    dev.read_at(at, &mut first)?;
    let pre = match decode_prelude(&first, sb.uuid) {
        Ok(p) if p.seq == seq && off + p.total_blocks as u64 <= geo.seg_blocks => p,
        _ => return Ok(None),
    };
    let mut all = AlignedBuf::zeroed(pre.total_blocks as usize * BLOCK_SIZE);
    dev.read_at(at, &mut all)?;
    let Ok(h) = decode_header(&all, sb.uuid) else { return Ok(None) };
    let data = &all[h.header_blocks as usize * BLOCK_SIZE..];
    let bad_blocks =
        h.data_crcs.iter().enumerate().filter(|(i, c)| crc32c::crc32c(&data[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]) != **c).count();
    if h.next_seg >= geo.seg_count {
        return Err(FormatError::Invalid { what: "batch header", why: format!("next segment {} of {}", h.next_seg, geo.seg_count) }.into());
    }
    let base = geo.block_of(seg, off + h.header_blocks as u64);
    Ok(Some(FoundBatch { header: h, base, bad_blocks }))
}

/// The batch with sequence `seq` at (`seg`, `off`) or at the start of `next`, with the
/// segment it was found in. An intact batch wins; a batch with bad data blocks counts only if
/// a batch with sequence `seq + 1` follows it (then it was synced and its bad blocks are
/// corruption; otherwise it is a torn tail). Both places matter: after a torn batch ended the
/// log, the batch written in its place may have gone to the next segment, leaving the torn
/// one (same sequence number) where it was.
fn find_batch(
    dev: &dyn Device,
    sb: &Superblock,
    geo: Geometry,
    (seg, off, next): (u32, u64, u32),
    seq: u64,
) -> Result<Option<(FoundBatch, u32)>> {
    let here = read_batch(dev, sb, geo, seg, off, seq)?.map(|b| (b, seg, off));
    let there = read_batch(dev, sb, geo, next, 0, seq)?.map(|b| (b, next, 0));
    let mut bad = Vec::new();
    for c in [here, there].into_iter().flatten() {
        if c.0.bad_blocks == 0 {
            return Ok(Some((c.0, c.1)));
        }
        bad.push(c);
    }
    for (b, at, at_off) in bad {
        let after = (at_off + b.header.total_blocks() as u64, b.header.next_seg);
        if read_batch(dev, sb, geo, at, after.0, seq + 1)?.is_some() || read_batch(dev, sb, geo, after.1, 0, seq + 1)?.is_some() {
            return Ok(Some((b, at)));
        }
    }
    Ok(None)
}

pub(crate) fn recover(dev: &dyn Device) -> Result<Recovered> {
    let sb = read_superblock(dev)?;
    let geo = Geometry { seg_blocks: sb.segment_size / BLOCK, seg_count: sb.segment_count };
    if geo.seg_offset(sb.segment_count) > dev.len() {
        return Err(EngineError::NotFormatted(format!("superblock geometry exceeds device of {} bytes", dev.len())));
    }
    let (slot, other_unreadable) = best_slot(dev, sb.uuid)?;
    if slot.head.seg >= geo.seg_count || slot.next_seg >= geo.seg_count || slot.head.off % BLOCK != 0 {
        return Err(FormatError::Invalid { what: "checkpoint slot", why: "log position outside the device".into() }.into());
    }
    let mut state = load_blob(dev, geo, &slot)?;
    let (mut seg, mut off, mut next, mut seq) = (slot.head.seg, slot.head.off / BLOCK, slot.next_seg, slot.seq + 1);
    let mut chain = Vec::new();
    let mut replayed = 0;
    let mut corrupt_blocks = 0;
    loop {
        let Some((b, at)) = find_batch(dev, &sb, geo, (seg, off, next), seq)? else { break };
        let h = b.header;
        if b.bad_blocks > 0 {
            // Followed by a valid batch (else `find_batch` ends the log): media corruption.
            tracing::warn!(seq, bad = b.bad_blocks, "a synced log batch has data blocks that fail their checksums (media corruption): replayed; reads of those blocks will fail");
            corrupt_blocks += b.bad_blocks;
        }
        if at != seg {
            chain.push(seg);
            (seg, off) = (at, 0);
        }
        apply_batch(&mut state, &h.ops, b.base, &h.data_crcs);
        off += h.total_blocks() as u64;
        next = h.next_seg;
        seq += 1;
        replayed += 1;
    }
    if let Some(why) = other_unreadable {
        tracing::warn!(gen = slot.gen, error = %why, "a checkpoint slot is unreadable: recovering from the other one, checking that its log is complete");
        check_nothing_beyond(dev, &sb, geo, seq, why, slot.gen)?;
    }
    let mut table = SegmentTable::new(geo.seg_count);
    for s in &slot.blob_segs {
        table.set(*s, SegState::Ckpt);
    }
    for s in chain {
        table.set(s, SegState::Chain);
    }
    table.set(seg, SegState::Active);
    table.set(next, SegState::Next);
    table.reclaim(state.seg_live());
    tracing::info!(replayed, seq, gen = slot.gen, corrupt_blocks, "engine recovered");
    let head = LogHead { seg, off_blocks: off, next_seg: next, seq };
    Ok(Recovered { sb, geo, state, table, head, gen: slot.gen, ckpt_segs: slot.blob_segs, replayed })
}
