//! The data RPC frame decoder never panics on any byte stream, and every frame it accepts
//! re-encodes to exactly the bytes it was cut from.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tessera_wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new(4096, 1 << 16);
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    while let Ok(Some(frame)) = dec.decode(&mut buf) {
        let enc = frame.encode();
        assert_eq!(&data[consumed..consumed + enc.len()], &enc[..]);
        consumed += enc.len();
    }
});
