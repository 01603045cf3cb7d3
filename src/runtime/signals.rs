//! Signals, handled synchronously on the main thread: they are blocked in every thread (the
//! workers inherit the mask) and collected with sigwait, so no handler runs in async-signal
//! context and no worker is interrupted.

use std::io;

use nix::sys::signal::{SigSet, Signal as NixSignal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Reload,
}

#[derive(Debug)]
pub struct Signals {
    set: SigSet,
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (call before spawning threads).
pub fn block_and_listen() -> io::Result<Signals> {
    let mut set = SigSet::empty();
    set.add(NixSignal::SIGTERM);
    set.add(NixSignal::SIGINT);
    set.add(NixSignal::SIGHUP);
    set.thread_block()
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(Signals { set })
}

impl Signals {
    pub fn wait(&self) -> Signal {
        loop {
            match self.set.wait() {
                Ok(NixSignal::SIGHUP) => return Signal::Reload,
                Ok(_) => return Signal::Terminate,
                Err(_) => continue,
            }
        }
    }
}
