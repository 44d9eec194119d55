//! A private network of Linux network namespaces, so tests can cut nodes off (partitions)
//! without touching the machine's own interfaces or addresses.
//!
//! Layout: a "switch" namespace holds a bridge; every node is a namespace with one veth
//! into the bridge and the address `10.213.<net>.<10 + i>/24`; the test process (the root
//! namespace) reaches every node through its own veth with `10.213.<net>.1`. Traffic between
//! nodes never leaves the switch namespace, so the host's firewall rules do not apply.
//! [`Network::cut`] takes a node's port on the bridge down (it can reach nobody and nobody
//! reaches it: established TCP connections stall, new ones time out); [`Network::heal`]
//! brings it back. Dropping the [`Network`] deletes every namespace, which destroys the veths.
//!
//! Needs root (CAP_NET_ADMIN) and the `ip` tool (iproute2).

use std::process::Command;

pub struct Network {
    prefix: String,
    net: u8,
    nodes: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Network {
    /// Creates the switch and `nodes` node namespaces. `prefix` (at most 6 characters) names
    /// the namespaces and interfaces; namespaces left behind by a crashed run with the same
    /// prefix are deleted first.
    pub fn create(prefix: &str, nodes: usize) -> Result<Network, String> {
        assert!(prefix.len() <= 6 && nodes < 200, "interface names must fit in 15 characters");
        let net = (std::process::id() % 200) as u8 + 20;
        let n = Network { prefix: prefix.to_string(), net, nodes };
        n.delete_all();
        let sw = n.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // The root namespace's port.
        let (ra, rb) = (format!("{prefix}ra"), format!("{prefix}rb"));
        ip(&["link", "add", &ra, "type", "veth", "peer", "name", &rb])?;
        ip(&["link", "set", &rb, "netns", &sw])?;
        ip(&["addr", "add", &format!("10.213.{net}.1/24"), "dev", &ra])?;
        ip(&["link", "set", &ra, "up"])?;
        ip(&["-n", &sw, "link", "set", &rb, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", &rb, "up"])?;
        for i in 0..nodes {
            let ns = n.ns(i);
            let (a, b) = (format!("{prefix}{i}a"), n.port(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &a, "netns", &ns])?;
            ip(&["link", "set", &b, "netns", &sw])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", n.ip(i)), "dev", &a])?;
            ip(&["-n", &ns, "link", "set", &a, "up"])?;
            ip(&["-n", &sw, "link", "set", &b, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &b, "up"])?;
        }
        Ok(n)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn port(&self, i: usize) -> String {
        format!("{}{i}b", self.prefix)
    }

    /// The namespace of node `i` (for `ip netns exec`).
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.net, 10 + i)
    }

    /// The test process's own address on the network.
    pub fn host_ip(&self) -> String {
        format!("10.213.{}.1", self.net)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The command prefix that runs a program inside node `i`.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.ns(i)]
    }

    /// Cuts node `i` off from every other node and from the test process.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch(), "link", "set", &self.port(i), "down"])
    }

    /// Undoes [`Network::cut`].
    pub fn heal(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch(), "link", "set", &self.port(i), "up"])
    }

    fn delete_all(&self) {
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &format!("{}ra", self.prefix)]);
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.delete_all();
    }
}
