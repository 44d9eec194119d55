//! `tessera mon`: the control plane.
//!
//! - [`model`]: the cluster map's records (OSDs, pools, PG tables, volumes, snapshots) and
//!   the map epoch, and client sessions (not part of the map); [`keys`]: how they are laid out in the metastore.
//! - [`service`]: every read-modify-write of the map as one CAS transaction on a
//!   [`tessera_metastore::MetaStore`] (embedded redb or etcd), serialized by `map/head`.
//! - [`pgmap`], [`detector`] and [`pgstate`]: sans-IO decisions (PG placement via
//!   `tessera-placement`; up/down/in/out from heartbeats, with flap damping; PG states from
//!   the reports of PG leaders).
//! - [`server`]: the runtime (API, map cache for long polls, leader election, detector loop);
//!   [`api`]: the REST/JSON routes and their decoders; [`client`]: the API client the CLI uses.
//! - [`error`]: the one error enum and its one mapping to HTTP status codes.

pub mod api;
pub mod client;
pub mod detector;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod pgmap;
pub mod pgstate;
pub mod server;
pub mod service;
pub mod space;
pub mod validate;

pub use api::RollbackView;
pub use client::{ClientError, MonClient};
pub use error::{MonError, Result};
pub use model::{SessionRecord, VolumeState};
pub use server::{start, MonConfig, MonHandle};
pub use service::{Service, SessionLease, SessionUpdate};
