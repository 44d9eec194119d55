//! Whole client sessions of arbitrary bytes through the server (in-memory streams): the
//! server never panics or hangs, closes on malformed framing, and answers every well-framed
//! request exactly once. `fuzz/fuzz_targets/nbd_session.rs` drives the same entry point.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tessera_nbd::mem::{MemCatalog, MemExport};
use tessera_nbd::proto::*;
use tessera_nbd::raw_client::go_data;
use tessera_nbd::request::{encode_request, RequestHeader};
use tessera_nbd::{serve_bytes, Catalog, ConnError, Export, ServerConfig};

const SIZE: u64 = 1 << 20;

fn catalog() -> Arc<dyn Catalog> {
    MemCatalog::with(vec![MemExport::new("disk", SIZE, false) as Arc<dyn Export>, MemExport::new("ro", SIZE, true) as Arc<dyn Export>])
}

/// Client flags plus `NBD_OPT_GO` for `disk` without information requests.
fn go_prefix() -> Vec<u8> {
    let mut v = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
    let data = go_data("disk", &[]);
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&OPT_GO.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(&data);
    v
}

/// Bytes the server sends before transmission for [`go_prefix`]: greeting, INFO_EXPORT,
/// INFO_BLOCK_SIZE, ACK.
const GO_ANSWER_LEN: usize = 18 + (20 + 12) + (20 + 14) + 20;

fn run(input: Vec<u8>) -> (Result<(), ConnError>, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = ServerConfig { handshake_timeout: Duration::from_secs(5), ..ServerConfig::default() };
        tokio::time::timeout(Duration::from_secs(20), serve_bytes(input, catalog(), cfg)).await.expect("the server hung on this input")
    })
}

#[derive(Clone, Debug)]
struct Req {
    kind: u16,
    flags: u16,
    offset: u64,
    len: u32,
}

fn req() -> impl Strategy<Value = Req> {
    let kind = prop_oneof![4 => 0u16..8, 1 => any::<u16>()];
    let flags = prop_oneof![4 => 0u16..4, 1 => any::<u16>()];
    let offset = prop_oneof![3 => 0u64..SIZE, 1 => Just(SIZE - 512), 1 => (SIZE - 10)..(SIZE + 10), 1 => any::<u64>()];
    let len = prop_oneof![4 => 0u32..9000, 1 => Just(4096u32), 1 => any::<u32>()];
    (kind, flags, offset, len).prop_map(|(kind, flags, offset, len)| Req {
        kind: if kind == CMD_DISC { CMD_READ } else { kind },
        flags,
        offset,
        len,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Raw garbage, from the first byte or after a valid handshake: the session ends.
    #[test]
    fn garbage_sessions_end_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), after_go in any::<bool>()) {
        let mut input = if after_go { go_prefix() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let (_result, output) = run(input);
        if after_go {
            prop_assert!(output.len() >= GO_ANSWER_LEN);
        }
    }

    /// Well-framed requests with arbitrary fields (unknown commands and flags, ranges past
    /// the end, huge reads): every one before a DISC is answered exactly once, with an
    /// error value or data, and the connection ends cleanly.
    #[test]
    fn every_well_framed_request_is_answered_once(reqs in proptest::collection::vec(req(), 1..40), disc in any::<bool>()) {
        let mut input = go_prefix();
        let mut reads = HashMap::new();
        let mut expected = 0u64;
        for (i, r) in reqs.iter().enumerate() {
            let len = if r.kind == CMD_WRITE { r.len.min(9000) } else { r.len };
            input.extend_from_slice(&encode_request(&RequestHeader { flags: r.flags, kind: r.kind, cookie: i as u64, offset: r.offset, len }));
            if r.kind == CMD_WRITE {
                input.extend(std::iter::repeat_n(i as u8, len as usize));
            }
            if r.kind == CMD_READ {
                reads.insert(i as u64, len);
            }
            expected += 1;
        }
        if disc {
            input.extend_from_slice(&encode_request(&RequestHeader { flags: 0, kind: CMD_DISC, cookie: 999, offset: 0, len: 0 }));
        }
        let (result, output) = run(input);
        prop_assert!(result.is_ok(), "{:?}", result);
        let mut pos = GO_ANSWER_LEN;
        let mut answered = HashMap::new();
        while pos < output.len() {
            prop_assert!(output.len() >= pos + 16, "truncated reply");
            prop_assert_eq!(u32::from_be_bytes(output[pos..pos + 4].try_into().unwrap()), SIMPLE_REPLY_MAGIC);
            let error = u32::from_be_bytes(output[pos + 4..pos + 8].try_into().unwrap());
            let cookie = u64::from_be_bytes(output[pos + 8..pos + 16].try_into().unwrap());
            pos += 16;
            if error == 0 {
                pos += *reads.get(&cookie).unwrap_or(&0) as usize;
            }
            prop_assert!(answered.insert(cookie, error).is_none(), "cookie {} answered twice", cookie);
        }
        prop_assert_eq!(pos, output.len());
        prop_assert_eq!(answered.len() as u64, expected);
        prop_assert!(!answered.contains_key(&999), "DISC is never answered");
    }
}

/// Writes seed inputs for `fuzz/fuzz_targets/nbd_session.rs` into
/// `$TESSERA_WRITE_FUZZ_SEEDS/nbd_session/` (run by `scripts/fuzz.sh`); a no-op otherwise.
#[test]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("TESSERA_WRITE_FUZZ_SEEDS") else { return };
    let dir = std::path::Path::new(&dir).join("nbd_session");
    std::fs::create_dir_all(&dir).unwrap();
    let r = |kind, flags, cookie, offset, len| encode_request(&RequestHeader { flags, kind, cookie, offset, len }).to_vec();
    let mut session = vec![1u8];
    session.extend(r(CMD_WRITE, CMD_FLAG_FUA, 1, 4096, 8));
    session.extend_from_slice(b"abcdefgh");
    for (kind, flags) in [(CMD_READ, 0), (CMD_TRIM, 0), (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE), (CMD_FLUSH, 0)] {
        let (o, l) = if kind == CMD_FLUSH { (0, 0) } else { (4090, 20) };
        session.extend(r(kind, flags, 2, o, l));
    }
    session.extend(r(CMD_DISC, 0, 3, 0, 0));
    std::fs::write(dir.join("requests"), &session).unwrap();
    // A handshake from scratch: flags, LIST, INFO, then GO.
    let mut hs = vec![0u8];
    hs.extend_from_slice(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
    for (opt, data) in [(OPT_LIST, vec![]), (OPT_INFO, go_data("disk", &[3, 1, 2])), (OPT_GO, go_data("", &[]))] {
        hs.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hs.extend_from_slice(&opt.to_be_bytes());
        hs.extend_from_slice(&(data.len() as u32).to_be_bytes());
        hs.extend_from_slice(&data);
    }
    std::fs::write(dir.join("handshake"), &hs).unwrap();
}
