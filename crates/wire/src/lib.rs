//! Framing of tessera's data RPC: every message between a client and an OSD, or between two
//! OSDs, travels in one [`Frame`] on a long-lived TCP connection. Many requests are in flight
//! per connection; the `request_id` pairs a response with its request (responses may come
//! back in any order).
//!
//! # Frame layout (version 1, little-endian)
//! ```text
//! offset size field
//!  0     4    magic        "TSW1" (0x31575354 as u32 LE)
//!  4     1    version      1
//!  5     1    kind         message type (meaning defined by the protocol layer above)
//!  6     2    flags        bit 15: FLAG_BLOCK_CRCS (below); the rest: message flags
//!  8     8    request_id
//! 16     4    meta_len     bytes of `meta` after the header, <= the decoder's max_meta
//! 20     4    data_len     bytes of `data` after `meta`, <= the decoder's max_data
//! 24     4    data_crc     CRC32C of `data` (0 for empty data); with FLAG_BLOCK_CRCS, of the
//!                          checksum table
//! 28     8    reserved     must be 0
//! 36     4    header_crc   CRC32C of bytes 0..36 followed by `meta`
//! 40          meta         small encoded fields of the message (ids, offsets, epoch, ...)
//! 40+m        table        only with FLAG_BLOCK_CRCS: CRC32C (u32 LE) of each 4 KiB block of
//!                          `data`, data_len / 4096 of them
//! 40+m(+t)    data         bulk payload (block data), kept apart so it can be received into
//!                          and sent from buffers without copying
//! ```
//!
//! Block data (write payloads, read answers) travels with `FLAG_BLOCK_CRCS`: the client
//! computes one CRC32C per 4 KiB block, the decoder checks each block against it, and the
//! OSD stores that same value as the block's checksum (and sends it back with reads), so a
//! block is covered by one checksum from the host to the disk and back.
//!
//! # Contract
//! - The decoder validates the header (magic, version, reserved, lengths against its limits)
//!   **before** buffering the body, so a hostile length never makes it allocate more than
//!   its limits allow.
//! - Every bit of a frame is covered by a checksum: a corrupted frame is an error, never a
//!   different frame. TCP's 16-bit checksum is not trusted to catch everything.
//! - Every [`WireError`] means the byte stream can no longer be trusted: the connection must
//!   be closed. The error says why, for the log.
//! - Nothing here panics on any input (property-tested and fuzzed).

pub mod clock;
pub mod digest;
mod frame;
pub mod msg;
pub mod trace;

pub use digest::{DigestEntry, DigestKind, DigestPage};
pub use frame::{block_crc_table, table_crcs, Frame, FrameDecoder, FrameHeader, WireError, FLAG_BLOCK_CRCS, HEADER_LEN, MAGIC, VERSION};
pub use msg::{
    decode_keep, encode_keep, kind, Heartbeat, MsgError, OpCode, RaftBatch, RaftItem, Request, Response, ScanEntry, Status, UsageEntry,
    WirePg, MAX_KEEP,
};

/// After a vectored write of `n` bytes from the front of `chunks`: drops the chunks written
/// whole and advances the one written in part.
pub fn consume_chunks(chunks: &mut std::collections::VecDeque<bytes::Bytes>, n: usize) {
    use bytes::Buf;
    let mut left = n;
    while left > 0 {
        let Some(front) = chunks.front_mut() else { return };
        if front.len() <= left {
            left -= front.len();
            chunks.pop_front();
        } else {
            front.advance(left);
            left = 0;
        }
    }
}

#[cfg(test)]
mod chunk_tests {
    #[test]
    fn consumed_chunks_leave_exactly_the_unwritten_bytes() {
        let mut c: std::collections::VecDeque<bytes::Bytes> =
            ["abc", "de", "fghi"].iter().map(|s| bytes::Bytes::from_static(s.as_bytes())).collect();
        super::consume_chunks(&mut c, 4);
        assert_eq!(c.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>(), b"efghi");
        super::consume_chunks(&mut c, 5);
        assert!(c.is_empty());
        super::consume_chunks(&mut c, 3);
    }
}
