//! Batch header decoding: arbitrary bytes give an error or a header, never a panic; a header
//! that decodes re-encodes to bytes that decode to the same header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_engine::format::batch::{decode_header, decode_prelude, encode_header};

fuzz_target!(|data: &[u8]| {
    let _ = decode_prelude(data, 42);
    if let Ok(h) = decode_header(data, 42) {
        let again = encode_header(h.seq, h.uuid, h.next_seg, &h.data_crcs, &h.ops);
        assert_eq!(decode_header(&again, 42).expect("re-encoded header decodes"), h);
    }
});
