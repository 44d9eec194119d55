//! A tessera daemon (or any program) as a child process that a test can SIGKILL, SIGTERM and
//! restart with the same arguments. Its stderr goes to a log file that is printed when a
//! test asks for it (e.g. in a failure message).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

fn spawn(bin: &Path, args: &[String], envs: &[(String, String)], log: &Path) -> Child {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open daemon log");
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(log_file.try_clone().expect("dup log")).stderr(log_file);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: prctl is async-signal-safe; it makes the kernel SIGKILL the daemon when the
    // spawning thread exits, so daemons never outlive a crashed test.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl Daemon {
    /// Starts `bin args...`, logging to `log_dir/<name>.log` (appended across restarts).
    pub fn start(name: &str, bin: impl Into<PathBuf>, args: Vec<String>, envs: Vec<(String, String)>, log_dir: &Path) -> Daemon {
        let bin = bin.into();
        let log = log_dir.join(format!("{name}.log"));
        let child = spawn(&bin, &args, &envs, &log);
        Daemon { name: name.into(), bin, args, envs, log, child: Some(child) }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap. No cleanup code of the daemon runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful stop), then wait up to `timeout`, then SIGKILL. Returns whether it
    /// exited on its own.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: signals a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Sends `signal` (e.g. `libc::SIGINT`, what Ctrl-C sends) and waits up to `timeout` for
    /// the exit. Returns the exit status, or `None` if it had to be SIGKILLed.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: signals a child we spawned and have not reaped.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts it again with the same arguments (after a kill).
    pub fn restart(&mut self) {
        self.kill9();
        self.child = Some(spawn(&self.bin, &self.args, &self.envs, &self.log));
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 exchange on 127.0.0.1:`port`: returns (status, body). For fixtures
/// and readiness checks, independent of the code under test.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    http_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), method, path, body)
}

/// [`http`] to any address (e.g. a node of a [`crate::netns::Network`]).
pub fn http_at(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` on `port` until it answers 200 or `timeout` passes.
pub fn wait_http_ok(port: u16, path: &str, timeout: Duration) -> bool {
    wait_http_ok_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), path, timeout)
}

/// [`wait_http_ok`] at any address.
pub fn wait_http_ok_at(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((200, _)) = http_at(addr, "GET", path, None) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
