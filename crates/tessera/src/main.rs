//! `tessera`: every daemon and the admin CLI as subcommands of one binary.
//!
//! Daemons: `tessera mon`, `tessera osd run`. Admin CLI (a client of the mon's API): `tessera cluster`,
//! `osd`, `pool`, `volume`. Tools: `tessera bench engine`.

mod bench;
mod cli;
mod mon_cmd;
mod osd_cmd;
mod size;

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
    /// Create, list, inspect, resize and delete volumes.
    Volume(cli::VolumeCmd),
    /// Measure a component on this machine, next to a well-known peer (fio).
    Bench(bench::BenchCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Daemons log their state changes (info); CLI tools only warnings. RUST_LOG overrides.
    let daemon = matches!(cli.command, Command::Mon(_)) || matches!(&cli.command, Command::Osd(o) if matches!(o.cmd, cli::OsdSub::Run(_)));
    let default_level = if daemon { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Mon(cmd) => mon_cmd::run(cmd),
        Command::Cluster(cmd) => cli::run_cluster(cmd),
        Command::Osd(cmd) => cli::run_osd(cmd),
        Command::Pool(cmd) => cli::run_pool(cmd),
        Command::Volume(cmd) => cli::run_volume(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
