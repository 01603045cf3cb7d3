//! Binary upgrade by socket handover (SPEC.md, "Binary upgrade without a dropped connection").
//!
//! The conversation on the control socket, one message per packet (`control_socket.rs`):
//! ```text
//!   new -> old   HELLO <pid>
//!   old -> new   SOCK tcp|udp <addr>     + the descriptor, once per listening socket
//!   old -> new   END <pid>
//!                (new: binds what it did not get, drops root, starts its workers)
//!   new -> old   DRAIN
//!   old -> new   DRAINING                (old: stops accepting, finishes, exits 0)
//! ```
//! The old process sends every socket it listens on: each listener's socket of every worker
//! (SO_REUSEPORT) and the admin socket. The descriptors are the same sockets, not copies: the
//! queues are shared, so a connection waiting in one is accepted by whichever process takes
//! it, and none is closed while the new process holds it. The new process keeps every socket
//! it is given for a listener it still has (several per worker if the old one ran more
//! workers), because closing a SO_REUSEPORT socket resets the connections queued on it.
//!
//! If anything fails before DRAIN (the new process exits or errs), the old process sees the
//! connection end and goes on serving as before; the new one exits 1.
//!
//! Control path. Invariants: the old process's inventory (`Handover`) holds its own duplicate
//! of each listening socket and follows reloads; it is dropped at drain, so a SIGTERM drain
//! still closes the sockets (the kernel refuses new connections), while after a handover the
//! new process's descriptors keep them open.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::Socket;

use super::control_socket::{self, ControlSocket};
use crate::config::Protocol;
use crate::net::inherit::Inherited;

/// How long either side waits for the other's next message. The new process binds and
/// spawns its workers between END and DRAIN; that takes milliseconds, seconds for a very
/// large config: 10 s is ample, and bounds how long the old control thread is busy.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A takeover that could not happen; the old process (if any) keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("takeover: no running l4lb on control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("takeover: control socket {path}: {what}")]
    Protocol { path: PathBuf, what: String },
}

/// The old process's inventory of listening sockets (a duplicate of each), by protocol and
/// bound address, in the order they were bound.
#[derive(Debug, Default)]
pub struct Handover {
    sockets: Vec<(Protocol, SocketAddr, OwnedFd)>,
}

impl Handover {
    /// Keep a duplicate of `socket` for `(protocol, addr)`.
    pub fn record(&mut self, protocol: Protocol, addr: SocketAddr, socket: &impl AsFd) {
        match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => self.sockets.push((protocol, addr, fd)),
            // Only this socket is not handed over; the new process binds its own instead.
            Err(e) => log::warn!(
                "cannot keep {} {addr} for a takeover: {e}",
                protocol.as_str()
            ),
        }
    }

    /// Forget the sockets of `(protocol, addr)` (a reload removed the listener).
    pub fn forget(&mut self, protocol: Protocol, addr: SocketAddr) {
        self.sockets
            .retain(|(p, a, _)| !(*p == protocol && *a == addr));
    }

    /// Close every duplicate (drain: this process listens no more).
    pub fn clear(&mut self) {
        self.sockets.clear();
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

fn protocol_word(p: Protocol) -> &'static str {
    p.as_str()
}

fn parse_sock(line: &str) -> Option<(Protocol, SocketAddr)> {
    let mut words = line.split(' ');
    if words.next()? != "SOCK" {
        return None;
    }
    let protocol = match words.next()? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let addr = words.next()?.parse().ok()?;
    words.next().is_none().then_some((protocol, addr))
}

/// The old process's side, on one accepted control connection: hand over the sockets and
/// wait for the word to drain. `Ok(Some(pid))`: the new process (pid) took over, drain now.
/// `Ok(None)`: it went away (or failed) before asking; keep serving.
pub fn serve(conn: &Socket, handover: &Handover, draining: bool) -> io::Result<Option<u32>> {
    let Some((hello, _)) = control_socket::recv(conn)? else {
        return Ok(None);
    };
    let pid = match hello.strip_prefix("HELLO ").map(str::parse::<u32>) {
        Some(Ok(pid)) => pid,
        _ => {
            let _ = control_socket::send(conn, "ERR unknown request", None);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown request {hello:?}"),
            ));
        }
    };
    if draining {
        control_socket::send(conn, "ERR draining", None)?;
        return Ok(None);
    }
    log::info!(
        "takeover: process {pid} asks for the listening sockets; sending {}",
        handover.len()
    );
    for (protocol, addr, fd) in &handover.sockets {
        let line = format!("SOCK {} {addr}", protocol_word(*protocol));
        control_socket::send(conn, &line, Some(fd))?;
    }
    control_socket::send(conn, &format!("END {}", std::process::id()), None)?;
    match control_socket::recv(conn)? {
        Some((word, _)) if word == "DRAIN" => {
            control_socket::send(conn, "DRAINING", None)?;
            Ok(Some(pid))
        }
        Some((word, _)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("process {pid} sent {word:?} instead of DRAIN"),
        )),
        None => Ok(None),
    }
}

