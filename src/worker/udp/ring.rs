//! The UDP plane on the thread's io_uring (`net::uring`, `worker::waiter`): a listener socket
//! is received with one multishot recvmsg and a session socket with one multishot recv, into
//! the ring's provided buffers, instead of an epoll registration and a recvmmsg per readable
//! socket. A client's datagram goes to its session's backend as a send request from the
//! buffer it arrived in, and a backend's reply to its client the same way from the listener's
//! socket (no copy; the ring holds the buffer until the send completes); a wildcard
//! listener's reply is a sendmsg naming its source address (PKTINFO), the address its client
//! sent to. Admission, the backend pick, counters and the flush are the shell's (`shell`),
//! unchanged.
//!
//! Hot path. Invariants:
//! - a request's user data is the worker's tag | kind | 16 bits of the session's generation |
//!   the listener index or session key, so a completion that arrives after its session ended
//!   (or its key went to a new session) is recognised and ignored;
//! - every buffer a completion brings is given back by the thread after the turns
//!   (`Waiter::release_buffers`), whatever the turn did with it, except one a send was asked
//!   from: the ring gives that one back when the send completes;
//! - a request is re-armed when the kernel ended it (no `MORE` flag: ENOBUFS, or a full
//!   completion queue) and its socket is still ours; a session's is cancelled when the
//!   session ends (a request in flight holds the socket open: without the cancel the local
//!   port would stay bound and keep receiving), a listener's when the listener is removed or
//!   the worker drains;
//! - an unexpected error on a listener's request puts that listener back in the epoll, on
//!   the epoll path, so a persistent error cannot make the loop spin.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use mio::Interest;
use nix::libc;

use crate::metrics::UdpDrop;
use crate::net::uring::{Completion, Ring, RingOp};
use crate::worker::access_log::SessionEnd;
use crate::worker::pick::passive_success;
use crate::worker::{listener_token, tagged, ListenerSocket, Worker, LOCAL_TOKENS};

use super::PendingSend;

const KIND_SHIFT: u32 = 48;
const KIND_MASK: u64 = 0xf << KIND_SHIFT;
const KIND_LISTENER: u64 = 1 << KIND_SHIFT;
const KIND_SESSION: u64 = 2 << KIND_SHIFT;
/// A send to a backend; the low 16 bits are the buffer (and the `sends` slot).
const KIND_SEND: u64 = 3 << KIND_SHIFT;
const GENERATION_MASK: u64 = 0xffff;

/// The user data of a request of the worker with `tag`.
fn user_data(tag: usize, kind: u64, generation: u32, key: usize) -> u64 {
    tag as u64 | kind | (u64::from(generation) & GENERATION_MASK) << 32 | (key as u64 & 0xffff_ffff)
}

/// Cancel the requests with `user_data`. A session's socket stays open until the queue is
/// submitted (`UdpPlane::closing`), so a receive still queued for it reaches the right socket
/// and the cancel behind it ends it: no search of the queue per closed session.
pub(crate) fn cancel(ops: &mut Vec<RingOp>, user_data: u64) {
    ops.push(RingOp::Cancel { user_data });
}

/// Cancel listener `li`'s receive. A listener's socket closes at once (reload, drain), so a
/// receive still queued from this turn is taken out instead: its descriptor's number could
/// be reused before the queue is submitted. Control path: a search of this turn's queue.
fn cancel_listener(ops: &mut Vec<RingOp>, user_data: u64) {
    let queued = ops
        .iter()
        .position(|op| matches!(op, RingOp::RecvMsg { user_data: u, .. } if *u == user_data));
    match queued {
        Some(i) => {
            ops.remove(i);
        }
        None => ops.push(RingOp::Cancel { user_data }),
    }
}

/// The user data of session `key` of generation `generation` in the worker with `tag`.
pub(crate) fn session_user_data(tag: usize, generation: u32, key: usize) -> u64 {
    user_data(tag, KIND_SESSION, generation, key)
}

impl Worker {
    /// Put the UDP listeners added since the last turn on the ring: out of the epoll, with a
    /// multishot receive armed.
    pub(in crate::worker) fn udp_ring_arm_listeners(&mut self) {
        if !std::mem::take(&mut self.udp.listeners_changed) {
            return;
        }
        for li in 0..self.listeners.len() {
            let tag = self.tag;
            let l = &mut self.listeners[li];
            let Some(ListenerSocket::Udp(socket)) = l.socket.as_mut() else {
                continue;
            };
            if l.retired || l.on_ring {
                continue;
            }
            if let Err(e) = self.registry.deregister(socket) {
                log::warn!("worker {}: UDP listener stays on epoll: {e}", self.id);
                continue;
            }
            l.on_ring = true;
            l.ring_armed = true;
            self.udp.ops.push(RingOp::RecvMsg {
                fd: socket.as_raw_fd(),
                user_data: user_data(tag, KIND_LISTENER, 0, li),
            });
        }
    }

