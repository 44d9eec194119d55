//! Superblock decoding never panics and round-trips what it accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_engine::format::superblock::Superblock;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        assert_eq!(Superblock::decode(&sb.encode()).expect("re-encoded superblock decodes"), sb);
    }
});
