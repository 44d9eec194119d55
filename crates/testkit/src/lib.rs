//! Test fixtures shared by tessera's integration tests. They start real peers, never mocks:
//! [`etcd::EtcdServer`] runs the `etcd` binary; [`process::Daemon`] runs a tessera daemon
//! as a child process that tests can SIGKILL and restart.
//!
//! Every process listens on loopback only (or inside a private [`netns::Network`]) and dies with the test process
//! (`PR_SET_DEATHSIG`), so a crashed test leaves nothing running.

pub mod cluster;
pub mod etcd;
pub mod linearizability;
pub mod netns;
pub mod process;

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_loopback_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}
