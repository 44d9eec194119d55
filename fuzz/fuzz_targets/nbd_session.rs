//! A whole NBD client session of arbitrary bytes against the server with in-memory exports:
//! it must end (no hang) without panicking. The first input byte picks whether the bytes
//! follow a valid handshake (client flags + NBD_OPT_GO "disk") or start from nothing.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tessera_nbd::mem::{MemCatalog, MemExport};
use tessera_nbd::proto::{FLAG_C_FIXED_NEWSTYLE, IHAVEOPT, OPT_GO};
use tessera_nbd::raw_client::go_data;
use tessera_nbd::{serve_bytes, Export, ServerConfig};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let mut input = Vec::new();
    if mode % 2 == 1 {
        input.extend_from_slice(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        let go = go_data("disk", &[3]);
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_GO.to_be_bytes());
        input.extend_from_slice(&(go.len() as u32).to_be_bytes());
        input.extend_from_slice(&go);
    }
    input.extend_from_slice(rest);
    let catalog = MemCatalog::with(vec![MemExport::new("disk", 1 << 20, false) as Arc<dyn Export>]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = ServerConfig { handshake_timeout: Duration::from_secs(5), ..ServerConfig::default() };
        tokio::time::timeout(Duration::from_secs(20), serve_bytes(input, catalog, cfg)).await.expect("the server hung");
    });
});
