//! Listening sockets. Control path: each worker gets its own TCP socket bound to the same
//! address with SO_REUSEPORT, so the kernel spreads new flows over workers and no accept queue
//! is shared.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Accept queue length; the kernel clamps it to net.core.somaxconn. Large so that a burst of
/// connections arriving while a worker is busy waits in the kernel instead of being dropped.
pub const BACKLOG: i32 = 65535;

/// A non-blocking TCP listener with SO_REUSEADDR and SO_REUSEPORT set, bound to `addr`.
pub fn bind_tcp_reuseport(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Linux copies TCP_NODELAY to every accepted socket: one setsockopt here instead of one
    // per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
