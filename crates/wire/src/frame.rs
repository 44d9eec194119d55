//! [`Frame`], its header, the streaming [`FrameDecoder`] and the vectored encoder.

use bytes::{Buf, Bytes, BytesMut};

/// "TSW1" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TSW1");
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;

/// Why a byte stream was rejected. Every variant means: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a tessera frame: magic {found:#010x}, expected {MAGIC:#010x}")]
    BadMagic { found: u32 },
    #[error("frame version {found} is not supported (this side speaks version {VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("reserved header bytes are not zero (request {request_id})")]
    ReservedNotZero { request_id: u64 },
    #[error("frame {what} of {len} bytes exceeds the limit of {max} (request {request_id})")]
    TooLarge { what: &'static str, len: u64, max: u64, request_id: u64 },
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("frame data checksum mismatch (request {request_id}): stored {stored:#010x}, computed {computed:#010x}")]
    DataChecksum { request_id: u64, stored: u32, computed: u32 },
    #[error(
        "block {block} of frame data does not match its checksum (request {request_id}): stored {stored:#010x}, computed {computed:#010x}"
    )]
    BlockChecksum { request_id: u64, block: usize, stored: u32, computed: u32 },
    #[error("frame with per-block checksums carries {len} bytes of data, not a multiple of {BLOCK} (request {request_id})")]
    NotBlocks { request_id: u64, len: u64 },
}

/// Flag of a frame whose data is whole 4 KiB blocks, each with its own CRC32C: the frame
/// carries a table of them (`u32` LE per block, in block order) between `meta` and `data`,
/// and `data_crc` is the CRC32C of that table. The decoder checks every block against its
/// entry, so a frame with this flag is exactly as covered as one without, and the receiver
/// has each block's checksum without computing it: the end-to-end checksum a client
/// computed once travels with the block to every replica's engine (see ARCHITECTURE.md,
/// "End-to-end checksums").
pub const FLAG_BLOCK_CRCS: u16 = 0x8000;
/// Size of a block under [`FLAG_BLOCK_CRCS`].
pub const BLOCK: usize = 4096;

/// The checksum table of `data` (a multiple of [`BLOCK`] bytes) for [`FLAG_BLOCK_CRCS`].
pub fn block_crc_table(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / BLOCK * 4);
    for block in data.chunks(BLOCK) {
        out.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    out
}

/// The entries of a checksum table, in block order.
pub fn table_crcs(table: &[u8]) -> impl ExactSizeIterator<Item = u32> + '_ {
    table.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// A decoded message: type, flags, request id, and its two payload parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u16,
    pub request_id: u64,
    pub meta: Bytes,
    pub data: Bytes,
    /// With [`FLAG_BLOCK_CRCS`]: the verified checksum table of `data` (see
    /// [`table_crcs`]); else empty.
    pub block_crcs: Bytes,
}

/// The 40 header bytes of one frame, ready to be sent ahead of `meta` and `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader(pub [u8; HEADER_LEN]);

impl FrameHeader {
    /// Builds the header of a frame whose data is the concatenation of `data` (several
    /// buffers, e.g. blocks, are checksummed in place and sent with one vectored write).
    ///
    /// Panics never; lengths beyond `u32::MAX` are the caller's bug and are reported by
    /// the receiving decoder as `TooLarge` (they are saturated here).
    pub fn new(kind: u8, flags: u16, request_id: u64, meta: &[u8], data: &[&[u8]]) -> FrameHeader {
        let data_len: usize = data.iter().map(|d| d.len()).sum();
        let data_crc = data.iter().fold(0u32, |crc, d| crc32c::crc32c_append(crc, d));
        FrameHeader::build(kind, flags, request_id, meta, data_len, data_crc)
    }

    /// The header of a frame with [`FLAG_BLOCK_CRCS`]: `table` is the checksum table of the
    /// `data_len` bytes of blocks that follow it (sent as header, meta, table, data).
    pub fn with_block_crcs(kind: u8, flags: u16, request_id: u64, meta: &[u8], table: &[u8], data_len: usize) -> FrameHeader {
        FrameHeader::build(kind, flags | FLAG_BLOCK_CRCS, request_id, meta, data_len, crc32c::crc32c(table))
    }

