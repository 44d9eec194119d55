//! Scrub digests of one PG replica ([`tessera_wire::OpCode::Digest`]) and the full check of a
//! pinned image that a leader runs before it lends that image to a repair.
//!
//! A digest always describes one pinned image of the PG ([`Engine::pin_pg`]: objects, frozen
//! versions and markers, taken together with the applied index under one lock). Two replicas
//! that report the same applied index therefore must report the same entries: replicated
//! state is a function of the applied log prefix. Reads go through the engine's checksum
//! verification; a block that fails it becomes a [`DigestKind::Corrupt`] entry (never a
//! digest of wrong bytes) and is reported to the caller so the replica can mark the PG
//! damaged.
//!
//! Content digests ignore how zeros are stored: a hole and an allocated block of zeros read
//! alike, and a PG copied to a new replica writes only non-zero blocks, so the digest covers
//! the content up to the end of the last non-zero block ([`DigestEntry::len`]).

use tessera_engine::{Engine, EngineError, ObjectKey, PgId, BLOCK, BLOCK_SIZE};
use tessera_wire::{DigestEntry, DigestKind, DigestPage, Status};
use xxhash_rust::xxh64::Xxh64;

/// Content bytes read for one page at most (a page ends after the version that passes it).
pub const PAGE_BYTES: u64 = 128 << 20;
/// Entries per page at most (well under [`DigestPage::MAX_ENTRIES`]).
pub const PAGE_ENTRIES: usize = 65_536;
/// Bytes per engine read.
const READ_CHUNK: u64 = 1 << 20;

static ZERO_BLOCK: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// A block of a version that failed its checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptBlock {
    pub pg: PgId,
    pub key: ObjectKey,
    /// Byte offset of the block within the version.
    pub offset: u64,
}

impl std::fmt::Display for CorruptBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "object {} block at offset {} fails its checksum", self.key, self.offset)
    }
}

/// XXH64 of a version's content up to its last non-zero block: trailing zero blocks are
/// held back and hashed only if a non-zero block follows.
pub struct ContentHash {
    h: Xxh64,
    len: u64,
    zeros: u64,
}

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash { h: Xxh64::new(0), len: 0, zeros: 0 }
    }
}

impl ContentHash {
    /// Adds `data` (whole 4 KiB blocks).
    pub fn update(&mut self, data: &[u8]) {
        for b in data.chunks(BLOCK_SIZE) {
            if b.iter().all(|x| *x == 0) {
                self.zeros += 1;
                continue;
            }
            for _ in 0..self.zeros {
                self.h.update(&ZERO_BLOCK);
            }
            self.len += (self.zeros + 1) * BLOCK;
            self.zeros = 0;
            self.h.update(b);
        }
    }
    /// `(len, hash)`.
    pub fn finish(&self) -> (u64, u64) {
        (self.len, self.h.digest())
    }
}

/// What reading one version found.
enum Version {
    Data { len: u64, hash: u64 },
    Corrupt { offset: u64 },
}

type Failure = (Status, String);

fn pin_gone(pin: u64) -> Failure {
    (Status::Retry, format!("pinned image {pin} is gone (expired, or the OSD restarted)"))
}

/// Reads version `key` of pinned image `pin` (`extent_end` bytes) with checksum verification.
fn read_version(engine: &Engine, pin: u64, key: ObjectKey, extent_end: u64) -> Result<(Version, u64), Failure> {
    let end = extent_end.div_ceil(BLOCK) * BLOCK;
    let mut h = ContentHash::default();
    let mut offset = 0;
    while offset < end {
        let len = READ_CHUNK.min(end - offset);
        match engine.read_pinned(pin, key, offset, len) {
            Ok(Some(data)) => h.update(&data),
            Ok(None) => return Err((Status::Io, format!("{key} vanished from pinned image {pin}"))),
            Err(EngineError::Checksum { offset, .. }) => return Ok((Version::Corrupt { offset }, offset + BLOCK)),
            Err(EngineError::Invalid { .. }) => return Err(pin_gone(pin)),
            Err(e) => return Err((Status::Io, e.to_string())),
        }
        offset += len;
    }
    let (len, hash) = h.finish();
    Ok((Version::Data { len, hash }, end))
}

/// The versions of pinned image `pin` from `start` on, in key order (`None`: a marker).
fn listing(engine: &Engine, pin: u64, start: ObjectKey) -> Result<Vec<(ObjectKey, Option<u64>)>, Failure> {
    let objects = engine.pinned_objects(pin).ok_or_else(|| pin_gone(pin))?;
    let markers = engine.pinned_markers(pin).ok_or_else(|| pin_gone(pin))?;
    let mut all: Vec<(ObjectKey, Option<u64>)> = objects
        .into_iter()
        .map(|(k, i)| (k, Some(i.extent_end)))
        .chain(markers.into_iter().map(|k| (k, None)))
        .filter(|(k, _)| *k >= start)
        .collect();
    all.sort_by_key(|(k, _)| *k);
    Ok(all)
}

