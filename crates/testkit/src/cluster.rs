//! A whole tessera cluster as real processes on loopback: one mon (embedded store) and N
//! OSDs (`tessera osd run` on device files), each a [`Daemon`] a test can kill -9, restart,
//! pause (SIGSTOP, a hung node) and resume, or wipe (its device deleted, so it returns as a
//! new OSD with a new id). The admin CLI of the same binary drives the mon.
//!
//! Each OSD gets its own failure-domain host name (`h0`, `h1`, ...) so pools with the
//! default `host` failure domain place 3 replicas on 3 OSDs of this one machine.
//!
//! With [`ClusterOptions::netns`] every daemon runs in its own network namespace of a private
//! [`Network`] (node 0 the mon, node `1 + i` OSD `i` for the initial OSDs and
//! [`ClusterOptions::spare_osds`] more, then [`ClusterOptions::extra_nodes`] for other
//! daemons such as NBD servers), so a test can cut any of them off.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::free_loopback_port;
use crate::netns::Network;
use crate::process::{wait_http_ok_at, Daemon};

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub osds: usize,
    /// Device file size per OSD (a `tessera` size, e.g. `256M`).
    pub osd_size: String,
    /// Per OSD index, a size overriding `osd_size` (missing entries use `osd_size`).
    pub osd_sizes: Vec<String>,
    /// The mon's `--down-after`.
    pub down_after: String,
    /// The mon's `--out-after`.
    pub out_after: String,
    /// `RUST_LOG` for the daemons.
    pub log: String,
    /// Extra arguments of `tessera mon`.
    pub mon_args: Vec<String>,
    /// The mon's store: `None` for an embedded store in the cluster directory (or the
    /// cluster's own etcd with [`ClusterOptions::etcd`]), or e.g. `etcd:http://127.0.0.1:2379`
    /// (the cluster gets its own key prefix).
    pub mon_store: Option<String>,
    /// Start a real etcd for the mons (reachable from the namespaces with `netns`).
    pub etcd: bool,
    /// How many mons (more than one needs an etcd store: one is elected active).
    pub mons: usize,
    /// Extra environment of mon `k`: `(k, name, value)`.
    pub mon_env: Vec<(usize, String, String)>,
    /// Extra arguments of every `tessera osd run`; `{i}` becomes the OSD's index and `{dir}`
    /// the cluster directory.
    pub osd_args: Vec<String>,
    /// Run each daemon in its own network namespace (needs root), see the module docs.
    pub netns: bool,
    /// Namespaces created beyond the mon's and the OSDs' (for [`TestCluster::spawn_on`]).
    pub extra_nodes: usize,
    /// Network nodes kept for OSDs added later with [`TestCluster::add_osd`] (netns only;
    /// without namespaces any number may be added).
    pub spare_osds: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            osds: 3,
            osd_size: "256M".into(),
            osd_sizes: Vec::new(),
            down_after: "2s".into(),
            out_after: "10m".into(),
            log: "info".into(),
            mon_args: Vec::new(),
            mon_store: None,
            etcd: false,
            mons: 1,
            mon_env: Vec::new(),
            osd_args: Vec::new(),
            netns: false,
            extra_nodes: 0,
            spare_osds: 0,
        }
    }
}

/// The network node of the mon.
pub const MON_NODE: usize = 0;

pub struct TestOsd {
    pub daemon: Daemon,
    pub port: u16,
    pub data: PathBuf,
    paused: bool,
    /// Stopped and removed from the cluster on purpose (`tessera osd rm`): not restarted.
    pub retired: bool,
}

pub struct TestCluster {
    pub dir: PathBuf,
    bin: PathBuf,
    /// The first mon.
    pub mon: Daemon,
    pub mon_port: u16,
    /// Further mons (with [`ClusterOptions::mons`]), and their ports.
    pub more_mons: Vec<(Daemon, u16)>,
    pub osds: Vec<TestOsd>,
    opts: ClusterOptions,
    /// The cluster's own etcd ([`ClusterOptions::etcd`]).
    pub etcd: Option<crate::etcd::EtcdServer>,
    /// Declared last: dropped after the daemons.
    pub net: Option<Network>,
}

