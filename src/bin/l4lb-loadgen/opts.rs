//! Command-line options (clap derive) and their validated, typed form.
//!
//! Control path. Everything a worker needs is resolved here once: the target address, the
//! per-mode defaults (size, connections), the timeouts. Parse errors exit 2 through clap; the
//! few cross-field checks that clap cannot express (source family vs target family, UDP size)
//! also exit 2, from `ClientOpts::from_args`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::sources::Sources;

/// Largest UDP payload over IPv4: 65,535 - 8 (UDP header) - 20 (IPv4 header).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Largest request/chunk size accepted: 64 MiB. Bounds the per-thread buffers.
pub const MAX_SIZE: usize = 64 << 20;

/// What a `serve` listener does with the bytes it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeMode {
    /// Write every byte back (TCP and UDP).
    Echo,
    /// Read and discard.
    Sink,
    /// Answer each HTTP/1.1 request with `backend <ADDR>`; on UDP, answer each datagram so.
    Http,
    /// Write an endless stream (for `tcp-stream --direction recv`); input is discarded. UDP
    /// listeners echo in this mode.
    Source,
}

/// Flow direction for `tcp-stream`, seen from the load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Client writes (backend: sink or echo); counts bytes sent.
    Send,
    /// Client reads (backend: `serve --mode source`); counts bytes received.
    Recv,
    /// Client writes and reads the echo back (backend: echo); counts both.
    Both,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Recv => "recv",
            Direction::Both => "both",
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP listen address (repeatable); port 0 picks a free port (printed at start).
    #[arg(long = "tcp", value_name = "ADDR", value_parser = parse_addr)]
    pub tcp: Vec<SocketAddr>,
    /// UDP listen address (repeatable).
    #[arg(long = "udp", value_name = "ADDR", value_parser = parse_addr)]
    pub udp: Vec<SocketAddr>,
    #[arg(long, value_enum, default_value_t = ServeMode::Echo)]
    pub mode: ServeMode,
    /// Event-loop threads (default: number of CPUs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Exit after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long, value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// Connections per thread; over it new connections are accepted and closed at once.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: u32,
}

/// Flags shared by every client subcommand.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address to load (host:port). Only addresses given here are ever contacted.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub target: SocketAddr,
    /// Concurrent connections (UDP: sockets). Default: 16; hold: 1000; tcp-stream: threads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub conns: Option<u32>,
    /// Run time in seconds (fractions allowed). hold: the default hold time.
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs)]
    pub duration: f64,
    /// Request size in bytes (tcp-stream: write/read chunk). Default: 1; tcp-stream: 65536.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=(MAX_SIZE as i64)))]
    pub size: Option<u32>,
    /// Worker threads (default: number of CPUs); never more than --conns.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Client source IPs, round-robin per connection: `127.0.0.1-127.0.0.64`, a list
    /// `A,B,C-D`, or one address. Each socket binds to the next IP with port 0.
    #[arg(long, value_parser = Sources::parse)]
    pub sources: Option<Sources>,
    /// Print the summary as one JSON object on the last line of stdout (progress and the text
    /// summary then go to stderr).
    #[arg(long)]
    pub json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Connect timeout in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub connect_timeout_ms: u64,
    /// Response timeout in milliseconds (per transaction; UDP: per datagram).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// tcp-crr (echo): send a TLS ClientHello naming this server as each request, instead of
    /// --size bytes, as a client of an SNI-routed listener does first (an echo backend sends
    /// it back). Compare with a plain listener to measure what routing costs.
    #[arg(long, value_name = "SERVER_NAME")]
    pub tls_hello: Option<String>,
}

/// `hold`-only options.
#[derive(Debug, Clone, Copy)]
pub struct HoldOpts {
    pub hold_s: Option<f64>,
    pub open_concurrency: usize,
    pub open_timeout_s: f64,
}

/// The workload, with its mode-specific options.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    TcpRr,
    TcpCrr { http: bool },
    TcpStream { direction: Direction },
    UdpRr,
    Hold(HoldOpts),
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::TcpRr => "tcp-rr",
            Mode::TcpCrr { http: false } => "tcp-crr",
            Mode::TcpCrr { http: true } => "tcp-crr-http",
            Mode::TcpStream { .. } => "tcp-stream",
            Mode::UdpRr => "udp-rr",
            Mode::Hold(_) => "hold",
        }
    }

    /// Word used after the rate: what one "transaction" is in this mode.
    pub fn rate_unit(&self) -> &'static str {
        match self {
            Mode::TcpCrr { .. } => "conn/s",
            Mode::TcpStream { .. } => "chunks/s",
            Mode::Hold(_) => "conn/s",
            Mode::TcpRr | Mode::UdpRr => "tx/s",
        }
    }
}

/// Validated client options, shared read-only by every worker.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    pub mode: Mode,
    pub target: SocketAddr,
    pub conns: usize,
    pub threads: usize,
    pub duration: Duration,
    pub size: usize,
    pub sources: Option<Sources>,
    pub json: bool,
    pub quiet: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// `--tls-hello`: the request is a ClientHello naming this server.
    pub tls_hello: Option<String>,
}

impl ClientOpts {
    /// Applies the per-mode defaults and the cross-field checks. Err is a one-line message.
    pub fn from_args(mode: Mode, a: ClientArgs) -> Result<ClientOpts, String> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let threads = a.threads.map(|t| t as usize).unwrap_or(cpus);
        let conns = match (a.conns, mode) {
            (Some(c), _) => c as usize,
            (None, Mode::Hold(_)) => 1000,
            (None, Mode::TcpStream { .. }) => threads,
            (None, _) => 16,
        };
        let size = match (a.size, mode) {
            (Some(s), _) => s as usize,
            (None, Mode::TcpStream { .. }) => 65_536,
            (None, _) => 1,
        };
        if matches!(mode, Mode::UdpRr) && size > MAX_UDP_PAYLOAD {
            return Err(format!(
                "--size {size}: a UDP datagram carries at most {MAX_UDP_PAYLOAD} bytes"
            ));
        }
        if a.tls_hello.is_some() && !matches!(mode, Mode::TcpCrr { http: false }) {
            return Err("--tls-hello: only for tcp-crr (echo)".to_string());
        }
        if let Some(src) = &a.sources {
            if src.is_ipv4() != a.target.is_ipv4() {
                return Err(format!(
                    "--sources: address family does not match --target {}",
                    a.target
                ));
            }
        }
        Ok(ClientOpts {
            mode,
            target: a.target,
            conns,
            threads: threads.min(conns).max(1),
            duration: Duration::from_secs_f64(a.duration),
            size,
            sources: a.sources,
            json: a.json,
            quiet: a.quiet,
            connect_timeout: Duration::from_millis(a.connect_timeout_ms),
            timeout: Duration::from_millis(a.timeout_ms),
            tls_hello: a.tls_hello,
        })
    }
}

/// `HOST:PORT` or `IP:PORT`, resolved once at start; the first address wins.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match s.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{s}: resolves to no address")),
        Err(e) => Err(format!("{s}: expected HOST:PORT ({e})")),
    }
}

/// Seconds as a float, > 0 and at most a day (every run is bounded in time).
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s}: expected seconds, e.g. 5 or 0.5"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s}: must be > 0 and <= 86400"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_bounds() {
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
        assert_eq!(parse_secs("1.5"), Ok(1.5));
    }

    #[test]
    fn addr_literal() {
        assert_eq!(
            parse_addr("127.0.0.1:80"),
            Ok("127.0.0.1:80".parse().unwrap())
        );
        assert!(parse_addr("127.0.0.1").is_err());
    }
}