/// One page of the digest of pinned image `pin` of `pg` (taken at applied index `applied`),
/// from key `start` on, and the corrupt blocks it found. The caller sets
/// [`DigestPage::damaged`] and releases the pin after the last page.
pub fn digest_page(
    engine: &Engine,
    pg: PgId,
    pin: u64,
    applied: u64,
    start: ObjectKey,
) -> Result<(DigestPage, Vec<CorruptBlock>), Failure> {
    let mut page = DigestPage { applied, pin, ..Default::default() };
    let mut corrupt = Vec::new();
    let mut read = 0u64;
    for (key, extent) in listing(engine, pin, start)? {
        if page.entries.len() >= PAGE_ENTRIES || read >= PAGE_BYTES {
            page.next = Some((key.volume, key.object, key.snap));
            break;
        }
        let entry = |kind, len, hash| DigestEntry { volume: key.volume, object: key.object, snap: key.snap, kind, len, hash };
        let Some(extent_end) = extent else {
            page.entries.push(entry(DigestKind::Marker, 0, 0));
            continue;
        };
        let (v, bytes) = read_version(engine, pin, key, extent_end)?;
        read += bytes;
        page.entries.push(match v {
            Version::Data { len, hash } => entry(DigestKind::Data, len, hash),
            Version::Corrupt { offset } => {
                corrupt.push(CorruptBlock { pg, key, offset });
                entry(DigestKind::Corrupt, offset, 0)
            }
        });
    }
    Ok((page, corrupt))
}

/// Reads every version of pinned image `pin` of `pg` with checksum verification (what a
/// repair copy of it would read); returns the first corrupt block, if any.
pub fn check_image(engine: &Engine, pg: PgId, pin: u64) -> Result<Option<CorruptBlock>, Failure> {
    for (key, extent) in listing(engine, pin, ObjectKey::at_snap(0, 0, 0))? {
        if let Some(extent_end) = extent {
            if let (Version::Corrupt { offset }, _) = read_version(engine, pin, key, extent_end)? {
                return Ok(Some(CorruptBlock { pg, key, offset }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_engine::{AlignedBuf, Device, EngineConfig, FormatOptions, MemDevice, Op, Txn, SNAP_HEAD};

    fn hash_of(data: &[u8]) -> (u64, u64) {
        let mut h = ContentHash::default();
        h.update(data);
        h.finish()
    }

    #[test]
    fn content_hash_ignores_trailing_zeros_but_not_inner_ones() {
        let a = [vec![1u8; 4096], vec![0u8; 4096], vec![2u8; 4096]].concat();
        let with_tail = [a.clone(), vec![0u8; 8192]].concat();
        assert_eq!(hash_of(&a), hash_of(&with_tail));
        assert_eq!(hash_of(&a).0, 3 * 4096);
        assert_eq!(hash_of(&[]), hash_of(&[0u8; 4096]));
        assert_eq!(hash_of(&[]).0, 0);
        let shifted = [vec![0u8; 4096], vec![1u8; 4096], vec![2u8; 4096]].concat();
        assert_ne!(hash_of(&a), hash_of(&shifted));
        // Fed in pieces or at once: the same.
        let mut h = ContentHash::default();
        h.update(&with_tail[..4096]);
        h.update(&with_tail[4096..]);
        assert_eq!(h.finish(), hash_of(&a));
    }

    #[test]
    fn pages_cover_every_version_once_and_report_corrupt_blocks() {
        let dev = Arc::new(MemDevice::new(32 << 20));
        let engine = Engine::create(dev.clone(), FormatOptions { segment_size: 1 << 20 }, EngineConfig::default()).unwrap();
        let pg = PgId::new(1, 0);
        let mut txn = Txn::new();
        for o in 0..5u64 {
            txn.push(Op::Write { pg, key: ObjectKey::head(7, o), offset: 0, data: vec![o as u8 + 1; 8192].into() });
        }
        txn.push(Op::Mark { pg, key: ObjectKey::at_snap(7, 9, 3) });
        engine.commit(txn).unwrap();
        let (pin, applied) = engine.pin_pg(pg).unwrap();
        let (page, corrupt) = digest_page(&engine, pg, pin, applied, ObjectKey::at_snap(0, 0, 0)).unwrap();
        assert!(corrupt.is_empty());
        assert_eq!(page.next, None);
        assert_eq!(page.entries.len(), 6);
        assert_eq!(page.entries[5].kind, DigestKind::Marker);
        assert_eq!(page.entries[2].len, 8192);
        assert_eq!(page.entries[2].hash, hash_of(&[3u8; 8192]).1);
        // From a later key on.
        let (rest, _) = digest_page(&engine, pg, pin, applied, ObjectKey::at_snap(7, 3, 0)).unwrap();
        assert_eq!(rest.entries, page.entries[3..]);
        // Corrupt object 2's second block on the device: reported, never hashed.
        let key = ObjectKey::at_snap(7, 2, SNAP_HEAD);
        let off = engine.data_blocks().into_iter().find(|b| b.key == key && b.offset == 4096).unwrap().device_offset;
        let mut buf = AlignedBuf::zeroed(4096);
        dev.read_at(off, &mut buf).unwrap();
        buf[17] ^= 4;
        dev.write_at(off, &buf).unwrap();
        let (page, corrupt) = digest_page(&engine, pg, pin, applied, ObjectKey::at_snap(0, 0, 0)).unwrap();
        assert_eq!(corrupt, vec![CorruptBlock { pg, key, offset: 4096 }]);
        assert_eq!((page.entries[2].kind, page.entries[2].len), (DigestKind::Corrupt, 4096));
        assert_eq!(check_image(&engine, pg, pin).unwrap(), Some(CorruptBlock { pg, key, offset: 4096 }));
        engine.unpin(pin);
        assert_eq!(digest_page(&engine, pg, pin, applied, ObjectKey::at_snap(0, 0, 0)).unwrap_err().0, Status::Retry);
    }
}
