//! Listening sockets this process did not bind itself: received from the process it takes over
//! (`--takeover`, over SCM_RIGHTS) or passed by systemd socket activation (`LISTEN_FDS`). They
//! wait here, keyed by protocol and bound address, until a listener (or the admin API) whose
//! `bind` matches takes them.
//!
//! Control path, at start only. Invariants: every descriptor here is a socket of the kind its
//! key says, close-on-exec and non-blocking once adopted; a socket nobody takes is closed when
//! the set is dropped (which never closes a queue another process still holds).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use socket2::{SockRef, Socket, Type};

use crate::config::Protocol;

/// systemd passes activated sockets from this descriptor on (sd_listen_fds(3)).
const SD_LISTEN_FDS_START: RawFd = 3;
/// More than any unit declares; bounds the loop over an environment value we did not write.
const MAX_LISTEN_FDS: usize = 4096;

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Inherited sockets by (protocol, bound address), in the order they arrived. A few dozen
/// entries at most: a list is enough.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(Protocol, SocketAddr, Vec<OwnedFd>)>,
}

impl Inherited {
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sockets.iter().map(|s| s.2.len()).sum()
    }

    /// Keep `fd` for `(protocol, addr)`; the socket's kind is checked here, so a listener
    /// never adopts a UDP socket as TCP or a connected socket as a listener.
    pub fn insert(&mut self, protocol: Protocol, addr: SocketAddr, fd: OwnedFd) -> io::Result<()> {
        let (found, local) = describe(&fd)?;
        if found != protocol || local != addr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "descriptor is a {} socket on {local}, expected {} on {addr}",
                    found.as_str(),
                    protocol.as_str()
                ),
            ));
        }
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(errno)?;
        match self
            .sockets
            .iter_mut()
            .find(|s| s.0 == protocol && s.1 == addr)
        {
            Some(entry) => entry.2.push(fd),
            None => self.sockets.push((protocol, addr, vec![fd])),
        }
        Ok(())
    }

    /// Every socket kept for `(protocol, addr)` (empty if none).
    pub fn take(&mut self, protocol: Protocol, addr: SocketAddr) -> Vec<OwnedFd> {
        match self
            .sockets
            .iter()
            .position(|s| s.0 == protocol && s.1 == addr)
        {
            Some(i) => self.sockets.remove(i).2,
            None => Vec::new(),
        }
    }

    /// What no listener took (logged by the caller before they are closed).
    pub fn leftovers(&self) -> impl Iterator<Item = (Protocol, SocketAddr, usize)> + '_ {
        self.sockets.iter().map(|s| (s.0, s.1, s.2.len()))
    }

    /// The sockets systemd passed (`LISTEN_PID` is this process, `LISTEN_FDS` of them from
    /// descriptor 3). Descriptors that are not TCP listening or UDP sockets are reported and
    /// closed. Without the variables (or for another PID) the set is empty.
    pub fn from_listen_fds() -> Inherited {
        let mut set = Inherited::default();
        let pid_ok = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p == std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if !pid_ok || count == 0 {
            return set;
        }
        for i in 0..count.min(MAX_LISTEN_FDS) {
            let raw = SD_LISTEN_FDS_START + i as RawFd;
            // Validate before taking ownership: an fd that is not open must not be closed later
            // (it may be reused by then).
            // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid argument.
            if unsafe { nix::libc::fcntl(raw, nix::libc::F_GETFD) } < 0 {
                log::warn!("LISTEN_FDS: descriptor {raw} is not open; skipped");
                continue;
            }
            // SAFETY: systemd hands descriptors 3..3+LISTEN_FDS to this process (LISTEN_PID
            // matched), nothing else in the process owns them, and the fd was just checked open.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            match describe(&fd).and_then(|(p, a)| set.insert(p, a, fd).map(|()| (p, a))) {
                Ok((p, a)) => log::info!("LISTEN_FDS: {} socket on {a}", p.as_str()),
                Err(e) => log::warn!("LISTEN_FDS: descriptor {raw}: {e}; closed"),
            }
        }
        set
    }
}

/// What kind of socket `fd` is and where it is bound: a listening TCP socket or a UDP socket.
pub fn describe(fd: &OwnedFd) -> io::Result<(Protocol, SocketAddr)> {
    let sock = SockRef::from(fd);
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))?;
    let protocol = match sock.r#type()? {
        Type::STREAM => {
            if !getsockopt(fd, sockopt::AcceptConn).map_err(errno)? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TCP socket on {local} is not listening"),
                ));
            }
            Protocol::Tcp
        }
        Type::DGRAM => Protocol::Udp,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "neither a TCP nor a UDP socket",
            ))
        }
    };
    Ok((protocol, local))
}

/// Whether more sockets can join this one's address (SO_REUSEPORT is set on it).
pub fn reuses_port(fd: &OwnedFd) -> bool {
    getsockopt(fd, sockopt::ReusePort).unwrap_or(false)
}

/// A second descriptor for the same socket (close-on-exec).
pub fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

/// An inherited TCP listening socket, ready for a worker's `Poll`.
pub fn adopt_tcp(fd: OwnedFd) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// An inherited UDP socket, ready for a worker's `Poll`. A wildcard bind needs the packet-info
/// option (replies leave from the address the client wrote to); an activated socket may lack it.
pub fn adopt_udp(fd: OwnedFd, addr: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    if addr.ip().is_unspecified() {
        let set = if addr.is_ipv6() {
            setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)
        } else {
            setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)
        };
        set.map_err(errno)?;
    }
    let socket = Socket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::listener::bind_tcp_reuseport;
    use crate::net::udp::bind_udp_reuseport;
    use std::os::fd::IntoRawFd;

    fn owned<T: IntoRawFd>(s: T) -> OwnedFd {
        // SAFETY: into_raw_fd gives up ownership of a valid, open descriptor.
        unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) }
    }

    #[test]
    fn keys_sockets_by_kind_and_address_and_refuses_mismatches() {
        let tcp = bind_tcp_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let udp = bind_udp_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let (tcp, udp) = (owned(tcp), owned(udp));
        assert_eq!(describe(&tcp).unwrap(), (Protocol::Tcp, tcp_addr));
        assert_eq!(describe(&udp).unwrap(), (Protocol::Udp, udp_addr));
        assert!(reuses_port(&tcp));

        let mut set = Inherited::default();
        let wrong = set.insert(Protocol::Udp, tcp_addr, dup(&tcp).unwrap());
        assert!(wrong.is_err(), "a TCP socket must not be kept as UDP");
        set.insert(Protocol::Tcp, tcp_addr, tcp).unwrap();
        set.insert(Protocol::Udp, udp_addr, udp).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.take(Protocol::Tcp, udp_addr).is_empty());
        let got = set.take(Protocol::Tcp, tcp_addr);
        assert_eq!(got.len(), 1);
        adopt_tcp(got.into_iter().next().unwrap()).unwrap();
        assert_eq!(set.leftovers().count(), 1);
    }

    #[test]
    fn a_connected_stream_is_not_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(describe(&owned(c)).is_err());
    }
}
