//! Sampled per-stage timestamps of data-path requests: the latency breakdown that every
//! data-path change is judged by (`scripts/bench-trace.sh`, `tessera bench trace`).
//!
//! Off unless a process starts with `TESSERA_TRACE=<dir>`; then it appends one line per
//! recorded stage to `<dir>/<name>-<pid>.trace` (name: `TESSERA_TRACE_NAME`, else the
//! executable's), flushed every 200 ms and on [`flush`]:
//!
//! ```text
//! <stage> <node> <client> <seq> <pool>.<pg> <index> <ns>
//! ```
//!
//! `node` is the recording OSD's id, or `-` for a client-side process; `pool.pg` and `index`
//! name the Raft entry of a write (`-` where unknown); `ns` is `CLOCK_MONOTONIC`, which every
//! process on one machine shares, so stages of different processes can be subtracted.
//!
//! A request is sampled when its `seq` is a multiple of `TESSERA_TRACE_EVERY` (default 64):
//! every process decides alike from the `(client, seq)` it already has (the client library
//! from its sequence numbers, the OSDs from the request or the command in a Raft entry), so
//! nothing extra travels on the wire. When tracing is off, [`sampled`] is one load and a
//! branch.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The stages, in the order a write or a read passes them.
pub mod stage {
    /// The NBD server read the request from its socket.
    pub const NBD_RECV: &str = "nbd_recv";
    /// The client library sends the request frame to an OSD (first attempt).
    pub const CLIENT_SEND: &str = "client_send";
    /// An OSD's data port decoded the request frame.
    pub const OSD_RECV: &str = "osd_recv";
    /// The leader proposed the write (its Raft entry index is known from here on).
    pub const PROPOSE: &str = "propose";
    /// A replica received a Raft append carrying the entry (followers).
    pub const RAFT_RECV: &str = "raft_recv";
    /// A replica put the entry into an engine transaction (leader and followers).
    pub const APPEND: &str = "append";
    /// The engine made that transaction durable and the store learned of it.
    pub const DURABLE: &str = "durable";
    /// The leader saw the entry committed and answered the client.
    pub const COMMIT: &str = "commit";
    /// The leader may serve a read (its read index is confirmed and applied).
    pub const READ_READY: &str = "read_ready";
    /// The leader's engine read finished; the answer leaves.
    pub const READ_DONE: &str = "read_done";
    /// The client library has the OSD's final answer.
    pub const CLIENT_RECV: &str = "client_recv";
    /// The NBD server queued its reply.
    pub const NBD_REPLY: &str = "nbd_reply";
}

struct Tracer {
    every: u64,
    buf: Mutex<String>,
    file: Mutex<std::fs::File>,
}

static TRACER: OnceLock<Option<Tracer>> = OnceLock::new();

fn tracer() -> Option<&'static Tracer> {
    TRACER
        .get_or_init(|| {
            let dir = std::env::var_os("TESSERA_TRACE")?;
            let every = std::env::var("TESSERA_TRACE_EVERY").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(64);
            let name = std::env::var("TESSERA_TRACE_NAME").ok().unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "process".into())
            });
            let path = std::path::Path::new(&dir).join(format!("{name}-{}.trace", std::process::id()));
            let file = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("TESSERA_TRACE: cannot open {}: {e}; tracing stays off", path.display());
                    return None;
                }
            };
            std::thread::Builder::new()
                .name("trace-flush".into())
                .spawn(|| loop {
                    std::thread::sleep(Duration::from_millis(200));
                    flush();
                })
                .ok()?;
            Some(Tracer { every, buf: Mutex::new(String::with_capacity(64 << 10)), file: Mutex::new(file) })
        })
        .as_ref()
}

/// Whether tracing is on in this process.
pub fn enabled() -> bool {
    tracer().is_some()
}

/// Whether the request `(client, seq)` is traced.
pub fn sampled(_client: u64, seq: u64) -> bool {
    tracer().is_some_and(|t| seq.is_multiple_of(t.every))
}

/// `CLOCK_MONOTONIC` in nanoseconds (shared by every process of the machine).
pub fn now_ns() -> u64 {
    crate::clock::monotonic().as_nanos() as u64
}

/// Where a stage happened: the OSD (or `None` for a client-side process) and the Raft entry
/// `(pool, pg, index)` when known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct At {
    pub node: Option<u32>,
    pub entry: Option<(u32, u32, u64)>,
}

/// Records `stage` of request `(client, seq)` at time `ns` (callers check [`sampled`]).
pub fn record(stage: &str, client: u64, seq: u64, at: At, ns: u64) {
    let Some(t) = tracer() else { return };
    let mut b = t.buf.lock().unwrap_or_else(|e| e.into_inner());
    let _ = write!(b, "{stage} ");
    match at.node {
        Some(n) => {
            let _ = write!(b, "{n} ");
        }
        None => b.push_str("- "),
    }
    let _ = write!(b, "{client} {seq} ");
    match at.entry {
        Some((pool, pg, index)) => {
            let _ = write!(b, "{pool}.{pg} {index} ");
        }
        None => b.push_str("- - "),
    }
    let _ = writeln!(b, "{ns}");
}

/// Writes what was recorded so far to the trace file.
pub fn flush() {
    let Some(t) = tracer() else { return };
    let text = std::mem::take(&mut *t.buf.lock().unwrap_or_else(|e| e.into_inner()));
    if !text.is_empty() {
        let _ = t.file.lock().unwrap_or_else(|e| e.into_inner()).write_all(text.as_bytes());
    }
}

/// One parsed trace line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub stage: String,
    pub at: At,
    pub client: u64,
    pub seq: u64,
    pub ns: u64,
}

/// Parses one line of a trace file (`None`: not a trace line).
pub fn parse_line(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    let [stage, node, client, seq, pg, index, ns] = f[..] else { return None };
    let node = if node == "-" { None } else { Some(node.parse().ok()?) };
    let entry = match (pg, index) {
        ("-", "-") => None,
        (pg, index) => {
            let (pool, pg) = pg.split_once('.')?;
            Some((pool.parse().ok()?, pg.parse().ok()?, index.parse().ok()?))
        }
    };
    Some(Line {
        stage: stage.to_string(),
        at: At { node, entry },
        client: client.parse().ok()?,
        seq: seq.parse().ok()?,
        ns: ns.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back_and_garbage_does_not() {
        let l = parse_line("append 2 77 128 1.5 900 123456789").unwrap();
        assert_eq!(l.stage, "append");
        assert_eq!(l.at, At { node: Some(2), entry: Some((1, 5, 900)) });
        assert_eq!((l.client, l.seq, l.ns), (77, 128, 123456789));
        let c = parse_line("client_send - 77 128 - - 5").unwrap();
        assert_eq!(c.at, At::default());
        for bad in ["", "append 2 77", "append x 77 128 - - 5", "append 2 77 128 1 9 5", "a b c d e f g h"] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }
}