impl TestCluster {
    /// Starts the mon and the OSDs in `dir` and waits until every OSD is registered and up.
    pub fn start(bin: impl Into<PathBuf>, dir: &Path, opts: ClusterOptions) -> TestCluster {
        let bin = bin.into();
        let net = opts.netns.then(|| {
            let prefix = format!("ts{}", std::process::id() % 10_000);
            Network::create(&prefix, 1 + opts.osds + opts.spare_osds + opts.extra_nodes)
                .unwrap_or_else(|e| panic!("cannot create the test network: {e}"))
        });
        let etcd = opts.etcd.then(|| {
            let ip: std::net::Ipv4Addr = net.as_ref().map_or("127.0.0.1".to_string(), |n| n.host_ip()).parse().expect("host ip");
            crate::etcd::EtcdServer::start_on(ip)
        });
        let store = match (&opts.mon_store, &etcd) {
            (Some(s), _) => s.clone(),
            (None, Some(e)) => format!("etcd:{}", e.endpoint),
            (None, None) => format!("embedded:{}", dir.join("mon.redb").display()),
        };
        assert!(opts.mons == 1 || store.starts_with("etcd:"), "several mons need an etcd store");
        let mon_ip = net.as_ref().map_or("127.0.0.1".to_string(), |n| n.ip(MON_NODE));
        let prefix = format!("/tessera-{}-{}/", std::process::id(), free_loopback_port());
        let mut mons = Vec::new();
        for k in 0..opts.mons.max(1) {
            let port = free_loopback_port();
            let mut args = vec![
                "mon".to_string(),
                "--store".into(),
                store.clone(),
                "--listen".into(),
                format!("{mon_ip}:{port}"),
                "--down-after".into(),
                opts.down_after.clone(),
                "--out-after".into(),
                opts.out_after.clone(),
            ];
            if store.starts_with("etcd:") {
                args.extend(["--etcd-prefix".to_string(), prefix.clone()]);
            }
            args.extend(opts.mon_args.iter().cloned());
            let name = if k == 0 { "mon".to_string() } else { format!("mon{k}") };
            let env: Vec<(String, String)> = opts.mon_env.iter().filter(|e| e.0 == k).map(|e| (e.1.clone(), e.2.clone())).collect();
            let mon = start_daemon_env(net.as_ref(), MON_NODE, &name, &bin, args, &opts.log, dir, env);
            let mon_sock = format!("{mon_ip}:{port}").parse().expect("mon address");
            assert!(wait_http_ok_at(mon_sock, "/healthz", Duration::from_secs(20)), "{name} did not start:\n{}", mon.log());
            mons.push((mon, port));
        }
        let (mon, mon_port) = mons.remove(0);
        let mut c = TestCluster { dir: dir.to_path_buf(), bin, mon, mon_port, more_mons: mons, osds: Vec::new(), opts, etcd, net };
        for _ in 0..c.opts.osds {
            c.add_osd();
        }
        c.wait_osds_up(c.opts.osds, Duration::from_secs(30));
        c
    }

    /// Starts one more OSD process (index [`TestCluster::osds`]`.len()`, host `h<index>`, a
    /// new device file) and returns its index; it registers with the mon by itself. With
    /// namespaces, at most [`ClusterOptions::spare_osds`] may be added.
    pub fn add_osd(&mut self) -> usize {
        let i = self.osds.len();
        assert!(self.net.is_none() || i < self.opts.osds + self.opts.spare_osds, "no spare network node for another OSD");
        let port = free_loopback_port();
        let data = self.dir.join(format!("osd{i}.dev"));
        let mut args = vec![
            "osd".to_string(),
            "run".into(),
            "--mon".into(),
            self.mon_addr(),
            "--data".into(),
            data.display().to_string(),
            "--size".into(),
            self.opts.osd_sizes.get(i).unwrap_or(&self.opts.osd_size).clone(),
            "--listen".into(),
            format!("{}:{port}", self.node_ip(1 + i)),
            "--host".into(),
            format!("h{i}"),
            "--heartbeat".into(),
            "500ms".into(),
        ];
        let dir = self.dir.display().to_string();
        args.extend(self.opts.osd_args.iter().map(|a| a.replace("{i}", &i.to_string()).replace("{dir}", &dir)));
        let daemon = start_daemon(self.net.as_ref(), 1 + i, &format!("osd{i}"), &self.bin, args, &self.opts.log, &self.dir);
        self.osds.push(TestOsd { daemon, port, data, paused: false, retired: false });
        i
    }

    /// The address daemons on network node `node` listen on (loopback without namespaces).
    pub fn node_ip(&self, node: usize) -> String {
        self.net.as_ref().map_or("127.0.0.1".to_string(), |n| n.ip(node))
    }

    /// The network node of the `k`-th extra node.
    pub fn extra_node(&self, k: usize) -> usize {
        assert!(k < self.opts.extra_nodes, "only {} extra nodes", self.opts.extra_nodes);
        1 + self.opts.osds + self.opts.spare_osds + k
    }

    /// Starts `tessera <args>` as a daemon on network node `node`, logging to `<dir>/<name>.log`.
    pub fn spawn_on(&self, node: usize, name: &str, args: Vec<String>) -> Daemon {
        start_daemon(self.net.as_ref(), node, name, &self.bin, args, &self.opts.log, &self.dir)
    }

    /// `host:port` of OSD `i`'s data port.
    pub fn osd_addr(&self, i: usize) -> String {
        format!("{}:{}", self.node_ip(1 + i), self.osds[i].port)
    }

