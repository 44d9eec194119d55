//! Scrub digests: what one replica says about the content of a PG, so that replicas can be
//! compared without moving their data ([`crate::OpCode::Digest`]).
//!
//! A replica answers from one point-in-time image of the PG (pinned together with its applied
//! index), one [`DigestPage`] per request; a PG with more entries than one page holds (or
//! more data than one page may read) is continued from [`DigestPage::next`] under the same
//! pin.
//!
//! # Page layout (version 1, little-endian)
//! ```text
//! version u8 | flags u8 (bit 0: damaged, bit 1: more pages) | applied u64 | pin u64
//! | next volume u64 | next object u64 | next snap u64    (all 0 without "more")
//! | count u32 | count x entry
//! entry (41 bytes): volume u64 | object u64 | snap u64 | kind u8 | len u64 | hash u64
//! ```

use bytes::BufMut;

use crate::msg::{Dec, MsgError, MAX_DATA};

const PAGE_VERSION: u8 = 1;
const FLAG_DAMAGED: u8 = 1;
const FLAG_MORE: u8 = 2;

/// What one object version of the PG is on one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DigestKind {
    /// A version with content: `len` and `hash` describe it.
    Data = 0,
    /// A frozen "absent at that snapshot" version (`len` and `hash` are 0).
    Marker = 1,
    /// A block of the version failed its checksum on this replica: `len` is the byte offset
    /// of that block in the version, `hash` is 0. The replica marked the PG damaged.
    Corrupt = 2,
}

/// One object version (head, frozen version, clone staging copy or marker) of a PG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DigestEntry {
    pub volume: u64,
    pub object: u64,
    pub snap: u64,
    pub kind: DigestKind,
    /// [`DigestKind::Data`]: bytes up to the end of the last 4 KiB block that is not all
    /// zeros (zeros and holes read alike, so they digest alike); see [`DigestKind`] otherwise.
    pub len: u64,
    /// [`DigestKind::Data`]: XXH64 (seed 0) of the first `len` bytes as read with checksum
    /// verification.
    pub hash: u64,
}

impl DigestEntry {
    pub const LEN: usize = 41;
}

/// One answer to a [`crate::OpCode::Digest`] request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DigestPage {
    /// The replica's applied index at the pinned image the digest describes.
    pub applied: u64,
    /// The pinned image: name it in the request for the next page.
    pub pin: u64,
    /// The replica knows it holds corrupt data of this PG (found now or earlier) and is
    /// repairing itself from a healthy replica.
    pub damaged: bool,
    /// `(volume, object, snap)` where the next page starts; `None` on the last page.
    pub next: Option<(u64, u64, u64)>,
    /// Object versions in key order (volume, object, snap).
    pub entries: Vec<DigestEntry>,
}

impl DigestPage {
    pub const HEADER_LEN: usize = 46;
    /// Most entries one page may carry (the frame's data limit).
    pub const MAX_ENTRIES: usize = (MAX_DATA as usize - Self::HEADER_LEN) / DigestEntry::LEN;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + self.entries.len() * DigestEntry::LEN);
        out.put_u8(PAGE_VERSION);
        out.put_u8(if self.damaged { FLAG_DAMAGED } else { 0 } | if self.next.is_some() { FLAG_MORE } else { 0 });
        out.put_u64_le(self.applied);
        out.put_u64_le(self.pin);
        let (v, o, s) = self.next.unwrap_or_default();
        for x in [v, o, s] {
            out.put_u64_le(x);
        }
        out.put_u32_le(self.entries.len() as u32);
        for e in &self.entries {
            out.put_u64_le(e.volume);
            out.put_u64_le(e.object);
            out.put_u64_le(e.snap);
            out.put_u8(e.kind as u8);
            out.put_u64_le(e.len);
            out.put_u64_le(e.hash);
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<DigestPage, MsgError> {
        const WHAT: &str = "digest page";
        let mut d = Dec::new(data, WHAT);
        let v = d.u8()?;
        if v != PAGE_VERSION {
            return Err(MsgError::Unknown { what: WHAT, field: "version", value: v as u64 });
        }
        let flags = d.u8()?;
        if flags & !(FLAG_DAMAGED | FLAG_MORE) != 0 {
            return Err(MsgError::Unknown { what: WHAT, field: "flags", value: flags as u64 });
        }
        let applied = d.u64()?;
        let pin = d.u64()?;
        let next = (d.u64()?, d.u64()?, d.u64()?);
        let next = match flags & FLAG_MORE != 0 {
            true => Some(next),
            false if next == (0, 0, 0) => None,
            false => return Err(MsgError::Invalid { what: WHAT, why: "a last page names a next key".into() }),
        };
        let n = d.u32()? as usize;
        let rest = data.len() - Self::HEADER_LEN;
        if n.checked_mul(DigestEntry::LEN) != Some(rest) {
            return Err(MsgError::Invalid { what: WHAT, why: format!("{n} entries do not fill {rest} bytes") });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let (volume, object, snap) = (d.u64()?, d.u64()?, d.u64()?);
            let kind = match d.u8()? {
                0 => DigestKind::Data,
                1 => DigestKind::Marker,
                2 => DigestKind::Corrupt,
                k => return Err(MsgError::Unknown { what: WHAT, field: "kind", value: k as u64 }),
            };
            entries.push(DigestEntry { volume, object, snap, kind, len: d.u64()?, hash: d.u64()? });
        }
        d.finish()?;
        Ok(DigestPage { applied, pin, damaged: flags & FLAG_DAMAGED != 0, next, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_cuts_fail() {
        let page = DigestPage {
            applied: 77,
            pin: 3,
            damaged: true,
            next: Some((1, 2, u64::MAX)),
            entries: vec![
                DigestEntry { volume: 1, object: 1, snap: u64::MAX, kind: DigestKind::Data, len: 8192, hash: 0xdead_beef },
                DigestEntry { volume: 1, object: 1, snap: 4, kind: DigestKind::Marker, len: 0, hash: 0 },
                DigestEntry { volume: 1, object: 2, snap: 9, kind: DigestKind::Corrupt, len: 4096, hash: 0 },
            ],
        };
        let enc = page.encode();
        assert_eq!(enc.len(), DigestPage::HEADER_LEN + 3 * DigestEntry::LEN);
        assert_eq!(DigestPage::decode(&enc).unwrap(), page);
        for cut in 0..enc.len() {
            assert!(DigestPage::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let last = DigestPage { next: None, damaged: false, ..page };
        assert_eq!(DigestPage::decode(&last.encode()).unwrap(), last);
        let mut bad = last.encode();
        bad[DigestPage::HEADER_LEN - 5] = 1; // a next key without the "more" flag
        assert!(DigestPage::decode(&bad).is_err());
    }
}
