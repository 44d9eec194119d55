//! The tessera OSD: one storage engine per device, one Raft group per PG replica, all groups
//! driven by one event loop that shares the engine's write-ahead log.
//!
//! Module map:
//! - [`cmd`]: the state-machine command inside a Raft entry;
//! - [`storage`]: raft-rs `Storage` on the engine (log, hard state, configuration);
//! - [`dedup`]: the `(client, seq)` table that makes retried writes apply once;
//! - [`peer`]: one PG replica, sans-IO: requests and Raft output in, a [`peer::Round`] out;
//! - [`store`]: the event loop that runs rounds (one engine transaction and one batch per
//!   destination OSD per round);
//! - [`snapshot`]: Raft snapshots as tickets, and the object copy over the data port;
//! - [`scrub`]: digests of a replica's PG for comparison between replicas;
//! - [`repair`]: the rules by which a replica whose data failed a checksum reinstalls the
//!   PG from a healthy one;
//! - [`transport`]: Raft batches between OSDs (TCP, or in-memory with partitions);
//! - [`server`]: the data port (client requests and Raft batches);
//! - [`daemon`]: startup, registration, heartbeats, map following;
//! - [`error`]: `OsdError` and the one mapping from storage errors to wire statuses;
//! - [`reply`]: answering a client request on its connection.

pub mod batch;
pub mod cmd;
pub mod contexts;
pub mod daemon;
pub mod dedup;
pub mod error;
pub mod peer;
pub mod repair;
pub mod reply;
pub mod scrub;
pub mod server;
pub mod snapshot;
pub mod space;
pub mod storage;
pub mod store;
pub mod transport;
pub mod vectored;

pub use daemon::{start, OsdConfig, OsdHandle};
pub use error::OsdError;