/// The new process's side, first half: connect and receive the sockets.
pub struct Client {
    conn: Socket,
    path: PathBuf,
    /// The old process's PID (from END).
    pub old_pid: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.path)
            .field("old_pid", &self.old_pid)
            .finish()
    }
}

impl Client {
    /// Connect to `path`, ask for the sockets and receive them all.
    pub fn request(path: &Path) -> Result<(Client, Inherited), TakeoverError> {
        let proto = |what: String| TakeoverError::Protocol {
            path: path.to_path_buf(),
            what,
        };
        let conn = control_socket::connect(path, MESSAGE_TIMEOUT).map_err(|source| {
            TakeoverError::Connect {
                path: path.to_path_buf(),
                source,
            }
        })?;
        control_socket::send(&conn, &format!("HELLO {}", std::process::id()), None)
            .map_err(|e| proto(format!("cannot send the request: {e}")))?;
        let mut inherited = Inherited::default();
        loop {
            let (line, fd) = match control_socket::recv(&conn) {
                Ok(Some(m)) => m,
                Ok(None) => return Err(proto("the running process closed the connection".into())),
                Err(e) => return Err(proto(format!("cannot receive the sockets: {e}"))),
            };
            if let Some(pid) = line.strip_prefix("END ") {
                let old_pid = pid
                    .parse()
                    .map_err(|_| proto(format!("malformed message {line:?}")))?;
                let client = Client {
                    conn,
                    path: path.to_path_buf(),
                    old_pid,
                };
                return Ok((client, inherited));
            }
            if let Some(err) = line.strip_prefix("ERR ") {
                return Err(proto(format!("the running process refused: {err}")));
            }
            let (Some((protocol, addr)), Some(fd)) = (parse_sock(&line), fd) else {
                return Err(proto(format!("malformed message {line:?}")));
            };
            inherited
                .insert(protocol, addr, fd)
                .map_err(|e| proto(format!("{} {addr}: {e}", protocol.as_str())))?;
        }
    }

    /// Second half, once this process serves: tell the old process to drain.
    pub fn finish(self) -> Result<u32, TakeoverError> {
        let proto = |what: String| TakeoverError::Protocol {
            path: self.path.clone(),
            what,
        };
        control_socket::send(&self.conn, "DRAIN", None)
            .map_err(|e| proto(format!("cannot ask the old process to drain: {e}")))?;
        match control_socket::recv(&self.conn) {
            Ok(Some((word, _))) if word == "DRAINING" => Ok(self.old_pid),
            Ok(other) => Err(proto(format!("unexpected answer to DRAIN: {other:?}"))),
            Err(e) => Err(proto(format!("no answer to DRAIN: {e}"))),
        }
    }
}

/// Where the new process listens until the old one lets go of the real path: next to it, so
/// that the final `rename` is atomic (same filesystem).
pub fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".new.{}", std::process::id()));
    path.with_file_name(name)
}

/// Bind the new process's control socket at the staging path (removing a leftover there).
pub fn bind_staging(path: &Path) -> io::Result<ControlSocket> {
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    ControlSocket::bind_fresh(&staging)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_lines_strictly() {
        assert_eq!(
            parse_sock("SOCK tcp 127.0.0.1:80"),
            Some((Protocol::Tcp, "127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_sock("SOCK udp [::1]:53"),
            Some((Protocol::Udp, "[::1]:53".parse().unwrap()))
        );
        for bad in [
            "SOCK sctp 1.2.3.4:5",
            "SOCK tcp x",
            "SOCK tcp 1.2.3.4:5 y",
            "END 1",
            "",
        ] {
            assert_eq!(parse_sock(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn staging_path_is_a_sibling() {
        let p = staging_path(Path::new("/run/l4lb/control.sock"));
        assert_eq!(p.parent(), Some(Path::new("/run/l4lb")));
        assert!(p
            .to_string_lossy()
            .starts_with("/run/l4lb/control.sock.new."));
    }
}
