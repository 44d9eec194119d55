//! The private test network: nodes reach each other and the test process, and a cut node
//! reaches nobody until healed. Needs root (CAP_NET_ADMIN), like the chaos suite.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tessera_testkit::netns::Network;

/// Tries a TCP connection to `to` from inside network namespace `ns` (on a thread that
/// joins it with setns).
fn connects_from(ns: &str, to: SocketAddr) -> bool {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open the namespace");
        // SAFETY: joins a network namespace on this thread only; the fd is valid.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok()
    })
    .join()
    .unwrap()
}

#[test]
fn a_cut_node_reaches_nobody_until_healed() {
    let net = Network::create("tsnt", 2).expect("create the network (needs root)");
    let host = TcpListener::bind((net.host_ip().as_str(), 0)).unwrap();
    let to_host = host.local_addr().unwrap();
    assert!(connects_from(&net.ns(0), to_host), "node 0 reaches the test process");
    assert!(connects_from(&net.ns(1), to_host), "node 1 reaches the test process");

    net.cut(0).unwrap();
    assert!(!connects_from(&net.ns(0), to_host), "a cut node reaches nobody");
    assert!(connects_from(&net.ns(1), to_host), "the other node is not affected");
    net.heal(0).unwrap();
    assert!(connects_from(&net.ns(0), to_host), "healed");
    drop(net);
    assert!(!std::path::Path::new("/var/run/netns/tsntsw").exists(), "namespaces deleted");
}
