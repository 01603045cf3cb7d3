//! `Ready`: what shows that a started balancer is up, read from `/proc/net` (a LISTEN socket
//! in `tcp{,6}`, or a bound socket in `udp{,6}`, on our port and owned by the child), so that
//! starting it sends no probe connection or datagram.

use std::net::{IpAddr, SocketAddr};

use super::net::{free_port, free_udp_port};

/// What shows that the balancer is up: a socket of the child on the listener's port, read from
/// `/proc/net` (so that starting it sends nothing that would open a connection or a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// A TCP socket in LISTEN state (`/proc/net/tcp{,6}`): a TCP listener.
    TcpListen,
    /// A UDP socket bound to the port (`/proc/net/udp{,6}`): a UDP listener.
    UdpBound,
}

impl Ready {
    /// A port of `ip` that nobody holds for this protocol now (bound, then released).
    pub(super) fn free_port(self, ip: IpAddr) -> u16 {
        match self {
            Ready::TcpListen => free_port(ip),
            Ready::UdpBound => free_udp_port(ip),
        }
    }

    /// The `/proc/net` table of this protocol for `addr`'s family.
    fn table(self, addr: SocketAddr) -> &'static str {
        match (self, addr.is_ipv4()) {
            (Ready::TcpListen, true) => "/proc/net/tcp",
            (Ready::TcpListen, false) => "/proc/net/tcp6",
            (Ready::UdpBound, true) => "/proc/net/udp",
            (Ready::UdpBound, false) => "/proc/net/udp6",
        }
    }
}

/// Whether process `pid` owns a socket of `ready`'s protocol on `addr`'s port (and family): for
/// TCP one in LISTEN state, for UDP any (a bound, unconnected UDP socket shows as 07, CLOSE).
pub(super) fn owns_socket(pid: u32, addr: SocketAddr, ready: Ready) -> bool {
    use std::io::BufRead;
    let Ok(file) = std::fs::File::open(ready.table(addr)) else {
        return false;
    };
    let port_hex = format!("{:04X}", addr.port());
    let mut inodes: Vec<String> = Vec::new();
    for line in std::io::BufReader::new(file).lines().skip(1) {
        let Ok(line) = line else { break };
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 {
            continue;
        }
        if ready == Ready::TcpListen && f[3] != "0A" {
            // The kernel lists the listening hash before the established one (tcp_seq_start:
            // TCP_SEQ_STATE_LISTENING first), so the first other state ends the listeners.
            // Stopping here keeps the read short when a busy host holds tens of thousands of
            // TIME_WAIT sockets (a whole read then takes seconds).
            break;
        }
        if let Some((_, port)) = f[1].rsplit_once(':') {
            if port == port_hex {
                inodes.push(f[9].to_string());
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .any(|inode| inodes.contains(&inode))
}
