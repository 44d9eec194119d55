//! `tessera`: every daemon and the admin CLI as subcommands of one binary.
//!
//! Daemons: `tessera mon`, `tessera osd run`, `tessera nbd`; `tessera up` runs a whole local cluster. Admin CLI (a client of the mon's API): `tessera cluster`,
//! `osd`, `pool`, `volume`, `snapshot`, `scrub`. Tools: `tessera bench engine`.

mod bench;
mod cli;
mod mon_cmd;
mod nbd_cmd;
mod osd_cmd;
mod size;
mod up_cmd;

use clap::{Parser, Subcommand};

/// tessera: a distributed block store. One binary; each daemon and tool is a subcommand.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control-plane daemon (cluster map, failure detection, admin API).
    Mon(mon_cmd::MonCmd),
    /// Cluster-wide state.
    Cluster(cli::ClusterCmd),
    /// Run an OSD daemon (`osd run`); list OSDs; take them out of or back into the data distribution.
    Osd(cli::OsdCmd),
    /// Create, list and delete pools.
    Pool(cli::PoolCmd),
    /// Create, list, inspect, resize, clone, flatten and delete volumes.
    Volume(cli::VolumeCmd),
    /// Snapshots of volumes: create (instant, crash-consistent), list, delete, rollback.
    Snapshot(cli::SnapshotCmd),
    /// Compare the replicas of PGs; replicas with corrupt blocks repair themselves.
    Scrub(cli::ScrubCmd),
    /// Bring up a local cluster in one process (mon, 3 OSDs, NBD server, pool, volume): start here.
    Up(up_cmd::UpCmd),
    /// Serve volumes over NBD (export name = volume name).
    Nbd(nbd_cmd::NbdCmd),
    /// Measure a component on this machine, next to a well-known peer (fio).
    Bench(bench::BenchCmd),
}

/// glibc's malloc serves every allocation of 128 KiB or more with a fresh `mmap` until such a
/// chunk is freed, and gives free memory at the top of a heap back to the kernel once it
/// exceeds twice that: on the data path (128 KiB payloads, Raft batches, socket read
/// buffers) large buffers were page-faulted in and zeroed again and again (about 10% of all
/// CPU in a profile of 128 KiB writes, `docs/bench/profile.md`). Buffers up to 32 MiB come
/// from the heap instead, and up to 64 MiB of free heap stays in the process. Memory the
/// process uses is unchanged; what it holds on to after a burst is bounded by the trim
/// threshold per arena.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called first thing in main, before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    // Daemons log their state changes (info); CLI tools only warnings. RUST_LOG overrides.
    let daemon = matches!(cli.command, Command::Mon(_) | Command::Nbd(_))
        || matches!(&cli.command, Command::Osd(o) if matches!(o.cmd, cli::OsdSub::Run(_)));
    let default_level = if daemon || matches!(cli.command, Command::Up(_)) { "info" } else { "warn" };
    if !daemon && !matches!(cli.command, Command::Up(_) | Command::Bench(_)) {
        // An admin command piped into `head` or `grep -q` ends quietly when the reader goes,
        // like any Unix tool, instead of panicking in `println!` (Rust ignores SIGPIPE by
        // default). Sockets are unaffected: writes to them use MSG_NOSIGNAL.
        // SAFETY: resetting a signal disposition at startup, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter =
        || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if let Command::Up(up) = &cli.command {
        // `tessera up` keeps the terminal for its status line; logs go to a file.
        match up_cmd::open_log(&up.data) {
            Ok(file) => {
                tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::sync::Mutex::new(file)).with_ansi(false).init()
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Mon(cmd) => mon_cmd::run(cmd),
        Command::Nbd(cmd) => nbd_cmd::run(cmd),
        Command::Up(cmd) => up_cmd::run(cmd),
        Command::Cluster(cmd) => cli::run_cluster(cmd),
        Command::Osd(cmd) => cli::run_osd(cmd),
        Command::Pool(cmd) => cli::run_pool(cmd),
        Command::Volume(cmd) => cli::run_volume(cmd),
        Command::Snapshot(cmd) => cli::run_snapshot(cmd),
        Command::Scrub(cmd) => cli::run_scrub(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
