//! The tessera client library: turns byte ranges of a volume into requests to the OSDs that
//! hold them.
//!
//! ```text
//! Volume::read/write/write_zeroes(offset, len)
//!   -> plan:    4 KiB edge blocks (read-modify-write) + aligned middle
//!   -> split:   pieces inside one object, at most `max_request_bytes` of payload each
//!   -> route:   object -> PG (tessera-placement) -> replicas (PG table) -> cached leader
//!   -> conn:    one multiplexed TCP connection per OSD, frames from tessera-wire
//! ```
//!
//! # Contract
//! - A call succeeds only if every piece succeeded. Pieces run concurrently; a failed call
//!   may have applied some of its pieces (like a failed write to a local disk).
//! - Every call is bounded by [`ClientOptions::op_timeout`] (retries included) and then fails
//!   with [`ClientError::Timeout`], naming the PG and the last error seen.
//! - Retries of one request reuse its `(client, seq)` pair, so the PG applies a write at most
//!   once however often it is resent ([`tessera_wire::Request`] explains the deduplication).
//! - Unaligned writes (and write-zeroes) read-modify-write their partial first and last
//!   4 KiB blocks. Within one [`Client`] these are serialized per block, so concurrent calls
//!   patching different bytes of one block all land. Across clients they are **not
//!   atomic**: two clients writing different bytes of the same 4 KiB block at the same time
//!   may lose one of the writes. And a read-modify-write racing an overlapping aligned
//!   write of that block (from any client) may undo the aligned write entirely rather than
//!   merely ordering the two. 4 KiB-aligned IO never reads-modifies-writes.
//! - Ranges beyond the volume size fail with [`ClientError::OutOfRange`] before anything is
//!   sent; zero-length calls are no-ops.
//!
//! # Modules (one concept each)
//! - [`client`]: [`Client`], the shared handle (map, connections, leader cache, sequencer);
//!   [`options`]: [`ClientOptions`]; [`error`]: [`ClientError`].
//! - [`volume`]: [`Volume`], byte-range IO on one volume; `plan` (which 4 KiB blocks are
//!   partial) and `split` (cutting a range into per-object pieces) are sans-IO; `rmw`
//!   serializes one client's read-modify-writes of the same block.
//! - `route`: one object request, routed to the PG leader and retried until it succeeds,
//!   fails for good or times out; `leaders` (per-PG leader cache), `seq` (request sequence
//!   numbers and the in-flight floor), `backoff`.
//! - `conn`: one multiplexed connection to an OSD; `conns`: the lazily dialled set of them.
//! - `map`: the current cluster map and waiting for a newer one; `refresh`: the background
//!   long poll that keeps it current from the mon.
//! - `fanout`: running the pieces of one call concurrently.
//! - [`admin`]: volume-wide data operations of the admin CLI; [`scrub`]: comparing the
//!   replicas of PGs (digests at a quiescent point; `clean`/`mismatch`/`corrupt`/...).

pub mod admin;
mod backoff;
pub mod client;
mod conn;
mod conns;
pub mod error;
mod fanout;
mod leaders;
mod map;
pub mod options;
mod plan;
mod refresh;
mod rmw;
mod route;
pub mod scrub;
mod seq;
mod session;
mod split;
pub mod trace;
pub mod volume;

pub use client::Client;
pub use error::{ClientError, Location, Result};
pub use options::ClientOptions;
pub use route::ObjectRequest;
pub use volume::{Layer, Volume};

/// The snapshot id that names the writable head version of an object (the storage engine's
/// `SNAP_HEAD`). [`Volume`] IO always addresses the head.
pub const SNAP_HEAD: u64 = u64::MAX;
/// The version id of a clone object's staging copy (see [`Volume`]'s copy-up).
pub const SNAP_STAGING: u64 = u64::MAX - 1;

/// The unit the OSDs address: request offsets and lengths are multiples of it.
pub const BLOCK_SIZE: u64 = 4096;
