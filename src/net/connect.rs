//! Backend-side sockets: a non-blocking TCP connect and a connected UDP session socket, each
//! optionally bound first to one of a listener's `source` addresses, and the test that tells
//! a shortage of this host (no local port, address or descriptor) from a backend's failure.
//!
//! Hot path (once per backend connect or UDP session). Invariant: a socket bound to a source
//! address for TCP sets `IP_BIND_ADDRESS_NO_PORT`, so the port is chosen at connect time from
//! the 4-tuple: a bind alone would reserve a port per socket and shrink the space again.

use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// Errors of socket/bind/connect that mean this host ran short, not that the backend failed:
/// no free local port (TCP connect: EADDRNOTAVAIL; UDP connect's implicit bind: EAGAIN; an
/// explicit bind to port 0: EADDRINUSE), no descriptor (EMFILE, ENFILE) or no memory
/// (ENOBUFS, ENOMEM). Such a failure must never count against a backend's health.
pub fn is_local_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN)
            | Some(libc::EADDRNOTAVAIL)
            | Some(libc::EADDRINUSE)
            | Some(libc::EMFILE)
            | Some(libc::ENFILE)
            | Some(libc::ENOBUFS)
            | Some(libc::ENOMEM)
    )
}

/// The entry of `sources` to use for connection number `n` to `backend`: round robin over the
/// addresses of the backend's family; `None` (the kernel's choice) when there is none.
pub fn pick_source(sources: &[IpAddr], backend: SocketAddr, n: usize) -> Option<IpAddr> {
    let same = |ip: &&IpAddr| ip.is_ipv4() == backend.is_ipv4();
    let count = sources.iter().filter(same).count();
    if count == 0 {
        return None;
    }
    sources.iter().filter(same).nth(n % count).copied()
}

/// One socket(2) call: non-blocking and close-on-exec come from the type flags
/// (`SOCK_NONBLOCK | SOCK_CLOEXEC`), not from three fcntl(2) calls after it.
fn new_socket(backend: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(backend),
        ty.nonblocking().cloexec(),
        Some(proto),
    )
}

/// Start a non-blocking connect to `backend`, from `source` when given (port chosen at
/// connect), with the `congestion` control algorithm when given (else the host's default).
/// In progress counts as success; the caller waits for writability.
pub fn tcp_connect(
    backend: SocketAddr,
    source: Option<IpAddr>,
    congestion: Option<&str>,
) -> io::Result<mio::net::TcpStream> {
    let socket = new_socket(backend, Type::STREAM, Protocol::TCP)?;
    if let Some(name) = congestion {
        // Before connect, so the handshake already runs it. The name was accepted by this
        // kernel at load (config validation); should it be refused now (the module removed
        // since), the connection still works with the host's default.
        let _ = socket.set_tcp_congestion(name.as_bytes());
    }
    if let Some(ip) = source {
        // Best effort: without it (old kernels) the bind reserves a port, which still works.
        let _ = setsockopt(&socket, sockopt::IpBindAddressNoPort, &true);
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&backend.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// A non-blocking UDP socket connected to `backend` (a session's socket), bound to `source`
/// first when given: the kernel then delivers only that backend's datagrams to it and reports
/// its ICMP errors (port unreachable becomes ECONNREFUSED on the next call).
pub fn udp_connect(backend: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::UdpSocket> {
    let socket = new_socket(backend, Type::DGRAM, Protocol::UDP)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect(&backend.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin_within_the_backend_family() {
        let sources: Vec<IpAddr> = ["127.0.0.2", "::1", "127.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let picks: Vec<_> = (0..4).map(|n| pick_source(&sources, v4, n)).collect();
        let a = Some("127.0.0.2".parse().unwrap());
        let b = Some("127.0.0.3".parse().unwrap());
        assert_eq!(picks, [a, b, a, b]);
        assert_eq!(pick_source(&sources, v6, 7), Some("::1".parse().unwrap()));
        assert_eq!(pick_source(&[], v4, 0), None);
    }

    #[test]
    fn shortages_are_local() {
        for errno in [
            libc::EAGAIN,
            libc::EADDRNOTAVAIL,
            libc::EMFILE,
            libc::ENFILE,
        ] {
            assert!(is_local_shortage(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNREFUSED, libc::ENETUNREACH, libc::EHOSTUNREACH] {
            assert!(!is_local_shortage(&io::Error::from_raw_os_error(errno)));
        }
    }

    /// (O_NONBLOCK, FD_CLOEXEC) of a descriptor.
    fn status_flags(fd: &impl std::os::fd::AsFd) -> (bool, bool) {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
        let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        let fd_flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        (
            fl.contains(OFlag::O_NONBLOCK),
            fd_flags.contains(FdFlag::FD_CLOEXEC),
        )
    }

    #[test]
    fn backend_sockets_are_non_blocking_and_close_on_exec() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = tcp_connect(listener.local_addr().unwrap(), None, None).unwrap();
        assert_eq!(status_flags(&tcp), (true, true));
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = udp_connect(peer.local_addr().unwrap(), None).unwrap();
        assert_eq!(status_flags(&udp), (true, true));
    }

    /// The algorithm a socket runs, as TCP_CONGESTION reads it back (NUL-padded).
    fn congestion_of(s: &mio::net::TcpStream) -> String {
        let name = socket2::SockRef::from(s).tcp_congestion().unwrap();
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    #[test]
    fn tcp_connect_sets_the_congestion_control_asked_for() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
        let host = host.trim();
        // reno is built into every kernel; cubic where reno is the host's default, so that the
        // algorithm asked for always differs from what the socket would get anyway.
        let wanted = if host == "reno" { "cubic" } else { "reno" };
        let chosen = tcp_connect(to, None, Some(wanted)).unwrap();
        assert_eq!(congestion_of(&chosen), wanted);
        let default = tcp_connect(to, None, None).unwrap();
        assert_eq!(congestion_of(&default), host);
    }

    #[test]
    fn tcp_connect_binds_the_source_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.0.7".parse().unwrap();
        let _stream = tcp_connect(to, Some(source), None).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), source);
        let udp = udp_connect(to, Some(source)).unwrap();
        assert_eq!(udp.local_addr().unwrap().ip(), source);
    }
}