    /// The header of a frame carrying block data `data` with its checksum table `table`
    /// ([`FLAG_BLOCK_CRCS`]), or, when `table` is empty, other data checksummed as a whole.
    pub fn for_data(kind: u8, flags: u16, request_id: u64, meta: &[u8], table: &[u8], data: &[u8]) -> FrameHeader {
        if table.is_empty() {
            FrameHeader::new(kind, flags, request_id, meta, &[data])
        } else {
            FrameHeader::with_block_crcs(kind, flags, request_id, meta, table, data.len())
        }
    }

    fn build(kind: u8, flags: u16, request_id: u64, meta: &[u8], data_len: usize, data_crc: u32) -> FrameHeader {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4] = VERSION;
        h[5] = kind;
        h[6..8].copy_from_slice(&flags.to_le_bytes());
        h[8..16].copy_from_slice(&request_id.to_le_bytes());
        h[16..20].copy_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_le_bytes());
        h[20..24].copy_from_slice(&u32::try_from(data_len).unwrap_or(u32::MAX).to_le_bytes());
        h[24..28].copy_from_slice(&data_crc.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..36]), meta);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        FrameHeader(h)
    }
}

impl Frame {
    /// A frame with [`FLAG_BLOCK_CRCS`] whose checksum table is computed from `data` (a
    /// multiple of [`BLOCK`] bytes).
    pub fn with_block_crcs(kind: u8, flags: u16, request_id: u64, meta: Bytes, data: Bytes) -> Frame {
        let block_crcs = Bytes::from(block_crc_table(&data));
        Frame { kind, flags: flags | FLAG_BLOCK_CRCS, request_id, meta, data, block_crcs }
    }

    /// The whole frame in one buffer (tests, small control messages). Hot paths send
    /// [`FrameHeader`], `meta` and the data buffers with one vectored write instead. With
    /// [`FLAG_BLOCK_CRCS`], `block_crcs` is sent as it is.
    pub fn encode(&self) -> Vec<u8> {
        let h = if self.flags & FLAG_BLOCK_CRCS != 0 {
            FrameHeader::with_block_crcs(self.kind, self.flags, self.request_id, &self.meta, &self.block_crcs, self.data.len())
        } else {
            FrameHeader::new(self.kind, self.flags, self.request_id, &self.meta, &[&self.data])
        };
        let mut out = Vec::with_capacity(HEADER_LEN + self.meta.len() + self.block_crcs.len() + self.data.len());
        out.extend_from_slice(&h.0);
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(&self.block_crcs);
        out.extend_from_slice(&self.data);
        out
    }
}

/// Parsed and validated header fields.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    kind: u8,
    flags: u16,
    request_id: u64,
    meta_len: usize,
    data_len: usize,
    data_crc: u32,
    header_crc: u32,
}

/// Cuts frames out of a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_meta: u32,
    max_data: u32,
    /// Header of the frame whose body is still arriving.
    pending: Option<Parsed>,
}

impl FrameDecoder {
    /// `max_meta` / `max_data`: the largest parts accepted; larger frames are `TooLarge`.
    pub fn new(max_meta: u32, max_data: u32) -> Self {
        FrameDecoder { max_meta, max_data, pending: None }
    }

