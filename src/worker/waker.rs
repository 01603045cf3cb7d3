//! A worker's waker: an eventfd in its thread's epoll under the worker's own waker token.
//!
//! mio's `Waker` allows one per `Poll`, and the workers of one CPU share a `Poll`
//! (`cpu_group`) while each needs its own wake-up for its commands. Control path: the control
//! thread wakes a worker after queueing a command; the worker never reads the eventfd.
//! Invariants: the eventfd is non-blocking and registered edge-triggered (as every mio
//! registration), so every write is a new event for the epoll whatever the counter holds; the
//! counter is only emptied when a write would overflow it.

use std::io;
use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

#[derive(Debug)]
pub struct WorkerWaker {
    fd: EventFd,
}

impl WorkerWaker {
    pub fn new(registry: &Registry, token: Token) -> io::Result<WorkerWaker> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(WorkerWaker { fd })
    }

    pub fn wake(&self) -> io::Result<()> {
        match self.fd.write(1) {
            Ok(_) => Ok(()),
            Err(Errno::EAGAIN) => {
                // The counter is full (2^64 - 2 wake-ups nobody read): empty it, write again.
                let _ = self.fd.read();
                self.fd.write(1).map(|_| ()).map_err(io::Error::from)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    /// Two wakers on one epoll (what mio's `Waker` forbids) each wake it with their own
    /// token, every time.
    #[test]
    fn two_wakers_on_one_poll_each_deliver_their_token_every_time() {
        let mut poll = Poll::new().expect("poll");
        let a = WorkerWaker::new(poll.registry(), Token(1)).expect("waker a");
        let b = WorkerWaker::new(poll.registry(), Token(2)).expect("waker b");
        let mut events = Events::with_capacity(8);
        for round in 0..3 {
            a.wake().expect("wake a");
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .expect("poll");
            let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
            assert_eq!(tokens, vec![Token(1)], "round {round}: only a's token");
            b.wake().expect("wake b");
            a.wake().expect("wake a");
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .expect("poll");
            let mut tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
            tokens.sort();
            assert_eq!(tokens, vec![Token(1), Token(2)], "round {round}: both");
        }
        // Nothing is pending once both were reported.
        poll.poll(&mut events, Some(Duration::ZERO)).expect("poll");
        assert!(events.is_empty());
    }
}
