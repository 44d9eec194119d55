//! `tessera`: every daemon and the admin CLI as subcommands of one binary.
//!
//! Today there is one subcommand tree, `tessera bench engine`; the daemons (mon, OSD, NBD)
//! join as further [`Command`] variants.

mod bench;
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
    /// Measure a component on this machine, next to a well-known peer (fio).
    Bench(bench::BenchCmd),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
