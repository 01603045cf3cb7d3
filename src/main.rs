//! The `l4lb` binary: parse the command line, load the config, run. Exit codes live here
//! only: 0 clean exit, 2 bad command line or invalid config, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A Layer-4 (TCP and UDP) load balancer.
#[derive(Debug, Parser)]
#[command(name = "l4lb", version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
    /// Take the listening sockets over from the l4lb running on `runtime.control_socket`,
    /// then make it drain and exit (a binary upgrade).
    #[arg(long, conflicts_with = "check")]
    takeover: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let config = match l4lb::config::Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("l4lb: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let start = if cli.takeover {
        if config.runtime.control_socket.is_none() {
            eprintln!(
                "l4lb: {}: runtime.control_socket: required with --takeover",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
        l4lb::runtime::Start::Takeover
    } else {
        l4lb::runtime::Start::Fresh
    };
    match l4lb::runtime::run(config, start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l4lb: {e}");
            ExitCode::from(1)
        }
    }
}
