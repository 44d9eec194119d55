//! Checkpoint state blob decoding never panics, rejects references outside the device and
//! round-trips what it accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_engine::segments::Geometry;
use tessera_engine::State;

fuzz_target!(|data: &[u8]| {
    let geo = Geometry { seg_blocks: 16, seg_count: 8 };
    if let Ok(st) = State::decode(data, geo) {
        assert_eq!(State::decode(&st.encode(), geo).expect("re-encoded state decodes"), st);
    }
});
