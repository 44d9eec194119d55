//! The NBD front end: serves tessera volumes (or any [`Export`]) to standard NBD clients —
//! `qemu-img`/`qemu-io`, `nbdcopy`/`nbdinfo`, fio's `nbd` engine, Linux `nbd-client`.
//!
//! # Protocol (NetworkBlockDevice/nbd `doc/proto.md`)
//! - Fixed newstyle handshake; options `EXPORT_NAME`, `GO`, `INFO`, `LIST`, `ABORT`; every
//!   other option (structured replies, TLS, meta contexts) is answered `NBD_REP_ERR_UNSUP`,
//!   so replies are always simple replies.
//! - Export name = volume name; the empty name picks the default export, if configured.
//! - Block sizes: minimum 1, 512 or 4096 (config; enforced with `EINVAL`; above 1 a client
//!   must ask for them: `NBD_REP_ERR_BLOCK_SIZE_REQD`), preferred 4096, maximum payload 32 MiB.
//! - Transmission flags: `SEND_FLUSH`, `SEND_FUA`, `SEND_TRIM`, `SEND_WRITE_ZEROES`,
//!   `CAN_MULTI_CONN`, and `READ_ONLY` for read-only exports.
//! - Commands READ, WRITE (+FUA), FLUSH, TRIM, WRITE_ZEROES (+NO_HOLE), DISC; many in flight
//!   per connection, answered when ready (out of order).
//!
//! # Durability
//! With the tessera export, a WRITE/TRIM/WRITE_ZEROES is answered only after the client
//! library's acknowledgement, i.e. after it is fsynced in the logs of a majority of its PG's
//! replicas. FUA and FLUSH therefore add nothing to it; FLUSH still waits for every write
//! received before it (see [`transmission`]).
//!
//! # Bad input
//! A malformed option gets an error reply; a malformed request an NBD error value; a
//! request that breaks framing (bad magic, a write payload over 32 MiB, unknown client
//! flags) closes that connection only. Nothing a client sends can panic the server
//! (proptests in `option`, `request` and `tests/sessions.rs`; fuzz target `nbd_session`).
//! Memory is bounded by in-flight budgets per connection and per server, a connection cap,
//! and a reply timeout for clients that stop reading.
//!
//! # Modules
//! - sans-IO: [`proto`] (numbers), [`option`] (handshake options and replies),
//!   [`request`] (requests, their validation, simple replies);
//! - runtime: `handshake`, `transmission`, [`server`];
//! - exports: [`export`] (the traits), [`volume`] (tessera volumes), [`mem`] (in-memory and
//!   fault-injecting), [`conformance`] (the checks every export passes);
//! - [`raw_client`]: a byte-exact client for tests and tools;
//! - [`error`], [`stats`].

pub mod conformance;
pub mod error;
pub mod export;
mod handshake;
pub mod mem;
pub mod option;
pub mod proto;
pub mod raw_client;
pub mod request;
pub mod server;
pub mod stats;
mod transmission;
/// When the request a task serves was read off its socket (`CLOCK_MONOTONIC` ns), set only
/// while the sampled latency trace is on ([`tessera_wire::trace`]).
mod trace {
    tokio::task_local! {
        pub(crate) static RECEIVED: u64;
    }
}
#[cfg(feature = "volume")]
pub mod volume;

pub use error::{ConnError, ExportError, OpenError};
pub use export::{Catalog, Export, ExportEntry};
pub use server::{serve_bytes, serve_stream, NbdServer, ServerConfig};
pub use stats::StatsSnapshot;
