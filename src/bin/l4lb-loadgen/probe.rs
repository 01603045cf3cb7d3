//! `probe`: one HTTP request per connection, from every `--sources` address in turn, and one
//! output line per connection naming the client address and port it used and the backend that
//! answered (`serve --mode http` names itself in the body).
//!
//! Not a load test: it answers "which backend did this client reach, through this 4-tuple?",
//! which `tcp-crr --http` (aggregate counts only) cannot. The ECMP lab (scripts/ecmp-lab.sh)
//! joins these lines with each l4lb host's access log on the client address and port to tell
//! which host carried each connection.
//!
//! Control path only: blocking sockets, a few threads, each taking every `threads`-th source;
//! every connect and read is bounded by its timeout, so a run ends in at most
//! sources x per-source x (connect + response timeout) / threads.
//! Output (stdout, in source order): `CLIENT_IP:PORT BACKEND` or `CLIENT_IP:PORT error=KIND`
//! (PORT is 0 when the connect failed before a port was chosen). Exit 0 when every
//! connection got an answer naming a backend, 1 otherwise.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::http;
use crate::net::ErrKind;
use crate::opts::parse_addr;
use crate::sources::Sources;

/// The demo backend's answer is ~80 bytes; a real server's headers fit in 16 KiB.
const MAX_RESPONSE: usize = 16 << 10;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: l4lb\r\nConnection: close\r\n\r\n";

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Address to probe (host:port).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub target: SocketAddr,
    /// Client source IPs (`A-B`, a list `A,B,C-D`, or one address); each connection binds one
    /// with port 0.
    #[arg(long, value_parser = Sources::parse)]
    pub sources: Sources,
    /// Connections per source address, one after the other (each gets a new source port).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub per_source: u32,
    /// Threads (connections in flight at once).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Connect timeout in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub connect_timeout_ms: u64,
    /// Response timeout in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
}

/// Runs the probe; the exit code as `main` returns it.
pub fn run(a: ProbeArgs) -> u8 {
    if a.sources.is_ipv4() != a.target.is_ipv4() {
        eprintln!(
            "probe: --sources: address family does not match --target {}",
            a.target
        );
        return 2;
    }
    let srcs = a.sources.addrs();
    let threads = (a.threads as usize).min(srcs.len()).max(1);
    let per = a.per_source as usize;
    let (connect_to, read_to) = (
        Duration::from_millis(a.connect_timeout_ms),
        Duration::from_millis(a.timeout_ms),
    );
    // Thread t answers for sources t, t + threads, ...; lines are put back in source order.
    let parts: Vec<Vec<(usize, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (i, &src) in srcs.iter().enumerate().skip(t).step_by(threads) {
                        for _ in 0..per {
                            out.push((i, one(a.target, src, connect_to, read_to)));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut lines: Vec<(usize, String)> = parts.into_iter().flatten().collect();
    lines.sort_by_key(|(i, _)| *i);
    let expected = srcs.len() * per;
    let failed = lines.iter().filter(|(_, l)| l.contains(" error=")).count()
        + expected.saturating_sub(lines.len());
    let mut stdout = io::stdout().lock();
    for (_, l) in &lines {
        let _ = writeln!(stdout, "{l}");
    }
    let _ = stdout.flush();
    eprintln!(
        "probe: {} connections to {}, {} answered, {failed} failed",
        expected,
        a.target,
        expected - failed
    );
    u8::from(failed > 0)
}

/// One connection from `src`: its output line.
fn one(target: SocketAddr, src: IpAddr, connect_to: Duration, read_to: Duration) -> String {
    let mut port = 0;
    match exchange(target, src, connect_to, read_to, &mut port) {
        Ok(backend) => format!("{} {backend}", SocketAddr::new(src, port)),
        Err(k) => format!("{} error={}", SocketAddr::new(src, port), k.name()),
    }
}

fn exchange(
    target: SocketAddr,
    src: IpAddr,
    connect_to: Duration,
    read_to: Duration,
    port: &mut u16,
) -> Result<String, ErrKind> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(|e| ErrKind::of(&e, true))?;
    sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .map_err(|e| ErrKind::of(&e, true))?;
    if let Some(p) = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
    {
        *port = p;
    }
    sock.connect_timeout(&SockAddr::from(target), connect_to)
        .map_err(|e| ErrKind::of(&e, true))?;
    sock.set_read_timeout(Some(read_to))
        .map_err(|e| ErrKind::of(&e, false))?;
    sock.set_write_timeout(Some(read_to))
        .map_err(|e| ErrKind::of(&e, false))?;
    let mut stream: std::net::TcpStream = sock.into();
    stream
        .write_all(REQUEST)
        .map_err(|e| ErrKind::of(&e, false))?;
    let mut resp = Vec::with_capacity(256);
    (&mut stream)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut resp)
        .map_err(|e| ErrKind::of(&e, false))?;
    let name = http::response_backend(&resp)?;
    Ok(String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot HTTP backend on loopback answering as `serve --mode http` does.
    fn backend(body: &'static str, conns: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            for _ in 0..conns {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).unwrap();
            }
        });
        (addr, h)
    }

    #[test]
    fn names_the_source_port_and_backend() {
        let (addr, h) = backend("backend 127.0.0.1:9\n", 2);
        let d = Duration::from_secs(2);
        let mut ports = Vec::new();
        for _ in 0..2 {
            let line = one(addr, "127.0.0.1".parse().unwrap(), d, d);
            let (client, backend) = line.split_once(' ').unwrap();
            assert_eq!(backend, "127.0.0.1:9");
            let client: SocketAddr = client.parse().unwrap();
            assert_eq!(client.ip().to_string(), "127.0.0.1");
            assert_ne!(client.port(), 0);
            ports.push(client.port());
        }
        assert_ne!(ports[0], ports[1], "each connection gets a new source port");
        h.join().unwrap();
    }

    #[test]
    fn refused_connect_is_an_error_line() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let d = Duration::from_secs(2);
        let line = one(addr, "127.0.0.1".parse().unwrap(), d, d);
        assert!(line.ends_with(" error=connect_refused"), "{line}");
    }
}
