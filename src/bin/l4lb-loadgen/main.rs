//! `l4lb-loadgen`: the load generator shipped with l4lb (netperf-style).
//!
//! Control path only: this file parses the command line (clap) and hands the typed options to
//! one module per subcommand. Exit codes live here: 0 when the run did useful work, 1 when it
//! could not (nothing bound, no transaction succeeded), 2 for a bad command line (clap).
//!
//! ```text
//! main ── clap ──> serve::run            demo/test backends (echo | sink | http | source)
//!            └───> driver::start(mode, workload) ──> one worker thread per core, each
//!                    Workload::run: tcp_rr | tcp_crr | tcp_stream | udp_rr (evloop) | hold
//!                  per-thread Stats (HDR histogram) -> merged -> report (text or JSON)
//!            └───> probe::run            one request per connection, one line per connection
//!            └───> core_rtt::run         a cache line's round trip between two CPUs
//! ```
//!
//! Only this file names every workload: the driver sees a `dyn Workload`, and each workload
//! sees only the driver's public types and the shared worker loop (`evloop`).
//!
//! This binary deliberately does not link the l4lb library: it must measure the balancer, not
//! share its bugs.
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]

mod core_rtt;
mod driver;
mod evloop;
mod hold;
mod http;
mod net;
mod opts;
mod probe;
mod report;
mod serve;
mod signals;
mod slab;
mod sources;
mod stats;
mod tcp_crr;
mod tcp_rr;
mod tcp_stream;
mod udp_rr;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::driver::Workload;
use crate::opts::{ClientArgs, Direction, Mode, ServeArgs};

/// Load generator and demo backends for l4lb.
#[derive(Debug, Parser)]
#[command(
    name = "l4lb-loadgen",
    version,
    about = "Load generator and demo backends for l4lb (netperf-style)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run demo/test backends: echo, sink, http or source, on TCP and/or UDP listeners.
    Serve(ServeArgs),
    /// Request/response on persistent TCP connections (echo backend); latency per transaction.
    TcpRr(ClientArgs),
    /// Connect, request, response, close per transaction (echo backend, or http with --http).
    TcpCrr {
        #[command(flatten)]
        common: ClientArgs,
        /// Send `GET / HTTP/1.1` with `Connection: close`, read until EOF and count responses
        /// per backend named in the body (`backend ADDR`).
        #[arg(long)]
        http: bool,
    },
    /// Bulk transfer; reports Gbit/s. send: to a sink (or echo) backend; recv: from a `source`
    /// backend; both: through an echo backend.
    TcpStream {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(long, value_enum, default_value_t = Direction::Send)]
        direction: Direction,
    },
    /// Datagram request/response (echo backend) with a per-request timeout (--timeout-ms).
    UdpRr(ClientArgs),
    /// One HTTP request per connection from each --sources address; prints, per connection,
    /// the client IP:port used and the backend that answered (to trace where clients land).
    Probe(probe::ProbeArgs),
    /// The round trip of a cache line between two CPUs (ns), to tell how far apart a VM's
    /// vCPUs are placed right now.
    CoreRtt(core_rtt::CoreRttArgs),
    /// Open --conns idle connections, keep them, then verify each with one echo round trip.
    Hold {
        #[command(flatten)]
        common: ClientArgs,
        /// Seconds to keep the connections open once all are opened (default: --duration).
        #[arg(long, value_parser = opts::parse_secs)]
        hold: Option<f64>,
        /// Connects in flight at once, across all threads (bounds the SYN burst so the
        /// listen backlog does not overflow).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
        open_concurrency: u32,
        /// Seconds allowed for opening all connections; the rest count as connect_timeout.
        #[arg(long, default_value_t = 30.0, value_parser = opts::parse_secs)]
        open_timeout: f64,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::TcpRr(common) => client(Mode::TcpRr, common),
        Command::TcpCrr { common, http } => client(Mode::TcpCrr { http }, common),
        Command::TcpStream { common, direction } => client(Mode::TcpStream { direction }, common),
        Command::UdpRr(common) => client(Mode::UdpRr, common),
        Command::Probe(args) => probe::run(args),
        Command::CoreRtt(args) => core_rtt::run(args),
        Command::Hold {
            common,
            hold,
            open_concurrency,
            open_timeout,
        } => client(
            Mode::Hold(opts::HoldOpts {
                hold_s: hold,
                open_concurrency: open_concurrency as usize,
                open_timeout_s: open_timeout,
            }),
            common,
        ),
    };
    ExitCode::from(code)
}

/// Runs the client workload `mode` names.
fn client(mode: Mode, common: ClientArgs) -> u8 {
    let workload: Arc<dyn Workload> = match mode {
        Mode::TcpRr => Arc::new(tcp_rr::TcpRr),
        Mode::TcpCrr { http } => Arc::new(tcp_crr::TcpCrr { http }),
        Mode::TcpStream { direction } => Arc::new(tcp_stream::Bulk { direction }),
        Mode::UdpRr => Arc::new(udp_rr::UdpRr),
        Mode::Hold(h) => Arc::new(hold::Hold(h)),
    };
    driver::start(mode, common, workload)
}
