//! The data RPC message decoders (request, response, Raft batch header and items, scan
//! answers, merged heartbeats, scrub digest pages, space items) never panic, and what they accept re-encodes to the same bytes. The first input
//! byte picks the decoder.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tessera_wire::msg::{
    decode_heartbeats, decode_raft_items, decode_space, decode_tombstones, encode_heartbeats, encode_space, encode_tombstones, put_raft_item,
};
use tessera_wire::{DigestPage, RaftBatch, Request, Response, ScanEntry};

fuzz_target!(|data: &[u8]| {
    let Some((which, input)) = data.split_first() else { return };
    match which % 9 {
        0 => {
            if let Ok(r) = Request::decode(input) {
                assert_eq!(&r.encode()[..], input);
            }
        }
        1 => {
            if let Ok(r) = Response::decode(input) {
                assert_eq!(&r.encode()[..], input);
            }
        }
        2 => {
            if let Ok(b) = RaftBatch::decode(input) {
                assert_eq!(&b.encode()[..], input);
            }
        }
        3 => {
            if let Ok(items) = decode_raft_items(&Bytes::copy_from_slice(input)) {
                let mut out = BytesMut::new();
                for i in &items {
                    put_raft_item(&mut out, i.pg, &i.msg);
                }
                assert_eq!(&out[..], input);
            }
        }
        6 => {
            if let Ok(t) = decode_tombstones(input) {
                assert_eq!(&encode_tombstones(&t)[..], input);
            }
        }
        7 => {
            if let Ok(page) = DigestPage::decode(input) {
                assert_eq!(&page.encode()[..], input);
            }
        }
        8 => {
            if let Ok(word) = decode_space(input) {
                assert_eq!(&encode_space(word)[..], input);
            }
        }
        5 => {
            if let Ok(hbs) = decode_heartbeats(&Bytes::copy_from_slice(input)) {
                assert_eq!(&encode_heartbeats(&hbs)[..], input);
            }
        }
        _ => {
            if let Ok(entries) = ScanEntry::decode_all(input) {
                let mut out = Vec::new();
                entries.iter().for_each(|e| e.put(&mut out));
                assert_eq!(&out[..], input);
            }
        }
    }
});