    /// Take listener `li` off the ring (removed, or the worker drains): its receive is
    /// cancelled; the socket stays out of the epoll.
    pub(in crate::worker) fn udp_ring_release_listener(&mut self, li: usize) {
        let l = &mut self.listeners[li];
        if !l.on_ring {
            return;
        }
        l.on_ring = false;
        if std::mem::take(&mut l.ring_armed) {
            cancel_listener(&mut self.udp.ops, user_data(self.tag, KIND_LISTENER, 0, li));
        }
    }

    pub(in crate::worker) fn udp_ring_release_listeners(&mut self) {
        for li in 0..self.listeners.len() {
            self.udp_ring_release_listener(li);
        }
    }

    /// Arm the receive of new session `key`.
    pub(super) fn udp_ring_arm_session(&mut self, key: usize) {
        if let Some(s) = self.udp.sessions.get(key) {
            self.udp.ops.push(RingOp::Recv {
                fd: s.socket.as_raw_fd(),
                user_data: session_user_data(self.tag, s.generation, key),
            });
        }
    }

    /// This worker's completions of the last wait. Returns how many there were.
    pub(in crate::worker) fn udp_ring_completions(
        &mut self,
        ring: &Ring,
        completions: &[Completion],
    ) -> usize {
        let tag = self.tag as u64;
        let mut handled = 0;
        for c in completions
            .iter()
            .filter(|c| c.user_data & !(LOCAL_TOKENS as u64 - 1) == tag)
        {
            handled += 1;
            let key = (c.user_data & 0xffff_ffff) as usize;
            match c.user_data & KIND_MASK {
                KIND_LISTENER => self.udp_ring_datagram(ring, key, c),
                KIND_SESSION => {
                    let generation = ((c.user_data >> 32) & GENERATION_MASK) as u32;
                    self.udp_ring_reply(key, generation, c);
                }
                KIND_SEND => self.udp_ring_sent((c.user_data & 0xffff) as usize, c),
                _ => {}
            }
        }
        handled
    }

