//! UDP load balancing inside a worker: sessions keyed by client address, each with its own
//! socket connected to the backend its first datagram picked, registered in this worker's
//! `Poll`; replies leave through the listener's socket, so the client sees the address it
//! sent to.
//!
//! Hot path. Split in two: [`session`] is the sans-io core (the session table, idle expiry,
//! counters; time is a parameter, sockets a type parameter) and `shell` drives it
//! with real sockets: recvmmsg on the listener socket, one send (or sendmmsg for a run of
//! datagrams of one client) per session socket, recvmmsg on a readable session socket
//! straight into the reply batch, and one sendmmsg on the listener socket for the replies of
//! every session that answered in the same loop turn. Admission and the backend pick with its
//! retries are TCP's (`worker::admission`, `worker::pick`).
//!
//! The kernel steers each client address to one worker's SO_REUSEPORT socket (hash of the
//! 4-tuple), so a client's session lives in exactly one worker and the table needs no lock.
//!
//! Invariants: a session token is [`UDP_TOKEN_BIT`] | slab key (TCP tokens stay below it,
//! listener tokens and the waker sit at the top of the range and are checked first); the reply
//! batch holds datagrams of one listener only (it is flushed before another listener's reply
//! is added); every datagram taken from a socket is forwarded whole or counted as dropped.

mod ring;
pub mod session;
mod shell;

use mio::net::UdpSocket;
use mio::Token;

use crate::net::udp::{Batch, BATCH};
use crate::net::uring::RingOp;
use session::SessionTable;

/// Bit that marks a UDP session token. TCP connection tokens are `2 * key + side`, far below;
/// listener tokens and the waker are `LOCAL_TOKENS - small` and are matched before this bit.
pub const UDP_TOKEN_BIT: usize = 1 << (super::MEMBER_SHIFT - 2);
/// Batches a listener socket may take per loop turn before yielding to other sockets (8 x 32
/// datagrams): keeps one flooded listener from starving the sessions of the same worker.
const LISTENER_BATCHES_PER_TURN: usize = 8;
/// recvmmsg calls per session socket per loop turn (each up to the free reply slots).
const SESSION_READS_PER_TURN: usize = 4;
/// Slot marker: the datagram in this inbound slot goes nowhere (dropped or refused).
const NO_SESSION: usize = usize::MAX;

#[inline]
pub fn session_token(key: usize) -> Token {
    debug_assert!(key < UDP_TOKEN_BIT);
    Token(UDP_TOKEN_BIT | key)
}

/// The session key of a UDP session token (call after the listener and waker tokens were
/// ruled out).
#[inline]
pub fn session_key(token: Token) -> Option<usize> {
    (token.0 & UDP_TOKEN_BIT != 0).then_some(token.0 & !UDP_TOKEN_BIT)
}

/// Work left over from a turn because a socket used up its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    Listener(usize),
    Session { key: usize, generation: u32 },
}

/// A client's datagram in flight to a backend on the ring (`ring`), by its buffer.
#[derive(Debug, Clone, Copy, Default)]
struct PendingSend {
    listener: usize,
    key: usize,
    generation: u32,
    len: usize,
    /// A reply to a client (from the listener's socket), not a datagram to a backend.
    to_client: bool,
}

/// A worker's UDP state: its sessions and the two preallocated batches.
#[derive(Debug)]
pub struct UdpPlane {
    sessions: SessionTable<UdpSocket>,
    /// Datagrams from clients, received on a listener socket.
    inbound: Batch,
    /// Per inbound slot: the session it goes to, or [`NO_SESSION`].
    routes: [usize; BATCH],
    /// Replies from backends waiting for one sendmmsg on `out_listener`'s socket.
    outbound: Batch,
    out_len: usize,
    out_listener: usize,
    again: Vec<Again>,
    again_spare: Vec<Again>,
    /// The worker's thread waits in a ring (`worker::waiter`): listener and session
    /// sockets receive through it instead of the epoll (`ring`). Set before the first turn.
    pub on_ring: bool,
    /// Requests for the ring asked in this turn; the thread submits them after the turn.
    pub ops: Vec<RingOp>,
    /// A listener was added: the next turn puts it on the ring.
    pub listeners_changed: bool,
    /// Per ring buffer: the send in flight from it.
    sends: Box<[PendingSend]>,
    /// Sockets of sessions that ended in this turn, open until the thread's next wait has
    /// submitted the requests that name them (a closed descriptor's number could otherwise
    /// be reused by a new socket before a queued send or receive reaches the kernel).
    pub closing: Vec<UdpSocket>,
}

impl UdpPlane {
    pub fn new(now_ms: u64) -> UdpPlane {
        UdpPlane {
            sessions: SessionTable::new(now_ms),
            inbound: Batch::new(),
            routes: [NO_SESSION; BATCH],
            outbound: Batch::new(),
            out_len: 0,
            out_listener: 0,
            again: Vec::new(),
            again_spare: Vec::new(),
            on_ring: false,
            ops: Vec::with_capacity(64),
            listeners_changed: true,
            sends: vec![PendingSend::default(); usize::from(crate::net::uring::BUFFERS)]
                .into_boxed_slice(),
            closing: Vec::new(),
        }
    }

    /// End of a loop turn: keys of sessions closed in it may be reused (see `Slab`).
    pub fn release_removed(&mut self) {
        self.sessions.release_removed();
    }

    /// Sessions open in this worker.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether some socket still has datagrams from the last turn (poll must not sleep).
    pub fn has_work(&self) -> bool {
        !self.again.is_empty()
    }

    /// Session `key` (of `generation`) ended with `socket`: on the ring, its receive is
    /// cancelled and the socket kept open until the queued requests are submitted (see
    /// `closing`); otherwise it closes now.
    fn retire_socket(&mut self, tag: usize, key: usize, generation: u32, socket: UdpSocket) {
        retire(
            &mut self.ops,
            &mut self.closing,
            self.on_ring,
            (tag, key, generation),
            socket,
        );
    }

    /// Milliseconds until the session wheel's next tick; `None` without sessions.
    pub fn timeout_ms(&self, now_ms: u64) -> Option<u64> {
        self.sessions.timeout_ms(now_ms)
    }
}

/// [`UdpPlane::retire_socket`] over the plane's fields (for borrows split by the caller);
/// `id` is the worker's tag, the session's key and its generation.
fn retire(
    ops: &mut Vec<RingOp>,
    closing: &mut Vec<UdpSocket>,
    on_ring: bool,
    id: (usize, usize, u32),
    socket: UdpSocket,
) {
    if on_ring {
        let (tag, key, generation) = id;
        ring::cancel(ops, ring::session_user_data(tag, generation, key));
        closing.push(socket);
    }
}