    /// Every mon's `host:port`, comma-separated (what `--mon` takes).
    pub fn mon_addr(&self) -> String {
        let ip = self.node_ip(MON_NODE);
        std::iter::once(self.mon_port)
            .chain(self.more_mons.iter().map(|(_, p)| *p))
            .map(|p| format!("{ip}:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Mon `k` (0 = [`TestCluster::mon`]) and its port.
    pub fn mon_mut(&mut self, k: usize) -> (&mut Daemon, u16) {
        if k == 0 {
            (&mut self.mon, self.mon_port)
        } else {
            let (d, p) = &mut self.more_mons[k - 1];
            (d, *p)
        }
    }

    pub fn mon_count(&self) -> usize {
        1 + self.more_mons.len()
    }

    /// Runs `tessera <args> --mon <mon>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        std::process::Command::new(&self.bin).args(args).args(["--mon", &self.mon_addr()]).output().expect("run tessera CLI")
    }

    /// Runs the CLI and returns its stdout; panics with its stderr if it failed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "tessera {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `(id, addr, up)` of every registered OSD, from `tessera osd list --json`.
    pub fn osd_list(&self) -> Vec<(u32, String, bool)> {
        let out = self.cli_ok(&["osd", "list", "--json"]);
        parse_osd_list(&out)
    }

    /// The index (into [`TestCluster::osds`]) of the OSD process with mon id `id`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        let addr = self.osd_list().into_iter().find(|(i, _, _)| *i == id)?.1;
        (0..self.osds.len()).find(|i| self.osd_addr(*i) == addr)
    }

    /// Waits until at least `n` OSDs are up.
    pub fn wait_osds_up(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.osd_list().iter().filter(|(_, _, up)| *up).count();
            if up >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {up} of {n} OSDs up after {timeout:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill9(&mut self, i: usize) {
        self.resume(i);
        self.osds[i].daemon.kill9();
    }

    pub fn restart(&mut self, i: usize) {
        self.resume(i);
        self.osds[i].daemon.kill9();
        self.osds[i].daemon.restart();
    }

    /// SIGSTOP: the process stays alive but does nothing (a hung node).
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.osds[i].daemon.pid() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            self.osds[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if self.osds[i].paused {
            if let Some(pid) = self.osds[i].daemon.pid() {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            }
            self.osds[i].paused = false;
        }
    }

    /// Kills the OSD and deletes its device: on restart it formats a new device and
    /// registers as a new OSD (new uuid, new id).
    pub fn wipe(&mut self, i: usize) {
        self.kill9(i);
        std::fs::remove_file(&self.osds[i].data).expect("remove the OSD's device file");
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- mon ---\n{}", self.mon.log());
        for (k, (m, _)) in self.more_mons.iter().enumerate() {
            s.push_str(&format!("\n--- mon{} ---\n{}", k + 1, m.log()));
        }
        for (i, o) in self.osds.iter().enumerate() {
            s.push_str(&format!("\n--- osd{i} ---\n{}", o.daemon.log()));
        }
        s
    }
}

/// Starts `bin args` on network node `node` (through `ip netns exec` when there is a network).
fn start_daemon(net: Option<&Network>, node: usize, name: &str, bin: &Path, args: Vec<String>, log: &str, dir: &Path) -> Daemon {
    start_daemon_env(net, node, name, bin, args, log, dir, Vec::new())
}

#[allow(clippy::too_many_arguments)]
fn start_daemon_env(
    net: Option<&Network>,
    node: usize,
    name: &str,
    bin: &Path,
    args: Vec<String>,
    log: &str,
    dir: &Path,
    extra_env: Vec<(String, String)>,
) -> Daemon {
    let mut envs = vec![("RUST_LOG".to_string(), log.to_string())];
    envs.extend(extra_env);
    match net {
        None => Daemon::start(name, bin, args, envs, dir),
        Some(n) => {
            // `ip netns exec` execs the program: the daemon keeps the spawned pid, so kill -9
            // and SIGSTOP reach it directly.
            let mut full = n.exec_prefix(node);
            full.push(bin.display().to_string());
            full.extend(args);
            Daemon::start(name, "ip", full, envs, dir)
        }
    }
}

/// Parses `tessera osd list --json` (an array of OSD records) without a JSON dependency:
/// only the `id`, `addr` and `up` fields are read.
fn parse_osd_list(json: &str) -> Vec<(u32, String, bool)> {
    let mut out = Vec::new();
    for obj in json.split('}') {
        let field = |name: &str| -> Option<String> {
            let at = obj.find(&format!("\"{name}\""))?;
            let rest = obj[at + name.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
            let end = if let Some(r) = rest.strip_prefix('"') {
                return Some(r[..r.find('"')?].to_string());
            } else {
                rest.find([',', '\n', '}']).unwrap_or(rest.len())
            };
            Some(rest[..end].trim().to_string())
        };
        if let (Some(id), Some(addr), Some(up)) = (field("id"), field("addr"), field("up")) {
            if let Ok(id) = id.parse() {
                out.push((id, addr, up == "true"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_osd_list() {
        let json = r#"[
  {
    "id": 0,
    "uuid": "ab",
    "addr": "127.0.0.1:5000",
    "host": "h0",
    "up": true,
    "in": true
  },
  {
    "id": 12,
    "addr": "127.0.0.1:5001",
    "up": false
  }
]"#;
        assert_eq!(super::parse_osd_list(json), vec![(0, "127.0.0.1:5000".into(), true), (12, "127.0.0.1:5001".into(), false)]);
    }
}
