//! Starts a real `etcd` server for tests: loopback only (client and peer URLs on 127.0.0.1),
//! free ports, a temporary data dir, and waits until `/health` answers.
//!
//! If the `etcd` binary is missing the fixture PANICS (tests fail, never skip): install the
//! Debian package `etcd-server`, or point `TESSERA_ETCD_BIN` at a binary.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use crate::free_loopback_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running etcd; killed (and its data dir removed) on drop.
pub struct EtcdServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub client_port: u16,
    dir: PathBuf,
}

fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_ETCD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TESSERA_ETCD_BIN={} is not a file; install the etcd server: `apt-get install etcd-server`", p.display());
        return p;
    }
    for dir in std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default() {
        let cand = dir.join("etcd");
        if cand.is_file() {
            return cand;
        }
    }
    let fallback = PathBuf::from("/usr/bin/etcd");
    if fallback.is_file() {
        return fallback;
    }
    panic!(
        "etcd server binary not found (looked at $TESSERA_ETCD_BIN, `etcd` on PATH, /usr/bin/etcd). \
         The etcd conformance tests need a real etcd: `apt-get install etcd-server`."
    );
}

fn healthy(ip: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((ip, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.contains("\"health\":\"true\"")
}

/// Removes data dirs left by earlier test processes that died without cleaning up
/// (the shared server is never dropped).
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tessera-etcd-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl EtcdServer {
    /// Starts a fresh single-member etcd and waits (up to 30 s) until it is healthy.
    pub fn start() -> EtcdServer {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// Like [`EtcdServer::start`], serving clients on `ip` (e.g. the test process's address
    /// in a [`crate::netns::Network`], so daemons in the namespaces reach it).
    pub fn start_on(ip: Ipv4Addr) -> EtcdServer {
        let bin = etcd_binary();
        let base = std::env::temp_dir();
        remove_stale_dirs(&base);
        let mut last_err = String::new();
        for attempt in 0..3 {
            static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = base.join(format!("tessera-etcd-{}-{seq}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create etcd test dir");
            let (client_port, peer_port) = (free_loopback_port(), free_loopback_port());
            let client = format!("http://{ip}:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(dir.join("etcd.log")).expect("create etcd log");
            let mut cmd = Command::new(&bin);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD") {
                    cmd.env_remove(k);
                }
            }
            cmd.arg("--name=tessera-test")
                .arg(format!("--data-dir={}", dir.join("data").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=tessera-test={peer}"))
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL etcd when
            // the spawning thread dies, so an etcd that is never dropped dies with the tests.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = EtcdServer { child, endpoint: client, client_port, dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = server.child.try_wait() {
                    last_err = format!(
                        "etcd exited early ({status}) on attempt {attempt}:\n{}",
                        std::fs::read_to_string(server.dir.join("etcd.log")).unwrap_or_default()
                    );
                    break;
                }
                if healthy(ip, client_port) {
                    return server;
                }
                if Instant::now() > deadline {
                    last_err = format!(
                        "etcd did not become healthy in 30 s:\n{}",
                        std::fs::read_to_string(server.dir.join("etcd.log")).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(server);
        }
        panic!("could not start etcd: {last_err}");
    }

    /// One etcd shared by all tests of this test binary (tests isolate themselves with a
    /// key namespace). It is never dropped: an `atexit` hook kills it and removes its data
    /// dir; as a fallback it is started from a dedicated thread that never exits, so the
    /// parent-death signal kills etcd whenever the test process ends.
    pub fn shared() -> &'static EtcdServer {
        static SHARED: OnceLock<EtcdServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("etcd-fixture".into())
                .spawn(move || {
                    let server = std::panic::catch_unwind(EtcdServer::start);
                    let ok = server.is_ok();
                    let _ = tx.send(server);
                    if ok {
                        loop {
                            std::thread::park();
                        }
                    }
                })
                .expect("spawn etcd fixture thread");
            match rx.recv().expect("etcd fixture thread died") {
                Ok(s) => {
                    let _ = SHARED_CLEANUP.set((s.child.id(), s.dir.clone()));
                    // SAFETY: registers a plain `extern "C" fn` to run at process exit.
                    unsafe { libc::atexit(cleanup_shared) };
                    s
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Whether the process is still running.
    /// SIGSTOP: etcd stays alive but answers nothing (an etcd outage).
    pub fn pause(&self) {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// SIGCONT after [`EtcdServer::pause`].
    pub fn resume(&self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }

    /// etcd's own log (warnings and errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// How etcd ended, if it did.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// (pid, data dir) of the shared server, for [`cleanup_shared`].
static SHARED_CLEANUP: OnceLock<(u32, PathBuf)> = OnceLock::new();

/// Runs at normal process exit (the test harness exits through `exit`): kills the shared
/// etcd and removes its data dir. A crashed test process relies on the parent-death signal,
/// and the next run's `remove_stale_dirs`, instead.
extern "C" fn cleanup_shared() {
    if let Some((pid, dir)) = SHARED_CLEANUP.get() {
        if let Ok(pid) = libc::pid_t::try_from(*pid) {
            // SAFETY: plain syscalls on the pid of a child we spawned and never reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
