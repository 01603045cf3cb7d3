//! Signals, handled synchronously on the main thread: SIGTERM, SIGINT, SIGHUP and SIGUSR2 are
//! blocked in every thread (threads inherit the mask, so block before spawning any) and read
//! from a non-blocking signalfd that the control loop polls. No handler runs in async-signal context
//! and no worker is ever interrupted.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Reload,
    /// SIGUSR2: start the binary again with `--takeover` (an upgrade under systemd).
    Upgrade,
}

#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

fn to_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Block the signals in the calling thread and open a signalfd for them.
pub fn block_and_listen() -> io::Result<Signals> {
    let mut set = SigSet::empty();
    set.add(NixSignal::SIGTERM);
    set.add(NixSignal::SIGINT);
    set.add(NixSignal::SIGHUP);
    set.add(NixSignal::SIGUSR2);
    set.thread_block().map_err(to_io)?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(to_io)?;
    Ok(Signals { fd })
}

impl Signals {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// The next pending signal, if any.
    pub fn next(&self) -> Option<Signal> {
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    return Some(match info.ssi_signo {
                        s if s == NixSignal::SIGHUP as u32 => Signal::Reload,
                        s if s == NixSignal::SIGUSR2 as u32 => Signal::Upgrade,
                        _ => Signal::Terminate,
                    })
                }
                Ok(None) => return None,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
    }
}
