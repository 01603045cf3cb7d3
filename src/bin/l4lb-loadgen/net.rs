//! Socket set-up and I/O error classes shared by the client workers and `serve`.
//!
//! Every client socket is non-blocking from birth (socket2), optionally bound to a `--sources`
//! IP with port 0 and `IP_BIND_ADDRESS_NO_PORT` (the port is then picked at connect time per
//! 4-tuple, so many sources to one target are not limited to one ephemeral range), and handed
//! to mio. Errors are never fatal here: callers classify them into an [`ErrKind`] and count.

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::{TcpStream, UdpSocket};
use nix::errno::Errno;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Error kinds reported by every client mode; the order is the report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    ConnectRefused,
    ConnectTimeout,
    Reset,
    Timeout,
    ShortRead,
    Other,
}

impl ErrKind {
    pub const ALL: [ErrKind; 6] = [
        ErrKind::ConnectRefused,
        ErrKind::ConnectTimeout,
        ErrKind::Reset,
        ErrKind::Timeout,
        ErrKind::ShortRead,
        ErrKind::Other,
    ];
    pub const COUNT: usize = 6;

    pub fn name(self) -> &'static str {
        match self {
            ErrKind::ConnectRefused => "connect_refused",
            ErrKind::ConnectTimeout => "connect_timeout",
            ErrKind::Reset => "reset",
            ErrKind::Timeout => "timeout",
            ErrKind::ShortRead => "short_read",
            ErrKind::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Classifies an I/O error; `connecting` tells a connect timeout from a response timeout.
    pub fn of(e: &io::Error, connecting: bool) -> ErrKind {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ErrKind::ConnectRefused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => ErrKind::Reset,
            K::TimedOut if connecting => ErrKind::ConnectTimeout,
            K::TimedOut => ErrKind::Timeout,
            K::UnexpectedEof => ErrKind::ShortRead,
            _ => ErrKind::Other,
        }
    }
}

/// Outcome of one look at a connecting socket.
#[derive(Debug)]
pub enum ConnectState {
    Connected,
    Pending,
    Failed(io::Error),
}

/// A non-blocking socket of `ty` and `protocol` in the address family of `addr`: the start of
/// every client socket here and of every `serve` listener.
pub fn nonblocking_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Starts a non-blocking TCP connect to `target`, from `source` (port 0) when given.
pub fn tcp_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
) -> io::Result<TcpStream> {
    let sock = nonblocking_socket(target, Type::STREAM, Protocol::TCP)?;
    if nodelay {
        sock.set_tcp_nodelay(true)?;
    }
    if let Some(ip) = source {
        bind_source(&sock, ip)?;
    }
    match sock.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

/// `tcp_connect` from the picker's next source, registered with `registry` under `token` for
/// both readiness directions (edge-triggered: callers read/write until `WouldBlock`).
pub fn tcp_open(
    registry: &mio::Registry,
    token: mio::Token,
    target: SocketAddr,
    sources: &mut crate::sources::Picker,
    nodelay: bool,
) -> io::Result<TcpStream> {
    let mut s = tcp_connect(target, sources.next_source(), nodelay)?;
    registry.register(
        &mut s,
        token,
        mio::Interest::READABLE | mio::Interest::WRITABLE,
    )?;
    Ok(s)
}

/// The socket has nothing more for now: wait for the next readiness edge.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: retry it at once.
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// A connected (in the UDP sense: peer fixed, ICMP errors reported) non-blocking UDP socket.
pub fn udp_connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<UdpSocket> {
    let sock = nonblocking_socket(target, Type::DGRAM, Protocol::UDP)?;
    if let Some(ip) = source {
        sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    sock.connect(&SockAddr::from(target))?;
    Ok(UdpSocket::from_std(sock.into()))
}

fn bind_source(sock: &Socket, ip: IpAddr) -> io::Result<()> {
    if ip.is_ipv4() {
        // Best effort: without it the bind reserves a port per source IP up front.
        let _ = nix::sys::socket::setsockopt(
            sock,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
    }
    sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
}

/// After a writable (or error) event on a connecting socket: connected, still pending, or
/// failed (mio's documented recipe: `take_error`, then `peer_addr`).
pub fn connect_state(s: &TcpStream) -> ConnectState {
    match s.take_error() {
        Ok(Some(e)) | Err(e) => return ConnectState::Failed(e),
        Ok(None) => {}
    }
    match s.peer_addr() {
        Ok(_) => ConnectState::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
        Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => ConnectState::Pending,
        Err(e) => ConnectState::Failed(e),
    }
}

/// Raises the soft open-files limit to the hard limit so `hold` can keep thousands of sockets.
/// Returns the soft limit now in force (or `None` when it could not be read).
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(ErrKind::of(&e, true), ErrKind::ConnectRefused);
        let e = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(ErrKind::of(&e, true), ErrKind::ConnectTimeout);
        assert_eq!(ErrKind::of(&e, false), ErrKind::Timeout);
        let e = io::Error::from_raw_os_error(Errno::ECONNRESET as i32);
        assert_eq!(ErrKind::of(&e, false), ErrKind::Reset);
        for (i, k) in ErrKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
