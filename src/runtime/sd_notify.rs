//! systemd's readiness protocol (sd_notify(3)), written by hand: one datagram of
//! `KEY=VALUE\n` lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`). Without the variable every call does nothing.
//!
//! Control path: a handful of datagrams over the life of the process (READY=1 once the
//! listeners accept, RELOADING=1/READY=1 around a reload, STOPPING=1 at drain, MAINPID after a
//! takeover). A failed send is logged and otherwise ignored: systemd's bookkeeping must never
//! stop the balancer.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send notifications, read from `$NOTIFY_SOCKET` once at start.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<OsString>,
}

impl Notifier {
    /// From the environment; a missing or empty `NOTIFY_SOCKET` gives a notifier that does
    /// nothing.
    pub fn from_env() -> Notifier {
        Notifier {
            target: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
        }
    }

    /// Send `state` (e.g. `"READY=1"`); logs a failure at warn.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            log::warn!("sd_notify {state:?}: {e}");
        }
    }

    fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let bytes = target.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(target))?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=serving");
    }

    pub fn reloading(&self) {
        // MONOTONIC_USEC lets Type=notify-reload units match the READY=1 that follows.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// After a takeover: this process is the service's main process now.
    pub fn main_pid(&self) {
        self.notify(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving (took over)",
            std::process::id()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sends_to_a_path_and_does_nothing_without_one() {
        let dir = std::env::temp_dir().join(format!("l4lb-sdn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier {
            target: Some(path.clone().into_os_string()),
        };
        n.stopping();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        Notifier::default().ready();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_name() {
        let name = format!("l4lb-sdn-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier {
            target: Some(format!("@{name}").into()),
        };
        n.ready();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"READY=1\n"));
    }
}
