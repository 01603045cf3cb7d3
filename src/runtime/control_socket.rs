//! The control socket (`runtime.control_socket`): a unix SOCK_SEQPACKET socket, mode 0600,
//! through which `l4lb --takeover` asks the running process for its listening sockets. This
//! file owns the socket file (bind, permissions, removal) and the framing: one message per
//! packet, a line of text and at most one descriptor (SCM_RIGHTS). The conversation itself is
//! in `takeover.rs`.
//!
//! Control path. SEQPACKET keeps message boundaries, so a descriptor always arrives with the
//! line that names it. Invariants: the file is removed on exit only while it is still ours
//! (same inode): after a takeover the new process's socket sits at the path.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use socket2::{Domain, SockAddr, Socket, Type};

/// Longest control message (a line naming a socket; the inventory is one message per socket).
pub const MAX_MESSAGE: usize = 512;

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A bound, listening control socket and the file it created.
#[derive(Debug)]
pub struct ControlSocket {
    socket: Socket,
    path: PathBuf,
    inode: u64,
}

impl ControlSocket {
    /// Listen on `path`, replacing a stale socket file there (one whose process is gone). A
    /// live process on `path` is an error: two balancers must not share one control socket.
    pub fn bind(path: &Path) -> io::Result<ControlSocket> {
        if path.exists() {
            match connect(path, Duration::from_secs(1)) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process listens on it (use --takeover to replace it)",
                    ))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        ControlSocket::bind_fresh(path)
    }

    /// Listen on `path`, which must not exist.
    pub fn bind_fresh(path: &Path) -> io::Result<ControlSocket> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        socket.bind(&SockAddr::unix(path)?)?;
        // 0600 before listen(): nobody else can connect in between (connect needs write
        // permission on the file).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket.listen(4)?;
        socket.set_nonblocking(true)?;
        let inode = std::fs::metadata(path)?.ino();
        Ok(ControlSocket {
            socket,
            path: path.to_path_buf(),
            inode,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give the file to `uid`/`gid` (before dropping root, so the process can remove it later).
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }

    /// Move the socket file to `to` (atomically replacing what is there) and remember it.
    pub fn rename(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.path = to.to_path_buf();
        Ok(())
    }

    /// The next waiting connection, blocking with `timeout` for each message; `None` when none
    /// waits.
    pub fn accept(&self, timeout: Duration) -> io::Result<Option<Socket>> {
        match self.socket.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                Ok(Some(conn))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the file if it is still this socket's (after a takeover it is the new one's).
    pub fn remove(&self) {
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Connect to the control socket at `path`, with `timeout` for each message.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<Socket> {
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    socket.connect(&SockAddr::unix(path)?)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    Ok(socket)
}

/// Send one message: `line`, and `fd` with it when given.
pub fn send(conn: &Socket, line: &str, fd: Option<&OwnedFd>) -> io::Result<()> {
    debug_assert!(line.len() <= MAX_MESSAGE);
    let iov = [IoSlice::new(line.as_bytes())];
    let raw = fd.map(|f| [f.as_fd().as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw
        .as_ref()
        .map(|r| ControlMessage::ScmRights(r))
        .into_iter()
        .collect();
    let sent = loop {
        match sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.map_err(errno)?,
        }
    };
    if sent != line.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short control message",
        ));
    }
    Ok(())
}

/// Receive one message: its line and the descriptor that came with it. `Ok(None)` when the
/// peer closed the connection.
pub fn recv(conn: &Socket) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    let mut buf = [0u8; MAX_MESSAGE];
    // Room for a few descriptors: a peer that sends more than one gets them closed, not leaked.
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r.map_err(errno)?,
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for cmsg in msg.cmsgs().map_err(errno)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for us;
                // nothing else refers to them.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let len = msg.bytes;
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        if truncated || fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed control message",
            ));
        }
        let line = std::str::from_utf8(&buf[..len])
            .map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "control message is not UTF-8")
            })?
            .to_string();
        return Ok(Some((line, fds.pop())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("l4lb-cs-{tag}-{}.sock", std::process::id()))
    }

    #[test]
    fn passes_a_line_and_a_descriptor_and_removes_only_its_own_file() {
        let path = temp_path("pass");
        let _ = std::fs::remove_file(&path);
        let server = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let client = connect(&path, Duration::from_secs(5)).unwrap();
        let conn = server.accept(Duration::from_secs(5)).unwrap().unwrap();

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        send(&conn, "SOCK tcp x", Some(&OwnedFd::from(l))).unwrap();
        send(&conn, "END", None).unwrap();
        let (line, fd) = recv(&client).unwrap().unwrap();
        assert_eq!(line, "SOCK tcp x");
        let got = std::net::TcpListener::from(fd.unwrap());
        assert_eq!(got.local_addr().unwrap(), addr, "the same socket arrived");
        let (line, fd) = recv(&client).unwrap().unwrap();
        assert_eq!(line, "END");
        assert!(fd.is_none());
        drop(conn);
        assert!(
            recv(&client).unwrap().is_none(),
            "EOF after the peer closed"
        );

        // A newer socket renamed over the path is not removed by the old one.
        let newer_path = temp_path("pass-new");
        let _ = std::fs::remove_file(&newer_path);
        let mut newer = ControlSocket::bind_fresh(&newer_path).unwrap();
        newer.rename(&path).unwrap();
        server.remove();
        assert!(
            path.exists(),
            "the old process removed the new process's socket"
        );
        newer.remove();
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_file_is_replaced() {
        let path = temp_path("stale");
        let _ = std::fs::remove_file(&path);
        drop(ControlSocket::bind(&path).unwrap());
        assert!(path.exists(), "dropping does not remove the file");
        let again = ControlSocket::bind(&path).unwrap();
        again.remove();
    }
}
