//! Checkpoint slot decoding never panics and round-trips what it accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_engine::format::checkpoint::Slot;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Slot::decode(data, 42) {
        assert_eq!(Slot::decode(&s.encode(), 42).expect("re-encoded slot decodes"), s);
    }
});