    fn parse_header(&self, h: &[u8]) -> Result<Parsed, WireError> {
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if h[4] != VERSION {
            return Err(WireError::UnsupportedVersion { found: h[4] });
        }
        let request_id = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        if h[28..36].iter().any(|b| *b != 0) {
            return Err(WireError::ReservedNotZero { request_id });
        }
        let (meta_len, data_len) = (u32_at(16), u32_at(20));
        if meta_len > self.max_meta {
            return Err(WireError::TooLarge { what: "meta", len: meta_len.into(), max: self.max_meta.into(), request_id });
        }
        if data_len > self.max_data {
            return Err(WireError::TooLarge { what: "data", len: data_len.into(), max: self.max_data.into(), request_id });
        }
        let flags = u16::from_le_bytes([h[6], h[7]]);
        if flags & FLAG_BLOCK_CRCS != 0 && !(data_len as usize).is_multiple_of(BLOCK) {
            return Err(WireError::NotBlocks { request_id, len: data_len.into() });
        }
        Ok(Parsed {
            kind: h[5],
            flags,
            request_id,
            meta_len: meta_len as usize,
            data_len: data_len as usize,
            data_crc: u32_at(24),
            header_crc: u32_at(36),
        })
    }

    /// Takes the next complete frame off the front of `buf`. `Ok(None)`: more bytes are
    /// needed (and `buf` has been reserved for them when the size is known). Partial input
    /// stays in `buf` (the validated header is remembered).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let p = match self.pending {
            Some(p) => p,
            None => {
                if buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let p = self.parse_header(&buf[..HEADER_LEN])?;
                self.pending = Some(p);
                p
            }
        };
        let blocks = p.flags & FLAG_BLOCK_CRCS != 0;
        let table_len = if blocks { p.data_len / BLOCK * 4 } else { 0 };
        let total = HEADER_LEN + p.meta_len + table_len + p.data_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        self.pending = None;
        let computed = crc32c::crc32c_append(crc32c::crc32c(&buf[..36]), &buf[HEADER_LEN..HEADER_LEN + p.meta_len]);
        if computed != p.header_crc {
            return Err(WireError::HeaderChecksum { stored: p.header_crc, computed });
        }
        let data_start = HEADER_LEN + p.meta_len;
        // Without the flag this covers the data; with it, the table, and the table the blocks.
        let covered = if blocks { table_len } else { p.data_len };
        let computed = crc32c::crc32c(&buf[data_start..data_start + covered]);
        if computed != p.data_crc {
            return Err(WireError::DataChecksum { request_id: p.request_id, stored: p.data_crc, computed });
        }
        if blocks {
            let (table, data) = buf[data_start..total].split_at(table_len);
            for (block, (stored, bytes)) in table_crcs(table).zip(data.chunks_exact(BLOCK)).enumerate() {
                let computed = crc32c::crc32c(bytes);
                if computed != stored {
                    return Err(WireError::BlockChecksum { request_id: p.request_id, block, stored, computed });
                }
            }
        }
        buf.advance(HEADER_LEN);
        let meta = buf.split_to(p.meta_len).freeze();
        let block_crcs = buf.split_to(table_len).freeze();
        let data = buf.split_to(p.data_len).freeze();
        Ok(Some(Frame { kind: p.kind, flags: p.flags, request_id: p.request_id, meta, data, block_crcs }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_header_equals_contiguous() {
        let (a, b) = (vec![1u8; 4096], vec![2u8; 4096]);
        let joined: Vec<u8> = a.iter().chain(&b).copied().collect();
        assert_eq!(FrameHeader::new(3, 7, 9, b"meta", &[&a, &b]), FrameHeader::new(3, 7, 9, b"meta", &[&joined]));
    }

    #[test]
    fn oversized_lengths_are_refused_from_the_header_alone() {
        let f = Frame {
            kind: 1,
            flags: 0,
            request_id: 5,
            meta: Bytes::from_static(b"m"),
            data: Bytes::from(vec![0u8; 100]),
            block_crcs: Bytes::new(),
        };
        let enc = f.encode();
        let mut dec = FrameDecoder::new(16, 64);
        // Only the header has arrived: the decoder refuses before waiting for (or buffering) the body.
        let mut buf = BytesMut::from(&enc[..HEADER_LEN]);
        assert_eq!(dec.decode(&mut buf), Err(WireError::TooLarge { what: "data", len: 100, max: 64, request_id: 5 }));
        let mut buf = BytesMut::from(&enc[..]);
        assert_eq!(FrameDecoder::new(16, 100).decode(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
    }
}