    /// A completion of listener `li`'s receive: its datagram goes to its client's session
    /// (opened now for a new client that is admitted), sent from the buffer it arrived in.
    fn udp_ring_datagram(&mut self, ring: &Ring, li: usize, c: &Completion) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if !l.on_ring && !matches!(l.socket, Some(ListenerSocket::Udp(_))) {
            // Cancelled with its socket closed (removed, or a drain without a takeover): what
            // the receive still took goes the way the kernel would have discarded it. After
            // a takeover the socket stays: what the old process took before the cancel took
            // effect is its to forward, or a datagram would be lost in the switch.
            return;
        }
        if !c.more() {
            l.ring_armed = false;
        }
        match (c.result, c.buffer()) {
            (len, Some(bid)) if len >= 0 => match ring.parse_msg(bid, len as usize) {
                Some(d) if d.truncated => self.udp_dropped(li, UdpDrop::Truncated, 1),
                Some(d) => {
                    if let Some(from) = d.source {
                        let len = d.payload.len();
                        self.udp_ring_forward(li, from, d.local, bid, d.offset, len);
                    }
                }
                None => self.udp_dropped(li, UdpDrop::Truncated, 1),
            },
            (e, _) if -e == libc::ENOBUFS || -e == libc::ECANCELED || e >= 0 => {}
            (e, _) => {
                // Local trouble the ring will report again: the epoll path takes over.
                let err = std::io::Error::from_raw_os_error(-e);
                log::warn!(
                    "worker {}: UDP listener receive: {err}; back on epoll",
                    self.id
                );
                self.udp_ring_to_epoll(li);
                return;
            }
        }
        let l = &mut self.listeners[li];
        if !l.ring_armed && l.on_ring && !l.retired {
            if let Some(ListenerSocket::Udp(socket)) = &l.socket {
                l.ring_armed = true;
                self.udp.ops.push(RingOp::RecvMsg {
                    fd: socket.as_raw_fd(),
                    user_data: user_data(self.tag, KIND_LISTENER, 0, li),
                });
            }
        }
    }

    /// Send a client's datagram (`len` bytes at `offset` in buffer `bid`) to its session's
    /// backend, as a ring request from that buffer.
    fn udp_ring_forward(
        &mut self,
        li: usize,
        from: SocketAddr,
        local: Option<IpAddr>,
        bid: u16,
        offset: u32,
        len: usize,
    ) {
        let Some(key) = self.udp_session_for(li, from, local) else {
            return;
        };
        let Some(s) = self.udp.sessions.get(key) else {
            return;
        };
        let slot = usize::from(bid) % self.udp.sends.len();
        self.udp.sends[slot] = PendingSend {
            listener: li,
            key,
            generation: s.generation,
            len,
            to_client: false,
        };
        self.udp.ops.push(RingOp::Send {
            fd: s.socket.as_raw_fd(),
            bid,
            offset,
            len: len as u32,
            user_data: user_data(self.tag, KIND_SEND, 0, slot),
        });
    }

    /// A send to a backend completed: counted on its session, or as a drop; an ICMP
    /// unreachable reported on it is a passive failure of the backend, as on the epoll path.
    fn udp_ring_sent(&mut self, slot: usize, c: &Completion) {
        let Some(&sent) = self.udp.sends.get(slot) else {
            return;
        };
        if sent.to_client {
            // Counted when it was staged, as the reply batch counts; a failure is a drop.
            if c.result < 0 {
                self.udp_dropped(sent.listener, UdpDrop::SendFailed, 1);
            }
            return;
        }
        let now = self.now;
        let session = self
            .udp
            .sessions
            .get_mut(sent.key)
            .filter(|s| s.generation == sent.generation);
        if c.result >= 0 {
            if let Some(s) = session {
                s.to_backend(sent.len, now);
            }
            return;
        }
        let alive = session.is_some();
        self.udp_dropped(sent.listener, UdpDrop::SendFailed, 1);
        let err = std::io::Error::from_raw_os_error(-c.result);
        if alive && crate::net::udp::is_unreachable(&err) {
            self.udp_backend_refused(sent.key);
        }
    }

    /// Listener `li` leaves the ring for the epoll (after an error the ring would repeat).
    fn udp_ring_to_epoll(&mut self, li: usize) {
        self.udp_ring_release_listener(li);
        let token = tagged(self.tag, listener_token(li));
        if let Some(ListenerSocket::Udp(socket)) = self.listeners[li].socket.as_mut() {
            if let Err(e) = self.registry.register(socket, token, Interest::READABLE) {
                log::error!("worker {}: UDP listener lost: {e}", self.id);
            }
        }
    }

    /// A completion of session `key`'s receive: the backend's datagram leaves for the
    /// session's client as a send from the buffer it arrived in.
    fn udp_ring_reply(&mut self, key: usize, generation: u32, c: &Completion) {
        let alive = |w: &Worker| {
            w.udp
                .sessions
                .get(key)
                .is_some_and(|s| u64::from(s.generation) & GENERATION_MASK == u64::from(generation))
        };
        if !alive(self) {
            // It ended after this completion was posted; its cancel is on its way.
            return;
        }
        match (c.result, c.buffer()) {
            (len, Some(bid)) if len >= 0 => {
                let len = len as usize;
                let Some((listener, local)) =
                    self.udp.sessions.get(key).map(|s| (s.listener, s.local))
                else {
                    return;
                };
                // The reply leaves as a send request from the buffer it arrived in; a
                // wildcard listener's names its source address (PKTINFO). A listener whose
                // socket is gone (removed, or drained) cannot send it: a counted drop.
                let fd = match &self.listeners[listener].socket {
                    Some(ListenerSocket::Udp(socket)) => Some(socket.as_raw_fd()),
                    _ => None,
                };
                if fd.is_none() {
                    self.udp_dropped(listener, UdpDrop::SendFailed, 1);
                }
                let now = self.now;
                let tag = self.tag;
                let udp = &mut self.udp;
                let Some(s) = udp.sessions.get_mut(key) else {
                    return;
                };
                if let Some(fd) = fd {
                    let slot = usize::from(bid) % udp.sends.len();
                    udp.sends[slot] = PendingSend {
                        listener,
                        key,
                        generation: s.generation,
                        len,
                        to_client: true,
                    };
                    udp.ops.push(RingOp::SendTo {
                        fd,
                        bid,
                        len: len as u32,
                        to: s.client,
                        from: local,
                        user_data: user_data(tag, KIND_SEND, 0, slot),
                    });
                }
                s.to_client(len, now);
                if !s.answered {
                    // The first reply: the backend's passive streak ends, and for
                    // least_latency the time to it is the sample.
                    s.answered = true;
                    passive_success(&s.backend, s.opened_us);
                }
                if s.answered_enough(self.listeners[listener].state.config.udp_responses) {
                    self.udp_close(key, SessionEnd::Responses);
                    return;
                }
            }
            (e, _) if -e == libc::ENOBUFS || -e == libc::ECANCELED || e >= 0 => {}
            (e, _) => {
                let err = std::io::Error::from_raw_os_error(-e);
                if crate::net::udp::is_unreachable(&err) {
                    self.udp_backend_refused(key);
                } else {
                    log::debug!("worker {}: udp session recv: {err}", self.id);
                    self.udp_close(key, SessionEnd::Error);
                }
                return;
            }
        }
        if !c.more() && alive(self) {
            self.udp_ring_arm_session(key);
        }
    }
}
