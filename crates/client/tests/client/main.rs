//! Tests of the client library against in-process FAKE OSDs (`fake_osd`), and one against an
//! in-process mon (`mon`). Run with `cargo test -p tessera-client`.

mod fake_osd;
mod io;
mod mon;
mod routing;

use std::time::Duration;

use tessera_client::ClientOptions;

/// Options with short timeouts, so failure paths finish quickly.
pub fn opts(op_timeout_ms: u64, attempt_timeout_ms: u64) -> ClientOptions {
    ClientOptions {
        op_timeout: Duration::from_millis(op_timeout_ms),
        attempt_timeout: Duration::from_millis(attempt_timeout_ms),
        ..ClientOptions::default()
    }
}
