//! Where a worker thread waits: in its epoll (epoll_wait), or, where the kernel has io_uring,
//! in a ring that waits for the epoll (IORING_OP_EPOLL_WAIT) and carries the UDP plane's
//! receives and sends (`net::uring`, `udp::ring`). Either way a wait yields the epoll's ready events, as raw
//! `epoll_event`s read through [`Event`] (mio's own reading of them), and, on the ring, the
//! completions of the UDP requests.
//!
//! Hot path: one [`Waiter::wait`] per loop pass. Invariants: the ring is created on the
//! thread that waits in it and never leaves it; `L4LB_IO_URING=off` in the environment (or a
//! kernel without the opcodes, or io_uring disabled) keeps the thread on epoll_wait, with the
//! same behaviour.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::{Poll, Token};
use nix::libc;

use crate::net::uring::{Completion, Ring, RingOp, EPOLL_EVENTS};

/// One ready socket of a wait, as mio reads an epoll event.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    flags: u32,
    token: usize,
}

impl Event {
    #[inline]
    pub fn from_raw(raw: &libc::epoll_event) -> Event {
        // Copies out of the (packed on x86-64) C struct.
        let flags = raw.events;
        let token = raw.u64 as usize;
        Event { flags, token }
    }

    #[inline]
    fn has(&self, bit: libc::c_int) -> bool {
        self.flags & bit as u32 != 0
    }

    #[inline]
    pub fn token(&self) -> Token {
        Token(self.token)
    }

    #[inline]
    pub fn is_readable(&self) -> bool {
        self.has(libc::EPOLLIN) || self.has(libc::EPOLLPRI)
    }

    #[inline]
    pub fn is_writable(&self) -> bool {
        self.has(libc::EPOLLOUT)
    }

    #[inline]
    pub fn is_error(&self) -> bool {
        self.has(libc::EPOLLERR)
    }

    /// Both halves closed, or the peer sent FIN (EPOLLRDHUP with EPOLLIN).
    #[inline]
    pub fn is_read_closed(&self) -> bool {
        self.has(libc::EPOLLHUP) || (self.has(libc::EPOLLIN) && self.has(libc::EPOLLRDHUP))
    }

    #[inline]
    pub fn is_write_closed(&self) -> bool {
        self.has(libc::EPOLLHUP)
            || (self.has(libc::EPOLLOUT) && self.has(libc::EPOLLERR))
            || self.flags == libc::EPOLLERR as u32
    }
}

/// What one wait brought: the epoll's events and the ring's completions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Woken<'a> {
    pub events: &'a [libc::epoll_event],
    pub completions: &'a [Completion],
    /// The ring whose buffers the completions point into (`None` on epoll alone).
    pub ring: Option<&'a Ring>,
}

impl Woken<'_> {
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.iter().map(Event::from_raw)
    }
}

/// A worker thread's wait.
#[derive(Debug)]
pub struct Waiter {
    /// First: dropped before the epoll whose waits it may have in flight.
    ring: Option<Box<Ring>>,
    poll: Poll,
    events: Box<[libc::epoll_event]>,
    nevents: usize,
}

impl Waiter {
    /// On the thread that will wait: a ring when the thread serves UDP (`udp`) and the
    /// kernel gives one (and the environment does not say `L4LB_IO_URING=off`), else
    /// epoll_wait. A thread with TCP listeners only stays on epoll_wait: the ring's gain is
    /// UDP's, and TCP's bulk rows did not show one (docs/benchmarks.md, "UDP on io_uring").
    /// A UDP listener added later by a reload to such a thread runs on the epoll path.
    pub fn new(poll: Poll, name: &str, udp: bool) -> Waiter {
        let ring = if !udp || std::env::var("L4LB_IO_URING").is_ok_and(|v| v == "off") {
            None
        } else {
            match Ring::new() {
                Ok(ring) => Some(Box::new(ring)),
                Err(e) => {
                    log::info!("{name}: io_uring not available ({e}); waiting in epoll");
                    None
                }
            }
        };
        Waiter {
            ring,
            poll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS].into_boxed_slice(),
            nevents: 0,
        }
    }

    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Wait up to `timeout` (`None`: until something happens); false when the wait failed
    /// (logged, after a pause so that a persistent error does not spin), which leaves nothing
    /// to handle.
    pub fn wait(&mut self, timeout: Option<Duration>) -> bool {
        let result = match self.ring.as_mut() {
            Some(ring) => ring.wait(self.poll.as_raw_fd(), timeout),
            None => self.epoll_wait(timeout),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                self.nevents = 0;
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker thread: wait failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                false
            }
        }
    }

    fn epoll_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.nevents = 0;
        let ms = match timeout {
            // Rounded up, as mio does: a timer must not fire a millisecond early.
            Some(t) => t
                .checked_add(Duration::from_nanos(999_999))
                .unwrap_or(t)
                .as_millis()
                .min(libc::c_int::MAX as u128) as libc::c_int,
            None => -1,
        };
        // SAFETY: `events` is a live array of the length given.
        let n = unsafe {
            libc::epoll_wait(
                self.poll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.nevents = n as usize;
        Ok(())
    }

    /// What the last wait brought.
    pub fn woken(&self) -> Woken<'_> {
        match self.ring.as_deref() {
            Some(ring) => Woken {
                events: ring.events(),
                completions: ring.completions(),
                ring: Some(ring),
            },
            None => Woken {
                events: &self.events[..self.nevents],
                completions: &[],
                ring: None,
            },
        }
    }

    /// After the turns of a wait: queue the requests the workers asked for, and give back
    /// the buffers of this wait's completions (their datagrams were copied out in the turns).
    pub fn after_turns(&mut self, ops: &mut Vec<RingOp>) {
        if let Some(ring) = self.ring.as_mut() {
            for op in ops.drain(..) {
                ring.submit_op(op);
            }
        }
    }

    /// Give back every buffer of the last wait's completions; once per wait, after every
    /// worker's turn.
    pub fn release_buffers(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            ring.give_back_completed();
        }
    }
}
