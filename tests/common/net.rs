//! The loopback addresses and ports the tests use, whether IPv6 is there, and the
//! open-files limit of the test process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

pub fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// `127.0.0.x`: every address of 127/8 is local on Linux, so tests can be many clients.
pub fn lo(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))
}

pub fn ipv6_available() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A port nobody listens on right now (bound, then released; the race is accepted).
pub fn free_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind port 0");
    l.local_addr().expect("local_addr").port()
}

/// `n` distinct TCP ports of `ip` nobody holds right now: all bound at once, then released,
/// so that two of them can never be the same port (separate `free_port` calls can be).
pub fn distinct_free_ports(ip: IpAddr, n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).expect("bind port 0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// A UDP port of `ip` nobody holds right now (bound, then released; the race is accepted).
pub fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("bind UDP port 0")
        .port()
}

/// A free TCP address on 127.0.0.1 (see `free_port`).
pub fn free_tcp_addr() -> SocketAddr {
    SocketAddr::new(localhost(), free_port(localhost()))
}

/// A free UDP address on 127.0.0.1 (see `free_udp_port`): also a backend that answers
/// nothing but ICMP port unreachable.
pub fn free_udp_addr() -> SocketAddr {
    SocketAddr::new(localhost(), free_udp_port(localhost()))
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit (tests that hold many sockets).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}
