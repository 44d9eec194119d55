//! Property tests of the frame codec: streams of frames survive any chunking; any single
//! bit flip is detected (never a different frame); arbitrary bytes never panic; what decodes
//! re-encodes to the same bytes. Also writes the fuzz corpus seed (see `scripts/fuzz.sh`).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tessera_wire::{Frame, FrameDecoder, FLAG_BLOCK_CRCS, HEADER_LEN};

const MAX_META: u32 = 1 << 10;
const MAX_DATA: u32 = 1 << 16;

/// Frames of both forms: one data checksum, or 4 KiB blocks with a checksum table.
fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(any::<u8>(), 0..9000),
        prop::option::of((0usize..3, any::<u8>())),
    )
        .prop_map(|(kind, flags, request_id, meta, data, blocks)| match blocks {
            None => Frame {
                kind,
                flags: flags & !FLAG_BLOCK_CRCS,
                request_id,
                meta: Bytes::from(meta),
                data: Bytes::from(data),
                block_crcs: Bytes::new(),
            },
            Some((n, fill)) => {
                let mut data: Vec<u8> = data.into_iter().cycle().take(n * 4096).collect();
                data.resize(n * 4096, fill);
                Frame::with_block_crcs(kind, flags, request_id, Bytes::from(meta), Bytes::from(data))
            }
        })
}

/// Feeds `stream` to a decoder in chunks of the given sizes; returns the frames and the
/// final result (error or leftover bytes).
fn decode_chunked(stream: &[u8], chunks: &[usize]) -> (Vec<Frame>, Result<usize, tessera_wire::WireError>) {
    let mut dec = FrameDecoder::new(MAX_META, MAX_DATA);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < stream.len() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(buf.len()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn streams_of_frames_survive_any_chunking(frames in prop::collection::vec(arb_frame(), 0..6), chunks in prop::collection::vec(1usize..5000, 1..8)) {
        let stream: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let (got, rest) = decode_chunked(&stream, &chunks);
        prop_assert_eq!(rest, Ok(0));
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn any_bit_flip_is_detected(frame in arb_frame(), bit in any::<prop::sample::Index>()) {
        let mut enc = frame.encode();
        let i = bit.index(enc.len() * 8);
        enc[i / 8] ^= 1 << (i % 8);
        let (got, rest) = decode_chunked(&enc, &[enc.len()]);
        // Either an error, or (a length grew) still waiting for bytes: never a frame.
        prop_assert!(got.is_empty(), "a corrupted frame decoded: flip of bit {} gave {:?}", i, got);
        prop_assert!(rest.is_err() || rest.unwrap() == enc.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decoded_frames_reencode_exactly(bytes in prop::collection::vec(any::<u8>(), 0..200), valid in arb_frame(), prefix in any::<bool>()) {
        // Garbage alone, or garbage after a valid frame.
        let mut stream = if prefix { valid.encode() } else { Vec::new() };
        stream.extend_from_slice(&bytes);
        let (got, _) = decode_chunked(&stream, &[7, 64, 1]);
        let mut reencoded = Vec::new();
        for f in &got {
            reencoded.extend(f.encode());
        }
        prop_assert_eq!(&stream[..reencoded.len()], &reencoded[..]);
        if prefix {
            prop_assert_eq!(got.first(), Some(&valid));
        }
    }
}

#[test]
fn header_alone_is_not_a_frame() {
    let plain = Frame {
        kind: 2,
        flags: 1,
        request_id: 77,
        meta: Bytes::from_static(b"abc"),
        data: Bytes::from_static(b"data"),
        block_crcs: Bytes::new(),
    };
    let blocks = Frame::with_block_crcs(2, 1, 78, Bytes::from_static(b"abc"), Bytes::from(vec![9u8; 8192]));
    for f in [plain, blocks] {
        let enc = f.encode();
        for cut in 0..enc.len() {
            let (got, rest) = decode_chunked(&enc[..cut], &[cut.max(1)]);
            assert!(got.is_empty() && rest == Ok(cut), "cut at {cut} (header is {HEADER_LEN} bytes)");
        }
    }
}

/// A block that does not match its entry in the table is refused even when the table's own
/// checksum is right (a sender whose buffer changed after it computed the checksums, or
/// corruption on the way), and so is block data that is not whole blocks.
#[test]
fn a_block_that_does_not_match_its_table_entry_is_refused() {
    let good = Frame::with_block_crcs(2, 0, 5, Bytes::from_static(b"m"), Bytes::from(vec![3u8; 3 * 4096]));
    let mut data = good.data.to_vec();
    data[4096 + 17] ^= 0x10;
    let bad = Frame { data: Bytes::from(data), ..good.clone() };
    let (got, rest) = decode_chunked(&bad.encode(), &[100_000]);
    assert!(got.is_empty());
    assert!(matches!(rest, Err(tessera_wire::WireError::BlockChecksum { request_id: 5, block: 1, .. })), "{rest:?}");
    let (got, rest) = decode_chunked(&good.encode(), &[100_000]);
    assert_eq!((got, rest), (vec![good.clone()], Ok(0)));
    let ragged = Frame { data: Bytes::from(vec![0u8; 100]), block_crcs: Bytes::new(), ..good };
    let (got, rest) = decode_chunked(&ragged.encode(), &[100_000]);
    assert!(got.is_empty() && matches!(rest, Err(tessera_wire::WireError::NotBlocks { len: 100, .. })), "{rest:?}");
}

/// Writes a valid frame into the fuzz corpus when `TESSERA_WRITE_FUZZ_SEEDS` names a directory.
#[test]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("TESSERA_WRITE_FUZZ_SEEDS") else { return };
    let d = std::path::Path::new(&dir).join("wire_frame");
    std::fs::create_dir_all(&d).unwrap();
    let f = Frame {
        kind: 1,
        flags: 2,
        request_id: 3,
        meta: Bytes::from_static(b"meta"),
        data: Bytes::from(vec![7u8; 64]),
        block_crcs: Bytes::new(),
    };
    let mut two = f.encode();
    two.extend(Frame::with_block_crcs(2, 0, 4, Bytes::from_static(b"meta"), Bytes::from(vec![7u8; 4096])).encode());
    std::fs::write(d.join("seed-valid"), two).unwrap();
}
